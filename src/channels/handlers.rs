//! HTTP handlers for `/v1/channels`: each parses its request and calls [`super::service`].

use axum::{extract::State, http::StatusCode, response::Response};
use serde::Serialize;

use super::{
    model::{Channel, CreateChannel, ReadState, UpdateChannel},
    service::{self, ChannelList},
};
use crate::{
    auth::{ChannelsRead, ChannelsWrite, Scoped},
    error::{ApiError, Envelope, FieldErrors},
    etag::{IfNoneMatch, json_with_etag},
    extract::{ChannelId, NoQuery, QueryParams, ValidatedJson},
    json::Json,
    state::AppState,
};

#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelBody {
    pub channel: Channel,
}

/// `GET /v1/channels`: filtered, searched, sorted, paged by offset or by cursor.
#[utoipa::path(get, path = "/v1/channels", operation_id = "listChannels", tag = "channels", security(("bearer" = []), ("api_key" = [])),
    params(
        ("repository_id" = Option<i64>, Query, minimum = 1, description = "Only channels of this repository"),
        ("ticket_slug" = Option<String>, Query, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "Only channels of this ticket"),
        ("archived" = Option<bool>, Query, description = "`true`: only archived channels; `false`: only active ones (the default). Not with `include_archived`"),
        ("include_archived" = Option<bool>, Query, description = "`true`: active and archived channels. Not with `archived`"),
        ("q" = Option<String>, Query, pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,100}$", description = "Only channels whose name contains this text (1-100 characters without control characters), ignoring case"),
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
    caller: Scoped<ChannelsRead>,
    State(state): State<AppState>,
    if_none_match: IfNoneMatch,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let (filter, limit) = service::list_filter(&query, &caller.principal)?;
    let page = service::list_page(&state, &filter, limit).await?;
    json_with_etag(&if_none_match, &page)
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
    caller: Scoped<ChannelsRead>,
    query: QueryParams,
    State(state): State<AppState>,
    ChannelId(id): ChannelId,
    if_none_match: IfNoneMatch,
) -> Result<Response, ApiError> {
    caller.principal.may_use_channel(&state, id).await?;
    let mut errors = FieldErrors::default();
    query.accept(&["reader"], &mut errors);
    let reader = service::reader(&query, &mut errors);
    errors.into_result()?;
    let channel = service::get(&state, id, reader.as_deref()).await?;
    json_with_etag(&if_none_match, &ChannelBody { channel })
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
    caller: Scoped<ChannelsRead>,
    _: NoQuery,
    State(state): State<AppState>,
    ChannelId(id): ChannelId,
    ValidatedJson(read): ValidatedJson<ReadState>,
) -> Result<Json<ReadState>, ApiError> {
    caller.principal.may_use_channel(&state, id).await?;
    Ok(Json(service::record_read(&state, id, &read).await?))
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
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    ValidatedJson(new): ValidatedJson<CreateChannel>,
) -> Result<(StatusCode, Json<ChannelBody>), ApiError> {
    caller.principal.may_create_channels()?;
    let channel = service::create(&state, &caller.principal, &new).await?;
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
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    ChannelId(id): ChannelId,
    ValidatedJson(change): ValidatedJson<UpdateChannel>,
) -> Result<Json<ChannelBody>, ApiError> {
    caller.principal.may_use_channel(&state, id).await?;
    let channel = service::update(&state, &caller.principal, id, &change).await?;
    Ok(Json(ChannelBody { channel }))
}
