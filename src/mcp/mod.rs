//! `POST /v1/mcp`: channels as tools for AI agents, over MCP's Streamable HTTP transport.
//!
//! The server is the official Rust SDK (`rmcp`) mounted in the router, stateless: every POST
//! stands alone (no `Mcp-Session-Id`), so any instance behind a load balancer answers any
//! request. It speaks the current protocol revision (2026-07-28, no handshake) and the ones with
//! an `initialize` handshake back to 2024-11-05; answers are plain JSON (`application/json`).
//! The plain `tools/call` of the handshake revisions is answered beside the SDK, as the SDK
//! answers it but without its per-call task (see [`direct`]).
//!
//! Before the SDK sees a request, [`guard`] checks, in this order:
//! 1. `Host`, and a browser's `Origin`, against `--mcp-allowed-host` (DNS rebinding): 403
//!    `host_not_allowed`;
//! 2. the API key, exactly as REST does: 401 (with `WWW-Authenticate: Bearer`), or 429
//!    `rate_limited`. The 401's body is a JSON-RPC error (code -32001) whose `message` is the REST
//!    401's code and message and whose `data` is `{"error": "unauthorized"}`: PyPI's `mcp` shows
//!    a JSON-RPC error's message and nothing of a body in another shape; npm's SDK shows the body. The key's [`Principal`] rides in the request's extensions to the tools,
//!    which apply the REST scope rules one tool at a time (see [`tools`]).
//!
//! Refusals of the transport itself (a `GET`, a wrong `Accept` or `Content-Type`, a body over
//! `--max-body-bytes`) are answered in the error envelope like every other route. JSON-RPC errors
//! pass through as the protocol defines them. Every JSON answer ends with a newline, as REST's do.
//!
//! There is no OAuth: `/.well-known/oauth-*`, which MCP clients probe, answers a plain 404 that
//! says to send an API key.

mod direct;
mod tools;

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{Next, from_fn_with_state},
    response::{IntoResponse, Response},
    routing::any,
};
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::never::NeverSessionManager,
};

use serde_json::json;

use crate::{
    auth::Principal, config::McpConfig, error::ApiError, json::Json, limits::InFlight,
    state::AppState,
};

/// The MCP endpoint's path.
pub const PATH: &str = "/v1/mcp";
/// Discovery documents a client may look for (OAuth's): answered 404 in the envelope.
const WELL_KNOWN: &str = "/.well-known/{*rest}";
/// Every route [`router`] serves.
pub const PATHS: [&str; 2] = [PATH, WELL_KNOWN];

/// `/v1/mcp` and the `/.well-known/` answers MCP clients look for.
pub fn router(state: AppState) -> Router<AppState> {
    let config = StreamableHttpServerConfig::default()
        // Stateless: no session is created, so no instance needs to see a client twice.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        // `guard` checks Host and Origin itself, to answer in the error envelope.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(state.config.max_body_bytes);
    let tools = tools::Tools::new(state.clone(), tools::Tools::list(state.config.mcp.max_wait));
    let sdk_tools = tools.clone();
    let service = StreamableHttpService::new(
        move || Ok(sdk_tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service(PATH, service)
        .layer(from_fn_with_state((state, tools), guard))
        .route(WELL_KNOWN, any(well_known))
}

/// Host and Origin, then the API key; the transport's own refusals put in the envelope.
async fn guard(
    State((state, tools)): State<(AppState, tools::Tools)>,
    request: Request,
    next: Next,
) -> Response {
    with_length(checked(state, &tools, request, next).await)
}

/// An explicit `Content-Length` for a body of known size: behind the SDK's service the router
/// loses the body's size, and every answer would go out chunked.
fn with_length(mut response: Response) -> Response {
    if let Some(length) = response.body().size_hint().exact()
        && !response.headers().contains_key(header::CONTENT_LENGTH)
    {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

async fn checked(state: AppState, tools: &tools::Tools, request: Request, next: Next) -> Response {
    if let Err(refused) = check_host(&state.config.mcp, request.headers()) {
        return refused.into_response();
    }
    let (mut parts, body) = request.into_parts();
    let principal = match Principal::from_request_parts(&mut parts, &state).await {
        Ok(principal) => principal,
        Err(refused @ ApiError::Unauthorized(_)) => return unauthorized(refused),
        Err(refused) => return refused.into_response(),
    };
    // A tool call may wait for messages, up to the configured maximum (the tool bounds its own
    // work more tightly): the request's deadline makes room for it (see `limits`).
    if let Some(allowance) = parts.extensions.get::<InFlight>() {
        allowance.allow(state.config.mcp.max_wait);
    }
    // Read here, so that a body too slow or too large is answered as on every route (408, 413)
    // rather than as the SDK's own failure to read it.
    let body = match Limited::new(body, state.config.max_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if crate::extract::is_body_timeout(&*error) => {
            return crate::extract::body_timed_out().into_response();
        }
        Err(error) if error.is::<LengthLimitError>() => {
            return ApiError::PayloadTooLarge("request body is too large".into()).into_response();
        }
        Err(_) => return ApiError::invalid("could not read the request body").into_response(),
    };
    if let Some(call) = direct::call(&parts, &body) {
        return direct::answer(tools, call, &principal).await;
    }
    parts.extensions.insert(principal);
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    in_envelope(with_newline(response).await).await
}

/// JSON-RPC's error code for a refused credential (in the range left to servers).
const UNAUTHORIZED: i64 = -32001;

/// A 401 as MCP clients can show it: the REST response (status, `WWW-Authenticate: Bearer`) with
/// a JSON-RPC error for a body. Its `id` is null: the body is not read before the key checks out.
fn unauthorized(refused: ApiError) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": UNAUTHORIZED,
            "message": format!("{}: {refused}", refused.code()),
            "data": {"error": refused.code()},
        },
    });
    let challenge = [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))];
    (refused.status(), challenge, Json(body)).into_response()
}

/// A JSON answer of the SDK (one whole JSON-RPC message) with the newline every JSON body of
/// the API ends with.
async fn with_newline(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(error) => return ApiError::Internal(error.into()).into_response(),
    };
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// A refusal of the transport (plain text from the SDK) rewritten as the error envelope.
async fn in_envelope(response: Response) -> Response {
    let status = response.status();
    let is_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|value| value.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !is_text {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match body.collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let message = match text.trim() {
        "" => status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase(),
        text => text.to_owned(),
    };
    let error = match status {
        // Stateless: there is no stream to GET and no session to DELETE.
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::NOT_FOUND => ApiError::NotFound(message),
        status if status.is_server_error() => ApiError::Internal(message.into()),
        status => ApiError::RequestRejected { status, message },
    };
    let mut rewritten = error.into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        rewritten.headers_mut().insert(header::ALLOW, allow.clone());
    }
    rewritten
}

/// The `Host` must be one `--mcp-allowed-host` lists; an `Origin`, when a browser sends one,
/// must name such a host too, or be the request's own.
fn check_host(config: &McpConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let any_host = config.allowed_hosts.iter().any(|h| h == "*");
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !any_host && !host_allowed(&config.allowed_hosts, host) {
        let shown: String = host.chars().take(100).collect();
        return Err(ApiError::HostNotAllowed(format!(
            "Host `{shown}` is not accepted by /v1/mcp (a guard against DNS rebinding): add it with --mcp-allowed-host or CHANNELD_MCP_ALLOWED_HOSTS"
        )));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin_host = origin.to_str().ok().and_then(origin_authority);
    let accepted = origin_host.is_some_and(|authority| {
        authority.eq_ignore_ascii_case(host)
            || (!any_host && host_allowed(&config.allowed_hosts, authority))
    });
    if accepted {
        Ok(())
    } else {
        let shown: String = String::from_utf8_lossy(origin.as_bytes())
            .chars()
            .take(100)
            .collect();
        Err(ApiError::HostNotAllowed(format!(
            "Origin `{shown}` may not call /v1/mcp: a browser page may only when its host is one --mcp-allowed-host lists"
        )))
    }
}

/// `host[:port]` of an `Origin` such as `https://app.example.com:8443`; `None` for `null` and
/// anything that is not `scheme://authority`.
fn origin_authority(origin: &str) -> Option<&str> {
    let (scheme, authority) = origin.split_once("://")?;
    let valid = matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && !authority.contains(['/', '@', '?', '#']);
    valid.then_some(authority)
}

/// Whether `authority` (`host` or `host:port`) matches an entry: an entry without a port
/// matches the host on any port, one with a port only that port. Names ignore case; `::1` and
/// `[::1]` are the same entry.
fn host_allowed(allowed: &[String], authority: &str) -> bool {
    let (host, port) = split_authority(authority);
    !host.is_empty()
        && allowed.iter().any(|entry| {
            let (entry_host, entry_port) = split_authority(entry);
            entry_host.eq_ignore_ascii_case(host) && (entry_port.is_none() || entry_port == port)
        })
}

/// `example.com:8080` → (`example.com`, `8080`); `[::1]:8080` → (`::1`, `8080`); a bare IPv6
/// address is all host.
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (rest, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

/// `/.well-known/…`: nothing is published there. OAuth discovery, which MCP clients try before
/// anything else, is told what to do instead.
async fn well_known(request: Request) -> Response {
    let path = request.uri().path();
    let error =
        if path.starts_with("/.well-known/oauth-") || path.starts_with("/.well-known/openid-") {
            ApiError::NotFound(
                "channeld does not use OAuth: send an API key as `Authorization: Bearer sk_live_…`"
                    .into(),
            )
        } else {
            ApiError::no_route(path)
        };
    error.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hosts: &[&str]) -> McpConfig {
        McpConfig {
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            ..McpConfig::default()
        }
    }

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        headers
    }

    #[test]
    fn default_hosts_are_loopback_on_any_port() {
        let config = McpConfig::default();
        for host in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:9",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            assert!(check_host(&config, &headers(host, None)).is_ok(), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.2",
            "localhost.evil.example",
        ] {
            assert!(check_host(&config, &headers(host, None)).is_err(), "{host}");
        }
    }

    #[test]
    fn a_port_in_an_entry_is_exact() {
        let config = config(&["agents.example.com:8443"]);
        assert!(check_host(&config, &headers("agents.example.com:8443", None)).is_ok());
        assert!(check_host(&config, &headers("agents.example.com", None)).is_err());
        assert!(check_host(&config, &headers("agents.example.com:8080", None)).is_err());
    }

    #[test]
    fn origins_must_name_an_allowed_host_or_the_request_own() {
        let config = McpConfig::default();
        let ok = [
            ("localhost:8080", "http://localhost:8080"),
            ("localhost:8080", "http://127.0.0.1:3000"),
        ];
        for (host, origin) in ok {
            assert!(
                check_host(&config, &headers(host, Some(origin))).is_ok(),
                "{origin}"
            );
        }
        let refused = [
            ("localhost:8080", "https://evil.example"),
            ("localhost:8080", "null"),
            ("localhost:8080", "http://localhost@evil.example"),
        ];
        for (host, origin) in refused {
            assert!(
                check_host(&config, &headers(host, Some(origin))).is_err(),
                "{origin}"
            );
        }
        // Any host: a browser still may not call cross-origin.
        let any = config_any();
        assert!(check_host(&any, &headers("agents.example.com", None)).is_ok());
        assert!(
            check_host(
                &any,
                &headers("agents.example.com", Some("https://agents.example.com"))
            )
            .is_ok()
        );
        assert!(
            check_host(
                &any,
                &headers("agents.example.com", Some("https://evil.example"))
            )
            .is_err()
        );
    }

    fn config_any() -> McpConfig {
        config(&["*"])
    }
}
