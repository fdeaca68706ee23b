//! The application: built once ([`Application::build`]) by `channeld serve` and the tests alike,
//! with the router and its middleware stack, its background tasks, and graceful shutdown.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    response::Response,
    routing::get,
};
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinHandle};
use tower::ServiceBuilder;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth, channels,
    config::Config,
    console, consumers, delivery,
    edge::EdgeLayer,
    error::ApiError,
    health, limits, mcp, messages,
    metrics::{self, RouteLabels},
    openapi,
    realtime::{
        self,
        engine::{Engine, EngineTasks},
    },
    server,
    state::AppState,
    webhooks,
};

/// The whole HTTP surface with its middleware: the router inside three services that every
/// request passes, whatever it is answered by (a route, the literal-channel fallback, 404 or
/// 405): the edge (request id, span, panics), the body limit, and [`EveryRequest`]. They wrap
/// the router once rather than each route (`Router::layer`), which would box every route twice
/// more and clone those boxes for every request.
pub fn router(state: AppState) -> impl server::App {
    let max_body = state.config.max_body_bytes;
    let trusted = state.config.http.trusted_proxies.clone();
    let (routes, document) = api_router(state.config.metrics_on_main).split_for_parts();
    let labels = RouteLabels::new(
        document
            .paths
            .paths
            .keys()
            .map(String::as_str)
            .chain(openapi::PATHS)
            .chain(console::PATHS)
            .chain(mcp::PATHS),
    );
    let routes = routes
        .merge(openapi::router(&openapi::finish(document)))
        .merge(console::router())
        .merge(mcp::router(state.clone()))
        .fallback(realtime::literal_channel_routes)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state.clone());
    ServiceBuilder::new()
        .layer(EdgeLayer::new(trusted, labels.clone()))
        .layer(DefaultBodyLimit::max(max_body))
        .service(EveryRequest {
            state,
            labels,
            inner: routes,
        })
}

/// What every request passes on its way in and out, around the router: the HTTP metrics, then
/// the request limits and deadline (which also report the rate-limit decision in the
/// response's `RateLimit-*` headers).
#[derive(Clone)]
pub struct EveryRequest<S> {
    state: AppState,
    labels: RouteLabels,
    inner: S,
}

impl<S> tower::Service<Request> for EveryRequest<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The service polled ready answers this request; its clone waits for the next one.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let state = self.state.clone();
        let tracked = metrics::Tracked::start(&request, &self.labels);
        Box::pin(async move {
            let response = limits::limits(&state, request, |request| inner.call(request)).await;
            tracked.answered(&state, &response);
            Ok(response)
        })
    }
}

/// Every documented route: each is registered with its handler's `#[utoipa::path]`, so the
/// router and the OpenAPI document are one list.
fn api_router(metrics_on_main: bool) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::router())
        .merge(auth::router())
        .merge(channels::router())
        .merge(messages::router())
        .merge(consumers::router())
        .merge(webhooks::router())
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

/// How long WebSocket clients get to receive `going_away` and close after shutdown begins.
const WEBSOCKET_DRAIN: Duration = Duration::from_secs(5);

/// Where the server listens: the API, and `/metrics` on a listener of its own when set.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// The server, built and bound but not yet serving: `channeld serve` and the tests both start
/// it this way (on port 0 in the tests), so they run what operators run.
pub struct Application {
    state: AppState,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
}

impl Application {
    /// Raises the open-file limit, builds the state on `pool` and binds the listeners.
    /// Migrations are the caller's: `channeld serve` applies them first (unless
    /// `--no-migrate`), the tests' databases are created migrated.
    pub async fn build(
        pool: PgPool,
        config: Config,
        addresses: Addresses,
    ) -> std::io::Result<Self> {
        webhooks::send::install_tls_provider();
        if let Some(limit) = server::raise_open_file_limit() {
            tracing::info!(limit, "open-file limit");
        }
        let listener = TcpListener::bind(addresses.listen).await?;
        tracing::info!(address = %listener.local_addr()?, "channeld listening");
        let metrics_listener = match addresses.metrics {
            Some(address) => {
                let listener = TcpListener::bind(address).await?;
                tracing::info!(address = %listener.local_addr()?, "metrics listening");
                Some(listener)
            }
            None => None,
        };
        let mut config = config;
        config.metrics_on_main = metrics_listener.is_none();
        Ok(Self {
            state: AppState::new(pool, config),
            listener,
            metrics_listener,
        })
    }

    /// The API's address (the port the OS chose, for port 0).
    pub fn address(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// `/metrics`'s own address, when it has one.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves: then stops accepting, tells WebSocket clients
    /// `going_away` (close 1001), closes idle connections, lets requests in flight finish, and
    /// stops every background task. This is the one owner of the server's background tasks.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            state,
            listener,
            metrics_listener,
        } = self;
        let tasks = Background::start(&state, metrics_listener);
        let signal = state.shutdown.clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            signal.begin();
            stop.send_replace(true);
        });
        let engine = state.realtime.engine.clone();
        let header_timeout = state.config.http.header_timeout;
        let stats = state.metrics.server.clone();
        server::run(listener, router(state), header_timeout, stats, stopped).await;
        // Upgraded connections outlive the HTTP server; give them time to say goodbye.
        let deadline = tokio::time::Instant::now() + WEBSOCKET_DRAIN;
        while engine.task_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tasks.stop(&engine).await;
        Ok(())
    }
}

/// Every background task of a running server, stopped together.
struct Background {
    /// Closes connections whose key was revoked or expired.
    key_watch: JoinHandle<()>,
    /// Stored messages reach this instance's followers through the reader, whoever posted them.
    delivery: delivery::Tasks,
    /// With Redis: the pub/sub connection, heartbeat and reaper.
    engine: EngineTasks,
    /// `/metrics` on its own listener.
    metrics: Option<JoinHandle<()>>,
    /// Webhook dispatch and delivery.
    webhooks: JoinHandle<()>,
}

impl Background {
    fn start(state: &AppState, metrics_listener: Option<TcpListener>) -> Self {
        let metrics = metrics_listener.map(|listener| {
            let router = metrics_router(state.clone());
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "the metrics listener stopped");
                }
            })
        });
        Self {
            key_watch: tokio::spawn(realtime::watch_keys(state.clone())),
            delivery: state.delivery.start(),
            engine: state.realtime.engine.start(),
            metrics,
            webhooks: webhooks::worker::start(state),
        }
    }

    /// Stops everything; with Redis, this instance's peers then leave at once rather than when
    /// its heartbeat lapses (the heartbeat stops first, so it cannot register it again).
    async fn stop(self, engine: &Engine) {
        self.key_watch.abort();
        self.webhooks.abort();
        if let Some(metrics) = &self.metrics {
            metrics.abort();
        }
        drop(self.delivery);
        engine.stop(self.engine).await;
    }
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
