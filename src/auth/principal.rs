//! The [`Principal`] extractor: who is calling, proven by an API key. There is no anonymous
//! principal: a missing, malformed, unknown, expired or revoked key is one indistinguishable 401.

use std::marker::PhantomData;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
};
use chrono::Utc;

use super::{Credential, Scope, ScopeSet, find_key};
use crate::{error::ApiError, startup::AppState};

/// The authenticated caller of a REST request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub scopes: ScopeSet,
    pub channel_patterns: Vec<String>,
}

impl Principal {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::InsufficientScope {
                required: vec![scope],
            })
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let raw = presented_credential(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let credential = Credential::parse(raw).ok_or(ApiError::Unauthorized)?;
        let key = find_key(&state.db, &credential.key_id)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if !credential.matches(&key.secret_sha256) || !key.is_active(Utc::now()) {
            return Err(ApiError::Unauthorized);
        }
        Ok(Self {
            scopes: ScopeSet::from_stored(&key.scopes),
            key_id: key.key_id,
            channel_patterns: key.channel_patterns,
        })
    }
}

/// `Authorization: Bearer <credential>`, else `X-API-Key: <credential>`.
fn presented_credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, credential) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credential.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
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
