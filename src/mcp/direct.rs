//! `tools/call` answered without the SDK's per-request machinery (a task, channels and a
//! cancellation token per call, the JSON-RPC message rebuilt from a tree of values), for the
//! requests clients of revisions 2024-11-05 to 2025-11-25 send. A thousand waiters woken by one
//! post are a thousand answers at once: here each is the shared written result (see
//! `tools::SharedAnswers`) between its own `id` and the envelope.
//!
//! Only a request the SDK would certainly take as it is comes here; the SDK answers all others,
//! refusals included:
//! - `POST`, `Content-Type: application/json` (optionally `; charset=utf-8`), and an `Accept`
//!   of exactly `application/json` and `text/event-stream`, in either order;
//! - no `MCP-Protocol-Version`, or a known one older than 2026-07-28 (from which the SDK checks
//!   the `Mcp-Method` headers and the request's `_meta`);
//! - a body of exactly `jsonrpc`, `id`, `method: "tools/call"` and `params` of exactly `name`
//!   (a tool's) and `arguments`: no `_meta`, no task.
//!
//! The answer is what the SDK writes: the same `id` type, the result with the same fields for
//! the same revisions (`tests/mcp.rs` compares the two paths).

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request::Parts},
    response::Response,
};
use rmcp::model::{JsonObject, JsonRpcVersion2_0, ProtocolVersion, RequestId};
use serde::Deserialize;

use super::tools::{Answer, Name, Tools, legacy_json};
use crate::auth::Principal;

/// A `tools/call` the SDK would take as it is.
pub struct Call {
    id: RequestId,
    name: Name,
    arguments: JsonObject,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    /// `"2.0"`, checked by its type.
    #[serde(rename = "jsonrpc")]
    _jsonrpc: JsonRpcVersion2_0,
    id: RequestId,
    method: String,
    params: Params,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    #[serde(default)]
    arguments: Option<JsonObject>,
}

/// The call in `parts` and `body`, when it is one to answer here.
pub fn call(parts: &Parts, body: &[u8]) -> Option<Call> {
    if parts.method != Method::POST || !plain_headers(&parts.headers) {
        return None;
    }
    let message: Message = serde_json::from_slice(body).ok()?;
    if message.method != "tools/call" {
        return None;
    }
    Some(Call {
        id: message.id,
        // An unknown tool is the SDK's to refuse.
        name: Name::parse(&message.params.name)?,
        arguments: message.params.arguments.unwrap_or_default(),
    })
}

const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");

/// The headers every client of the older revisions sends, each once.
fn plain_headers(headers: &HeaderMap) -> bool {
    let only = |name: HeaderName| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().ok(),
            _ => None,
        }
    };
    let accept = only(header::ACCEPT).is_some_and(|accept| {
        let mut types = accept.split(',').map(str::trim);
        let is = |media: &str, expected: &str| media.eq_ignore_ascii_case(expected);
        match (types.next(), types.next(), types.next()) {
            (Some(a), Some(b), None) => {
                (is(a, "application/json") && is(b, "text/event-stream"))
                    || (is(a, "text/event-stream") && is(b, "application/json"))
            }
            _ => false,
        }
    });
    let content_type = only(header::CONTENT_TYPE).is_some_and(|value| {
        value.eq_ignore_ascii_case("application/json")
            || value.eq_ignore_ascii_case("application/json; charset=utf-8")
    });
    let version = !headers.contains_key(PROTOCOL_VERSION)
        || only(PROTOCOL_VERSION).is_some_and(|version| {
            version < ProtocolVersion::STANDARD_HEADERS.as_str()
                && version < ProtocolVersion::V_2026_07_28.as_str()
                && ProtocolVersion::KNOWN_VERSIONS
                    .iter()
                    .any(|known| known.as_str() == version)
        });
    accept && content_type && version
}

/// The answer to `call` by `caller`, as the SDK writes it.
pub async fn answer(tools: &Tools, call: Call, caller: &Principal) -> Response {
    let result = match tools.call(call.name, call.arguments, caller, true).await {
        Answer::Written(json) => json,
        Answer::Result(result) => legacy_json(result),
    };
    let mut body = Vec::with_capacity(result.len() + 64);
    body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    serde_json::to_writer(&mut body, &call.id).expect("an id is written to JSON");
    body.extend_from_slice(b",\"result\":");
    body.extend_from_slice(&result);
    body.extend_from_slice(b"}\n");
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use serde_json::{Value, json};

    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        parts_of(Method::POST, headers)
    }

    fn parts_of(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().method(method).uri("/v1/mcp");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    const PLAIN: [(&str, &str); 3] = [
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2025-11-25"),
    ];

    fn with<'a>(changed: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
        let mut headers: Vec<_> = PLAIN
            .iter()
            .filter(|(name, _)| *name != changed.0)
            .copied()
            .collect();
        headers.push(changed);
        headers
    }

    fn body(value: Value) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    fn wait_call() -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "wait_for_messages", "arguments": {"channel_id": 1, "after": 0}}})
    }

    #[test]
    fn the_plain_calls_of_the_older_revisions_are_answered_here() {
        assert!(call(&parts(&PLAIN), &body(wait_call())).is_some());
        for version in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
            let headers = with(("mcp-protocol-version", version));
            assert!(
                call(&parts(&headers), &body(wait_call())).is_some(),
                "{version}"
            );
        }
        let without_version: Vec<_> = PLAIN[..2].to_vec();
        assert!(call(&parts(&without_version), &body(wait_call())).is_some());
        for accept in [
            "text/event-stream, application/json",
            "application/json,text/event-stream",
        ] {
            assert!(
                call(&parts(&with(("accept", accept))), &body(wait_call())).is_some(),
                "{accept}"
            );
        }
        let mut no_arguments = wait_call();
        no_arguments["params"]
            .as_object_mut()
            .unwrap()
            .remove("arguments");
        no_arguments["id"] = json!("a string id");
        assert!(call(&parts(&PLAIN), &body(no_arguments)).is_some());
    }

    #[test]
    fn anything_else_is_left_to_the_sdk() {
        let sdk = |headers: Vec<(&str, &str)>, message: Value| {
            call(&parts(&headers), &body(message)).is_none()
        };
        for (name, value) in [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-protocol-version", "bogus"),
            ("accept", "application/json"),
            ("accept", "application/json, text/event-stream;q=0.5"),
            ("accept", "*/*"),
            ("content-type", "application/json;charset=UTF-8"),
            ("content-type", "text/plain"),
        ] {
            assert!(sdk(with((name, value)), wait_call()), "{name}: {value}");
        }
        let mut twice = PLAIN.to_vec();
        twice.push(("mcp-protocol-version", "2025-11-25"));
        assert!(sdk(twice, wait_call()));
        let mut changed = Vec::new();
        for (pointer, value) in [
            ("/method", json!("tools/list")),
            ("/jsonrpc", json!("1.0")),
            ("/id", Value::Null),
            ("/params/name", json!("no_such_tool")),
            ("/params/_meta", json!({"progressToken": 1})),
            ("/params/task", json!({})),
            ("/extra", json!(1)),
        ] {
            let mut message = wait_call();
            let (parent, field) = pointer.rsplit_once('/').unwrap();
            message
                .pointer_mut(if parent.is_empty() { "" } else { parent })
                .unwrap()[field] = value;
            changed.push(message);
        }
        for message in changed {
            assert!(sdk(PLAIN.to_vec(), message.clone()), "{message}");
        }
        assert!(sdk(PLAIN.to_vec(), json!([wait_call()])), "a batch");
        assert!(call(&parts_of(Method::GET, &PLAIN), &body(wait_call())).is_none());
    }
}
