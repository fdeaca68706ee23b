//! The latest page of a channel held in memory (`GET /v1/channels/{id}/messages` without a
//! cursor): never staler than a write the caller was told succeeded, on either of two instances;
//! the same body and `ETag` as the page read from the database; kept current by the
//! stored-delivery reader for a followed channel, with no page read.

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use channeld::{auth::Scope, config::Config};
use common::{TestApp, eventually};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;

/// A sweep too slow to matter: an instance learns of another's posts only through hints.
fn without_sweep() -> Config {
    let mut config = common::test_config();
    config.realtime.delivery_sweep_interval = Duration::from_secs(600);
    config
}

fn hits(app: &TestApp) -> u64 {
    app.state.delivery.pages().hits.load(Ordering::Relaxed)
}

/// `GET path` with its ETag.
async fn get(app: &TestApp, path: &str, key: &str) -> (StatusCode, Value, String) {
    let response = app
        .request(Method::GET, path, key)
        .send()
        .await
        .expect("answer");
    let status = response.status();
    let tag = response
        .headers()
        .get(header::ETAG)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, common::json_body(response).await, tag)
}

fn ids(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

#[sqlx::test]
async fn a_read_right_after_a_post_sees_it_on_either_instance(db: PgPool) {
    let config = without_sweep();
    let a = TestApp::spawn_config(db.clone(), config.clone()).await;
    let b = TestApp::spawn_instance(db, config).await;
    let key = a.writer().await;
    let channel = a.channel(&key, "read-your-writes").await;
    let latest = format!("/v1/channels/{channel}/messages");
    let mut posted = Vec::new();

    for round in 0..40 {
        // Both instances hold the page as it was, and neither follows the channel, so nothing
        // but the check of the channel's newest id can tell them that it moved on.
        for app in [&a, &b] {
            let (status, page, _) = get(app, &latest, &key).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(ids(&page).first(), posted.last(), "round {round}");
            assert!(app.state.delivery.pages().holds(channel));
        }
        let (poster, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        posted.push(poster.message(&key, channel, &format!("m{round}")).await);
        let (status, page, _) = get(reader, &latest, &key).await;
        assert_eq!(status, StatusCode::OK);
        let newest_first: Vec<i64> = posted.iter().rev().take(50).copied().collect();
        assert_eq!(
            ids(&page),
            newest_first,
            "round {round}: the other instance's acknowledged post is on the page"
        );
    }
    assert_eq!(
        a.state.delivery.pages().hits.load(Ordering::Relaxed)
            + b.state.delivery.pages().hits.load(Ordering::Relaxed),
        39,
        "from memory: in each round after the first, the read of the instance that read right \
         after the last post; no read right after a post"
    );
}

#[sqlx::test]
async fn a_held_page_is_the_page_the_database_gives_and_answers_304(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "held").await;
    for n in 0..60 {
        app.message(&key, channel, &format!("m{n}")).await;
    }
    let latest = format!("/v1/channels/{channel}/messages");
    // `before` past every id reads the same messages from the database, never from memory.
    let from_db = format!("{latest}?before={}", i64::MAX);

    for (limit, more) in [
        (50, true),
        (100, false),
        (10, true),
        (60, false),
        (59, true),
    ] {
        let (status, first, tag) = get(&app, &format!("{latest}?limit={limit}"), &key).await;
        assert_eq!(status, StatusCode::OK);
        let held = hits(&app);
        let (_, again, again_tag) = get(&app, &format!("{latest}?limit={limit}"), &key).await;
        assert_eq!(
            hits(&app),
            held + 1,
            "limit {limit}: the second read is held"
        );
        let (_, read, read_tag) = get(&app, &format!("{from_db}&limit={limit}"), &key).await;
        assert_eq!(first, read, "limit {limit}");
        assert_eq!(again, read, "limit {limit}");
        assert_eq!((&tag, &again_tag), (&read_tag, &read_tag), "limit {limit}");
        assert_eq!(ids(&read).len(), limit.min(60));
        assert_eq!(read["has_more"], more, "limit {limit}");

        let response = app
            .request(Method::GET, &format!("{latest}?limit={limit}"), &key)
            .header(header::IF_NONE_MATCH, &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            hits(&app),
            held + 2,
            "a matching If-None-Match reads no page"
        );
    }

    // A post moves the page on: the old tag no longer matches.
    let (_, _, tag) = get(&app, &latest, &key).await;
    let newest = app.message(&key, channel, "newest").await;
    let response = app
        .request(Method::GET, &latest, &key)
        .header(header::IF_NONE_MATCH, &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(ids(&common::json_body(response).await)[0], newest);

    let (status, body, _) = get(&app, "/v1/channels/999999/messages", &key).await;
    common::assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let empty = app.channel(&key, "empty").await;
    for _ in 0..2 {
        let (status, page, _) = get(&app, &format!("/v1/channels/{empty}/messages"), &key).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page, json!({"messages": [], "has_more": false}));
    }
}

#[sqlx::test]
async fn the_reader_moves_a_followed_channels_page_without_reading_it(db: PgPool) {
    let config = without_sweep();
    let a = TestApp::spawn_config(db.clone(), config.clone()).await;
    let b = TestApp::spawn_instance(db, config).await;
    let key = a.key(&[Scope::ChannelsWrite, Scope::Subscribe]).await;
    let channel = a.channel(&key, "followed").await;
    for n in 0..3 {
        a.message(&key, channel, &format!("m{n}")).await;
    }
    eventually(
        Duration::from_secs(10),
        "the instances hear of each other",
        || async { a.state.delivery.other_instances() && b.state.delivery.other_instances() },
    )
    .await;
    // A live subscriber on B: B's reader reads every new message of the channel.
    let mut ws = b
        .peer(&key, "watcher", json!({"permissions": ["subscribe"]}))
        .await;
    let ack = ws
        .request(json!({"type": "subscribe", "channel": channel.to_string(), "requestId": "s"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let latest = format!("/v1/channels/{channel}/messages");
    let (_, page, _) = get(&b, &latest, &key).await;
    assert_eq!(ids(&page).len(), 3);

    for n in 0..5 {
        let id = a.message(&key, channel, &format!("new {n}")).await;
        // Once B's subscriber has it, B's reader has handed it to the held page too.
        let frame = ws.recv().await;
        assert_eq!(frame["data"]["id"], id, "{frame}");
        let (held, missed) = (
            hits(&b),
            b.state.delivery.pages().misses.load(Ordering::Relaxed),
        );
        let (_, page, _) = get(&b, &latest, &key).await;
        assert_eq!(ids(&page)[0], id);
        assert_eq!(ids(&page).len(), 4 + n);
        assert_eq!(hits(&b), held + 1, "post {n}: answered from memory");
        assert_eq!(
            b.state.delivery.pages().misses.load(Ordering::Relaxed),
            missed,
            "post {n}: no page read"
        );
        let from_db = format!("{latest}?before={}", i64::MAX);
        let (_, read, _) = get(&b, &from_db, &key).await;
        assert_eq!(
            page, read,
            "post {n}: what the reader handed over is what was stored"
        );
    }
}
