//! Who a WebSocket connection is: resolved from `?token=` (a JWT minted by a secret key) or
//! `?key=pk_live_…` (a publishable key) before the upgrade. A failure is a 401 whose
//! [`AuthFailure`] becomes the close reason, so a client learns what to fix.

use std::{borrow::Cow, sync::Arc};

use chrono::Utc;
use serde_json::{Map, Value, value::RawValue};

use super::names::is_peer_id;
use crate::{
    apps,
    auth::{
        Pattern, Scope, ScopeSet, find_publishable_key, is_publishable, patterns::any_matches,
        tokens,
    },
    error::{ApiError, AuthFailure},
    state::AppState,
};

pub const MAX_PEER_METADATA: usize = 4 * 1024;
pub const MAX_METADATA: usize = 8 * 1024;

/// An authenticated realtime peer on one connection.
#[derive(Debug, Clone)]
pub struct Session {
    /// The app of the key behind the connection: its channels, peers and presence are the app's.
    pub app_id: i64,
    pub peer_id: Arc<str>,
    /// The secret key that minted the token, or the publishable key.
    pub key_id: Arc<str>,
    /// Realtime actions this connection may take.
    pub permissions: ScopeSet,
    /// All scopes of the key behind the connection (persistent channels need `channels:read`).
    pub key_scopes: ScopeSet,
    key_patterns: Vec<Pattern>,
    token_patterns: Option<Vec<Pattern>>,
    /// Unix seconds; `None` for publishable keys.
    pub expires_at: Option<i64>,
    pub peer_metadata: Option<Arc<RawValue>>,
    pub metadata: Option<Box<RawValue>>,
}

impl Session {
    /// The engine's name for this app's channel `name` (see [`apps::scoped`]).
    pub fn scoped<'a>(&self, name: &'a str) -> Cow<'a, str> {
        apps::scoped(self.app_id, name)
    }

    /// The peer as `send` and `kick` reach it: its app and its id.
    pub fn address(&self) -> Arc<str> {
        match apps::scoped(self.app_id, &self.peer_id) {
            Cow::Borrowed(_) => self.peer_id.clone(),
            Cow::Owned(scoped) => Arc::from(scoped),
        }
    }

    /// Whether `channel` lies within the key's patterns and, if the token names any, the token's.
    pub fn may_use(&self, channel: &str) -> bool {
        any_matches(&self.key_patterns, channel)
            && self
                .token_patterns
                .as_ref()
                .is_none_or(|patterns| any_matches(patterns, channel))
    }
}

pub async fn authenticate(
    state: &AppState,
    token: Option<&str>,
    key: Option<&str>,
    origin: Option<&str>,
) -> Result<Session, ApiError> {
    match (token, key) {
        (Some(token), None) => from_token(state, token).await,
        (None, Some(key)) if is_publishable(key) => from_publishable(state, key, origin).await,
        (None, Some(key)) if key.starts_with("sk_") => Err(refused(AuthFailure::WsSecretKey)),
        (None, Some(_)) => Err(refused(AuthFailure::WsMalformedKey)),
        (None, None) => Err(refused(AuthFailure::WsMissing)),
        (Some(_), Some(_)) => Err(refused(AuthFailure::WsBoth)),
    }
}

async fn from_token(state: &AppState, token: &str) -> Result<Session, ApiError> {
    let bad_token = || refused(AuthFailure::BadToken);
    let unverified = tokens::parse(token).map_err(|_| bad_token())?;
    let key = state
        .keys
        .find(&state.db, &unverified.kid)
        .await?
        .ok_or_else(bad_token)?;
    let secret = key
        .secret_encrypted
        .as_deref()
        .and_then(|blob| state.config.master_key.decrypt(&key.key_id, blob))
        .ok_or_else(bad_token)?;
    let claims = unverified.verify(&secret).map_err(|_| bad_token())?;
    // The signature proved the key's secret signed this token: its state may be told.
    let now = Utc::now();
    if key.revoked_at.is_some() {
        return Err(refused(AuthFailure::Revoked));
    }
    if !key.is_active(now) {
        return Err(refused(AuthFailure::KeyExpired));
    }
    if !is_peer_id(&claims.sub) {
        return Err(refused(AuthFailure::BadSubject));
    }
    let max_lifetime = state.config.realtime.token_max_lifetime.as_secs();
    match claims.check_times(
        now.timestamp(),
        i64::try_from(max_lifetime).unwrap_or(i64::MAX),
    ) {
        Ok(()) => {}
        Err(tokens::TimeError::Expired) => return Err(ApiError::TokenExpired),
        Err(tokens::TimeError::NotYetValid) => {
            return Err(refused(AuthFailure::TokenNotYetValid));
        }
        Err(tokens::TimeError::TooLong) => return Err(refused(AuthFailure::TokenTooLong)),
    }
    let key_patterns: Vec<Pattern> = key
        .channel_patterns
        .iter()
        .map(|p| Pattern::new(p))
        .collect();
    let token_patterns = token_patterns(claims.channels.as_deref(), &key_patterns)?;
    let key_scopes = ScopeSet::from_stored(&key.scopes);
    // A key without any realtime action cannot act as a peer (as `POST /v1/tokens` refuses).
    if key_scopes.realtime().iter().next().is_none() {
        return Err(ApiError::ActionNotPermitted(Scope::Subscribe));
    }
    let permissions = match &claims.permissions {
        None => key_scopes.realtime(),
        Some(names) => {
            let asked = ScopeSet::from_stored(names).realtime();
            key_scopes
                .realtime()
                .iter()
                .filter(|s| asked.contains(*s))
                .collect()
        }
    };
    Ok(Session {
        app_id: key.app_id,
        peer_id: Arc::from(claims.sub.as_str()),
        key_id: Arc::from(key.key_id.as_str()),
        permissions,
        key_scopes,
        key_patterns,
        token_patterns,
        expires_at: Some(claims.exp),
        peer_metadata: raw_object(claims.peer_metadata, MAX_PEER_METADATA)?.map(Arc::from),
        metadata: raw_object(claims.metadata, MAX_METADATA)?,
    })
}

async fn from_publishable(
    state: &AppState,
    key: &str,
    origin: Option<&str>,
) -> Result<Session, ApiError> {
    let stored = find_publishable_key(&state.db, key)
        .await?
        .ok_or(refused(AuthFailure::UnknownKey))?;
    if stored.revoked_at.is_some() {
        return Err(refused(AuthFailure::Revoked));
    }
    if !stored.is_active(Utc::now()) {
        return Err(refused(AuthFailure::KeyExpired));
    }
    if !stored.allows_origin(origin) {
        return Err(refused(AuthFailure::OriginNotAllowed));
    }
    let actions = ScopeSet::from_stored(&stored.actions).realtime();
    Ok(Session {
        app_id: stored.app_id,
        peer_id: Arc::from(uuid::Uuid::new_v4().to_string().as_str()),
        key_id: Arc::from(stored.key.as_str()),
        permissions: actions,
        key_scopes: actions,
        key_patterns: stored
            .channel_patterns
            .iter()
            .map(|p| Pattern::new(p))
            .collect(),
        token_patterns: None,
        expires_at: None,
        peer_metadata: None,
        metadata: None,
    })
}

/// A token's `channels`, bounded in number and length, and each within the key's patterns: a
/// backend signs tokens itself, and a token can never reach further than the key that signed it
/// (4003 at connect, as `POST /v1/tokens` refuses to mint one).
fn token_patterns(
    channels: Option<&[String]>,
    key_patterns: &[Pattern],
) -> Result<Option<Vec<Pattern>>, ApiError> {
    let Some(channels) = channels else {
        return Ok(None);
    };
    if !tokens::patterns_within_bounds(channels) {
        return Err(refused(AuthFailure::TokenPatternsTooLarge));
    }
    let patterns: Vec<Pattern> = channels.iter().map(|p| Pattern::new(p)).collect();
    if !patterns
        .iter()
        .all(|pattern| key_patterns.iter().any(|outer| outer.covers(pattern)))
    {
        return Err(ApiError::ChannelNotAuthorized);
    }
    Ok(Some(patterns))
}

fn refused(failure: AuthFailure) -> ApiError {
    ApiError::Unauthorized(failure)
}

/// Serializes a metadata object once; over `max` bytes the credential is refused.
fn raw_object(
    object: Option<Map<String, Value>>,
    max: usize,
) -> Result<Option<Box<RawValue>>, ApiError> {
    let Some(object) = object else {
        return Ok(None);
    };
    let raw =
        serde_json::value::to_raw_value(&object).map_err(|e| ApiError::Internal(Box::new(e)))?;
    if raw.get().len() > max {
        return Err(refused(AuthFailure::TokenMetadataTooLarge));
    }
    Ok(Some(raw))
}
