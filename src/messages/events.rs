//! `GET /v1/channels/{id}/events`: a channel's stored messages as Server-Sent Events.
//!
//! `event: message`, `id: <message id>`, `data: <the message as REST returns it>`. A client that
//! reconnects with `Last-Event-ID` (or `?since=`) resumes exactly after that message: the stream
//! subscribes to the channel's feed first, then reads history from the database, then follows the
//! feed, dropping what it already sent. A follower that falls behind the feed goes back to the
//! database. A comment line keeps proxies from closing a quiet stream.

use std::{collections::VecDeque, convert::Infallible, sync::Arc};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::Stream;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use utoipa::openapi::{
    RefOr, Schema,
    extensions::Extensions,
    schema::{Object, ObjectBuilder, Type},
};

use super::{
    db::{Filter, Page, page, page_filtered},
    model::Message,
};
use crate::{
    auth::{ChannelsRead, Scoped, streams},
    channels::channel_state,
    delivery::Follow,
    error::{ApiError, Envelope, FieldErrors},
    extract::{ChannelId, QueryParams},
    state::AppState,
};

/// One event of the stream, as an SSE parser yields it: `event` is `message`, `id` the message's
/// id, `data` the message as JSON text, exactly as REST returns it.
pub struct MessageEvent;

impl utoipa::PartialSchema for MessageEvent {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let data = Object::builder()
            .schema_type(Type::String)
            .content_media_type("application/json")
            .description(Some("The message as REST returns it, as JSON text"))
            .extensions(Some(Extensions::from_iter([(
                "contentSchema",
                serde_json::json!({"$ref": "#/components/schemas/Message"}),
            )])))
            .build();
        ObjectBuilder::new()
            .property("event", string().enum_values(Some(["message"])))
            .property(
                "id",
                string()
                    .pattern(Some("^[1-9][0-9]*$"))
                    .description(Some("The message id: reconnect with it as `Last-Event-ID`")),
            )
            .property("data", data)
            .required("event")
            .required("id")
            .required("data")
            .into()
    }
}

impl utoipa::ToSchema for MessageEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            <Message as utoipa::ToSchema>::name().into_owned(),
            <Message as utoipa::PartialSchema>::schema(),
        ));
        <Message as utoipa::ToSchema>::schemas(schemas);
    }
}

/// Messages read from the database per round while catching up.
const CATCH_UP_PAGE: i64 = 100;

#[utoipa::path(get, path = "/v1/channels/{id}/events", operation_id = "followEvents", tag = "messages", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Channel id: a positive integer without leading zeros (anything else is 400)"),
        ("since" = Option<i64>, Query, minimum = 0, description = "Resume after this message id"),
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "Resume after this message id (wins over `since`)"),
        ("lastEventId" = Option<i64>, Query, minimum = 0, description = "The same as `Last-Event-ID`, as EventSource polyfills send it when reconnecting"),
        ("mentions" = Option<String>, Query, pattern = "^[ -~]{1,100}$", description = "Only messages whose `mentions` hold this name"),
        ("thread" = Option<i64>, Query, minimum = 1, description = "Only the messages of this thread: its first message's id (`thread_id`)"),
    ),
    responses(
        (status = 200, description = "`event: message`, `id: <message id>`, `data: <the message as JSON>`; comment lines keep the stream open", content_type = "text/event-stream", body = MessageEvent),
        (status = 400, description = "A bad `since` or `Last-Event-ID`", body = Envelope),
        (status = 404, description = "No such channel", body = Envelope),
    ))]
pub async fn events(
    caller: Scoped<ChannelsRead>,
    State(state): State<AppState>,
    ChannelId(channel_id): ChannelId,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut errors = FieldErrors::default();
    let last_event_id = headers
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or("x"))
        .or_else(|| query.get("lastEventId"))
        .map(|value| {
            value
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|id| *id >= 0)
                .ok_or(())
        });
    // `lastEventId` is what EventSource polyfills that can send headers add when they reconnect.
    query.accept(&["since", "lastEventId", "mentions", "thread"], &mut errors);
    let filter = super::service::filter(&query, &mut errors);
    // `since` is checked even when `Last-Event-ID` wins over it: a bad parameter is never ignored.
    let since_query = query.int("since", 0, i64::MAX, &mut errors);
    let since = match last_event_id {
        Some(Ok(id)) => Some(id),
        Some(Err(())) => {
            errors.add_with(
                "Last-Event-ID",
                "type",
                "Last-Event-ID must be a message id (an integer of at least 0)",
            );
            None
        }
        None => since_query,
    };
    errors.into_result()?;
    caller.principal.may_use_channel(&state, channel_id).await?;
    if channel_state(&state.db, channel_id).await?.is_none() {
        return Err(ApiError::channel_not_found(channel_id));
    }

    // The stream counts toward the key's open streams, and ends with the key.
    let stream = state.streams.open(&caller.principal.key_id)?;
    // Follow the channel before reading, so nothing committed in between is missed.
    let follow = state.delivery.follow(channel_id).await?;
    let feed = state.delivery.feeds().subscribe(channel_id);
    let cursor = match since {
        Some(since) => since,
        // A new follower starts from now: nothing older is sent.
        None => page(&state.db, channel_id, Page::Latest, 1)
            .await?
            .first()
            .map_or(0, |m| m.id),
    };
    let follower = Follower {
        _follow: follow,
        db: state.db.clone(),
        channel_id,
        cursor,
        filter,
        pending: VecDeque::new(),
        catching_up: true,
        feed,
        shutdown: state.shutdown.subscribe(),
        stream: Some(stream),
    };
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        let event = match follower.next().await? {
            Next::Message(message) => Event::default()
                .event("message")
                .id(message.id.to_string())
                .json_data(&message)
                .unwrap_or_else(|_| Event::default().comment("unserializable message")),
            // The key was revoked or has expired: the error, then the end of the stream.
            Next::Ended(error) => {
                follower.stream = None;
                Event::default()
                    .event("error")
                    .json_data(error.envelope())
                    .unwrap_or_else(|_| Event::default().comment("key no longer active"))
            }
        };
        Some((Ok(event), follower))
    });
    let keep_alive = KeepAlive::new().interval(state.config.realtime.sse_keep_alive);
    Ok(Sse::new(stream).keep_alive(keep_alive))
}

struct Follower {
    /// Keeps this instance reading the channel's new messages while the stream is open.
    _follow: Follow,
    db: PgPool,
    channel_id: i64,
    /// The last message id sent.
    cursor: i64,
    /// The messages this stream sends: a stream filtered by `mentions` skips the others.
    filter: Filter,
    pending: VecDeque<Message>,
    catching_up: bool,
    feed: broadcast::Receiver<Arc<Message>>,
    shutdown: watch::Receiver<bool>,
    /// This stream's place among its key's long-lived requests; `None` once it has ended.
    stream: Option<streams::Stream>,
}

/// What a follower sends next.
enum Next {
    Message(Message),
    /// The key was revoked or has expired.
    Ended(ApiError),
}

impl Follower {
    /// The next message to send, or `None` when the stream should end (shutdown, a database
    /// error: the client reconnects with `Last-Event-ID` and loses nothing; or after the error
    /// that told it its key is no longer active).
    async fn next(&mut self) -> Option<Next> {
        let stream = self.stream.as_mut()?;
        loop {
            // Checked at every turn, catching up included: a revoked key gets no more history.
            if stream.is_ended() {
                return Some(Next::Ended(stream.ended().await));
            }
            if let Some(message) = self.pending.pop_front() {
                self.cursor = message.id;
                return Some(Next::Message(message));
            }
            if self.catching_up {
                let batch = match page_filtered(
                    &self.db,
                    self.channel_id,
                    Page::After(self.cursor),
                    CATCH_UP_PAGE,
                    &self.filter,
                )
                .await
                {
                    Ok(batch) => batch,
                    Err(error) => {
                        tracing::warn!(%error, "event stream could not read history; ending it");
                        return None;
                    }
                };
                self.catching_up = batch.len() as i64 == CATCH_UP_PAGE;
                self.pending.extend(batch);
                continue;
            }
            tokio::select! {
                received = self.feed.recv() => match received {
                    Ok(message) if message.id > self.cursor && self.filter.matches(&message) => {
                        self.pending.push_back((*message).clone())
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.shutdown.wait_for(|stopping| *stopping) => return None,
                error = stream.ended() => return Some(Next::Ended(error)),
            }
        }
    }
}
