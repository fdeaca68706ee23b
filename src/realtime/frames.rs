//! One function per client frame type: subscribe (with resume), unsubscribe, publish, send, ping.
//! Every failure is an `error` frame; the connection stays open.

use axum::extract::ws::{Message, Utf8Bytes};

use super::{
    connection::{Connection, End, Persistent, Replay},
    engine::{
        SubscribeFailure, Subscription,
        hub::fanout::{Outbound, Roster},
    },
    names::{ChannelKind, NameError, channel_kind, is_peer_id},
    protocol::{ClientFrame, ErrorCode, PeerEntry, ServerFrame, close, parse_client_frame},
};
use crate::{
    auth::Scope,
    channels::{ChannelState, channel_state},
    delivery::Follow,
    error::ApiError,
    messages::{count_after, id_before_newest, model::is_printable_ascii},
    state::AppState,
};

impl Connection {
    /// Handles one client frame. Every failure is an `error` frame; the connection stays open.
    pub(super) async fn handle(&mut self, text: &str) -> Option<End> {
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
        let max_data = self.state.config.realtime.max_frame_bytes;
        if frame
            .data
            .as_ref()
            .is_some_and(|data| data.get().len() > max_data)
        {
            // As a frame over the limit would: `maxMessageSize` is the limit on `data`.
            return Some(End::Close(close::TOO_BIG, "data too big"));
        }
        let request_id = frame.request_id.clone();
        // A test's fault hook: unset in production, where this is one check of a `None`.
        if let Some(fault) = &self.state.config.faults.panic_on_request_id
            && request_id.as_deref() == Some(fault.as_str())
        {
            panic!("fault injected: a panic inside a connection's task");
        }
        let outcome = match frame.kind.as_deref() {
            Some("subscribe") => self.subscribe(&frame).await,
            Some("unsubscribe") => self.unsubscribe(&frame).await,
            Some("publish") => self.publish(&frame).await,
            Some("send") => self.send_direct(&frame).await,
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
            NameError::Invalid | NameError::NotCanonical => {
                (ErrorCode::InvalidChannel, error.message().to_owned())
            }
            NameError::Reserved => (ErrorCode::ChannelReserved, error.message().to_owned()),
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
    /// (`&mut self` although it only reads: the socket inside is `Send` but not `Sync`, so only a
    /// unique borrow of the connection may be held across an `.await`.)
    async fn persistent(&mut self, id: i64, scope: Scope, writing: bool) -> Result<(), Failure> {
        if !self.session.key_scopes.contains(scope) {
            return Err((
                ErrorCode::ChannelNotAuthorized,
                format!(
                    "the live stream of persistent channel {id} needs the {scope} scope on the \
                     key behind this connection"
                ),
            ));
        }
        // Another app's channel reads exactly like one that does not exist.
        let state = match self.state.apps.owner(&self.state.db, id).await {
            Ok(Some(app)) if app == self.session.app_id => channel_state(&self.state.db, id).await,
            Ok(_) => Ok(None),
            Err(error) => Err(error),
        };
        match state {
            Ok(Some(ChannelState::Active)) => Ok(()),
            Ok(Some(ChannelState::Archived)) if !writing => Ok(()),
            Ok(Some(ChannelState::Archived)) => Err((
                ErrorCode::InvalidChannel,
                ApiError::ChannelArchived(id).to_string(),
            )),
            Ok(None) => Err((
                ErrorCode::InvalidChannel,
                ApiError::channel_not_found(id).to_string(),
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
    /// The channel is followed and the subscription registered before history is read, so every
    /// message lands in the replay, the live queue, or both; the replay (see `replay`) holds live
    /// copies back until it has caught up, and drops those it sent. Nothing is missed and nothing
    /// is repeated across the switch.
    async fn subscribe(&mut self, frame: &ClientFrame) -> Outcome {
        self.require(Scope::Subscribe)?;
        let (name, kind) = self.channel(frame)?;
        subscribe_options(frame, kind)?;
        // A persistent channel is followed before the engine subscription and the history read:
        // every message the read cannot see then reaches the engine.
        let follow = self.follow(kind).await?;
        let roster = self.join(name, frame.include_sender_metadata).await?;
        let mut reply = Reply::default();
        if let Some(roster) = roster.filter(|_| self.session.permissions.contains(Scope::Presence))
        {
            reply.then.push(roster_frame(name, &roster));
        }
        reply.recovered = self.start_stream(frame, name, kind, follow).await?;
        Ok(reply)
    }

    /// Follows a persistent channel's stored messages through this instance.
    async fn follow(&mut self, kind: ChannelKind) -> Result<Option<Follow>, Failure> {
        let ChannelKind::Persistent(id) = kind else {
            return Ok(None);
        };
        self.persistent(id, Scope::ChannelsRead, false).await?;
        let follow = self.state.delivery.follow(id).await.map_err(|error| {
            tracing::warn!(%error, "following a persistent channel failed");
            (
                ErrorCode::InternalError,
                "could not follow the channel; retry".to_owned(),
            )
        })?;
        Ok(Some(follow))
    }

    /// Subscribes through the engine; the roster of the other peers there.
    async fn join(
        &mut self,
        name: &str,
        include_sender_metadata: bool,
    ) -> Result<Option<Roster>, Failure> {
        let max = self.state.config.realtime.max_subscriptions;
        let scoped = self.session.scoped(name);
        self.state
            .realtime
            .engine
            .subscribe(Subscription {
                conn: self.conn,
                channel: &scoped,
                include_sender_metadata,
                max_subscriptions: max,
                peer: &self.session.peer_id,
                peer_metadata: self.session.peer_metadata.as_ref(),
            })
            .await
            .map_err(|failure| match failure {
                SubscribeFailure::LimitExceeded => (
                    ErrorCode::ChannelLimitExceeded,
                    format!("at most {max} subscriptions per connection"),
                ),
                SubscribeFailure::Unavailable => realtime_unavailable(),
            })
    }

    /// Where a persistent subscription's stream starts: live, or (with `since`) after a replay of
    /// the history newer than `since`. Answers the ack's `recovered` (`None` without `since`).
    async fn start_stream(
        &mut self,
        frame: &ClientFrame,
        name: &str,
        kind: ChannelKind,
        follow: Option<Follow>,
    ) -> Result<Option<bool>, Failure> {
        match (frame.since, kind) {
            (Some(since), ChannelKind::Persistent(id)) => {
                let (start, recovered) = match replay_start(&self.state, id, since).await {
                    Ok(found) => found,
                    Err(error) => {
                        tracing::warn!(%error, "reading history for a resumed subscription failed");
                        self.leave(name).await;
                        self.persistent.remove(&id);
                        return Err((
                            ErrorCode::InternalError,
                            "could not read the channel's history; retry".to_owned(),
                        ));
                    }
                };
                // The replay itself runs from the connection's loop, a page at a time.
                let entry = self.followed(id, follow);
                entry.replay = Some(Replay::starting_after(start));
                entry.mentions = frame.mentions.clone();
                Ok(Some(recovered))
            }
            // Ephemeral channels keep no history to recover.
            (Some(_), ChannelKind::Ephemeral) => Ok(Some(false)),
            (None, ChannelKind::Persistent(id)) => {
                self.followed(id, follow).mentions = frame.mentions.clone();
                Ok(None)
            }
            (None, ChannelKind::Ephemeral) => Ok(None),
        }
    }

    /// The connection's record of a persistent subscription; a repeated subscribe keeps the
    /// first one's follow and what it replayed.
    fn followed(&mut self, id: i64, follow: Option<Follow>) -> &mut Persistent {
        self.persistent.entry(id).or_insert_with(|| Persistent {
            _follow: follow.expect("persistent channels are followed before subscribing"),
            replay: None,
            replayed: None,
            mentions: None,
        })
    }

    /// Ends this connection's subscription to `name`.
    async fn leave(&mut self, name: &str) {
        let scoped = self.session.scoped(name);
        self.state
            .realtime
            .engine
            .unsubscribe(self.conn, &scoped)
            .await;
    }

    async fn unsubscribe(&mut self, frame: &ClientFrame) -> Outcome {
        let (name, kind) = self.channel(frame)?;
        self.leave(name).await;
        if let ChannelKind::Persistent(id) = kind {
            self.persistent.remove(&id);
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
            message_id: None,
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
                    message_id: None,
                }
                .encode()
                .into()
            });
        self.state
            .realtime
            .engine
            .publish(
                &self.session.scoped(name),
                self.conn,
                &plain,
                with_metadata.as_ref(),
            )
            .map_err(|_| realtime_unavailable())?;
        Ok(Reply::default())
    }

    async fn send_direct(&mut self, frame: &ClientFrame) -> Outcome {
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
        let reached = self
            .state
            .realtime
            .engine
            .send(&self.session.scoped(to), &direct)
            .await
            .map_err(|_| realtime_unavailable())?;
        if reached == 0 {
            return Err((
                ErrorCode::PeerNotFound,
                format!("peer `{to}` is not connected"),
            ));
        }
        Ok(Reply::default())
    }
}

/// `since` and `mentions`, as a subscribe may carry them.
fn subscribe_options(frame: &ClientFrame, kind: ChannelKind) -> Result<(), Failure> {
    if frame.since.is_some_and(|since| since < 0) {
        return Err((
            ErrorCode::MalformedMessage,
            "`since` must be a message id (0 or more)".to_owned(),
        ));
    }
    let Some(name) = &frame.mentions else {
        return Ok(());
    };
    if !is_printable_ascii(name, 100) {
        return Err((
            ErrorCode::MalformedMessage,
            "`mentions` must be a name of 1-100 printable ASCII characters".to_owned(),
        ));
    }
    if kind == ChannelKind::Ephemeral {
        return Err((
            ErrorCode::InvalidChannel,
            "`mentions` filters the live stream of a persistent channel (an all-digit realtime \
             channel name); this one stores no messages"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The `presence` frame that shows a new subscriber who is already in `channel`.
fn roster_frame(channel: &str, roster: &Roster) -> Utf8Bytes {
    let joined: Vec<PeerEntry<'_>> = roster
        .iter()
        .map(|(peer_id, metadata)| PeerEntry {
            peer_id,
            metadata: metadata.as_deref(),
        })
        .collect();
    ServerFrame::Presence {
        channel,
        joined: &joined,
        left: &[],
    }
    .encode()
}

/// Most replayed on a resumed subscription; beyond it the newest ones are replayed and the
/// client pages the older rest over REST.
const MAX_REPLAY: i64 = 1000;

/// Where the replay of channel `id` after `since` starts, and whether it covers everything after
/// `since`. When more than [`MAX_REPLAY`] messages are newer, it starts before the newest
/// [`MAX_REPLAY`], so the live stream continues without a gap and the older rest is one
/// `before=` walk away over REST.
async fn replay_start(state: &AppState, id: i64, since: i64) -> Result<(i64, bool), sqlx::Error> {
    if count_after(&state.db, id, since, MAX_REPLAY + 1).await? <= MAX_REPLAY {
        return Ok((since, true));
    }
    let start = id_before_newest(&state.db, id, MAX_REPLAY).await?;
    Ok((start.unwrap_or(since).max(since), false))
}

type Failure = (ErrorCode, String);

/// The engine is out of reach (Redis): the action failed, the connection stays open.
fn realtime_unavailable() -> Failure {
    (
        ErrorCode::InternalError,
        "realtime is unavailable: this instance cannot reach Redis; retry shortly".to_owned(),
    )
}

/// What a handled frame answers: the ack's `recovered`, and frames to send right after the ack.
#[derive(Default)]
struct Reply {
    recovered: Option<bool>,
    then: Vec<Utf8Bytes>,
}

type Outcome = Result<Reply, Failure>;
