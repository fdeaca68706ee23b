//! The reader: one task per instance that reads what is newer than each pending channel's cursor
//! and hands it to followers in id order. Reads are single-flight, so hints that arrive while one
//! is running are coalesced into the next.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::MissedTickBehavior;

use super::{
    db,
    shared::{Shared, count},
};
use crate::messages::model::Message;

/// Channels covered by one read.
const CHANNELS_PER_READ: usize = 500;
/// Messages read per channel per round; a channel with more is read again straight away.
const PER_CHANNEL: i64 = 100;
/// The first wait after a failed read; it doubles up to the sweep interval.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A channel taken for one read.
struct Taken {
    channel_id: i64,
    generation: u64,
    cursor: i64,
    hint_seq: u64,
    /// Read only because of a sweep or a reconnect, with no hint pending.
    unhinted: bool,
}

pub(super) async fn run(shared: Arc<Shared>) {
    let mut sweep = tokio::time::interval(shared.sweep_interval.max(Duration::from_millis(1)));
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    sweep.tick().await;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let taken = take_pending(&shared);
        if taken.is_empty() {
            tokio::select! {
                () = shared.wake.notified() => {}
                _ = sweep.tick() => shared.check_all(),
            }
            continue;
        }
        let (channels, cursors): (Vec<i64>, Vec<i64>) =
            taken.iter().map(|t| (t.channel_id, t.cursor)).unzip();
        count(&shared.stats.reads, 1);
        match db::newer_than(&shared.db, &channels, &cursors, PER_CHANNEL).await {
            Ok(rows) => {
                backoff = FIRST_BACKOFF;
                deliver(&shared, &taken, rows);
            }
            Err(error) => {
                tracing::warn!(%error, channels = taken.len(), "reading new stored messages failed; retrying");
                give_back(&shared, &taken);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(shared.sweep_interval.max(FIRST_BACKOFF));
            }
        }
    }
}

/// Up to [`CHANNELS_PER_READ`] pending channels with their cursors; their `check` is cleared.
fn take_pending(shared: &Shared) -> Vec<Taken> {
    let mut followed = shared.followed();
    followed
        .iter_mut()
        .filter(|(_, cursor)| cursor.pending())
        .take(CHANNELS_PER_READ)
        .map(|(&channel_id, cursor)| {
            let unhinted = cursor.hint_seq == cursor.read_seq;
            cursor.check = false;
            Taken {
                channel_id,
                generation: cursor.generation,
                cursor: cursor.last,
                hint_seq: cursor.hint_seq,
                unhinted,
            }
        })
        .collect()
}

/// A failed read: the channels stay pending.
fn give_back(shared: &Shared, taken: &[Taken]) {
    let mut followed = shared.followed();
    for t in taken {
        if let Some(cursor) = followed.get_mut(&t.channel_id) {
            cursor.check = true;
        }
    }
}

/// Advances cursors and hands the new messages to the hub and the feeds, in id order per channel.
fn deliver(shared: &Shared, taken: &[Taken], rows: Vec<Message>) {
    let mut by_channel: HashMap<i64, Vec<Message>> = HashMap::new();
    for row in rows {
        by_channel.entry(row.channel_id).or_default().push(row);
    }
    let mut fresh = Vec::new();
    {
        let mut followed = shared.followed();
        for t in taken {
            let rows = by_channel.remove(&t.channel_id).unwrap_or_default();
            // Nobody follows it any more: nothing to hand over.
            let Some(cursor) = followed.get_mut(&t.channel_id) else {
                continue;
            };
            if rows.len() as i64 == PER_CHANNEL {
                // A full page: more is waiting.
                cursor.hint_seq += 1;
            } else if cursor.generation == t.generation {
                // Complete as of a read that began after every hint up to `t.hint_seq`.
                cursor.read_seq = cursor.read_seq.max(t.hint_seq);
            }
            // A cursor made anew while this read ran may already be past some of these.
            let start = rows.partition_point(|m| m.id <= cursor.last);
            // The batch holds every message after the later of the read's start and the
            // cursor's (a cursor made anew while the read ran may start before the read did).
            let previous = cursor.last.max(t.cursor);
            if let Some(newest) = rows.last().filter(|m| m.id > cursor.last) {
                cursor.last = newest.id;
            }
            if t.unhinted && cursor.generation == t.generation {
                count(&shared.stats.unhinted, rows.len() - start);
            }
            let messages: Vec<_> = rows.into_iter().skip(start).map(Arc::new).collect();
            if !messages.is_empty() {
                fresh.push((t.channel_id, cursor.app_id, previous, messages));
            }
        }
    }
    for (channel_id, app_id, previous, messages) in fresh {
        count(&shared.stats.delivered, messages.len());
        // Every message of the channel after `previous`, in id order: the latest page held
        // for it (if it was at `previous`) moves forward without a query.
        shared.pages.advance(channel_id, previous, &messages);
        for message in &messages {
            shared.followers.stored(app_id, message);
            shared.feeds.publish(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use super::*;
    use crate::{
        config::Config,
        delivery::Delivery,
        realtime::engine::{Engine, hub::Hub},
    };

    fn delivery() -> Delivery {
        let db = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        Delivery::new(
            db,
            Arc::new(Engine::Memory(Hub::default())),
            &Config::default(),
        )
    }

    fn follow_at(delivery: &Delivery, channel_id: i64, last: i64) {
        let shared = &delivery.shared;
        let generation = shared.generations.fetch_add(1, Ordering::Relaxed);
        shared.followed().insert(
            channel_id,
            super::super::Cursor {
                generation,
                app_id: crate::apps::DEFAULT_APP,
                last,
                followers: 1,
                hint_seq: 0,
                read_seq: 0,
                check: false,
            },
        );
    }

    #[tokio::test]
    async fn a_read_that_outlived_its_cursor_does_not_leave_the_new_one_pending() {
        let delivery = delivery();
        let shared = &delivery.shared;
        follow_at(&delivery, 7, 10);
        for id in 11..=13 {
            shared.hint(7, id);
        }
        let taken = take_pending(shared);
        assert_eq!(taken.len(), 1);

        // While that read runs, the last follower leaves and a new one arrives.
        shared.followed().remove(&7);
        follow_at(&delivery, 7, 10);
        deliver(shared, &taken, Vec::new());
        assert!(
            take_pending(shared).is_empty(),
            "the new cursor has nothing pending: no endless re-reads"
        );

        shared.hint(7, 14);
        let taken = take_pending(shared);
        assert_eq!(taken.len(), 1, "a later hint is still heard");
        deliver(shared, &taken, Vec::new());
        assert!(take_pending(shared).is_empty());
    }

    #[tokio::test]
    async fn a_held_page_never_moves_across_messages_a_read_did_not_cover() {
        let delivery = delivery();
        let shared = &delivery.shared;
        // A page held at 20; a follower's cursor at 25 reads what is newer.
        let held: Vec<_> = (1..=20).rev().map(|id| Message::sample(7, id)).collect();
        shared.pages.fill(7, &held, 51);
        follow_at(&delivery, 7, 25);
        shared.hint(7, 30);
        let taken = take_pending(shared);
        assert_eq!(taken[0].cursor, 25);
        // Meanwhile that follower leaves, and another arrives whose cursor starts at 20.
        shared.followed().remove(&7);
        follow_at(&delivery, 7, 20);
        deliver(
            shared,
            &taken,
            (26..=30).map(|id| Message::sample(7, id)).collect(),
        );
        assert!(
            shared.pages.get(7, 30, 10).is_none(),
            "21-25 were never read: the page held at 20 must not move to 30"
        );

        // A batch that does start at the page's head moves it.
        let held: Vec<_> = (1..=30).rev().map(|id| Message::sample(7, id)).collect();
        shared.pages.fill(7, &held, 51);
        shared.hint(7, 31);
        let taken = take_pending(shared);
        deliver(shared, &taken, vec![Message::sample(7, 31)]);
        assert!(shared.pages.get(7, 31, 10).is_some());
    }

    #[tokio::test]
    async fn hints_at_or_below_the_cursor_and_for_unfollowed_channels_are_ignored() {
        let delivery = delivery();
        let shared = &delivery.shared;
        follow_at(&delivery, 7, 10);
        shared.hint(7, 10);
        shared.hint(8, 99);
        assert!(take_pending(shared).is_empty());
        shared.hint(7, 11);
        let taken = take_pending(shared);
        assert_eq!(taken.len(), 1);
        shared.hint(7, 12);
        deliver(shared, &taken, Vec::new());
        assert_eq!(
            take_pending(shared).len(),
            1,
            "a hint that came during the read is read again"
        );
    }
}
