//! HTTP handlers for `/v1/channels/{id}/consumers…`: each parses its request and calls
//! [`super::service`].

use std::collections::HashMap;

use axum::{
    Extension,
    extract::{FromRequestParts, Path, State},
    http::{StatusCode, request::Parts},
};

use super::{
    model::{
        Acked, Claim, ConsumerBody, ConsumerList, CreateConsumer, DeadList, Deliveries,
        DeliveryIds, Extended, Nack, Nacked, Retried,
    },
    service,
};
use crate::{
    auth::{ChannelsRead, ChannelsWrite, Scoped},
    error::{ApiError, Envelope, FieldErrors},
    extract::{NoQuery, QueryParams, ValidatedJson, parse_channel_id},
    json::Json,
    limits::InFlight,
    state::AppState,
};

/// `{id}`, `{name}` and, where the path has one, `{message_id}`.
pub struct GroupPath {
    channel_id: i64,
    name: String,
    message_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(mut segments) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("the path does not decode"))?;
        let id = segments.remove("id").unwrap_or_default();
        Ok(Self {
            channel_id: parse_channel_id(&id)?.0,
            name: segments.remove("name").unwrap_or_default(),
            message_id: segments.remove("message_id"),
        })
    }
}

const ID: &str = "Channel id: a positive integer without leading zeros (anything else is 400)";

/// `POST /v1/channels/{id}/consumers`: 201, or 409 `consumer_exists`.
#[utoipa::path(post, path = "/v1/channels/{id}/consumers", operation_id = "createConsumer", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = ID)),
    request_body = CreateConsumer,
    responses(
        (status = 201, description = "Created", body = ConsumerBody),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 404, description = "No such channel", body = Envelope),
        (status = 409, description = "The channel has a group of this name (`consumer_exists`)", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn create(
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    path: GroupPath,
    ValidatedJson(new): ValidatedJson<CreateConsumer>,
) -> Result<(StatusCode, Json<ConsumerBody>), ApiError> {
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let consumer = service::create(&state, path.channel_id, &new).await?;
    Ok((StatusCode::CREATED, Json(ConsumerBody { consumer })))
}

/// `GET /v1/channels/{id}/consumers`: the channel's groups, by name.
#[utoipa::path(get, path = "/v1/channels/{id}/consumers", operation_id = "listConsumers", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = ID)),
    responses(
        (status = 200, description = "The channel's consumer groups", body = ConsumerList),
        (status = 400, description = "A bad path or query parameter", body = Envelope),
        (status = 404, description = "No such channel", body = Envelope),
    ))]
pub async fn list(
    caller: Scoped<ChannelsRead>,
    _: NoQuery,
    State(state): State<AppState>,
    path: GroupPath,
) -> Result<Json<ConsumerList>, ApiError> {
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let groups = super::db::list(&state.db, path.channel_id).await?;
    if groups.is_empty()
        && crate::channels::channel_state(&state.db, path.channel_id)
            .await?
            .is_none()
    {
        return Err(ApiError::channel_not_found(path.channel_id));
    }
    let mut consumers = Vec::with_capacity(groups.len());
    for group in &groups {
        consumers.push(service::shown(&state, group).await?);
    }
    Ok(Json(ConsumerList { consumers }))
}

/// `GET /v1/channels/{id}/consumers/{name}`.
#[utoipa::path(get, path = "/v1/channels/{id}/consumers/{name}", operation_id = "getConsumer", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = ID), ("name" = String, Path, description = "The group's name")),
    responses(
        (status = 200, description = "The group and where its work stands", body = ConsumerBody),
        (status = 400, description = "A bad path or query parameter", body = Envelope),
        (status = 404, description = "No such channel or group", body = Envelope),
    ))]
pub async fn get(
    caller: Scoped<ChannelsRead>,
    _: NoQuery,
    State(state): State<AppState>,
    path: GroupPath,
) -> Result<Json<ConsumerBody>, ApiError> {
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let group = service::group(&state, path.channel_id, &path.name).await?;
    let consumer = service::shown(&state, &group).await?;
    Ok(Json(ConsumerBody { consumer }))
}

/// `DELETE /v1/channels/{id}/consumers/{name}`: the group and its state, gone (204).
#[utoipa::path(delete, path = "/v1/channels/{id}/consumers/{name}", operation_id = "deleteConsumer", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = ID), ("name" = String, Path, description = "The group's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad path or query parameter", body = Envelope),
        (status = 404, description = "No such channel or group", body = Envelope),
    ))]
pub async fn delete(
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    path: GroupPath,
) -> Result<StatusCode, ApiError> {
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let group = service::group(&state, path.channel_id, &path.name).await?;
    service::delete(&state, &group).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/channels/{id}/consumers/{name}/claim`: leases up to `max` messages to `member`.
///
/// With `wait`, an empty claim is held until a message the group wants is committed (on any
/// instance) or the wait ends; while waiting it holds no database connection.
#[utoipa::path(post, path = "/v1/channels/{id}/consumers/{name}/claim", operation_id = "claimMessages", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = ID), ("name" = String, Path, description = "The group's name")),
    request_body = Claim,
    responses(
        (status = 200, description = "The messages leased, in id order (`[]` when none was ready)", body = Deliveries),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 404, description = "No such channel or group", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn claim(
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    path: GroupPath,
    allowance: Option<Extension<InFlight>>,
    ValidatedJson(claim): ValidatedJson<Claim>,
) -> Result<Json<Deliveries>, ApiError> {
    let args = service::claim_args(claim)?;
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let group = service::group(&state, path.channel_id, &path.name).await?;
    if let Some(Extension(allowance)) = allowance {
        // The request's deadline makes room for the wait (see `limits`).
        allowance.allow(args.wait);
    }
    let deliveries = if args.wait.is_zero() {
        service::claim(&state, &group, &args).await?
    } else {
        // A waiting claim counts toward the key's open streams, and ends with the key.
        let mut stream = state.streams.open(&caller.principal.key_id)?;
        tokio::select! {
            claimed = service::claim(&state, &group, &args) => claimed?,
            ended = stream.ended() => return Err(ended),
        }
    };
    Ok(Json(Deliveries { deliveries }))
}

/// `POST /v1/channels/{id}/consumers/{name}/ack`: done with these messages for good.
#[utoipa::path(post, path = "/v1/channels/{id}/consumers/{name}/ack", operation_id = "ackMessages", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = ID), ("name" = String, Path, description = "The group's name")),
    request_body = DeliveryIds,
    responses(
        (status = 200, description = "How many were acked; the leases that had expired are `lost`", body = Acked),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 404, description = "No such channel or group", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn ack(
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    path: GroupPath,
    ValidatedJson(body): ValidatedJson<DeliveryIds>,
) -> Result<Json<Acked>, ApiError> {
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let group = service::group(&state, path.channel_id, &path.name).await?;
    Ok(Json(service::ack(&state, &group, body.delivery_ids).await?))
}

/// `POST /v1/channels/{id}/consumers/{name}/nack`: give these back, claimable after `delay`.
#[utoipa::path(post, path = "/v1/channels/{id}/consumers/{name}/nack", operation_id = "nackMessages", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = ID), ("name" = String, Path, description = "The group's name")),
    request_body = Nack,
    responses(
        (status = 200, description = "How many were given back; the leases that had expired are `lost`", body = Nacked),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 404, description = "No such channel or group", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn nack(
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    path: GroupPath,
    ValidatedJson(body): ValidatedJson<Nack>,
) -> Result<Json<Nacked>, ApiError> {
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let group = service::group(&state, path.channel_id, &path.name).await?;
    let nacked = service::nack(&state, &group, body.delivery_ids, body.delay.as_deref()).await?;
    Ok(Json(nacked))
}

/// `POST /v1/channels/{id}/consumers/{name}/extend`: hold these for another `ack_wait`.
#[utoipa::path(post, path = "/v1/channels/{id}/consumers/{name}/extend", operation_id = "extendLeases", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(("id" = i64, Path, minimum = 1, description = ID), ("name" = String, Path, description = "The group's name")),
    request_body = DeliveryIds,
    responses(
        (status = 200, description = "How many leases were renewed; those that had expired are `lost`", body = Extended),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 404, description = "No such channel or group", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn extend(
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    path: GroupPath,
    ValidatedJson(body): ValidatedJson<DeliveryIds>,
) -> Result<Json<Extended>, ApiError> {
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let group = service::group(&state, path.channel_id, &path.name).await?;
    Ok(Json(
        service::extend(&state, &group, body.delivery_ids).await?,
    ))
}

/// `GET /v1/channels/{id}/consumers/{name}/dead`: messages set aside after `max_deliveries`.
#[utoipa::path(get, path = "/v1/channels/{id}/consumers/{name}/dead", operation_id = "listDeadLetters", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = ID),
        ("name" = String, Path, description = "The group's name"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Dead letters of messages after this id"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "Dead letters, oldest message first", body = DeadList),
        (status = 400, description = "A bad path or query parameter", body = Envelope),
        (status = 404, description = "No such channel or group", body = Envelope),
    ))]
pub async fn dead(
    caller: Scoped<ChannelsRead>,
    State(state): State<AppState>,
    path: GroupPath,
    query: QueryParams,
) -> Result<Json<DeadList>, ApiError> {
    let mut errors = FieldErrors::default();
    query.accept(&["after", "limit"], &mut errors);
    let after = query.int("after", 0, i64::MAX, &mut errors).unwrap_or(0);
    let limit = query.int("limit", 1, 100, &mut errors).unwrap_or(100);
    errors.into_result()?;
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let group = service::group(&state, path.channel_id, &path.name).await?;
    let dead = service::dead(&state, &group, after, limit).await?;
    Ok(Json(DeadList { dead }))
}

/// `POST /v1/channels/{id}/consumers/{name}/dead/{message_id}/retry`: claimable again, as a
/// first attempt.
#[utoipa::path(post, path = "/v1/channels/{id}/consumers/{name}/dead/{message_id}/retry", operation_id = "retryDeadLetter", tag = "consumers", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = ID),
        ("name" = String, Path, description = "The group's name"),
        ("message_id" = i64, Path, minimum = 1, description = "The dead letter's message id"),
    ),
    responses(
        (status = 200, description = "Claimable again", body = Retried),
        (status = 400, description = "A bad path or query parameter", body = Envelope),
        (status = 404, description = "No such channel, group or dead letter", body = Envelope),
    ))]
pub async fn retry(
    caller: Scoped<ChannelsWrite>,
    _: NoQuery,
    State(state): State<AppState>,
    path: GroupPath,
) -> Result<Json<Retried>, ApiError> {
    let raw = path.message_id.as_deref().unwrap_or_default();
    let message_id = parse_channel_id(raw)
        .map_err(|_| {
            ApiError::invalid_field(
                "message_id",
                "format",
                format!(
                    "message ids are positive integers without leading zeros (got `{}`)",
                    raw.chars().take(40).collect::<String>()
                ),
            )
        })?
        .0;
    caller
        .principal
        .may_use_channel(&state, path.channel_id)
        .await?;
    let group = service::group(&state, path.channel_id, &path.name).await?;
    service::retry(&state, &group, message_id).await?;
    Ok(Json(Retried { message_id }))
}
