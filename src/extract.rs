//! Request extractors shared by every feature. Each one answers failures in the error envelope.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

use crate::error::{ApiError, FieldErrors};

/// A JSON body that deserialized and passed its `Validate` rules.
///
/// Malformed JSON, a wrong type, a missing or unknown field and a failed rule all answer
/// 400 `invalid_request` with `details` naming the field. The `Content-Type` is not checked, so
/// `curl -d` works without `-H 'Content-Type: application/json'`.
pub struct ValidatedJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidatedJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is too large".into())
            } else if is_body_timeout(&rejection) {
                body_timed_out()
            } else {
                ApiError::invalid("could not read the request body")
            }
        })?;
        let value: T = parse_json(&bytes)?;
        value.validate().map_err(validation_error)?;
        Ok(Self(value))
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_none() {
        return Err(ApiError::invalid("request body must be a JSON object"));
    }
    if first != Some(&b'{') && serde_json::from_slice::<serde_json::Value>(bytes).is_ok() {
        return Err(ApiError::invalid("request body must be a JSON object"));
    }
    // Read plainly first; only a body refused is read again, tracking the path to the field
    // at fault for the error's details.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(field_error)?;
    deserializer
        .end()
        .map_err(|error| ApiError::invalid(format!("malformed JSON: {error}")))?;
    Ok(value)
}

/// A JSON object already parsed (an MCP tool's arguments) as `T`, refused the way a request body
/// is: the field at fault named in `details`.
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(field_error)
}

/// `T`'s validation rules applied, refused the way a request body is.
pub fn validated<T: Validate>(value: T) -> Result<T, ApiError> {
    value.validate().map_err(validation_error)?;
    Ok(value)
}

fn field_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if !inner.is_data() {
        return ApiError::invalid(format!("malformed JSON: {inner}"));
    }
    let text = inner.to_string();
    let (field, code) = if let Some(name) = backticked(&text, "missing field `") {
        (name, "required")
    } else if let Some(name) = backticked(&text, "unknown field `") {
        (name, "unknown_field")
    } else {
        (path, "type")
    };
    ApiError::invalid_field(&field, code, format!("{field}: {text}"))
}

/// The name inside serde's "missing field `x`" style messages.
fn backticked(text: &str, prefix: &str) -> Option<String> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_owned())
}

fn validation_error(errors: ValidationErrors) -> ApiError {
    let mut details = FieldErrors::default();
    let mut messages = Vec::new();
    for (field, kind) in errors.errors() {
        if let ValidationErrorsKind::Field(list) = kind {
            for error in list {
                details.add(field.as_ref(), error.code.as_ref());
                messages.push(match &error.message {
                    Some(message) => message.to_string(),
                    None => format!("{field} is invalid ({})", error.code),
                });
            }
        }
    }
    messages.sort();
    ApiError::invalid_with(messages.join("; "), details)
}

/// Query-string parameters, checked one by one so that every bad parameter is named in
/// `details`. A handler states the parameters it accepts with [`QueryParams::accept`]; any other
/// is refused like an unknown body field (`unknown_field`), so a typo never silently changes
/// what a request means.
pub struct QueryParams(Vec<(String, String)>);

impl From<Vec<(String, String)>> for QueryParams {
    /// Parameters that did not come in a URL: MCP's `list_channels` passes its arguments so.
    fn from(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(Self)
            .map_err(|_| ApiError::invalid("malformed query string"))
    }
}

impl QueryParams {
    /// Records `unknown_field` for every parameter not in `accepted`, naming the accepted ones.
    pub fn accept(&self, accepted: &[&str], errors: &mut FieldErrors) {
        let mut seen = std::collections::HashSet::with_capacity(self.0.len());
        for (name, _) in &self.0 {
            // A set, not a scan of the earlier ones: a long query string stays linear.
            if !seen.insert(name.as_str()) {
                let shown: String = name.chars().take(40).collect();
                errors.add_with(
                    name.clone(),
                    "duplicate",
                    format!("query parameter `{shown}` is given more than once"),
                );
                continue;
            }
            if !accepted.contains(&name.as_str()) {
                let shown: String = name.chars().take(40).collect();
                let note = if accepted.is_empty() {
                    format!("unknown query parameter `{shown}`: this endpoint takes none")
                } else {
                    format!(
                        "unknown query parameter `{shown}`; accepted: {}",
                        accepted.join(", ")
                    )
                };
                errors.add_with(name.clone(), "unknown_field", note);
            }
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An integer within `min..=max`, recording `range` or `type` in `errors` (with the allowed
    /// range in the message) when it is not.
    pub fn int(&self, name: &str, min: i64, max: i64, errors: &mut FieldErrors) -> Option<i64> {
        let raw = self.get(name)?;
        match raw.parse::<i64>() {
            Ok(n) => in_range(name, n, min, max, errors),
            Err(_) => {
                let shown: String = raw.chars().take(40).collect();
                let allowed = allowed_range(name, min, max);
                errors.add_with(name, "type", format!("{allowed} (got `{shown}`)"));
                None
            }
        }
    }

    /// `true` or `false`, recording `type` in `errors` for anything else.
    pub fn bool(&self, name: &str, errors: &mut FieldErrors) -> Option<bool> {
        match self.get(name)? {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                let shown: String = other.chars().take(40).collect();
                errors.add_with(
                    name,
                    "type",
                    format!("{name} must be `true` or `false` (got `{shown}`)"),
                );
                None
            }
        }
    }
}

/// `value` when it lies within `min..=max`; otherwise `range` recorded in `errors`, the message
/// stating the allowed range.
pub fn in_range(
    name: &str,
    value: i64,
    min: i64,
    max: i64,
    errors: &mut FieldErrors,
) -> Option<i64> {
    if (min..=max).contains(&value) {
        return Some(value);
    }
    let allowed = allowed_range(name, min, max);
    errors.add_with(name, "range", format!("{allowed} (got {value})"));
    None
}

fn allowed_range(name: &str, min: i64, max: i64) -> String {
    if max == i64::MAX {
        format!("{name} must be an integer of at least {min}")
    } else {
        format!("{name} must be an integer from {min} to {max}")
    }
}

/// For endpoints that take no query parameters: any parameter is 400 `unknown_field`.
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_none_or(str::is_empty) {
            return Ok(Self);
        }
        let query = QueryParams::from_request_parts(parts, state).await?;
        let mut errors = FieldErrors::default();
        query.accept(&[], &mut errors);
        errors.into_result()?;
        Ok(Self)
    }
}

/// A path segment as text, percent-decoded. One that does not decode to UTF-8 is 400
/// `invalid_request` naming `path`, in the envelope like every other error.
#[derive(Debug, Clone)]
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(segment)) => Ok(Self(segment)),
            Err(_) => Err(ApiError::invalid_field(
                "path",
                "format",
                "a path segment is not valid UTF-8 once percent-decoded",
            )),
        }
    }
}

/// The `{id}` of a persistent channel: a positive integer written without leading zeros, as the
/// API returns it. Anything else is 400 `invalid_request` naming `id`; a well-formed id that does
/// not exist is 404.
#[derive(Debug, Clone, Copy)]
pub struct ChannelId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for ChannelId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // A segment that does not decode (invalid UTF-8) is no id either.
        let raw = Path::<String>::from_request_parts(parts, state)
            .await
            .map_or_else(|_| String::from("\u{fffd}"), |Path(raw)| raw);
        parse_channel_id(&raw)
    }
}

pub(crate) fn parse_channel_id(raw: &str) -> Result<ChannelId, ApiError> {
    let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    let parsed = raw.parse::<i64>();
    if let Ok(id) = parsed
        && id > 0
        && digits
        && !raw.starts_with('0')
    {
        return Ok(ChannelId(id));
    }
    let shown: String = raw.chars().take(40).collect();
    match parsed {
        Ok(_) if digits => Err(ApiError::invalid_field(
            "id",
            "format",
            format!("channel ids are positive integers without leading zeros (got `{shown}`)"),
        )),
        Err(_) if digits => Err(ApiError::invalid_field(
            "id",
            "range",
            format!("channel ids are at most {} (got `{shown}`)", i64::MAX),
        )),
        _ => Err(ApiError::invalid_field(
            "id",
            "type",
            format!(
                "channel ids are positive integers such as 42 (got `{shown}`); \
                 realtime channel names go to /v1/channels/{{channel}}/peers and /publish"
            ),
        )),
    }
}

/// The request body did not arrive within `--http-body-timeout`, or the server began shutting
/// down while waiting for it.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// Whether reading a body failed because it did not arrive in time.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// 408: the body was being read and had not all arrived.
pub fn body_timed_out() -> ApiError {
    ApiError::RequestRejected {
        status: StatusCode::REQUEST_TIMEOUT,
        message: "the request body did not arrive in time".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: Option<i64>,
    }

    fn details_of(error: ApiError) -> Vec<(String, Vec<String>)> {
        match error {
            ApiError::InvalidRequest {
                details: Some(d), ..
            } => d
                .fields()
                .map(|(f, c)| (f.to_owned(), c.to_vec()))
                .collect(),
            other => panic!("expected details, got {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field_and_what_was_wrong() {
        let cases = [
            (r#"{}"#, "name", "required"),
            (r#"{"name": 5}"#, "name", "type"),
            (r#"{"name": "a", "count": "x"}"#, "count", "type"),
            (r#"{"name": "a", "colour": 1}"#, "colour", "unknown_field"),
        ];
        for (body, field, code) in cases {
            let error = parse_json::<Body>(body.as_bytes()).expect_err(body);
            assert_eq!(
                details_of(error),
                vec![(field.to_owned(), vec![code.to_owned()])],
                "body {body}"
            );
        }
    }

    #[test]
    fn channel_ids_are_canonical_positive_integers() {
        assert_eq!(parse_channel_id("42").unwrap().0, 42);
        for (raw, code) in [
            ("abc", "type"),
            ("-1", "type"),
            ("4.2", "type"),
            ("0", "format"),
            ("042", "format"),
            ("99999999999999999999", "range"),
        ] {
            let error = parse_channel_id(raw).expect_err(raw);
            assert_eq!(
                details_of(error),
                vec![("id".to_owned(), vec![code.to_owned()])],
                "{raw}"
            );
        }
    }

    #[test]
    fn malformed_json_and_non_objects_are_invalid_requests_without_details() {
        for body in ["", "{", "[1]", "\"name\"", r#"{"name":"a"} trailing"#] {
            match parse_json::<Body>(body.as_bytes()) {
                Err(ApiError::InvalidRequest { details: None, .. }) => {}
                other => panic!("body {body:?}: unexpected {other:?}"),
            }
        }
    }
}
