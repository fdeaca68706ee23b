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
async fn every_bad_credential_gets_the_same_401_with_www_authenticate(db: PgPool) {
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

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no credential", None),
        ("empty bearer", Some("Bearer ".into())),
        ("basic scheme", Some(format!("Basic {valid}"))),
        ("malformed", Some("Bearer sk_live_short".into())),
        ("unknown key", Some(format!("Bearer {unknown}"))),
        ("wrong secret", Some(format!("Bearer {wrong_secret}"))),
        ("revoked", Some(format!("Bearer {revoked}"))),
        ("expired", Some(format!("Bearer {expired}"))),
        (
            "publishable key on REST",
            Some(format!("Bearer {publishable}")),
        ),
    ];
    for (label, authorization) in cases {
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
        assert_eq!(
            body["message"], "missing or invalid API key",
            "{label}: keys must not be enumerable"
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
