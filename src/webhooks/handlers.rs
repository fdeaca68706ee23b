//! HTTP handlers for `/v1/webhooks…` (scope `admin`; a key reaches its own app's webhooks only).

use std::time::Duration;

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use chrono::Utc;
use reqwest::Url;

use super::{
    db::{self, Change, NewWebhook},
    model::{
        CreateWebhook, CreatedWebhook, EVENT_TYPES, RotatedSecret, UpdateWebhook, WebhookBody,
        WebhookDeliveryBody, WebhookDeliveryList, WebhookList, parse_event_id,
    },
    send::{is_public, literal_ip, new_secret},
};
use crate::{
    auth::{Admin, Principal, Scoped},
    error::{ApiError, Envelope, FieldErrors},
    extract::{NoQuery, QueryParams, ValidatedJson},
    json::Json,
    state::AppState,
};

/// How long the previous secret keeps signing after a rotation.
const PREVIOUS_SECRET_LIFETIME: chrono::Duration = chrono::Duration::hours(24);
const MAX_URL: usize = 2000;
const MAX_DESCRIPTION: usize = 500;
const MAX_PATTERNS: usize = 32;
const MAX_PATTERN: usize = 256;
/// How long registration waits for a URL's name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

fn not_found(id: &str) -> ApiError {
    let shown: String = id.chars().take(60).collect();
    ApiError::NotFound(format!("webhook {shown} not found"))
}

/// `POST /v1/webhooks`: 201 with the secret, shown this once.
#[utoipa::path(post, path = "/v1/webhooks", operation_id = "createWebhook", tag = "webhooks", security(("bearer" = []), ("api_key" = [])),
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = CreatedWebhook),
        (status = 400, description = "Malformed JSON, an invalid field, or a URL that is not allowed", body = Envelope),
        (status = 403, description = "The key lacks `admin`, or `channels` reach beyond its patterns", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn create(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
    ValidatedJson(new): ValidatedJson<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let caller = &caller.principal;
    let mut errors = FieldErrors::default();
    let events = check_events(&new.events, &mut errors);
    let channels = match &new.channels {
        Some(channels) => check_channels(channels, &mut errors),
        None => caller.stored_patterns.to_vec(),
    };
    let description = check_description(new.description.as_deref(), &mut errors);
    let url = check_url(&state, &new.url, &mut errors).await;
    errors.into_result()?;
    within_key(caller, &channels)?;
    let id = format!("wh_{}", uuid::Uuid::new_v4().simple());
    let secret = new_secret();
    let sealed = state.config.master_key.encrypt(&id, &secret);
    let webhook = db::insert(
        &state.db,
        NewWebhook {
            id: &id,
            app_id: caller.app_id(),
            url: &url,
            events: &events,
            channels: &channels,
            description,
            secret: &sealed,
        },
    )
    .await?;
    enabled(&state, caller.app_id());
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook { webhook, secret }),
    ))
}

/// `GET /v1/webhooks`: the app's webhooks, oldest first.
#[utoipa::path(get, path = "/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks", security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The app's webhooks", body = WebhookList),
        (status = 400, description = "A query parameter was given", body = Envelope),
        (status = 403, description = "The key lacks `admin`", body = Envelope),
    ))]
pub async fn list(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
) -> Result<Json<WebhookList>, ApiError> {
    let webhooks = db::list(&state.db, caller.principal.app_id()).await?;
    Ok(Json(WebhookList { webhooks }))
}

/// `GET /v1/webhooks/{id}`.
#[utoipa::path(get, path = "/v1/webhooks/{id}", operation_id = "getWebhook", tag = "webhooks", security(("bearer" = []), ("api_key" = [])),
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses(
        (status = 200, description = "The webhook", body = WebhookBody),
        (status = 400, description = "A query parameter was given", body = Envelope),
        (status = 403, description = "The key lacks `admin`", body = Envelope),
        (status = 404, description = "The app has no such webhook", body = Envelope),
    ))]
pub async fn get(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookBody>, ApiError> {
    let webhook = db::find(&state.db, caller.principal.app_id(), &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(WebhookBody { webhook }))
}

/// `PUT /v1/webhooks/{id}`: changes the fields given (`{"enabled": true}` resumes a webhook that
/// a 410 disabled; its pending events go out).
#[utoipa::path(put, path = "/v1/webhooks/{id}", operation_id = "updateWebhook", tag = "webhooks", security(("bearer" = []), ("api_key" = [])),
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    request_body = UpdateWebhook,
    responses(
        (status = 200, description = "The webhook as changed", body = WebhookBody),
        (status = 400, description = "Malformed JSON, an invalid field, or a URL that is not allowed", body = Envelope),
        (status = 403, description = "The key lacks `admin`, or `channels` reach beyond its patterns", body = Envelope),
        (status = 404, description = "The app has no such webhook", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn update(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ValidatedJson(change): ValidatedJson<UpdateWebhook>,
) -> Result<Json<WebhookBody>, ApiError> {
    let caller = &caller.principal;
    let mut errors = FieldErrors::default();
    let events = change
        .events
        .as_ref()
        .map(|events| check_events(events, &mut errors));
    let channels = change
        .channels
        .as_ref()
        .map(|channels| check_channels(channels, &mut errors));
    let description = check_description(change.description.as_deref(), &mut errors);
    let url = match &change.url {
        Some(url) => Some(check_url(&state, url, &mut errors).await),
        None => None,
    };
    errors.into_result()?;
    if let Some(channels) = &channels {
        within_key(caller, channels)?;
    }
    let webhook = db::update(
        &state.db,
        caller.app_id(),
        &id,
        Change {
            enabled: change.enabled,
            url: url.as_deref(),
            events: events.as_deref(),
            channels: channels.as_deref(),
            description,
        },
    )
    .await?
    .ok_or_else(|| not_found(&id))?;
    if webhook.enabled {
        enabled(&state, caller.app_id());
    }
    Ok(Json(WebhookBody { webhook }))
}

/// `DELETE /v1/webhooks/{id}`: the webhook and its deliveries, gone (204).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "deleteWebhook", tag = "webhooks", security(("bearer" = []), ("api_key" = [])),
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A query parameter was given", body = Envelope),
        (status = 403, description = "The key lacks `admin`", body = Envelope),
        (status = 404, description = "The app has no such webhook", body = Envelope),
    ))]
pub async fn delete(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if db::delete(&state.db, caller.principal.app_id(), &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}

/// `POST /v1/webhooks/{id}/rotate-secret`: a new secret; the previous one keeps signing beside
/// it (a second `v1,` signature) for 24 hours.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", operation_id = "rotateWebhookSecret", tag = "webhooks", security(("bearer" = []), ("api_key" = [])),
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses(
        (status = 200, description = "The new secret, shown only here", body = RotatedSecret),
        (status = 400, description = "A query parameter was given", body = Envelope),
        (status = 403, description = "The key lacks `admin`", body = Envelope),
        (status = 404, description = "The app has no such webhook", body = Envelope),
    ))]
pub async fn rotate_secret(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RotatedSecret>, ApiError> {
    let secret = new_secret();
    let sealed = state.config.master_key.encrypt(&id, &secret);
    let until = Utc::now() + PREVIOUS_SECRET_LIFETIME;
    if db::rotate(&state.db, caller.principal.app_id(), &id, &sealed, until).await? {
        Ok(Json(RotatedSecret { secret }))
    } else {
        Err(not_found(&id))
    }
}

/// `GET /v1/webhooks/{id}/deliveries`: newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "webhooks", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = String, Path, description = "The webhook's id (`wh_…`)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "At most this many (default 50)"),
        ("state" = Option<String>, Query, pattern = "^(pending|delivered|failed)$", description = "Only deliveries in this state"),
        ("before" = Option<String>, Query, pattern = "^evt_[1-9][0-9]{0,17}$", description = "Only events older than this one (the last `event_id` of a page)"),
    ),
    responses(
        (status = 200, description = "The webhook's deliveries", body = WebhookDeliveryList),
        (status = 400, description = "A bad query parameter", body = Envelope),
        (status = 403, description = "The key lacks `admin`", body = Envelope),
        (status = 404, description = "The app has no such webhook", body = Envelope),
    ))]
pub async fn deliveries(
    caller: Scoped<Admin>,
    query: QueryParams,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookDeliveryList>, ApiError> {
    let mut errors = FieldErrors::default();
    query.accept(&["limit", "state", "before"], &mut errors);
    let limit = query.int("limit", 1, 200, &mut errors).unwrap_or(50);
    let wanted = query.get("state");
    if let Some(wanted) = wanted
        && !["pending", "delivered", "failed"].contains(&wanted)
    {
        errors.add_with(
            "state",
            "enum",
            "state must be pending, delivered or failed",
        );
    }
    let before = query.get("before").and_then(|before| {
        let id = parse_event_id(before);
        if id.is_none() {
            errors.add_with(
                "before",
                "format",
                "before must be an event id such as evt_42",
            );
        }
        id
    });
    errors.into_result()?;
    db::find(&state.db, caller.principal.app_id(), &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let deliveries = db::deliveries(&state.db, &id, wanted, before, limit).await?;
    Ok(Json(WebhookDeliveryList { deliveries }))
}

/// `POST /v1/webhooks/{id}/deliveries/{event_id}/retry`: one more attempt now, whatever the
/// delivery's state (202).
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{event_id}/retry", operation_id = "retryWebhookDelivery", tag = "webhooks", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = String, Path, description = "The webhook's id (`wh_…`)"),
        ("event_id" = String, Path, description = "The event's id (`evt_…`)"),
    ),
    responses(
        (status = 202, description = "The delivery is due now", body = WebhookDeliveryBody),
        (status = 400, description = "A query parameter was given", body = Envelope),
        (status = 403, description = "The key lacks `admin`", body = Envelope),
        (status = 404, description = "The app has no such webhook, or it has no such delivery", body = Envelope),
    ))]
pub async fn retry(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
    Path((id, event)): Path<(String, String)>,
) -> Result<(StatusCode, Json<WebhookDeliveryBody>), ApiError> {
    db::find(&state.db, caller.principal.app_id(), &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let shown: String = event.chars().take(60).collect();
    let missing = || ApiError::NotFound(format!("webhook {id} has no delivery of event {shown}"));
    let event_id = parse_event_id(&event).ok_or_else(missing)?;
    let delivery = db::retry(&state.db, &id, event_id)
        .await?
        .ok_or_else(missing)?;
    state.webhooks.wake();
    Ok((StatusCode::ACCEPTED, Json(WebhookDeliveryBody { delivery })))
}

/// A webhook of `app_id` was registered or enabled here: this instance records and sends the
/// app's events from now on, without waiting for the worker's next look at the table.
fn enabled(state: &AppState, app_id: i64) {
    state.webhooks.add_app(app_id);
    state.realtime.engine.hub().presence_out.want(true);
    state.webhooks.wake();
}

fn check_events(events: &[String], errors: &mut FieldErrors) -> Vec<String> {
    let mut unique: Vec<String> = Vec::new();
    for name in events {
        if !EVENT_TYPES.contains(&name.as_str()) {
            let shown: String = name.chars().take(40).collect();
            errors.add_with(
                "events",
                "enum",
                format!(
                    "unknown event type `{shown}`; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            );
        } else if !unique.contains(name) {
            unique.push(name.clone());
        }
    }
    if events.is_empty() || events.len() > EVENT_TYPES.len() {
        errors.add_with("events", "length", "events must list 1-8 event types");
    }
    unique
}

fn check_channels(channels: &[String], errors: &mut FieldErrors) -> Vec<String> {
    if channels.is_empty() || channels.len() > MAX_PATTERNS {
        errors.add_with("channels", "length", "channels must list 1-32 patterns");
    }
    let valid = |p: &String| {
        (1..=MAX_PATTERN).contains(&p.chars().count()) && !p.chars().any(|c| c.is_control())
    };
    if !channels.iter().all(valid) {
        errors.add_with(
            "channels",
            "format",
            "each channel pattern is 1-256 characters without control characters",
        );
    }
    channels.to_vec()
}

fn check_description<'a>(
    description: Option<&'a str>,
    errors: &mut FieldErrors,
) -> Option<&'a str> {
    let description = description?;
    if description.chars().count() > MAX_DESCRIPTION || description.chars().any(char::is_control) {
        errors.add_with(
            "description",
            "format",
            "description is at most 500 characters, without control characters",
        );
    }
    Some(description)
}

/// 403 `channel_not_authorized` unless the key's patterns cover every one of `channels`: a key
/// hears of no channel it could not read.
fn within_key(caller: &Principal, channels: &[String]) -> Result<(), ApiError> {
    if caller.covers_patterns(channels) {
        Ok(())
    } else {
        Err(ApiError::ChannelNotAuthorized)
    }
}

/// The URL, normalized, after the scheme and address rules: `https` (or `http` with
/// `--webhook-allow-http`), and no name or address that is not public unless
/// `--webhook-allow-private-networks`. A name that does not resolve now is accepted: every
/// connection checks again.
async fn check_url(state: &AppState, raw: &str, errors: &mut FieldErrors) -> String {
    let config = &state.config.webhooks;
    let mut refuse = |message: String| errors.add_with("url", "format", message);
    if raw.len() > MAX_URL {
        refuse("url is at most 2000 characters".to_owned());
        return String::new();
    }
    let url = match Url::parse(raw) {
        Ok(url) => url,
        Err(error) => {
            refuse(format!("url is not a valid URL ({error})"));
            return String::new();
        }
    };
    match url.scheme() {
        "https" => {}
        "http" if config.allow_http => {}
        "http" => {
            refuse("url must be https (http needs --webhook-allow-http)".to_owned());
        }
        other => {
            let shown: String = other.chars().take(20).collect();
            refuse(format!("url must be https, not {shown}:"));
        }
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        refuse("url must name a host".to_owned());
        return String::new();
    };
    if !url.username().is_empty() || url.password().is_some() {
        refuse(
            "url must not carry credentials; put them in the path or a query parameter".to_owned(),
        );
    }
    if !config.allow_private_networks {
        let not_public = |what: &str| {
            format!(
                "url must reach a public address: {what} is loopback, private, link-local, \
                 CGNAT, multicast or metadata (--webhook-allow-private-networks lifts this)"
            )
        };
        if let Some(ip) = literal_ip(&url) {
            if !is_public(ip) {
                refuse(not_public(&ip.to_string()));
            }
        } else {
            let port = url.port_or_known_default().unwrap_or(443);
            let lookup = tokio::net::lookup_host((host.to_owned(), port));
            if let Ok(Ok(addresses)) = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await
                && let Some(blocked) = addresses.map(|a| a.ip()).find(|ip| !is_public(*ip))
            {
                refuse(not_public(&format!("{host} ({blocked})")));
            }
        }
    }
    url.to_string()
}
