//! The one error type of the HTTP API and its JSON envelope:
//! `{"error": "<code>", "message": "<for humans>", "details": {"field": ["what"]}}`.
//!
//! Internal causes are logged here, inside the request's span, and never written into a body.

use std::collections::BTreeMap;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{
    auth::{Scope, ScopeSet},
    json::Json,
};

/// Per-field problems: field name → short snake_case codes such as `length` or `required`,
/// serialized as that map. A field may also carry a sentence for the `message` (such as the
/// allowed range), which is not part of `details`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldErrors {
    codes: BTreeMap<String, Vec<String>>,
    notes: BTreeMap<String, String>,
}

impl FieldErrors {
    pub fn add(&mut self, field: impl Into<String>, code: impl Into<String>) {
        let codes = self.codes.entry(field.into()).or_default();
        let code = code.into();
        if !codes.contains(&code) {
            codes.push(code);
        }
    }

    /// Adds `code` to `field` with a sentence for humans, e.g. "limit must be 1-200 (got 1000)".
    pub fn add_with(
        &mut self,
        field: impl Into<String>,
        code: impl Into<String>,
        note: impl Into<String>,
    ) {
        let field = field.into();
        self.add(field.clone(), code);
        self.notes.entry(field).or_insert_with(|| note.into());
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.codes.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// `Ok(())` when nothing was added, otherwise an `invalid_request` that names every field.
    pub fn into_result(self) -> Result<(), ApiError> {
        if self.is_empty() {
            return Ok(());
        }
        let mut summary: Vec<String> = Vec::new();
        for (field, codes) in self.fields() {
            let line = match self.notes.get(field) {
                Some(note) => note.clone(),
                None => format!("invalid {field} ({})", codes.join(", ")),
            };
            // A note shared by two fields (a conflict between them) is said once.
            if !summary.contains(&line) {
                summary.push(line);
            }
        }
        Err(ApiError::invalid_with(summary.join("; "), self))
    }
}

impl Serialize for FieldErrors {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.codes.serialize(serializer)
    }
}

impl utoipa::PartialSchema for FieldErrors {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <BTreeMap<String, Vec<String>> as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for FieldErrors {}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        details: Option<FieldErrors>,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A request refused before any handler: too slow a body (408), too long a URI (414), too
    /// large headers (431).
    #[error("{message}")]
    RequestRejected { status: StatusCode, message: String },
    /// A credential refused (401): which way it failed is told only as far as it leaks nothing
    /// (see [`AuthFailure`]).
    #[error("{0}")]
    Unauthorized(AuthFailure),
    /// A REST scope the key lacks; the message names it and the scopes the key has.
    #[error("{}", insufficient_scope_message(required, *granted, "this request"))]
    InsufficientScope {
        required: Vec<Scope>,
        granted: ScopeSet,
    },
    #[error("this credential does not permit `{0}`")]
    ActionNotPermitted(Scope),
    #[error("this realtime channel name is outside this credential's channel patterns")]
    ChannelNotAuthorized,
    /// An app quota is reached: `max_channels` (the only one a REST request can meet).
    #[error("this app has reached its {quota} quota ({limit})")]
    QuotaExceeded { quota: &'static str, limit: i64 },
    #[error("realtime channel names starting with _metered/, _internal/ or _system/ are reserved")]
    ChannelReserved,
    /// `/v1/mcp` called under a `Host`, or from a browser `Origin`, it does not accept.
    #[error("{0}")]
    HostNotAllowed(String),
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// 404, saying what was not found (`channel 42 not found`).
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("another channel that is not archived already has this name")]
    ChannelNameTaken,
    /// A write to an archived persistent channel (its id).
    #[error(
        "channel {0} is archived and takes no new messages; unarchive it with \
         `PUT /v1/channels/{0}` and the body `{{\"archived\": false}}`"
    )]
    ChannelArchived(i64),
    /// A consumer group of this name exists on the channel.
    #[error("a consumer group named `{0}` exists on this channel")]
    ConsumerExists(String),
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The request's work ran past `--db-timeout` (plus a long poll's `wait`).
    #[error("the database did not answer in time")]
    DeadlinePassed(std::time::Duration),
    /// A realtime token past its `exp`: 401 like any bad credential, but a WebSocket client is
    /// told apart (close 4002) so that it mints a new token rather than giving up.
    #[error("the token has expired; mint a new one")]
    TokenExpired,
    /// Cluster mode: Redis, which carries realtime between instances, is out of reach.
    #[error("realtime is unavailable: this instance cannot reach Redis; retry shortly")]
    RealtimeUnavailable,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid_with(message: impl Into<String>, details: FieldErrors) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            details: Some(details),
        }
    }

    /// 404 for a persistent channel id that does not exist.
    pub fn channel_not_found(id: i64) -> Self {
        Self::NotFound(format!("channel {id} not found"))
    }

    /// 404 for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self::NotFound(format!(
            "no route for {path}: the API is described at /v1/openapi.json"
        ))
    }

    /// An `invalid_request` about one field.
    pub fn invalid_field(field: &str, code: &str, message: impl Into<String>) -> Self {
        let mut details = FieldErrors::default();
        details.add(field, code);
        Self::invalid_with(message, details)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestRejected { status, .. } => *status,
            Self::Unauthorized(_) | Self::TokenExpired => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. }
            | Self::ActionNotPermitted(_)
            | Self::ChannelNotAuthorized
            | Self::QuotaExceeded { .. }
            | Self::HostNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::ChannelReserved => StatusCode::BAD_REQUEST,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ChannelNameTaken | Self::ChannelArchived(_) | Self::ConsumerExists(_) => {
                StatusCode::CONFLICT
            }
            Self::Unavailable(_) | Self::DeadlinePassed(_) | Self::RealtimeUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::PayloadTooLarge(_)
            | Self::RequestRejected { .. } => "invalid_request",
            Self::Unauthorized(_) | Self::TokenExpired => "unauthorized",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::ActionNotPermitted(_) => "action_not_permitted",
            Self::ChannelNotAuthorized => "channel_not_authorized",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::ChannelReserved => "channel_reserved",
            Self::HostNotAllowed(_) => "host_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::ChannelNameTaken => "channel_name_taken",
            Self::ChannelArchived(_) => "channel_archived",
            Self::ConsumerExists(_) => "consumer_exists",
            Self::Unavailable(_) | Self::DeadlinePassed(_) | Self::RealtimeUnavailable => {
                "unavailable"
            }
            Self::Internal(_) => "internal_error",
        }
    }
}

/// "this API key lacks the channels:write scope, which this request needs (it has channels:read);
/// …": what is missing, what needs it, what the key has, and how to get a key that is enough.
pub fn insufficient_scope_message(
    required: &[Scope],
    granted: ScopeSet,
    needed_by: &str,
) -> String {
    let missing: Vec<&str> = required.iter().map(|s| s.as_str()).collect();
    let has = match granted.names() {
        names if names.is_empty() => "no scopes".to_owned(),
        names => names.join(", "),
    };
    let mut wanted = granted.names();
    for name in &missing {
        if !wanted.contains(name) {
            wanted.push(name);
        }
    }
    format!(
        "this API key lacks the {} scope{}, which {needed_by} needs (it has {has}); \
         use a key created with --scopes {}",
        missing.join(", "),
        if missing.len() == 1 { "" } else { "s" },
        wanted.join(",")
    )
}

/// Why a credential was refused, told so that the caller knows what to fix.
///
/// What it tells a caller is limited to what the caller already has: the shape of what it sent,
/// and, once the secret (or a token's signature) proved it holds the key, that the key was revoked
/// or has expired. An unknown key id and a wrong secret read the same, so a guess never learns
/// whether a key id exists. Each text fits a WebSocket close reason (at most 123 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` or `X-API-Key` header.
    Missing,
    /// An `Authorization` header whose scheme is not `Bearer`.
    NotBearer,
    /// A credential that is no key form at all.
    Malformed,
    /// A publishable key sent to the REST API.
    PublishableOnRest,
    /// A realtime token sent to the REST API.
    TokenOnRest,
    /// No such key, or a wrong secret: deliberately one answer.
    UnknownKey,
    /// The key was revoked (told only to a caller that proved it holds the key).
    Revoked,
    /// The key has expired (likewise).
    KeyExpired,
    /// A WebSocket connect with neither `token` nor `key`.
    WsMissing,
    /// A WebSocket connect with both `token` and `key`.
    WsBoth,
    /// A secret key in a WebSocket URL: it belongs on a backend.
    WsSecretKey,
    /// A WebSocket `key` that is not a publishable key.
    WsMalformedKey,
    /// A token that is no JWT, or whose signature or `kid` does not check out.
    BadToken,
    /// A token whose `sub` is not a peer id.
    BadSubject,
    /// A token whose `nbf` or `iat` lies in the future.
    TokenNotYetValid,
    /// A token whose lifetime exceeds `--token-max-lifetime`.
    TokenTooLong,
    /// A token whose `peerMetadata` or `metadata` is too large.
    TokenMetadataTooLarge,
    /// A token with more than 16 `channels` patterns, or one longer than 256 characters.
    TokenPatternsTooLarge,
    /// The key behind an open stream, long poll or wait was revoked or has expired since.
    KeyInactive,
    /// A publishable key that does not allow the request's `Origin`.
    OriginNotAllowed,
}

impl AuthFailure {
    pub fn text(self) -> &'static str {
        match self {
            Self::Missing => {
                "missing API key: send `Authorization: Bearer sk_live_…` or an `X-API-Key` header"
            }
            Self::NotBearer => "the Authorization header must read `Bearer <key>`",
            Self::Malformed => "malformed API key: expected `sk_live_…` or `sk_id_…:sk_secret_…`",
            Self::PublishableOnRest => {
                "publishable keys (pk_live_…) only open WebSockets; the REST API needs a secret key"
            }
            Self::TokenOnRest => {
                "realtime tokens only open WebSockets; the REST API needs a secret key (sk_live_…)"
            }
            Self::UnknownKey => "unknown API key: no such key, or a wrong secret",
            Self::Revoked => "this key was revoked",
            Self::KeyExpired => "this key has expired",
            Self::WsMissing => {
                "a credential is required: connect with ?token=<from POST /v1/tokens> or ?key=pk_live_…"
            }
            Self::WsBoth => "send either ?token= or ?key=, not both",
            Self::WsSecretKey => {
                "secret keys stay on servers: mint a token with POST /v1/tokens, or use a pk_live_ key"
            }
            Self::WsMalformedKey => "?key= takes a publishable key (pk_live_…)",
            Self::BadToken => "invalid token: malformed, or its signature matches no key",
            Self::BadSubject => "invalid token: `sub` must be 1-128 printable ASCII characters",
            Self::TokenNotYetValid => "token not yet valid: `nbf` or `iat` is in the future",
            Self::TokenTooLong => "token lifetime exceeds the server's --token-max-lifetime",
            Self::TokenMetadataTooLarge => "token `peerMetadata` or `metadata` is too large",
            Self::KeyInactive => "this key was revoked or has expired",
            Self::TokenPatternsTooLarge => {
                "token `channels`: at most 16 patterns of at most 256 characters"
            }
            Self::OriginNotAllowed => "this publishable key does not allow this Origin",
        }
    }
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "invalid_request", "message": "name must be 2-100 characters", "details": {"name": ["length"]}}))]
pub struct Envelope<'a> {
    /// A stable snake_case code.
    error: &'static str,
    /// For humans.
    message: String,
    /// Field → what was wrong with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a FieldErrors>,
    /// With `insufficient_scope`: the scopes the route needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    required_scopes: Option<Vec<&'static str>>,
    /// With `quota_exceeded`: which quota (`max_channels`).
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<&'static str>,
}

impl From<crate::realtime::engine::Unavailable> for ApiError {
    fn from(_: crate::realtime::engine::Unavailable) -> Self {
        Self::RealtimeUnavailable
    }
}

impl ApiError {
    /// The envelope this error answers with, its internal cause logged (never returned).
    pub fn envelope(&self) -> Envelope<'_> {
        match self {
            Self::Unavailable(cause) => tracing::warn!(error = %cause, "database unavailable"),
            Self::DeadlinePassed(budget) => {
                tracing::warn!(
                    budget_ms = budget.as_millis() as u64,
                    "request deadline passed"
                );
            }
            Self::Internal(cause) => tracing::error!(error = %cause, "internal error"),
            _ => {}
        }
        Envelope {
            error: self.code(),
            message: self.to_string(),
            details: match self {
                Self::InvalidRequest { details, .. } => details.as_ref(),
                _ => None,
            },
            required_scopes: match self {
                Self::InsufficientScope { required, .. } => {
                    Some(required.iter().map(|s| s.as_str()).collect())
                }
                _ => None,
            },
            quota: match self {
                Self::QuotaExceeded { quota, .. } => Some(*quota),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.envelope();
        let mut response = (self.status(), Json(body)).into_response();
        match self {
            Self::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            return Self::Unavailable(error);
        }
        if let Some(db) = error.as_database_error()
            && db.constraint() == Some("channels_active_name_key")
        {
            return Self::ChannelNameTaken;
        }
        Self::Internal(Box::new(error))
    }
}

/// Whether the error means "PostgreSQL cannot be reached right now" rather than a bad query.
pub(crate) fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exceptions; 57P0x: server shutting down or starting; 53300: too many
            // connections; 57014: cancelled, as by `statement_timeout` (the query deadline).
            code.starts_with("08") || code.starts_with("57P0") || code == "53300" || code == "57014"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_status_and_code() {
        let cases: Vec<(ApiError, StatusCode, &str)> = vec![
            (
                ApiError::invalid("x"),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                ApiError::RequestRejected {
                    status: StatusCode::URI_TOO_LONG,
                    message: "x".into(),
                },
                StatusCode::URI_TOO_LONG,
                "invalid_request",
            ),
            (
                ApiError::PayloadTooLarge("x".into()),
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
            ),
            (
                ApiError::Unauthorized(AuthFailure::Missing),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                ApiError::InsufficientScope {
                    required: vec![Scope::ChannelsRead],
                    granted: ScopeSet::default(),
                },
                StatusCode::FORBIDDEN,
                "insufficient_scope",
            ),
            (
                ApiError::ActionNotPermitted(Scope::Publish),
                StatusCode::FORBIDDEN,
                "action_not_permitted",
            ),
            (
                ApiError::ChannelNotAuthorized,
                StatusCode::FORBIDDEN,
                "channel_not_authorized",
            ),
            (
                ApiError::ChannelReserved,
                StatusCode::BAD_REQUEST,
                "channel_reserved",
            ),
            (
                ApiError::HostNotAllowed("x".into()),
                StatusCode::FORBIDDEN,
                "host_not_allowed",
            ),
            (
                ApiError::RateLimited {
                    retry_after_secs: 3,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
            ),
            (
                ApiError::channel_not_found(42),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                ApiError::MethodNotAllowed,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                ApiError::ChannelNameTaken,
                StatusCode::CONFLICT,
                "channel_name_taken",
            ),
            (
                ApiError::ChannelArchived(42),
                StatusCode::CONFLICT,
                "channel_archived",
            ),
            (
                ApiError::Unavailable(sqlx::Error::PoolTimedOut),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                ApiError::DeadlinePassed(std::time::Duration::from_secs(5)),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                ApiError::Internal("boom".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        assert_eq!(
            ApiError::channel_not_found(42).to_string(),
            "channel 42 not found"
        );
        assert_eq!(
            ApiError::ChannelArchived(42).to_string(),
            "channel 42 is archived and takes no new messages; unarchive it with \
             `PUT /v1/channels/42` and the body `{\"archived\": false}`"
        );
        let granted: ScopeSet = [Scope::ChannelsRead, Scope::Publish].into_iter().collect();
        assert_eq!(
            ApiError::InsufficientScope {
                required: vec![Scope::ChannelsWrite],
                granted,
            }
            .to_string(),
            "this API key lacks the channels:write scope, which this request needs \
             (it has channels:read, publish); \
             use a key created with --scopes channels:read,publish,channels:write"
        );
        assert_eq!(
            insufficient_scope_message(
                &[Scope::ChannelsRead],
                ScopeSet::default(),
                "list_channels"
            ),
            "this API key lacks the channels:read scope, which list_channels needs \
             (it has no scopes); use a key created with --scopes channels:read"
        );
    }

    #[test]
    fn pool_timeouts_are_unavailable_not_internal() {
        assert!(matches!(
            ApiError::from(sqlx::Error::PoolTimedOut),
            ApiError::Unavailable(_)
        ));
        assert!(matches!(
            ApiError::from(sqlx::Error::RowNotFound),
            ApiError::Internal(_)
        ));
    }

    #[test]
    fn every_auth_failure_fits_a_websocket_close_reason() {
        use AuthFailure::*;
        for failure in [
            Missing,
            NotBearer,
            Malformed,
            PublishableOnRest,
            TokenOnRest,
            UnknownKey,
            Revoked,
            KeyExpired,
            WsMissing,
            WsBoth,
            WsSecretKey,
            WsMalformedKey,
            BadToken,
            BadSubject,
            TokenNotYetValid,
            TokenTooLong,
            TokenMetadataTooLarge,
            OriginNotAllowed,
        ] {
            assert!(failure.text().len() <= 123, "{failure:?} is too long");
        }
    }

    #[test]
    fn internal_causes_never_reach_the_body() {
        let response = ApiError::Internal("secret detail".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let message = ApiError::Internal("secret detail".into()).to_string();
        assert!(!message.contains("secret detail"));
    }
}
