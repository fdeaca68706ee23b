//! Derived keys over REST (`/v1/keys`, scope `admin`): an orchestrator mints for each agent the
//! least it needs, within itself. A derived key belongs to its creator's app, holds a subset of
//! its scopes, patterns its patterns cover, the creator's own rate limit, and never outlives it.
//! A key sees and revokes only the keys of its app that lie within it in the same way (scopes
//! and patterns), so a narrow admin key cannot reach a wider one.

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::{
    Admin, ApiKey, NewKey, Principal, Scope, ScopeSet, Scoped, create_key, find_key, list_app_keys,
    revoke_app_key, tokens,
};
use crate::{
    config::{is_api_duration, parse_duration},
    error::{ApiError, Envelope, FieldErrors},
    extract::{NoQuery, ValidatedJson},
    json::Json,
    state::AppState,
};

/// `POST /v1/keys`. Checked in the handler, so that every bad field is named at once.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label for people: 1-100 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub name: String,
    /// A subset of the creating key's scopes.
    #[schema(min_items = 1, value_type = Vec<ScopeName>)]
    pub scopes: Vec<String>,
    /// Channel patterns, each covered by one of the creating key's; the creator's own when absent.
    #[schema(min_items = 1, max_items = 16, value_type = Option<Vec<ChannelPattern>>)]
    pub channel_patterns: Option<Vec<String>>,
    /// Lifetime, e.g. `2h`, `30m`, `7d`, at most 10 years; never past the creating key's expiry
    /// (when it has one).
    #[schema(pattern = r"^([0-9]{1,6}(ms|s|m|h|d)){1,4}$")]
    pub expires_in: Option<String>,
}

/// A scope, as the OpenAPI document names them.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub enum ScopeName {
    #[serde(rename = "channels:read")]
    ChannelsRead,
    #[serde(rename = "channels:write")]
    ChannelsWrite,
    #[serde(rename = "publish")]
    Publish,
    #[serde(rename = "subscribe")]
    Subscribe,
    #[serde(rename = "presence")]
    Presence,
    #[serde(rename = "send")]
    Send,
    #[serde(rename = "admin")]
    Admin,
}

/// A channel pattern (SPEC §3): 1-256 characters, no control characters.
#[derive(utoipa::ToSchema)]
#[schema(pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,256}$")]
#[allow(dead_code)]
pub struct ChannelPattern(String);

/// A key as the API shows it: never its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub key_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub channel_patterns: Vec<String>,
    #[serde(serialize_with = "crate::timestamp::serialize_optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::serialize_optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<&ApiKey> for KeyInfo {
    fn from(key: &ApiKey) -> Self {
        Self {
            key_id: key.key_id.clone(),
            name: key.name.clone(),
            scopes: key.scopes.clone(),
            channel_patterns: key.channel_patterns.clone(),
            expires_at: key.expires_at,
            created_at: key.created_at,
            revoked_at: key.revoked_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub key: KeyInfo,
    /// The secret key, `sk_live_…`: shown only in this answer.
    pub secret_key: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyList {
    /// The app's secret keys, oldest first.
    pub keys: Vec<KeyInfo>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Revoked {
    pub key_id: String,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub revoked_at: DateTime<Utc>,
}

/// Patterns a derived key may carry at most.
const MAX_PATTERNS: usize = tokens::MAX_PATTERNS;

/// `POST /v1/keys`: a new key within the calling one.
#[utoipa::path(post, path = "/v1/keys", operation_id = "createKey", tag = "keys", security(("bearer" = []), ("api_key" = [])),
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key, and its secret (shown only now)", body = CreatedKey),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 403, description = "The calling key lacks `admin` or a scope asked for (`insufficient_scope`), or a pattern reaches outside its own (`channel_not_authorized`)", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn create(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
    ValidatedJson(request): ValidatedJson<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let creator = &caller.principal;
    let (scopes, lifetime) = checked(&request)?;
    let missing: Vec<Scope> = scopes
        .iter()
        .copied()
        .filter(|scope| !creator.scopes.contains(*scope))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::InsufficientScope {
            required: missing,
            granted: creator.scopes,
        });
    }
    let patterns = match &request.channel_patterns {
        Some(patterns) => {
            if !creator.covers_patterns(patterns) {
                return Err(ApiError::ChannelNotAuthorized);
            }
            patterns.clone()
        }
        None => creator.stored_patterns.to_vec(),
    };
    let asked = match lifetime {
        None => None,
        Some(lifetime) => Some(
            chrono::Duration::from_std(lifetime)
                .ok()
                .and_then(|lifetime| Utc::now().checked_add_signed(lifetime))
                .ok_or_else(|| {
                    ApiError::invalid_field("expires_in", "range", "expires_in is too long")
                })?,
        ),
    };
    let expires_at = earliest(asked, creator.expires_at);
    let new = NewKey {
        app_id: creator.app_id(),
        name: request.name.clone(),
        scopes,
        channel_patterns: patterns,
        expires_at,
        rate_limit: creator.rate_limit,
        rate_burst: creator.rate_burst,
    };
    let (generated, stored) = create_key(&state.db, &new, &state.config.master_key).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: KeyInfo::from(&stored),
            secret_key: generated.live_form(),
        }),
    ))
}

/// `GET /v1/keys`: the app's secret keys, never a secret.
#[utoipa::path(get, path = "/v1/keys", operation_id = "listKeys", tag = "keys", security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The app's keys, oldest first", body = KeyList),
        (status = 403, description = "The calling key lacks `admin` (`insufficient_scope`)", body = Envelope),
    ))]
pub async fn list(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
) -> Result<Json<KeyList>, ApiError> {
    let keys = list_app_keys(&state.db, caller.principal.app_id()).await?;
    Ok(Json(KeyList {
        keys: keys
            .iter()
            .filter(|key| within(&caller.principal, key))
            .map(KeyInfo::from)
            .collect(),
    }))
}

/// `DELETE /v1/keys/{key_id}`: revokes a key of the app; every use of it ends within a second.
#[utoipa::path(delete, path = "/v1/keys/{key_id}", operation_id = "revokeKey", tag = "keys", security(("bearer" = []), ("api_key" = [])),
    params(("key_id" = String, Path, description = "The key's id, `sk_id_…`")),
    responses(
        (status = 200, description = "Revoked (revoking again answers the first time)", body = Revoked),
        (status = 403, description = "The calling key lacks `admin` (`insufficient_scope`)", body = Envelope),
        (status = 404, description = "The app has no such key (`not_found`)", body = Envelope),
    ))]
pub async fn revoke(
    caller: Scoped<Admin>,
    _: NoQuery,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    let not_found = || ApiError::NotFound(format!("key {key_id} not found"));
    // Another app's key, or one wider than the caller, reads like one that does not exist.
    let reachable = find_key(&state.db, &key_id).await?.is_some_and(|key| {
        key.app_id == caller.principal.app_id() && within(&caller.principal, &key)
    });
    if !reachable {
        return Err(not_found());
    }
    let revoked_at = revoke_app_key(&state.db, caller.principal.app_id(), &key_id)
        .await?
        .ok_or_else(not_found)?;
    // The key cache holds it at most a second more; open streams and sockets end by then too.
    Ok(Json(Revoked { key_id, revoked_at }))
}

/// Whether `key` lies within the caller: every scope of it the caller's, every pattern of it
/// covered by one of the caller's, and expiring no later (a caller that expires reaches no key
/// that lives longer).
fn within(caller: &Principal, key: &ApiKey) -> bool {
    let lives_no_longer = match (caller.expires_at, key.expires_at) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(caller), Some(key)) => key <= caller,
    };
    lives_no_longer
        && ScopeSet::from_stored(&key.scopes)
            .iter()
            .all(|scope| caller.scopes.contains(scope))
        && caller.covers_patterns(&key.channel_patterns)
}

/// The longest lifetime a derived key may ask for.
const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 86_400);

/// Every field's own rules, reported together: the scopes and the lifetime asked for.
fn checked(request: &CreateKey) -> Result<(Vec<Scope>, Option<std::time::Duration>), ApiError> {
    let mut errors = FieldErrors::default();
    let name = &request.name;
    if !(1..=100).contains(&name.chars().count()) || name.chars().any(char::is_control) {
        errors.add_with(
            "name",
            "format",
            "name: 1-100 characters, no control characters",
        );
    }
    let mut scopes = Vec::new();
    for name in &request.scopes {
        match name.parse::<Scope>() {
            Ok(scope) => scopes.push(scope),
            Err(_) => errors.add("scopes", "unknown"),
        }
    }
    if request.scopes.is_empty() {
        errors.add("scopes", "length");
    }
    if let Some(patterns) = &request.channel_patterns
        && (patterns.is_empty()
            || patterns.len() > MAX_PATTERNS
            || patterns.iter().any(|p| {
                !(1..=tokens::MAX_PATTERN_CHARS).contains(&p.chars().count())
                    || p.chars().any(char::is_control)
            }))
    {
        errors.add_with(
            "channel_patterns",
            "format",
            format!(
                "channel_patterns: 1-{MAX_PATTERNS} patterns of 1-{} characters, without \
                 control characters",
                tokens::MAX_PATTERN_CHARS
            ),
        );
    }
    let lifetime = match request.expires_in.as_deref().map(|text| {
        is_api_duration(text)
            .then(|| parse_duration(text).ok())
            .flatten()
            .filter(|lifetime| *lifetime <= MAX_LIFETIME)
    }) {
        None => None,
        Some(Some(lifetime)) => Some(lifetime),
        Some(None) => {
            errors.add_with(
                "expires_in",
                "format",
                "expires_in: a duration such as 30m, 2h, 7d or 1h30m (up to 4 parts of at most 6 \
                 digits), at most 10 years",
            );
            None
        }
    };
    errors.into_result()?;
    let scopes: Vec<Scope> = scopes.into_iter().collect::<ScopeSet>().iter().collect();
    Ok((scopes, lifetime))
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
