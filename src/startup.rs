//! The router with its middleware stack, and serving with graceful shutdown.

use std::{future::Future, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, Response},
    middleware::{from_fn, from_fn_with_state},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::TraceLayer,
};
use tracing::{Span, field};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    channels, console, error::ApiError, health, limits, mcp, messages, metrics, openapi, ratelimit,
    realtime, server, state::AppState,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP surface with its middleware.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let trusted = std::sync::Arc::new(state.config.http.trusted_proxies.clone());
    let (routes, document) = api_router(state.config.metrics_on_main).split_for_parts();
    routes
        .merge(openapi::router(&openapi::finish(document)))
        .merge(console::router())
        .merge(mcp::router(state.clone()))
        .fallback(realtime::literal_channel_routes)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(from_fn_with_state(state.clone(), limits::limits))
        .layer(from_fn_with_state(state.clone(), metrics::track))
        .layer(from_fn(ratelimit::headers))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(move |request: &Request| request_span(request, &trusted))
                        .on_request(())
                        .on_response(log_response)
                        .on_failure(()),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::Internal("handler panicked".into()).into_response()
                }))
                .layer(DefaultBodyLimit::max(max_body)),
        )
}

/// Every documented route: each is registered with its handler's `#[utoipa::path]`, so the
/// router and the OpenAPI document are one list.
fn api_router(metrics_on_main: bool) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::router())
        .merge(channels::router())
        .merge(messages::router())
        .merge(realtime::router());
    if metrics_on_main {
        api.routes(routes!(metrics::render))
    } else {
        api
    }
}

/// The OpenAPI document `/v1/openapi.json` serves (with `/metrics` on the main listener).
pub fn api_document() -> utoipa::openapi::OpenApi {
    openapi::finish(api_router(true).split_for_parts().1)
}

/// `/metrics` alone, for `--metrics-listen`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::render))
        .with_state(state)
}

/// The span every request's log lines carry. The query string is left out on purpose: it can
/// hold credentials (`?token=`, `?key=`).
fn request_span(request: &Request, trusted: &[crate::config::Cidr]) -> Span {
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| limits::client_ip(info.0.ip(), request.headers(), trusted).to_string())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        route,
        client,
        request_id,
        status = field::Empty,
    )
}

fn log_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    tracing::info!(
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request finished"
    );
}

/// How long WebSocket clients get to receive `going_away` and close after shutdown begins.
const WEBSOCKET_DRAIN: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves: then stops accepting, tells WebSocket clients `going_away`
/// (close 1001), closes idle connections, and lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let key_watch = tokio::spawn(realtime::watch_keys(state.clone()));
    // Stored messages reach this instance's followers through the reader, whoever posted them.
    let delivery = state.delivery.start();
    // With Redis: the pub/sub connection, heartbeat and reaper.
    let engine = state.realtime.engine.clone();
    let engine_tasks = engine.start();
    let signal = state.shutdown.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        signal.begin();
        stop.send_replace(true);
    });
    let header_timeout = state.config.http.header_timeout;
    let metrics = state.metrics.clone();
    server::run(listener, router(state), header_timeout, metrics, stopped).await;
    key_watch.abort();
    drop(delivery);
    // Upgraded connections outlive the HTTP server; give them time to say goodbye.
    let deadline = tokio::time::Instant::now() + WEBSOCKET_DRAIN;
    while engine.task_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // With Redis, this instance's peers leave now rather than when its heartbeat lapses; the
    // heartbeat stops first, so it cannot register the instance again after it left.
    engine.stop(engine_tasks).await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
