//! HTTP handlers for `/v1/channels/{id}/messages`: each parses its request and calls
//! [`super::service`].

use std::time::Duration;

use axum::{
    Extension,
    extract::{FromRequestParts, State},
    http::{HeaderName, HeaderValue, StatusCode, request::Parts},
    response::Response,
};
use serde::Serialize;

use super::{
    db::Page,
    model::{CreateMessage, Message, is_printable_ascii},
    service::{self, MessagePage, Stored},
};
use crate::{
    auth::{ChannelsRead, ChannelsWrite, Scoped},
    error::{ApiError, Envelope, FieldErrors},
    etag::{self, IfNoneMatch, json_with_identity},
    extract::{ChannelId, NoQuery, QueryParams, ValidatedJson},
    json::Json,
    limits::InFlight,
    state::AppState,
};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageBody {
    pub message: Message,
}

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
        ("wait" = Option<i64>, Query, minimum = 0, maximum = 30, description = "With `after`: hold an empty answer up to this many seconds for a new message (one the filters below want)"),
        ("mentions" = Option<String>, Query, pattern = "^[ -~]{1,100}$", description = "Only messages whose `mentions` hold this name"),
        ("thread" = Option<i64>, Query, minimum = 1, description = "Only the messages of this thread: its first message's id (`thread_id`)"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
    ),
    responses(
        (status = 200, description = "A page of history", body = MessagePage, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "A bad query parameter", body = Envelope),
        (status = 404, description = "No such channel", body = Envelope),
    ))]
pub async fn list(
    caller: Scoped<ChannelsRead>,
    State(state): State<AppState>,
    ChannelId(channel_id): ChannelId,
    allowance: Option<Extension<InFlight>>,
    if_none_match: IfNoneMatch,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    query.accept(
        &["limit", "before", "after", "wait", "mentions", "thread"],
        &mut errors,
    );
    let filter = service::filter(&query, &mut errors);
    let limit = query.int("limit", 1, 100, &mut errors).unwrap_or(50);
    let before = query.int("before", 1, i64::MAX, &mut errors);
    let after = query.int("after", 0, i64::MAX, &mut errors);
    let wait = query
        .int("wait", 0, service::MAX_WAIT_SECS, &mut errors)
        .unwrap_or(0);
    if before.is_some() && after.is_some() {
        errors.add("before", "conflict");
        errors.add("after", "conflict");
    }
    if wait > 0 && after.is_none() {
        errors.add_with(
            "wait",
            "requires_after",
            "wait needs after: a long poll waits for messages newer than the last id you have, \
             so send after=<that id> (after=0 waits for the channel's first message)",
        );
    }
    errors.into_result()?;
    let page = match (before, after) {
        (Some(before), _) => Page::Before(before),
        (_, Some(after)) => Page::After(after),
        _ => Page::Latest,
    };

    caller.principal.may_use_channel(&state, channel_id).await?;
    if matches!(page, Page::Latest) && filter.is_empty() {
        let latest = service::latest(&state, channel_id, limit).await?;
        return Ok(etag::rendered(&if_none_match, &latest.tag, latest.body));
    }
    let wait = Duration::from_secs(wait.unsigned_abs());
    if let Some(Extension(allowance)) = allowance {
        // The request's deadline makes room for the wait (see `limits`).
        allowance.allow(wait);
    }
    let page = if wait.is_zero() {
        service::read(&state, channel_id, page, limit, wait, &filter).await?
    } else {
        // A long poll counts toward the key's open streams, and ends with the key.
        let mut stream = state.streams.open(&caller.principal.key_id)?;
        tokio::select! {
            read = service::read(&state, channel_id, page, limit, wait, &filter) => read?,
            ended = stream.ended() => return Err(ended),
        }
    };
    // Stored messages never change: the ids on the page (and whether more follow) determine
    // its body exactly.
    let identity = (
        page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        page.has_more,
    );
    json_with_identity(&if_none_match, &page, identity)
}

/// `POST /v1/channels/{id}/messages`: 201 with the stored message; with an `Idempotency-Key`
/// already used on this channel, 200 with the message first stored under it.
#[utoipa::path(post, path = "/v1/channels/{id}/messages", operation_id = "postMessage", tag = "messages", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Channel id: a positive integer without leading zeros (anything else is 400)"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[ -~]{1,255}$", description = "1-255 printable ASCII characters; retries with the same key (from the same API key) return the original message"),
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
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    ChannelId(channel_id): ChannelId,
    IdempotencyHeader(idempotency_header): IdempotencyHeader,
    ValidatedJson(new): ValidatedJson<CreateMessage>,
) -> Result<(StatusCode, Json<MessageBody>), ApiError> {
    let idempotency_key = idempotency_key(idempotency_header.as_ref())?
        .map(|key| service::IdempotencyKey::of(&caller.principal.key_id, key));
    caller.principal.may_use_channel(&state, channel_id).await?;
    let (stored, message) = service::store(&state, channel_id, new, idempotency_key).await?;
    let status = match stored {
        Stored::New => StatusCode::CREATED,
        Stored::Earlier => StatusCode::OK,
    };
    Ok((status, Json(MessageBody { message })))
}

/// The `Idempotency-Key` header as sent, checked by [`idempotency_key`]. Taken alone: the
/// `HeaderMap` extractor copies every header.
pub struct IdempotencyHeader(Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(IDEMPOTENCY_KEY).cloned()))
    }
}

/// The `Idempotency-Key` header: 1-255 printable ASCII characters when present.
fn idempotency_key(value: Option<&HeaderValue>) -> Result<Option<&str>, ApiError> {
    let Some(value) = value else {
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
