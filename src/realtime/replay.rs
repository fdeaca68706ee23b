//! Resumed subscriptions (`since`) replay history a page at a time from inside the connection's
//! loop, so the replay is paced by the client's reading, holds at most one page in memory, and
//! leaves heartbeats, the idle timeout, token expiry and close signals running.
//!
//! While a channel replays, its live stored messages are not written but remembered by id: the
//! replay goes on reading the database until it has passed the newest one seen, then the
//! subscription switches to live, skipping what the replay already sent. Live frames of one
//! channel arrive in id order, so nothing is missed and nothing is repeated across the switch.

use axum::extract::ws::Utf8Bytes;

use super::stored::stored_frame;
use super::{
    connection::{Connection, End, Replay},
    protocol::close,
};
use crate::messages::{Filter, Page, page_filtered};

/// Messages read and written per replay step: at most 16 × 64 KiB in memory at once.
const PAGE: i64 = 16;
/// Pages a replay may take before it counts as a slow consumer: four times what the largest
/// backlog needs, the rest being live messages that kept arriving while it ran.
const MAX_PAGES: u32 = 4 * (1000 / PAGE as u32 + 1);

impl Connection {
    /// Whether some subscription still replays history.
    pub(super) fn replaying(&self) -> bool {
        self.persistent.values().any(|p| p.replay.is_some())
    }

    /// Replays one page of one channel's history, or switches it to live once caught up.
    pub(super) async fn replay_step(&mut self) -> Option<End> {
        // Channels replay in turn, so that one busy channel cannot starve the others.
        let replaying: Vec<(i64, Replay)> = self
            .persistent
            .iter()
            .filter_map(|(id, p)| p.replay.map(|r| (*id, r)))
            .collect();
        self.replay_turn = self.replay_turn.wrapping_add(1);
        let (channel_id, replay) = *replaying.get(self.replay_turn % replaying.len().max(1))?;
        if replay.pages >= MAX_PAGES {
            // Live messages come faster than this client reads them: a slow consumer.
            return Some(End::Close(close::POLICY, "slow consumer"));
        }
        let filter = Filter {
            mentions: self
                .persistent
                .get(&channel_id)
                .and_then(|entry| entry.mentions.clone()),
            thread: None,
        };
        let page = Page::After(replay.after);
        let rows = match page_filtered(&self.state.db, channel_id, page, PAGE, &filter).await {
            Ok(rows) => rows,
            Err(error) => {
                // The ack promised a replay it cannot finish: the client reconnects and resumes
                // with `since`, losing nothing.
                tracing::warn!(%error, "replaying history failed; closing the connection");
                return Some(End::Close(close::INTERNAL, "could not replay history"));
            }
        };
        let mut after = rows.last().map_or(replay.after, |m| m.id);
        let mut caught_up = (rows.len() as i64) < PAGE && after >= replay.live_max;
        if !filter.is_empty() && (rows.len() as i64) < PAGE {
            // Every message held back (up to `live_max`) had committed before this read, which
            // found all it wants among them: the others need not be waited for.
            after = after.max(replay.live_max);
            caught_up = true;
        }
        if let Some(entry) = self.persistent.get_mut(&channel_id) {
            if caught_up {
                entry.replay = None;
                entry.replayed = Some(after);
            } else if let Some(replay) = entry.replay.as_mut() {
                replay.after = after;
                replay.pages += 1;
            }
        }
        let frames: Vec<Utf8Bytes> = rows.iter().map(|m| stored_frame(m).frame).collect();
        self.send_all(frames).await
    }
}
