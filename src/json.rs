//! JSON response bodies. Every one ends with a newline, so `curl` output never runs into the
//! shell prompt and line-oriented tools see one line per response.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// A JSON response body (`application/json`), with a trailing newline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// Room a body starts with: one message (about 250 bytes besides its content) or one channel
/// fits, so most bodies are written without growing their buffer.
const USUAL_BODY: usize = 512;

/// `value` as the bytes of a response body: compact JSON and a newline.
pub fn body<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    body_sized(value, USUAL_BODY)
}

/// [`body`], written into a buffer of `capacity` bytes to start with (it grows past that if it
/// must): a page of messages knows its size closely enough to be written without copies.
pub fn body_sized<T: Serialize + ?Sized>(
    value: &T,
    capacity: usize,
) -> serde_json::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut bytes, value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match body(&self.0) {
            Ok(bytes) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                bytes,
            )
                .into_response(),
            Err(error) => {
                tracing::error!(%error, "a response body did not serialize");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

const TWO_TO_63: f64 = 9_223_372_036_854_775_808.0;

/// The integer a JSON number spells, whether written `35` or `35.0`: JSON Schema calls both an
/// integer. `None` for a fraction or a number beyond `i64`.
pub fn integral(number: &serde_json::Number) -> Option<i64> {
    number.as_i64().or_else(|| {
        let value = number.as_f64()?;
        // 2^63 is exactly representable; every integral float in [-2^63, 2^63) fits an i64.
        (value.fract() == 0.0 && (-TWO_TO_63..TWO_TO_63).contains(&value)).then_some(value as i64)
    })
}

/// `deserialize_with` for an optional integer field. JSON Schema calls `35.0` an integer, and
/// generated clients may write one that way, so an integral number is taken whatever its
/// spelling; a fraction or a number beyond `i64` is refused like any other wrong type.
pub fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    use serde::de::{Deserialize, Error, Unexpected};
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    match (integral(&number), number.as_f64()) {
        (Some(value), _) => Ok(Some(value)),
        (None, Some(value)) => Err(D::Error::invalid_type(
            Unexpected::Float(value),
            &"an integer",
        )),
        (None, None) => Err(D::Error::invalid_type(
            Unexpected::Other(&number.to_string()),
            &"an integer",
        )),
    }
}

/// [`integer`] for a required field: `null` is refused as a wrong type.
pub fn required_integer<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<i64, D::Error> {
    use serde::de::{Error, Unexpected};
    integer(deserializer)?.ok_or_else(|| D::Error::invalid_type(Unexpected::Unit, &"an integer"))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Required {
        #[serde(deserialize_with = "super::required_integer")]
        last: i64,
    }

    #[test]
    fn a_required_integer_is_taken_in_either_spelling_and_never_null_or_missing() {
        let last = |json: &str| serde_json::from_str::<Required>(json).map(|r| r.last);
        assert_eq!(last(r#"{"last": 7}"#).unwrap(), 7);
        assert_eq!(last(r#"{"last": 7.0}"#).unwrap(), 7);
        assert!(last(r#"{"last": 7.5}"#).is_err());
        assert!(last(r#"{"last": null}"#).is_err());
        assert!(last("{}").is_err());
    }

    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::integer")]
        max: Option<i64>,
    }

    fn max(json: &str) -> Result<Option<i64>, String> {
        serde_json::from_str::<Body>(json)
            .map(|b| b.max)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integers_are_taken_in_either_spelling_and_fractions_are_refused() {
        assert_eq!(max(r#"{"max": 35}"#), Ok(Some(35)));
        assert_eq!(max(r#"{"max": 35.0}"#), Ok(Some(35)));
        assert_eq!(max(r#"{"max": -2e3}"#), Ok(Some(-2000)));
        assert_eq!(max(r#"{"max": null}"#), Ok(None));
        assert_eq!(max("{}"), Ok(None));
        assert!(
            max(r#"{"max": 1.5}"#)
                .unwrap_err()
                .contains("expected an integer")
        );
        assert!(max(r#"{"max": 1e300}"#).is_err());
        assert!(max(r#"{"max": "3"}"#).is_err());
    }
}
