//! One task per WebSocket: authenticate before the upgrade, then `select!` over inbound frames,
//! the outbound queue, the close signal, heartbeats, token expiry and server shutdown.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{
        ConnectInfo, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use tokio::{sync::mpsc, time::Instant};

use super::{
    engine::{
        Registration,
        hub::fanout::{CloseSignal, ConnId, Member, Outbound},
    },
    limits::FrameBucket,
    protocol::{ErrorCode, ServerFrame, close},
    session::{Session, authenticate},
};
use crate::{
    auth::{Scope, tokens},
    config::RealtimeConfig,
    delivery::Follow,
    error::{ApiError, AuthFailure, Envelope},
    extract::QueryParams,
    state::AppState,
};

/// How long before a token's `exp` its connection is closed with 4002.
const EXPIRY_MARGIN: Duration = Duration::from_millis(250);
/// Bytes a client frame may carry around its `data` (type, channel, requestId, options).
pub(super) const ENVELOPE_ALLOWANCE: usize = 4096;
/// Outbound frames written per socket flush.
const WRITE_BATCH: usize = 64;

/// `GET /v1`: the WebSocket endpoint. Limits and credentials are checked before anything else;
/// for an upgrade request a refusal completes the upgrade and closes at once with a code a
/// browser can read (4001 invalid credential, 4002 token expired, 4003 not authorized, 4010 too
/// many connects, 1013 try again later), since a browser sees no HTTP status. A plain GET gets
/// 429 or 400 as before.
#[utoipa::path(get, path = "/v1", operation_id = "connectWebSocket", tag = "realtime",
    params(
        ("token" = Option<String>, Query, description = "A token from `POST /v1/tokens` or signed by a backend (HS256, `kid` = key id)"),
        ("key" = Option<String>, Query, description = "A publishable key (`pk_live_…`), checked against `Origin`"),
        ("Connection" = String, Header, pattern = "^([ -~]*, *)?[Uu][Pp][Gg][Rr][Aa][Dd][Ee]( *,[ -~]*)?$", description = "Holds the token `Upgrade` (any case): this endpoint only upgrades to a WebSocket (RFC 6455)"),
        ("Upgrade" = String, Header, pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$", description = "`websocket` (any case)"),
        ("Sec-WebSocket-Version" = String, Header, pattern = "^13$", description = "`13`"),
        ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$", description = "16 random bytes, base64-encoded (RFC 6455 §4.1)"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol of SPEC §5; a refused credential or connect limit closes at once with 4001, 4002, 4003, 4010 or 1013"),
        (status = 400, description = "Not a WebSocket upgrade request", body = Envelope),
        (status = 429, description = "A plain GET over the connect limit (`rate_limited`)", body = Envelope),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryParams,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let client =
        crate::limits::client_ip(remote.ip(), &headers, &state.config.http.trusted_proxies);
    let admitted = state.realtime.connects.check(client);
    let Ok(ws) = ws else {
        return match admitted {
            Err(retry_after_secs) => ApiError::RateLimited { retry_after_secs }.into_response(),
            Ok(()) => ApiError::invalid("GET /v1 expects a WebSocket upgrade").into_response(),
        };
    };
    // A browser cannot read the status of a refused upgrade (it sees 1006), so refusals are
    // told after the upgrade, as close codes a client can act on.
    if admitted.is_err() {
        return refuse(
            ws,
            close::CONNECT_LIMIT,
            "too many connections from this address",
        );
    }
    // A token of a key in use here is no guess; anything else counts toward the source's
    // failed authentications (see `auth::failures`).
    let guess = !query
        .get("token")
        .and_then(|token| tokens::parse(token).ok())
        .is_some_and(|token| state.keys.is_known(&token.kid));
    if guess && state.auth_failures.attempt(client).is_err() {
        return refuse(
            ws,
            close::CONNECT_LIMIT,
            "too many failed authentications from this address",
        );
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let authenticated = authenticate(&state, query.get("token"), query.get("key"), origin).await;
    let failed = matches!(
        &authenticated,
        Err(ApiError::Unauthorized(failure)) if *failure != AuthFailure::WsMissing
    );
    if guess && !failed {
        state.auth_failures.forgive(client);
    }
    let session = match authenticated {
        Ok(session) => session,
        Err(error) => {
            let (code, reason) = refusal(&error);
            return refuse(ws, code, reason);
        }
    };
    let app = match state.apps.app(&state.db, session.app_id).await {
        Ok(app) => app,
        Err(error) => {
            let (code, reason) = refusal(&ApiError::from(error));
            return refuse(ws, code, reason);
        }
    };
    let max = app
        .max_connections
        .map(|max| usize::try_from(max).unwrap_or(0));
    let Some(slot) = state.realtime.app_connections.admit(app.id, max) else {
        return refuse(
            ws,
            close::CONNECT_LIMIT,
            "this app has reached its max_connections quota",
        );
    };
    let limits = &state.config.realtime;
    // `maxMessageSize` bounds `data`, as clients check it; the frame around it may add this.
    let largest_frame = limits.max_frame_bytes + ENVELOPE_ALLOWANCE;
    ws.max_message_size(largest_frame)
        .max_frame_size(largest_frame)
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| async move {
            // The app's connection is counted until the socket's task ends.
            let _slot = slot;
            run(socket, state, session).await;
        })
}

pub(super) struct Connection {
    pub(super) state: AppState,
    pub(super) session: Session,
    pub(super) conn: ConnId,
    /// Read and written by this one task: no lock between a reading and a writing half.
    pub(super) socket: WebSocket,
    pub(super) signal: Arc<CloseSignal>,
    /// The persistent channels this connection is subscribed to.
    pub(super) persistent: HashMap<i64, Persistent>,
    /// Which replaying channel goes next.
    pub(super) replay_turn: usize,
}

/// A subscription to a persistent channel: followed through this instance while it lasts.
pub(super) struct Persistent {
    pub(super) _follow: Follow,
    /// Resumed with `since` and still replaying history: live copies wait their turn.
    pub(super) replay: Option<Replay>,
    /// Resumed with `since`: the last message id already replayed, whose live copies are skipped.
    pub(super) replayed: Option<i64>,
    /// Subscribed with `mentions`: only stored messages that mention this name are sent.
    pub(super) mentions: Option<String>,
}

/// Where a channel's replay stands (see `replay`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Replay {
    /// The last message id replayed.
    pub(super) after: i64,
    /// The newest live stored message seen (and not written) while replaying.
    pub(super) live_max: i64,
    /// Pages replayed so far.
    pub(super) pages: u32,
}

impl Replay {
    pub(super) fn starting_after(after: i64) -> Self {
        Self {
            after,
            live_max: after,
            pages: 0,
        }
    }
}

/// What ends a connection's loop.
pub(super) enum End {
    /// The client went away or the socket failed: nothing more to send.
    Gone,
    /// The client sent a Close frame: answer it.
    ClientClosed,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// Asked to close with this code while a write was blocked on a client that stopped reading.
    Stuck(u16),
}

/// How long the closing frame may take to reach a client before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

async fn run(socket: WebSocket, state: AppState, session: Session) {
    // Counted until this task ends, closing handshake included, so shutdown waits for it.
    let _task = state.realtime.engine.task();
    let limits = state.config.realtime.clone();
    let (tx, rx) = mpsc::channel(limits.outbound_queue);
    let signal = Arc::new(CloseSignal::new(limits.outbound_bytes));
    // Unregistered on every way out of this task, a panic included: a connection that is gone
    // must not stay subscribed or present.
    let registration = register(&state, &session, tx, signal.clone()).await;
    let mut connection = Connection {
        state,
        session,
        conn: registration.conn(),
        socket,
        signal,
        persistent: HashMap::new(),
        replay_turn: 0,
    };
    let end = match connection.welcome(limits.max_frame_bytes).await {
        Some(end) => end,
        None => connection.serve(rx, &limits).await,
    };
    drop(registration);
    connection.close(end).await;
}

/// Registers the connection with the engine, which delivers to `tx` from then on.
async fn register(
    state: &AppState,
    session: &Session,
    tx: mpsc::Sender<Outbound>,
    signal: Arc<CloseSignal>,
) -> Registration {
    state
        .realtime
        .engine
        .connect(Member {
            peer_id: session.peer_id.clone(),
            address: session.address(),
            key_id: session.key_id.clone(),
            presence: session.permissions.contains(Scope::Presence),
            peer_metadata: session.peer_metadata.clone(),
            tx,
            signal,
        })
        .await
}

impl Connection {
    /// Sends `welcome`; `Some` when the client is already gone.
    async fn welcome(&mut self, max_message_size: usize) -> Option<End> {
        let welcome = ServerFrame::Welcome {
            peer_id: &self.session.peer_id,
            expires_at: self.session.expires_at,
            server_time: Utc::now().timestamp(),
            max_message_size,
            metadata: self.session.metadata.as_deref(),
        }
        .encode();
        self.socket
            .send(Message::Text(welcome))
            .await
            .err()
            .map(|_| End::Gone)
    }

    /// The connection's life: inbound frames, the outbound queue, the close signal, heartbeats,
    /// the idle timeout, token expiry and server shutdown, until one of them ends it.
    async fn serve(&mut self, mut rx: mpsc::Receiver<Outbound>, limits: &RealtimeConfig) -> End {
        let mut bucket = FrameBucket::new(limits.frame_rate, limits.frame_burst);
        // Grows on first use: an idle connection should not hold a batch buffer.
        let mut batch = Vec::new();
        let mut ping =
            tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
        let idle = tokio::time::sleep(limits.idle_timeout);
        tokio::pin!(idle);
        let expiry = tokio::time::sleep(self.time_to_expiry());
        tokio::pin!(expiry);

        // Futures that live as long as the loop, rather than being made anew on every wake-up.
        let signal = self.signal.clone();
        let closed = signal.closed();
        tokio::pin!(closed);
        let mut shutdown = self.state.shutdown.subscribe();
        let going_away = stopping(&mut shutdown);
        tokio::pin!(going_away);

        loop {
            // Unbiased on purpose: a queue that never quite empties must not starve inbound
            // frames, heartbeats or the expiry close.
            let end = tokio::select! {
                code = &mut closed => Some(End::Close(code, close_reason(code))),
                () = &mut going_away => {
                    let frame = ServerFrame::GoingAway { retry_after_ms: 1000 }.encode();
                    let _ = self.socket.send(Message::Text(frame)).await;
                    Some(End::Close(close::GOING_AWAY, "server shutting down"))
                }
                received = rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if received == 0 { Some(End::Gone) } else { self.write_batch(&mut batch).await }
                }
                inbound = self.socket.next() => {
                    idle.as_mut().reset(Instant::now() + limits.idle_timeout);
                    self.inbound(inbound, &mut bucket).await
                }
                () = std::future::ready(()), if self.replaying() => self.replay_step().await,
                _ = ping.tick() => self.send(Message::Ping(Default::default())).await,
                () = &mut idle => Some(End::Gone),
                () = &mut expiry => Some(End::Close(close::TOKEN_EXPIRED, "token expired")),
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// One inbound WebSocket message: text frames are handled (within the frame rate), binary
    /// ones refused; a Close or a read error ends the connection.
    async fn inbound(
        &mut self,
        inbound: Option<Result<Message, axum::Error>>,
        bucket: &mut FrameBucket,
    ) -> Option<End> {
        if matches!(inbound, Some(Ok(Message::Text(_) | Message::Binary(_)))) {
            self.state
                .metrics
                .frames_in
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !bucket.take() {
                return Some(End::Close(close::RATE_LIMITED, "over the message rate"));
            }
        }
        match inbound {
            None => Some(End::Gone),
            Some(Ok(Message::Close(_))) => Some(End::ClientClosed),
            Some(Err(error)) => Some(read_error(error)),
            Some(Ok(Message::Text(text))) => self.handle(&text).await,
            Some(Ok(Message::Binary(_))) => {
                self.error(
                    ErrorCode::MalformedMessage,
                    "frames must be JSON text",
                    None,
                )
                .await
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
        }
    }

    /// The closing handshake, bounded by [`CLOSE_TIMEOUT`]: the close frame `end` calls for,
    /// then reading until the client's own Close.
    async fn close(mut self, end: End) {
        let closing = match end {
            End::Close(code, reason) => Some((code, reason)),
            End::Stuck(code) => Some((code, close_reason(code))),
            End::Gone | End::ClientClosed => None,
        };
        let socket = &mut self.socket;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async move {
            match (closing, end) {
                (Some((code, reason)), _) => {
                    let frame = CloseFrame {
                        code,
                        reason: Utf8Bytes::from_static(reason),
                    };
                    if socket.send(Message::Close(Some(frame))).await.is_ok() {
                        // Read until the client's Close: closing a socket with unread input
                        // resets it, and a reset can destroy the replies and the close frame in
                        // flight.
                        while let Some(Ok(message)) = socket.next().await {
                            if matches!(message, Message::Close(_)) {
                                break;
                            }
                        }
                    }
                }
                // The protocol queued the answer to the client's Close; send it.
                (None, End::ClientClosed) => {
                    let _ = socket.flush().await;
                }
                _ => {}
            }
        })
        .await;
    }
}

/// The close code and reason that tell a WebSocket client why its credential was refused.
fn refusal(error: &ApiError) -> (u16, &'static str) {
    match error {
        ApiError::TokenExpired => (close::TOKEN_EXPIRED, "token expired"),
        ApiError::Unauthorized(failure) => (close::INVALID_TOKEN, failure.text()),
        ApiError::InvalidRequest { .. } => (close::INVALID_TOKEN, "invalid credential"),
        ApiError::InsufficientScope { .. }
        | ApiError::ActionNotPermitted(_)
        | ApiError::ChannelNotAuthorized => (close::NOT_AUTHORIZED, "not authorized"),
        _ => (close::TRY_AGAIN_LATER, "try again later"),
    }
}

/// Completes the upgrade only to close it at once with `code`.
fn refuse(ws: WebSocketUpgrade, code: u16, reason: &'static str) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async move {
            if socket.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(message)) = socket.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    })
}

/// Resolves once shutdown has begun, immediately if it already had when the connection opened.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::KICKED => "kicked",
        close::INVALID_TOKEN => "key revoked or expired",
        close::POLICY => "slow consumer",
        _ => "closed",
    }
}

/// Oversized frames close with 1009, invalid UTF-8 with 1007, other protocol violations with
/// 1002; any other read failure means the client is gone.
fn read_error(error: axum::Error) -> End {
    use tungstenite::error::ProtocolError;
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(close::TOO_BIG, "frame too big"),
        Some(tungstenite::Error::Utf8(_)) => End::Close(close::INVALID_DATA, "invalid UTF-8"),
        Some(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
            End::Gone
        }
        Some(tungstenite::Error::Protocol(_)) => End::Close(close::PROTOCOL, "protocol error"),
        _ => End::Gone,
    }
}

impl Connection {
    fn time_to_expiry(&self) -> Duration {
        let Some(exp) = self.session.expires_at else {
            return Duration::from_secs(100 * 365 * 86_400);
        };
        let remaining_ms = exp.saturating_mul(1000) - Utc::now().timestamp_millis();
        Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0))
            .saturating_sub(EXPIRY_MARGIN)
    }

    /// A client that takes no bytes for this long is gone: the idle timeout, for writes.
    fn write_timeout(&self) -> Duration {
        self.state.config.realtime.idle_timeout
    }

    /// Every write races the close signal and the write timeout: a client that stops reading
    /// blocks its socket, and must not keep this task (and its buffers) alive.
    pub(super) async fn send(&mut self, message: Message) -> Option<End> {
        let write_timeout = self.write_timeout();
        tokio::select! {
            sent = self.socket.send(message) => sent.err().map(|_| End::Gone),
            code = self.signal.closed() => Some(End::Stuck(code)),
            () = tokio::time::sleep(write_timeout) => Some(End::Gone),
        }
    }

    /// Writes queued frames with one flush for the whole batch, skipping stored messages that a
    /// resumed subscription already replayed or is still replaying, and those a subscription
    /// filtered by `mentions` does not want.
    async fn write_batch(&mut self, batch: &mut Vec<Outbound>) -> Option<End> {
        let bytes: usize = batch.iter().map(|item| item.frame.len()).sum();
        let write_timeout = self.write_timeout();
        let (sink, persistent) = (&mut self.socket, &mut self.persistent);
        let write = async move {
            for item in batch.drain(..) {
                let seen = item.stored.as_deref().is_some_and(|s| {
                    let Some(entry) = persistent.get_mut(&s.channel_id) else {
                        return false;
                    };
                    let unwanted = entry
                        .mentions
                        .as_ref()
                        .is_some_and(|name| !s.mentions.contains(name));
                    if let Some(replay) = entry.replay.as_mut() {
                        // The replay will reach it: remember how far it must go.
                        replay.live_max = replay.live_max.max(s.message_id);
                        return true;
                    }
                    unwanted || entry.replayed.is_some_and(|upto| s.message_id <= upto)
                });
                if !seen {
                    sink.feed(Message::Text(item.frame)).await?;
                }
            }
            sink.flush().await
        };
        let end = tokio::select! {
            written = write => written.err().map(|_| End::Gone),
            code = self.signal.closed() => Some(End::Stuck(code)),
            () = tokio::time::sleep(write_timeout) => Some(End::Gone),
        };
        // Counted until written: a client that stops reading keeps them counted against it.
        if end.is_none() {
            self.signal.release(bytes);
        }
        end
    }

    pub(super) async fn error(
        &mut self,
        code: ErrorCode,
        message: &str,
        request_id: Option<&str>,
    ) -> Option<End> {
        let frame = ServerFrame::Error {
            code,
            message,
            request_id,
        }
        .encode();
        self.send(Message::Text(frame)).await
    }

    /// Acks a frame that carried a `requestId`; frames without one get no ack.
    pub(super) async fn ack(
        &mut self,
        request_id: Option<&str>,
        recovered: Option<bool>,
    ) -> Option<End> {
        match request_id {
            Some(request_id) => {
                let frame = ServerFrame::Ack {
                    request_id,
                    recovered,
                }
                .encode();
                self.send(Message::Text(frame)).await
            }
            None => None,
        }
    }

    /// Sends frames that follow an ack (a roster, replayed history) with one flush.
    pub(super) async fn send_all(&mut self, frames: Vec<Utf8Bytes>) -> Option<End> {
        if frames.is_empty() {
            return None;
        }
        let write_timeout = self.write_timeout();
        let sink = &mut self.socket;
        let write = async move {
            for frame in frames {
                sink.feed(Message::Text(frame)).await?;
            }
            sink.flush().await
        };
        tokio::select! {
            written = write => written.err().map(|_| End::Gone),
            code = self.signal.closed() => Some(End::Stuck(code)),
            () = tokio::time::sleep(write_timeout) => Some(End::Gone),
        }
    }
}
