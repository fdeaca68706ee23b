//! What the message routes, the event stream and MCP's message tools do, behind the transport:
//! reading a page (and long-polling for the next), and storing a message.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use serde::Serialize;
use tokio::{
    sync::broadcast::{self, error::RecvError},
    time::Instant,
};

use super::{
    batch::Post,
    db::{self, Filter, Page},
    model::{CreateMessage, Message, is_printable_ascii},
    pages::{Cached, Rendered},
};
use crate::{
    channels::{ChannelState, channel_state},
    error::{ApiError, FieldErrors},
    extract::QueryParams,
    metrics::Waiting,
    state::AppState,
};

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub has_more: bool,
    /// For a long poll answered from the feed, the message that woke it: the same `Arc` for
    /// every waiter the same commit woke, so equal answers can be written once among them.
    #[serde(skip)]
    pub woken_by: Option<Arc<Message>>,
}

/// Longest `wait` of a long poll, in seconds.
pub const MAX_WAIT_SECS: i64 = 30;

/// `mentions=<name>` and `thread=<message id>`, as `GET …/messages` and `…/events` take them.
pub fn filter(query: &QueryParams, errors: &mut FieldErrors) -> Filter {
    let mentions = query.get("mentions").map(str::to_owned);
    if let Some(name) = &mentions
        && !is_printable_ascii(name, 100)
    {
        errors.add_with(
            "mentions",
            "format",
            "mentions must be a name of 1-100 printable ASCII characters",
        );
    }
    Filter {
        mentions,
        thread: query.int("thread", 1, i64::MAX, errors),
    }
}

/// A page of a channel's history, `limit` long at most, of the messages `filter` wants; 404 when
/// the channel does not exist.
///
/// With a non-zero `wait` (meant with [`Page::After`]), an empty page is held until a message
/// the filter wants is committed or the wait ends: the long poll of REST and MCP's
/// `wait_for_messages`. Messages the filter does not want never end the wait, and cost the
/// waiter no query.
pub async fn read(
    state: &AppState,
    channel_id: i64,
    page: Page,
    limit: i64,
    wait: Duration,
    filter: &Filter,
) -> Result<MessagePage, ApiError> {
    // Followed before reading: whatever commits after this read still wakes the waiter.
    let follow = match wait.is_zero() {
        false => Some(state.delivery.follow(channel_id).await?),
        true => None,
    };
    let mut feed = follow
        .as_ref()
        .map(|_| state.delivery.feeds().subscribe(channel_id));
    let mut messages = db::page_filtered(&state.db, channel_id, page, limit + 1, filter).await?;
    let mut woken_by = None;
    if messages.is_empty() && channel_state(&state.db, channel_id).await?.is_none() {
        return Err(ApiError::channel_not_found(channel_id));
    }
    if let Some(feed) = feed.as_mut()
        && messages.is_empty()
    {
        let _waiting = Waiting::new(&state.metrics);
        let deadline = Instant::now() + wait;
        let mut shutdown = state.shutdown.subscribe();
        while messages.is_empty() {
            tokio::select! {
                woken = tokio::time::timeout_at(deadline, feed.recv()) => match woken {
                    // The feed carries every message newer than what the read above saw, in id
                    // order: the answer needs no query, however many waiters wake at once.
                    Ok(Ok(first)) => {
                        if let Page::After(after) = page {
                            let lagged;
                            woken_by = Some(first.clone());
                            (messages, lagged) = from_feed(first, feed, after, limit + 1, filter);
                            // Messages were dropped from the feed while none matched: one of
                            // them may have; the database knows.
                            if !(lagged && messages.is_empty()) {
                                continue;
                            }
                        }
                    }
                    // So many messages that this waiter lagged: read them from the database.
                    Ok(Err(RecvError::Lagged(_))) => {}
                    Ok(Err(RecvError::Closed)) | Err(_) => break,
                },
                _ = shutdown.wait_for(|stopping| *stopping) => break,
            }
            woken_by = None;
            messages = db::page_filtered(&state.db, channel_id, page, limit + 1, filter).await?;
        }
    }
    let has_more = messages.len() as i64 > limit;
    messages.truncate(limit as usize);
    Ok(MessagePage {
        messages,
        has_more,
        woken_by,
    })
}

/// The latest `limit` messages of the channel, as `GET …/messages` without a cursor or filter
/// answers them; 404 when the channel does not exist.
///
/// A page held in memory (see [`super::pages`]) is used when the channel's newest
/// message id is still the page's, which one primary-key lookup tells; the page is then neither
/// read nor rendered again. Otherwise the page is read, kept, and rendered once.
pub async fn latest(state: &AppState, channel_id: i64, limit: i64) -> Result<Rendered, ApiError> {
    let pages = state.delivery.pages();
    let size = limit as usize;
    if pages.holds(channel_id) {
        let head = db::head(&state.db, channel_id)
            .await?
            .ok_or_else(|| ApiError::channel_not_found(channel_id))?;
        match pages.get(channel_id, head, size) {
            Some(Cached::Rendered(rendered)) => return Ok(rendered),
            Some(Cached::Messages(messages, has_more)) => {
                let rendered = render(size, &messages, has_more)?;
                pages.rendered(channel_id, head, rendered.clone());
                return Ok(rendered);
            }
            None => {}
        }
    } else {
        pages.misses.fetch_add(1, Ordering::Relaxed);
    }
    let messages = db::page(&state.db, channel_id, Page::Latest, limit + 1).await?;
    if messages.is_empty() && channel_state(&state.db, channel_id).await?.is_none() {
        return Err(ApiError::channel_not_found(channel_id));
    }
    pages.fill(channel_id, &messages, size + 1);
    let head = messages.first().map_or(0, |m| m.id);
    let has_more = messages.len() > size;
    let rendered = render(size, &messages[..messages.len().min(size)], has_more)?;
    pages.rendered(channel_id, head, rendered.clone());
    Ok(rendered)
}

/// A page's body (the shape of [`MessagePage`]) and its tag, which its ids determine.
fn render<M: std::borrow::Borrow<Message>>(
    limit: usize,
    messages: &[M],
    has_more: bool,
) -> Result<Rendered, ApiError> {
    #[derive(Serialize)]
    struct PageOf<'a> {
        messages: Vec<&'a Message>,
        has_more: bool,
    }
    let messages: Vec<&Message> = messages.iter().map(std::borrow::Borrow::borrow).collect();
    let tag =
        crate::etag::identity_tag((messages.iter().map(|m| m.id).collect::<Vec<_>>(), has_more));
    // About 250 bytes of fields per message besides its content (more only for metadata, or
    // content that needs escaping).
    let size = 32
        + messages
            .iter()
            .map(|m| m.content.len() + 256)
            .sum::<usize>();
    let body = crate::json::body_sized(&PageOf { messages, has_more }, size)
        .map_err(|error| ApiError::Internal(Box::new(error)))?;
    Ok(Rendered {
        limit,
        tag,
        body: body.into(),
    })
}

/// The messages after `after` that `filter` wants among what a woken waiter's feed holds:
/// `first`, then whatever else has arrived, up to `max`; and whether the feed lagged (dropped
/// messages) after them. Empty and not lagged when none is wanted: the waiter sleeps on.
fn from_feed(
    first: Arc<Message>,
    feed: &mut broadcast::Receiver<Arc<Message>>,
    after: i64,
    max: i64,
    filter: &Filter,
) -> (Vec<Message>, bool) {
    let mut messages = Vec::new();
    let mut next = Ok(first);
    loop {
        match next {
            Ok(message) => {
                if message.id > after && filter.matches(&message) {
                    messages.push(Message::clone(&message));
                    if messages.len() as i64 >= max {
                        return (messages, false);
                    }
                }
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => return (messages, true),
            Err(_) => return (messages, false),
        }
        next = feed.try_recv();
    }
}

/// A future that runs to its end even if whoever awaits it goes away: dropped before it
/// finished, it hands itself to a task of its own. Awaited to the end (the usual case), it runs in
/// the caller's task, with no task spawned and no hand-over between threads.
struct Completing<F: std::future::Future<Output: Send> + Send + 'static>(
    Option<std::pin::Pin<Box<F>>>,
);

impl<F: std::future::Future<Output: Send> + Send + 'static> Completing<F> {
    fn new(future: F) -> Self {
        Self(Some(Box::pin(future)))
    }
}

impl<F: std::future::Future<Output: Send> + Send + 'static> std::future::Future for Completing<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let future = self.0.as_mut().expect("polled after completion");
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(output)
    }
}

impl<F: std::future::Future<Output: Send> + Send + 'static> Drop for Completing<F> {
    fn drop(&mut self) {
        if let Some(unfinished) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(unfinished);
        }
    }
}

/// Whether [`store`] stored the message, or found the one an earlier request stored under the
/// same idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    Earlier,
}

/// An idempotency key as the caller's API key `key_id` sent it: keys are scoped to the API key
/// that posts (SPEC §3b), so another key's same `Idempotency-Key` is another post. Stored as
/// `<key_id>:<key>`, never shown.
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn of(key_id: &str, key: &str) -> Self {
        Self(format!("{key_id}:{key}"))
    }
}

/// Stores a message (REST's `POST …/messages` and MCP's `post_message`). With an idempotency key
/// already used on this channel by the same API key, stores nothing and returns the message
/// first stored under it.
pub async fn store(
    state: &AppState,
    channel_id: i64,
    new: CreateMessage,
    idempotency_key: Option<IdempotencyKey>,
) -> Result<(Stored, Message), ApiError> {
    let idempotency_key = idempotency_key.map(|key| key.0);
    // A retry of a stored reply answers the stored message, whatever its reply_to says now.
    if new.reply_to.is_some()
        && let Some(key) = idempotency_key.as_deref()
        && let Some(original) = db::find_by_idempotency_key(&state.db, channel_id, key).await?
    {
        return Ok((Stored::Earlier, original));
    }
    // A reply joins the thread of the message it answers, which must be of this channel.
    let reply = match new.reply_to {
        Some(reply_to) => match db::thread_of(&state.db, channel_id, reply_to).await? {
            Some(thread) => Some((reply_to, thread)),
            None if channel_state(&state.db, channel_id).await?.is_none() => {
                return Err(ApiError::channel_not_found(channel_id));
            }
            None => {
                return Err(ApiError::invalid_field(
                    "reply_to",
                    "not_found",
                    format!(
                        "reply_to must be an earlier message of this channel: message \
                         {reply_to} not found in channel {channel_id}"
                    ),
                ));
            }
        },
        None => None,
    };
    // The insert and its doorbell always run to the end: a client that hangs up cancels this
    // handler, never a commit's doorbell (see `Completing`). (Were the process to die between the
    // two, the readers' sweep would still find the message.)
    let insert = {
        let (db, delivery, posts) = (
            state.db.clone(),
            state.delivery.clone(),
            state.posts.clone(),
        );
        let idempotency_key = idempotency_key.clone();
        let post = Post {
            channel_id,
            sender_type: new.sender_type(),
            content: new.content,
            pod_key: new.pod_key,
            mentions: new.mentions.unwrap_or_default(),
            metadata: new.metadata.map(serde_json::Value::Object),
            reply,
        };
        async move {
            // With a key, alone: its statement looks for an earlier post under the key.
            let stored = match idempotency_key.as_deref() {
                None => posts.store(&db, post).await?,
                Some(key) => post.insert(&db, Some(key)).await?,
            };
            if let Some(message) = &stored {
                let pause = delivery.post_commit_pause();
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                delivery.ring(channel_id, message.id);
            }
            Ok::<_, sqlx::Error>(stored)
        }
    };
    let stored = Completing::new(insert).await?;
    if let Some(message) = stored {
        crate::webhooks::posted(state, channel_id).await;
        return Ok((Stored::New, message));
    }

    // Nothing stored: an earlier request with this key, or a missing or archived channel.
    if let Some(key) = idempotency_key.as_deref()
        && let Some(original) = db::find_by_idempotency_key(&state.db, channel_id, key).await?
    {
        // Rung again: the first attempt's poster may have died between commit and doorbell.
        state.delivery.ring(channel_id, original.id);
        return Ok((Stored::Earlier, original));
    }
    match channel_state(&state.db, channel_id).await? {
        None => Err(ApiError::channel_not_found(channel_id)),
        Some(ChannelState::Archived) => Err(ApiError::ChannelArchived(channel_id)),
        // Archived when the insert ran, unarchived since: the post was refused as archived.
        Some(ChannelState::Active) => Err(ApiError::ChannelArchived(channel_id)),
    }
}
