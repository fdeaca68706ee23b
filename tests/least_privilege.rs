//! Credentials that reach only what they must (SPEC §3b): floods of random keys cannot evict a
//! real one, failed authentications are bounded per source, and a token never reaches further
//! than its key.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use channeld::auth::Scope;
use common::{TestApp, claims, local_token, test_config};
use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

/// A well-formed key that names no stored key.
fn random_key(n: usize) -> String {
    format!("sk_live_{n:016}_{:032}", n.wrapping_mul(2_654_435_761))
}

#[sqlx::test]
async fn a_flood_of_unknown_keys_never_evicts_a_real_key_or_holds_it_up(db: PgPool) {
    let mut config = test_config();
    // Here the flood must reach the key lookups: the per-source bound is tested below.
    config.auth_failures_per_minute = u32::MAX;
    let app = TestApp::spawn_config(db, config).await;
    let real = app.key(&[Scope::ChannelsRead]).await;
    let (status, _) = app.get("/v1/channels", &real).await;
    assert_eq!(status, StatusCode::OK);

    // More unknown ids than the cache keeps, 32 at a time, while the real key keeps working.
    const FLOOD: usize = 11_000;
    let refused = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (http, base, refused) = (app.http.clone(), app.base.clone(), refused.clone());
        tokio::spawn(async move {
            stream::iter(0..FLOOD)
                .for_each_concurrent(32, |n| {
                    let (http, base, refused) = (http.clone(), base.clone(), refused.clone());
                    async move {
                        let response = http
                            .get(format!("{base}/v1/channels"))
                            .bearer_auth(random_key(n))
                            .send()
                            .await
                            .expect("the server answers");
                        if response.status() == StatusCode::UNAUTHORIZED {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .await;
        })
    };
    let first_use = app.key(&[Scope::ChannelsRead]).await;
    let (real_id, _) = common::key_parts(&real);
    let mut first_used = None;
    let mut answers = Vec::new();
    while !flood.is_finished() {
        if first_used.is_none() && refused.load(Ordering::Relaxed) > FLOOD / 2 {
            // A key used for the first time in the middle of the flood queues for its lookup
            // with the guesses, and is answered.
            first_used = Some(app.get("/v1/channels", &first_use).await.0);
        }
        let started = std::time::Instant::now();
        let (status, _) = app.get("/v1/channels", &real).await;
        answers.push((status, started.elapsed()));
        assert!(
            app.state.keys.is_known(&real_id),
            "the real key stays cached through the flood"
        );
    }
    flood.await.unwrap();
    assert_eq!(
        refused.load(Ordering::Relaxed),
        FLOOD,
        "every unknown key is a 401"
    );
    assert!(
        answers.len() > 10,
        "the real key was used throughout the flood"
    );
    assert!(
        answers.iter().all(|(status, _)| *status == StatusCode::OK),
        "the real key was never refused nor answered 503: {:?}",
        answers.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let mut took: Vec<_> = answers.iter().map(|(_, took)| *took).collect();
    took.sort();
    // A known key skips the lookups the flood queues for: far under the database deadline.
    assert!(
        took[took.len() * 99 / 100] < std::time::Duration::from_secs(1),
        "p99 {:?}",
        took[took.len() * 99 / 100]
    );
    eprintln!(
        "real key during a flood of {FLOOD} unknown keys: {} requests, p50 {:?}, p99 {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100]
    );
}

#[sqlx::test]
async fn failed_authentications_are_bounded_per_source(db: PgPool) {
    let mut config = test_config();
    config.auth_failures_per_minute = 5;
    let app = TestApp::spawn_config(db, config).await;
    let in_use = app.key(&[Scope::ChannelsRead, Scope::Subscribe]).await;
    let (status, _) = app.get("/v1/channels", &in_use).await;
    assert_eq!(status, StatusCode::OK);
    let fresh = app.key(&[Scope::ChannelsRead]).await;
    // No credential at all is a 401, but no guess.
    for _ in 0..10 {
        let response = app
            .http
            .get(format!("{}/v1/channels", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    for n in 0..5 {
        let (status, body) = app.get("/v1/channels", &random_key(n)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let response = app
        .http
        .get(format!("{}/v1/channels", app.base))
        .bearer_auth(random_key(99))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    // The source's guesses are refused before any lookup until its minute is over; a key in use
    // here is no guess and keeps working, while one it has not used yet waits with the guesses.
    let (status, _) = app.get("/v1/channels", &in_use).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a key in use is never locked out by its neighbours"
    );
    let (status, _) = app.get("/v1/channels", &fresh).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (code, reason) = app.refusal("token=not-a-token", None).await;
    assert_eq!(
        (code, reason.as_str()),
        (4010, "too many failed authentications from this address")
    );
}

#[sqlx::test]
async fn websocket_failures_count_toward_the_same_bound(db: PgPool) {
    let mut config = test_config();
    config.auth_failures_per_minute = 3;
    let app = TestApp::spawn_config(db, config).await;
    for _ in 0..3 {
        assert_eq!(app.refused("token=eyJnot.a.token", None).await, 4001);
    }
    let (code, reason) = app.refusal("token=eyJnot.a.token", None).await;
    assert_eq!(
        (code, reason.as_str()),
        (4010, "too many failed authentications from this address")
    );
    let (status, _) = app.get("/v1/channels", &random_key(1)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[sqlx::test]
async fn a_token_never_reaches_further_than_its_key(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key_with_patterns(&[Scope::Subscribe, Scope::Publish], &["tenant_a/**"])
        .await;
    let exp = chrono::Utc::now().timestamp() + 600;

    // Signed by a backend with the key's own secret, but naming channels beyond the key's.
    let mut wide = claims("bob", exp);
    wide.channels = Some(vec!["tenant_a/**".into(), "tenant_b/**".into()]);
    let (code, reason) = app
        .refusal(&format!("token={}", local_token(&key, &wide)), None)
        .await;
    assert_eq!((code, reason.as_str()), (4003, "not authorized"));

    // Within the key: accepted.
    let mut narrow = claims("bob", exp);
    narrow.channels = Some(vec!["tenant_a/room-*".into()]);
    let mut ws = app
        .ws_raw(&format!("token={}", local_token(&key, &narrow)))
        .await
        .expect("upgraded");
    assert_eq!(ws.recv().await["type"], "welcome");

    // At most 16 patterns of at most 256 characters, minted or signed locally.
    let mut many = claims("bob", exp);
    many.channels = Some((0..17).map(|n| format!("tenant_a/{n}")).collect());
    let (code, reason) = app
        .refusal(&format!("token={}", local_token(&key, &many)), None)
        .await;
    assert_eq!(
        (code, reason.as_str()),
        (
            4001,
            "token `channels`: at most 16 patterns of at most 256 characters"
        )
    );
    let mut long = claims("bob", exp);
    long.channels = Some(vec![format!("tenant_a/{}", "x".repeat(256))]);
    assert_eq!(
        app.refused(&format!("token={}", local_token(&key, &long)), None)
            .await,
        4001
    );
    for channels in [
        json!((0..17).map(|n| format!("tenant_a/{n}")).collect::<Vec<_>>()),
        json!([format!("tenant_a/{}", "x".repeat(256))]),
    ] {
        let (status, body) = app
            .post(
                "/v1/tokens",
                &key,
                json!({"peerId": "bob", "channels": channels}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["details"]["channels"], json!(["format"]), "{body}");
    }
}

#[sqlx::test]
async fn idempotency_keys_are_scoped_to_the_api_key(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let a = app.writer().await;
    let b = app.writer().await;
    let channel = app.channel(&a, "idempotent").await;
    let post = |key: &str, content: &str| {
        app.request(
            reqwest::Method::POST,
            &format!("/v1/channels/{channel}/messages"),
            key,
        )
        .header("idempotency-key", "deploy-42-done")
        .json(&json!({"content": content}))
    };
    let (status, first) = common::call(post(&a, "from a")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, other) = common::call(post(&b, "from b")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "another key's same Idempotency-Key is another post: {other}"
    );
    assert_ne!(first["message"]["id"], other["message"]["id"]);
    assert_eq!(other["message"]["content"], "from b");
    let (status, retry) = common::call(post(&a, "from a, retried")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        retry["message"], first["message"],
        "a's retry answers a's message"
    );

    // MCP's post_message shares the scope of the key that calls it.
    let (status, body) = common::call(
        app.request(reqwest::Method::POST, "/v1/mcp", &b)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "post_message",
                "arguments": {"channel_id": channel, "content": "from b, retried",
                              "idempotency_key": "deploy-42-done"}}}),
            ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = &body["result"]["structuredContent"];
    assert_eq!(answer["replayed"], true, "{body}");
    assert_eq!(answer["message"]["id"], other["message"]["id"], "{body}");
}

/// `(status, error code, message)` of a request (an event stream is not read past its headers).
async fn outcome(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
) -> (StatusCode, String, String) {
    let body = match (&method, path.rsplit('/').next()) {
        (&reqwest::Method::POST, Some("messages")) => Some(json!({"content": "x"})),
        (&reqwest::Method::PUT, Some("read")) => Some(json!({"reader": "r", "last_read_id": 1})),
        (&reqwest::Method::PUT, _) => Some(json!({"description": "d"})),
        _ => None,
    };
    let mut request = app.request(method, path, key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    if status.is_success() {
        return (status, String::new(), String::new());
    }
    let body: serde_json::Value = response.json().await.expect("an error envelope");
    let text = |field: &str| body[field].as_str().unwrap_or_default().to_owned();
    (status, text("error"), text("message"))
}

#[sqlx::test]
async fn patterns_bind_persistent_channels_on_every_route(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let owner = app.writer().await;
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(app.channel(&owner, &format!("channel {n}")).await);
    }
    let mine = ids[0];
    let other = ids[1];
    let pod = app
        .key_with_patterns(&[Scope::ChannelsWrite], &[&mine.to_string(), "tenant_a/**"])
        .await;

    // The list shows only the covered channel, with an exact total.
    let (status, list) = app.get("/v1/channels", &pod).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["channels"][0]["id"], mine);

    // Every route answers another channel exactly as it answers an unknown one.
    let unknown = 999_999;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/channels/{}"),
        (reqwest::Method::PUT, "/v1/channels/{}"),
        (reqwest::Method::GET, "/v1/channels/{}/messages"),
        (reqwest::Method::POST, "/v1/channels/{}/messages"),
        (reqwest::Method::GET, "/v1/channels/{}/events"),
        (reqwest::Method::PUT, "/v1/channels/{}/read"),
    ] {
        let covered = outcome(
            &app,
            method.clone(),
            &path.replace("{}", &mine.to_string()),
            &pod,
        )
        .await;
        assert!(
            covered.0.is_success(),
            "{method} {path} on the covered channel: {covered:?}"
        );
        let hidden = outcome(
            &app,
            method.clone(),
            &path.replace("{}", &other.to_string()),
            &pod,
        )
        .await;
        // An id that exists nowhere, asked by a key that covers every channel: the database's
        // own not-found.
        let missing = outcome(
            &app,
            method.clone(),
            &path.replace("{}", &unknown.to_string()),
            &owner,
        )
        .await;
        assert_eq!(
            (hidden.0, hidden.1.as_str()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{method} {path}"
        );
        assert_eq!(
            (
                hidden.0,
                &hidden.1,
                hidden.2.replace(&format!("channel {other}"), "channel N")
            ),
            (
                missing.0,
                &missing.1,
                missing
                    .2
                    .replace(&format!("channel {unknown}"), "channel N")
            ),
            "{method} {path}: the whole envelope reads alike"
        );
    }
    // So do MCP's tools.
    for (tool, arguments) in [
        ("get_channel", json!({"channel_id": other})),
        ("read_messages", json!({"channel_id": other})),
        ("post_message", json!({"channel_id": other, "content": "x"})),
        (
            "mark_read",
            json!({"channel_id": other, "reader": "r", "last_read_id": 1}),
        ),
    ] {
        let (_, body) = common::call(
            app.request(reqwest::Method::POST, "/v1/mcp", &pod)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-11-25")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                              "params": {"name": tool, "arguments": arguments}})),
        )
        .await;
        assert_eq!(
            body["result"]["structuredContent"]["error"], "not_found",
            "{tool}: {body}"
        );
    }
    // A key limited to some channels cannot make new ones.
    let (status, body) = app
        .post("/v1/channels", &pod, json!({"name": "not mine to make"}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("channel_not_authorized"))
    );

    // A wildcard over digits: ids 1 and 10-12 of the 12 (a fresh database numbers from 1).
    assert_eq!(ids, (1..=12).collect::<Vec<i64>>(), "a fresh database");
    let ones = app.key_with_patterns(&[Scope::ChannelsRead], &["1*"]).await;
    let mut seen = Vec::new();
    let mut path = "/v1/channels?limit=2&sort=name&order=asc".to_owned();
    loop {
        let (status, page) = app.get(&path, &ones).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["total"], 4, "{page}");
        seen.extend(
            page["channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/channels?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, [1, 10, 11, 12]);
    let (_, page) = app.get("/v1/channels?limit=2&offset=2", &ones).await;
    assert_eq!(page["total"], 4);
    assert_eq!(page["channels"].as_array().unwrap().len(), 2);
    let (_, page) = app.get("/v1/channels?limit=2&offset=10", &ones).await;
    assert_eq!(page["total"], 4, "a page past the end still counts: {page}");
}
