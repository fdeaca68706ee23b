//! Errors say what to do: a 404 names what is missing, the archived 409 says how to unarchive,
//! `requires_after` explains itself, a scope error names the missing scope and the key's own.
//! The codes are the SPEC's, unchanged; these tests pin the messages clients show.

mod common;

use channeld::auth::Scope;
use common::{TestApp, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test]
async fn not_found_names_what_is_missing(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key(&[Scope::ChannelsWrite, Scope::Publish, Scope::Presence])
        .await;
    let missing = "channel 999999 not found";
    let requests = [
        (Method::GET, "/v1/channels/999999", None),
        (
            Method::PUT,
            "/v1/channels/999999",
            Some(json!({"name": "renamed"})),
        ),
        (Method::GET, "/v1/channels/999999/messages", None),
        (Method::GET, "/v1/channels/999999/events", None),
        (
            Method::POST,
            "/v1/channels/999999/messages",
            Some(json!({"content": "x"})),
        ),
        (
            Method::POST,
            "/v1/channels/999999/publish",
            Some(json!({"data": {}})),
        ),
        (Method::GET, "/v1/channels/999999/peers", None),
    ];
    for (method, path, body) in requests {
        let mut request = app.request(method.clone(), path, &key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, body) = common::call(request).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        assert_eq!(body["message"], missing, "{method} {path}");
    }

    let (status, body) = app.get("/v1/nowhere", &key).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        body["message"],
        "no route for /v1/nowhere: the API is described at /v1/openapi.json"
    );
}

#[sqlx::test]
async fn the_archived_conflict_says_how_to_unarchive(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&[Scope::ChannelsWrite, Scope::Publish]).await;
    let channel = app.channel(&key, "archived-errors").await;
    let path = format!("/v1/channels/{channel}");
    let (status, _) = app.put(&path, &key, json!({"archived": true})).await;
    assert_eq!(status, StatusCode::OK);

    let expected = format!(
        "channel {channel} is archived and takes no new messages; unarchive it with \
         `PUT /v1/channels/{channel}` and the body `{{\"archived\": false}}`"
    );
    for (path, body) in [
        (format!("{path}/messages"), json!({"content": "late"})),
        (format!("{path}/publish"), json!({"data": {}})),
    ] {
        let (status, body) = app.post(&path, &key, body).await;
        assert_error(status, &body, StatusCode::CONFLICT, "channel_archived");
        assert_eq!(body["message"], expected.as_str(), "{path}");
    }

    // Doing what it says works.
    let (status, _) = app.put(&path, &key, json!({"archived": false})).await;
    assert_eq!(status, StatusCode::OK);
    app.message(&key, channel, "back").await;
}

#[sqlx::test]
async fn a_long_poll_without_after_explains_itself(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "requires-after").await;
    let (status, body) = app
        .get(&format!("/v1/channels/{channel}/messages?wait=5"), &key)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(body["details"], json!({"wait": ["requires_after"]}));
    assert_eq!(
        body["message"],
        "wait needs after: a long poll waits for messages newer than the last id you have, \
         so send after=<that id> (after=0 waits for the channel's first message)"
    );
}

#[sqlx::test]
async fn a_scope_error_names_the_missing_scope_and_the_keys_scopes(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let reader = app.key(&[Scope::ChannelsRead, Scope::Subscribe]).await;
    let (status, body) = app
        .post("/v1/channels", &reader, json!({"name": "nope"}))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(body["required_scopes"], json!(["channels:write"]));
    assert_eq!(
        body["message"],
        "this API key lacks the channels:write scope, which this request needs \
         (it has channels:read, subscribe); \
         use a key created with --scopes channels:read,subscribe,channels:write"
    );
}
