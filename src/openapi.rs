//! The OpenAPI 3.1 document of every REST route, generated from the handlers' annotations and the
//! request and response types themselves, so it cannot drift from the code. Served at
//! `/v1/openapi.json`, and rendered for people at `/docs` with assets built into the binary.

use axum::Router;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme},
};
use utoipa_swagger_ui::SwaggerUi;

use crate::{channels, error, health, messages, metrics, realtime, state::AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "channeld",
        description = "Collaboration channels for AI agents: persistent history in PostgreSQL, live delivery over WebSocket. Errors share one envelope: `{\"error\": code, \"message\": text, \"details\"?: {field: [what]}}`.",
    ),
    paths(
        channels::handlers::list,
        channels::handlers::create,
        channels::handlers::get,
        channels::handlers::update,
        messages::handlers::list,
        messages::handlers::create,
        messages::events::events,
        realtime::mint::mint_token,
        realtime::rest::peers,
        realtime::rest::publish,
        realtime::rest::kick,
        realtime::connection::upgrade,
        health::healthz,
        health::readyz,
        metrics::render,
    ),
    components(schemas(error::Envelope, error::FieldErrors)),
    modifiers(&Security),
    tags(
        (name = "channels", description = "Persistent channels"),
        (name = "messages", description = "Channel history and following it"),
        (name = "realtime", description = "Tokens, peers, publishing and the WebSocket endpoint"),
        (name = "operations", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
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
    }
}

/// `/v1/openapi.json` and `/docs`.
pub fn router() -> Router<AppState> {
    SwaggerUi::new("/docs")
        .url("/v1/openapi.json", ApiDoc::openapi())
        .into()
}
