//! Realtime driven from a backend: minting tokens, listing peers, publishing over REST, and
//! stored messages reaching the live channel of their persistent channel.

mod common;

use channeld::auth::Scope;
use common::{TestApp, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

const REALTIME: [Scope; 4] = [
    Scope::Publish,
    Scope::Subscribe,
    Scope::Presence,
    Scope::Send,
];

#[sqlx::test]
async fn tokens_are_minted_within_the_key_and_validated(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key_with_patterns(&[Scope::Subscribe, Scope::Presence], &["app_abc/**"])
        .await;
    let (status, body) = app
        .post("/v1/tokens", &key, json!({"peerId": "u_alice_123", "channels": ["app_abc/*"], "permissions": ["subscribe"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["expiresAt", "token"]);
    let default_expiry = chrono::Utc::now().timestamp() + 3600;
    assert!(
        (body["expiresAt"].as_i64().unwrap() - default_expiry).abs() <= 2,
        "default lifetime is an hour"
    );

    // An integral number is an integer in either spelling, as JSON Schema and generated clients
    // count it.
    let (status, body) = app
        .post(
            "/v1/tokens",
            &key,
            json!({"peerId": "p", "expiresInSec": 600.0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expiry = chrono::Utc::now().timestamp() + 600;
    assert!(
        (body["expiresAt"].as_i64().unwrap() - expiry).abs() <= 2,
        "{body}"
    );

    let forbidden = [
        (
            json!({"peerId": "p", "channels": ["app_xyz/*"]}),
            StatusCode::FORBIDDEN,
            "channel_not_authorized",
        ),
        (
            json!({"peerId": "p", "channels": ["**"]}),
            StatusCode::FORBIDDEN,
            "channel_not_authorized",
        ),
        (
            json!({"peerId": "p", "permissions": ["publish"]}),
            StatusCode::FORBIDDEN,
            "action_not_permitted",
        ),
    ];
    for (request, status, code) in forbidden {
        let (got, body) = app.post("/v1/tokens", &key, request.clone()).await;
        assert_error(got, &body, status, code);
    }
    let invalid = [
        (json!({}), "peerId", "required"),
        (json!({"peerId": ""}), "peerId", "format"),
        (json!({"peerId": "a\tb"}), "peerId", "format"),
        (
            json!({"peerId": "p", "expiresInSec": 0}),
            "expiresInSec",
            "range",
        ),
        (
            json!({"peerId": "p", "expiresInSec": 86401}),
            "expiresInSec",
            "range",
        ),
        (
            json!({"peerId": "p", "permissions": ["fly"]}),
            "permissions",
            "unknown",
        ),
        (
            json!({"peerId": "p", "permissions": ["channels:read"]}),
            "permissions",
            "unknown",
        ),
        (
            json!({"peerId": "p", "peerMetadata": {"x": "y".repeat(4100)}}),
            "peerMetadata",
            "length",
        ),
        (
            json!({"peerId": "p", "metadata": {"x": "y".repeat(8200)}}),
            "metadata",
            "length",
        ),
        (json!({"peerId": "p", "metadata": [1]}), "metadata", "type"),
        (
            json!({"peerId": "p", "expiresInSec": 600.5}),
            "expiresInSec",
            "type",
        ),
    ];
    for (request, field, code) in invalid {
        let (status, body) = app.post("/v1/tokens", &key, request.clone()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(body["details"], json!({field: [code]}), "{request}");
    }
}

#[sqlx::test]
async fn peers_are_listed_in_both_path_forms(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&REALTIME).await;
    let mut alice = app
        .peer(&key, "alice", json!({"peerMetadata": {"name": "Alice"}}))
        .await;
    let mut bob = app.peer(&key, "bob", json!({})).await;
    alice.subscribe("app_abc/room-1").await;
    bob.subscribe("app_abc/room-1").await;

    for path in [
        "/v1/channels/app_abc%2Froom-1/peers",
        "/v1/channels/app_abc/room-1/peers",
    ] {
        let (status, mut body) = app.get(path, &key).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body["peers"]
            .as_array_mut()
            .unwrap()
            .sort_by_key(|p| p["peerId"].as_str().unwrap().to_owned());
        assert_eq!(
            body,
            json!({"channel": "app_abc/room-1", "peers": [
                {"peerId": "alice", "metadata": {"name": "Alice"}},
                {"peerId": "bob"}
            ]}),
            "{path}"
        );
    }
    let (_, empty) = app.get("/v1/channels/quiet-room/peers", &key).await;
    assert_eq!(empty, json!({"channel": "quiet-room", "peers": []}));
}

#[sqlx::test]
async fn realtime_rest_checks_actions_patterns_and_names(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let no_presence = app.key(&[Scope::Publish]).await;
    let narrow = app.key_with_patterns(&REALTIME, &["app_abc/*"]).await;
    let publish = |path: &str, key: &str| {
        common::call(
            app.request(Method::POST, path, key)
                .json(&json!({"data": 1})),
        )
    };

    let (status, body) = app.get("/v1/channels/room/peers", &no_presence).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "action_not_permitted");
    let (status, body) = publish(
        "/v1/channels/room/publish",
        &app.key(&[Scope::Subscribe]).await,
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "action_not_permitted");
    let (status, body) = app.get("/v1/channels/app_xyz%2Froom/peers", &narrow).await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "channel_not_authorized",
    );
    let (status, body) = publish("/v1/channels/app_abc/a/b/publish", &narrow).await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "channel_not_authorized",
    );
    let (status, body) = publish("/v1/channels/_internal%2Fx/publish", &narrow).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "channel_reserved");
    let (status, body) = app.get("/v1/channels/bad%01name/peers", &narrow).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = common::call(
        app.http
            .get(format!("{}/v1/channels/app_abc/room/peers", app.base)),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) =
        common::call(app.request(Method::DELETE, "/v1/channels/app_abc/room/peers", &narrow)).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[sqlx::test]
async fn rest_publish_reaches_subscribers_with_from_and_metadata(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&REALTIME).await;
    let mut plain = app
        .peer(&key, "plain", json!({"permissions": ["subscribe"]}))
        .await;
    let mut curious = app
        .peer(&key, "curious", json!({"permissions": ["subscribe"]}))
        .await;
    plain.subscribe("app_abc/room-1").await;
    let ack = curious
        .request(json!({"type": "subscribe", "channel": "app_abc/room-1", "includeSenderMetadata": true, "requestId": "s"}))
        .await;
    assert_eq!(ack["type"], "ack");

    let (status, body) = app
        .post(
            "/v1/channels/app_abc%2Froom-1/publish",
            &key,
            json!({"data": {"n": 1}}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"channel": "app_abc/room-1", "delivered": 2})
        )
    );
    let expected =
        json!({"type": "message", "channel": "app_abc/room-1", "from": "server", "data": {"n": 1}});
    assert_eq!(plain.recv().await, expected);
    assert_eq!(
        curious.recv().await,
        expected,
        "no fromMetadata without peerMetadata"
    );

    let body = json!({"data": null, "from": "billing-bot", "peerMetadata": {"team": "billing"}});
    let (status, response) = app
        .post("/v1/channels/app_abc/room-1/publish", &key, body)
        .await;
    assert_eq!(
        (status, response["delivered"].clone()),
        (StatusCode::OK, json!(2))
    );
    assert_eq!(
        curious.recv().await,
        json!({"type": "message", "channel": "app_abc/room-1", "from": "billing-bot", "data": null, "fromMetadata": {"team": "billing"}})
    );
    assert!(plain.recv().await.get("fromMetadata").is_none());

    let (_, nobody) = app
        .post("/v1/channels/empty/publish", &key, json!({"data": 1}))
        .await;
    assert_eq!(nobody, json!({"channel": "empty", "delivered": 0}));

    let big = json!({"data": "x".repeat(33 * 1024)});
    let (status, body) = app.post("/v1/channels/room/publish", &key, big).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    );
    let (status, body) = app
        .post("/v1/channels/room/publish", &key, json!({"from": "x"}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(body["details"], json!({"data": ["required"]}));
    let (status, body) = app
        .post(
            "/v1/channels/room/publish",
            &key,
            json!({"data": 1, "from": "tab\t"}),
        )
        .await;
    assert_eq!(
        (status, &body["details"]),
        (StatusCode::BAD_REQUEST, &json!({"from": ["format"]}))
    );
}

#[sqlx::test]
async fn stored_messages_reach_the_live_channel_exactly_as_rest_returns_them(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key(&[Scope::ChannelsWrite, Scope::Subscribe, Scope::Publish])
        .await;
    let channel = app.channel(&key, "live").await;
    let live = channel.to_string();
    let mut watcher = app.peer(&key, "dashboard", json!({})).await;
    watcher.subscribe(&live).await;

    let path = format!("/v1/channels/{channel}/messages");
    let (_, posted) = app
        .post(&path, &key, json!({"content": "deploy started"}))
        .await;
    assert_eq!(
        watcher.recv().await,
        json!({"type": "message", "channel": live, "from": "api", "data": posted["message"],
               "messageId": posted["message"]["id"]})
    );
    let (_, by_agent) = app
        .post(&path, &key, json!({"content": "done", "pod_key": "pod-7"}))
        .await;
    let frame = watcher.recv().await;
    assert_eq!(frame["from"], "pod-7");
    assert_eq!(frame["data"], by_agent["message"]);
    assert_eq!(frame["messageId"], by_agent["message"]["id"]);

    // A publish that copies a stored frame's shape, over WebSocket or REST, stays ephemeral:
    // it arrives without `messageId`, whatever its `data` or its own frame holds.
    let mut imitator = app.peer(&key, "api", json!({})).await;
    let forged = json!({"id": 999_999, "channel_id": channel, "content": "forged"});
    imitator
        .send(json!({"type": "publish", "channel": live, "data": forged, "messageId": 999_999}))
        .await;
    let frame = watcher.recv().await;
    assert_eq!(
        frame,
        json!({"type": "message", "channel": live, "from": "api", "data": forged})
    );
    let (status, _) = app
        .post(
            &format!("/v1/channels/{channel}/publish"),
            &key,
            json!({"data": forged, "from": "api"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let frame = watcher.recv().await;
    assert_eq!(frame.get("messageId"), None, "{frame}");
    assert_eq!(frame["data"], forged);

    // An idempotent replay stores nothing new, so nothing new is delivered.
    let replay = || {
        let request = app
            .request(Method::POST, &path, &key)
            .header("Idempotency-Key", "k1")
            .json(&json!({"content": "once"}));
        common::call(request)
    };
    assert_eq!(replay().await.0, StatusCode::CREATED);
    watcher.recv().await;
    assert_eq!(replay().await.0, StatusCode::OK);
    watcher
        .silent_for(std::time::Duration::from_millis(200))
        .await;
}

#[sqlx::test]
async fn concurrent_posts_reach_subscribers_in_id_order(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&[Scope::ChannelsWrite, Scope::Subscribe]).await;
    let channel = app.channel(&key, "ordered").await;
    let mut watcher = app.peer(&key, "watcher", json!({})).await;
    watcher.subscribe(&channel.to_string()).await;

    const POSTS: usize = 120;
    let posts = (0..POSTS).map(|n| {
        let request = app
            .request(
                Method::POST,
                &format!("/v1/channels/{channel}/messages"),
                &key,
            )
            .json(&json!({"content": format!("m{n}")}));
        common::call(request)
    });
    let results = futures::future::join_all(posts).await;
    assert!(
        results
            .iter()
            .all(|(status, _)| *status == StatusCode::CREATED)
    );

    let mut ids = Vec::new();
    for _ in 0..POSTS {
        ids.push(watcher.recv().await["data"]["id"].as_i64().unwrap());
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "live delivery follows id order: {ids:?}"
    );
}

#[sqlx::test]
async fn persistent_live_channels_follow_rest_permissions(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let writer = app.writer().await;
    let channel = app.channel(&writer, "guarded").await;
    let realtime_only = app.key(&REALTIME).await;
    let reader = app
        .key(&[Scope::ChannelsRead, Scope::Subscribe, Scope::Publish])
        .await;

    let mut ws = app.peer(&realtime_only, "p", json!({})).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": channel.to_string(), "requestId": "a"}))
        .await;
    assert_eq!(
        reply["code"], "channel_not_authorized",
        "subscribing needs channels:read on the key"
    );

    let mut ws = app.peer(&reader, "r", json!({})).await;
    ws.subscribe(&channel.to_string()).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "987654", "requestId": "b"}))
        .await;
    assert_eq!(
        reply["code"], "invalid_channel",
        "unknown persistent channel"
    );
    let reply = ws
        .request(
            json!({"type": "publish", "channel": channel.to_string(), "data": 1, "requestId": "c"}),
        )
        .await;
    assert_eq!(
        reply["code"], "channel_not_authorized",
        "publishing needs channels:write"
    );

    let (status, body) = app
        .post("/v1/channels/987654/publish", &writer, json!({"data": 1}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let both = app
        .key(&[Scope::ChannelsWrite, Scope::Publish, Scope::Presence])
        .await;
    let (status, body) = app
        .post("/v1/channels/987654/publish", &both, json!({"data": 1}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app.get("/v1/channels/987654/peers", &both).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app
        .post(
            &format!("/v1/channels/{channel}/publish"),
            &both,
            json!({"data": 1}),
        )
        .await;
    assert_eq!(
        (status, body["delivered"].clone()),
        (StatusCode::OK, json!(1))
    );
    assert_eq!(ws.recv().await["data"], 1);

    app.put(
        &format!("/v1/channels/{channel}"),
        &writer,
        json!({"archived": true}),
    )
    .await;
    let (status, body) = app
        .post(
            &format!("/v1/channels/{channel}/publish"),
            &both,
            json!({"data": 1}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "channel_archived");
    let _: Value = Value::Null;
}

#[sqlx::test]
async fn minted_and_signed_tokens_share_the_maximum_lifetime(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.token_max_lifetime = std::time::Duration::from_secs(600);
    let app = TestApp::spawn_config(db, config).await;
    let key = app.key(&[Scope::Subscribe]).await;

    let (status, body) = app
        .post(
            "/v1/tokens",
            &key,
            json!({"peerId": "p", "expiresInSec": 601}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["details"], json!({"expiresInSec": ["range"]}));

    let (status, body) = app
        .post(
            "/v1/tokens",
            &key,
            json!({"peerId": "p", "expiresInSec": 600}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600,
        "a minted token states when it was issued"
    );
    let (_, welcome) = app.ws(&format!("token={token}")).await;
    assert_eq!(welcome["peerId"], "p");

    // A backend-signed token follows the same rule.
    let now = chrono::Utc::now().timestamp();
    let signed = |lifetime: i64| {
        common::local_token(
            &key,
            &channeld::auth::tokens::Claims {
                iat: Some(now),
                ..common::claims("p", now + lifetime)
            },
        )
    };
    assert!(app.ws_raw(&format!("token={}", signed(600))).await.is_ok());
    assert_eq!(
        app.refused(&format!("token={}", signed(601)), None).await,
        4001
    );
}

#[sqlx::test]
async fn an_all_digit_name_with_a_leading_zero_is_refused_with_the_rule(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key(&[Scope::ChannelsWrite, Scope::Subscribe, Scope::Publish])
        .await;
    let rule = "must be written as the API returns it: a positive integer without leading zeros (42, not 042)";

    let mut ws = app.peer(&key, "p", json!({})).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "042", "requestId": "z"}))
        .await;
    assert_eq!(reply["code"], "invalid_channel");
    assert!(reply["message"].as_str().unwrap().contains(rule), "{reply}");

    let (status, body) = app
        .post("/v1/channels/042/publish", &key, json!({"data": 1}))
        .await;
    common::assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(body["details"], json!({"channel": ["format"]}));
    assert!(body["message"].as_str().unwrap().contains(rule), "{body}");
}
