//! `/metrics` as dashboards read it: every metric family with its type and help text, pinned, on
//! both engines, and every family carrying a sample once there was traffic.

mod common;

use std::collections::BTreeSet;

use channeld::auth::Scope;
use common::{TestApp, base_config, cluster};
use serde_json::json;
use sqlx::PgPool;

/// Every family on every instance: (family, type, help). A counter's samples are named
/// `<family>_total`; a histogram's `<family>_bucket`, `_sum` and `_count`.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "channeld_consumer_pending",
        "gauge",
        "Messages waiting to be claimed, by consumer group (never delivered, nacked, or whose lease expired).",
    ),
    (
        "channeld_consumer_in_flight",
        "gauge",
        "Messages leased to a member now, by consumer group.",
    ),
    (
        "channeld_consumer_dead",
        "gauge",
        "Dead letters, by consumer group.",
    ),
    (
        "channeld_consumer_redeliveries",
        "counter",
        "Consumer-group messages this instance handed out again (a lease expired or was nacked).",
    ),
    (
        "channeld_webhook_attempts",
        "counter",
        "Webhook delivery attempts by this instance, by result: delivered (2xx), retried (failed, another attempt is scheduled), failed (failed, the schedule ran out), gone (410, the webhook was disabled).",
    ),
    (
        "channeld_webhook_presence_dropped",
        "counter",
        "Presence changes not recorded for webhooks because their queue was full.",
    ),
    (
        "channeld_webhook_queue_depth",
        "gauge",
        "Webhook deliveries pending (retries waiting included) and events not yet dispatched, across all instances.",
    ),
    (
        "channeld_webhook_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest pending webhook delivery or undispatched event (0 when none).",
    ),
    (
        "channeld_http_requests",
        "counter",
        "HTTP requests by matched route, method and status.",
    ),
    (
        "channeld_http_request_duration_seconds",
        "histogram",
        "HTTP request latency.",
    ),
    (
        "channeld_websocket_frames_in",
        "counter",
        "Frames received from WebSocket clients.",
    ),
    (
        "channeld_rate_limited_requests",
        "counter",
        "Requests refused with 429 by per-key limits.",
    ),
    (
        "channeld_db_pool_connections",
        "gauge",
        "Open database connections in the pool.",
    ),
    (
        "channeld_db_pool_idle",
        "gauge",
        "Idle database connections in the pool.",
    ),
    (
        "channeld_db_pool_max",
        "gauge",
        "Largest pool size allowed.",
    ),
    (
        "channeld_db_pool_in_use",
        "gauge",
        "Database connections checked out right now.",
    ),
    (
        "channeld_db_unavailable",
        "counter",
        "Requests answered 503: database unreachable or no pooled connection within the acquire timeout.",
    ),
    (
        "channeld_http_connections_timed_out",
        "counter",
        "HTTP connections closed because request headers did not arrive in time (idle keep-alive connections included).",
    ),
    (
        "channeld_http_requests_in_flight",
        "gauge",
        "HTTP requests being answered, streaming responses included.",
    ),
    (
        "channeld_message_waiters",
        "gauge",
        "Long polls, MCP wait_for_messages calls and consumer-group claims waiting for a message (none holds a database connection).",
    ),
    (
        "channeld_http_accept_errors",
        "counter",
        "Failed accepts (e.g. out of file descriptors); the server pauses briefly and goes on.",
    ),
    (
        "channeld_delivery_followed_channels",
        "gauge",
        "Persistent channels followed through this instance (WebSocket, SSE, long poll).",
    ),
    (
        "channeld_message_batches",
        "counter",
        "Statements that stored several posted messages together (group commit).",
    ),
    (
        "channeld_messages_batched",
        "counter",
        "Posted messages stored together with others, by those statements.",
    ),
    (
        "channeld_message_batches_failed",
        "counter",
        "Statements storing posts together that PostgreSQL refused; each of their posts was then stored alone.",
    ),
    (
        "channeld_posts_waited_out",
        "counter",
        "Posted messages that waited their whole wait (100 ms) for an insert statement to finish and were then stored alone.",
    ),
    (
        "channeld_posts_waiting",
        "gauge",
        "Posted messages waiting for one of this instance's insert statements to finish, to be stored together.",
    ),
    (
        "channeld_page_cache_hits",
        "counter",
        "Latest pages of messages answered from memory after a one-row check of the channel's newest id.",
    ),
    (
        "channeld_page_cache_misses",
        "counter",
        "Latest pages of messages read from the database (not held, or the channel moved on).",
    ),
    (
        "channeld_delivery_reads",
        "counter",
        "Reads of followed channels' new stored messages.",
    ),
    (
        "channeld_delivery_messages",
        "counter",
        "Stored messages handed to this instance's live followers.",
    ),
    (
        "channeld_delivery_unhinted_messages",
        "counter",
        "Stored messages no hint announced, found by the sweep or after the listener reconnected.",
    ),
    (
        "channeld_delivery_hints_received",
        "counter",
        "Hints received through PostgreSQL LISTEN (every instance's posts, this one's included).",
    ),
    (
        "channeld_delivery_notifications_sent",
        "counter",
        "NOTIFY payloads sent after commits (hints coalesce into them).",
    ),
    (
        "channeld_delivery_other_instances",
        "gauge",
        "1 once another instance was heard on this database (hints are then sent after commits).",
    ),
    (
        "channeld_delivery_listener_reconnects",
        "counter",
        "Times the LISTEN connection was lost and made anew.",
    ),
    (
        "channeld_websocket_connections",
        "gauge",
        "Open WebSocket connections.",
    ),
    (
        "channeld_websocket_subscriptions",
        "gauge",
        "Channel subscriptions across connections.",
    ),
    (
        "channeld_websocket_frames_out",
        "counter",
        "Frames queued to WebSocket clients.",
    ),
    (
        "channeld_websocket_queued_bytes",
        "gauge",
        "Bytes queued to WebSocket connections, not yet written.",
    ),
    (
        "channeld_websocket_slow_consumer_disconnects",
        "counter",
        "Connections dropped for not keeping up.",
    ),
];

/// The Redis engine's own families, on top of [`FAMILIES`].
const REDIS_FAMILIES: &[(&str, &str, &str)] = &[
    (
        "channeld_redis_up",
        "gauge",
        "1 when this instance is connected and subscribed to Redis (cluster mode).",
    ),
    (
        "channeld_redis_errors",
        "counter",
        "Redis commands and connections that failed.",
    ),
    (
        "channeld_redis_pubsub_connects",
        "counter",
        "Times the Redis pub/sub connection was made and subscribed (1 plus reconnects).",
    ),
    (
        "channeld_cluster_roster_reads",
        "counter",
        "Rosters read again from Redis after a gap in presence events or a reconnect.",
    ),
    (
        "channeld_cluster_instances_reaped",
        "counter",
        "Instances this one removed from the cluster after their heartbeat lapsed.",
    ),
    (
        "channeld_cluster_publishes_lost",
        "counter",
        "WebSocket publishes lost because Redis failed while they were on their way.",
    ),
    (
        "channeld_cluster_messages_in",
        "counter",
        "Payloads received from Redis pub/sub.",
    ),
];

/// (family, type, help) from the `# HELP` and `# TYPE` lines of an exposition.
fn families(text: &str) -> BTreeSet<(String, String, String)> {
    let mut found = BTreeSet::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(help) = line.strip_prefix("# HELP ") else {
            continue;
        };
        let (name, help) = help.split_once(' ').expect("a name and a help text");
        let kind = lines
            .next()
            .and_then(|l| l.strip_prefix(&format!("# TYPE {name} ")))
            .unwrap_or_else(|| panic!("a TYPE line after HELP for {name}"));
        found.insert((name.to_owned(), kind.to_owned(), help.to_owned()));
    }
    found
}

fn pinned(lists: &[&[(&str, &str, &str)]]) -> BTreeSet<(String, String, String)> {
    lists
        .iter()
        .flat_map(|list| list.iter())
        .map(|(n, k, h)| ((*n).to_owned(), (*k).to_owned(), (*h).to_owned()))
        .collect()
}

/// The value of the sample line `series`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series}:\n{text}"))
}

/// The traffic of [`scrape_after_traffic`] moved the samples it drives.
fn assert_traffic_counted(text: &str) {
    for series in [
        "channeld_websocket_frames_in_total",
        "channeld_websocket_connections",
        "channeld_websocket_subscriptions",
        "channeld_delivery_followed_channels",
        "channeld_db_pool_connections",
    ] {
        assert!(value(text, series) > 0.0, "{series} moved:\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"channeld_http_requests_total{route="/v1/channels",method="POST",status="201"} "#
        )),
        "the POST is counted under its route:\n{text}"
    );
}

/// Each family has a sample line once a request, a WebSocket frame and a post went through.
fn assert_every_family_has_a_sample(text: &str, families: &BTreeSet<(String, String, String)>) {
    for (name, kind, _) in families {
        let sample = match kind.as_str() {
            "counter" => format!("{name}_total"),
            "histogram" => format!("{name}_count"),
            _ => name.clone(),
        };
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{sample} "))
                    || l.starts_with(&format!("{sample}{{"))),
            "no sample of {name} ({kind}):\n{text}"
        );
    }
}

async fn scrape_after_traffic(app: &TestApp) -> String {
    let key = app
        .key(&[Scope::ChannelsRead, Scope::ChannelsWrite, Scope::Subscribe])
        .await;
    let channel = app.channel(&key, "metrics").await;
    let mut ws = app.peer(&key, "watcher", json!({})).await;
    // Subscribed to the channel's live stream: it is followed through this instance.
    let frame = ws
        .request(json!({"type": "subscribe", "channel": channel.to_string(), "requestId": "s"}))
        .await;
    assert_eq!(frame["type"], "ack", "{frame}");
    // A consumer group with one message waiting: its gauges are shown by app, channel and name.
    let (status, body) = app
        .post(
            &format!("/v1/channels/{channel}/consumers"),
            &key,
            json!({"name": "workers"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    app.message(&key, channel, "hello").await;
    let text = app.metrics_text().await;
    assert!(
        text.contains(&format!(
            "channeld_consumer_pending{{app=\"default\",channel_id=\"{channel}\",consumer=\"workers\"}} 1"
        )),
        "{text}"
    );
    assert_traffic_counted(&text);
    text
}

#[sqlx::test]
async fn the_exposition_is_pinned_on_the_in_memory_engine(db: PgPool) {
    let app = TestApp::spawn_config(db, base_config()).await;
    let text = scrape_after_traffic(&app).await;
    assert!(text.ends_with("# EOF\n"), "a whole OpenMetrics exposition");
    let found = families(&text);
    assert_eq!(found, pinned(&[FAMILIES]));
    assert_every_family_has_a_sample(&text, &found);
}

#[sqlx::test]
async fn the_exposition_is_pinned_on_the_redis_engine(db: PgPool) {
    let config = cluster::cluster_config(
        &cluster::fresh_prefix(),
        &cluster::redis_url(),
        std::time::Duration::from_secs(2),
    );
    let app = TestApp::spawn_config(db, config).await;
    let text = scrape_after_traffic(&app).await;
    let found = families(&text);
    assert_eq!(found, pinned(&[FAMILIES, REDIS_FAMILIES]));
    assert_every_family_has_a_sample(&text, &found);
}
