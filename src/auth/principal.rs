//! The [`Principal`] extractor: who is calling, proven by an API key. There is no anonymous
//! principal. A refused key is a 401 that says what to fix (missing, malformed, a publishable key
//! or a token where a secret key belongs, unknown, revoked, expired); an unknown key id and a
//! wrong secret read the same, and revoked or expired is told only once the secret matched.

use std::{
    marker::PhantomData,
    sync::{Arc, atomic::Ordering},
};

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, header, request::Parts},
};
use chrono::Utc;

use super::{Credential, Pattern, Scope, ScopeSet, cache::KnownKey, is_publishable};
use crate::{
    apps::App,
    error::{ApiError, AuthFailure},
    limits::{InFlight, client_ip},
    ratelimit::Limit,
    state::AppState,
};

/// The authenticated caller of a REST request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    /// The app the key acts for: every resource it reaches is this app's.
    pub app: Arc<App>,
    pub scopes: ScopeSet,
    pub channel_patterns: Arc<[Pattern]>,
    /// `channel_patterns` cover every persistent channel's name.
    pub all_channels: bool,
    /// The patterns as stored, for keys derived from this one.
    pub stored_patterns: Arc<[String]>,
    pub expires_at: Option<chrono::DateTime<Utc>>,
    /// The key's own rate limit (`None`: the server's default), which derived keys inherit.
    pub rate_limit: Option<i32>,
    pub rate_burst: Option<i32>,
    /// The key's secret under the master key, for minting tokens.
    pub secret_encrypted: Option<Arc<[u8]>>,
}

impl Principal {
    /// 403 `insufficient_scope` for a missing REST scope, `action_not_permitted` for a missing
    /// realtime action.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else if scope.is_realtime() {
            Err(ApiError::ActionNotPermitted(scope))
        } else {
            Err(ApiError::InsufficientScope {
                required: vec![scope],
                granted: self.scopes,
            })
        }
    }

    pub fn app_id(&self) -> i64 {
        self.app.id
    }

    /// Persistent channel `id` as this key sees it: it belongs to the key's app and the key's
    /// patterns cover its name `"<id>"`, or it is 404 `not_found`, exactly like an unknown id.
    pub async fn may_use_channel(&self, state: &AppState, id: i64) -> Result<(), ApiError> {
        if (self.all_channels
            || super::patterns::any_matches(&self.channel_patterns, &id.to_string()))
            && state.apps.owner(&state.db, id).await? == Some(self.app.id)
        {
            Ok(())
        } else {
            Err(ApiError::channel_not_found(id))
        }
    }

    /// Creating a persistent channel needs patterns that cover every all-digit name (`*`, `**`):
    /// a key limited to some channels cannot make new ones. 403 `channel_not_authorized`.
    pub fn may_create_channels(&self) -> Result<(), ApiError> {
        match super::patterns::DigitNames::of(&self.channel_patterns) {
            super::patterns::DigitNames::All => Ok(()),
            super::patterns::DigitNames::Some { .. } => Err(ApiError::ChannelNotAuthorized),
        }
    }

    /// Whether every one of `patterns` lies within one of the key's: what a token it mints or a
    /// key derived from it may carry.
    pub fn covers_patterns<S: AsRef<str>>(&self, patterns: &[S]) -> bool {
        patterns.iter().all(|pattern| {
            let pattern = Pattern::new(pattern.as_ref());
            self.channel_patterns
                .iter()
                .any(|outer| outer.covers(&pattern))
        })
    }

    /// 403 `channel_not_authorized` unless one of the key's patterns matches `channel`.
    pub fn require_channel(&self, channel: &str) -> Result<(), ApiError> {
        if super::patterns::any_matches(&self.channel_patterns, channel) {
            Ok(())
        } else {
            Err(ApiError::ChannelNotAuthorized)
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // A guess (a credential naming no key in use here) counts toward its source's failures;
        // see `auth::failures`.
        let raw = presented_credential(&parts.headers);
        let credential = raw.ok().and_then(Credential::parse);
        // A key read within the last second is used as it was read, found with one lookup.
        let cached = credential
            .as_ref()
            .and_then(|credential| state.keys.fresh_key(&credential.key_id));
        let known = cached.is_some()
            || credential
                .as_ref()
                .is_some_and(|credential| state.keys.is_known(&credential.key_id));
        let guess = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .filter(|_| !known)
            .map(|info| {
                client_ip(
                    info.0.ip(),
                    &parts.headers,
                    &state.config.http.trusted_proxies,
                )
            });
        if let Some(source) = guess
            && let Err(retry_after_secs) = state.auth_failures.attempt(source)
        {
            return Err(ApiError::RateLimited { retry_after_secs });
        }
        let authenticated = authenticate(parts, state, raw, credential, cached).await;
        let failed = matches!(
            &authenticated,
            Err(ApiError::Unauthorized(failure)) if *failure != AuthFailure::Missing
        );
        if let Some(source) = guess.filter(|_| !failed) {
            state.auth_failures.forgive(source);
        }
        authenticated
    }
}

/// The key a request presents (`raw`, which parsed as `credential`; `cached`, the stored key it
/// names if the cache holds it fresh), checked and within its rate limit.
async fn authenticate(
    parts: &Parts,
    state: &AppState,
    raw: Result<&str, AuthFailure>,
    credential: Option<Credential<'_>>,
    cached: Option<Arc<KnownKey>>,
) -> Result<Principal, ApiError> {
    let raw = raw.map_err(ApiError::Unauthorized)?;
    let credential = credential.ok_or_else(|| {
        ApiError::Unauthorized(if is_publishable(raw) {
            AuthFailure::PublishableOnRest
        } else if raw.starts_with("eyJ") {
            AuthFailure::TokenOnRest
        } else {
            AuthFailure::Malformed
        })
    })?;
    let key = match cached {
        Some(key) => key,
        None => state
            .keys
            .find(&state.db, &credential.key_id)
            .await?
            .ok_or(ApiError::Unauthorized(AuthFailure::UnknownKey))?,
    };
    if !credential.matches(&key.secret_sha256) {
        return Err(ApiError::Unauthorized(AuthFailure::UnknownKey));
    }
    if key.revoked_at.is_some() {
        return Err(ApiError::Unauthorized(AuthFailure::Revoked));
    }
    // The clock is read only for a key that expires.
    if key.expires_at.is_some() && !key.is_active(Utc::now()) {
        return Err(ApiError::Unauthorized(AuthFailure::KeyExpired));
    }
    let default = state.config.rate_limit;
    let limit = Limit {
        rate: key
            .rate_limit
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(default.rate),
        burst: key
            .rate_burst
            .and_then(|b| u32::try_from(b).ok())
            .unwrap_or(default.burst),
    };
    let app = state.apps.app(&state.db, key.app_id).await?;
    let mut decision = state.rate_limiter.check(&key.key_id, limit);
    if decision.allowed
        && let Some(rate) = app.rate_limit.and_then(|r| u32::try_from(r).ok())
    {
        // The app's rate, shared by all its keys; its bucket holds one second of it.
        let shared = state
            .rate_limiter
            .check(&app_bucket(app.id), Limit { rate, burst: rate });
        if !shared.allowed {
            decision = shared;
        }
    }
    if let Some(in_flight) = parts.extensions.get::<InFlight>() {
        in_flight.decided(decision);
    }
    if !decision.allowed {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::RateLimited {
            retry_after_secs: decision.retry_after_secs,
        });
    }
    Ok(Principal {
        app,
        scopes: key.scope_set,
        key_id: key.key_id.clone(),
        channel_patterns: key.patterns.clone(),
        all_channels: key.all_channels,
        stored_patterns: key.stored_patterns.clone(),
        expires_at: key.expires_at,
        rate_limit: key.rate_limit,
        rate_burst: key.rate_burst,
        secret_encrypted: key.sealed_secret.clone(),
    })
}

/// The rate limiter's bucket of an app: no key id has this form.
fn app_bucket(app: i64) -> String {
    format!("app/{app}")
}

/// `Authorization: Bearer <credential>`, else `X-API-Key: <credential>`.
fn presented_credential(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
        let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
        return if scheme.eq_ignore_ascii_case("bearer") {
            Ok(credential.trim())
        } else {
            Err(AuthFailure::NotBearer)
        };
    }
    match headers.get("x-api-key") {
        Some(value) => value
            .to_str()
            .map(str::trim)
            .map_err(|_| AuthFailure::Malformed),
        None => Err(AuthFailure::Missing),
    }
}

/// A scope a route requires, named by a type so the requirement reads in the handler signature.
pub trait RequiredScope {
    const SCOPE: Scope;
}

pub struct ChannelsRead;
impl RequiredScope for ChannelsRead {
    const SCOPE: Scope = Scope::ChannelsRead;
}

pub struct ChannelsWrite;
impl RequiredScope for ChannelsWrite {
    const SCOPE: Scope = Scope::ChannelsWrite;
}

pub struct Admin;
impl RequiredScope for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// A [`Principal`] that holds scope `S`: 401 without a valid key, 403 `insufficient_scope` without `S`.
pub struct Scoped<S> {
    pub principal: Principal,
    _scope: PhantomData<S>,
}

impl<S: RequiredScope> FromRequestParts<AppState> for Scoped<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(S::SCOPE)?;
        Ok(Self {
            principal,
            _scope: PhantomData,
        })
    }
}
