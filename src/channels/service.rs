//! What the channel routes and MCP's channel tools do, behind the transport: the handlers and
//! the tools parse their input and call these.

use serde::Serialize;

use super::{
    cursor::Cursor,
    db::{self, After, ListFilter},
    model::{Channel, ChannelSummary, CreateChannel, ReadState, UpdateChannel, is_ticket_slug},
};
use crate::{
    auth::{Principal, patterns::DigitNames},
    error::{ApiError, FieldErrors},
    extract::QueryParams,
    messages::model::is_printable_ascii,
    state::AppState,
    webhooks,
};

#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelSummary>,
    /// Channels matching the filters, over every page.
    pub total: i64,
    /// Pass as `cursor` for the page after this one; `null` when this is the last.
    pub next_cursor: Option<String>,
}

/// The parameters `GET /v1/channels` accepts.
const LIST_PARAMETERS: [&str; 11] = [
    "repository_id",
    "ticket_slug",
    "archived",
    "include_archived",
    "q",
    "sort",
    "order",
    "cursor",
    "limit",
    "offset",
    "reader",
];

/// The filter and page size `GET /v1/channels`'s parameters ask for (MCP's `list_channels` passes
/// its arguments the same way); 400 naming every bad one.
pub fn list_filter(query: &QueryParams, caller: &Principal) -> Result<(ListFilter, i64), ApiError> {
    let mut errors = FieldErrors::default();
    query.accept(&LIST_PARAMETERS, &mut errors);
    let ticket_slug = query.get("ticket_slug").map(str::to_owned);
    if ticket_slug
        .as_deref()
        .is_some_and(|slug| !is_ticket_slug(slug))
    {
        errors.add("ticket_slug", "format");
    }
    let archived = archived(query, &mut errors);
    let name_contains = name_contains(query, &mut errors);
    let reader = reader(query, &mut errors);
    let repository_id = query.int("repository_id", 1, i64::MAX, &mut errors);
    let offset = query.int("offset", 0, i64::MAX, &mut errors);
    let limit = query.int("limit", 1, 200, &mut errors).unwrap_or(50);
    let (sort, descending, after) = ordering(query, offset.is_some(), &mut errors);
    errors.into_result()?;
    let filter = ListFilter {
        repository_id,
        ticket_slug,
        archived,
        name_contains,
        sort,
        descending,
        after,
        // One more than the page, to know whether another follows.
        limit: limit + 1,
        offset: offset.unwrap_or(0),
        reader,
        app_id: caller.app_id(),
        covered: DigitNames::of(&caller.channel_patterns),
    };
    Ok((filter, limit))
}

/// `archived` (only archived, or only active) or `include_archived` (both); active by default.
fn archived(query: &QueryParams, errors: &mut FieldErrors) -> Option<bool> {
    match (
        query.bool("archived", errors),
        query.bool("include_archived", errors),
    ) {
        (Some(_), Some(_)) => {
            let note = "pass `archived` (only archived, or only active) or `include_archived` (both), not both";
            errors.add_with("archived", "conflict", note);
            errors.add_with("include_archived", "conflict", note);
            None
        }
        (Some(archived), None) => Some(archived),
        (None, Some(true)) => None,
        (None, Some(false) | None) => Some(false),
    }
}

/// `q`: 1-100 characters without control characters.
fn name_contains(query: &QueryParams, errors: &mut FieldErrors) -> Option<String> {
    let q = query.get("q")?;
    if !(1..=100).contains(&q.chars().count()) || q.chars().any(char::is_control) {
        errors.add_with(
            "q",
            "format",
            "q must be 1-100 characters without control characters",
        );
    }
    Some(q.to_owned())
}

/// The sort, its direction and where the page starts: from `cursor` (which carries its sort
/// and order; given again, they must agree with it), else from `sort` and `order`.
fn ordering(
    query: &QueryParams,
    has_offset: bool,
    errors: &mut FieldErrors,
) -> (db::Sort, bool, Option<After>) {
    let sort = query.get("sort").map(|raw| {
        db::Sort::parse(raw).ok_or_else(|| {
            errors.add_with(
                "sort",
                "format",
                "sort must be updated_at, created_at or name",
            );
        })
    });
    let order = query.get("order").map(|raw| match raw {
        "desc" => Ok(true),
        "asc" => Ok(false),
        _ => {
            errors.add_with("order", "format", "order must be asc or desc");
            Err(())
        }
    });
    let cursor = query.get("cursor").map(|raw| {
        Cursor::decode(raw).ok_or_else(|| {
            errors.add_with(
                "cursor",
                "format",
                "cursor must be a next_cursor this server returned",
            );
        })
    });
    let Some(Ok(cursor)) = cursor else {
        let sort = match sort {
            Some(Ok(sort)) => sort,
            _ => db::Sort::default(),
        };
        let descending = match order {
            Some(Ok(descending)) => descending,
            _ => sort != db::Sort::Name,
        };
        return (sort, descending, None);
    };
    let sort_differs = matches!(sort, Some(Ok(s)) if s != cursor.sort);
    let order_differs = matches!(order, Some(Ok(d)) if d != cursor.descending);
    if sort_differs || order_differs {
        errors.add_with(
            "cursor",
            "conflict",
            format!(
                "this cursor continues a list sorted by {} {}: pass that sort and order, or none",
                cursor.sort.as_str(),
                if cursor.descending { "desc" } else { "asc" }
            ),
        );
    }
    if has_offset {
        let note = "pass `cursor` or `offset`, not both";
        errors.add_with("cursor", "conflict", note);
        errors.add_with("offset", "conflict", note);
    }
    (cursor.sort, cursor.descending, Some(cursor.after))
}

/// `?reader=<name>`: 1-100 printable ASCII characters.
pub fn reader(query: &QueryParams, errors: &mut FieldErrors) -> Option<String> {
    let reader = query.get("reader")?;
    if !is_printable_ascii(reader, 100) {
        errors.add_with(
            "reader",
            "format",
            "reader must be 1-100 printable ASCII characters",
        );
    }
    Some(reader.to_owned())
}

/// One page of channels and the cursor to the next.
pub async fn list_page(
    state: &AppState,
    filter: &ListFilter,
    limit: i64,
) -> Result<ChannelList, ApiError> {
    let (mut channels, total) = db::list(&state.db, filter).await?;
    let next_cursor = if channels.len() as i64 > limit {
        channels.truncate(limit as usize);
        channels
            .last()
            .map(|last| Cursor::after(last, filter.sort, filter.descending).encode())
    } else {
        None
    };
    if let Some(reader) = &filter.reader
        && !channels.is_empty()
    {
        db::add_unread(&state.db, &mut channels, reader).await?;
    }
    Ok(ChannelList {
        channels,
        total,
        next_cursor,
    })
}

/// One channel, with `reader`'s unread counts when asked; 404 when there is none.
pub async fn get(state: &AppState, id: i64, reader: Option<&str>) -> Result<Channel, ApiError> {
    let mut channel = db::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::channel_not_found(id))?;
    if let Some(reader) = reader {
        db::add_unread(
            &state.db,
            std::slice::from_mut(&mut channel.summary),
            reader,
        )
        .await?;
    }
    Ok(channel)
}

/// Creates a channel of the caller's app; 409 `channel_name_taken` when an active channel of the
/// app has the name, 403 `quota_exceeded` when the app has `max_channels` active channels.
pub async fn create(
    state: &AppState,
    caller: &Principal,
    new: &CreateChannel,
) -> Result<Channel, ApiError> {
    let app = caller.app.id;
    let mut tx = state.db.begin().await?;
    if caller.app.max_channels.is_some() {
        within_channel_quota(&mut tx, app, None).await?;
    }
    let channel = db::insert(&mut *tx, app, new).await?;
    let id = channel.summary.id.to_string();
    let recorded = webhooks::record(&mut tx, app, "channel.created", &id, &channel).await?;
    tx.commit().await?;
    state.apps.remember(channel.summary.id, app);
    if recorded {
        state.webhooks.wake();
    }
    Ok(channel)
}

/// 403 `quota_exceeded` unless the app has room for one more active channel besides `except`.
/// Creations and unarchivings of one app take turns from here to their commit, and the quota is
/// read inside the turn, so it holds exactly once it is seen (an app's quotas are read from
/// memory at most a second old: a quota just set applies within a second).
async fn within_channel_quota(
    tx: &mut sqlx::PgConnection,
    app: i64,
    except: Option<i64>,
) -> Result<(), ApiError> {
    let (max, active) = db::lock_and_count_active(tx, app, except).await?;
    match max {
        Some(max) if active >= i64::from(max) => Err(ApiError::QuotaExceeded {
            quota: "max_channels",
            limit: i64::from(max),
        }),
        _ => Ok(()),
    }
}

/// Changes the fields `change` holds (none: the channel as it is); 404 when there is none.
/// Unarchiving counts against the app's `max_channels` like creating.
pub async fn update(
    state: &AppState,
    caller: &Principal,
    id: i64,
    change: &UpdateChannel,
) -> Result<Channel, ApiError> {
    if change.is_empty() {
        let channel = db::find(&state.db, id).await?;
        return channel.ok_or_else(|| ApiError::channel_not_found(id));
    }
    let app = caller.app.id;
    let mut tx = state.db.begin().await?;
    if change.archived == Some(false) && caller.app.max_channels.is_some() {
        within_channel_quota(&mut tx, app, Some(id)).await?;
    }
    // Taken before the change, so that the events say what changed.
    let Some(before) = db::lock_archived(&mut *tx, id).await? else {
        return Err(ApiError::channel_not_found(id));
    };
    let channel = db::update(&mut *tx, id, change)
        .await?
        .ok_or_else(|| ApiError::channel_not_found(id))?;
    // `channel.updated` when anything besides `archived` was given; `channel.archived` or
    // `channel.unarchived` when `archived` changed.
    let name = id.to_string();
    let mut recorded = false;
    if change.changes_more_than_archived() {
        recorded |= webhooks::record(&mut tx, app, "channel.updated", &name, &channel).await?;
    }
    match (before, channel.summary.archived) {
        (false, true) => {
            recorded |= webhooks::record(&mut tx, app, "channel.archived", &name, &channel).await?;
        }
        (true, false) => {
            recorded |=
                webhooks::record(&mut tx, app, "channel.unarchived", &name, &channel).await?;
        }
        _ => {}
    }
    tx.commit().await?;
    if recorded {
        state.webhooks.wake();
    }
    Ok(channel)
}

/// Moves `read.reader`'s `last_read_id` forward (`PUT …/read`, MCP's `mark_read`).
pub async fn record_read(
    state: &AppState,
    channel_id: i64,
    read: &ReadState,
) -> Result<ReadState, ApiError> {
    db::mark_read(&state.db, channel_id, &read.reader, read.last_read_id)
        .await?
        .ok_or_else(|| ApiError::channel_not_found(channel_id))
}
