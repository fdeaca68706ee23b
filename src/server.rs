//! HTTP connections: the accept loop, per-connection timeouts, and shutdown that no client can
//! hold hostage.
//!
//! - Headers must arrive within `--http-header-timeout`, counted from when the connection starts
//!   waiting for a request, so the same timeout ends idle keep-alive connections and slowloris
//!   clients alike (request bodies have their own, in [`crate::limits`]). One timer per
//!   connection watches it, and looks again only when it fires: a request costs no timer of its
//!   own (hyper's `header_read_timeout` set and cleared one per request).
//! - `accept` failures (out of file descriptors, above all) are counted and retried after a short
//!   pause instead of ending the server; the process raises its open-file limit at start.
//! - On shutdown the listener closes; connections with no request in flight are closed after at
//!   most half a second (a half-sent request is not one); those serving a request finish it, and
//!   a request body still arriving ends at once (see [`crate::limits`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::ConnectInfo,
    response::Response,
};
use http_body::{Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch, task::JoinSet, time::Instant};
use tower::ServiceExt;

use crate::{gated::Gated, repoll::Repolled};

/// What the server serves: the router with its layers ([`crate::startup::router`]).
pub trait App:
    tower::Service<
        axum::extract::Request,
        Response = Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            axum::extract::Request,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Why a connection's watchdog ended it.
enum Watched {
    /// The server is shutting down.
    Stopping,
    /// No request headers came within the timeout.
    NoHeaders,
}

/// Counters for operators (`/metrics`).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections closed because their request headers did not arrive in time (idle keep-alive
    /// connections included).
    pub timed_out: AtomicU64,
    /// `accept` calls that failed (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
    /// Requests being answered right now, their response bodies included.
    pub in_flight: AtomicU64,
}

/// At shutdown, how long a connection with no request in flight may take to flush and close.
const IDLE_GRACE: Duration = Duration::from_millis(500);

/// A pause after a failed `accept`, so that running out of descriptors does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Raises the soft open-file limit to the hard one: every connection holds a descriptor, and the
/// common default of 1,024 is a denial of service waiting to happen. Returns the new limit.
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "could not raise the open-file limit");
            None
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true, then closes idle connections and lets
/// those with a request in flight finish it.
pub async fn run<S: App>(
    listener: TcpListener,
    app: S,
    header_timeout: Duration,
    stats: Arc<ServerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.keep_alive(true);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        // Finished connections are reaped as new ones come, so the set stays the size of what
        // is open.
        while connections.try_join_next().is_some() {}
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "accept failed; retrying shortly");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Without TCP_NODELAY, a small WebSocket frame written while an earlier one is still
        // unacknowledged waits for the client's delayed ACK: tens of milliseconds of latency.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        connections.spawn(connection(
            http.clone(),
            tcp,
            remote,
            app.clone(),
            header_timeout,
            stats.clone(),
            stop.clone(),
        ));
    }
    // New clients are refused from here on, rather than left waiting in the backlog.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// A connection's requests being answered right now and, when there are none, since when it
/// has waited for the next one.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `started` to the end of the last request.
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    /// When its wait for request headers runs out: `None` while a request is being answered.
    fn headers_due(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(self.started + idle_since + timeout)
    }
}

/// A response body that keeps its request counted in flight until it is done (or dropped), and
/// otherwise is its body: its size too, from which hyper writes `Content-Length`.
struct Guarded {
    body: Body,
    _answering: Answering,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Counts one request in flight, on its connection and in all, until dropped.
struct Answering {
    connection: Arc<Activity>,
    stats: Arc<ServerStats>,
}

impl Answering {
    fn new(connection: Arc<Activity>, stats: Arc<ServerStats>) -> Self {
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { connection, stats }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let activity = &self.connection;
        let ended = u64::try_from(activity.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since.store(ended, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection<S: App>(
    http: http1::Builder,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    app: S,
    header_timeout: Duration,
    stats: Arc<ServerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let counter = activity.clone();
    let requests = stats.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        let app = app.clone();
        // In flight until the response body is done (or dropped): an event stream counts.
        let guard = Answering::new(counter.clone(), requests.clone());
        async move {
            let response = app.oneshot(request.map(Body::new)).await?;
            Ok::<_, Infallible>(response.map(|body| Guarded {
                body,
                _answering: guard,
            }))
        }
    });
    // Re-polled when it wakes itself, as handing a request body to its handler does (see
    // `repoll`), rather than yielded to the scheduler.
    let served = Repolled::new(
        http.serve_connection(TokioIo::new(tcp), service)
            .with_upgrades(),
    );
    tokio::pin!(served);
    // The server's stop and the wait for headers, polled only when one of them wakes the task
    // (see `gated`), not at each of the connection's several wakes per request.
    let watchdog = Gated::new(async {
        // Looks at the connection when its wait for headers would run out, and again from there.
        let watch = tokio::time::sleep(header_timeout);
        tokio::pin!(watch);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return Watched::Stopping,
                () = watch.as_mut() => match activity.headers_due(header_timeout) {
                    Some(due) if due <= Instant::now() => return Watched::NoHeaders,
                    Some(due) => watch.as_mut().reset(due),
                    None => watch.as_mut().reset(Instant::now() + header_timeout),
                },
            }
        }
    });
    tokio::pin!(watchdog);
    let finished = tokio::select! {
        // Headers already received are dispatched before the timeout is looked at.
        biased;
        result = served.as_mut() => Some(result),
        watched = watchdog => match watched {
            Watched::Stopping => None,
            Watched::NoHeaders => {
                stats.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("connection closed: no request headers within the timeout");
                return;
            }
        },
    };
    let result = match finished {
        Some(result) => result,
        None => {
            let idle = activity.in_flight.load(Ordering::Acquire) == 0;
            served.as_mut().inner().graceful_shutdown();
            if idle {
                // Nothing to finish but the last bytes of a response already sent (hyper closes
                // idle keep-alive connections at once); one still sending its request's headers
                // is not waited for.
                let _ = tokio::time::timeout(IDLE_GRACE, served).await;
                return;
            }
            served.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}
