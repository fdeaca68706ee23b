//! The latest page of each recently read channel, kept in memory so that reading it again costs
//! no page query: `GET /v1/channels/{id}/messages` without a cursor or filter.
//!
//! Stored messages never change and are never deleted, so the latest page is determined by the
//! channel's newest message id, which the statement that stores a message writes to the
//! channel's row (`last_message_id`) in the same transaction. An entry is therefore valid for
//! exactly one `head`: a reader checks the channel's row (one primary-key lookup) and uses the
//! entry only when its `head` is that id. An instance cannot know otherwise whether another
//! instance (or one that started a moment ago) has committed to the channel, so the check is made
//! on every read; it is what keeps a read never staler than the caller's acknowledged writes.
//!
//! Entries are filled by page reads, and kept current by the stored-delivery reader for channels
//! that are followed here (live subscribers): it hands over every newer message of the channel in
//! id order, and an entry whose `head` is where that batch starts grows by it without a query.
//!
//! Bounded: at most [`MAX_CHANNELS`] entries and [`MAX_BYTES`] of message text and rendered
//! bodies; the least recently used entries go first.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;

use crate::messages::model::Message;

/// Messages held per channel: the largest page (100) and one more, which tells `has_more`.
pub const HELD: usize = 101;
/// Channels held at most.
const MAX_CHANNELS: usize = 4096;
/// Bytes of message content, metadata and rendered bodies held at most.
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// Rendered bodies kept per channel (one per page size asked for recently).
const RENDERED: usize = 2;

/// A page body rendered once and served to every reader of the same page.
#[derive(Clone)]
pub struct Rendered {
    pub limit: usize,
    pub tag: String,
    pub body: Bytes,
}

/// What a reader gets from the cache for a channel at a known head.
pub enum Cached {
    /// The body of this page, as rendered for an earlier reader.
    Rendered(Rendered),
    /// The page's messages, newest first, and whether older ones follow; to be rendered (and
    /// handed back with [`Pages::rendered`]).
    Messages(Vec<Arc<Message>>, bool),
}

#[derive(Default)]
pub struct Pages {
    inner: Mutex<Inner>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

#[derive(Default)]
struct Inner {
    channels: HashMap<i64, Entry>,
    bytes: usize,
    tick: u64,
}

struct Entry {
    /// The channel's newest message id (0: no message yet).
    head: i64,
    /// The newest messages, newest first, with the bytes each is counted for; at most [`HELD`].
    messages: VecDeque<(Arc<Message>, usize)>,
    /// `messages` holds every message of the channel.
    complete: bool,
    rendered: Vec<Rendered>,
    bytes: usize,
    used: u64,
}

fn message_bytes(message: &Message) -> usize {
    256 + message.content.len()
        + message.pod_key.as_ref().map_or(0, String::len)
        + message.mentions.iter().map(String::len).sum::<usize>()
        + message.metadata.as_ref().map_or(0, |m| m.to_string().len())
}

impl Pages {
    /// The latest `limit` messages of `channel_id` if the entry is at `head` and holds them.
    pub fn get(&self, channel_id: i64, head: i64, limit: usize) -> Option<Cached> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let found = inner.channels.get_mut(&channel_id).and_then(|entry| {
            if entry.head != head || (entry.messages.len() <= limit && !entry.complete) {
                return None;
            }
            entry.used = tick;
            if let Some(rendered) = entry.rendered.iter().find(|r| r.limit == limit) {
                return Some(Cached::Rendered(rendered.clone()));
            }
            let page = entry
                .messages
                .iter()
                .take(limit)
                .map(|(message, _)| message.clone())
                .collect();
            Some(Cached::Messages(page, entry.messages.len() > limit))
        });
        drop(inner);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Whether an entry exists for the channel (at any head): only then is a head worth checking
    /// before the page is read.
    pub fn holds(&self, channel_id: i64) -> bool {
        self.lock().channels.contains_key(&channel_id)
    }

    /// Keeps a page read from the database: `messages` are the newest of the channel, newest
    /// first, as read with a limit of `asked` (fewer means they are all there are).
    pub fn fill(&self, channel_id: i64, messages: &[Message], asked: usize) {
        let head = messages.first().map_or(0, |m| m.id);
        let mut inner = self.lock();
        if let Some(entry) = inner.channels.get(&channel_id)
            && entry.head == head
            && (entry.complete || entry.messages.len() >= messages.len())
        {
            // As much as this read, or more, is already held at this head.
            return;
        }
        let held: VecDeque<_> = messages
            .iter()
            .take(HELD)
            .map(|message| (Arc::new(message.clone()), message_bytes(message)))
            .collect();
        let bytes = held.iter().map(|(_, bytes)| bytes).sum();
        let entry = Entry {
            head,
            messages: held,
            // Fewer than asked for: all there are (unless more than can be held were read).
            complete: messages.len() < asked && messages.len() <= HELD,
            rendered: Vec::new(),
            bytes,
            used: 0,
        };
        inner.put(channel_id, entry);
    }

    /// Keeps the body rendered for the page of `limit` at `head`.
    pub fn rendered(&self, channel_id: i64, head: i64, rendered: Rendered) {
        let mut inner = self.lock();
        let Some(entry) = inner.channels.get_mut(&channel_id) else {
            return;
        };
        if entry.head != head || entry.rendered.iter().any(|r| r.limit == rendered.limit) {
            return;
        }
        let mut freed = 0;
        if entry.rendered.len() >= RENDERED {
            freed = entry.rendered.remove(0).body.len();
        }
        let added = rendered.body.len();
        entry.rendered.push(rendered);
        entry.bytes = entry.bytes + added - freed;
        inner.bytes = inner.bytes + added - freed;
        inner.evict();
    }

    /// Messages the stored-delivery reader found newer than `previous` (its cursor before the
    /// read), in id order and with none left out: an entry at `previous` moves to the newest.
    pub fn advance(&self, channel_id: i64, previous: i64, newer: &[Arc<Message>]) {
        let Some(newest) = newer.last() else {
            return;
        };
        let mut inner = self.lock();
        let Some(entry) = inner.channels.get_mut(&channel_id) else {
            return;
        };
        if entry.head != previous {
            return;
        }
        entry.head = newest.id;
        let (mut added, mut freed) = (0, 0);
        for message in newer {
            let bytes = message_bytes(message);
            added += bytes;
            entry.messages.push_front((message.clone(), bytes));
        }
        while entry.messages.len() > HELD {
            if let Some((_, bytes)) = entry.messages.pop_back() {
                freed += bytes;
            }
            entry.complete = false;
        }
        freed += entry
            .rendered
            .drain(..)
            .map(|r| r.body.len())
            .sum::<usize>();
        entry.bytes = entry.bytes + added - freed;
        inner.bytes = inner.bytes + added - freed;
        inner.evict();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn put(&mut self, channel_id: i64, mut entry: Entry) {
        self.tick += 1;
        entry.used = self.tick;
        self.bytes += entry.bytes;
        if let Some(old) = self.channels.insert(channel_id, entry) {
            self.bytes -= old.bytes;
        }
        self.evict();
    }

    /// Drops the least recently used entries while over a bound.
    fn evict(&mut self) {
        while self.channels.len() > MAX_CHANNELS || self.bytes > MAX_BYTES {
            let Some((&oldest, _)) = self.channels.iter().min_by_key(|(_, entry)| entry.used)
            else {
                return;
            };
            if let Some(entry) = self.channels.remove(&oldest) {
                self.bytes -= entry.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64) -> Message {
        Message::sample(1, id)
    }

    /// Messages `ids`, newest first, as a page read returns them.
    fn newest_first(ids: impl DoubleEndedIterator<Item = i64>) -> Vec<Message> {
        ids.rev().map(message).collect()
    }

    fn ids(cached: Option<Cached>) -> Option<(Vec<i64>, bool)> {
        match cached? {
            Cached::Messages(messages, more) => {
                Some((messages.iter().map(|m| m.id).collect(), more))
            }
            Cached::Rendered(_) => panic!("nothing was rendered"),
        }
    }

    #[test]
    fn an_entry_answers_only_at_its_head() {
        let pages = Pages::default();
        pages.fill(1, &newest_first(10..=60), 51);
        assert_eq!(
            ids(pages.get(1, 60, 50)),
            Some(((11..=60).rev().collect(), true))
        );
        assert!(pages.get(1, 61, 50).is_none(), "another head is a miss");
        assert!(
            pages.get(1, 60, 51).is_none(),
            "51 held cannot tell has_more for a page of 51"
        );
        assert_eq!(pages.hits.load(Ordering::Relaxed), 1);
        assert_eq!(pages.misses.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_short_channel_is_held_whole() {
        let pages = Pages::default();
        pages.fill(1, &newest_first(1..=3), 51);
        assert_eq!(ids(pages.get(1, 3, 100)), Some((vec![3, 2, 1], false)));
        assert_eq!(ids(pages.get(1, 3, 2)), Some((vec![3, 2], true)));
        pages.fill(2, &[], 51);
        assert_eq!(ids(pages.get(2, 0, 50)), Some((vec![], false)));
    }

    #[test]
    fn the_reader_advances_an_entry_only_from_its_head() {
        let pages = Pages::default();
        pages.fill(1, &newest_first(1..=10), 51);
        let batch: Vec<_> = (12..=13).map(|id| Arc::new(message(id))).collect();
        pages.advance(1, 11, &batch);
        assert!(pages.get(1, 13, 5).is_none(), "a gap (11 unseen) leaves it");
        pages.advance(1, 10, &batch);
        assert_eq!(ids(pages.get(1, 13, 3)), Some((vec![13, 12, 10], true)));
        assert!(pages.get(1, 10, 3).is_none(), "the old head is gone");
    }

    #[test]
    fn advancing_past_what_is_held_forgets_the_oldest() {
        let pages = Pages::default();
        pages.fill(1, &newest_first(1..=5), 51);
        let batch: Vec<_> = (6..=200).map(|id| Arc::new(message(id))).collect();
        pages.advance(1, 5, &batch);
        let (held, more) = ids(pages.get(1, 200, 100)).unwrap();
        assert_eq!(held, (101..=200).rev().collect::<Vec<_>>());
        assert!(more);
        assert!(pages.get(1, 200, 101).is_none());
    }

    #[test]
    fn a_rendered_body_is_served_until_the_head_moves() {
        let pages = Pages::default();
        pages.fill(1, &newest_first(1..=3), 51);
        let rendered = Rendered {
            limit: 50,
            tag: "\"t\"".into(),
            body: Bytes::from_static(b"{}"),
        };
        pages.rendered(1, 3, rendered);
        assert!(matches!(pages.get(1, 3, 50), Some(Cached::Rendered(r)) if r.tag == "\"t\""));
        pages.advance(1, 3, &[Arc::new(message(4))]);
        assert_eq!(ids(pages.get(1, 4, 50)), Some((vec![4, 3, 2, 1], false)));
        let inner = pages.lock();
        let held: usize = (1..=4).map(|id| message_bytes(&message(id))).sum();
        assert_eq!(inner.bytes, held, "the rendered body is no longer counted");
    }

    #[test]
    fn more_read_than_can_be_held_is_not_the_whole_channel() {
        let pages = Pages::default();
        pages.fill(1, &newest_first(1..=150), 200);
        assert!(pages.get(1, 150, 101).is_none());
        assert_eq!(
            ids(pages.get(1, 150, 100)).map(|(_, more)| more),
            Some(true)
        );
    }

    #[test]
    fn the_least_recently_used_channels_go_first() {
        let pages = Pages::default();
        for channel in 0..=MAX_CHANNELS as i64 {
            pages.fill(channel, &newest_first(1..=1), 51);
            if channel == 1 {
                pages.get(0, 1, 1);
            }
        }
        let inner = pages.lock();
        assert_eq!(inner.channels.len(), MAX_CHANNELS);
        assert!(inner.channels.contains_key(&0), "used since");
        assert!(!inner.channels.contains_key(&1), "the least recently used");
        let bytes: usize = inner.channels.values().map(|e| e.bytes).sum();
        assert_eq!(inner.bytes, bytes, "the byte count follows the entries");
    }
}
