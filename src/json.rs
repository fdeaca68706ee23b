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

/// `value` as the bytes of a response body: compact JSON and a newline.
pub fn body<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(128);
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
