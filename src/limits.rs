//! Limits every request meets before its handler: the URI's length (414), the headers' size
//! (431) and a declared `Content-Length` over `--max-body-bytes` (413, at once: the body is never
//! waited for), answered in the error envelope; the body's arrival within `--http-body-timeout`
//! (408, answered where the body is read, after the key check); and a deadline on the request's
//! work, `--db-timeout` plus whatever wait the feature that waits by design grants
//! ([`InFlight::allow`]: a long poll's `wait`, an MCP tool's wait), past which it answers 503
//! `unavailable` so that a frozen database cannot hold requests without limit. Time spent waiting for the body is
//! the client's, not the database's: while the body is still arriving the deadline moves on, so
//! a slow upload gets its whole `--http-body-timeout` and a stalled one a 408, never a 5xx that
//! pages an operator. Streams (SSE, WebSocket) are not bounded by the deadline: their handlers
//! answer at once and stream afterwards.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::Request,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use http_body::{Frame, SizeHint};

use crate::{
    error::ApiError,
    extract::BodyTimedOut,
    ratelimit::{self, Decision},
    shutdown::Shutdown,
    state::AppState,
};

/// What a request's layers and its handler share while it is answered, in one allocation, found
/// in every request's extensions: the time it may spend waiting by design on top of
/// `--db-timeout` (granted by the feature that waits: the long poll its `wait`, MCP its maximum
/// wait), the rate-limit decision its response reports, and whether its body is arriving.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<InFlightState>);

#[derive(Debug, Default)]
struct InFlightState {
    granted_millis: AtomicU64,
    decision: Mutex<Option<Decision>>,
    arriving: AtomicBool,
}

impl InFlight {
    /// Grants up to `wait` more (the largest grant counts).
    pub fn allow(&self, wait: Duration) {
        let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.0.granted_millis.fetch_max(millis, Ordering::Relaxed);
    }

    fn granted(&self) -> Duration {
        Duration::from_millis(self.0.granted_millis.load(Ordering::Relaxed))
    }

    /// Records what the rate limit decided, for the response's `RateLimit-*` headers.
    pub fn decided(&self, decision: Decision) {
        *self
            .0
            .decision
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(decision);
    }

    fn decision(&self) -> Option<Decision> {
        self.0
            .decision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn arriving(&self, arriving: bool) {
        self.0.arriving.store(arriving, Ordering::Relaxed);
    }

    fn is_arriving(&self) -> bool {
        self.0.arriving.load(Ordering::Relaxed)
    }
}

/// The limits above, for the one layer every request passes (`startup::EveryRequest`); `next`
/// answers the request once it is within them.
pub async fn limits<F>(
    state: &AppState,
    request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response
where
    F: Future<Output = Result<Response, Infallible>>,
{
    let config = &state.config;
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_bytes > config.http.max_uri_bytes {
        return rejected(
            StatusCode::URI_TOO_LONG,
            format!(
                "the URI is {uri_bytes} bytes; at most {} are accepted",
                config.http.max_uri_bytes
            ),
        );
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > config.http.max_header_bytes {
        return rejected(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the headers are {header_bytes} bytes; at most {} are accepted",
                config.http.max_header_bytes
            ),
        );
    }

    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|bytes| *bytes > config.max_body_bytes as u64) {
        return ApiError::PayloadTooLarge(format!(
            "the body is {declared} bytes; at most {} are accepted",
            config.max_body_bytes
        ))
        .into_response();
    }

    // The body must arrive within its timeout, and stops being waited for at shutdown. It is
    // read where the handler extracts it, after the key check: an unauthenticated client cannot
    // make the server read a body at all.
    let (mut parts, body) = request.into_parts();
    let in_flight = InFlight::default();
    parts.extensions.insert(in_flight.clone());
    let body = if body.size_hint().exact() == Some(0) {
        body
    } else {
        Body::new(DeadlineBody {
            inner: body,
            deadline: tokio::time::Instant::now() + config.http.body_timeout,
            shutdown: state.shutdown.clone(),
            waiting: None,
            in_flight: in_flight.clone(),
            ended: false,
        })
    };
    let request = Request::from_parts(parts, body);

    let started = tokio::time::Instant::now();
    let mut deadline = started + config.db_timeout;
    let work = async { next(request).await.unwrap_or_else(|never| match never {}) };
    tokio::pin!(work);
    let mut response = loop {
        match tokio::time::timeout_at(deadline, &mut work).await {
            Ok(response) => break response,
            // The handler granted itself a wait since the deadline was set.
            Err(_) if started + config.db_timeout + in_flight.granted() > deadline => {
                deadline = started + config.db_timeout + in_flight.granted();
            }
            // Still the client's time: the body's own deadline ends it with a 408.
            Err(_) if in_flight.is_arriving() && started.elapsed() < config.http.body_timeout => {
                deadline = tokio::time::Instant::now() + config.db_timeout + in_flight.granted();
            }
            Err(_) => {
                break ApiError::DeadlinePassed(config.db_timeout + in_flight.granted())
                    .into_response();
            }
        }
    };
    if let Some(decision) = in_flight.decision() {
        ratelimit::report(decision, &mut response);
    }
    response
}

fn rejected(status: StatusCode, message: String) -> Response {
    ApiError::RequestRejected { status, message }.into_response()
}

/// A request body with a deadline for all of it, that also ends at shutdown.
struct DeadlineBody {
    inner: Body,
    deadline: tokio::time::Instant,
    shutdown: Shutdown,
    /// The deadline's timer and the shutdown's watch, made the first time the body is not there
    /// yet: most bodies arrive with their headers and never need them.
    waiting: Option<Waiting>,
    /// Told whether the handler is reading the body and the body has not ended.
    in_flight: InFlight,
    ended: bool,
}

struct Waiting {
    deadline: Pin<Box<tokio::time::Sleep>>,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl DeadlineBody {
    /// All of it arrived, or it will never: not arriving any more.
    fn end(&mut self) {
        self.ended = true;
        self.in_flight.arriving(false);
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended || self.inner.is_end_stream() {
            self.end();
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if !matches!(frame, Some(Ok(_))) || self.inner.is_end_stream() {
                self.end();
            } else {
                self.in_flight.arriving(true);
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let this = &mut *self;
        let (deadline, shutdown) = (this.deadline, &this.shutdown);
        let waiting = this.waiting.get_or_insert_with(|| {
            let mut stopping = shutdown.subscribe();
            Waiting {
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                stopping: Box::pin(async move {
                    let _ = stopping.wait_for(|stopping| *stopping).await;
                }),
            }
        });
        if waiting.deadline.as_mut().poll(cx).is_ready()
            || waiting.stopping.as_mut().poll(cx).is_ready()
        {
            self.end();
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        self.in_flight.arriving(true);
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's address: the TCP peer, unless that peer is a trusted proxy; then the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy (read from the right, since
/// proxies append and a client can write anything on the left).
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[crate::config::Cidr],
) -> std::net::IpAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
            // Unreadable: stop at the last address known to be sound.
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

#[cfg(test)]
mod client_ip_tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<crate::config::Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.7".parse().unwrap(),
        );
        let proxy = "10.0.0.1".parse().unwrap();
        let stranger = "8.8.8.8".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "1.2.3.4".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        assert_eq!(client_ip(proxy, &headers, &[]), proxy);
        assert_eq!(
            client_ip(proxy, &axum::http::HeaderMap::new(), &trusted),
            proxy
        );
    }
}
