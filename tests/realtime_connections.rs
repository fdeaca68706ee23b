//! WebSocket credentials before the upgrade, and every way a connection ends: oversize frames,
//! token expiry, message rate, kicks, revoked keys, slow consumers, silence and shutdown.

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use channeld::auth::Scope;
use common::{TestApp, claims, local_token};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

const REALTIME: [Scope; 4] = [
    Scope::Publish,
    Scope::Subscribe,
    Scope::Presence,
    Scope::Send,
];

fn in_an_hour() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

#[sqlx::test]
async fn tokens_minted_locally_with_kid_connect(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&REALTIME).await;
    let mut claims = claims("local-peer", in_an_hour());
    claims.peer_metadata = Some(serde_json::from_value(json!({"via": "local"})).unwrap());
    let (_, welcome) = app
        .ws(&format!("token={}", local_token(&key, &claims)))
        .await;
    assert_eq!(welcome["peerId"], "local-peer");
}

#[sqlx::test]
async fn bad_credentials_close_the_upgraded_socket_with_4001_or_4002(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&REALTIME).await;
    let revoked = app.key(&REALTIME).await;
    let valid = local_token(&key, &claims("p", in_an_hour()));
    let payload = valid.split('.').nth(1).unwrap();
    let header = |json: &str| URL_SAFE_NO_PAD.encode(json);
    let (key_id, _) = common::key_parts(&key);
    let alg_none = format!(
        "{}.{payload}.",
        header(&format!(r#"{{"alg":"none","kid":"{key_id}"}}"#))
    );
    let hs512 = format!(
        "{}.{payload}.{}",
        header(&format!(r#"{{"alg":"HS512","kid":"{key_id}"}}"#)),
        valid.rsplit('.').next().unwrap()
    );
    let unknown_kid = local_token(
        &format!("sk_live_{}_{}", "Z".repeat(16), &key[25..]),
        &claims("p", in_an_hour()),
    );
    let mut bad_signature = valid.clone();
    bad_signature.replace_range(valid.len() - 4.., "AAAA");
    let expired = local_token(&key, &claims("p", chrono::Utc::now().timestamp() - 1));
    let other_secret = local_token(
        &format!("{}{}", &key[..25], "x".repeat(32)),
        &claims("p", in_an_hour()),
    );
    let now = chrono::Utc::now().timestamp();
    let timed = |exp: i64, iat: Option<i64>, nbf: Option<i64>| {
        local_token(
            &key,
            &channeld::auth::tokens::Claims {
                iat,
                nbf,
                ..claims("p", exp)
            },
        )
    };
    // Signed by a backend for later, or for longer than the server's 24 h maximum lifetime.
    let not_yet = timed(now + 7200, Some(now), Some(now + 3600));
    let issued_later = timed(now + 7200, Some(now + 3600), None);
    let too_long = timed(now + 86_400 + 60, Some(now), None);
    let too_long_without_iat = timed(now + 86_400 + 60, None, None);
    let a_day_issued_earlier = timed(now + 3600, Some(now - 86_400), None);
    let bad_peer = local_token(&key, &claims("tab\tpeer", in_an_hour()));
    let revoked_token = local_token(&revoked, &claims("p", in_an_hour()));
    // Signed with a wrong secret under the id of a revoked key: nothing about the key is told.
    let revoked_forged = local_token(
        &format!("{}{}", &revoked[..25], "x".repeat(32)),
        &claims("p", in_an_hour()),
    );
    let expired_key = app
        .key_expiring(
            &REALTIME,
            Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .await;
    let expired_key_token = local_token(&expired_key, &claims("p", in_an_hour()));
    let expired_key_forged = local_token(
        &format!("{}{}", &expired_key[..25], "x".repeat(32)),
        &claims("p", in_an_hour()),
    );
    channeld::auth::revoke_key(&app.db, &common::key_parts(&revoked).0)
        .await
        .unwrap();

    // Each close reason says what to fix; a forged or unverifiable token reveals nothing more.
    let bad_token = "invalid token: malformed, or its signature matches no key";
    let cases = [
        (
            "no credential",
            String::new(),
            "?token=<from POST /v1/tokens> or ?key=pk_live_",
        ),
        ("both", format!("token={valid}&key=pk_live_x"), "not both"),
        ("garbage", "token=garbage".to_owned(), bad_token),
        ("alg none", format!("token={alg_none}"), bad_token),
        ("HS512", format!("token={hs512}"), bad_token),
        ("unknown kid", format!("token={unknown_kid}"), bad_token),
        ("bad signature", format!("token={bad_signature}"), bad_token),
        (
            "signed with another secret",
            format!("token={other_secret}"),
            bad_token,
        ),
        ("expired", format!("token={expired}"), "token expired"),
        (
            "nbf in the future",
            format!("token={not_yet}"),
            "not yet valid",
        ),
        (
            "iat in the future",
            format!("token={issued_later}"),
            "not yet valid",
        ),
        (
            "lifetime over 24 h",
            format!("token={too_long}"),
            "--token-max-lifetime",
        ),
        (
            "over 24 h left, no iat",
            format!("token={too_long_without_iat}"),
            "--token-max-lifetime",
        ),
        (
            "issued over 24 h before exp",
            format!("token={a_day_issued_earlier}"),
            "--token-max-lifetime",
        ),
        ("invalid peer id", format!("token={bad_peer}"), "`sub`"),
        (
            "revoked key",
            format!("token={revoked_token}"),
            "this key was revoked",
        ),
        (
            "forged, revoked key",
            format!("token={revoked_forged}"),
            bad_token,
        ),
        (
            "expired key",
            format!("token={expired_key_token}"),
            "this key has expired",
        ),
        (
            "forged, expired key",
            format!("token={expired_key_forged}"),
            bad_token,
        ),
        (
            "secret key as ?key=",
            format!("key={key}"),
            "mint a token with POST /v1/tokens",
        ),
        (
            "not a key",
            "key=hello".to_owned(),
            "?key= takes a publishable key",
        ),
        (
            "unknown pk",
            format!("key=pk_live_{}", "a".repeat(24)),
            "unknown API key",
        ),
    ];
    for (label, query, reason) in cases {
        // A browser sees no HTTP status: it is told with a close code it can act on.
        let expected = if label == "expired" { 4002 } else { 4001 };
        let (code, said) = app.refusal(&query, None).await;
        assert_eq!(code, expected, "{label}");
        assert!(said.contains(reason), "{label}: {said:?}");
    }
    let response = app
        .http
        .get(format!("{}/v1?token={expired}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "a plain GET is not an upgrade"
    );
    assert!(
        app.ws_raw(&format!("token={valid}")).await.is_ok(),
        "the valid token still connects"
    );
    let a_day = timed(now + 86_400, Some(now), Some(now));
    assert!(
        app.ws_raw(&format!("token={a_day}")).await.is_ok(),
        "a token of exactly the maximum lifetime connects"
    );
}

#[sqlx::test]
async fn publishable_keys_connect_only_from_allowed_origins(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let pk = app
        .publishable(
            &[Scope::Subscribe, Scope::Publish],
            &["public/*"],
            &["https://app.example.com"],
        )
        .await;
    let open = app.publishable(&[Scope::Subscribe], &["**"], &["*"]).await;

    let mut ws = app
        .ws_request(&format!("key={pk}"), Some("https://app.example.com"))
        .await
        .expect("allowed origin");
    let welcome = ws.recv().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["expiresAt"], serde_json::Value::Null);
    let peer = welcome["peerId"].as_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(peer).is_ok(),
        "a server-assigned UUID: {peer}"
    );
    ws.subscribe("public/lobby").await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": "private/x", "requestId": "p"}))
        .await;
    assert_eq!(reply["code"], "channel_not_authorized");
    let reply = ws
        .request(json!({"type": "send", "to": "x", "data": 1, "requestId": "s"}))
        .await;
    assert_eq!(reply["code"], "action_not_permitted");

    assert_eq!(
        app.refusal(&format!("key={pk}"), Some("https://evil.example"))
            .await,
        (
            4001,
            "this publishable key does not allow this Origin".to_owned()
        )
    );
    assert_eq!(
        app.refused(&format!("key={pk}"), None).await,
        4001,
        "an Origin is required"
    );
    assert!(
        app.ws_request(&format!("key={open}"), None).await.is_ok(),
        "`*` allows any origin"
    );
}

#[sqlx::test]
async fn connects_beyond_the_per_ip_limit_close_with_4010_or_get_429(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.connects_per_ip = 3;
    let app = TestApp::spawn_config(db, config).await;
    let key = app.key(&REALTIME).await;
    let token = local_token(&key, &claims("p", in_an_hour()));
    for _ in 0..3 {
        assert!(app.ws_raw(&format!("token={token}")).await.is_ok());
    }
    assert_eq!(
        app.refused(&format!("token={token}"), None).await,
        4010,
        "an upgrade over the limit is closed with 4010, which a browser can read"
    );
    let response = app
        .http
        .get(format!("{}/v1?token={token}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(common::json_body(response).await["error"], "rate_limited");
}

#[sqlx::test]
async fn an_oversized_frame_closes_with_1009(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&REALTIME).await;
    let mut ws = app.peer(&key, "big", json!({})).await;
    let huge = format!(
        r#"{{"type":"publish","channel":"c","data":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    ws.send_raw(&huge).await;
    assert_eq!(ws.closed().await, 1009);
}

#[sqlx::test]
async fn max_message_size_bounds_data_and_the_envelope_comes_on_top(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&REALTIME).await;
    let mut reader = app.peer(&key, "reader", json!({})).await;
    reader.subscribe("big").await;
    let mut writer = app.peer(&key, "writer", json!({})).await;
    let (welcome_max, max) = (65_536, app.config.realtime.max_frame_bytes);
    assert_eq!(max, welcome_max);
    // A JSON string of exactly `max` bytes, quotes included, as a client checking
    // `JSON.stringify(data).length <= maxMessageSize` would send.
    let data = "x".repeat(max - 2);
    writer
        .send(json!({"type": "publish", "channel": "big", "data": data, "requestId": "p"}))
        .await;
    assert_eq!(writer.recv().await["type"], "ack");
    loop {
        let frame = reader.recv().await;
        if frame["type"] == "message" {
            assert_eq!(frame["data"].as_str().map(str::len), Some(max - 2));
            break;
        }
    }
    let over = "x".repeat(max - 1);
    writer
        .send(json!({"type": "publish", "channel": "big", "data": over}))
        .await;
    assert_eq!(
        writer.closed().await,
        1009,
        "one byte of data over closes with 1009"
    );
}

#[sqlx::test]
async fn a_connection_closes_with_4002_just_before_its_token_expires(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&REALTIME).await;
    let exp = chrono::Utc::now().timestamp() + 2;
    let (mut ws, _) = app
        .ws(&format!(
            "token={}",
            local_token(&key, &claims("brief", exp))
        ))
        .await;
    assert_eq!(ws.closed().await, 4002);
    let closed_at = chrono::Utc::now().timestamp_millis();
    assert!(
        closed_at < exp * 1000,
        "closed before exp ({closed_at} vs {})",
        exp * 1000
    );
}

#[sqlx::test]
async fn too_many_frames_close_with_4011(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.frame_rate = 5;
    config.realtime.frame_burst = 10;
    let app = TestApp::spawn_config(db, config).await;
    let key = app.key(&REALTIME).await;
    let mut ws = app.peer(&key, "chatty", json!({})).await;
    for _ in 0..11 {
        ws.send(json!({"type": "ping"})).await;
    }
    assert_eq!(ws.closed().await, 4011);
}

#[sqlx::test]
async fn kicking_a_peer_closes_all_its_connections_with_4020(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&REALTIME).await;
    let admin = app.key(&[Scope::Admin]).await;
    let mut one = app.peer(&key, "u_bob_456", json!({})).await;
    let mut two = app.peer(&key, "u_bob_456", json!({})).await;
    let mut bystander = app.peer(&key, "carol", json!({})).await;

    let (status, body) =
        common::call(app.request(reqwest::Method::DELETE, "/v1/peers/u_bob_456", &admin)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"peerId": "u_bob_456", "closed": 2}))
    );
    assert_eq!(one.closed().await, 4020);
    assert_eq!(two.closed().await, 4020);
    assert_eq!(
        bystander.request(json!({"type": "ping"})).await["type"],
        "pong"
    );

    let (status, body) =
        common::call(app.request(reqwest::Method::DELETE, "/v1/peers/nobody", &admin)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"peerId": "nobody", "closed": 0}))
    );
    let (status, body) =
        common::call(app.request(reqwest::Method::DELETE, "/v1/peers/carol", &key)).await;
    common::assert_error(status, &body, StatusCode::FORBIDDEN, "insufficient_scope");
}

#[sqlx::test]
async fn revoking_a_key_closes_its_connections_with_4001(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.key_check_interval = Duration::from_millis(100);
    let app = TestApp::spawn_config(db, config).await;
    let doomed = app.key(&REALTIME).await;
    let kept = app.key(&REALTIME).await;
    let mut gone = app.peer(&doomed, "a", json!({})).await;
    let mut stays = app.peer(&kept, "b", json!({})).await;
    channeld::auth::revoke_key(&app.db, &common::key_parts(&doomed).0)
        .await
        .unwrap();
    assert_eq!(gone.closed().await, 4001);
    assert_eq!(stays.request(json!({"type": "ping"})).await["type"], "pong");
}

#[sqlx::test]
async fn the_server_pings_and_drops_connections_that_stay_silent(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.ping_interval = Duration::from_millis(100);
    config.realtime.idle_timeout = Duration::from_millis(400);
    let app = TestApp::spawn_config(db, config).await;
    let key = app.key(&REALTIME).await;
    let mut lively = app.peer(&key, "lively", json!({})).await;
    let mut silent = app.peer(&key, "silent", json!({})).await;

    // Reading answers the server's pings with pongs, so this connection outlives the idle timeout.
    lively.silent_for(Duration::from_millis(1000)).await;
    assert_eq!(
        lively.request(json!({"type": "ping"})).await["type"],
        "pong"
    );

    // A client that never reads never answers pings; the server drops it (while the test reads
    // nothing from it either: reading would answer the pings).
    let hub = app.state.realtime.engine.hub();
    common::eventually(
        Duration::from_secs(10),
        "the server drops the silent connection",
        || async { hub.connection_count() <= 1 },
    )
    .await;
    use futures::StreamExt;
    let mut saw_end = false;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(2), silent.stream.next()).await
    {
        if message.is_err() || message.as_ref().is_ok_and(|m| m.is_close()) {
            saw_end = true;
            break;
        }
    }
    let after = tokio::time::timeout(Duration::from_secs(2), silent.stream.next()).await;
    assert!(
        saw_end || matches!(after, Ok(None) | Ok(Some(Err(_)))),
        "the silent connection was dropped"
    );
}

#[sqlx::test]
async fn a_stalled_reader_is_disconnected_without_slowing_the_others(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.outbound_queue = 16;
    let app = TestApp::spawn_config(db, config).await;
    let key = app.key(&REALTIME).await;
    let backend = app.key(&[Scope::Publish]).await;
    let mut fast = app
        .peer(&key, "fast", json!({"permissions": ["subscribe"]}))
        .await;
    let mut stalled = app
        .peer(&key, "stalled", json!({"permissions": ["subscribe"]}))
        .await;
    fast.subscribe("firehose").await;
    stalled.subscribe("firehose").await;

    // Enough bytes to fill the stalled socket's kernel buffers and then its queue.
    const MESSAGES: usize = 400;
    let payload = "x".repeat(30 * 1024);
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while received < MESSAGES {
            let frame = fast.recv().await;
            assert_eq!(frame["type"], "message");
            received += 1;
        }
        received
    });
    for n in 0..MESSAGES {
        let (status, body) = app
            .post(
                "/v1/channels/firehose/publish",
                &backend,
                json!({"data": {"n": n, "pad": payload}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        reader.await.unwrap(),
        MESSAGES,
        "the fast subscriber got every message"
    );
    let hub = &app.state.realtime.engine.hub();
    assert_eq!(
        hub.stats
            .slow_consumer_disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The server lets go of the stalled connection without waiting for it to read.
    common::eventually(
        Duration::from_secs(5),
        "the server lets go of the stalled connection",
        || async { hub.connection_count() <= 1 },
    )
    .await;
    // What it reads once it wakes up ends the connection: a 1008 close if it fit in the socket
    // buffers, otherwise the end of the stream, or a reset (the server closed a socket whose
    // peer had stopped reading, with bytes still unsent).
    let code = stalled.ended().await;
    assert!(
        matches!(code, Some(1008 | 1005) | None),
        "closed with {code:?}"
    );
}

#[sqlx::test]
async fn shutdown_sends_going_away_then_closes_with_1001(db: PgPool) {
    let mut app = TestApp::spawn(db.clone()).await;
    let key = app.key(&REALTIME).await;
    let mut ws = app.peer(&key, "p", json!({})).await;
    app.shutdown();
    assert_eq!(
        ws.recv().await,
        json!({"type": "going_away", "retryAfterMs": 1000})
    );
    assert_eq!(ws.closed().await, 1001);
    let server = app.server.take().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops");
    assert!(result.unwrap().is_ok());
}

/// The status of a plain `GET /v1` claiming to come from `forwarded_for`.
async fn connect_status(app: &TestApp, forwarded_for: &str) -> StatusCode {
    app.http
        .get(format!("{}/v1", app.base))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap()
        .status()
}

#[sqlx::test]
async fn behind_a_trusted_proxy_the_connect_limit_counts_forwarded_clients(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.connects_per_ip = 2;
    config.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let app = TestApp::spawn_config(db.clone(), config.clone()).await;
    for _ in 0..2 {
        assert_ne!(
            connect_status(&app, "203.0.113.7").await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        connect_status(&app, "203.0.113.7").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the forwarded client is over its limit"
    );
    assert_ne!(
        connect_status(&app, "198.51.100.9").await,
        StatusCode::TOO_MANY_REQUESTS,
        "another client behind the same proxy has its own limit"
    );
    // A client cannot pick its address: only the nearest untrusted hop counts.
    assert_eq!(
        connect_status(&app, "192.0.2.1, 203.0.113.7").await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Without a trusted proxy, X-Forwarded-For is ignored: the TCP peer is the client.
    config.http.trusted_proxies.clear();
    let direct = TestApp::spawn_config(db, config).await;
    for (n, claimed) in ["192.0.2.1", "192.0.2.2"].iter().enumerate() {
        assert_ne!(
            connect_status(&direct, claimed).await,
            StatusCode::TOO_MANY_REQUESTS,
            "connect {n}"
        );
    }
    assert_eq!(
        connect_status(&direct, "192.0.2.3").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
