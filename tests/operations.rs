//! Operating channeld: probes, outages and recovery, request ids, error envelopes for whatever a
//! route does not handle, and the real binary (key CLI, JSON logs, SIGTERM).

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use channeld::auth::Scope;
use common::{DbProxy, TestApp, assert_error, call};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};

#[sqlx::test]
async fn every_json_response_ends_with_a_newline(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key(&[
            Scope::ChannelsWrite,
            Scope::Publish,
            Scope::Presence,
            Scope::Admin,
        ])
        .await;
    let channel = app.channel(&key, "newlines").await;
    let body = |value: Value| Some(value);
    let requests: Vec<(Method, String, Option<Value>, bool)> = vec![
        (
            Method::POST,
            "/v1/channels".into(),
            body(json!({"name": "nl two"})),
            true,
        ),
        (Method::GET, "/v1/channels".into(), None, true),
        (Method::GET, format!("/v1/channels/{channel}"), None, true),
        (
            Method::PUT,
            format!("/v1/channels/{channel}"),
            body(json!({})),
            true,
        ),
        (
            Method::POST,
            format!("/v1/channels/{channel}/messages"),
            body(json!({"content": "hi"})),
            true,
        ),
        (
            Method::GET,
            format!("/v1/channels/{channel}/messages"),
            None,
            true,
        ),
        (
            Method::GET,
            format!("/v1/channels/{channel}/messages?after=0&wait=1"),
            None,
            true,
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            body(json!({"peerId": "p"})),
            true,
        ),
        (Method::GET, "/v1/channels/room/peers".into(), None, true),
        (
            Method::POST,
            "/v1/channels/room/publish".into(),
            body(json!({"data": 1})),
            true,
        ),
        (Method::DELETE, "/v1/peers/p".into(), None, true),
        (Method::GET, "/healthz".into(), None, false),
        (Method::GET, "/readyz".into(), None, false),
        (Method::GET, "/v1/openapi.json".into(), None, false),
        // Errors: 400, 401, 404, 405, and a path no route knows.
        (Method::GET, "/v1/channels?limit=0".into(), None, true),
        (Method::GET, "/v1/channels".into(), None, false),
        (Method::GET, "/v1/channels/999999".into(), None, true),
        (Method::PATCH, "/v1/channels".into(), None, true),
        (Method::GET, "/v2/nothing".into(), None, true),
        (Method::GET, "/v1".into(), None, false),
        (
            Method::GET,
            "/v1/channels/app_abc/room-1/peers".into(),
            None,
            true,
        ),
        (Method::GET, "/v1/channels/%FF/peers".into(), None, true),
        (Method::DELETE, "/v1/peers/%FF".into(), None, true),
    ];
    for (method, path, json, authenticated) in requests {
        let mut request = app
            .http
            .request(method.clone(), format!("{}{path}", app.base));
        if authenticated {
            request = request.bearer_auth(&key);
        }
        if let Some(json) = json {
            request = request.json(&json);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{method} {path}: {status}"
        );
        let text = response.text().await.unwrap();
        assert!(text.ends_with('\n'), "{method} {path} ({status}): {text:?}");
        assert!(
            serde_json::from_str::<Value>(&text).is_ok(),
            "{method} {path}: {text}"
        );
    }
}

#[sqlx::test]
async fn healthz_and_readyz_answer_when_all_is_well(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for (path, status) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(common::json_body(response).await, json!({"status": status}));
    }
}

#[sqlx::test]
async fn a_database_outage_answers_503_and_recovers_by_itself(db: PgPool) {
    let options = (*db.connect_options()).clone();
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let proxy = DbProxy::start(target.parse().expect("tcp database address")).await;
    let server_pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(options.host("127.0.0.1").port(proxy.addr.port()));
    let app = TestApp::spawn_with(db, server_pool).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "survives").await;

    proxy.cut();
    let (status, body) = call(app.http.get(format!("{}/readyz", app.base))).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let (status, body) = app.get("/v1/channels", &key).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let (status, body) = app
        .post(
            &format!("/v1/channels/{channel}/messages"),
            &key,
            json!({"content": "x"}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let (status, _) = call(app.http.get(format!("{}/healthz", app.base))).await;
    assert_eq!(status, StatusCode::OK, "the process stays up");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("\nchanneld_db_unavailable_total 3\n"),
        "the outage is counted:\n{metrics}"
    );

    proxy.restore();
    common::eventually(
        Duration::from_secs(5),
        "readyz recovers once the database is back",
        || async { call(app.http.get(format!("{}/readyz", app.base))).await.0 == StatusCode::OK },
    )
    .await;
    let (status, body) = app.get(&format!("/v1/channels/{channel}"), &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["channel"]["name"], "survives",
        "nothing stored was lost"
    );
}

#[sqlx::test]
async fn every_response_carries_a_request_id(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&[Scope::ChannelsRead]).await;
    let response = app
        .request(Method::GET, "/v1/channels", &key)
        .send()
        .await
        .unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    let response = app
        .request(Method::GET, "/v1/nowhere", &key)
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"],
        "trace-me-123",
        "a caller's id is kept"
    );
}

#[sqlx::test]
async fn unknown_routes_and_methods_answer_in_the_envelope(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let response = app
        .request(Method::GET, "/v2/channels", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let status = response.status();
    assert_error(
        status,
        &common::json_body(response).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let (status, body) = call(app.request(Method::DELETE, "/v1/channels", &key)).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[sqlx::test]
async fn bodies_over_one_mebibyte_are_413(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let huge = json!({"name": "big", "document": "x".repeat(1024 * 1024)});
    let (status, body) = app.post("/v1/channels", &key, huge).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    );
    let (_, listed) = app.get("/v1/channels", &key).await;
    assert_eq!(listed["total"], 0);
}

const MASTER_KEY: &str = "6368616e6e656c642074657374206d6173746572206b65792030303030303030";

fn channeld(db: &PgPool, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_channeld"))
        .args(args)
        .env("DATABASE_URL", common::database_url(db))
        .env("CHANNELD_MASTER_KEY", MASTER_KEY)
        .output()
        .expect("run channeld")
}

#[sqlx::test]
async fn the_key_cli_creates_lists_and_revokes(db: PgPool) {
    let created = channeld(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "cli test",
            "--scopes",
            "channels:read",
            "--quiet",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let secret = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("sk_live_"), "{secret}");
    let key_id = format!("sk_id_{}", &secret[8..24]);

    let app = TestApp::spawn(db.clone()).await;
    let (status, _) = app.get("/v1/channels", &secret).await;
    assert_eq!(status, StatusCode::OK, "the printed secret works");

    let listed = channeld(&db, &["keys", "list"]);
    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listing.contains(&key_id) && listing.contains("active"),
        "{listing}"
    );
    assert!(
        !listing.contains(&secret[25..]),
        "list never shows a secret"
    );

    // A wrong secret revokes nothing; the whole key, as `create` printed it, revokes it.
    let mut wrong = secret.clone();
    wrong.replace_range(30..31, if &secret[30..31] == "a" { "b" } else { "a" });
    let refused = channeld(&db, &["keys", "revoke", &wrong]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("nothing was revoked"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let (status, _) = app.get("/v1/channels", &secret).await;
    assert_eq!(status, StatusCode::OK, "still valid after a wrong secret");
    let revoked = channeld(&db, &["keys", "revoke", &secret]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&revoked.stdout).trim(),
        format!("revoked {key_id}")
    );
    let again = channeld(&db, &["keys", "revoke", &key_id]);
    assert!(again.status.success(), "revoking by id twice is fine");
    // Within a second (a running server trusts a key lookup that long).
    common::eventually(
        Duration::from_millis(1500),
        "a revoked key answers 401",
        || async { app.get("/v1/channels", &secret).await.0 == StatusCode::UNAUTHORIZED },
    )
    .await;
    assert!(
        String::from_utf8(channeld(&db, &["keys", "list"]).stdout)
            .unwrap()
            .contains("revoked")
    );

    let unknown = channeld(&db, &["keys", "revoke", "sk_id_nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no key sk_id_nope"));
    let not_a_key = channeld(&db, &["keys", "revoke", "orchestrator"]);
    assert!(String::from_utf8_lossy(&not_a_key.stderr).contains("pass the key id (sk_id_…"));
    let bad_scope = channeld(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "x",
            "--scopes",
            "channels:delete",
        ],
    );
    assert!(!bad_scope.status.success());
    assert!(String::from_utf8_lossy(&bad_scope.stderr).contains("unknown scope"));

    let verbose = channeld(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "full",
            "--scopes",
            "publish,subscribe",
            "--channel-pattern",
            "app_abc/**",
            "--expires-in",
            "30d",
        ],
    );
    let text = String::from_utf8(verbose.stdout).unwrap();
    assert!(
        text.contains("sk_live_") && text.contains("sk_secret_") && text.contains("app_abc/**"),
        "{text}"
    );

    // Columns stay aligned whatever the length of names and scopes.
    let long = channeld(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "an orchestrator with a rather long name",
            "--scopes",
            "channels:read,channels:write,publish,subscribe,presence,send,admin",
        ],
    );
    assert!(long.status.success());
    let listing = String::from_utf8(channeld(&db, &["keys", "list"]).stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 4, "{listing}");
    let header = lines[0];
    for column in ["NAME", "STATUS", "EXPIRES", "SCOPES", "CHANNEL PATTERNS"] {
        let at = header.find(column).unwrap();
        for line in &lines[1..] {
            let before = &line[..at];
            assert!(
                before.ends_with("  ") && !line[at..].starts_with(' '),
                "{column} misaligned:\n{listing}"
            );
        }
    }
}

#[sqlx::test]
async fn text_logs_sent_to_a_pipe_carry_no_colour_escapes(db: PgPool) {
    let migrated = channeld(&db, &["migrate", "--log-format", "text"]);
    assert!(migrated.status.success());
    let log = String::from_utf8(migrated.stderr).unwrap();
    assert!(
        log.contains("INFO") && log.contains("migrations applied"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "escape sequences in {log:?}");
}

/// The real binary serving on a port the OS picks, its JSON log lines on a pipe.
fn serve_with_json_logs(db: &PgPool) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_channeld"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("DATABASE_URL", common::database_url(db))
        .env("CHANNELD_MASTER_KEY", MASTER_KEY)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server")
}

#[sqlx::test]
async fn the_server_logs_json_lines_without_secrets_and_stops_cleanly_on_sigterm(db: PgPool) {
    let created = channeld(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "srv",
            "--scopes",
            "channels:read",
            "--quiet",
        ],
    );
    let secret = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let mut child = serve_with_json_logs(&db);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("server exited early").unwrap();
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if event["message"] == "channeld listening" {
            break event["address"].as_str().unwrap().to_owned();
        }
    };

    channeld::webhooks::send::install_tls_provider();
    let response = reqwest::Client::new()
        .get(format!(
            "http://{address}/v1/channels?ticket_slug=do-not-log-me"
        ))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let logged: Vec<String> = lines.map_while(Result::ok).collect();
    let request_line = logged
        .iter()
        .find(|line| line.contains(&request_id))
        .unwrap_or_else(|| panic!("no log line for {request_id}: {logged:#?}"));
    let event: Value = serde_json::from_str(request_line).unwrap();
    assert_eq!(event["span"]["status"], 200, "{event}");
    assert_eq!(event["span"]["path"], "/v1/channels");
    assert_eq!(event["span"]["method"], "GET");
    for line in &logged {
        assert!(
            !line.contains("do-not-log-me") && !line.contains(&secret[8..]),
            "secret leaked: {line}"
        );
    }
}

#[sqlx::test]
async fn the_server_says_at_startup_whether_postgresql_vacuums_on_its_own(db: PgPool) {
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(&db)
        .await
        .unwrap();
    let mut child = serve_with_json_logs(&db);
    let stderr = child.stderr.take().unwrap();
    // The line that reports the setting, read off the server's log until it comes.
    let reported = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let event: Value = serde_json::from_str(&line).ok()?;
                event.get("autovacuum").is_some().then_some(event)
            })
    });
    let reported = tokio::time::timeout(Duration::from_secs(20), reported).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let event = reported
        .expect("no line about autovacuum within 20 s")
        .unwrap()
        .expect("the server exited without saying");
    assert_eq!(event["autovacuum"], autovacuum.as_str(), "{event}");
    let expected_level = if autovacuum == "off" { "WARN" } else { "INFO" };
    assert_eq!(event["level"], expected_level, "{event}");
    if autovacuum == "off" {
        assert!(
            event["message"]
                .as_str()
                .unwrap()
                .contains("VACUUM on a schedule"),
            "{event}"
        );
    }
}

#[sqlx::test]
async fn the_openapi_document_describes_every_route_and_docs_render_it(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (status, document) = call(app.http.get(format!("{}/v1/openapi.json", app.base))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    let expected = [
        ("/v1/channels", vec!["get", "post"]),
        ("/v1/channels/{id}", vec!["get", "put"]),
        ("/v1/channels/{id}/messages", vec!["get", "post"]),
        ("/v1/channels/{id}/events", vec!["get"]),
        ("/v1/channels/{id}/read", vec!["put"]),
        ("/v1/channels/{channel}/peers", vec!["get"]),
        ("/v1/channels/{channel}/publish", vec!["post"]),
        ("/v1/peers/{peer_id}", vec!["delete"]),
        ("/v1/tokens", vec!["post"]),
        ("/v1/keys", vec!["get", "post"]),
        ("/v1/keys/{key_id}", vec!["delete"]),
        ("/v1/channels/{id}/consumers", vec!["get", "post"]),
        ("/v1/channels/{id}/consumers/{name}", vec!["get", "delete"]),
        ("/v1/channels/{id}/consumers/{name}/claim", vec!["post"]),
        ("/v1/channels/{id}/consumers/{name}/ack", vec!["post"]),
        ("/v1/channels/{id}/consumers/{name}/nack", vec!["post"]),
        ("/v1/channels/{id}/consumers/{name}/extend", vec!["post"]),
        ("/v1/channels/{id}/consumers/{name}/dead", vec!["get"]),
        (
            "/v1/channels/{id}/consumers/{name}/dead/{message_id}/retry",
            vec!["post"],
        ),
        ("/v1/webhooks", vec!["get", "post"]),
        ("/v1/webhooks/{id}", vec!["get", "put", "delete"]),
        ("/v1/webhooks/{id}/rotate-secret", vec!["post"]),
        ("/v1/webhooks/{id}/deliveries", vec!["get"]),
        (
            "/v1/webhooks/{id}/deliveries/{event_id}/retry",
            vec!["post"],
        ),
        ("/v1", vec!["get"]),
        ("/healthz", vec!["get"]),
        ("/readyz", vec!["get"]),
        ("/metrics", vec!["get"]),
    ];
    let paths = document["paths"].as_object().expect("paths");
    assert_eq!(
        paths.len(),
        expected.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (path, methods) in expected {
        for method in methods {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is documented"
            );
        }
    }
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    let post_message = &paths["/v1/channels/{id}/messages"]["post"];
    let headers: Vec<&str> = post_message["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "header")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(headers, ["Idempotency-Key"]);
    assert_eq!(
        post_message["responses"]["409"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Envelope"
    );

    let docs = app
        .http
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = docs.text().await.unwrap();
    assert!(
        page.contains("swagger"),
        "the page loads assets from channeld itself"
    );
    assert!(!page.contains("https://"), "no CDN");
}
