//! Live delivery of stored messages follows what PostgreSQL committed, not the request that
//! posted it: a client that hangs up after the commit, a poster whose doorbell never rang, a
//! second instance on the same database, and a listener connection killed mid-run.

mod common;

use std::time::{Duration, Instant};

use channeld::{auth::Scope, config::Config, delivery::LISTENER_APPLICATION_NAME};
use common::{DbProxy, Events, TestApp, Ws, eventually, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// A sweep too slow to rescue anything within a test: what arrives came through hints and
/// listener re-reads.
fn without_sweep() -> Config {
    let mut config = common::test_config();
    config.realtime.delivery_sweep_interval = Duration::from_secs(600);
    config
}

/// The ids of the next `count` stored-message frames of `channel`, in arrival order.
async fn ws_ids(ws: &mut Ws, channel: i64, count: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let frame = ws.recv().await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["channel"], channel.to_string(), "{frame}");
        ids.push(frame["data"]["id"].as_i64().expect("stored message id"));
    }
    ids
}

async fn sse_ids(events: &mut Events, count: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let (id, data) = events.next_message().await;
        assert_eq!(data["id"], id);
        ids.push(id);
    }
    ids
}

/// A task posting `count` messages to `channel` through `app`, one after another.
fn writer(
    app: &TestApp,
    key: &str,
    channel: i64,
    w: usize,
    count: usize,
) -> tokio::task::JoinHandle<()> {
    let (http, base, key) = (app.http.clone(), app.base.clone(), key.to_owned());
    tokio::spawn(async move {
        for n in 0..count {
            let (status, body) = common::call(
                http.post(format!("{base}/v1/channels/{channel}/messages"))
                    .bearer_auth(&key)
                    .json(&json!({"content": format!("writer {w}-{n}")})),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    })
}

/// One long poll after `after` waiting up to 20 s: it must answer with messages, not time out.
async fn one_long_poll(
    app: &TestApp,
    key: &str,
    channel: i64,
    after: i64,
) -> tokio::task::JoinHandle<Vec<i64>> {
    let request = app.request(
        Method::GET,
        &format!("/v1/channels/{channel}/messages?after={after}&wait=20"),
        key,
    );
    tokio::spawn(async move {
        let (status, body) = common::call(request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ids: Vec<i64> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        assert!(!ids.is_empty(), "the long poll was woken, not timed out");
        ids
    })
}

/// Follows by long polls from `after` until `count` messages arrived; returns their ids.
async fn long_poll_ids(
    http: reqwest::Client,
    base: String,
    key: String,
    channel: i64,
    mut after: i64,
    count: usize,
) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.len() < count {
        assert!(
            Instant::now() < deadline,
            "long poll stuck at {} of {count}",
            ids.len()
        );
        let url = format!("{base}/v1/channels/{channel}/messages?after={after}&wait=5&limit=100");
        let (status, body) = common::call(http.get(url).bearer_auth(&key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for message in body["messages"].as_array().unwrap() {
            let id = message["id"].as_i64().unwrap();
            ids.push(id);
            after = id;
        }
    }
    ids
}

/// A WebSocket peer subscribed to persistent channel `channel`, resumed from `since` if given.
async fn ws_follower(app: &TestApp, key: &str, peer: &str, channel: i64, since: Option<i64>) -> Ws {
    let mut ws = app
        .peer(key, peer, json!({"permissions": ["subscribe"]}))
        .await;
    let mut frame = json!({"type": "subscribe", "channel": channel.to_string(), "requestId": "s"});
    if let Some(since) = since {
        frame["since"] = json!(since);
    }
    let ack = ws.request(frame).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ws
}

/// Waits until each instance has heard the other, and so notifies it after commits (which also
/// means both are listening).
async fn acquainted(a: &TestApp, b: &TestApp) {
    eventually(
        Duration::from_secs(10),
        "the instances hear of each other",
        || async { a.state.delivery.other_instances() && b.state.delivery.other_instances() },
    )
    .await;
}

/// Waits until `count` event streams and long polls wait on the channel's feed.
async fn wait_for_feed_followers(app: &TestApp, channel: i64, count: usize) {
    eventually(
        Duration::from_secs(10),
        &format!("{count} followers wait"),
        || async { app.state.delivery.feeds().followers(channel) >= count },
    )
    .await;
}

/// Waits until exactly `count` listener connections are open on this test's database.
async fn listeners_open(db: &PgPool, count: i64) {
    eventually(
        Duration::from_secs(10),
        &format!("exactly {count} listeners open"),
        || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND datname = current_database()",
            )
            .bind(LISTENER_APPLICATION_NAME)
            .fetch_one(db)
            .await
            .unwrap();
            open == count
        },
    )
    .await;
}

/// Sends a post over a raw socket, waits until it is committed, and hangs up before any answer.
async fn post_and_hang_up(db: &PgPool, addr: &str, key: &str, channel: i64, content: &str) {
    let body = json!({ "content": content }).to_string();
    let request = format!(
        "POST /v1/channels/{channel}/messages HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(request.as_bytes()).await.unwrap();
    // Committed: the row is there...
    wait_for(
        Duration::from_secs(5),
        &format!("{content} is committed"),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT id FROM messages WHERE content = $1")
                .bind(content)
                .fetch_optional(db)
                .await
                .unwrap()
        },
    )
    .await;
    // ...and no answer yet: the client hangs up before reading one.
    let mut byte = [0u8; 1];
    assert!(
        matches!(client.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the client hangs up before any answer"
    );
}

#[sqlx::test]
async fn posts_whose_client_hangs_up_after_the_commit_still_reach_every_follower(db: PgPool) {
    let mut config = without_sweep();
    // Between each post's commit and its doorbell: the window in which the clients below hang up.
    config.faults.post_commit_pause = Duration::from_millis(600);
    let app = TestApp::spawn_config(db, config).await;
    let key = app.key(&[Scope::ChannelsWrite, Scope::Subscribe]).await;
    let channel = app.channel(&key, "hang-ups").await;
    let mut ws = ws_follower(&app, &key, "watcher", channel, None).await;
    let path = format!("/v1/channels/{channel}/events");
    let mut events = Events::open(&app, &path, &key, None).await;

    const WRITERS: usize = 2;
    const PER_WRITER: usize = 10;
    const HANG_UP_TASKS: usize = 2;
    const HANG_UPS_PER_TASK: usize = 5;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| writer(&app, &key, channel, w, PER_WRITER))
        .collect();
    let addr = app.base.trim_start_matches("http://").to_owned();
    let hang_ups: Vec<_> = (0..HANG_UP_TASKS)
        .map(|t| {
            let (db, addr, key) = (app.db.clone(), addr.clone(), key.clone());
            tokio::spawn(async move {
                for n in 0..HANG_UPS_PER_TASK {
                    post_and_hang_up(&db, &addr, &key, channel, &format!("hang-up {t}-{n}")).await;
                }
            })
        })
        .collect();
    for task in writers.into_iter().chain(hang_ups) {
        task.await.unwrap();
    }
    // The last post of all hangs up too, so no later doorbell of the channel can cover for it.
    post_and_hang_up(&app.db, &addr, &key, channel, "the last word").await;

    let expected = common::ids_after(&app.db, channel, 0).await;
    assert_eq!(
        expected.len(),
        WRITERS * PER_WRITER + HANG_UP_TASKS * HANG_UPS_PER_TASK + 1
    );
    assert_eq!(
        ws_ids(&mut ws, channel, expected.len()).await,
        expected,
        "the WebSocket subscriber gets every committed message once, in id order"
    );
    assert_eq!(
        sse_ids(&mut events, expected.len()).await,
        expected,
        "so does the event stream"
    );
    ws.silent_for(Duration::from_millis(300)).await;
    let stats = app.state.delivery.stats();
    assert_eq!(
        stats
            .notifications_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "alone on its database, an instance spends nothing on notifications"
    );
}

#[sqlx::test]
async fn a_commit_whose_doorbell_never_rang_is_found_by_the_sweep(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.delivery_sweep_interval = Duration::from_millis(200);
    let app = TestApp::spawn_config(db, config).await;
    let key = app.key(&[Scope::ChannelsWrite, Scope::Subscribe]).await;
    let channel = app.channel(&key, "orphans").await;
    let mut ws = ws_follower(&app, &key, "watcher", channel, None).await;
    let mut events =
        Events::open(&app, &format!("/v1/channels/{channel}/events"), &key, None).await;
    let poll = one_long_poll(&app, &key, channel, 0).await;
    wait_for_feed_followers(&app, channel, 2).await;

    // As a poster that died between its commit and its doorbell leaves it: stored, unannounced.
    let orphan: i64 = sqlx::query_scalar(
        "INSERT INTO messages (channel_id, content, sender_type) VALUES ($1, 'orphan', 'api') RETURNING id",
    )
    .bind(channel)
    .fetch_one(&app.db)
    .await
    .unwrap();

    assert_eq!(ws_ids(&mut ws, channel, 1).await, [orphan]);
    assert_eq!(sse_ids(&mut events, 1).await, [orphan]);
    assert_eq!(poll.await.unwrap(), [orphan]);
    let metrics = app.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "channeld_delivery_unhinted_messages_total 1"),
        "found by the sweep, not by a hint, and counted for operators:\n{metrics}"
    );
}

#[sqlx::test]
async fn a_long_poll_on_one_instance_wakes_within_a_second_of_a_post_on_another(db: PgPool) {
    // One configuration for both, as a deployment shares its master key.
    let config = without_sweep();
    let a = TestApp::spawn_config(db.clone(), config.clone()).await;
    let b = TestApp::spawn_instance(db, config).await;
    let key = a.writer().await;
    let channel = a.channel(&key, "across").await;
    acquainted(&a, &b).await;

    let path = format!("/v1/channels/{channel}/messages?after=0&wait=20");
    let waiter = tokio::spawn(common::call(b.request(Method::GET, &path, &key)));
    wait_for_feed_followers(&b, channel, 1).await;
    let started = Instant::now();
    let posted = a.message(&key, channel, "hello from A").await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the long poll on B answers")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"][0]["id"], posted, "{body}");
    assert!(
        waited < Duration::from_secs(1),
        "answered {waited:?} after the post on the other instance"
    );
}

#[sqlx::test]
async fn followers_on_two_instances_see_every_message_in_id_order(db: PgPool) {
    two_instances_under_concurrent_writers(db, false).await;
}

#[sqlx::test]
async fn followers_on_two_instances_miss_nothing_while_listeners_are_killed(db: PgPool) {
    two_instances_under_concurrent_writers(db, true).await;
}

/// Followers of every kind on instances A and B, joining while four writers post through both;
/// each follower's ids must equal the database's. With `kill_listeners`, both instances' LISTEN
/// connections are terminated three times while the writers run.
async fn two_instances_under_concurrent_writers(db: PgPool, kill_listeners: bool) {
    // One configuration for both, as a deployment shares its master key.
    let config = without_sweep();
    let a = TestApp::spawn_config(db.clone(), config.clone()).await;
    let b = TestApp::spawn_instance(db, config).await;
    let key = a.key(&[Scope::ChannelsWrite, Scope::Subscribe]).await;
    let channel = a.channel(&key, "two instances").await;
    acquainted(&a, &b).await;
    let mut seed = Vec::new();
    for n in 0..5 {
        seed.push(a.message(&key, channel, &format!("seed {n}")).await);
    }
    let since = seed[1];

    const WRITERS: usize = 4;
    const PER_WRITER: usize = 40;
    let total = 3 + WRITERS * PER_WRITER;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            writer(
                if w % 2 == 0 { &a } else { &b },
                &key,
                channel,
                w,
                PER_WRITER,
            )
        })
        .collect();
    // Followers join while the writers post: each one's history read overlaps live delivery.
    eventually(Duration::from_secs(10), "the writers get going", || async {
        common::ids_after(&a.db, channel, seed[4]).await.len() >= WRITERS * PER_WRITER / 4
    })
    .await;
    let mut wss = Vec::new();
    let mut streams = Vec::new();
    let mut polls = Vec::new();
    for (n, app) in [&a, &b].into_iter().enumerate() {
        wss.push(ws_follower(app, &key, &format!("ws-{n}"), channel, Some(since)).await);
        streams.push(
            Events::open(
                app,
                &format!("/v1/channels/{channel}/events?since={since}"),
                &key,
                None,
            )
            .await,
        );
        polls.push(tokio::spawn(long_poll_ids(
            app.http.clone(),
            app.base.clone(),
            key.clone(),
            channel,
            since,
            total,
        )));
    }

    if kill_listeners {
        let reconnects = |app: &TestApp| {
            app.state
                .delivery
                .stats()
                .listener_reconnects
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        for round in 1..=3 {
            let killed: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = current_database()",
            )
            .bind(LISTENER_APPLICATION_NAME)
            .fetch_one(&a.db)
            .await
            .unwrap();
            assert!(killed >= 2, "both instances' listeners terminated");
            eventually(
                Duration::from_secs(10),
                "the listeners come back",
                || async { reconnects(&a) >= round && reconnects(&b) >= round },
            )
            .await;
            listeners_open(&a.db, 2).await;
            acquainted(&a, &b).await;
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let expected = common::ids_after(&a.db, channel, since).await;
    assert_eq!(expected.len(), total);
    for (n, ws) in wss.iter_mut().enumerate() {
        assert_eq!(
            ws_ids(ws, channel, total).await,
            expected,
            "WebSocket follower on instance {n}"
        );
        ws.silent_for(Duration::from_millis(200)).await;
    }
    for (n, events) in streams.iter_mut().enumerate() {
        assert_eq!(
            sse_ids(events, total).await,
            expected,
            "event stream on instance {n}"
        );
    }
    for (n, poll) in polls.into_iter().enumerate() {
        assert_eq!(poll.await.unwrap(), expected, "long poll on instance {n}");
    }
}

#[sqlx::test]
async fn an_instance_cut_off_from_postgres_catches_up_on_what_it_missed(db: PgPool) {
    let config = without_sweep();
    let a = TestApp::spawn_config(db.clone(), config.clone()).await;
    // Instance B reaches PostgreSQL through a proxy the test can cut: its pool and its listener.
    let options = (*db.connect_options()).clone();
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let proxy = DbProxy::start(target.parse().expect("tcp database address")).await;
    let b_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_lazy_with(options.host("127.0.0.1").port(proxy.addr.port()));
    let b = TestApp::spawn_full(db.clone(), b_pool, config).await;
    let key = a.key(&[Scope::ChannelsWrite, Scope::Subscribe]).await;
    let channel = a.channel(&key, "cut off").await;
    acquainted(&a, &b).await;

    let mut ws = ws_follower(&b, &key, "on-b", channel, Some(0)).await;
    let mut events = Events::open(
        &b,
        &format!("/v1/channels/{channel}/events?since=0"),
        &key,
        None,
    )
    .await;
    let before = a.message(&key, channel, "before the cut").await;
    assert_eq!(ws_ids(&mut ws, channel, 1).await, [before]);
    assert_eq!(sse_ids(&mut events, 1).await, [before]);
    let poll = one_long_poll(&b, &key, channel, before).await;
    // The event stream and the long poll both wait on B's feed before the cut.
    wait_for_feed_followers(&b, channel, 2).await;

    proxy.cut();
    listeners_open(&db, 1).await;
    // Posted through A while B hears nothing: B's hints are lost, and nothing posted later on
    // the channel rings for them.
    let missed = [
        a.message(&key, channel, "during the cut 1").await,
        a.message(&key, channel, "during the cut 2").await,
    ];
    proxy.restore();

    assert_eq!(ws_ids(&mut ws, channel, 2).await, missed);
    assert_eq!(sse_ids(&mut events, 2).await, missed);
    assert_eq!(poll.await.unwrap(), missed);
    assert!(
        b.state
            .delivery
            .stats()
            .unhinted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "found by the re-read after the listener came back"
    );
}
