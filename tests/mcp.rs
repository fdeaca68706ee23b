//! `POST /v1/mcp` at the HTTP level: what precedes the tools (Host and Origin, the key, the
//! transport's refusals, all in the error envelope), the tools' refusals as tool errors, and
//! waiting without holding database connections. The official clients are exercised by
//! scripts/mcp-test.sh.

mod common;

use std::time::Duration;

use channeld::{auth::Scope, config::McpConfig};
use common::{TestApp, assert_error, test_config};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};

const ACCEPT: &str = "application/json, text/event-stream";

fn rpc(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})
}

async fn mcp(app: &TestApp, key: &str, body: Value) -> (StatusCode, Value) {
    common::call(
        app.request(Method::POST, "/v1/mcp", key)
            .header(header::ACCEPT, ACCEPT)
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body),
    )
    .await
}

/// A `tools/call`'s result (the JSON-RPC call itself must succeed).
async fn tool(app: &TestApp, key: &str, name: &str, arguments: Value) -> Value {
    let (status, body) = mcp(
        app,
        key,
        rpc("tools/call", json!({"name": name, "arguments": arguments})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["result"].is_object(), "{body}");
    body["result"].clone()
}

#[sqlx::test]
async fn transport_refusals_come_in_the_error_envelope(db: PgPool) {
    let config = channeld::config::Config {
        max_body_bytes: 4096,
        ..test_config()
    };
    let app = TestApp::spawn_config(db, config).await;
    let key = app.writer().await;

    // No key, a malformed, a revoked one: 401 with `WWW-Authenticate: Bearer` before any
    // JSON-RPC runs, the body a JSON-RPC error an MCP client shows, carrying the REST text.
    let revoked = app.writer().await;
    let revoked_id = format!("sk_id_{}", &revoked[8..24]);
    assert!(
        channeld::auth::revoke_key(&app.db, &revoked_id)
            .await
            .unwrap()
    );
    let refusals = [
        (
            None,
            "unauthorized: missing API key: send `Authorization: Bearer sk_live_…` or an `X-API-Key` header",
        ),
        (
            Some("sk_live_nope"),
            "unauthorized: malformed API key: expected `sk_live_…` or `sk_id_…:sk_secret_…`",
        ),
        (Some(revoked.as_str()), "unauthorized: this key was revoked"),
    ];
    for (key, message) in refusals {
        let mut request = app
            .http
            .post(format!("{}/v1/mcp", app.base))
            .header(header::ACCEPT, ACCEPT)
            .json(&rpc("tools/list", json!({})));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let text = response.text().await.unwrap();
        assert!(text.ends_with("}\n"), "{text:?}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            body,
            json!({"jsonrpc": "2.0", "id": null, "error": {
                "code": -32001, "message": message, "data": {"error": "unauthorized"},
            }}),
        );
    }

    // Answers end with a newline, as REST's do.
    let response = app
        .request(Method::POST, "/v1/mcp", &key)
        .header(header::ACCEPT, ACCEPT)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&rpc("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(text.ends_with("}\n") && !text.ends_with("\n\n"), "{text:?}");
    assert_eq!(length, text.len());

    // Stateless: nothing to GET or DELETE.
    for method in [Method::GET, Method::DELETE] {
        let response = app
            .request(method.clone(), "/v1/mcp", &key)
            .header(header::ACCEPT, ACCEPT)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["allow"], "POST", "{method}");
        let status = response.status();
        let body = common::json_body(response).await;
        assert_error(
            status,
            &body,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
    }

    // What the transport requires, said in the envelope.
    let refused = [
        (
            app.request(Method::POST, "/v1/mcp", &key)
                .header(header::ACCEPT, "text/html")
                .json(&rpc("tools/list", json!({}))),
            StatusCode::NOT_ACCEPTABLE,
            "text/event-stream",
        ),
        (
            app.request(Method::POST, "/v1/mcp", &key)
                .header(header::ACCEPT, ACCEPT)
                .header(header::CONTENT_TYPE, "text/plain")
                .body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            app.request(Method::POST, "/v1/mcp", &key)
                .header(header::ACCEPT, ACCEPT)
                .json(&rpc(
                    "tools/call",
                    json!({"name": "post_message", "arguments": {"channel_id": 1, "content": "x".repeat(8192)}}),
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
    ];
    for (request, expected, mentions) in refused {
        let (status, body) = common::call(request).await;
        assert_error(status, &body, expected, "invalid_request");
        assert!(
            body["message"].as_str().unwrap().contains(mentions),
            "{body}"
        );
    }

    // OAuth discovery, which clients probe first: a clean 404 saying what to do instead.
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/v1/mcp",
        "/.well-known/oauth-authorization-server",
    ] {
        let (status, body) = common::call(app.http.get(format!("{}{path}", app.base))).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        assert!(
            body["message"].as_str().unwrap().contains("API key"),
            "{path}: {body}"
        );
    }

    // JSON-RPC's own errors stay JSON-RPC: an unknown tool names the tools there are.
    let (status, body) = mcp(
        &app,
        &key,
        rpc(
            "tools/call",
            json!({"name": "delete_everything", "arguments": {}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["error"]["code"], -32602, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read_messages"),
        "{body}"
    );
}

#[sqlx::test]
async fn a_stalled_body_is_408_like_on_every_route(db: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = test_config();
    config.http.body_timeout = std::time::Duration::from_millis(500);
    let app = TestApp::spawn_config(db, config).await;
    let key = app.writer().await;
    let mut tcp = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Accept: {ACCEPT}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n\
         {{\"jsonrpc\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(body["message"], "the request body did not arrive in time");
}

#[sqlx::test]
async fn hosts_and_origins_outside_the_setting_are_refused(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let key = app.writer().await;
    let list = rpc("tools/list", json!({}));
    let send = |host: Option<&str>, origin: Option<&str>| {
        let mut request = app
            .request(Method::POST, "/v1/mcp", &key)
            .header(header::ACCEPT, ACCEPT)
            .json(&list);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        common::call(request)
    };
    let port = app.base.rsplit(':').next().unwrap().to_owned();

    let (status, body) = send(None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(Some(&format!("localhost:{port}")), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(None, Some(&format!("http://localhost:{port}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A rebinding page: its own name in Host. Refused before the key is even looked at.
    let (status, body) = send(Some("attacker.example:8080"), None).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "host_not_allowed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--mcp-allowed-host"),
        "{body}"
    );
    let (status, body) = send(None, Some("https://attacker.example")).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "host_not_allowed");

    // The operator names the public host.
    let config = channeld::config::Config {
        mcp: McpConfig {
            allowed_hosts: vec!["agents.example.com".into()],
            ..McpConfig::default()
        },
        ..test_config()
    };
    let public = TestApp::spawn_config(db, config).await;
    let key = public.writer().await;
    let (status, body) = common::call(
        public
            .request(Method::POST, "/v1/mcp", &key)
            .header(header::ACCEPT, ACCEPT)
            .header(header::HOST, "agents.example.com")
            .json(&list),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = common::call(
        public
            .request(Method::POST, "/v1/mcp", &key)
            .header(header::ACCEPT, ACCEPT)
            .json(&list),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "host_not_allowed");
}

#[sqlx::test]
async fn refusals_are_tool_errors_with_the_envelope(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let writer = app.writer().await;
    let reader = app.key(&[Scope::ChannelsRead]).await;
    let realtime_only = app.key(&[Scope::Publish, Scope::Subscribe]).await;
    let channel = app.channel(&writer, "refusals").await;

    let result = tool(
        &app,
        &realtime_only,
        "read_messages",
        json!({"channel_id": channel}),
    )
    .await;
    assert_eq!(result["isError"], true);
    assert_eq!(result["structuredContent"]["error"], "insufficient_scope");
    assert_eq!(
        result["structuredContent"]["required_scopes"],
        json!(["channels:read"])
    );
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("channels:read") && text.contains("read_messages"),
        "{text}"
    );

    for (name, arguments) in [
        ("create_channel", json!({"name": "nope"})),
        (
            "update_channel_document",
            json!({"channel_id": channel, "document": "x"}),
        ),
    ] {
        let result = tool(&app, &reader, name, arguments).await;
        assert_eq!(
            result["structuredContent"]["error"], "insufficient_scope",
            "{name}"
        );
    }

    // An integral number is an integer in either spelling, as JSON Schema counts it.
    let result = tool(
        &app,
        &writer,
        "read_messages",
        json!({"channel_id": channel as f64, "limit": 5.0}),
    )
    .await;
    assert_eq!(result["isError"], false, "{result}");

    let cases = [
        (
            "get_channel",
            json!({"channel_id": 999_999}),
            "not_found",
            "channel 999999 not found",
        ),
        (
            "read_messages",
            json!({"channel_id": channel, "limit": 101}),
            "invalid_request",
            "limit must be an integer from 1 to 100 (got 101)",
        ),
        (
            "read_messages",
            json!({"channel_id": channel, "limit": 2.5}),
            "invalid_request",
            "limit: invalid type: floating point `2.5`, expected an integer",
        ),
        (
            "wait_for_messages",
            json!({"channel_id": channel, "after": 0, "wait_seconds": 26}),
            "invalid_request",
            "wait_seconds must be an integer from 0 to 25 (got 26)",
        ),
        (
            "wait_for_messages",
            json!({"channel_id": channel}),
            "invalid_request",
            "missing field `after`",
        ),
        (
            "post_message",
            json!({"channel_id": channel, "content": "x", "idempotency_key": "tab\there"}),
            "invalid_request",
            "idempotency_key must be 1-255 printable ASCII characters",
        ),
        (
            "post_message",
            json!({"channel_id": channel, "content": ""}),
            "invalid_request",
            "content must be 1-65536 bytes",
        ),
        (
            "post_message",
            json!({"channel_id": channel, "content": "x", "sender": "admin"}),
            "invalid_request",
            "unknown field `sender`",
        ),
        (
            "create_channel",
            json!({"name": "refusals"}),
            "channel_name_taken",
            "already has this name",
        ),
        (
            "list_channels",
            json!({"sort": "name", "cursor": "garbage"}),
            "invalid_request",
            "cursor must be a next_cursor this server returned",
        ),
    ];
    for (name, arguments, code, says) in cases {
        let result = tool(&app, &writer, name, arguments.clone()).await;
        assert_eq!(result["isError"], true, "{name} {arguments}: {result}");
        assert_eq!(
            result["structuredContent"]["error"], code,
            "{name}: {result}"
        );
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(text.contains(says), "{name}: {text}");
    }

    // An archived channel refuses posts, as REST does.
    let (status, _) = app
        .put(
            &format!("/v1/channels/{channel}"),
            &writer,
            json!({"archived": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let result = tool(
        &app,
        &writer,
        "post_message",
        json!({"channel_id": channel, "content": "late"}),
    )
    .await;
    assert_eq!(result["structuredContent"]["error"], "channel_archived");
}

#[sqlx::test]
async fn documents_are_replaced_and_cleared(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let created = tool(
        &app,
        &key,
        "create_channel",
        json!({"name": "plan", "ticket_slug": "AM-9", "document": "# v1"}),
    )
    .await;
    let channel = created["structuredContent"]["channel"]["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        created["structuredContent"]["channel"]["ticket_slug"],
        "AM-9"
    );

    let updated = tool(
        &app,
        &key,
        "update_channel_document",
        json!({"channel_id": channel, "document": "# v2"}),
    )
    .await;
    assert_eq!(updated["structuredContent"]["channel"]["document"], "# v2");
    let (_, rest) = app.get(&format!("/v1/channels/{channel}"), &key).await;
    assert_eq!(rest["channel"]["document"], "# v2");

    // The document must be given: a forgotten argument never clears it.
    let forgotten = tool(
        &app,
        &key,
        "update_channel_document",
        json!({"channel_id": channel}),
    )
    .await;
    assert_eq!(forgotten["isError"], true);
    let cleared = tool(
        &app,
        &key,
        "update_channel_document",
        json!({"channel_id": channel, "document": null}),
    )
    .await;
    assert_eq!(
        cleared["structuredContent"]["channel"]["document"],
        Value::Null
    );
    let got = tool(&app, &key, "get_channel", json!({"channel_id": channel})).await;
    assert_eq!(got["structuredContent"]["channel"]["document"], Value::Null);
    assert_eq!(got["structuredContent"]["channel"]["name"], "plan");
}

#[sqlx::test]
async fn waiting_tool_calls_hold_no_database_connection(db: PgPool) {
    const WAITERS: usize = 200;
    const POOL: u32 = 2;
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
    let channel = app.channel(&key, "many waiters").await;

    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let request = app
                .request(Method::POST, "/v1/mcp", &key)
                .header(header::ACCEPT, ACCEPT)
                .json(&rpc(
                    "tools/call",
                    json!({"name": "wait_for_messages", "arguments": {"channel_id": channel, "after": 0, "wait_seconds": 25}}),
                ));
            tokio::spawn(common::call(request))
        })
        .collect();
    app.until_waiting(WAITERS as u64, Duration::from_secs(20))
        .await;
    // Two pooled connections serve 200 waiting calls, and are free for other requests. The
    // delivery reader's periodic sweep may hold one for the moment of its query, so the pool is
    // watched until none is in use; waiters that held connections would keep both.
    let in_use = || server_pool.size() as usize - server_pool.num_idle();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while in_use() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_use(), 0, "connections still in use while the calls wait");
    let (status, _) = app.get("/v1/channels", &key).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(&format!("channeld_message_waiters {WAITERS}\n")),
        "{metrics}"
    );

    let posted = app.message(&key, channel, "everyone wake up").await;
    for waiter in waiters {
        let (status, body) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let result = &body["result"]["structuredContent"];
        assert_eq!(result["timed_out"], false, "{body}");
        assert_eq!(result["messages"][0]["id"], posted);
        assert_eq!(result["next_after"], posted);
    }
    assert!(server_pool.size() <= POOL);
    assert_eq!(
        app.state
            .metrics
            .waiters
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[sqlx::test]
async fn waiters_woken_by_one_post_each_get_the_page_they_asked_for(db: PgPool) {
    let mut config = common::test_config();
    config.max_streams_per_key = 100;
    let app = TestApp::spawn_config(db, config).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "shared wake-ups").await;
    let first = app.message(&key, channel, "already there").await;
    let wait = |arguments: Value| {
        let request = app
            .request(Method::POST, "/v1/mcp", &key)
            .header(header::ACCEPT, ACCEPT)
            .json(&rpc(
                "tools/call",
                json!({"name": "wait_for_messages", "arguments": arguments}),
            ));
        tokio::spawn(common::call(request))
    };
    let base = json!({"channel_id": channel, "after": first, "wait_seconds": 20});
    let with = |extra: Value| {
        let mut arguments = base.clone();
        arguments
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        arguments
    };
    // Two identical waits, one for pod-a's mentions, one for pod-b's, and one from the start.
    let same = [wait(base.clone()), wait(base.clone())];
    let for_a = wait(with(json!({"mentions": "pod-a"})));
    let for_b = wait(with(json!({"mentions": "pod-b"})));
    let from_start = wait(with(json!({"after": 0})));
    let from_start = from_start.await.unwrap().1;
    assert_eq!(
        from_start["result"]["structuredContent"]["messages"][0]["id"], first,
        "a page that exists answers at once: {from_start}"
    );
    app.until_waiting(4, Duration::from_secs(10)).await;

    let (status, posted) = app
        .post(
            &format!("/v1/channels/{channel}/messages"),
            &key,
            json!({"content": "for pod-a", "mentions": ["pod-a"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let to_a = posted["message"]["id"].as_i64().unwrap();
    for waiter in same.into_iter().chain([for_a]) {
        let (_, body) = waiter.await.unwrap();
        let result = &body["result"]["structuredContent"];
        assert_eq!(result["messages"].as_array().unwrap().len(), 1, "{body}");
        assert_eq!(result["messages"][0]["id"], to_a, "{body}");
        assert_eq!(result["next_after"], to_a, "{body}");
    }
    // Not what pod-b's waiter asked for: it waits on, and gets only its own message.
    let (status, posted) = app
        .post(
            &format!("/v1/channels/{channel}/messages"),
            &key,
            json!({"content": "for pod-b", "mentions": ["pod-b"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let to_b = posted["message"]["id"].as_i64().unwrap();
    let (_, body) = for_b.await.unwrap();
    let result = &body["result"]["structuredContent"];
    assert_eq!(result["messages"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(result["messages"][0]["id"], to_b, "{body}");
    assert_eq!(
        result["messages"][0]["mentions"],
        json!(["pod-b"]),
        "{body}"
    );
}

#[sqlx::test]
async fn a_wait_ends_at_the_configured_maximum(db: PgPool) {
    let config = channeld::config::Config {
        mcp: McpConfig {
            max_wait: Duration::from_secs(1),
            ..McpConfig::default()
        },
        ..test_config()
    };
    let app = TestApp::spawn_config(db, config).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "quiet").await;
    let posted = app.message(&key, channel, "old news").await;

    // The schema states the maximum, and no wait_seconds means the maximum.
    let (_, listed) = mcp(&app, &key, rpc("tools/list", json!({}))).await;
    let wait = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "wait_for_messages")
        .unwrap()
        .clone();
    assert_eq!(
        wait["inputSchema"]["properties"]["wait_seconds"]["maximum"],
        1
    );
    assert_eq!(wait["annotations"]["readOnlyHint"], true);

    let result = tool(
        &app,
        &key,
        "wait_for_messages",
        json!({"channel_id": channel, "after": posted}),
    )
    .await;
    assert_eq!(result["isError"], false);
    assert_eq!(result["structuredContent"]["timed_out"], true);
    assert_eq!(result["structuredContent"]["messages"], json!([]));
    assert_eq!(result["structuredContent"]["next_after"], posted);

    // Newer messages already there: at once, oldest first.
    let result = tool(
        &app,
        &key,
        "wait_for_messages",
        json!({"channel_id": channel, "after": 0}),
    )
    .await;
    assert_eq!(result["structuredContent"]["timed_out"], false);
    assert_eq!(result["structuredContent"]["messages"][0]["id"], posted);
}

#[sqlx::test]
async fn a_waiting_claim_messages_may_wait_longer_than_the_database_deadline(db: PgPool) {
    let mut config = common::test_config();
    config.db_timeout = std::time::Duration::from_secs(1);
    let app = TestApp::spawn_config(db, config).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "work").await;
    let (status, body) = app
        .post(
            &format!("/v1/channels/{channel}/consumers"),
            &key,
            json!({"name": "workers"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Nothing to claim: the call waits its 2 s, past the 1 s deadline of the database's work,
    // and answers an empty list rather than a deadline error.
    let started = std::time::Instant::now();
    let result = tool(
        &app,
        &key,
        "claim_messages",
        json!({"channel_id": channel, "consumer": "workers", "member": "pod-1", "wait": 2}),
    )
    .await;
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["structuredContent"], json!({"deliveries": []}));
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
}

/// The two ways a `tools/call` is answered: directly (`Content-Type: application/json`), or by
/// the SDK (the same type with a parameter, which only the SDK's path takes; see the unit tests
/// of `mcp::direct`).
#[derive(Clone, Copy, Debug)]
enum Path {
    Direct,
    Sdk,
}

/// A `tools/call` of `name` with id `id`, sent on `path`: status, `Content-Type`, and the body,
/// which must end with a newline.
async fn call_on(
    app: &TestApp,
    key: &str,
    path: Path,
    id: Value,
    name: &str,
    arguments: Value,
) -> (StatusCode, String, Value) {
    let content_type = match path {
        Path::Direct => "application/json",
        Path::Sdk => "application/json;charset=UTF-8",
    };
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    });
    let response = app
        .request(Method::POST, "/v1/mcp", key)
        .header(header::ACCEPT, ACCEPT)
        .header(header::CONTENT_TYPE, content_type)
        .header("mcp-protocol-version", "2025-11-25")
        .body(body.to_string())
        .send()
        .await
        .expect("request reaches the server");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("body");
    assert!(text.ends_with('\n'), "{path:?}: {text:?}");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path:?}: {text:?}"));
    (status, content_type, body)
}

/// The same call on both paths gets the same answer.
async fn same_on_both(app: &TestApp, key: &str, id: Value, name: &str, arguments: Value) -> Value {
    let direct = call_on(app, key, Path::Direct, id.clone(), name, arguments.clone()).await;
    let sdk = call_on(app, key, Path::Sdk, id, name, arguments).await;
    assert_eq!(direct, sdk, "{name}: direct, then the SDK's");
    assert_eq!(direct.0, StatusCode::OK, "{direct:?}");
    direct.2
}

#[sqlx::test]
async fn calls_answered_directly_are_answered_as_the_sdk_answers_them(db: PgPool) {
    let mut config = common::test_config();
    config.max_streams_per_key = 100;
    let app = std::sync::Arc::new(TestApp::spawn_config(db, config).await);
    let key = app.writer().await;
    let reader = app.key(&[Scope::ChannelsRead]).await;
    let channel = app.channel(&key, "two paths").await;
    let first = app.message(&key, channel, "already there").await;

    let read = json!({"channel_id": channel, "limit": 5});
    let answer = same_on_both(&app, &key, json!(7), "read_messages", read.clone()).await;
    assert_eq!(answer["id"], 7);
    assert_eq!(
        answer["result"]["structuredContent"]["messages"][0]["id"],
        first
    );
    let answer = same_on_both(&app, &key, json!("call-a"), "read_messages", read).await;
    assert_eq!(answer["id"], "call-a");
    // Tool errors: refused arguments, a missing scope, and a wait that ended with nothing new.
    let answer = same_on_both(
        &app,
        &key,
        json!(8),
        "post_message",
        json!({"channel_id": channel}),
    )
    .await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let posting = json!({"channel_id": channel, "content": "not mine to post"});
    let answer = same_on_both(&app, &reader, json!(9), "post_message", posting).await;
    assert_eq!(
        answer["result"]["structuredContent"]["error"], "insufficient_scope",
        "{answer}"
    );
    let nothing = json!({"channel_id": channel, "after": first, "wait_seconds": 0});
    let answer = same_on_both(&app, &key, json!(10), "wait_for_messages", nothing).await;
    assert_eq!(
        answer["result"]["structuredContent"]["timed_out"], true,
        "{answer}"
    );

    // Three waiters woken by one post: two answered directly (one writes the answer, the other
    // is handed it), one by the SDK.
    let wait = |path: Path| {
        let (app, key) = (app.clone(), key.clone());
        let arguments = json!({"channel_id": channel, "after": first, "wait_seconds": 20});
        tokio::spawn(async move {
            call_on(&app, &key, path, json!(11), "wait_for_messages", arguments).await
        })
    };
    let waiters = [wait(Path::Direct), wait(Path::Sdk), wait(Path::Direct)];
    app.until_waiting(3, Duration::from_secs(10)).await;
    let posted = app.message(&key, channel, "wakes all three").await;
    let mut answers = Vec::new();
    for waiter in waiters {
        answers.push(waiter.await.unwrap());
    }
    let (status, _, body) = &answers[0];
    assert_eq!(*status, StatusCode::OK);
    assert_eq!(
        body["result"]["structuredContent"]["messages"][0]["id"], posted,
        "{body}"
    );
    assert_eq!(
        body["result"]["structuredContent"]["next_after"], posted,
        "{body}"
    );
    assert!(
        body["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|text| text.starts_with("1 message in channel")),
        "{body}"
    );
    assert_eq!(answers[0], answers[1], "direct, then the SDK's");
    assert_eq!(answers[0], answers[2], "written, then handed over");
}
