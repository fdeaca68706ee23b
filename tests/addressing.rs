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
            json!({"metadata": {"note": "nul\u{0}byte"}}),
            "metadata",
            "null_character",
        ),
        (
            json!({"metadata": {"n": [-1.797_693_134_862_315_7e308]}}),
            "metadata",
            "range",
        ),
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

fn ids(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

#[sqlx::test]
async fn filtered_paging_with_interleaved_writers_yields_each_match_once_in_order(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "interleaved").await;
    // Four writers post 40 messages each; pod-7 is addressed seven times among them.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (http, base, key) = (app.http.clone(), app.base.clone(), key.clone());
            tokio::spawn(async move {
                for n in 0..40 {
                    let mut body = json!({"content": format!("{w}-{n}")});
                    // Seven matches spread over the writers, so two may be in flight at once.
                    if (w * 40 + n) % 23 == 0 {
                        body["mentions"] = json!(["pod-3", "pod-7"]);
                    } else if n % 5 == 0 {
                        body["mentions"] = json!(["pod-9"]);
                    }
                    let (status, answer) = common::call(
                        http.post(format!("{base}/v1/channels/{channel}/messages"))
                            .bearer_auth(&key)
                            .json(&body),
                    )
                    .await;
                    assert_eq!(status, StatusCode::CREATED, "{answer}");
                }
            })
        })
        .collect();
    // Meanwhile a reader pages forward two at a time over the filter, as an agent follows.
    let mut seen = Vec::new();
    let mut after = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < 7 {
        assert!(std::time::Instant::now() < deadline, "saw only {seen:?}");
        let (status, page) = app
            .get(
                &format!("/v1/channels/{channel}/messages?after={after}&mentions=pod-7&limit=2"),
                &key,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for message in page["messages"].as_array().unwrap() {
            assert!(
                message["mentions"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("pod-7")),
                "{message}"
            );
            after = message["id"].as_i64().unwrap();
            seen.push(after);
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let expected: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM messages WHERE channel_id = $1 AND 'pod-7' = ANY (mentions) ORDER BY id",
    )
    .bind(channel)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(expected.len(), 7);
    assert_eq!(seen, expected, "each match once, in id order");

    // Newest first, and paging back with before, over the same filter.
    let (_, newest) = app
        .get(
            &format!("/v1/channels/{channel}/messages?mentions=pod-7&limit=4"),
            &key,
        )
        .await;
    let mut backwards: Vec<i64> = expected.iter().rev().copied().collect();
    assert_eq!(ids(&newest), backwards[..4]);
    assert_eq!(newest["has_more"], true);
    let (_, older) = app
        .get(
            &format!(
                "/v1/channels/{channel}/messages?mentions=pod-7&limit=4&before={}",
                backwards[3]
            ),
            &key,
        )
        .await;
    assert_eq!(ids(&older), backwards.split_off(4));
    assert_eq!(older["has_more"], false);

    for bad in ["mentions=", "mentions=tab%09here", "thread=0", "thread=x"] {
        let (status, body) = app
            .get(&format!("/v1/channels/{channel}/messages?{bad}"), &key)
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[sqlx::test]
async fn a_filtered_long_poll_sleeps_through_other_posts_and_wakes_for_a_match(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "long-poll").await;
    let start = app.message(&key, channel, "before anyone waits").await;
    let poll = |query: String| {
        let request = app.request(
            Method::GET,
            &format!("/v1/channels/{channel}/messages?after={start}&wait=20{query}"),
            &key,
        );
        tokio::spawn(common::call(request))
    };
    let filtered = poll("&mentions=pod-7".into());
    let everyone = poll(String::new());
    app.until_waiting(2, std::time::Duration::from_secs(15))
        .await;

    // Messages for others: the unfiltered poll wakes with the first; the filtered one sleeps on.
    let mut others = Vec::new();
    for name in ["pod-3", "pod-9"] {
        let (status, body) = post(
            &app,
            &key,
            channel,
            json!({"content": format!("for {name}"), "mentions": [name]}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        others.push(body["message"]["id"].as_i64().unwrap());
    }
    let (status, woke) = everyone.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&woke)[0], others[0]);
    assert!(
        !filtered.is_finished(),
        "woken by a message for someone else"
    );
    app.until_waiting(1, std::time::Duration::from_secs(15))
        .await;

    let (_, body) = post(
        &app,
        &key,
        channel,
        json!({"content": "pod-7: your turn", "mentions": ["pod-9", "pod-7"]}),
    )
    .await;
    let matched = body["message"]["id"].as_i64().unwrap();
    let (status, page) = filtered.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{page}");
    // Only the match: had it woken for the others, they would be here too.
    assert_eq!(ids(&page), [matched]);
}

#[sqlx::test]
async fn threads_sse_and_mcp_waits_filter_alike(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "threads").await;
    let root = app.message(&key, channel, "root").await;
    let mut events = Events::open(
        &app,
        &format!("/v1/channels/{channel}/events?since={root}&mentions=pod-7"),
        &key,
        None,
    )
    .await;
    let mcp_wait = {
        let request = app
            .request(Method::POST, "/v1/mcp", &key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "wait_for_messages",
                "arguments": {"channel_id": channel, "after": root, "wait_seconds": 20, "mentions": "pod-7"},
            }}));
        tokio::spawn(common::call(request))
    };
    app.until_waiting(1, std::time::Duration::from_secs(15))
        .await;

    // A thread three deep, and unrelated messages around it.
    let mut thread = vec![root];
    let mut parent = root;
    let mut for_pod_7 = Vec::new();
    for depth in 1..=3 {
        app.message(&key, channel, "unrelated").await;
        let mentions = if depth == 2 {
            json!(["pod-7"])
        } else {
            json!([])
        };
        let (_, body) = post(
            &app,
            &key,
            channel,
            json!({"content": format!("depth {depth}"), "reply_to": parent, "mentions": mentions}),
        )
        .await;
        parent = body["message"]["id"].as_i64().unwrap();
        thread.push(parent);
        if depth == 2 {
            for_pod_7.push(parent);
        }
    }
    let (_, body) = post(
        &app,
        &key,
        channel,
        json!({"content": "new topic for pod-7", "mentions": ["pod-7"]}),
    )
    .await;
    for_pod_7.push(body["message"]["id"].as_i64().unwrap());

    let (_, page) = app
        .get(
            &format!("/v1/channels/{channel}/messages?thread={root}&after=0"),
            &key,
        )
        .await;
    assert_eq!(ids(&page), thread);
    let (_, page) = app
        .get(
            &format!("/v1/channels/{channel}/messages?thread={root}&limit=2"),
            &key,
        )
        .await;
    assert_eq!(ids(&page), [thread[3], thread[2]]);
    let (_, page) = app
        .get(
            &format!("/v1/channels/{channel}/messages?thread={root}&mentions=pod-7"),
            &key,
        )
        .await;
    assert_eq!(ids(&page), [for_pod_7[0]]);

    // SSE: only the messages for pod-7, in order.
    for expected in &for_pod_7 {
        let (id, data) = events.next_message().await;
        assert_eq!(id, *expected);
        assert_eq!(data["mentions"], json!(["pod-7"]));
    }
    // MCP: the wait ended with the first message for pod-7, nothing else.
    let (status, body) = mcp_wait.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let result = &body["result"]["structuredContent"];
    assert_eq!(result["timed_out"], false, "{body}");
    let first = result["messages"][0]["id"].as_i64().unwrap();
    assert_eq!(first, for_pod_7[0]);
    assert!(
        result["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["mentions"] == json!(["pod-7"])),
        "{body}"
    );
}

/// The ids of the next `count` stored-message frames, each of which must mention pod-7.
async fn pod_7_ids(ws: &mut common::Ws, count: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    while ids.len() < count {
        let frame = ws.recv().await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert!(
            frame["data"]["mentions"]
                .as_array()
                .unwrap()
                .contains(&json!("pod-7")),
            "{frame}"
        );
        ids.push(frame["messageId"].as_i64().unwrap());
    }
    ids
}

#[sqlx::test]
async fn a_websocket_subscription_filtered_by_mentions_gets_only_those(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key(&[Scope::ChannelsWrite, Scope::Subscribe, Scope::Publish])
        .await;
    let channel = app.channel(&key, "ws-filter").await;
    let start = app.message(&key, channel, "start").await;
    let mut history = Vec::new();
    for n in 0..6 {
        let mentions = if n % 3 == 0 {
            json!(["pod-7"])
        } else {
            json!(["pod-1"])
        };
        let (_, body) = post(
            &app,
            &key,
            channel,
            json!({"content": format!("old {n}"), "mentions": mentions}),
        )
        .await;
        if n % 3 == 0 {
            history.push(body["message"]["id"].as_i64().unwrap());
        }
    }
    let mut ws = app
        .peer(&key, "pod-7", json!({"permissions": ["subscribe"]}))
        .await;
    // Live only, and resumed from `since` on a second connection.
    let ack = ws
        .request(json!({"type": "subscribe", "channel": channel.to_string(), "mentions": "pod-7", "requestId": "s"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut resumed = app
        .peer(&key, "pod-7b", json!({"permissions": ["subscribe"]}))
        .await;
    let ack = resumed
        .request(json!({"type": "subscribe", "channel": channel.to_string(), "mentions": "pod-7", "since": start, "requestId": "r"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["recovered"], true, "{ack}");

    let mut live = Vec::new();
    for n in 0..6 {
        let mentions = if n % 2 == 0 {
            json!(["pod-7", "pod-2"])
        } else {
            json!([])
        };
        let (_, body) = post(
            &app,
            &key,
            channel,
            json!({"content": format!("new {n}"), "mentions": mentions}),
        )
        .await;
        if n % 2 == 0 {
            live.push(body["message"]["id"].as_i64().unwrap());
        }
    }
    // A last unfiltered marker for pod-7 proves nothing else was queued before it.
    let (_, body) = post(
        &app,
        &key,
        channel,
        json!({"content": "last", "mentions": ["pod-7"]}),
    )
    .await;
    live.push(body["message"]["id"].as_i64().unwrap());

    assert_eq!(pod_7_ids(&mut ws, live.len()).await, live);
    let everything: Vec<i64> = history.iter().chain(live.iter()).copied().collect();
    assert_eq!(pod_7_ids(&mut resumed, everything.len()).await, everything);

    // A realtime channel name that stores nothing has nothing to filter.
    let refused = ws
        .request(json!({"type": "subscribe", "channel": "app_abc/room-1", "mentions": "pod-7", "requestId": "e"}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "invalid_channel", "{refused}");
}

#[sqlx::test]
async fn read_state_moves_forward_only_and_unread_counts_are_exact(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let reader_key = app.key(&[Scope::ChannelsRead]).await;
    let channel = app.channel(&key, "unread").await;
    let quiet = app.channel(&key, "quiet").await;

    // Four writers at once; one in three messages mentions ana.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (http, base, key) = (app.http.clone(), app.base.clone(), key.clone());
            tokio::spawn(async move {
                for n in 0..15 {
                    let mentions = if n % 3 == 0 {
                        json!(["ana", "bo"])
                    } else {
                        json!(["bo"])
                    };
                    let (status, body) = common::call(
                        http.post(format!("{base}/v1/channels/{channel}/messages"))
                            .bearer_auth(&key)
                            .json(&json!({"content": format!("{w}-{n}"), "mentions": mentions})),
                    )
                    .await;
                    assert_eq!(status, StatusCode::CREATED, "{body}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let truth = |after: i64| {
        let db = app.db.clone();
        async move {
            let (all, ana): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE 'ana' = ANY (mentions)) \
                 FROM messages WHERE channel_id = $1 AND id > $2",
            )
            .bind(channel)
            .bind(after)
            .fetch_one(&db)
            .await
            .unwrap();
            (all, ana)
        }
    };
    let unread = |path: String| {
        let (app, reader_key) = (&app, &reader_key);
        async move {
            let (status, body) = app.get(&path, reader_key).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };

    // No state yet: everything is unread, in the list and on the channel.
    let (all, ana) = truth(0).await;
    assert_eq!((all, ana), (60, 20));
    let list = unread("/v1/channels?reader=ana".into()).await;
    let row = |list: &Value, id: i64| {
        list["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&list, channel)["unread_count"], 60);
    assert_eq!(row(&list, channel)["unread_mentions"], 20);
    assert_eq!(row(&list, quiet)["unread_count"], 0);
    assert_eq!(row(&list, quiet)["unread_mentions"], 0);
    // Without ?reader= the fields are absent.
    let plain = unread("/v1/channels".into()).await;
    assert!(row(&plain, channel).get("unread_count").is_none());

    // Read up to the 25th message: forward, then an older id changes nothing.
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM messages WHERE channel_id = $1 ORDER BY id")
            .bind(channel)
            .fetch_all(&app.db)
            .await
            .unwrap();
    let read_path = format!("/v1/channels/{channel}/read");
    let (status, body) = app
        .put(
            &read_path,
            &reader_key,
            json!({"reader": "ana", "last_read_id": ids[24]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"reader": "ana", "last_read_id": ids[24]}));
    let (status, body) = app
        .put(
            &read_path,
            &reader_key,
            json!({"reader": "ana", "last_read_id": ids[3]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["last_read_id"], ids[24], "never backwards");
    let (all, ana) = truth(ids[24]).await;
    let one = unread(format!("/v1/channels/{channel}?reader=ana")).await;
    assert_eq!(one["channel"]["unread_count"], all);
    assert_eq!(one["channel"]["unread_mentions"], ana);
    assert_eq!(all, 35);
    // Another reader's state is its own.
    let bo = unread(format!("/v1/channels/{channel}?reader=bo")).await;
    assert_eq!(bo["channel"]["unread_count"], 60);
    assert_eq!(bo["channel"]["unread_mentions"], 60);

    // Past the newest message counts as the newest; then nothing is unread.
    let (_, body) = app
        .put(
            &read_path,
            &reader_key,
            json!({"reader": "ana", "last_read_id": i64::MAX}),
        )
        .await;
    assert_eq!(body["last_read_id"], *ids.last().unwrap());
    let one = unread(format!("/v1/channels/{channel}?reader=ana")).await;
    assert_eq!(one["channel"]["unread_count"], 0);
    assert_eq!(one["channel"]["unread_mentions"], 0);

    // Refusals.
    let (status, body) = app
        .put(
            "/v1/channels/999999/read",
            &reader_key,
            json!({"reader": "ana", "last_read_id": 1}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    for (bad, field) in [
        (json!({"reader": "", "last_read_id": 1}), "reader"),
        (json!({"reader": "ana", "last_read_id": -1}), "last_read_id"),
        (json!({"reader": "ana"}), "last_read_id"),
    ] {
        let (status, body) = app.put(&read_path, &reader_key, bad.clone()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(body["details"].get(field).is_some(), "{bad}: {body}");
    }
    let (status, body) = app.get("/v1/channels?reader=tab%09here", &reader_key).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // A read never creates state.
    let states: i64 = sqlx::query_scalar("SELECT count(*) FROM read_states")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(states, 1);
}

#[sqlx::test]
async fn mcp_marks_read_and_lists_unread(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "mcp-unread").await;
    let first = app.message(&key, channel, "one").await;
    post(
        &app,
        &key,
        channel,
        json!({"content": "two", "mentions": ["pod-7"]}),
    )
    .await;
    let call = |name: &str, arguments: Value| {
        common::call(
            app.request(Method::POST, "/v1/mcp", &key)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-11-25")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                              "params": {"name": name, "arguments": arguments}})),
        )
    };
    let (_, body) = call(
        "mark_read",
        json!({"channel_id": channel, "reader": "pod-7", "last_read_id": first}),
    )
    .await;
    assert_eq!(
        body["result"]["structuredContent"],
        json!({"reader": "pod-7", "last_read_id": first}),
        "{body}"
    );
    let (_, body) = call("list_channels", json!({"reader": "pod-7"})).await;
    let listed = &body["result"]["structuredContent"]["channels"][0];
    assert_eq!(listed["unread_count"], 1, "{body}");
    assert_eq!(listed["unread_mentions"], 1, "{body}");
}
