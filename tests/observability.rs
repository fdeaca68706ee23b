//! Running channeld in production: per-key rate limits and their headers, and `/metrics`.

mod common;

use std::time::Duration;

use channeld::{
    auth::{NewKey, Scope, create_key},
    ratelimit::Limit,
};
use common::{TestApp, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[sqlx::test]
async fn keys_are_rate_limited_with_headers_and_recover(db: PgPool) {
    let mut config = common::test_config();
    config.rate_limit = Limit { rate: 2, burst: 3 };
    let app = TestApp::spawn_config(db, config).await;
    let key = app.key(&[Scope::ChannelsRead]).await;

    for remaining in ["2", "1", "0"] {
        let response = app
            .request(Method::GET, "/v1/channels", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(
            header(&response, "ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        assert!(header(&response, "ratelimit-reset").is_some());
    }
    let refused = app
        .request(Method::GET, "/v1/channels", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header(&refused, "ratelimit-remaining").as_deref(),
        Some("0")
    );
    let body = common::json_body(refused).await;
    assert_error(
        StatusCode::TOO_MANY_REQUESTS,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );

    let other = app.key(&[Scope::ChannelsRead]).await;
    let (status, _) = app.get("/v1/channels", &other).await;
    assert_eq!(status, StatusCode::OK, "limits are per key");

    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _) = app.get("/v1/channels", &key).await;
    assert_eq!(status, StatusCode::OK, "the bucket refills at its rate");

    let (status, _) = common::call(app.http.get(format!("{}/healthz", app.base))).await;
    assert_eq!(status, StatusCode::OK);
    let anonymous = app
        .http
        .get(format!("{}/v1/channels", app.base))
        .send()
        .await
        .unwrap();
    assert!(
        header(&anonymous, "ratelimit-limit").is_none(),
        "only authenticated responses carry limits"
    );
}

#[sqlx::test]
async fn a_key_can_carry_its_own_limit(db: PgPool) {
    let mut config = common::test_config();
    config.rate_limit = Limit { rate: 1, burst: 1 };
    let app = TestApp::spawn_config(db, config).await;
    let new = NewKey {
        app_id: channeld::apps::DEFAULT_APP,
        name: "batch importer".into(),
        scopes: vec![Scope::ChannelsRead],
        channel_patterns: vec![],
        expires_at: None,
        rate_limit: Some(100),
        rate_burst: Some(20),
    };
    let (generated, _) = create_key(&app.db, &new, &app.config.master_key)
        .await
        .unwrap();
    let key = generated.live_form();
    for _ in 0..20 {
        let response = app
            .request(Method::GET, "/v1/channels", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-limit").as_deref(), Some("20"));
    }
}

async fn scrape(url: &str) -> String {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        header(&response, "content-type")
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    response.text().await.unwrap()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The layers that count requests wrap the router, not each route: every route, whichever
/// router registered it, still counts under its own pattern, and a request answered before
/// routing (414) or by no route under `unmatched`.
#[sqlx::test]
async fn every_route_counts_under_its_own_pattern(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&[Scope::ChannelsRead]).await;
    let sent = [
        (Method::GET, "/v1/channels/77/messages".to_owned(), 404),
        (Method::DELETE, "/v1/channels".to_owned(), 405),
        (Method::GET, "/v1/openapi.json".to_owned(), 200),
        (Method::GET, "/docs/".to_owned(), 200),
        (Method::GET, "/docs/swagger-ui.css".to_owned(), 200),
        (Method::GET, "/console/app.js".to_owned(), 200),
        (
            Method::GET,
            "/.well-known/oauth-protected-resource".to_owned(),
            404,
        ),
        (
            Method::GET,
            format!("/v1/nowhere/{}", "x".repeat(9000)),
            414,
        ),
    ];
    for (method, path, status) in &sent {
        let response = app
            .request(method.clone(), path, &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), *status, "{method} {path}");
    }
    let text = scrape(&format!("{}/metrics", app.base)).await;
    for (route, method, status) in [
        ("/v1/channels/{id}/messages", "GET", 404),
        ("/v1/channels", "DELETE", 405),
        ("/v1/openapi.json", "GET", 200),
        ("/docs/", "GET", 200),
        ("/docs/{*rest}", "GET", 200),
        ("/console/app.js", "GET", 200),
        ("/.well-known/{*rest}", "GET", 404),
        ("unmatched", "GET", 414),
    ] {
        let series = format!(
            r#"channeld_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#
        );
        assert_eq!(sample(&text, &series), Some(1.0), "{series}\n{text}");
    }
}

#[sqlx::test]
async fn metrics_move_with_requests_and_websocket_frames(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key(&[Scope::ChannelsWrite, Scope::Subscribe, Scope::Publish])
        .await;
    let url = format!("{}/metrics", app.base);
    let listed = r#"channeld_http_requests_total{route="/v1/channels",method="GET",status="200"}"#;

    for _ in 0..3 {
        app.get("/v1/channels", &key).await;
    }
    app.get("/v1/nowhere", &key).await;
    app.get("/v1/channels/app_abc/room-1/peers", &key).await;
    let text = scrape(&url).await;
    assert_eq!(sample(&text, listed), Some(3.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"channeld_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        Some(1.0)
    );
    assert!(
        text.contains(r#"channeld_http_requests_total{route="/v1/channels/{channel}/peers",method="GET",status="403"} 1"#),
        "the literal form counts under its route:\n{text}"
    );
    assert!(text.contains(r#"channeld_http_request_duration_seconds_bucket{le="+Inf",route="/v1/channels",method="GET",status="200"} 3"#));
    assert_eq!(sample(&text, "channeld_websocket_connections"), Some(0.0));
    assert!(sample(&text, "channeld_db_pool_connections").is_some());
    assert!(sample(&text, "channeld_db_pool_idle").is_some());

    let mut a = app
        .peer(&key, "a", json!({"permissions": ["subscribe", "publish"]}))
        .await;
    let mut b = app
        .peer(&key, "b", json!({"permissions": ["subscribe"]}))
        .await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    a.send(json!({"type": "publish", "channel": "room", "data": 1}))
        .await;
    b.recv().await;
    let text = scrape(&url).await;
    assert_eq!(sample(&text, "channeld_websocket_connections"), Some(2.0));
    assert_eq!(sample(&text, "channeld_websocket_subscriptions"), Some(2.0));
    assert_eq!(
        sample(&text, "channeld_websocket_frames_in_total"),
        Some(3.0),
        "two subscribes and a publish"
    );
    assert!(sample(&text, "channeld_websocket_frames_out_total").unwrap() >= 1.0);
    assert_eq!(
        sample(&text, "channeld_websocket_slow_consumer_disconnects_total"),
        Some(0.0)
    );
}

#[sqlx::test]
async fn metrics_can_move_to_their_own_listener(db: PgPool) {
    let mut config = common::test_config();
    config.rate_limit = Limit { rate: 1, burst: 1 };
    // As `--metrics-listen 127.0.0.1:0` does.
    let own = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let app = TestApp::spawn_at(db.clone(), db, config, own).await;
    let (status, _) = common::call(app.http.get(format!("{}/metrics", app.base))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let key = app.key(&[Scope::ChannelsRead]).await;
    app.get("/v1/channels", &key).await;
    app.get("/v1/channels", &key).await;
    let metrics_base = app.metrics_base.as_deref().expect("a metrics listener");
    let text = scrape(&format!("{metrics_base}/metrics")).await;
    assert_eq!(
        sample(&text, "channeld_rate_limited_requests_total"),
        Some(1.0),
        "{text}"
    );
}
