//! `/v1/channels/{id}/messages`: posting, history paging both ways, idempotency, and the
//! guarantee that a cursor reader never misses or repeats a message under concurrent writers.

mod common;

use std::collections::BTreeSet;

use common::{TestApp, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

fn ids(body: &Value) -> Vec<i64> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

#[sqlx::test]
async fn posted_messages_have_the_documented_shape(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "shape").await;
    let path = format!("/v1/channels/{channel}/messages");

    let (status, body) = app.post(&path, &key, json!({"content": "hello"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let message = &body["message"];
    let mut fields: Vec<&str> = message
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "channel_id",
            "content",
            "created_at",
            "id",
            "mentions",
            "metadata",
            "pod_key",
            "reply_to",
            "sender_type",
            "thread_id"
        ]
    );
    assert_eq!(message["channel_id"], channel);
    assert_eq!(message["content"], "hello");
    assert_eq!(message["sender_type"], "api");
    assert_eq!(message["pod_key"], Value::Null);

    let (_, agent) = app
        .post(
            &path,
            &key,
            json!({"content": "from a pod", "pod_key": "pod-7"}),
        )
        .await;
    assert_eq!(agent["message"]["sender_type"], "agent");
    assert_eq!(agent["message"]["pod_key"], "pod-7");
    assert!(agent["message"]["id"].as_i64() > message["id"].as_i64());

    let (status, listed) = app.get(&path, &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed,
        json!({"messages": [agent["message"], body["message"]], "has_more": false})
    );
}

#[sqlx::test]
async fn history_pages_backwards_and_catches_up_forwards(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "paging").await;
    let mut posted = Vec::new();
    for n in 0..7 {
        posted.push(app.message(&key, channel, &format!("m{n}")).await);
    }
    let path = format!("/v1/channels/{channel}/messages");

    let (_, latest) = app.get(&format!("{path}?limit=3"), &key).await;
    assert_eq!(ids(&latest), [posted[6], posted[5], posted[4]]);
    assert_eq!(latest["has_more"], true);
    let (_, older) = app
        .get(&format!("{path}?limit=3&before={}", posted[4]), &key)
        .await;
    assert_eq!(ids(&older), [posted[3], posted[2], posted[1]]);
    assert_eq!(older["has_more"], true);
    let (_, oldest) = app
        .get(&format!("{path}?limit=3&before={}", posted[1]), &key)
        .await;
    assert_eq!(ids(&oldest), [posted[0]]);
    assert_eq!(oldest["has_more"], false);

    let (_, forward) = app
        .get(&format!("{path}?limit=3&after={}", posted[0]), &key)
        .await;
    assert_eq!(
        ids(&forward),
        [posted[1], posted[2], posted[3]],
        "after reads oldest first"
    );
    assert_eq!(forward["has_more"], true);
    let (_, rest) = app
        .get(&format!("{path}?limit=3&after={}", posted[3]), &key)
        .await;
    assert_eq!(ids(&rest), [posted[4], posted[5], posted[6]]);
    assert_eq!(rest["has_more"], false);
    let (_, nothing) = app.get(&format!("{path}?after={}", posted[6]), &key).await;
    assert_eq!(nothing, json!({"messages": [], "has_more": false}));
    let (_, from_start) = app.get(&format!("{path}?after=0&limit=100"), &key).await;
    assert_eq!(ids(&from_start), posted);

    let empty = app.channel(&key, "empty").await;
    let (status, body) = app
        .get(&format!("/v1/channels/{empty}/messages"), &key)
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"messages": [], "has_more": false}))
    );
}

#[sqlx::test]
async fn bad_history_parameters_are_400_never_silently_changed(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "params").await;
    let cases = [
        ("limit=0", json!({"limit": ["range"]})),
        ("limit=101", json!({"limit": ["range"]})),
        ("limit=x", json!({"limit": ["type"]})),
        ("before=0", json!({"before": ["range"]})),
        ("before=x", json!({"before": ["type"]})),
        ("after=-1", json!({"after": ["range"]})),
        (
            "before=5&after=1",
            json!({"after": ["conflict"], "before": ["conflict"]}),
        ),
    ];
    for (query, details) in cases {
        let (status, body) = app
            .get(&format!("/v1/channels/{channel}/messages?{query}"), &key)
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(body["details"], details, "{query}");
    }
    let (_, body) = app
        .get(&format!("/v1/channels/{channel}/messages?limit=1000"), &key)
        .await;
    assert_eq!(
        body["message"],
        "limit must be an integer from 1 to 100 (got 1000)"
    );
    let (status, _) = app
        .get(&format!("/v1/channels/{channel}/messages?limit=100"), &key)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test]
async fn invalid_messages_are_rejected_and_nothing_is_stored(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "validation").await;
    let path = format!("/v1/channels/{channel}/messages");
    let cases = [
        (json!({}), "content", "required"),
        (json!({"content": ""}), "content", "length"),
        (json!({"content": "x".repeat(65_537)}), "content", "length"),
        (json!({"content": 5}), "content", "type"),
        (
            json!({"content": "nul \u{0} byte"}),
            "content",
            "null_character",
        ),
        (
            json!({"content": "x", "pod_key": "p".repeat(101)}),
            "pod_key",
            "format",
        ),
        (
            json!({"content": "x", "pod_key": "tab\tkey"}),
            "pod_key",
            "format",
        ),
        (
            json!({"content": "x", "sender_type": "system"}),
            "sender_type",
            "unknown_field",
        ),
    ];
    for (body, field, code) in cases {
        let (status, response) = app.post(&path, &key, body).await;
        assert_error(
            status,
            &response,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
        assert_eq!(
            response["details"],
            json!({field: [code]}),
            "{field}/{code}"
        );
    }
    for bad_key in ["", &"k".repeat(256), "tab\tkey"] {
        let response = app
            .request(Method::POST, &path, &key)
            .header("Idempotency-Key", bad_key)
            .json(&json!({"content": "x"}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = common::json_body(response).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(body["details"], json!({"Idempotency-Key": ["format"]}));
    }
    let (status, max) = app
        .post(&path, &key, json!({"content": "x".repeat(65_536)}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "65,536 bytes is allowed: {max}"
    );
    let (_, listed) = app.get(&path, &key).await;
    assert_eq!(ids(&listed).len(), 1, "only the valid message was stored");
}

#[sqlx::test]
async fn an_idempotency_key_makes_retries_return_the_original(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "retries").await;
    let other = app.channel(&key, "other").await;
    let post = |channel: i64, idempotency: &'static str, content: &'static str| {
        let request = app
            .request(
                Method::POST,
                &format!("/v1/channels/{channel}/messages"),
                &key,
            )
            .header("Idempotency-Key", idempotency)
            .json(&json!({"content": content}));
        common::call(request)
    };

    let (status, first) = post(channel, "req-1", "original").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, retry) = post(channel, "req-1", "changed on retry").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retry, first, "the retry returns the original message");
    let (status, elsewhere) = post(other, "req-1", "original").await;
    assert_eq!(status, StatusCode::CREATED, "keys are per channel");
    assert_ne!(elsewhere["message"]["id"], first["message"]["id"]);

    // A retry still answers with the original after the channel was archived.
    app.put(
        &format!("/v1/channels/{channel}"),
        &key,
        json!({"archived": true}),
    )
    .await;
    let (status, late) = post(channel, "req-1", "original").await;
    assert_eq!((status, &late), (StatusCode::OK, &first));
    let (status, body) = post(channel, "req-2", "new").await;
    assert_error(status, &body, StatusCode::CONFLICT, "channel_archived");
}

#[sqlx::test]
async fn ten_concurrent_duplicates_store_exactly_one_message(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "stampede").await;
    let path = format!("/v1/channels/{channel}/messages");
    let attempts = (0..10).map(|_| {
        let request = app
            .request(Method::POST, &path, &key)
            .header("Idempotency-Key", "same-request")
            .json(&json!({"content": "once"}));
        common::call(request)
    });
    let results = futures::future::join_all(attempts).await;

    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let replayed = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!((created, replayed), (1, 9), "{results:?}");
    let distinct: BTreeSet<i64> = results
        .iter()
        .map(|(_, b)| b["message"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(distinct.len(), 1, "every answer names the same message");
    let (_, listed) = app.get(&path, &key).await;
    assert_eq!(ids(&listed).len(), 1);
    // The channel counts the one message stored, not the nine replays.
    let (_, read) = app.get(&format!("/v1/channels/{channel}"), &key).await;
    assert_eq!(read["channel"]["message_count"], 1);
    assert_eq!(read["channel"]["last_message"]["id"], ids(&listed)[0]);
}

#[sqlx::test]
async fn a_cursor_reader_never_misses_or_repeats_under_concurrent_writers(db: PgPool) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 40;
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "firehose").await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (http, base, key) = (app.http.clone(), app.base.clone(), key.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for n in 0..PER_WRITER {
                    let response = http
                        .post(format!("{base}/v1/channels/{channel}/messages"))
                        .bearer_auth(&key)
                        .json(&json!({"content": format!("w{w}-{n}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::CREATED);
                    let body: Value = response.json().await.unwrap();
                    mine.push(body["message"]["id"].as_i64().unwrap());
                }
                mine
            })
        })
        .collect();

    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut writers_done = false;
    loop {
        let (status, page) = app
            .get(
                &format!("/v1/channels/{channel}/messages?after={cursor}&limit=7"),
                &key,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let page_ids = ids(&page);
        if let Some(&last) = page_ids.last() {
            cursor = last;
        }
        seen.extend(page_ids.iter().copied());
        // One more full read after every writer has finished picks up the tail.
        if page_ids.is_empty() && writers_done {
            break;
        }
        writers_done = writers.iter().all(|w| w.is_finished());
    }

    let mut written = BTreeSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert_eq!(written.len(), WRITERS * PER_WRITER);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ids arrive in increasing order, none repeated"
    );
    let seen_set: BTreeSet<i64> = seen.iter().copied().collect();
    let missed: Vec<_> = written.difference(&seen_set).collect();
    assert!(missed.is_empty(), "the cursor reader missed {missed:?}");
    assert_eq!(seen.len(), written.len());
}

/// A channel that holds most of the table still reads its pages through the `(channel_id, id)`
/// index. With the plain `channel_id = $1 AND id > $2 ORDER BY id`, PostgreSQL walks the primary
/// key here and filters by channel, passing over every newer message of the other channel: a
/// cost that grows with other channels' traffic. Counted in this transaction's index scans.
#[sqlx::test]
async fn pages_of_a_channel_holding_most_of_the_table_never_walk_the_primary_key(db: PgPool) {
    use channeld::messages::{Page, count_after, id_before_newest, page};

    let channels: Vec<i64> =
        sqlx::query_scalar("INSERT INTO channels (name) VALUES ('long'), ('short') RETURNING id")
            .fetch_all(&db)
            .await
            .unwrap();
    let (long, short) = (channels[0], channels[1]);
    for (channel, count) in [(long, 20_000), (short, 1_000)] {
        sqlx::query(
            "INSERT INTO messages (channel_id, content, sender_type)
             SELECT $1, 'message ' || n, 'agent' FROM generate_series(1, $2) AS n",
        )
        .bind(channel)
        .bind(count)
        .execute(&db)
        .await
        .unwrap();
    }
    sqlx::query("ANALYZE messages").execute(&db).await.unwrap();
    let newest: i64 = sqlx::query_scalar("SELECT max(id) FROM messages WHERE channel_id = $1")
        .bind(long)
        .fetch_one(&db)
        .await
        .unwrap();

    let mut tx = db.begin().await.unwrap();
    let primary = index_scans(&mut tx, "messages_pkey").await;
    let composite = index_scans(&mut tx, "messages_channel_id_id_idx").await;

    let ids = |messages: Vec<channeld::messages::model::Message>| -> Vec<i64> {
        messages.iter().map(|m| m.id).collect()
    };
    let after = page(&mut *tx, long, Page::After(newest - 10), 51)
        .await
        .unwrap();
    assert_eq!(ids(after), (newest - 9..=newest).collect::<Vec<_>>());
    let latest = page(&mut *tx, long, Page::Latest, 51).await.unwrap();
    assert_eq!(
        ids(latest),
        (newest - 50..=newest).rev().collect::<Vec<_>>()
    );
    let before = page(&mut *tx, long, Page::Before(newest - 5), 3)
        .await
        .unwrap();
    assert_eq!(ids(before), vec![newest - 6, newest - 7, newest - 8]);
    assert_eq!(
        count_after(&mut *tx, long, newest - 10, 100).await.unwrap(),
        10
    );
    assert_eq!(
        id_before_newest(&mut *tx, long, 10).await.unwrap(),
        Some(newest - 10)
    );

    assert_eq!(
        index_scans(&mut tx, "messages_pkey").await,
        primary,
        "a page walked the primary key"
    );
    assert_eq!(
        index_scans(&mut tx, "messages_channel_id_id_idx").await,
        composite + 5
    );
}

/// Scans of `index` so far in this transaction.
async fn index_scans(tx: &mut sqlx::PgConnection, index: &str) -> i64 {
    sqlx::query_scalar("SELECT pg_stat_get_xact_numscans($1::regclass)")
        .bind(index)
        .fetch_one(tx)
        .await
        .unwrap()
}
