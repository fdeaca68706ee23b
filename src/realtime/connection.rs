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
use futures_util::{SinkExt, StreamExt, stream::SplitSink};
use tokio::{sync::mpsc, time::Instant};

use super::{
    hub::{CloseSignal, ConnId, Hub, Member, Outbound, SubscribeError},
    limits::FrameBucket,
    names::{ChannelKind, NameError, channel_kind, is_peer_id},
    protocol::{ClientFrame, ErrorCode, PeerEntry, ServerFrame, close, parse_client_frame},
    session::{Session, authenticate},
    stored_frame,
};
use crate::{
    auth::Scope,
    channels::{ChannelState, channel_state},
    error::{ApiError, Envelope},
    extract::QueryParams,
    messages::{Page, model::Message as MessageRow, page},
    startup::AppState,
};

/// How long before a token's `exp` its connection is closed with 4002.
const EXPIRY_MARGIN: Duration = Duration::from_millis(250);
/// Outbound frames written per socket flush.
const WRITE_BATCH: usize = 64;

/// `GET /v1`: the WebSocket endpoint. Limits and credentials are checked before the upgrade, so
/// failures are plain HTTP answers (429, 401).
#[utoipa::path(get, path = "/v1", tag = "realtime",
    params(
        ("token" = Option<String>, Query, description = "A token from `POST /v1/tokens` or signed by a backend (HS256, `kid` = key id)"),
        ("key" = Option<String>, Query, description = "A publishable key (`pk_live_…`), checked against `Origin`"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol of SPEC §5"),
        (status = 400, description = "Not a WebSocket upgrade request", body = Envelope),
        (status = 401, description = "Missing or invalid credential", body = Envelope),
        (status = 429, description = "Too many connects from this address (`rate_limited`)", body = Envelope),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryParams,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(retry_after_secs) = state.realtime.connects.check(remote.ip()) {
        return ApiError::RateLimited { retry_after_secs }.into_response();
    }
    let Ok(ws) = ws else {
        return ApiError::invalid("GET /v1 expects a WebSocket upgrade").into_response();
    };
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let session = match authenticate(&state, query.get("token"), query.get("key"), origin).await {
        Ok(session) => session,
        Err(error) => return error.into_response(),
    };
    let limits = &state.config.realtime;
    ws.max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| run(socket, state, session))
}

struct Connection {
    state: AppState,
    hub: Hub,
    session: Session,
    conn: ConnId,
    sink: SplitSink<WebSocket, Message>,
    signal: Arc<CloseSignal>,
    /// Per persistent channel resumed with `since`: the last message id already replayed.
    replayed: HashMap<i64, i64>,
}

/// What ends a connection's loop.
enum End {
    /// The client went away or the socket failed: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// Asked to close with this code while a write was blocked on a client that stopped reading.
    Stuck(u16),
}

/// How long the closing frame may take to reach a client before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

async fn run(socket: WebSocket, state: AppState, session: Session) {
    let limits = state.config.realtime.clone();
    let (tx, mut rx) = mpsc::channel(limits.outbound_queue);
    let signal = Arc::new(CloseSignal::default());
    let hub = state.realtime.hub.clone();
    let conn = hub.register(Member {
        peer_id: session.peer_id.clone(),
        key_id: session.key_id.clone(),
        presence: session.permissions.contains(Scope::Presence),
        peer_metadata: session.peer_metadata.clone(),
        tx,
        signal: signal.clone(),
    });
    let mut shutdown = state.realtime.shutdown.subscribe();
    let (sink, mut stream) = socket.split();
    let mut connection = Connection {
        state,
        hub: hub.clone(),
        session,
        conn,
        sink,
        signal: signal.clone(),
        replayed: HashMap::new(),
    };

    let welcome = ServerFrame::Welcome {
        peer_id: &connection.session.peer_id,
        expires_at: connection.session.expires_at,
        server_time: Utc::now().timestamp(),
        max_message_size: limits.max_frame_bytes,
        metadata: connection.session.metadata.as_deref(),
    }
    .encode();
    let mut end = match connection.sink.send(Message::Text(welcome)).await {
        Ok(()) => None,
        Err(_) => Some(End::Gone),
    };

    let mut bucket = FrameBucket::new(limits.frame_rate, limits.frame_burst);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    let expiry = tokio::time::sleep(connection.time_to_expiry());
    tokio::pin!(expiry);

    while end.is_none() {
        end = tokio::select! {
            code = signal.closed() => Some(End::Close(code, close_reason(code))),
            () = stopping(&mut shutdown) => {
                let frame = ServerFrame::GoingAway { retry_after_ms: 1000 }.encode();
                let _ = connection.sink.send(Message::Text(frame)).await;
                Some(End::Close(close::GOING_AWAY, "server shutting down"))
            }
            received = rx.recv_many(&mut batch, WRITE_BATCH) => {
                if received == 0 { Some(End::Gone) } else { connection.write_batch(&mut batch).await }
            }
            inbound = stream.next() => {
                idle.as_mut().reset(Instant::now() + limits.idle_timeout);
                if matches!(inbound, Some(Ok(Message::Text(_) | Message::Binary(_)))) {
                    connection.state.metrics.frames_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                match inbound {
                    None | Some(Ok(Message::Close(_))) => Some(End::Gone),
                    Some(Err(error)) => Some(read_error(error)),
                    Some(Ok(Message::Text(text))) => {
                        if bucket.take() { connection.handle(&text).await } else {
                            Some(End::Close(close::RATE_LIMITED, "over the message rate"))
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if bucket.take() {
                            connection.error(ErrorCode::MalformedMessage, "frames must be JSON text", None).await
                        } else {
                            Some(End::Close(close::RATE_LIMITED, "over the message rate"))
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                }
            }
            _ = ping.tick() => connection.send(Message::Ping(Default::default())).await,
            () = &mut idle => Some(End::Gone),
            () = &mut expiry => Some(End::Close(close::TOKEN_EXPIRED, "token expired")),
        };
    }

    hub.unregister(conn);
    let closing = match end {
        Some(End::Close(code, reason)) => Some((code, reason)),
        Some(End::Stuck(code)) => Some((code, close_reason(code))),
        _ => None,
    };
    if let Some((code, reason)) = closing {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let goodbye = connection.sink.send(Message::Close(Some(frame)));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    }
}

/// Resolves once shutdown has begun, immediately if it already had when the connection opened.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::KICKED => "kicked",
        close::INVALID_TOKEN => "credential revoked",
        close::POLICY => "slow consumer",
        _ => "closed",
    }
}

/// Oversized frames close with 1009; any other read failure means the client is gone.
fn read_error(error: axum::Error) -> End {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(close::TOO_BIG, "frame too big"),
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

    /// Every write races the close signal: a client that stops reading blocks its socket, and
    /// must not keep this task (and its buffers) alive after the hub gave up on it.
    async fn send(&mut self, message: Message) -> Option<End> {
        tokio::select! {
            sent = self.sink.send(message) => sent.err().map(|_| End::Gone),
            code = self.signal.closed() => Some(End::Stuck(code)),
        }
    }

    /// Writes queued frames with one flush for the whole batch, skipping stored messages that a
    /// resumed subscription already replayed.
    async fn write_batch(&mut self, batch: &mut Vec<Outbound>) -> Option<End> {
        let (sink, replayed) = (&mut self.sink, &self.replayed);
        let write = async move {
            for item in batch.drain(..) {
                let seen = item.stored.is_some_and(|s| {
                    replayed
                        .get(&s.channel_id)
                        .is_some_and(|&upto| s.message_id <= upto)
                });
                if !seen {
                    sink.feed(Message::Text(item.frame)).await?;
                }
            }
            sink.flush().await
        };
        tokio::select! {
            written = write => written.err().map(|_| End::Gone),
            code = self.signal.closed() => Some(End::Stuck(code)),
        }
    }

    async fn error(
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
    async fn ack(&mut self, request_id: Option<&str>, recovered: Option<bool>) -> Option<End> {
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
    async fn send_all(&mut self, frames: Vec<Utf8Bytes>) -> Option<End> {
        if frames.is_empty() {
            return None;
        }
        let sink = &mut self.sink;
        let write = async move {
            for frame in frames {
                sink.feed(Message::Text(frame)).await?;
            }
            sink.flush().await
        };
        tokio::select! {
            written = write => written.err().map(|_| End::Gone),
            code = self.signal.closed() => Some(End::Stuck(code)),
        }
    }

    /// Handles one client frame. Every failure is an `error` frame; the connection stays open.
    async fn handle(&mut self, text: &str) -> Option<End> {
        let frame = match parse_client_frame(text) {
            Ok(frame) => frame,
            Err(malformed) => {
                let id = malformed.request_id;
                return self
                    .error(
                        ErrorCode::MalformedMessage,
                        "frames must be JSON objects with a string `type`",
                        id.as_deref(),
                    )
                    .await;
            }
        };
        let request_id = frame.request_id.clone();
        let outcome = match frame.kind.as_deref() {
            Some("subscribe") => self.subscribe(&frame).await,
            Some("unsubscribe") => self.unsubscribe(&frame),
            Some("publish") => self.publish(&frame).await,
            Some("send") => self.send_direct(&frame),
            Some("ping") => {
                let frame = ServerFrame::Pong {
                    request_id: request_id.as_deref(),
                }
                .encode();
                return self.send(Message::Text(frame)).await;
            }
            Some(_) => Err((ErrorCode::UnknownType, "unknown frame type".to_owned())),
            None => Err((ErrorCode::MalformedMessage, "`type` is required".to_owned())),
        };
        match outcome {
            Ok(reply) => {
                if let Some(end) = self.ack(request_id.as_deref(), reply.recovered).await {
                    return Some(end);
                }
                self.send_all(reply.then).await
            }
            Err((code, message)) => self.error(code, &message, request_id.as_deref()).await,
        }
    }

    fn require(&self, action: Scope) -> Result<(), Failure> {
        if self.session.permissions.contains(action) {
            Ok(())
        } else {
            Err((
                ErrorCode::ActionNotPermitted,
                format!("this connection may not {action}"),
            ))
        }
    }

    /// Validates a channel named in a frame and checks it against the session's patterns.
    fn channel<'f>(&self, frame: &'f ClientFrame) -> Result<(&'f str, ChannelKind), Failure> {
        let name = frame.channel.as_deref().ok_or((
            ErrorCode::InvalidChannel,
            "`channel` is required".to_owned(),
        ))?;
        let kind = channel_kind(name).map_err(|error| match error {
            NameError::Invalid => (
                ErrorCode::InvalidChannel,
                "channel names are 1-256 characters without control characters".to_owned(),
            ),
            NameError::Reserved => (
                ErrorCode::ChannelReserved,
                "this channel prefix is reserved".to_owned(),
            ),
        })?;
        if !self.session.may_use(name) {
            return Err((
                ErrorCode::ChannelNotAuthorized,
                format!("channel `{name}` is outside this connection's channels"),
            ));
        }
        Ok((name, kind))
    }

    /// A persistent channel's live stream needs the key's REST scope and an existing channel.
    async fn persistent(&self, id: i64, scope: Scope, writing: bool) -> Result<(), Failure> {
        if !self.session.key_scopes.contains(scope) {
            return Err((
                ErrorCode::ChannelNotAuthorized,
                format!("persistent channels need the key scope {scope}"),
            ));
        }
        match channel_state(&self.state.db, id).await {
            Ok(Some(ChannelState::Active)) => Ok(()),
            Ok(Some(ChannelState::Archived)) if !writing => Ok(()),
            Ok(Some(ChannelState::Archived)) => Err((
                ErrorCode::InvalidChannel,
                format!("channel {id} is archived"),
            )),
            Ok(None) => Err((
                ErrorCode::InvalidChannel,
                format!("channel {id} does not exist"),
            )),
            Err(error) => {
                tracing::warn!(%error, "checking a persistent channel failed");
                Err((
                    ErrorCode::InternalError,
                    "could not check the channel; retry".to_owned(),
                ))
            }
        }
    }

    /// Subscribes; with `since` on a persistent channel, replays the history newer than it.
    ///
    /// The subscription is registered first and history read second, so every message lands in
    /// the replay, the live queue, or both; [`Connection::write_batch`] drops the live copies of
    /// replayed messages. Nothing is missed and nothing is repeated across the switch.
    async fn subscribe(&mut self, frame: &ClientFrame) -> Outcome {
        self.require(Scope::Subscribe)?;
        let (name, kind) = self.channel(frame)?;
        if frame.since.is_some_and(|since| since < 0) {
            return Err((
                ErrorCode::MalformedMessage,
                "`since` must be a message id (0 or more)".to_owned(),
            ));
        }
        if let ChannelKind::Persistent(id) = kind {
            self.persistent(id, Scope::ChannelsRead, false).await?;
        }
        let max = self.state.config.realtime.max_subscriptions;
        let roster = self
            .hub
            .subscribe(self.conn, name, frame.include_sender_metadata, max)
            .map_err(|SubscribeError::LimitExceeded| {
                (
                    ErrorCode::ChannelLimitExceeded,
                    format!("at most {max} subscriptions per connection"),
                )
            })?;
        let mut reply = Reply::default();
        if let Some(roster) = roster.filter(|_| self.session.permissions.contains(Scope::Presence))
        {
            let joined: Vec<PeerEntry<'_>> = roster
                .iter()
                .map(|(peer_id, metadata)| PeerEntry {
                    peer_id,
                    metadata: metadata.as_deref(),
                })
                .collect();
            reply.then.push(
                ServerFrame::Presence {
                    channel: name,
                    joined: &joined,
                    left: &[],
                }
                .encode(),
            );
        }
        match (frame.since, kind) {
            (Some(since), ChannelKind::Persistent(id)) => {
                let (history, recovered) = match replay(&self.state, id, since).await {
                    Ok(found) => found,
                    Err(error) => {
                        tracing::warn!(%error, "reading history for a resumed subscription failed");
                        self.hub.unsubscribe(self.conn, name);
                        return Err((
                            ErrorCode::InternalError,
                            "could not read the channel's history; retry".to_owned(),
                        ));
                    }
                };
                let upto = history.last().map_or(since, |m| m.id);
                self.replayed.insert(id, upto);
                reply.recovered = Some(recovered);
                reply
                    .then
                    .extend(history.iter().map(|m| stored_frame(m).frame));
            }
            // Ephemeral channels keep no history to recover.
            (Some(_), ChannelKind::Ephemeral) => reply.recovered = Some(false),
            (None, _) => {}
        }
        Ok(reply)
    }

    fn unsubscribe(&mut self, frame: &ClientFrame) -> Outcome {
        let (name, kind) = self.channel(frame)?;
        self.hub.unsubscribe(self.conn, name);
        if let ChannelKind::Persistent(id) = kind {
            self.replayed.remove(&id);
        }
        Ok(Reply::default())
    }

    async fn publish(&mut self, frame: &ClientFrame) -> Outcome {
        self.require(Scope::Publish)?;
        let (name, kind) = self.channel(frame)?;
        let data = frame
            .data
            .as_deref()
            .ok_or((ErrorCode::MissingData, "`data` is required".to_owned()))?;
        if let ChannelKind::Persistent(id) = kind {
            self.persistent(id, Scope::ChannelsWrite, true).await?;
        }
        let from = &*self.session.peer_id;
        let plain: Outbound = ServerFrame::Message {
            channel: name,
            from,
            data,
            from_metadata: None,
        }
        .encode()
        .into();
        let with_metadata: Option<Outbound> =
            self.session.peer_metadata.as_deref().map(|metadata| {
                ServerFrame::Message {
                    channel: name,
                    from,
                    data,
                    from_metadata: Some(metadata),
                }
                .encode()
                .into()
            });
        self.hub
            .publish(name, Some(self.conn), &plain, with_metadata.as_ref());
        Ok(Reply::default())
    }

    fn send_direct(&mut self, frame: &ClientFrame) -> Outcome {
        self.require(Scope::Send)?;
        let to = frame.to.as_deref().filter(|to| is_peer_id(to)).ok_or((
            ErrorCode::InvalidPeerId,
            "`to` must be 1-128 printable ASCII characters".to_owned(),
        ))?;
        let data = frame
            .data
            .as_deref()
            .ok_or((ErrorCode::MissingData, "`data` is required".to_owned()))?;
        let direct: Outbound = ServerFrame::Direct {
            from: &self.session.peer_id,
            data,
            from_metadata: self.session.peer_metadata.as_deref(),
        }
        .encode()
        .into();
        if self.hub.send_to_peer(to, &direct) == 0 && !self.hub.is_connected(to) {
            return Err((
                ErrorCode::PeerNotFound,
                format!("peer `{to}` is not connected"),
            ));
        }
        Ok(Reply::default())
    }
}

/// Most replayed on a resumed subscription; beyond it the newest ones are replayed and the
/// client pages the older rest over REST.
const MAX_REPLAY: i64 = 1000;

/// Stored messages of channel `id` newer than `since`, oldest first, and whether that is all of
/// them. When more than [`MAX_REPLAY`] exist, the newest [`MAX_REPLAY`] are returned, so the live
/// stream continues without a gap and the older rest is one `before=` walk away over REST.
async fn replay(
    state: &AppState,
    id: i64,
    since: i64,
) -> Result<(Vec<MessageRow>, bool), sqlx::Error> {
    let history = page(&state.db, id, Page::After(since), MAX_REPLAY + 1).await?;
    if history.len() as i64 <= MAX_REPLAY {
        return Ok((history, true));
    }
    let mut newest = page(&state.db, id, Page::Latest, MAX_REPLAY).await?;
    newest.reverse();
    Ok((newest, false))
}

type Failure = (ErrorCode, String);

/// What a handled frame answers: the ack's `recovered`, and frames to send right after the ack.
#[derive(Default)]
struct Reply {
    recovered: Option<bool>,
    then: Vec<Utf8Bytes>,
}

type Outcome = Result<Reply, Failure>;
