//! Addressed messages (SPEC §4, optional structured fields): `mentions`, `metadata`, `reply_to`
//! and the server-set `thread_id`, stored in one statement with the message and returned
//! wherever a message is: REST, WebSocket `data`, Server-Sent Events and MCP.

mod common;

use channeld::auth::Scope;
use common::{Events, TestApp, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn post(app: &TestApp, key: &str, channel: i64, body: Value) -> (StatusCode, Value) {
    app.post(&format!("/v1/channels/{channel}/messages"), key, body)
        .await
}

async fn stored_count(db: &PgPool, channel: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE channel_id = $1")
        .bind(channel)
        .fetch_one(db)
        .await
        .unwrap()
}

#[sqlx::test]
async fn fields_are_stored_and_returned_everywhere(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key(&[Scope::ChannelsWrite, Scope::Subscribe, Scope::Publish])
        .await;
    let channel = app.channel(&key, "addressed").await;
    let mut ws = app
        .peer(&key, "watcher", json!({"permissions": ["subscribe"]}))
        .await;
    let ack = ws
        .request(json!({"type": "subscribe", "channel": channel.to_string(), "requestId": "s"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut events = Events::open(
        &app,
        &format!("/v1/channels/{channel}/events?since=0"),
        &key,
        None,
    )
    .await;

    // A plain message: the fields are there, empty, and the message is its own thread.
    let (status, body) = post(&app, &key, channel, json!({"content": "plan ready"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let root = body["message"].clone();
    let root_id = root["id"].as_i64().unwrap();
    assert_eq!(root["mentions"], json!([]));
    assert_eq!(root["metadata"], Value::Null);
    assert_eq!(root["reply_to"], Value::Null);
    assert_eq!(root["thread_id"], root_id);

    // A reply addressed to two pods, with metadata; then replies of depth 2 and 3.
    let (status, body) = post(
        &app,
        &key,
        channel,
        json!({
            "content": "pod-7, pod-9: take the canary",
            "mentions": ["pod-7", "pod-9"],
            "metadata": {"kind": "task", "progress": 0.4, "steps": [1, 2]},
            "reply_to": root_id,
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let reply = body["message"].clone();
    assert_eq!(reply["mentions"], json!(["pod-7", "pod-9"]));
    assert_eq!(
        reply["metadata"],
        json!({"kind": "task", "progress": 0.4, "steps": [1, 2]})
    );
    assert_eq!(reply["reply_to"], root_id);
    assert_eq!(reply["thread_id"], root_id);
    let mut parent = reply["id"].as_i64().unwrap();
    let mut thread = vec![root.clone(), reply.clone()];
    for depth in 2..=3 {
        let (status, body) = post(
            &app,
            &key,
            channel,
            json!({"content": format!("depth {depth}"), "pod_key": "pod-7", "reply_to": parent}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["message"]["reply_to"], parent);
        assert_eq!(body["message"]["thread_id"], root_id, "depth {depth}");
        parent = body["message"]["id"].as_i64().unwrap();
        thread.push(body["message"].clone());
    }

    // REST history, oldest first after 0: exactly what the posts answered.
    let (status, body) = app
        .get(&format!("/v1/channels/{channel}/messages?after=0"), &key)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["messages"], json!(thread));
    // The same with an idempotency key (the other statement that stores a message), replayed.
    let keyed = json!({"content": "keyed", "mentions": ["pod-9"], "metadata": {"a": 1}, "reply_to": root_id});
    let send_keyed = || {
        common::call(
            app.request(
                Method::POST,
                &format!("/v1/channels/{channel}/messages"),
                &key,
            )
            .header("idempotency-key", "keyed-1")
            .json(&keyed),
        )
    };
    let (status, first) = send_keyed().await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["message"]["mentions"], json!(["pod-9"]));
    assert_eq!(first["message"]["metadata"], json!({"a": 1}));
    assert_eq!(first["message"]["thread_id"], root_id);
    let (status, again) = send_keyed().await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, first);
    thread.push(first["message"].clone());

    // Live: the WebSocket frame's data and the SSE event carry each message as REST returns it.
    for expected in &thread {
        let frame = ws.recv().await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(&frame["data"], expected);
        let (_, data) = events.next_message().await;
        assert_eq!(&data, expected);
    }
    // The mentions are indexed for the filter to come: one row per name.
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM message_mentions WHERE channel_id = $1")
            .bind(channel)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(rows, 3);
}

#[sqlx::test]
async fn bad_fields_are_400_naming_the_field_and_store_nothing(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "validation").await;
    let other = app.channel(&key, "elsewhere").await;
    let elsewhere = app.message(&key, other, "in another channel").await;

    let names: Vec<String> = (0..33).map(|n| format!("pod-{n}")).collect();
    let cases = [
        (json!({"mentions": names}), "mentions", "length"),
        (json!({"mentions": [""]}), "mentions", "format"),
        (json!({"mentions": ["tab\there"]}), "mentions", "format"),
        (json!({"mentions": ["x".repeat(101)]}), "mentions", "format"),
        (
            json!({"mentions": ["pod-7", "pod-7"]}),
            "mentions",
            "duplicate",
        ),
        (json!({"mentions": "pod-7"}), "mentions", "type"),
        (json!({"metadata": [1, 2]}), "metadata", "type"),
        (json!({"metadata": "text"}), "metadata", "type"),
        (
            json!({"metadata": {"blob": "x".repeat(16 * 1024)}}),
            "metadata",
            "length",
        ),
        (json!({"reply_to": 0}), "reply_to", "range"),
        (json!({"reply_to": "1"}), "reply_to", "type"),
        (json!({"reply_to": 999_999}), "reply_to", "not_found"),
        (json!({"reply_to": elsewhere}), "reply_to", "not_found"),
    ];
    for (extra, field, code) in cases {
        let mut body = json!({"content": "x"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, answer) = post(&app, &key, channel, body).await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(
            answer["details"],
            json!({field: [code]}),
            "{extra}: {answer}"
        );
    }
    assert_eq!(stored_count(&app.db, channel).await, 0);

    let (_, answer) = post(
        &app,
        &key,
        channel,
        json!({"content": "x", "reply_to": elsewhere}),
    )
    .await;
    assert_eq!(
        answer["message"],
        format!(
            "reply_to must be an earlier message of this channel: message {elsewhere} not found \
             in channel {channel}"
        )
    );
    // At the limits, accepted.
    let names: Vec<String> = (0..32).map(|n| format!("{n:0>100}")).collect();
    let mut metadata = serde_json::Map::new();
    metadata.insert("blob".into(), json!("x".repeat(16 * 1024 - 11)));
    let (status, answer) = post(
        &app,
        &key,
        channel,
        json!({"content": "x", "mentions": names, "metadata": metadata}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(stored_count(&app.db, channel).await, 1);
}

#[sqlx::test]
async fn mcp_posts_and_reads_the_fields(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "mcp-addressed").await;
    let root = app.message(&key, channel, "root").await;
    let call = |name: &str, arguments: Value| {
        app.request(Method::POST, "/v1/mcp", &key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": name, "arguments": arguments}}))
    };
    let (status, body) = common::call(call(
        "post_message",
        json!({"channel_id": channel, "content": "for you", "pod_key": "lead",
               "mentions": ["pod-7"], "metadata": {"kind": "task"}, "reply_to": root}),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let posted = &body["result"]["structuredContent"]["message"];
    assert_eq!(posted["mentions"], json!(["pod-7"]), "{body}");
    assert_eq!(posted["metadata"], json!({"kind": "task"}));
    assert_eq!(posted["reply_to"], root);
    assert_eq!(posted["thread_id"], root);

    let (_, body) = common::call(call(
        "read_messages",
        json!({"channel_id": channel, "after": root}),
    ))
    .await;
    assert_eq!(
        body["result"]["structuredContent"]["messages"][0],
        posted.clone()
    );

    let (_, body) = common::call(call(
        "post_message",
        json!({"channel_id": channel, "content": "x", "mentions": ["a", "a"]}),
    ))
    .await;
    assert_eq!(body["result"]["isError"], true, "{body}");
    assert_eq!(
        body["result"]["structuredContent"]["details"],
        json!({"mentions": ["duplicate"]})
    );
}
