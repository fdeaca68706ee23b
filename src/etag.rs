//! Conditional GET: a strong `ETag` that changes exactly when the response would, and
//! `If-None-Match` with the current tag answers 304. The tag is a hash of the exact body, or,
//! where the body is determined by what the query returned (a page of immutable messages, by
//! their ids), a hash of that.

use axum::{
    extract::FromRequestParts,
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::error::ApiError;

/// The request's `If-None-Match` values, taken alone: the `HeaderMap` extractor would copy every
/// header of the request for this one.
#[derive(Debug, Default)]
pub struct IfNoneMatch(Vec<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .cloned()
                .collect(),
        ))
    }
}

/// Serializes `value` as the JSON body with its `ETag`, or answers 304 when the client has it.
pub fn json_with_etag<T: Serialize>(
    request: &IfNoneMatch,
    value: &T,
) -> Result<Response, ApiError> {
    let body = crate::json::body(value).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let digest = Sha256::digest(&body);
    let tag = format!("\"{}\"", hex::encode(&digest[..16]));
    if matches(request, &tag) {
        return Ok(not_modified(&tag));
    }
    Ok(tagged(&tag, body))
}

/// As [`json_with_etag`], for a body that `identity` determines exactly (immutable stored
/// messages, by their ids): the tag is a hash of `identity` and this build's version, so neither
/// computing it nor answering 304 serializes or hashes the body.
pub fn json_with_identity<T: Serialize>(
    request: &IfNoneMatch,
    value: &T,
    identity: impl Hash,
) -> Result<Response, ApiError> {
    let tag = identity_tag(identity);
    if matches(request, &tag) {
        return Ok(not_modified(&tag));
    }
    let body = crate::json::body(value).map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(tagged(&tag, body))
}

/// The tag of a body that `identity` determines exactly: a hash of it and this build's version.
pub fn identity_tag(identity: impl Hash) -> String {
    let mut hasher = DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    identity.hash(&mut hasher);
    format!("\"i{:016x}\"", hasher.finish())
}

/// A JSON body rendered earlier under `tag`, or 304 when the client has it.
pub fn rendered(request: &IfNoneMatch, tag: &str, body: bytes::Bytes) -> Response {
    if matches(request, tag) {
        return not_modified(tag);
    }
    tagged(tag, body)
}

fn header_value(tag: &str) -> HeaderValue {
    HeaderValue::from_str(tag).expect("hex in quotes is a valid header value")
}

fn not_modified(tag: &str) -> Response {
    (
        StatusCode::NOT_MODIFIED,
        [(header::ETAG, header_value(tag))],
    )
        .into_response()
}

fn tagged(tag: &str, body: impl Into<axum::body::Body>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, header_value(tag)),
        ],
        body.into(),
    )
        .into_response()
}

/// `If-None-Match`: a list of tags (weak ones compare by their opaque part) or `*`.
fn matches(request: &IfNoneMatch, tag: &str) -> bool {
    request
        .0
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> IfNoneMatch {
        IfNoneMatch(vec![value.parse().unwrap()])
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let tag = "\"abc\"";
        assert!(matches(&with("\"abc\""), tag));
        assert!(matches(&with("\"x\", \"abc\""), tag));
        assert!(matches(&with("W/\"abc\""), tag));
        assert!(matches(&with("*"), tag));
        assert!(!matches(&with("\"abd\""), tag));
        assert!(!matches(&IfNoneMatch::default(), tag));
    }

    #[tokio::test]
    async fn every_if_none_match_line_is_read() {
        let (mut parts, ()) = axum::http::Request::builder()
            .header(header::IF_NONE_MATCH, "\"x\"")
            .header(header::IF_NONE_MATCH, "\"abc\"")
            .header(header::ACCEPT, "application/json")
            .body(())
            .unwrap()
            .into_parts();
        let Ok(sent) = IfNoneMatch::from_request_parts(&mut parts, &()).await;
        assert!(matches(&sent, "\"abc\""));
        assert!(!matches(&sent, "\"abd\""));
    }

    #[test]
    fn the_tag_follows_the_body() {
        let first = json_with_etag(&IfNoneMatch::default(), &serde_json::json!({"a": 1})).unwrap();
        let same = json_with_etag(&IfNoneMatch::default(), &serde_json::json!({"a": 1})).unwrap();
        let other = json_with_etag(&IfNoneMatch::default(), &serde_json::json!({"a": 2})).unwrap();
        assert_eq!(first.headers()[header::ETAG], same.headers()[header::ETAG]);
        assert_ne!(first.headers()[header::ETAG], other.headers()[header::ETAG]);
        let tag = first.headers()[header::ETAG].to_str().unwrap();
        let cached = json_with_etag(&with(tag), &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    }
}
