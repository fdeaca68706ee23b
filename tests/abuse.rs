//! Bounded under abuse: what a hostile or broken client can do to one connection stays with that
//! connection.

mod common;

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use channeld::auth::Scope;
use common::{DbProxy, TestApp, assert_error, call, eventually};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

async fn realtime_key(app: &TestApp) -> String {
    app.key(&[
        Scope::Subscribe,
        Scope::Presence,
        Scope::Publish,
        Scope::Send,
    ])
    .await
}

#[sqlx::test]
async fn a_connection_whose_task_panics_leaves_its_channels(db: PgPool) {
    let mut config = common::test_config();
    config.faults.panic_on_request_id = Some("boom".into());
    let app = TestApp::spawn_config(db, config).await;
    let key = realtime_key(&app).await;
    let mut watcher = app.peer(&key, "watcher", json!({})).await;
    watcher.subscribe("room").await;
    watcher.recv().await; // the empty roster
    let mut victim = app.peer(&key, "victim", json!({})).await;
    victim.subscribe("room").await;
    assert_eq!(
        watcher.recv().await,
        json!({"type": "presence", "channel": "room", "joined": [{"peerId": "victim"}], "left": []})
    );

    victim
        .send(json!({"type": "ping", "requestId": "boom"}))
        .await;
    assert_eq!(
        watcher.recv().await,
        json!({"type": "presence", "channel": "room", "joined": [], "left": [{"peerId": "victim"}]}),
        "the peer whose task died leaves"
    );
    assert_eq!(app.state.realtime.engine.hub().connection_count(), 1);
    assert!(
        app.state
            .realtime
            .engine
            .hub()
            .peers("room")
            .iter()
            .all(|(peer, _)| &**peer != "victim")
    );
}

#[sqlx::test]
async fn a_frozen_database_answers_503_within_the_deadline_and_recovers(db: PgPool) {
    let options = (*db.connect_options()).clone();
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let proxy = DbProxy::start(target.parse().expect("tcp database address")).await;
    let server_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_lazy_with(options.host("127.0.0.1").port(proxy.addr.port()));
    let mut config = common::test_config();
    config.db_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_full(db, server_pool, config).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "frozen").await;
    let path = format!("/v1/channels/{channel}");

    proxy.hold();
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (
            Method::POST,
            format!("{path}/messages"),
            Some(json!({"content": "into the freeze"})),
        ),
    ] {
        let started = Instant::now();
        let mut request = app
            .request(method.clone(), &path, &key)
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, body) = call(request).await;
        assert_error(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{method} {path} answered after {:?}, past the 1 s deadline",
            started.elapsed()
        );
    }

    proxy.release();
    eventually(
        Duration::from_secs(10),
        "200 again after the thaw",
        || async { app.get(&path, &key).await.0 == StatusCode::OK },
    )
    .await;
}

#[sqlx::test]
async fn a_stalled_subscriber_is_dropped_once_its_queued_bytes_pass_the_bound(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.outbound_bytes = 1024 * 1024;
    config.realtime.frame_rate = 10_000;
    config.realtime.frame_burst = 10_000;
    let app = TestApp::spawn_config(db, config).await;
    let key = realtime_key(&app).await;
    let mut stalled = app
        .peer(&key, "stalled", json!({"permissions": ["subscribe"]}))
        .await;
    stalled.subscribe("firehose").await;
    let mut publisher = app
        .peer(&key, "publisher", json!({"permissions": ["publish"]}))
        .await;

    // ~60 KB frames: far under the 4,096-frame bound, far over 1 MiB in bytes. The stalled
    // client reads nothing from here on.
    let data = "x".repeat(60_000);
    let stats = &app.state.realtime.engine.hub().stats;
    let mut most_queued = 0;
    for _ in 0..600 {
        publisher
            .send(json!({"type": "publish", "channel": "firehose", "data": data}))
            .await;
        most_queued = most_queued.max(app.state.realtime.engine.hub().queued_bytes());
        if stats.slow_consumer_disconnects.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    eventually(
        Duration::from_secs(10),
        "the stalled subscriber is dropped",
        || async { stats.slow_consumer_disconnects.load(Ordering::Relaxed) > 0 },
    )
    .await;
    assert!(
        most_queued <= 1024 * 1024 + 64 * 1024,
        "at most the bound (and one frame) was queued: {most_queued} bytes"
    );
    eventually(
        Duration::from_secs(10),
        "queued bytes are forgotten with the connection",
        || async { app.state.realtime.engine.hub().queued_bytes() == 0 },
    )
    .await;
    // The close frame sits behind the backlog the client never read; reading it now, the client
    // finds the connection ended rather than held open.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = stalled.stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stalled connection is over");
}

/// This process's resident memory in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[sqlx::test]
async fn resumed_subscriptions_that_never_read_hold_little_memory_and_time_out(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.idle_timeout = Duration::from_secs(2);
    // A pool of the server's own, as a served process has, rather than a share of the test
    // harness's.
    let app = TestApp::spawn_instance(db, config).await;
    let key = app.key(&[Scope::ChannelsWrite, Scope::Subscribe]).await;
    let channel = app.channel(&key, "heavy history").await;
    // 1,000 messages of 64 KiB: 64 MiB of history to replay to each subscriber.
    sqlx::query(
        "INSERT INTO messages (channel_id, content, sender_type) \
         SELECT $1, repeat(chr(65 + g % 26), 65536), 'api' FROM generate_series(1, 1000) g",
    )
    .bind(channel)
    .execute(&app.db)
    .await
    .unwrap();

    let before = rss_kib();
    let mut readers = Vec::new();
    for n in 0..10 {
        let mut ws = app
            .peer(
                &key,
                &format!("never-reads-{n}"),
                json!({"permissions": ["subscribe"]}),
            )
            .await;
        ws.send(json!({"type": "subscribe", "channel": channel.to_string(), "since": 0}))
            .await;
        readers.push(ws); // and never read again
    }
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.state.realtime.engine.hub().connection_count() > 0 {
        peak = peak.max(rss_kib());
        if Instant::now() > deadline {
            let busy: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT state, wait_event FROM pg_stat_activity WHERE datname = current_database()",
            )
            .fetch_all(&app.db)
            .await
            .unwrap_or_default();
            panic!(
                "{} stalled replays still open after the idle timeout (server pool: {} open, {} idle; database sessions: {busy:?})",
                app.state.realtime.engine.hub().connection_count(),
                app.state.db.size(),
                app.state.db.num_idle(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 200,
        "ten stalled replays of 64 MiB each grew memory by {grown_mib} MiB"
    );
    drop(readers);
}

/// Sends one raw data frame, as a broken or hostile client could.
async fn send_frame(ws: &mut common::Ws, payload: &'static [u8], opcode: Data, is_final: bool) {
    ws.stream
        .send(Message::Frame(Frame::message(
            payload,
            OpCode::Data(opcode),
            is_final,
        )))
        .await
        .expect("send a raw frame");
}

#[sqlx::test]
async fn protocol_violations_close_with_their_codes_and_the_close_frame_arrives(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;

    let mut ws = app.peer(&key, "bad-utf8", json!({})).await;
    send_frame(
        &mut ws,
        b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}",
        Data::Text,
        true,
    )
    .await;
    assert_eq!(ws.closed().await, 1007, "invalid UTF-8 in a text frame");

    let mut ws = app.peer(&key, "orphan-continuation", json!({})).await;
    send_frame(&mut ws, b"nothing to continue", Data::Continue, true).await;
    assert_eq!(
        ws.closed().await,
        1002,
        "a continuation with nothing to continue"
    );
}

#[sqlx::test]
async fn a_client_close_is_answered(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;
    let mut ws = app.peer(&key, "polite", json!({})).await;
    ws.stream.close(None).await.expect("send a Close");
    let answer = tokio::time::timeout(Duration::from_secs(5), ws.stream.next())
        .await
        .expect("an answer within 5 s");
    assert!(
        matches!(answer, Some(Ok(Message::Close(_)))),
        "the server answers the client's Close: {answer:?}"
    );
}

#[sqlx::test]
async fn over_the_rate_every_earned_reply_and_then_4011_reach_the_client(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.frame_rate = 5;
    config.realtime.frame_burst = 50;
    let app = TestApp::spawn_config(db, config).await;
    let key = realtime_key(&app).await;
    let mut ws = app.peer(&key, "burst", json!({})).await;
    // Far past the burst, sent before reading anything: the server closes with input unread.
    for n in 0..2_000 {
        ws.stream
            .feed(Message::text(
                json!({"type": "ping", "requestId": format!("r{n}")}).to_string(),
            ))
            .await
            .expect("send");
    }
    ws.stream.flush().await.expect("flush");
    let mut pongs = 0;
    let code = loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.stream.next())
            .await
            .expect("a frame within 5 s");
        match next {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(frame["type"], "pong");
                assert_eq!(
                    frame["requestId"],
                    format!("r{pongs}"),
                    "replies in order, none lost"
                );
                pongs += 1;
            }
            Some(Ok(Message::Close(Some(close)))) => break u16::from(close.code),
            Some(Ok(_)) => {}
            other => panic!("after {pongs} pongs, no close frame but {other:?}"),
        }
    };
    assert_eq!(code, 4011);
    assert!(pongs >= 50, "the burst's replies arrived first: {pongs}");
}
