//! The outermost layer of the HTTP surface, one service for what every request passes first and
//! last: its id (`X-Request-Id` as sent, or a new random UUID), returned on the answer; its
//! tracing span and the `request finished` log line; and a handler's panic, answered with 500 in
//! the error envelope. Written as one service rather than tower-http's four layers (set and
//! propagate the request id, trace, catch panic), each of which wrapped every request's future
//! and the trace layer every response's body too.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    panic::{self, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderName, HeaderValue, header::Entry},
    response::{IntoResponse, Response},
};
use tower::{Layer, Service};
use tracing::{Span, field};

use crate::{config::Cidr, error::ApiError, limits, metrics::RouteLabels};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps the router in [`Edge`].
#[derive(Clone)]
pub struct EdgeLayer {
    trusted: Arc<Vec<Cidr>>,
    routes: RouteLabels,
}

impl EdgeLayer {
    /// `trusted`: the proxies whose `X-Forwarded-For` names the client in the span; `routes`:
    /// the span's `route`.
    pub fn new(trusted: Vec<Cidr>, routes: RouteLabels) -> Self {
        Self {
            trusted: Arc::new(trusted),
            routes,
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            trusted: self.trusted.clone(),
            routes: self.routes.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    trusted: Arc<Vec<Cidr>>,
    routes: RouteLabels,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // A made id is the span's and the answer's; no handler reads it from the request.
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => random_request_id(),
        };
        let span = request_span(&request, &id, &self.trusted, &self.routes);
        let started = (!span.is_disabled()).then(Instant::now);
        let inner = {
            let _entered = span.enter();
            panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))).ok()
        };
        EdgeFuture {
            inner,
            span,
            id,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer on its way out of [`Edge`].
    pub struct EdgeFuture<F> {
        // `None`: the handler panicked before it returned a future.
        #[pin]
        inner: Option<F>,
        span: Span,
        id: HeaderValue,
        // When the request came in, if its span is recorded.
        started: Option<Instant>,
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut response = match this.inner.as_pin_mut() {
            None => panicked(),
            Some(inner) => match panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(Ok(response))) => response,
                Err(_) => panicked(),
            },
        };
        if let Entry::Vacant(vacant) = response.headers_mut().entry(REQUEST_ID) {
            vacant.insert(std::mem::replace(this.id, HeaderValue::from_static("")));
        }
        if let Some(started) = this.started {
            log_response(&response, started.elapsed(), this.span);
        }
        Poll::Ready(Ok(response))
    }
}

fn panicked() -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}

/// A random (version 4) UUID, drawn from the thread's generator (seeded from the operating
/// system, reseeded as it goes) rather than with a `getrandom` system call per request.
fn random_request_id() -> HeaderValue {
    let bytes: [u8; 16] = rand::random();
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
        .expect("a UUID is a valid header value")
}

/// The span every request's log lines carry. The query string is left out on purpose: it can
/// hold credentials (`?token=`, `?key=`). Its fields are worked out only when the span is
/// recorded at all (not below `info`).
fn request_span(
    request: &Request,
    id: &HeaderValue,
    trusted: &[Cidr],
    routes: &RouteLabels,
) -> Span {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        route = field::Empty,
        client = field::Empty,
        request_id = field::Empty,
        status = field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| limits::client_ip(info.0.ip(), request.headers(), trusted).to_string())
        .unwrap_or_default();
    span.record("route", routes.of(request.uri().path()).as_str());
    span.record("client", client.as_str());
    span.record("request_id", id.to_str().unwrap_or_default());
    span
}

fn log_response(response: &Response, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    tracing::info!(
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request finished"
    );
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, http::StatusCode, routing::get};
    use tower::ServiceExt;

    use super::*;

    fn app() -> Edge<Router> {
        let router = Router::new()
            .route("/fine", get(|| async { "fine" }))
            .route(
                "/panics",
                get(|| async {
                    if true {
                        panic!("a handler's bug");
                    }
                    "never"
                }),
            );
        EdgeLayer::new(Vec::new(), RouteLabels::new(["/fine", "/panics"])).layer(router)
    }

    async fn send(path: &str, id: Option<&str>) -> Response {
        let mut request = Request::builder().uri(path);
        if let Some(id) = id {
            request = request.header(REQUEST_ID, id);
        }
        app()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_request_id_sent_comes_back_and_one_is_made_otherwise() {
        let response = send("/fine", Some("trace-me-123")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[REQUEST_ID], "trace-me-123");

        let made = send("/fine", None).await;
        let id = made.headers()[REQUEST_ID].to_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        assert_ne!(id, send("/fine", None).await.headers()[REQUEST_ID]);
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_with_500_in_the_envelope() {
        let response = send("/panics", Some("panicked-1")).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[REQUEST_ID], "panicked-1");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(envelope["error"], "internal_error", "{envelope}");
    }
}
