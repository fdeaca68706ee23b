//! Revocation and expiry end every open use of a key (SPEC §3b), on every instance: WebSocket
//! connections close with 4001, event streams send an `error` event and end, long polls and MCP
//! waits answer 401. Long-lived requests are bounded per key.

mod common;

use std::time::{Duration, Instant};

use channeld::auth::{Scope, revoke_key};
use common::{Events, TestApp, key_parts, test_config};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;

/// What one instance ends when the key is revoked elsewhere: the time from the revocation.
async fn ended_within(started: Instant, what: &str) -> Duration {
    let took = started.elapsed();
    eprintln!("{what} ended {took:?} after the revocation");
    // The key check runs every second (`--key-check-interval`); a little room for a loaded box.
    assert!(took < Duration::from_secs(3), "{what} took {took:?}");
    took
}

#[sqlx::test]
async fn revoking_a_key_ends_its_streams_long_polls_waits_and_sockets_on_every_instance(
    db: PgPool,
) {
    // Two instances of one deployment: one master key (and, on Redis, one key prefix).
    let config = test_config();
    let a = TestApp::spawn_instance(db.clone(), config.clone()).await;
    let b = TestApp::spawn_instance(db.clone(), config).await;
    let owner = a.writer().await;
    let channel = a.channel(&owner, "revoked").await;
    let doomed = a.key(&[Scope::ChannelsRead, Scope::Subscribe]).await;

    // On instance A, where the key is revoked: an event stream too.
    let mut on_a = Events::open(&a, &format!("/v1/channels/{channel}/events"), &doomed, None).await;
    // On instance B: an event stream, a long poll, an MCP wait and a WebSocket of the key.
    let mut events =
        Events::open(&b, &format!("/v1/channels/{channel}/events"), &doomed, None).await;
    let long_poll = {
        let request = b.request(
            Method::GET,
            &format!("/v1/channels/{channel}/messages?after=0&wait=30"),
            &doomed,
        );
        tokio::spawn(async move { common::call(request).await })
    };
    let wait = {
        let request = b
            .request(Method::POST, "/v1/mcp", &doomed)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "wait_for_messages",
                "arguments": {"channel_id": channel, "after": 0, "wait_seconds": 25}}}),
            );
        tokio::spawn(async move { common::call(request).await })
    };
    let mut socket = b.peer(&doomed, "doomed", json!({})).await;
    // Every one of them is open (long poll and MCP wait included) before the key goes.
    common::eventually(
        Duration::from_secs(10),
        "two waiters on instance B",
        || async {
            b.metrics_text()
                .await
                .contains("\nchanneld_message_waiters 2\n")
        },
    )
    .await;

    let (key_id, _) = key_parts(&doomed);
    let started = Instant::now();
    assert!(
        revoke_key(&a.db, &key_id).await.unwrap(),
        "revoked on the shared database"
    );

    let block = events.next_block().await;
    assert!(block.starts_with("event: error"), "{block}");
    let data: Value = serde_json::from_str(
        block
            .lines()
            .find_map(|l| l.strip_prefix("data:"))
            .expect("data")
            .trim(),
    )
    .unwrap();
    assert_eq!(data["error"], "unauthorized", "{data}");
    assert_eq!(data["message"], "this key was revoked or has expired");
    ended_within(started, "the event stream").await;
    let rest = tokio::time::timeout(Duration::from_secs(5), events.response.chunk())
        .await
        .expect("the stream ends after its error");
    assert!(
        matches!(rest, Ok(None)),
        "nothing after the error: {rest:?}"
    );

    let (status, body) = long_poll.await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["message"], "this key was revoked or has expired");
    ended_within(started, "the long poll").await;

    let (status, body) = wait.await.unwrap();
    assert_eq!(status, StatusCode::OK, "a tool error, in JSON-RPC: {body}");
    assert_eq!(body["result"]["isError"], true, "{body}");
    assert_eq!(
        body["result"]["structuredContent"]["error"], "unauthorized",
        "{body}"
    );
    ended_within(started, "the MCP wait").await;

    assert_eq!(socket.closed_with_reason().await.0, 4001);
    ended_within(started, "the WebSocket").await;

    let block = on_a.next_block().await;
    assert!(block.starts_with("event: error"), "{block}");
    ended_within(started, "the event stream on instance A").await;
}

#[sqlx::test]
async fn long_lived_requests_are_bounded_per_key(db: PgPool) {
    let mut config = test_config();
    config.max_streams_per_key = 2;
    // A stream whose client went away is noticed at its next write: keep-alives come often here.
    config.realtime.sse_keep_alive = Duration::from_millis(100);
    let app = TestApp::spawn_config(db, config).await;
    let owner = app.writer().await;
    let channel = app.channel(&owner, "bounded").await;
    let reader = app.key(&[Scope::ChannelsRead]).await;
    let path = format!("/v1/channels/{channel}/events");
    let first = Events::open(&app, &path, &reader, None).await;
    let _second = Events::open(&app, &path, &reader, None).await;

    let response = app
        .request(Method::GET, &path, &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    let (status, _) = app
        .get(
            &format!("/v1/channels/{channel}/messages?after=0&wait=1"),
            &reader,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "a long poll counts too"
    );
    let (status, _) = app
        .get(&format!("/v1/channels/{channel}/messages?after=0"), &reader)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a plain read is no long-lived request"
    );
    let (status, _) = app
        .get(
            &format!("/v1/channels/{channel}/messages?after=0&wait=1"),
            &owner,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "another key has its own");

    drop(first);
    common::eventually(
        Duration::from_secs(5),
        "the closed stream frees its place",
        || async {
            app.get(
                &format!("/v1/channels/{channel}/messages?after=0&wait=1"),
                &reader,
            )
            .await
            .0 == StatusCode::OK
        },
    )
    .await;
}
