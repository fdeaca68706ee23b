//! Apps (SPEC §3b): one server, tenants that never see each other. A key of app B gets for app
//! A's resources exactly what it gets for ones that do not exist, on every transport; realtime
//! names, peers and presence are two namespaces; quotas answer as the SPEC says.

mod common;

use std::time::Duration;

use channeld::{
    apps::{DEFAULT_APP, Quotas},
    auth::Scope,
};
use common::{Events, TestApp, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

const ALL: [Scope; 7] = [
    Scope::ChannelsRead,
    Scope::ChannelsWrite,
    Scope::Publish,
    Scope::Subscribe,
    Scope::Presence,
    Scope::Send,
    Scope::Admin,
];

/// The whole answer to a request, with the channel id in its message made generic.
async fn answer(app: &TestApp, method: Method, path: &str, key: &str, id: i64) -> (u16, String) {
    let body = match (&method, path.rsplit('/').next()) {
        (&Method::POST, Some("messages")) => Some(json!({"content": "x"})),
        (&Method::POST, Some("publish")) => Some(json!({"data": 1})),
        (&Method::PUT, Some("read")) => Some(json!({"reader": "r", "last_read_id": 1})),
        (&Method::PUT, _) => Some(json!({"description": "d"})),
        _ => None,
    };
    let mut request = app.request(method, path, key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, text.replace(&format!("channel {id}"), "channel N"))
}

async fn mcp(app: &TestApp, key: &str, tool: &str, arguments: Value) -> Value {
    let (_, body) = common::call(
        app.request(Method::POST, "/v1/mcp", key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": arguments}})),
    )
    .await;
    body["result"]["structuredContent"].clone()
}

#[sqlx::test]
async fn another_apps_channels_read_like_unknown_ones_everywhere(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let a = app.key(&ALL).await;
    let team_b = app.app("team-b", Quotas::default()).await;
    let b = app.app_key(team_b, &ALL, &[]).await;

    let ours = app.channel(&a, "planning").await;
    app.message(&a, ours, "a secret plan").await;
    let unknown = 999_999;

    // B lists nothing of A's: not the channel, not its count, not its last message.
    let (status, list) = app.get("/v1/channels", &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 0, "{list}");
    assert_eq!(list["channels"], json!([]), "{list}");
    // Names are unique per app: B may use the same one, and lists only its own.
    let theirs = app.channel(&b, "planning").await;
    let (_, list) = app.get("/v1/channels", &b).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["channels"][0]["id"], theirs);
    let (_, list) = app.get("/v1/channels?q=plan", &a).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["channels"][0]["id"], ours);

    // Every route, the event stream, the long poll and realtime REST on the channel's live name
    // answer another app's id as they answer one that exists nowhere; both ways round.
    for (key, hidden_id) in [(&b, ours), (&a, theirs)] {
        for (method, path) in [
            (Method::GET, "/v1/channels/{}"),
            (Method::PUT, "/v1/channels/{}"),
            (Method::GET, "/v1/channels/{}/messages"),
            (Method::GET, "/v1/channels/{}/messages?wait=5&after=0"),
            (Method::POST, "/v1/channels/{}/messages"),
            (Method::GET, "/v1/channels/{}/events"),
            (Method::PUT, "/v1/channels/{}/read"),
            (Method::GET, "/v1/channels/{}/peers"),
            (Method::POST, "/v1/channels/{}/publish"),
        ] {
            let hidden = answer(
                &app,
                method.clone(),
                &path.replace("{}", &hidden_id.to_string()),
                key,
                hidden_id,
            )
            .await;
            let missing = answer(
                &app,
                method.clone(),
                &path.replace("{}", &unknown.to_string()),
                key,
                unknown,
            )
            .await;
            assert_eq!(hidden.0, 404, "{method} {path}: {}", hidden.1);
            assert_eq!(hidden, missing, "{method} {path}");
        }
    }
    // So do MCP's tools, answer for answer.
    for (tool, arguments) in [
        ("get_channel", json!({"channel_id": "ID"})),
        ("read_messages", json!({"channel_id": "ID"})),
        (
            "wait_for_messages",
            json!({"channel_id": "ID", "after": 0, "wait_seconds": 1}),
        ),
        ("post_message", json!({"channel_id": "ID", "content": "x"})),
        (
            "update_channel_document",
            json!({"channel_id": "ID", "document": "overwritten"}),
        ),
        (
            "mark_read",
            json!({"channel_id": "ID", "reader": "r", "last_read_id": 1}),
        ),
    ] {
        let with = |id: i64| {
            let mut arguments = arguments.clone();
            arguments["channel_id"] = json!(id);
            arguments
        };
        let hidden = mcp(&app, &b, tool, with(ours)).await;
        let missing = mcp(&app, &b, tool, with(unknown)).await;
        assert_eq!(hidden["error"], "not_found", "{tool}: {hidden}");
        assert_eq!(
            hidden.to_string().replace(&ours.to_string(), "N"),
            missing.to_string().replace(&unknown.to_string(), "N"),
            "{tool}"
        );
    }
    let listed = mcp(&app, &b, "list_channels", json!({})).await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["channels"][0]["id"], theirs, "{listed}");

    // Over WebSocket, A's channel is B's unknown channel too.
    let mut peer = app.peer(&b, "b-reader", json!({})).await;
    let subscribe =
        |id: i64| json!({"type": "subscribe", "channel": id.to_string(), "requestId": "s"});
    let hidden = peer.request(subscribe(ours)).await;
    let missing = peer.request(subscribe(unknown)).await;
    assert_eq!(hidden["type"], "error", "{hidden}");
    assert_eq!(
        hidden.to_string().replace(&ours.to_string(), "N"),
        missing.to_string().replace(&unknown.to_string(), "N")
    );

    // Nothing B did reached A's channel.
    let (_, history) = app.get(&format!("/v1/channels/{ours}/messages"), &a).await;
    let contents: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["a secret plan"]);
    let (_, channel) = app.get(&format!("/v1/channels/{ours}"), &a).await;
    assert_eq!(channel["channel"]["description"], Value::Null);
    assert_eq!(channel["channel"]["document"], Value::Null);
}

#[sqlx::test]
async fn realtime_names_peers_and_presence_are_two_namespaces(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.engine_ready().await;
    let a = app.key(&ALL).await;
    let team_b = app.app("team-b", Quotas::default()).await;
    let b = app.app_key(team_b, &ALL, &[]).await;
    let presence = |joined: Value| json!({"type": "presence", "channel": "room", "joined": joined, "left": []});

    // App A: `alice` and `bob` in `room`. App B: its own `bob`, then `carol`.
    let mut alice_a = app.peer(&a, "alice", json!({})).await;
    alice_a.subscribe("room").await;
    assert_eq!(alice_a.recv().await, presence(json!([])));
    let mut bob_a = app.peer(&a, "bob", json!({})).await;
    bob_a.subscribe("room").await;
    assert_eq!(bob_a.recv().await, presence(json!([{"peerId": "alice"}])));
    assert_eq!(alice_a.recv().await, presence(json!([{"peerId": "bob"}])));
    let mut bob_b = app.peer(&b, "bob", json!({})).await;
    bob_b.subscribe("room").await;
    assert_eq!(
        bob_b.recv().await,
        presence(json!([])),
        "B's bob sees neither of A's peers"
    );
    let mut carol_b = app.peer(&b, "carol", json!({})).await;
    carol_b.subscribe("room").await;
    assert_eq!(carol_b.recv().await, presence(json!([{"peerId": "bob"}])));
    assert_eq!(bob_b.recv().await, presence(json!([{"peerId": "carol"}])));

    // REST: each app's peers and publishes stay in the app.
    let listed = |peers: &Value| {
        let mut ids: Vec<String> = peers["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["peerId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let (status, peers) = app.get("/v1/channels/room/peers", &a).await;
    assert_eq!(status, StatusCode::OK, "{peers}");
    assert_eq!(listed(&peers), ["alice", "bob"], "{peers}");
    let (_, peers) = app.get("/v1/channels/room/peers", &b).await;
    assert_eq!(listed(&peers), ["bob", "carol"], "{peers}");
    let (status, published) = app
        .post("/v1/channels/room/publish", &a, json!({"data": "from a"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{published}");
    assert_eq!(published["delivered"], 2, "A's alice and bob: {published}");
    for ws in [&mut alice_a, &mut bob_a] {
        let message = ws.recv().await;
        assert_eq!(
            (message["type"].as_str(), message["data"].as_str()),
            (Some("message"), Some("from a")),
            "{message}"
        );
    }

    // `send` to `bob` reaches the sender's app's bob only; a peer only A has is not found in B.
    let sent = alice_a
        .request(json!({"type": "send", "to": "bob", "data": "hi", "requestId": "d"}))
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let direct = bob_a.recv().await;
    assert_eq!(
        (direct["type"].as_str(), direct["from"].as_str()),
        (Some("direct"), Some("alice"))
    );
    let refused = carol_b
        .request(json!({"type": "send", "to": "alice", "data": "hi", "requestId": "d"}))
        .await;
    assert_eq!(refused["code"], "peer_not_found", "{refused}");
    // B's next frames are B's own publish: nothing of A's publish, presence or send came first.
    let (_, published) = app
        .post("/v1/channels/room/publish", &b, json!({"data": "from b"}))
        .await;
    assert_eq!(published["delivered"], 2, "B's bob and carol: {published}");
    for ws in [&mut bob_b, &mut carol_b] {
        let next = ws.recv().await;
        assert_eq!(
            next["data"], "from b",
            "B's peers got only B's traffic: {next}"
        );
    }

    // An admin key of B kicks B's bob; A's bob stays and hears only A's traffic.
    let response = app
        .request(Method::DELETE, "/v1/peers/bob", &b)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kicked: Value = response.json().await.unwrap();
    assert_eq!(kicked["closed"], 1, "{kicked}");
    assert_eq!(bob_b.closed().await, 4020);
    let left = carol_b.recv().await;
    assert_eq!(left["left"], json!([{"peerId": "bob"}]), "{left}");
    app.post("/v1/channels/room/publish", &a, json!({"data": "marker"}))
        .await;
    let next = bob_a.recv().await;
    assert_eq!(next["data"], "marker", "A's bob saw nothing of B: {next}");

    // Stored messages reach the live stream of their own app's channel, in the default app and
    // in another.
    for (key, peer) in [(&a, &mut bob_a), (&b, &mut carol_b)] {
        let id = app.channel(key, "stored").await;
        let name = id.to_string();
        peer.subscribe(&name).await;
        assert_eq!(peer.recv().await["type"], "presence");
        app.message(key, id, &format!("stored in {name}")).await;
        let stored = peer.recv().await;
        assert_eq!(stored["channel"], name, "{stored}");
        assert_eq!(stored["data"]["content"], format!("stored in {name}"));
        // The other app's key cannot subscribe to it: an unknown channel to it.
        let other = if std::ptr::eq(key, &a) { &b } else { &a };
        let mut stranger = app.peer(other, "stranger", json!({})).await;
        let refused = stranger
            .request(json!({"type": "subscribe", "channel": name, "requestId": "s"}))
            .await;
        assert_eq!(refused["code"], "invalid_channel", "{refused}");
        let published = stranger
            .request(json!({"type": "publish", "channel": name, "data": 1, "requestId": "p"}))
            .await;
        assert_eq!(published["code"], "invalid_channel", "{published}");
    }
}

#[sqlx::test]
async fn quotas_answer_as_the_spec_says(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let small = app
        .app(
            "small",
            Quotas {
                max_channels: Some(Some(2)),
                max_connections: Some(Some(1)),
                rate_limit: None,
            },
        )
        .await;
    let key = app.app_key(small, &ALL, &[]).await;

    // max_channels counts active channels.
    let first = app.channel(&key, "one").await;
    app.channel(&key, "two").await;
    let (status, body) = app
        .post("/v1/channels", &key, json!({"name": "three"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "quota_exceeded", "{body}");
    assert_eq!(body["quota"], "max_channels", "{body}");
    // The default app is not limited by another app's quota.
    let other = app.key(&ALL).await;
    app.channel(&other, "three").await;
    // Archiving one frees its place.
    let (status, _) = app
        .put(
            &format!("/v1/channels/{first}"),
            &key,
            json!({"archived": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    app.channel(&key, "three").await;
    // Unarchiving counts like creating: at the quota it is refused, and the channel stays archived.
    let (status, body) = app
        .put(
            &format!("/v1/channels/{first}"),
            &key,
            json!({"archived": false}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("quota_exceeded")),
        "{body}"
    );
    let (_, channel) = app.get(&format!("/v1/channels/{first}"), &key).await;
    assert_eq!(channel["channel"]["archived"], true);

    // max_connections: a second WebSocket closes with 4010 while the first is open.
    let token = app.token(&key, json!({"peerId": "p1"})).await;
    let (first_ws, _) = app.ws(&format!("token={token}")).await;
    let (code, reason) = app.refusal(&format!("token={token}"), None).await;
    assert_eq!(code, 4010, "{reason}");
    assert!(reason.contains("max_connections"), "{reason}");
    // Another app's connections are not counted against it.
    let other_token = app.token(&other, json!({"peerId": "p1"})).await;
    let (_other_ws, _) = app.ws(&format!("token={other_token}")).await;
    // Once the first closes, the place is free again.
    drop(first_ws);
    wait_for(
        Duration::from_secs(5),
        "the app's connection to be released",
        || {
            let open = app.state.realtime.app_connections.open(small);
            async move { (open == 0).then_some(()) }
        },
    )
    .await;
    let (_again, _) = app.ws(&format!("token={token}")).await;
}

#[sqlx::test]
async fn an_apps_rate_is_shared_by_its_keys(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let limited = app
        .app(
            "limited",
            Quotas {
                rate_limit: Some(Some(3)),
                ..Quotas::default()
            },
        )
        .await;
    let first = app.app_key(limited, &[Scope::ChannelsRead], &[]).await;
    let second = app.app_key(limited, &[Scope::ChannelsRead], &[]).await;
    let unlimited = app.key(&[Scope::ChannelsRead]).await;
    // Three requests a second for both keys together: the fourth, whichever key sends it, is
    // refused with the rate-limit headers, while another app's key goes on.
    let mut statuses = Vec::new();
    let mut refusal = None;
    for n in 0..6 {
        let key = if n % 2 == 0 { &first } else { &second };
        let response = app
            .request(Method::GET, "/v1/channels", key)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS && refusal.is_none() {
            refusal = Some(response);
        }
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let refusal = refusal.expect("a refusal");
    assert!(refusal.headers().contains_key("retry-after"));
    assert_eq!(refusal.headers()["ratelimit-limit"], "3");
    let body: Value = refusal.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    let (status, _) = app.get("/v1/channels", &unlimited).await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test]
async fn keys_made_before_apps_belong_to_the_default_app(db: PgPool) {
    let app = TestApp::spawn(db).await;
    // Every existing row is the default app's, and so is a key made without an app.
    let key = app.key(&ALL).await;
    let (id, _) = common::key_parts(&key);
    let stored: i64 = sqlx::query_scalar("SELECT app_id FROM api_keys WHERE key_id = $1")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, DEFAULT_APP);
    let channel = app.channel(&key, "default's").await;
    // A row written without app_id (as a binary older than apps writes it) is the default app's.
    let old: i64 =
        sqlx::query_scalar("INSERT INTO channels (name) VALUES ('old binary') RETURNING id")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let (status, list) = app.get("/v1/channels", &key).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<i64> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert!(ids.contains(&channel) && ids.contains(&old), "{list}");
    let mut events = Events::open(&app, &format!("/v1/channels/{old}/events"), &key, None).await;
    app.message(&key, old, "still served").await;
    let (_, message) = events.next_message().await;
    assert_eq!(message["content"], "still served");
}

#[sqlx::test]
async fn derived_keys_stay_within_their_creator(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let lifetime = chrono::Duration::hours(3);
    let orchestrator = app
        .key_expiring(&ALL, Some(chrono::Utc::now() + lifetime))
        .await;
    let pods_channel = app.channel(&orchestrator, "pod work").await;
    let elsewhere = app.channel(&orchestrator, "elsewhere").await;

    // A key for one pod: two scopes, one channel, two hours.
    let (status, created) = app
        .post(
            "/v1/keys",
            &orchestrator,
            json!({"name": "pod-7", "scopes": ["channels:write"],
                   "channel_patterns": [pods_channel.to_string()], "expires_in": "2h"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = &created["key"];
    assert_eq!(key["name"], "pod-7");
    assert_eq!(key["scopes"], json!(["channels:write"]));
    assert_eq!(key["channel_patterns"], json!([pods_channel.to_string()]));
    let expires_at: chrono::DateTime<chrono::Utc> =
        key["expires_at"].as_str().unwrap().parse().unwrap();
    let two_hours = chrono::Utc::now() + chrono::Duration::hours(2);
    assert!((expires_at - two_hours).num_seconds().abs() < 60, "{key}");
    let pod = created["secret_key"].as_str().unwrap().to_owned();
    assert!(pod.starts_with("sk_live_"));

    // The pod reaches its channel and nothing else.
    let (status, _) = app.get(&format!("/v1/channels/{pods_channel}"), &pod).await;
    assert_eq!(status, StatusCode::OK);
    app.message(&pod, pods_channel, "done").await;
    let (status, _) = app.get(&format!("/v1/channels/{elsewhere}"), &pod).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = app.get("/v1/channels", &pod).await;
    assert_eq!(list["total"], 1, "{list}");
    // It holds no admin scope, so it cannot mint keys of its own.
    let (status, body) = app
        .post(
            "/v1/keys",
            &pod,
            json!({"name": "x", "scopes": ["channels:read"]}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_scope"))
    );

    // Never wider than its creator: a longer life is cut to the creator's, a scope or a pattern
    // the creator lacks is refused.
    let (status, longer) = app
        .post(
            "/v1/keys",
            &orchestrator,
            json!({"name": "long", "scopes": ["channels:read"], "expires_in": "30d"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{longer}");
    let capped: chrono::DateTime<chrono::Utc> = longer["key"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(capped <= chrono::Utc::now() + lifetime, "{longer}");
    let narrow = app
        .key_with_patterns(&[Scope::Admin, Scope::ChannelsRead], &["team/**"])
        .await;
    let (status, body) = app
        .post(
            "/v1/keys",
            &narrow,
            json!({"name": "x", "scopes": ["channels:write"]}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_scope")),
        "{body}"
    );
    assert_eq!(body["required_scopes"], json!(["channels:write"]));
    let (status, body) = app
        .post(
            "/v1/keys",
            &narrow,
            json!({"name": "x", "scopes": ["channels:read"], "channel_patterns": ["**"]}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("channel_not_authorized")),
        "{body}"
    );
    let (status, inherited) = app
        .post(
            "/v1/keys",
            &narrow,
            json!({"name": "x", "scopes": ["channels:read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        inherited["key"]["channel_patterns"],
        json!(["team/**"]),
        "the creator's patterns"
    );
    // Bad input names every bad field.
    let (status, body) = app
        .post(
            "/v1/keys",
            &orchestrator,
            json!({"name": "", "scopes": ["nope"], "expires_in": "soon"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for field in ["name", "scopes", "expires_in"] {
        assert!(body["details"][field].is_array(), "{field}: {body}");
    }

    // A narrower admin key sees and revokes only keys within it: not its wider creator.
    let (_, narrow_sees) = app.get("/v1/keys", &narrow).await;
    let (narrow_id, _) = common::key_parts(&narrow);
    let (orchestrator_id, _) = common::key_parts(&orchestrator);
    let seen: Vec<&str> = narrow_sees["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert!(seen.contains(&narrow_id.as_str()), "{narrow_sees}");
    assert!(!seen.contains(&orchestrator_id.as_str()), "{narrow_sees}");
    let response = app
        .request(
            Method::DELETE,
            &format!("/v1/keys/{orchestrator_id}"),
            &narrow,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // A key that expires reaches no key that lives longer: not the never-expiring orchestrator.
    let (_, short) = app
        .post(
            "/v1/keys",
            &orchestrator,
            json!({"name": "short", "scopes": ["admin", "channels:write"], "expires_in": "1h"}),
        )
        .await;
    let short = short["secret_key"].as_str().unwrap().to_owned();
    let forever = app.key(&ALL).await;
    let (forever_id, _) = common::key_parts(&forever);
    let (_, seen_by_short) = app.get("/v1/keys", &short).await;
    assert!(
        !seen_by_short.to_string().contains(&forever_id),
        "{seen_by_short}"
    );
    let response = app
        .request(Method::DELETE, &format!("/v1/keys/{forever_id}"), &short)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // A key without realtime actions cannot act as a peer: no token, minted or signed.
    let (status, body) = app
        .post("/v1/tokens", &pod, json!({"peerId": "u_ceo"}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("action_not_permitted")),
        "{body}"
    );
    let signed = common::local_token(
        &pod,
        &common::claims("u_ceo", chrono::Utc::now().timestamp() + 60),
    );
    let (code, _) = app.refusal(&format!("token={signed}"), None).await;
    assert_eq!(code, 4003);

    // Tokens and publishable keys are no REST credentials.
    let token = app.token(&orchestrator, json!({"peerId": "p"})).await;
    let publishable = app.publishable(&[Scope::Subscribe], &["**"], &["*"]).await;
    for credential in [&token, &publishable] {
        let (status, _) = app.get("/v1/keys", credential).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // The list shows the app's keys and never a secret; another app sees none of them.
    let (status, listed) = app.get("/v1/keys", &orchestrator).await;
    assert_eq!(status, StatusCode::OK);
    let pod_id = key["key_id"].as_str().unwrap();
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key_id"] == pod_id)
    );
    assert!(!listed.to_string().contains("sk_live_") && !listed.to_string().contains("secret"));
    let team_b = app.app("team-b", Quotas::default()).await;
    let b_admin = app.app_key(team_b, &ALL, &[]).await;
    let (_, theirs) = app.get("/v1/keys", &b_admin).await;
    assert_eq!(
        theirs["keys"].as_array().unwrap().len(),
        1,
        "B's own key only: {theirs}"
    );

    // B cannot revoke A's key: it reads as an unknown one.
    let revoke = |key: &str, id: &str| {
        app.request(Method::DELETE, &format!("/v1/keys/{id}"), key)
            .send()
    };
    let hidden = revoke(&b_admin, pod_id).await.unwrap();
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
    let hidden = hidden.text().await.unwrap();
    let missing = revoke(&b_admin, "sk_id_0000000000000000")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        hidden.replace(pod_id, "ID"),
        missing.replace("sk_id_0000000000000000", "ID")
    );
    let (status, _) = app.get(&format!("/v1/channels/{pods_channel}"), &pod).await;
    assert_eq!(status, StatusCode::OK, "still working");
    // A revokes it: within a second the pod's key is refused.
    let response = revoke(&orchestrator, pod_id).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let revoked: Value = response.json().await.unwrap();
    assert_eq!(revoked["key_id"], pod_id);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    wait_for(
        Duration::from_secs(2),
        "the revoked key to be refused",
        || {
            let request = app.request(Method::GET, "/v1/channels", &pod).send();
            async move {
                let status = request.await.unwrap().status();
                (status == StatusCode::UNAUTHORIZED).then_some(())
            }
        },
    )
    .await;
}

/// `channeld apps …` and `channeld keys create --app`, as the binary parses them.
async fn cli(db: &PgPool, args: &[&str]) -> Result<String, String> {
    use clap::Parser;
    // The database and the master key are the group's options, before its command.
    let (group, rest) = args.split_first().expect("a command group");
    let parsed = channeld::config::Cli::try_parse_from(
        ["channeld", group, "--database-url", "postgres://unused"]
            .into_iter()
            .chain(rest.iter().copied()),
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let result = match parsed.command {
        channeld::config::Command::Apps { command, .. } => {
            channeld::cli::run_apps(db, command, &mut out).await
        }
        channeld::config::Command::Keys {
            command,
            master_key,
            ..
        } => channeld::cli::run_keys(db, master_key.as_ref(), command, &mut out).await,
        _ => unreachable!("only apps and keys"),
    };
    result.map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

#[sqlx::test]
async fn operators_manage_apps_from_the_command_line(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let created = cli(&db, &["apps", "create", "team-c", "--max-channels", "1"])
        .await
        .unwrap();
    assert!(created.contains("team-c (max channels: 1"), "{created}");
    let refused = cli(&db, &["apps", "create", "Team C"]).await;
    assert!(refused.unwrap_err().contains("invalid app name"));
    let listed = cli(&db, &["apps", "list"]).await.unwrap();
    let names: Vec<&str> = listed
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["default", "team-c"], "{listed}");

    // A key of team-c meets team-c's quota; lifting it lets the next channel in.
    let master = app.config.master_key.to_hex();
    let create_key = |app_name: &'static str| {
        let master = master.clone();
        let db = db.clone();
        async move {
            cli(
                &db,
                &[
                    "keys",
                    "--master-key",
                    &master,
                    "create",
                    "--app",
                    app_name,
                    "--name",
                    "k",
                    "--scopes",
                    "channels:write",
                    "--quiet",
                ],
            )
            .await
        }
    };
    let key = create_key("team-c").await.unwrap();
    let key = key.trim();
    app.channel(key, "first").await;
    let (status, body) = app
        .post("/v1/channels", key, json!({"name": "second"}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("quota_exceeded"))
    );
    cli(&db, &["apps", "update", "team-c", "--max-channels", "none"])
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(3),
        "the lifted quota to reach the server",
        || {
            let request = app
                .request(Method::POST, "/v1/channels", key)
                .json(&json!({"name": "second"}))
                .send();
            async move { (request.await.unwrap().status() == StatusCode::CREATED).then_some(()) }
        },
    )
    .await;
    let missing = create_key("nope").await;
    assert!(missing.unwrap_err().contains("no app nope"));
}
