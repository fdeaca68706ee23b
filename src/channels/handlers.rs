//! HTTP handlers for `/v1/channels`.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::Serialize;

use super::{
    cursor::Cursor,
    db::{self, ListFilter},
    model::{Channel, ChannelSummary, CreateChannel, ReadState, UpdateChannel, is_ticket_slug},
};
use crate::{
    auth::{ChannelsRead, ChannelsWrite, Scoped},
    error::{ApiError, Envelope, FieldErrors},
    etag::json_with_etag,
    extract::{ChannelId, NoQuery, QueryParams, ValidatedJson},
    json::Json,
    messages::model::is_printable_ascii,
    state::AppState,
};

#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelBody {
    pub channel: Channel,
}

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

/// `GET /v1/channels`: filtered, searched, sorted, paged by offset or by cursor.
#[utoipa::path(get, path = "/v1/channels", operation_id = "listChannels", tag = "channels", security(("bearer" = []), ("api_key" = [])),
    params(
        ("repository_id" = Option<i64>, Query, minimum = 1, description = "Only channels of this repository"),
        ("ticket_slug" = Option<String>, Query, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "Only channels of this ticket"),
        ("archived" = Option<bool>, Query, description = "`true`: only archived channels; `false`: only active ones (the default). Not with `include_archived`"),
        ("include_archived" = Option<bool>, Query, description = "`true`: active and archived channels. Not with `archived`"),
        ("q" = Option<String>, Query, min_length = 1, max_length = 100, description = "Only channels whose name contains this text, ignoring case"),
        ("sort" = Option<String>, Query, pattern = "^(updated_at|created_at|name)$", description = "`updated_at` (default), `created_at` or `name`; the id breaks ties"),
        ("order" = Option<String>, Query, pattern = "^(asc|desc)$", description = "`desc` (default for `updated_at` and `created_at`) or `asc` (default for `name`)"),
        ("cursor" = Option<String>, Query, description = "A `next_cursor` from an earlier page: continues right after its last channel, in its sort and order. Not with `offset`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Page size (default 50)"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Channels to skip (default 0)"),
        ("reader" = Option<String>, Query, pattern = "^[ -~]{1,100}$", description = "Adds `unread_count` and `unread_mentions` for this reader to every channel"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer: 304 while unchanged"),
    ),
    responses(
        (status = 200, description = "One page; `total` counts every match, `next_cursor` continues after this page (`null` on the last)", body = ChannelList, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "A bad, conflicting or unknown query parameter", body = Envelope),
    ))]
pub async fn list(
    _: Scoped<ChannelsRead>,
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let (filter, limit) = list_filter(&query)?;
    let page = list_page(&state, &filter, limit).await?;
    json_with_etag(&headers, &page)
}

/// The filter and page size `GET /v1/channels`'s parameters ask for (MCP's `list_channels` passes
/// its arguments the same way); 400 naming every bad one.
pub fn list_filter(query: &QueryParams) -> Result<(ListFilter, i64), ApiError> {
    let mut errors = FieldErrors::default();
    query.accept(&LIST_PARAMETERS, &mut errors);
    let ticket_slug = query.get("ticket_slug").map(str::to_owned);
    if ticket_slug
        .as_deref()
        .is_some_and(|slug| !is_ticket_slug(slug))
    {
        errors.add("ticket_slug", "format");
    }
    let archived = match (
        query.bool("archived", &mut errors),
        query.bool("include_archived", &mut errors),
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
    };
    let name_contains = query.get("q").map(str::to_owned);
    if let Some(q) = &name_contains
        && (!(1..=100).contains(&q.chars().count()) || q.chars().any(char::is_control))
    {
        errors.add_with(
            "q",
            "format",
            "q must be 1-100 characters without control characters",
        );
    }
    let sort = query.get("sort").map(|raw| {
        db::Sort::parse(raw).ok_or(()).map_err(|()| {
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
        Cursor::decode(raw).ok_or(()).map_err(|()| {
            errors.add_with(
                "cursor",
                "format",
                "cursor must be a next_cursor this server returned",
            );
        })
    });
    let reader = reader(query, &mut errors);
    let repository_id = query.int("repository_id", 1, i64::MAX, &mut errors);
    let offset = query.int("offset", 0, i64::MAX, &mut errors);
    let limit = query.int("limit", 1, 200, &mut errors).unwrap_or(50);
    // A cursor carries its sort and order; given again, they must agree with it.
    let (sort, descending, after) = match cursor {
        Some(Ok(cursor)) => {
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
            if offset.is_some() {
                let note = "pass `cursor` or `offset`, not both";
                errors.add_with("cursor", "conflict", note);
                errors.add_with("offset", "conflict", note);
            }
            (cursor.sort, cursor.descending, Some(cursor.after))
        }
        _ => {
            let sort = match sort {
                Some(Ok(sort)) => sort,
                _ => db::Sort::default(),
            };
            let descending = match order {
                Some(Ok(descending)) => descending,
                _ => sort != db::Sort::Name,
            };
            (sort, descending, None)
        }
    };
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
    };
    Ok((filter, limit))
}

/// `?reader=<name>`: 1-100 printable ASCII characters.
fn reader(query: &QueryParams, errors: &mut FieldErrors) -> Option<String> {
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

/// `GET /v1/channels/{id}`.
#[utoipa::path(get, path = "/v1/channels/{id}", operation_id = "getChannel", tag = "channels", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Channel id: a positive integer without leading zeros (anything else is 400)"),
        ("reader" = Option<String>, Query, pattern = "^[ -~]{1,100}$", description = "Adds `unread_count` and `unread_mentions` for this reader"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
    ),
    responses(
        (status = 200, description = "The channel, with its document", body = ChannelBody, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "`id` is not a channel id (a positive integer without leading zeros)", body = Envelope),
        (status = 404, description = "No such channel (`not_found`)", body = Envelope),
    ))]
pub async fn get(
    _: Scoped<ChannelsRead>,
    query: QueryParams,
    State(state): State<AppState>,
    ChannelId(id): ChannelId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    query.accept(&["reader"], &mut errors);
    let reader = reader(&query, &mut errors);
    errors.into_result()?;
    let mut channel = db::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::channel_not_found(id))?;
    if let Some(reader) = &reader {
        db::add_unread(
            &state.db,
            std::slice::from_mut(&mut channel.summary),
            reader,
        )
        .await?;
    }
    json_with_etag(&headers, &ChannelBody { channel })
}

/// `PUT /v1/channels/{id}/read`: moves `reader`'s `last_read_id` forward, never back; answers
/// the state as it now is, whether it was created, moved or kept.
#[utoipa::path(put, path = "/v1/channels/{id}/read", operation_id = "markRead", tag = "channels", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = "Channel id: a positive integer without leading zeros (anything else is 400)")),
    request_body = ReadState,
    responses(
        (status = 200, description = "The reader's state now: an older `last_read_id` leaves it as it was", body = ReadState),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 404, description = "No such channel", body = Envelope),
    ))]
pub async fn mark_read(
    _: Scoped<ChannelsRead>,
    _: NoQuery,
    State(state): State<AppState>,
    ChannelId(id): ChannelId,
    ValidatedJson(read): ValidatedJson<ReadState>,
) -> Result<Json<ReadState>, ApiError> {
    Ok(Json(record_read(&state, id, &read).await?))
}

/// What `PUT …/read` and MCP's `mark_read` do.
pub async fn record_read(
    state: &AppState,
    channel_id: i64,
    read: &ReadState,
) -> Result<ReadState, ApiError> {
    db::mark_read(&state.db, channel_id, &read.reader, read.last_read_id)
        .await?
        .ok_or_else(|| ApiError::channel_not_found(channel_id))
}

/// `POST /v1/channels`: 201, or 409 `channel_name_taken` when an active channel has the name.
#[utoipa::path(post, path = "/v1/channels", operation_id = "createChannel", tag = "channels", security(("bearer" = []), ("api_key" = [])),
    request_body = CreateChannel,
    responses(
        (status = 201, description = "Created", body = ChannelBody),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 409, description = "An active channel has this name (`channel_name_taken`)", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn create(
    _: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    ValidatedJson(new): ValidatedJson<CreateChannel>,
) -> Result<(StatusCode, Json<ChannelBody>), ApiError> {
    let channel = db::insert(&state.db, &new).await?;
    Ok((StatusCode::CREATED, Json(ChannelBody { channel })))
}

/// `PUT /v1/channels/{id}`: only the fields present change; `{}` changes nothing.
#[utoipa::path(put, path = "/v1/channels/{id}", operation_id = "updateChannel", tag = "channels", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = "Channel id: a positive integer without leading zeros (anything else is 400)")),
    request_body = UpdateChannel,
    responses(
        (status = 200, description = "Updated (only present fields change; `null` clears)", body = ChannelBody),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 404, description = "No such channel", body = Envelope),
        (status = 409, description = "An active channel has this name (`channel_name_taken`)", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn update(
    _: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    ChannelId(id): ChannelId,
    ValidatedJson(change): ValidatedJson<UpdateChannel>,
) -> Result<Json<ChannelBody>, ApiError> {
    let channel = if change.is_empty() {
        db::find(&state.db, id).await?
    } else {
        db::update(&state.db, id, &change).await?
    };
    let channel = channel.ok_or_else(|| ApiError::channel_not_found(id))?;
    Ok(Json(ChannelBody { channel }))
}
