//! Who may call what: credential forms, 401 for every bad key, 403 with `required_scopes`.

mod common;

use channeld::auth::{Scope, revoke_key};
use common::{TestApp, assert_error, call};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test]
async fn both_bearer_forms_and_x_api_key_authenticate(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let live = app.key(&[Scope::ChannelsRead]).await;
    let id = &live["sk_live_".len().."sk_live_".len() + 16];
    let secret = &live["sk_live_".len() + 17..];
    let pair = format!("sk_id_{id}:sk_secret_{secret}");
    let url = format!("{}/v1/channels", app.base);

    let forms = [
        ("Authorization", format!("Bearer {live}")),
        ("Authorization", format!("Bearer {pair}")),
        ("Authorization", format!("bearer {live}")),
        ("X-API-Key", live.clone()),
        ("X-API-Key", pair.clone()),
    ];
    for (header, value) in forms {
        let (status, body) = call(app.http.get(&url).header(header, &value)).await;
        assert_eq!(status, StatusCode::OK, "{header}: {value} -> {body}");
        assert_eq!(body["total"], 0);
    }
}

#[sqlx::test]
async fn every_bad_credential_gets_a_401_that_says_what_to_fix(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let revoked = app.key(&[Scope::ChannelsRead]).await;
    let revoked_id = format!("sk_id_{}", &revoked[8..24]);
    assert!(revoke_key(&app.db, &revoked_id).await.expect("revoke"));
    let expired = app
        .key_expiring(
            &[Scope::ChannelsRead],
            Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .await;
    let valid = app.key(&[Scope::ChannelsRead]).await;
    let wrong_secret = format!(
        "{}{}",
        &valid[..valid.len() - 1],
        if valid.ends_with('a') { 'b' } else { 'a' }
    );
    let unknown = format!("sk_live_{}_{}", "A".repeat(16), "B".repeat(32));
    let publishable = format!("pk_live_{}", "c".repeat(24));
    let url = format!("{}/v1/channels", app.base);

    let token = common::local_token(
        &valid,
        &common::claims("u_1", chrono::Utc::now().timestamp() + 60),
    );

    // Each says what to fix. An unknown id and a wrong secret read the same, so a guess learns
    // nothing; revoked and expired are told only to a caller whose secret matched.
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no credential", None, "missing API key"),
        ("empty bearer", Some("Bearer ".into()), "malformed API key"),
        (
            "basic scheme",
            Some(format!("Basic {valid}")),
            "must read `Bearer <key>`",
        ),
        (
            "malformed",
            Some("Bearer sk_live_short".into()),
            "malformed API key",
        ),
        (
            "unknown key",
            Some(format!("Bearer {unknown}")),
            "unknown API key: no such key, or a wrong secret",
        ),
        (
            "wrong secret",
            Some(format!("Bearer {wrong_secret}")),
            "unknown API key: no such key, or a wrong secret",
        ),
        (
            "revoked",
            Some(format!("Bearer {revoked}")),
            "this key was revoked",
        ),
        (
            "expired",
            Some(format!("Bearer {expired}")),
            "this key has expired",
        ),
        (
            "publishable key on REST",
            Some(format!("Bearer {publishable}")),
            "publishable keys (pk_live_…) only open WebSockets",
        ),
        (
            "token on REST",
            Some(format!("Bearer {token}")),
            "realtime tokens only open WebSockets",
        ),
    ];
    for (label, authorization, message) in cases {
        let mut request = app.http.get(&url);
        if let Some(value) = &authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.expect("send");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("Bearer".to_owned()),
            "{label}"
        );
        let status = response.status();
        let body = common::json_body(response).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        let said = body["message"].as_str().unwrap();
        assert!(said.contains(message), "{label}: {said:?}");
    }
    // A revoked or expired key with a wrong secret is just unknown: its state is not told to a
    // guesser.
    for key in [&revoked, &expired] {
        let guess = format!(
            "{}{}",
            &key[..key.len() - 1],
            if key.ends_with('a') { 'b' } else { 'a' }
        );
        let (status, body) = common::call(
            app.http
                .get(&url)
                .header("Authorization", format!("Bearer {guess}")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body["message"], "unknown API key: no such key, or a wrong secret",
            "{key}"
        );
    }
}

#[sqlx::test]
async fn scope_matrix(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let writer = app.writer().await;
    let channel = app.channel(&writer, "matrix").await;
    let read_only = app.key(&[Scope::ChannelsRead]).await;
    let realtime_only = app
        .key(&[Scope::Publish, Scope::Subscribe, Scope::Presence])
        .await;
    let admin_only = app.key(&[Scope::Admin]).await;

    let routes: Vec<(Method, String, Option<serde_json::Value>, &str)> = vec![
        (Method::GET, "/v1/channels".into(), None, "channels:read"),
        (
            Method::GET,
            format!("/v1/channels/{channel}"),
            None,
            "channels:read",
        ),
        (
            Method::GET,
            format!("/v1/channels/{channel}/messages"),
            None,
            "channels:read",
        ),
        (
            Method::POST,
            "/v1/channels".into(),
            Some(json!({"name": "new one"})),
            "channels:write",
        ),
        (
            Method::PUT,
            format!("/v1/channels/{channel}"),
            Some(json!({"description": "d"})),
            "channels:write",
        ),
        (
            Method::POST,
            format!("/v1/channels/{channel}/messages"),
            Some(json!({"content": "hi"})),
            "channels:write",
        ),
    ];
    for (method, path, body, required) in routes {
        for (label, key) in [
            ("read-only", &read_only),
            ("realtime-only", &realtime_only),
            ("admin-only", &admin_only),
            ("writer", &writer),
        ] {
            let mut request = app.request(method.clone(), &path, key);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let (status, response) = call(request).await;
            let allowed = match label {
                "writer" => true,
                "read-only" => required == "channels:read",
                _ => false,
            };
            if allowed {
                assert!(
                    status.is_success(),
                    "{label} {method} {path}: {status} {response}"
                );
            } else {
                assert_error(
                    status,
                    &response,
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                );
                assert_eq!(
                    response["required_scopes"],
                    json!([required]),
                    "{label} {method} {path}"
                );
            }
        }
    }
}

#[sqlx::test]
async fn authentication_comes_before_routing_details(db: PgPool) {
    let app = TestApp::spawn(db).await;
    // Without a key, even an unknown channel answers 401: ids cannot be probed anonymously.
    let (status, body) = call(app.http.get(format!("{}/v1/channels/999", app.base))).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
}

/// Waits until `key` gets `status` from `app`, at most `within`; answers how long it took.
async fn until_status(
    app: &TestApp,
    key: &str,
    status: StatusCode,
    within: std::time::Duration,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    common::eventually(
        within,
        &format!("GET /v1/channels answers {status}"),
        || async { app.get("/v1/channels", key).await.0 == status },
    )
    .await;
    started.elapsed()
}

#[sqlx::test]
async fn revocation_and_expiry_reach_every_instance_within_a_second(db: PgPool) {
    let config = common::test_config();
    let one = TestApp::spawn_instance(db.clone(), config.clone()).await;
    let two = TestApp::spawn_instance(db, config).await;
    // A second of trust, plus what a loaded test machine adds to a request.
    let within = channeld::auth::cache::MAX_AGE + std::time::Duration::from_millis(500);

    let doomed = one.key(&[Scope::ChannelsRead]).await;
    let expiring = one
        .key_expiring(
            &[Scope::ChannelsRead],
            Some(chrono::Utc::now() + chrono::Duration::seconds(2)),
        )
        .await;
    // Both instances have just looked both keys up, and hold them in their caches.
    for app in [&one, &two] {
        for key in [&doomed, &expiring] {
            assert_eq!(app.get("/v1/channels", key).await.0, StatusCode::OK);
        }
    }
    // Within the second, a busy key is read from the database at most once more.
    let reads = one.state.keys.reads();
    for _ in 0..20 {
        assert_eq!(one.get("/v1/channels", &doomed).await.0, StatusCode::OK);
    }
    assert!(one.state.keys.reads() - reads <= 1, "20 requests, one key");
    let (key_id, _) = common::key_parts(&doomed);
    assert!(revoke_key(&one.db, &key_id).await.expect("revoke"));
    for app in [&one, &two] {
        until_status(app, &doomed, StatusCode::UNAUTHORIZED, within).await;
    }

    // Expiry needs no new lookup: a cached key's expiry is checked on every request.
    let expires_in = std::time::Duration::from_secs(2);
    for app in [&one, &two] {
        until_status(
            app,
            &expiring,
            StatusCode::UNAUTHORIZED,
            expires_in + within,
        )
        .await;
    }
    // An unknown key stays unknown, and asking again within the second reads nothing more.
    let unknown = format!("sk_live_{}_{}", "Q".repeat(16), "R".repeat(32));
    let reads = two.state.keys.reads();
    for _ in 0..20 {
        assert_eq!(
            two.get("/v1/channels", &unknown).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert!(
        two.state.keys.reads() - reads <= 2,
        "20 requests, one unknown key"
    );
}
