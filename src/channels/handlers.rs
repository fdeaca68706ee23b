//! HTTP handlers for `/v1/channels`.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::Serialize;

use super::{
    db::{self, ListFilter},
    model::{Channel, ChannelSummary, CreateChannel, UpdateChannel, is_ticket_slug},
};
use crate::{
    auth::{ChannelsRead, ChannelsWrite, Scoped},
    error::{ApiError, Envelope, FieldErrors},
    etag::json_with_etag,
    extract::{ChannelId, QueryParams, ValidatedJson},
    json::Json,
    state::AppState,
};

#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelBody {
    pub channel: Channel,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelSummary>,
    pub total: i64,
}

/// `GET /v1/channels`: filtered, paged, most recently active first.
#[utoipa::path(get, path = "/v1/channels", operation_id = "listChannels", tag = "channels", security(("bearer" = []), ("api_key" = [])),
    params(
        ("repository_id" = Option<i64>, Query, minimum = 1, description = "Only channels of this repository"),
        ("ticket_slug" = Option<String>, Query, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "Only channels of this ticket"),
        ("include_archived" = Option<bool>, Query, description = "Include archived channels (default false)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Page size (default 50)"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Channels to skip (default 0)"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer: 304 while unchanged"),
    ),
    responses(
        (status = 200, description = "Most recently active first", body = ChannelList, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "A bad query parameter", body = Envelope),
    ))]
pub async fn list(
    _: Scoped<ChannelsRead>,
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    let ticket_slug = query.get("ticket_slug").map(str::to_owned);
    if ticket_slug
        .as_deref()
        .is_some_and(|slug| !is_ticket_slug(slug))
    {
        errors.add("ticket_slug", "format");
    }
    let filter = ListFilter {
        repository_id: query.int("repository_id", 1, i64::MAX, &mut errors),
        ticket_slug,
        include_archived: query.bool("include_archived", &mut errors).unwrap_or(false),
        limit: query.int("limit", 1, 200, &mut errors).unwrap_or(50),
        offset: query.int("offset", 0, i64::MAX, &mut errors).unwrap_or(0),
    };
    errors.into_result()?;
    let channels = db::list(&state.db, &filter).await?;
    let total = db::count(&state.db, &filter).await?;
    json_with_etag(&headers, &ChannelList { channels, total })
}

/// `GET /v1/channels/{id}`.
#[utoipa::path(get, path = "/v1/channels/{id}", operation_id = "getChannel", tag = "channels", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = "Channel id: a positive integer without leading zeros (anything else is 400)"), ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "The channel, with its document", body = ChannelBody, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "`id` is not a channel id (a positive integer without leading zeros)", body = Envelope),
        (status = 404, description = "No such channel (`not_found`)", body = Envelope),
    ))]
pub async fn get(
    _: Scoped<ChannelsRead>,
    State(state): State<AppState>,
    ChannelId(id): ChannelId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let channel = db::find(&state.db, id).await?.ok_or(ApiError::NotFound)?;
    json_with_etag(&headers, &ChannelBody { channel })
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
    State(state): State<AppState>,
    ChannelId(id): ChannelId,
    ValidatedJson(change): ValidatedJson<UpdateChannel>,
) -> Result<Json<ChannelBody>, ApiError> {
    let channel = if change.is_empty() {
        db::find(&state.db, id).await?
    } else {
        db::update(&state.db, id, &change).await?
    };
    let channel = channel.ok_or(ApiError::NotFound)?;
    Ok(Json(ChannelBody { channel }))
}
