//! HTTP handlers for `/v1/channels`.

use axum::{
    Json,
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
    error::{ApiError, FieldErrors},
    etag::json_with_etag,
    extract::{ChannelId, QueryParams, ValidatedJson},
    startup::AppState,
};

#[derive(Serialize)]
pub struct ChannelBody {
    pub channel: Channel,
}

#[derive(Serialize)]
pub struct ChannelList {
    pub channels: Vec<ChannelSummary>,
    pub total: i64,
}

/// `GET /v1/channels`: filtered, paged, most recently active first.
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
pub async fn create(
    _: Scoped<ChannelsWrite>,
    State(state): State<AppState>,
    ValidatedJson(new): ValidatedJson<CreateChannel>,
) -> Result<(StatusCode, Json<ChannelBody>), ApiError> {
    let channel = db::insert(&state.db, &new).await?;
    Ok((StatusCode::CREATED, Json(ChannelBody { channel })))
}

/// `PUT /v1/channels/{id}`: only the fields present change; `{}` changes nothing.
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
