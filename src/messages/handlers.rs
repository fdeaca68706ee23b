//! HTTP handlers for `/v1/channels/{id}/messages`.

use std::time::Duration;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::Serialize;
use tokio::{sync::broadcast::error::RecvError, time::Instant};

use super::{
    db::{self, Page},
    model::{CreateMessage, Message, is_printable_ascii},
};
use crate::{
    auth::{ChannelsRead, ChannelsWrite, Scoped},
    channels::{ChannelState, channel_state},
    error::{ApiError, Envelope, FieldErrors},
    etag::json_with_etag,
    extract::{ChannelId, NoQuery, QueryParams, ValidatedJson},
    json::Json,
    state::AppState,
};

const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageBody {
    pub message: Message,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// Longest `wait` of a long poll, in seconds.
const MAX_WAIT_SECS: i64 = 30;

/// `GET /v1/channels/{id}/messages`: newest first, or oldest first after an `after` cursor.
///
/// With `after` and `wait=<seconds>`, an empty answer is held until a message is committed (on
/// any instance) or the wait ends (long poll). The waiter follows the channel *before* reading,
/// so a message committed between its read and its wait still wakes it; while waiting it holds
/// no database connection.
#[utoipa::path(get, path = "/v1/channels/{id}/messages", operation_id = "listMessages", tag = "messages", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Channel id: a positive integer without leading zeros (anything else is 400)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Page size (default 50)"),
        ("before" = Option<i64>, Query, minimum = 1, description = "Messages older than this id, newest first"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Messages newer than this id, oldest first"),
        ("wait" = Option<i64>, Query, minimum = 0, maximum = 30, description = "With `after`: hold an empty answer up to this many seconds for a new message"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
    ),
    responses(
        (status = 200, description = "A page of history", body = MessagePage, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "A bad query parameter", body = Envelope),
        (status = 404, description = "No such channel", body = Envelope),
    ))]
pub async fn list(
    _: Scoped<ChannelsRead>,
    State(state): State<AppState>,
    ChannelId(channel_id): ChannelId,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    query.accept(&["limit", "before", "after", "wait"], &mut errors);
    let limit = query.int("limit", 1, 100, &mut errors).unwrap_or(50);
    let before = query.int("before", 1, i64::MAX, &mut errors);
    let after = query.int("after", 0, i64::MAX, &mut errors);
    let wait = query
        .int("wait", 0, MAX_WAIT_SECS, &mut errors)
        .unwrap_or(0);
    if before.is_some() && after.is_some() {
        errors.add("before", "conflict");
        errors.add("after", "conflict");
    }
    if wait > 0 && after.is_none() {
        errors.add("wait", "requires_after");
    }
    errors.into_result()?;
    let page = match (before, after) {
        (Some(before), _) => Page::Before(before),
        (_, Some(after)) => Page::After(after),
        _ => Page::Latest,
    };

    // Followed before reading: whatever commits after this read still wakes the waiter.
    let follow = match wait > 0 {
        true => Some(state.delivery.follow(channel_id).await?),
        false => None,
    };
    let mut feed = follow
        .as_ref()
        .map(|_| state.delivery.feeds().subscribe(channel_id));
    let mut messages = db::page(&state.db, channel_id, page, limit + 1).await?;
    if messages.is_empty() && channel_state(&state.db, channel_id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    if let Some(feed) = feed.as_mut() {
        let deadline = Instant::now() + Duration::from_secs(wait.unsigned_abs());
        let mut shutdown = state.realtime.shutdown.subscribe();
        while messages.is_empty() {
            tokio::select! {
                woken = tokio::time::timeout_at(deadline, feed.recv()) => match woken {
                    // A new message, or so many that this waiter lagged: read them from the database.
                    Ok(Ok(_) | Err(RecvError::Lagged(_))) => {}
                    Ok(Err(RecvError::Closed)) | Err(_) => break,
                },
                _ = shutdown.wait_for(|stopping| *stopping) => break,
            }
            messages = db::page(&state.db, channel_id, page, limit + 1).await?;
        }
    }
    let has_more = messages.len() as i64 > limit;
    messages.truncate(limit as usize);
    json_with_etag(&headers, &MessagePage { messages, has_more })
}

/// `POST /v1/channels/{id}/messages`: 201 with the stored message; with an `Idempotency-Key`
/// already used on this channel, 200 with the message first stored under it.
#[utoipa::path(post, path = "/v1/channels/{id}/messages", operation_id = "postMessage", tag = "messages", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Channel id: a positive integer without leading zeros (anything else is 400)"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII characters; retries with the same key return the original message"),
    ),
    request_body = CreateMessage,
    responses(
        (status = 201, description = "Stored", body = MessageBody),
        (status = 200, description = "A retry: the message first stored under this Idempotency-Key", body = MessageBody),
        (status = 400, description = "Malformed JSON, an invalid field or Idempotency-Key", body = Envelope),
        (status = 404, description = "No such channel", body = Envelope),
        (status = 409, description = "The channel is archived (`channel_archived`)", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn create(
    _: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    ChannelId(channel_id): ChannelId,
    headers: HeaderMap,
    ValidatedJson(new): ValidatedJson<CreateMessage>,
) -> Result<(StatusCode, Json<MessageBody>), ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    // The insert and its doorbell run in a task of their own: a client that hangs up cancels this
    // handler, never a commit's doorbell. (Were the process to die between the two, the readers'
    // sweep would still find the message.)
    let insert = {
        let (db, delivery) = (state.db.clone(), state.delivery.clone());
        let idempotency_key = idempotency_key.map(str::to_owned);
        async move {
            let stored = db::insert(
                &db,
                channel_id,
                &new.content,
                new.sender_type(),
                new.pod_key.as_deref(),
                idempotency_key.as_deref(),
            )
            .await?;
            if let Some(message) = &stored {
                let pause = delivery.post_commit_pause();
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                delivery.ring(channel_id, message.id);
            }
            Ok::<_, sqlx::Error>(stored)
        }
    };
    let stored = tokio::spawn(insert)
        .await
        .map_err(|error| ApiError::Internal(Box::new(error)))??;
    if let Some(message) = stored {
        return Ok((StatusCode::CREATED, Json(MessageBody { message })));
    }

    // Nothing stored: an earlier request with this key, or a missing or archived channel.
    if let Some(key) = idempotency_key
        && let Some(original) = db::find_by_idempotency_key(&state.db, channel_id, key).await?
    {
        // Rung again: the first attempt's poster may have died between commit and doorbell.
        state.delivery.ring(channel_id, original.id);
        return Ok((StatusCode::OK, Json(MessageBody { message: original })));
    }
    match channel_state(&state.db, channel_id).await? {
        None => Err(ApiError::NotFound),
        Some(ChannelState::Archived) => Err(ApiError::ChannelArchived),
        // Archived when the insert ran, unarchived since: the post was refused as archived.
        Some(ChannelState::Active) => Err(ApiError::ChannelArchived),
    }
}

/// The `Idempotency-Key` header: 1-255 printable ASCII characters when present.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if is_printable_ascii(key, 255) => Ok(Some(key)),
        _ => Err(ApiError::invalid_field(
            "Idempotency-Key",
            "format",
            "Idempotency-Key must be 1-255 printable ASCII characters",
        )),
    }
}
