//! The doorbell between instances: PostgreSQL `LISTEN/NOTIFY` on `channeld_messages`.
//!
//! A payload is a list of hints, `<channel id>:<message id>` joined by commas. Hints are
//! coalesced per channel while a notification is in flight and sent after the commit, never
//! inside the insert's transaction. Receivers only learn which channels to read again.
//!
//! Instances find each other on the same channel: each one that starts listening announces
//! `hello:<node>`, and each other instance answers `here:<node>`. An instance sends hints only
//! once it has heard another; alone, it sends none. A hello it missed (its own listener was down)
//! is made up for when its listener comes back and says hello itself. Messages posted before an
//! instance hears of a newcomer reach the newcomer's followers through its sweep.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use sqlx::postgres::{PgListener, PgPoolOptions};

use super::shared::{Shared, count};

/// The PostgreSQL notification channel every instance listens on.
pub const CHANNEL: &str = "channeld_messages";
/// The `application_name` of each instance's listening connection, so operators can find it.
pub const LISTENER_APPLICATION_NAME: &str = "channeld-listener";
/// Below PostgreSQL's 8,000-byte payload limit.
const MAX_PAYLOAD: usize = 7_900;
/// The first wait before reconnecting a lost listener; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Sends queued hints, one notification round trip at a time; hints queued meanwhile share the
/// next. A failed send is logged and dropped: other instances find those messages by their sweep.
pub(super) async fn send(shared: Arc<Shared>) {
    loop {
        shared.send_hints.notified().await;
        let hints: Vec<(i64, i64)> = shared.outgoing().drain().collect();
        if hints.is_empty() {
            continue;
        }
        let payloads = encode(&hints);
        match notify(&shared.db, &payloads).await {
            Ok(sent) => count(&shared.stats.notifications_sent, sent as usize),
            Err(error) => tracing::warn!(
                %error,
                hints = hints.len(),
                "could not notify other instances; their sweep will find these messages"
            ),
        }
    }
}

/// Listens for other instances' hints on a connection of its own. Whenever listening (re)starts,
/// every followed channel is re-read, since hints sent while it was away are lost.
pub(super) async fn listen(shared: Arc<Shared>) {
    let options = shared
        .db
        .connect_options()
        .as_ref()
        .clone()
        .application_name(LISTENER_APPLICATION_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    let mut backoff = FIRST_BACKOFF;
    let mut first = true;
    loop {
        let mut listener = match connect(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "could not listen for other instances' messages; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        if !first {
            count(&shared.stats.listener_reconnects, 1);
        }
        first = false;
        shared.check_all();
        announce(&shared, &mut listener, HELLO).await;
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let payload = notification.payload();
                    match heard(&shared, payload) {
                        Announcement::None => {}
                        Announcement::Heard => continue,
                        Announcement::Answer => {
                            announce(&shared, &mut listener, HERE).await;
                            continue;
                        }
                    }
                    for (channel_id, message_id) in decode(payload) {
                        count(&shared.stats.hints_received, 1);
                        shared.hint(channel_id, message_id);
                    }
                }
                // The connection was lost and made anew (listening again): catch up, and tell
                // the others, whose hellos may have been missed meanwhile.
                Ok(None) => {
                    count(&shared.stats.listener_reconnects, 1);
                    shared.check_all();
                    announce(&shared, &mut listener, HELLO).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "lost the connection listening for other instances' messages");
                    break;
                }
            }
        }
    }
}

const HELLO: &str = "hello";
const HERE: &str = "here";

/// What a notification is, besides hints.
#[derive(Debug, PartialEq, Eq)]
enum Announcement {
    /// Not an announcement: hints.
    None,
    /// An announcement that needs no answer (this instance's own, or a `here`).
    Heard,
    /// Another instance's `hello`: answer `here`.
    Answer,
}

/// Handles an announcement; another instance's makes this one send hints from then on.
fn heard(shared: &Shared, payload: &str) -> Announcement {
    let Some((kind, node)) = payload.split_once(':') else {
        return Announcement::None;
    };
    let answer = match kind {
        HELLO => Announcement::Answer,
        HERE => Announcement::Heard,
        _ => return Announcement::None,
    };
    if node == shared.node {
        return Announcement::Heard;
    }
    if !shared.others_listen.swap(true, Ordering::Relaxed) {
        tracing::info!("another instance listens on this database; notifying it after commits");
    }
    answer
}

/// Says `hello` or `here` on the listening connection; a failure only delays discovery.
async fn announce(shared: &Shared, listener: &mut PgListener, kind: &str) {
    let payloads = [format!("{kind}:{}", shared.node)];
    if let Err(error) = notify(&mut *listener, &payloads).await {
        tracing::warn!(%error, "could not announce this instance to the others");
    }
}

/// One round trip that sends every payload on [`CHANNEL`].
async fn notify(db: impl sqlx::PgExecutor<'_>, payloads: &[String]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(pg_notify($1, payload)) AS "sent!" FROM unnest($2::text[]) AS payload"#,
        CHANNEL,
        payloads,
    )
    .fetch_one(db)
    .await
}

async fn connect(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Hints as notification payloads, each under PostgreSQL's size limit.
fn encode(hints: &[(i64, i64)]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for (channel_id, message_id) in hints {
        let hint = format!("{channel_id}:{message_id}");
        if !current.is_empty() && current.len() + 1 + hint.len() > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&hint);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// The hints in a payload; anything malformed is skipped (a hint is only a reason to look).
fn decode(payload: &str) -> impl Iterator<Item = (i64, i64)> + '_ {
    payload.split(',').filter_map(|hint| {
        let (channel, message) = hint.split_once(':')?;
        Some((channel.trim().parse().ok()?, message.trim().parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_round_trip_through_payloads_under_the_size_limit() {
        let hints: Vec<(i64, i64)> = (0..2_000).map(|n| (n, n * 1_000_003)).collect();
        let payloads = encode(&hints);
        assert!(payloads.len() > 1, "2,000 hints need several payloads");
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let decoded: Vec<(i64, i64)> = payloads.iter().flat_map(|p| decode(p)).collect();
        assert_eq!(decoded, hints);
    }

    #[test]
    fn malformed_hints_are_skipped() {
        let decoded: Vec<_> = decode("7:42,junk,8:,:9,x:1,12:13").collect();
        assert_eq!(decoded, vec![(7, 42), (12, 13)]);
    }
}
