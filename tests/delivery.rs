//! Following a channel without polling blindly and without missing a message: WebSocket resume
//! from history, Server-Sent Events, long polling, and conditional GET.

mod common;

use std::time::{Duration, Instant};

use channeld::auth::Scope;
use common::{Events, TestApp, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};

async fn post_many(app: &TestApp, key: &str, channel: i64, count: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        ids.push(app.message(key, channel, &format!("m{n}")).await);
    }
    ids
}

#[sqlx::test]
async fn resuming_replays_history_then_switches_to_live_without_gap_or_duplicate(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&[Scope::ChannelsWrite, Scope::Subscribe]).await;
    let channel = app.channel(&key, "resume").await;
    let earlier = post_many(&app, &key, channel, 40).await;
    let since = earlier[9];

    // Several writers keep posting while several subscribers resume at different moments.
    const WRITERS: usize = 6;
    const PER_WRITER: usize = 40;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (http, base, key) = (app.http.clone(), app.base.clone(), key.clone());
            tokio::spawn(async move {
                for n in 0..PER_WRITER {
                    let response = http
                        .post(format!("{base}/v1/channels/{channel}/messages"))
                        .bearer_auth(&key)
                        .json(&json!({"content": format!("live {w}-{n}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::CREATED);
                }
            })
        })
        .collect();
    let mut subscribers = Vec::new();
    for n in 0..4 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let mut ws = app
            .peer(
                &key,
                &format!("agent-{n}"),
                json!({"permissions": ["subscribe"]}),
            )
            .await;
        let ack = ws
            .request(json!({"type": "subscribe", "channel": channel.to_string(), "since": since, "requestId": "r"}))
            .await;
        assert_eq!(
            ack,
            json!({"type": "ack", "requestId": "r", "recovered": true})
        );
        subscribers.push(ws);
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let expected = common::ids_after(&app.db, channel, since).await;
    assert_eq!(expected.len(), 30 + WRITERS * PER_WRITER);
    for mut ws in subscribers {
        let mut received = Vec::new();
        while received.len() < expected.len() {
            let frame = ws.recv().await;
            assert_eq!(frame["type"], "message", "{frame}");
            assert_eq!(frame["channel"], channel.to_string());
            received.push(frame["data"]["id"].as_i64().unwrap());
        }
        assert_eq!(
            received, expected,
            "every message after `since`, once, in order"
        );
        ws.silent_for(Duration::from_millis(100)).await;
    }
}

#[sqlx::test]
async fn a_backlog_over_1000_replays_the_newest_and_says_not_recovered(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&[Scope::ChannelsWrite, Scope::Subscribe]).await;
    let channel = app.channel(&key, "deep").await;
    sqlx::query("INSERT INTO messages (channel_id, content, sender_type) SELECT $1, 'bulk ' || g, 'api' FROM generate_series(1, 1005) g")
        .bind(channel)
        .execute(&app.db)
        .await
        .unwrap();
    let all = common::ids_after(&app.db, channel, 0).await;

    let mut ws = app
        .peer(&key, "agent", json!({"permissions": ["subscribe"]}))
        .await;
    let ack = ws
        .request(json!({"type": "subscribe", "channel": channel.to_string(), "since": 0, "requestId": "r"}))
        .await;
    assert_eq!(ack["recovered"], false);
    let mut received = Vec::new();
    for _ in 0..1000 {
        received.push(ws.recv().await["data"]["id"].as_i64().unwrap());
    }
    assert_eq!(
        received,
        all[5..],
        "the newest 1,000, oldest first; the rest is a REST page away"
    );
    let (_, older) = app
        .get(
            &format!(
                "/v1/channels/{channel}/messages?before={}&limit=100",
                received[0]
            ),
            &key,
        )
        .await;
    assert_eq!(older["messages"].as_array().unwrap().len(), 5);

    let ack = ws
        .request(json!({"type": "subscribe", "channel": "ephemeral", "since": 0, "requestId": "e"}))
        .await;
    assert_eq!(
        ack["recovered"], false,
        "ephemeral channels keep no history"
    );
}

#[sqlx::test]
async fn server_sent_events_stream_history_and_live_and_resume_after_a_drop(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.sse_keep_alive = Duration::from_millis(200);
    let app = TestApp::spawn_config(db, config).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "sse").await;
    let path = format!("/v1/channels/{channel}/events");
    let first = post_many(&app, &key, channel, 3).await;

    let mut events = Events::open(&app, &format!("{path}?since=0"), &key, None).await;
    for id in &first {
        assert_eq!(events.next_message().await.0, *id);
    }
    let (_, posted) = app
        .post(
            &format!("/v1/channels/{channel}/messages"),
            &key,
            json!({"content": "live"}),
        )
        .await;
    let (id, data) = events.next_message().await;
    assert_eq!(
        data, posted["message"],
        "data is the stored message exactly as REST returns it"
    );
    let comment = events.next_block().await;
    assert!(
        comment.starts_with(':'),
        "keep-alive comment while quiet: {comment:?}"
    );
    drop(events);

    let missed = post_many(&app, &key, channel, 3).await;
    let mut resumed = Events::open(&app, &path, &key, Some(id)).await;
    for expected in &missed {
        assert_eq!(
            resumed.next_message().await.0,
            *expected,
            "resumes exactly after Last-Event-ID"
        );
    }
    let next = app.message(&key, channel, "after resume").await;
    assert_eq!(resumed.next_message().await.0, next);

    let mut fresh = Events::open(&app, &path, &key, None).await;
    let newest = app
        .message(&key, channel, "only new ones without a cursor")
        .await;
    assert_eq!(fresh.next_message().await.0, newest);

    let (status, body) = app.get("/v1/channels/999999/events", &key).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = common::call(
        app.request(Method::GET, &path, &key)
            .header("last-event-id", "abc"),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // A bad `since` is refused even when `Last-Event-ID` is what the stream resumes from.
    let (status, body) = common::call(
        app.request(
            Method::GET,
            &format!("{path}?since=26226976644359048396800"),
            &key,
        )
        .header("last-event-id", "1"),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(body["details"], serde_json::json!({"since": ["type"]}));
    // `lastEventId`, as EventSource polyfills send it, is read like the header.
    let (status, body) =
        common::call(app.request(Method::GET, &format!("{path}?lastEventId=abc"), &key)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        body["details"],
        serde_json::json!({"Last-Event-ID": ["type"]})
    );
}

#[sqlx::test]
async fn event_streams_end_cleanly_on_shutdown(db: PgPool) {
    let mut app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "closing").await;
    let mut events =
        Events::open(&app, &format!("/v1/channels/{channel}/events"), &key, None).await;
    app.shutdown();
    let end = tokio::time::timeout(Duration::from_secs(5), events.response.chunk())
        .await
        .expect("ends");
    assert!(matches!(end, Ok(None)), "the stream ends: {end:?}");
}

#[sqlx::test]
async fn long_polls_answer_at_once_wake_on_a_post_or_time_out_empty(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "poll").await;
    let first = app.message(&key, channel, "already here").await;
    let path = format!("/v1/channels/{channel}/messages");

    let started = Instant::now();
    let (_, body) = app.get(&format!("{path}?after=0&wait=30"), &key).await;
    assert_eq!(body["messages"][0]["id"], first);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "existing messages answer at once"
    );

    let waiter = {
        let request = app.request(Method::GET, &format!("{path}?after={first}&wait=20"), &key);
        tokio::spawn(common::call(request))
    };
    wait_for_followers(&app, channel, 1).await;
    let posted = app.message(&app.writer().await, channel, "wake up").await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"][0]["id"], posted, "{body}");

    let started = Instant::now();
    let (_, empty) = app
        .get(&format!("{path}?after={posted}&wait=1"), &key)
        .await;
    assert_eq!(empty, json!({"messages": [], "has_more": false}));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held for the wait"
    );

    for (query, details) in [
        ("wait=5", json!({"wait": ["requires_after"]})),
        ("after=0&wait=31", json!({"wait": ["range"]})),
        ("after=0&wait=-1", json!({"wait": ["range"]})),
    ] {
        let (status, body) = app.get(&format!("{path}?{query}"), &key).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(body["details"], details, "{query}");
    }
}

async fn wait_for_followers(app: &TestApp, channel: i64, count: usize) {
    common::eventually(
        Duration::from_secs(20),
        &format!("{count} followers waiting"),
        || async { app.state.delivery.feeds().followers(channel) >= count },
    )
    .await;
}

#[sqlx::test]
async fn a_thousand_long_pollers_wake_on_one_post_while_the_pool_stays_small(db: PgPool) {
    const POLLERS: usize = 1000;
    const POOL: u32 = 4;
    let server_pool = PgPoolOptions::new()
        .max_connections(POOL)
        .connect_with((*db.connect_options()).clone())
        .await
        .unwrap();
    // One key holds every waiter here: its bound on long-lived requests is raised.
    let mut config = common::test_config();
    config.max_streams_per_key = 10_000;
    let app = TestApp::spawn_full(db, server_pool.clone(), config).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "crowd").await;
    let path = format!("/v1/channels/{channel}/messages?after=0&wait=30");

    let pollers: Vec<_> = (0..POLLERS)
        .map(|_| tokio::spawn(common::call(app.request(Method::GET, &path, &key))))
        .collect();
    wait_for_followers(&app, channel, POLLERS).await;
    assert!(
        server_pool.size() <= POOL,
        "waiting pollers hold no connection each"
    );

    let posted = app.message(&key, channel, "everyone wake up").await;
    let started = Instant::now();
    for poller in pollers {
        let (status, body) = poller.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["messages"][0]["id"], posted);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "all woken by the one post"
    );
    assert!(server_pool.size() <= POOL);
}

async fn etag_of(app: &TestApp, path: &str, key: &str) -> String {
    let response = app.request(Method::GET, path, key).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.headers()["etag"].to_str().unwrap().to_owned()
}

async fn conditional(app: &TestApp, path: &str, key: &str, tag: &str) -> (StatusCode, usize) {
    let response = app
        .request(Method::GET, path, key)
        .header("if-none-match", tag)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap().len())
}

#[sqlx::test]
async fn etags_answer_304_until_the_response_changes(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "cached").await;
    let paths = [
        "/v1/channels".to_owned(),
        format!("/v1/channels/{channel}"),
        format!("/v1/channels/{channel}/messages"),
    ];

    for path in &paths {
        let tag = etag_of(&app, path, &key).await;
        assert_eq!(
            conditional(&app, path, &key, &tag).await,
            (StatusCode::NOT_MODIFIED, 0),
            "{path}"
        );
        assert_eq!(
            conditional(&app, path, &key, "\"stale\"").await.0,
            StatusCode::OK,
            "{path}"
        );
    }

    let before: Vec<String> =
        futures::future::join_all(paths.iter().map(|p| etag_of(&app, p, &key))).await;
    app.message(&key, channel, "a change").await;
    for (path, old) in paths.iter().zip(&before) {
        let (status, length) = conditional(&app, path, &key, old).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path} changed, so the old tag no longer matches"
        );
        assert!(length > 0);
        let new = etag_of(&app, path, &key).await;
        assert_ne!(&new, old, "{path}");
        assert_eq!(
            conditional(&app, path, &key, &new).await.0,
            StatusCode::NOT_MODIFIED
        );
    }
}
