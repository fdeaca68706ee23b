//! `POST /v1/tokens`: a secret key with a realtime action mints a realtime token for one peer,
//! never wider than itself.

use axum::extract::State;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use validator::Validate;

use super::{
    names::is_peer_id,
    session::{MAX_METADATA, MAX_PEER_METADATA},
};
use crate::{
    auth::{Principal, Scope, ScopeSet, tokens},
    error::{ApiError, Envelope, FieldErrors},
    extract::{NoQuery, ValidatedJson},
    json::Json,
    state::AppState,
};

/// `POST /v1/tokens`. Checked in the handler rather than by `validator`, whose error details
/// would name the Rust fields instead of the camelCase ones clients send.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    /// The peer's id (`sub`): 1-128 printable ASCII characters.
    #[serde(rename = "peerId")]
    #[schema(pattern = "^[ -~]{1,128}$")]
    pub peer_id: String,
    /// Channel patterns, each within the key's: at most 16, of 1-256 characters without control
    /// characters.
    #[schema(max_items = 16, inline, value_type = Option<Vec<PatternText>>)]
    pub channels: Option<Vec<String>>,
    /// Realtime actions, each held by the key.
    #[schema(inline, value_type = Option<Vec<RealtimeAction>>)]
    pub permissions: Option<Vec<String>>,
    /// Seconds until the token expires: 1 up to the server's `--token-max-lifetime` (24 h by
    /// default); 3600 when absent.
    #[serde(
        rename = "expiresInSec",
        default,
        deserialize_with = "crate::json::integer"
    )]
    #[schema(minimum = 1, maximum = 86400)]
    pub expires_in_sec: Option<i64>,
    /// Delivered once in `welcome`; at most 8 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Shown to other peers in presence; at most 4 KiB.
    #[serde(rename = "peerMetadata")]
    #[schema(value_type = Option<Object>)]
    pub peer_metadata: Option<Map<String, Value>>,
}

/// A channel pattern as a token carries it (the document's statement of the rule `mint` checks).
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,256}$")]
#[allow(dead_code)]
struct PatternText(String);

/// The realtime actions a token may carry.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum RealtimeAction {
    Publish,
    Subscribe,
    Presence,
    Send,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenBody {
    pub token: String,
    #[serde(rename = "expiresAt")]
    pub expires_at: i64,
}

/// `POST /v1/tokens`: a secret key with a realtime action mints a token for one peer, never wider
/// than itself.
#[utoipa::path(post, path = "/v1/tokens", operation_id = "createToken", tag = "realtime", security(("bearer" = []), ("api_key" = [])),
    request_body = MintToken,
    responses(
        (status = 200, description = "A token for `GET /v1?token=`", body = TokenBody),
        (status = 400, description = "Malformed JSON or an invalid field", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
    ))]
pub async fn mint_token(
    principal: Principal,
    _: NoQuery,
    State(state): State<AppState>,
    ValidatedJson(request): ValidatedJson<MintToken>,
) -> Result<Json<TokenBody>, ApiError> {
    let max_lifetime =
        i64::try_from(state.config.realtime.token_max_lifetime.as_secs()).unwrap_or(i64::MAX);
    let asked = checked_request(&request, max_lifetime)?;
    // A token acts as a peer: receiving its direct messages among the rest. A key that holds no
    // realtime action (a pod key for one channel's history, say) cannot act as any peer.
    if principal.scopes.realtime().iter().next().is_none() {
        return Err(ApiError::ActionNotPermitted(Scope::Subscribe));
    }
    within_key(
        &principal,
        &asked,
        request.channels.as_deref().unwrap_or_default(),
    )?;
    let secret = signing_secret(&state, &principal)?;
    let issued_at = Utc::now().timestamp();
    let expires_at = issued_at + request.expires_in_sec.unwrap_or(3600).min(max_lifetime);
    let claims = tokens::Claims {
        sub: request.peer_id,
        exp: expires_at,
        iat: Some(issued_at),
        nbf: None,
        channels: request.channels,
        permissions: request.permissions.map(|_| {
            asked
                .iter()
                .copied()
                .collect::<ScopeSet>()
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect()
        }),
        peer_metadata: request.peer_metadata,
        metadata: request.metadata,
    };
    let token = tokens::sign(&principal.key_id, &secret, &claims);
    Ok(Json(TokenBody { token, expires_at }))
}

/// Every field's own rules, reported together; the realtime actions asked for.
fn checked_request(request: &MintToken, max_lifetime: i64) -> Result<Vec<Scope>, ApiError> {
    let mut errors = FieldErrors::default();
    if !is_peer_id(&request.peer_id) {
        errors.add("peerId", "format");
    }
    if request
        .expires_in_sec
        .is_some_and(|secs| !(1..=max_lifetime).contains(&secs))
    {
        errors.add("expiresInSec", "range");
    }
    let size = |object: &Option<Map<String, Value>>| {
        object
            .as_ref()
            .map_or(0, |o| serde_json::to_vec(o).map_or(0, |v| v.len()))
    };
    if size(&request.metadata) > MAX_METADATA {
        errors.add("metadata", "length");
    }
    if size(&request.peer_metadata) > MAX_PEER_METADATA {
        errors.add("peerMetadata", "length");
    }
    let channels = request.channels.as_deref().unwrap_or_default();
    if channels
        .iter()
        .any(|c| c.is_empty() || c.chars().any(char::is_control))
        || !tokens::patterns_within_bounds(channels)
    {
        errors.add_with(
            "channels",
            "format",
            format!(
                "channels: at most {} patterns of 1-{} characters, without control characters",
                tokens::MAX_PATTERNS,
                tokens::MAX_PATTERN_CHARS
            ),
        );
    }
    let mut asked = Vec::new();
    for name in request.permissions.iter().flatten() {
        match name.parse::<Scope>() {
            Ok(scope) if scope.is_realtime() => asked.push(scope),
            _ => errors.add("permissions", "unknown"),
        }
    }
    errors.into_result()?;
    Ok(asked)
}

/// A token is never wider than the key that mints it: each action held by the key, each channel
/// pattern within one of the key's.
fn within_key(principal: &Principal, asked: &[Scope], channels: &[String]) -> Result<(), ApiError> {
    if let Some(missing) = asked
        .iter()
        .find(|scope| !principal.scopes.contains(**scope))
    {
        return Err(ApiError::ActionNotPermitted(*missing));
    }
    if !principal.covers_patterns(channels) {
        return Err(ApiError::ChannelNotAuthorized);
    }
    Ok(())
}

/// The key's signing secret, kept encrypted under the master key.
fn signing_secret(state: &AppState, principal: &Principal) -> Result<String, ApiError> {
    principal
        .secret_encrypted
        .as_deref()
        .and_then(|blob| state.config.master_key.decrypt(&principal.key_id, blob))
        .ok_or_else(|| {
            ApiError::invalid(
                "this key cannot sign tokens; create a new key with `channeld keys create`",
            )
        })
}
