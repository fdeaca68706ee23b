//! The WebSocket protocol with real clients: welcome, presence and rosters, multi-tab peers,
//! publish and echo rules, sender metadata, direct messages and every error code.

mod common;

use channeld::auth::Scope;
use common::{TestApp, Ws};
use serde_json::{Value, json};
use sqlx::PgPool;

const REALTIME: [Scope; 4] = [
    Scope::Publish,
    Scope::Subscribe,
    Scope::Presence,
    Scope::Send,
];

async fn realtime_key(app: &TestApp) -> String {
    app.key(&REALTIME).await
}

fn presence(channel: &str, joined: Value, left: Value) -> Value {
    json!({"type": "presence", "channel": channel, "joined": joined, "left": left})
}

#[sqlx::test]
async fn welcome_is_the_first_frame_and_carries_token_metadata(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;
    let token = app
        .token(
            &key,
            json!({"peerId": "u_alice_123", "metadata": {"plan": "pro"}, "expiresInSec": 600}),
        )
        .await;
    let (_, welcome) = app.ws(&format!("token={token}")).await;
    let now = chrono::Utc::now().timestamp();
    assert_eq!(welcome["peerId"], "u_alice_123");
    assert_eq!(welcome["metadata"], json!({"plan": "pro"}));
    assert_eq!(welcome["maxMessageSize"], 65536);
    assert!((welcome["serverTime"].as_i64().unwrap() - now).abs() <= 2);
    assert!((welcome["expiresAt"].as_i64().unwrap() - (now + 600)).abs() <= 2);

    let plain = app.token(&key, json!({"peerId": "u_bob"})).await;
    let (_, welcome) = app.ws(&format!("token={plain}")).await;
    assert!(
        welcome.get("metadata").is_none(),
        "no metadata without the claim: {welcome}"
    );
}

#[sqlx::test]
async fn subscribers_get_a_roster_and_others_see_joins_and_leaves(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;
    let room = "app_abc/room-1";
    let mut alice = app
        .peer(&key, "alice", json!({"peerMetadata": {"name": "Alice"}}))
        .await;
    alice.subscribe(room).await;
    assert_eq!(
        alice.recv().await,
        presence(room, json!([]), json!([])),
        "an empty roster"
    );

    let mut bob = app.peer(&key, "bob", json!({})).await;
    bob.subscribe(room).await;
    assert_eq!(
        bob.recv().await,
        presence(
            room,
            json!([{"peerId": "alice", "metadata": {"name": "Alice"}}]),
            json!([])
        ),
        "the roster lists peers already there, with metadata when they have it"
    );
    assert_eq!(
        alice.recv().await,
        presence(room, json!([{"peerId": "bob"}]), json!([])),
        "metadata omitted when absent"
    );

    let ack = bob
        .request(json!({"type": "unsubscribe", "channel": room, "requestId": "u1"}))
        .await;
    assert_eq!(ack, json!({"type": "ack", "requestId": "u1"}));
    assert_eq!(
        alice.recv().await,
        presence(room, json!([]), json!([{"peerId": "bob"}]))
    );

    bob.subscribe(room).await;
    bob.recv().await; // roster
    alice.recv().await; // bob joins again
    drop(bob);
    assert_eq!(
        alice.recv().await,
        presence(room, json!([]), json!([{"peerId": "bob"}])),
        "disconnect leaves"
    );
}

#[sqlx::test]
async fn a_peer_with_several_connections_joins_once_and_leaves_once(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;
    let room = "tabs";
    let mut watcher = app.peer(&key, "watcher", json!({})).await;
    watcher.subscribe(room).await;
    watcher.recv().await;

    let mut tab1 = app.peer(&key, "carol", json!({})).await;
    tab1.subscribe(room).await;
    tab1.recv().await;
    assert_eq!(
        watcher.recv().await,
        presence(room, json!([{"peerId": "carol"}]), json!([]))
    );
    let mut tab2 = app.peer(&key, "carol", json!({})).await;
    tab2.subscribe(room).await;
    assert_eq!(
        tab2.recv().await,
        presence(room, json!([{"peerId": "watcher"}]), json!([]))
    );

    drop(tab1);
    watcher
        .silent_for(std::time::Duration::from_millis(300))
        .await;
    drop(tab2);
    assert_eq!(
        watcher.recv().await,
        presence(room, json!([]), json!([{"peerId": "carol"}]))
    );
}

#[sqlx::test]
async fn presence_frames_only_reach_connections_allowed_presence(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;
    let mut quiet = app
        .peer(
            &key,
            "quiet",
            json!({"permissions": ["subscribe", "publish"]}),
        )
        .await;
    quiet.subscribe("room").await;
    let mut loud = app.peer(&key, "loud", json!({})).await;
    loud.subscribe("room").await;
    assert_eq!(
        loud.recv().await,
        presence("room", json!([{"peerId": "quiet"}]), json!([]))
    );
    loud.send(json!({"type": "publish", "channel": "room", "data": "after-join"}))
        .await;
    let next = quiet.recv().await;
    assert_eq!(
        next["type"], "message",
        "no roster nor join for a peer without presence: {next}"
    );
}

#[sqlx::test]
async fn publish_reaches_every_other_subscriber_but_never_the_sender(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;
    let room = "app_abc/room-1";
    let mut alice = app
        .peer(
            &key,
            "alice",
            json!({"permissions": ["publish", "subscribe"]}),
        )
        .await;
    let mut bob = app
        .peer(&key, "bob", json!({"permissions": ["subscribe"]}))
        .await;
    let mut carol = app
        .peer(&key, "carol", json!({"permissions": ["subscribe"]}))
        .await;
    let mut outsider = app
        .peer(&key, "dave", json!({"permissions": ["subscribe"]}))
        .await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        ws.subscribe(room).await;
    }
    outsider.subscribe("elsewhere").await;

    let ack = alice
        .request(
            json!({"type": "publish", "channel": room, "data": {"text": "hi"}, "requestId": "r3"}),
        )
        .await;
    assert_eq!(ack, json!({"type": "ack", "requestId": "r3"}));
    let expected =
        json!({"type": "message", "channel": room, "from": "alice", "data": {"text": "hi"}});
    assert_eq!(bob.recv().await, expected);
    assert_eq!(carol.recv().await, expected);
    alice
        .silent_for(std::time::Duration::from_millis(200))
        .await;
    outsider
        .silent_for(std::time::Duration::from_millis(50))
        .await;

    alice
        .send(json!({"type": "publish", "channel": room, "data": null}))
        .await;
    assert_eq!(bob.recv().await["data"], Value::Null, "null is valid data");
}

#[sqlx::test]
async fn sender_metadata_goes_only_to_those_who_ask_and_only_when_it_exists(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;
    let perms = json!({"permissions": ["publish", "subscribe"]});
    let mut with_meta = app
        .peer(
            &key,
            "with",
            json!({"permissions": ["publish"], "peerMetadata": {"role": "agent"}}),
        )
        .await;
    let mut without_meta = app.peer(&key, "without", perms.clone()).await;
    let mut asks = app.peer(&key, "asks", perms.clone()).await;
    let mut ignores = app.peer(&key, "ignores", perms).await;
    let sub = |wants: bool| json!({"type": "subscribe", "channel": "meta", "includeSenderMetadata": wants, "requestId": "s"});
    assert_eq!(asks.request(sub(true)).await["type"], "ack");
    assert_eq!(ignores.request(sub(false)).await["type"], "ack");

    with_meta
        .send(json!({"type": "publish", "channel": "meta", "data": 1}))
        .await;
    assert_eq!(asks.recv().await["fromMetadata"], json!({"role": "agent"}));
    assert!(ignores.recv().await.get("fromMetadata").is_none());

    without_meta
        .send(json!({"type": "publish", "channel": "meta", "data": 2}))
        .await;
    let frame = asks.recv().await;
    assert_eq!(frame["data"], 2);
    assert!(
        frame.get("fromMetadata").is_none(),
        "no metadata to add: {frame}"
    );
    ignores.recv().await;
}

#[sqlx::test]
async fn direct_messages_reach_every_connection_of_the_peer(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;
    let mut alice = app
        .peer(&key, "u_alice_123", json!({"peerMetadata": {"n": 1}}))
        .await;
    let mut bob1 = app.peer(&key, "u_bob_456", json!({})).await;
    let mut bob2 = app.peer(&key, "u_bob_456", json!({})).await;

    let ack = alice
        .request(json!({"type": "send", "to": "u_bob_456", "data": {"q": "?"}, "requestId": "r4"}))
        .await;
    assert_eq!(ack, json!({"type": "ack", "requestId": "r4"}));
    let expected = json!({"type": "direct", "from": "u_alice_123", "data": {"q": "?"}, "fromMetadata": {"n": 1}});
    assert_eq!(bob1.recv().await, expected);
    assert_eq!(bob2.recv().await, expected);

    let missing = alice
        .request(json!({"type": "send", "to": "nobody", "data": 1, "requestId": "r5"}))
        .await;
    assert_eq!(missing["code"], "peer_not_found");
    assert_eq!(missing["requestId"], "r5");
}

#[sqlx::test]
async fn ping_is_answered_with_pong(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = realtime_key(&app).await;
    let mut ws = app.peer(&key, "p", json!({})).await;
    assert_eq!(
        ws.request(json!({"type": "ping", "requestId": "r5"})).await,
        json!({"type": "pong", "requestId": "r5"})
    );
    assert_eq!(
        ws.request(json!({"type": "ping"})).await,
        json!({"type": "pong"})
    );
}

async fn expect_error(ws: &mut Ws, frame: Value, code: &str) {
    let label = frame.to_string();
    let reply = ws.request(frame).await;
    assert_eq!(reply["type"], "error", "{label} -> {reply}");
    assert_eq!(reply["code"], code, "{label} -> {reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[sqlx::test]
async fn every_error_code_answers_and_keeps_the_connection_open(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key_with_patterns(&REALTIME, &["app_abc/**", "room-*"])
        .await;
    let mut ws = app.peer(&key, "p", json!({})).await;
    let mut limited = app
        .peer(&key, "limited", json!({"permissions": ["subscribe"]}))
        .await;

    let cases = [
        (json!({"type": "dance", "requestId": "e1"}), "unknown_type"),
        (json!({"requestId": "e2"}), "malformed_message"),
        (json!({"type": 7, "requestId": "e3"}), "malformed_message"),
        (
            json!({"type": "subscribe", "requestId": "e4"}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "", "requestId": "e5"}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "bad\u{1}name", "requestId": "e6"}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "x".repeat(257), "requestId": "e7"}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "_system/x", "requestId": "e8"}),
            "channel_reserved",
        ),
        (
            json!({"type": "subscribe", "channel": "app_xyz/room", "requestId": "e9"}),
            "channel_not_authorized",
        ),
        (
            json!({"type": "subscribe", "channel": "999999", "requestId": "e10"}),
            "channel_not_authorized",
        ),
        (
            json!({"type": "publish", "channel": "room-1", "requestId": "e11"}),
            "missing_data",
        ),
        (
            json!({"type": "send", "to": "", "data": 1, "requestId": "e12"}),
            "invalid_peer_id",
        ),
        (
            json!({"type": "send", "to": "nobody", "data": 1, "requestId": "e13"}),
            "peer_not_found",
        ),
        (
            json!({"type": "send", "to": "limited", "requestId": "e14"}),
            "missing_data",
        ),
    ];
    for (frame, code) in cases {
        let request_id = frame["requestId"].clone();
        let label = frame.to_string();
        let reply = ws.request(frame).await;
        assert_eq!(
            (reply["code"].as_str(), &reply["requestId"]),
            (Some(code), &request_id),
            "{label} -> {reply}"
        );
    }
    ws.send_raw("{not json").await;
    let reply = ws.recv().await;
    assert_eq!(reply["code"], "malformed_message");
    assert!(reply.get("requestId").is_none());

    expect_error(
        &mut limited,
        json!({"type": "publish", "channel": "room-1", "data": 1, "requestId": "a"}),
        "action_not_permitted",
    )
    .await;
    expect_error(
        &mut limited,
        json!({"type": "send", "to": "p", "data": 1, "requestId": "b"}),
        "action_not_permitted",
    )
    .await;

    // Still open after all of that.
    assert_eq!(
        ws.request(json!({"type": "ping", "requestId": "alive"}))
            .await["type"],
        "pong"
    );
}

#[sqlx::test]
async fn subscriptions_are_capped_per_connection(db: PgPool) {
    let mut config = common::test_config();
    config.realtime.max_subscriptions = 3;
    let app = TestApp::spawn_config(db, config).await;
    let key = app.key(&[Scope::Subscribe]).await;
    let mut ws = app.peer(&key, "p", json!({})).await;
    for n in 0..3 {
        ws.subscribe(&format!("c{n}")).await;
    }
    ws.subscribe("c0").await; // re-subscribing is not a new subscription
    expect_error(
        &mut ws,
        json!({"type": "subscribe", "channel": "c3", "requestId": "x"}),
        "channel_limit_exceeded",
    )
    .await;
    let ack = ws
        .request(json!({"type": "unsubscribe", "channel": "c1", "requestId": "u"}))
        .await;
    assert_eq!(ack["type"], "ack");
    ws.subscribe("c3").await;
}

#[sqlx::test]
async fn token_channels_and_key_patterns_both_bound_a_connection(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key_with_patterns(&REALTIME, &["app_abc/**"]).await;
    let mut ws = app
        .peer(&key, "p", json!({"channels": ["app_abc/*"]}))
        .await;
    ws.subscribe("app_abc/room-1").await;
    assert_eq!(
        ws.recv().await,
        presence("app_abc/room-1", json!([]), json!([]))
    );
    expect_error(
        &mut ws,
        json!({"type": "subscribe", "channel": "app_abc/a/b", "requestId": "x"}),
        "channel_not_authorized",
    )
    .await;
    expect_error(
        &mut ws,
        json!({"type": "subscribe", "channel": "other", "requestId": "y"}),
        "channel_not_authorized",
    )
    .await;
}

#[sqlx::test]
async fn subscribing_again_answers_a_fresh_roster_and_announces_nothing(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.key(&REALTIME).await;
    let mut a = app.peer(&key, "a", json!({})).await;
    let mut b = app.peer(&key, "b", json!({})).await;
    a.subscribe("room").await;
    assert_eq!(a.recv().await["joined"], json!([]), "a's first roster");
    b.subscribe("room").await;
    assert_eq!(b.recv().await["joined"], json!([{"peerId": "a"}]));
    assert_eq!(a.recv().await["joined"], json!([{"peerId": "b"}]));

    a.subscribe("room").await;
    let roster = a.recv().await;
    assert_eq!(
        (roster["type"].clone(), roster["joined"].clone()),
        (json!("presence"), json!([{"peerId": "b"}])),
        "a fresh roster follows the ack"
    );
    // b hears nothing of it: its next frame is a marker published after the re-subscribe.
    let ack = a
        .request(json!({"type": "publish", "channel": "room", "data": "marker", "requestId": "m"}))
        .await;
    assert_eq!(ack["type"], "ack");
    let next = b.recv().await;
    assert_eq!(
        (next["type"].clone(), next["data"].clone()),
        (json!("message"), json!("marker"))
    );
}
