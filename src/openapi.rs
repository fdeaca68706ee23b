//! The OpenAPI 3.1 document of every REST route. The router itself produces it: each route is
//! registered with the `#[utoipa::path]` annotation of its handler (utoipa-axum), so a path the
//! server serves is a path the document describes, and the reverse. Responses every authenticated
//! operation shares (401, 403, 429, 503) are defined once under `components/responses`. Served at
//! `/v1/openapi.json`, and rendered for people at `/docs` with assets built into the binary.

use std::sync::Arc;

use axum::{Router, http::header, response::IntoResponse, routing::get};
use utoipa::{
    OpenApi,
    openapi::{
        Content, HeaderBuilder, Ref, RefOr, ResponseBuilder,
        path::Operation,
        schema::{ObjectBuilder, Type},
        security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme},
    },
};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::{error, state::AppState};

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/v1/openapi.json";
/// Where the Swagger UI is served.
const DOCS: &str = "/docs";
/// Every route [`router`] serves: the document, and the three the Swagger UI registers for
/// itself under [`DOCS`] (its redirect, its page and its files).
pub const PATHS: [&str; 4] = [DOCUMENT_PATH, DOCS, "/docs/", "/docs/{*rest}"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "channeld",
        description = "Collaboration channels for AI agents: persistent history in PostgreSQL, live delivery over WebSocket.\n\nA *persistent channel* has a numeric id (`/v1/channels/{id}`) and stores messages; a *realtime channel name* (such as `app_abc/room-1`) names a live stream over WebSocket, `peers` and `publish`. The realtime name `\"42\"` is persistent channel 42's live stream: its stored messages arrive there as they commit.\n\nErrors share one envelope: `{\"error\": code, \"message\": text, \"details\"?: {field: [what]}}`.\n\nNot described here: the WebSocket protocol of `GET /v1` (docs/SPEC.md §5), the MCP endpoint `POST /v1/mcp` (JSON-RPC over MCP's Streamable HTTP transport; its tools describe themselves through `tools/list`; docs/SPEC.md §6c), and the `/console` web page.",
    ),
    components(schemas(error::Envelope, error::FieldErrors)),
    tags(
        (name = "channels", description = "Persistent channels"),
        (name = "messages", description = "Channel history and following it"),
        (name = "consumers", description = "Consumer groups: a channel's messages split among members, with leases, acknowledgements and dead letters"),
        (name = "realtime", description = "Tokens, peers, publishing and the WebSocket endpoint"),
        (name = "keys", description = "Keys derived from the calling one (scope `admin`)"),
        (name = "webhooks", description = "Signed events sent to HTTP receivers (scope `admin`)"),
        (name = "operations", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

/// The responses every authenticated operation may give, by status and component name.
const SHARED: [(&str, &str); 4] = [
    ("401", "Unauthorized"),
    ("403", "Forbidden"),
    ("429", "RateLimited"),
    ("503", "Unavailable"),
];

/// Completes the document the router collected: security schemes, and the shared responses
/// referenced from every operation that takes a key.
pub fn finish(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("`sk_live_…` or `sk_id_…:sk_secret_…`"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-API-Key",
            "Either form of a secret key",
        ))),
    );
    let envelope = || Content::new(Some(Ref::from_schema_name("Envelope")));
    let integer_header = |description: &str| {
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::Integer))
            .description(Some(description))
            .build()
    };
    let responses = [
        ResponseBuilder::new()
            .description(
                "`unauthorized`: the key is missing, malformed, unknown, revoked or expired; \
                 `message` says which",
            )
            .content("application/json", envelope())
            .header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some("`Bearer`"))
                    .build(),
            ),
        ResponseBuilder::new()
            .description(
                "The key lacks a scope or action (`insufficient_scope` with `required_scopes`, \
                 `action_not_permitted`, `channel_not_authorized`)",
            )
            .content("application/json", envelope()),
        ResponseBuilder::new()
            .description("`rate_limited`: over the key's rate limit")
            .content("application/json", envelope())
            .header(
                "Retry-After",
                integer_header("Seconds until a request would be allowed"),
            ),
        ResponseBuilder::new()
            .description(
                "`unavailable`: the database (or, in cluster mode, Redis) is unreachable; retry",
            )
            .content("application/json", envelope()),
    ];
    for ((_, name), response) in SHARED.iter().zip(responses) {
        components
            .responses
            .insert((*name).to_owned(), RefOr::T(response.build()));
    }
    for item in api.paths.paths.values_mut() {
        for operation in operations(item) {
            if operation.security.is_some() {
                for (status, name) in SHARED {
                    operation
                        .responses
                        .responses
                        .insert(status.to_owned(), RefOr::Ref(Ref::from_response_name(name)));
                }
            }
        }
    }
    api
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// `/v1/openapi.json` (serialized once) and `/docs`.
pub fn router(api: &utoipa::openapi::OpenApi) -> Router<AppState> {
    let document: Arc<[u8]> = crate::json::body(api)
        .expect("the OpenAPI document serializes")
        .into();
    let serve = get(move || {
        let document = document.clone();
        async move {
            (
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Bytes::from_owner(document),
            )
                .into_response()
        }
    });
    Router::new()
        .route(DOCUMENT_PATH, serve)
        .merge(SwaggerUi::new(DOCS).config(Config::from(DOCUMENT_PATH)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn operation_ids_are_unique_and_shared_responses_are_referenced() {
        let mut api = crate::startup::api_document();
        let mut ids = HashSet::new();
        let mut authenticated = 0;
        for (path, item) in api.paths.paths.iter_mut() {
            for operation in operations(item) {
                let id = operation
                    .operation_id
                    .clone()
                    .expect("every operation has an id");
                assert!(ids.insert(id.clone()), "operation id {id} is used twice");
                if operation.security.is_some() {
                    authenticated += 1;
                    for (status, name) in SHARED {
                        let response = &operation.responses.responses[status];
                        assert!(
                            matches!(response, RefOr::Ref(r) if r.ref_location.ends_with(name)),
                            "{path} {status}"
                        );
                    }
                }
            }
        }
        assert!(ids.len() >= 15 && authenticated >= 11, "{ids:?}");
    }
}
