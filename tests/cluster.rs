//! Cluster mode: three real servers on one database and one Redis, each test under a key prefix
//! of its own; and a real `channeld` process killed with SIGKILL where death is the point.

mod common;

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use common::{
    DbProxy, TestApp, Ws,
    cluster::{
        MASTER_KEY, REALTIME, Seen, answer, channel_keys, cluster_config, fresh_prefix, instances,
        join, next_of_type, peers_in, peers_listed, redis_up, redis_url,
    },
    eventually,
};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tokio::time::Instant;

#[sqlx::test]
async fn a_hundred_peers_over_three_instances_join_and_leave_exactly_once(db: PgPool) {
    let prefix = fresh_prefix();
    let apps = instances(&db, &prefix, 3, Duration::from_secs(2)).await;
    let key = apps[0].key(&REALTIME).await;
    let channel = "room";
    let mut observer_a = apps[0].peer(&key, "observer-a", json!({})).await;
    let mut observer_c = apps[2].peer(&key, "observer-c", json!({})).await;
    join(&mut observer_a, channel).await;
    join(&mut observer_c, channel).await;
    let mut seen_a = Seen::default();
    seen_a
        .until(&mut observer_a, Duration::from_secs(5), |s| {
            s.joined.contains_key("observer-c")
        })
        .await;

    // 100 peers with 1-3 connections each, on instances chosen at random.
    let mut plan = Vec::new();
    for peer in 0..100 {
        for _ in 0..(1 + rand::random::<usize>() % 3) {
            plan.push((format!("peer-{peer}"), rand::random::<usize>() % 3));
        }
    }
    let mut sockets = join_all(
        plan.iter()
            .map(|(peer, instance)| apps[*instance].peer(&key, peer, json!({}))),
    )
    .await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(sockets.len()));
    sockets = join_all(sockets.into_iter().map(|mut ws| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            join(&mut ws, channel).await;
            ws
        }
    }))
    .await;

    let everyone = |s: &Seen| (0..100).all(|p| s.joined.contains_key(&format!("peer-{p}")));
    let mut seen_c = Seen::default();
    seen_a
        .until(&mut observer_a, Duration::from_secs(10), everyone)
        .await;
    seen_c
        .until(&mut observer_c, Duration::from_secs(10), everyone)
        .await;

    let listed: Vec<BTreeSet<String>> =
        join_all(apps.iter().map(|app| peers_listed(app, &key, channel))).await;
    assert_eq!(listed[0].len(), 102, "100 peers and 2 observers");
    assert_eq!(listed[0], listed[1], "the same roster on every instance");
    assert_eq!(listed[0], listed[2], "the same roster on every instance");

    for ws in &mut sockets {
        ws.stream.close(None).await.expect("close");
    }
    drop(sockets);
    let all_left = |s: &Seen| (0..100).all(|p| s.left.contains_key(&format!("peer-{p}")));
    seen_a
        .until(&mut observer_a, Duration::from_secs(10), all_left)
        .await;
    seen_c
        .until(&mut observer_c, Duration::from_secs(10), all_left)
        .await;
    // Presence travels in one order: every joined came before these lefts.
    for seen in [&seen_a, &seen_c] {
        let peers: Vec<_> = seen
            .joined
            .keys()
            .filter(|p| p.starts_with("peer-"))
            .collect();
        assert_eq!(peers.len(), 100);
        assert!(
            seen.joined.iter().all(|(_, n)| *n == 1),
            "each peer joined once: {:?}",
            seen.joined
        );
        assert!(
            seen.left.iter().all(|(_, n)| *n == 1) && seen.left.len() == 100,
            "each peer left once: {:?}",
            seen.left
        );
    }

    drop((observer_a, observer_c));
    eventually(
        Duration::from_secs(5),
        "the channel's keys are removed, none left behind",
        || async { channel_keys(&prefix, channel).await.is_empty() },
    )
    .await;
}

#[sqlx::test]
async fn two_tabs_on_two_instances_make_one_join_and_one_leave_per_round(db: PgPool) {
    let prefix = fresh_prefix();
    let apps = instances(&db, &prefix, 3, Duration::from_secs(2)).await;
    let key = apps[0].key(&REALTIME).await;
    let mut observer = apps[2].peer(&key, "observer", json!({})).await;
    join(&mut observer, "tabs").await;
    let mut tab_a = apps[0].peer(&key, "tabbed", json!({})).await;
    let mut tab_b = apps[1].peer(&key, "tabbed", json!({})).await;
    let unsubscribe = json!({"type": "unsubscribe", "channel": "tabs", "requestId": "u"});
    for round in 0..50 {
        tokio::join!(join(&mut tab_a, "tabs"), join(&mut tab_b, "tabs"));
        let joined = observer.recv().await;
        assert_eq!(
            peers_in(&joined, "joined"),
            ["tabbed"],
            "round {round}: {joined}"
        );
        assert!(
            peers_in(&joined, "left").is_empty(),
            "round {round}: {joined}"
        );
        let (a, b) = tokio::join!(
            tab_a.request(unsubscribe.clone()),
            tab_b.request(unsubscribe.clone())
        );
        assert_eq!(
            (a["type"].as_str(), b["type"].as_str()),
            (Some("ack"), Some("ack"))
        );
        // The next frame is the leave: a second join in between would show here.
        let left = observer.recv().await;
        assert_eq!(peers_in(&left, "left"), ["tabbed"], "round {round}: {left}");
        assert!(
            peers_in(&left, "joined").is_empty(),
            "round {round}: {left}"
        );
    }
}

#[sqlx::test]
async fn publish_send_kick_and_revocation_reach_every_instance(db: PgPool) {
    let prefix = fresh_prefix();
    let apps = instances(&db, &prefix, 3, Duration::from_secs(2)).await;
    let key = apps[0].key(&REALTIME).await;
    let mut on_a = Vec::new();
    for i in 0..3 {
        let mut ws = apps[0].peer(&key, &format!("a{i}"), json!({})).await;
        join(&mut ws, "news").await;
        on_a.push(ws);
    }
    let mut on_b = Vec::new();
    for i in 0..2 {
        let mut ws = apps[1].peer(&key, &format!("b{i}"), json!({})).await;
        join(&mut ws, "news").await;
        on_b.push(ws);
    }
    let (status, body) = apps[2]
        .post("/v1/channels/news/publish", &key, json!({"data": {"n": 1}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["delivered"], 5, "subscribers on every instance count");
    for ws in on_a.iter_mut().chain(on_b.iter_mut()) {
        let frame = next_of_type(ws, "message").await;
        assert_eq!(frame["data"], json!({"n": 1}));
    }

    // A WebSocket publish reaches the sender's other tab on another instance, never the sender.
    let mut sender = apps[0].peer(&key, "twin", json!({})).await;
    let mut twin = apps[1].peer(&key, "twin", json!({})).await;
    join(&mut sender, "news").await;
    join(&mut twin, "news").await;
    let ack = sender
        .request(json!({"type": "publish", "channel": "news", "data": "mine", "requestId": "p"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next_of_type(&mut twin, "message").await["data"], "mine");
    let (status, _) = apps[2]
        .post("/v1/channels/news/publish", &key, json!({"data": "marker"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        next_of_type(&mut sender, "message").await["data"],
        "marker",
        "the sender's own publish did not come back to it"
    );

    // Direct send from a third instance reaches both tabs.
    let mut outsider = apps[2].peer(&key, "outsider", json!({})).await;
    let ack = outsider
        .request(json!({"type": "send", "to": "twin", "data": "psst", "requestId": "s"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next_of_type(&mut twin, "message").await["data"], "marker");
    assert_eq!(next_of_type(&mut sender, "direct").await["data"], "psst");
    assert_eq!(next_of_type(&mut twin, "direct").await["data"], "psst");
    let missing = outsider
        .request(json!({"type": "send", "to": "nobody", "data": 1, "requestId": "s2"}))
        .await;
    assert_eq!(missing["code"], "peer_not_found", "{missing}");

    // A kick through the third instance closes both tabs with 4020.
    let (status, body) =
        common::call(apps[2].request(reqwest::Method::DELETE, "/v1/peers/twin", &key)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"peerId": "twin", "closed": 2}))
    );
    assert_eq!(sender.closed().await, 4020);
    assert_eq!(twin.closed().await, 4020);

    // Revoking the key closes its connections on every instance.
    channeld::auth::revoke_key(&apps[0].db, &common::key_parts(&key).0)
        .await
        .unwrap();
    assert_eq!(on_a[0].closed().await, 4001);
    assert_eq!(on_b[0].closed().await, 4001);
    assert_eq!(outsider.closed().await, 4001);
}

#[sqlx::test]
async fn apps_keep_their_boundaries_across_instances(db: PgPool) {
    let prefix = fresh_prefix();
    let apps = instances(&db, &prefix, 2, Duration::from_secs(2)).await;
    let team_b = apps[0]
        .app("team-b", channeld::apps::Quotas::default())
        .await;
    let mut realtime_admin = REALTIME.to_vec();
    realtime_admin.push(channeld::auth::Scope::Admin);
    let key_a = apps[0].key(&realtime_admin).await;
    let key_b = apps[0].app_key(team_b, &realtime_admin, &[]).await;
    // Peer `bob` of each app in `room`, on different instances.
    let mut bob_a = apps[0].peer(&key_a, "bob", json!({})).await;
    let mut bob_b = apps[1].peer(&key_b, "bob", json!({})).await;
    join(&mut bob_a, "room").await;
    join(&mut bob_b, "room").await;

    // A publish of app A through instance 1 reaches A's bob on instance 0 only.
    let (status, body) = apps[1]
        .post(
            "/v1/channels/room/publish",
            &key_a,
            json!({"data": "for a"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["delivered"], 1, "{body}");
    assert_eq!(next_of_type(&mut bob_a, "message").await["data"], "for a");
    // A send from B's carol on instance 0 reaches B's bob on instance 1 only.
    let mut carol_b = apps[0].peer(&key_b, "carol", json!({})).await;
    let ack = carol_b
        .request(json!({"type": "send", "to": "bob", "data": "for b", "requestId": "s"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next_of_type(&mut bob_b, "direct").await["data"], "for b");
    // A's alice joins the room too: B's list shows B's bob alone, and B's bob hears of no join.
    let mut alice_a = apps[1].peer(&key_a, "alice", json!({})).await;
    join(&mut alice_a, "room").await;
    let (status, peers) = apps[1].get("/v1/channels/room/peers", &key_b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(peers["peers"], json!([{"peerId": "bob"}]), "{peers}");
    let (status, peers) = apps[0].get("/v1/channels/room/peers", &key_a).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(peers["peers"].as_array().map(Vec::len), Some(2), "{peers}");
    // A kick by A's admin through instance 1 closes A's bob only; B's bob then gets B's traffic.
    let (status, body) =
        common::call(apps[1].request(reqwest::Method::DELETE, "/v1/peers/bob", &key_a)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"peerId": "bob", "closed": 1}))
    );
    assert_eq!(bob_a.closed().await, 4020);
    let (_, body) = apps[0]
        .post(
            "/v1/channels/room/publish",
            &key_b,
            json!({"data": "still here"}),
        )
        .await;
    assert_eq!(body["delivered"], 1, "{body}");
    let next = bob_b.recv().await;
    assert_eq!(
        (next["type"].as_str(), next["data"].as_str()),
        (Some("message"), Some("still here")),
        "B's bob saw nothing of A (no presence, no direct, no message) before: {next}"
    );
}

/// An instance that reaches Redis through a proxy the test can cut, and one more instance on the
/// same Redis and database, both with a node TTL of 2 s.
async fn behind_a_proxy(db: &PgPool) -> (DbProxy, TestApp, Vec<TestApp>) {
    let prefix = fresh_prefix();
    let target: SocketAddr = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("the test Redis URL is redis://host:port");
    let proxy = DbProxy::start(target).await;
    let cut_off = TestApp::spawn_instance(
        db.clone(),
        cluster_config(
            &prefix,
            &format!("redis://{}", proxy.addr),
            Duration::from_secs(2),
        ),
    )
    .await;
    redis_up(&cut_off, true).await;
    let others = instances(db, &prefix, 1, Duration::from_secs(2)).await;
    (proxy, cut_off, others)
}

#[sqlx::test]
async fn apps_keep_their_peers_apart_after_redis_comes_back(db: PgPool) {
    let (proxy, cut_off, others) = behind_a_proxy(&db).await;
    let other = &others[0];
    let team_b = cut_off
        .app("team-b", channeld::apps::Quotas::default())
        .await;
    let key_a = cut_off.key(&REALTIME).await;
    let key_b = cut_off.app_key(team_b, &REALTIME, &[]).await;
    // B's bob on the instance that will lose Redis; A's alice and B's carol on the other.
    let _bob_b = cut_off.peer(&key_b, "bob", json!({})).await;
    let mut alice_a = other.peer(&key_a, "alice", json!({})).await;
    let mut carol_b = other.peer(&key_b, "carol", json!({})).await;
    let send = |to: &str, id: String| json!({"type": "send", "to": to, "data": 1, "requestId": id});
    assert_eq!(
        answer(&mut carol_b, send("bob", "0".into())).await["type"],
        "ack"
    );

    // Cut off long enough for the other instance to remove it, then back: its connections are
    // registered again, each under its own app.
    proxy.cut();
    redis_up(&cut_off, false).await;
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        n += 1;
        let reply = answer(&mut carol_b, send("bob", n.to_string())).await;
        if reply["code"] == "peer_not_found" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cut-off instance removed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore();
    redis_up(&cut_off, true).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        n += 1;
        let reply = answer(&mut carol_b, send("bob", n.to_string())).await;
        if reply["type"] == "ack" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's bob registered again within 10 s: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leaked = answer(&mut alice_a, send("bob", "a".into())).await;
    assert_eq!(
        leaked["code"], "peer_not_found",
        "A's send must not find B's bob: {leaked}"
    );
}

#[sqlx::test]
async fn every_subscriber_sees_two_publishers_in_one_order(db: PgPool) {
    let prefix = fresh_prefix();
    let apps = instances(&db, &prefix, 3, Duration::from_secs(2)).await;
    let key = apps[0].key(&REALTIME).await;
    let mut subscribers = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let mut ws = app.peer(&key, &format!("reader{i}"), json!({})).await;
        join(&mut ws, "order").await;
        subscribers.push(ws);
    }
    let mut writer_a = apps[0].peer(&key, "writer-a", json!({})).await;
    let mut writer_b = apps[1].peer(&key, "writer-b", json!({})).await;
    const EACH: usize = 200;
    async fn publish(ws: &mut Ws, name: &str) {
        for i in 0..EACH {
            ws.send(json!({"type": "publish", "channel": "order", "data": format!("{name}{i}")}))
                .await;
        }
    }
    tokio::join!(publish(&mut writer_a, "a"), publish(&mut writer_b, "b"));
    let mut orders = Vec::new();
    for ws in &mut subscribers {
        let mut order = Vec::new();
        while order.len() < 2 * EACH {
            let frame = next_of_type(ws, "message").await;
            order.push(frame["data"].as_str().expect("data").to_owned());
        }
        orders.push(order);
    }
    for name in ["a", "b"] {
        let own: Vec<_> = orders[0].iter().filter(|d| d.starts_with(name)).collect();
        let sent: Vec<String> = (0..EACH).map(|i| format!("{name}{i}")).collect();
        assert_eq!(
            own,
            sent.iter().collect::<Vec<_>>(),
            "each publisher's order kept"
        );
    }
    assert_eq!(orders[0], orders[1], "one interleaving on every instance");
    assert_eq!(orders[0], orders[2], "one interleaving on every instance");
}

#[sqlx::test]
async fn a_graceful_stop_removes_its_peers_at_once(db: PgPool) {
    let prefix = fresh_prefix();
    // A TTL far beyond the test's deadlines: only the graceful leave can explain the `left`.
    let mut apps = instances(&db, &prefix, 2, Duration::from_secs(600)).await;
    let key = apps[0].key(&REALTIME).await;
    let mut observer = apps[0].peer(&key, "observer", json!({})).await;
    join(&mut observer, "stop").await;
    let mut leaving = apps[1].peer(&key, "leaving", json!({})).await;
    join(&mut leaving, "stop").await;
    let mut seen = Seen::default();
    seen.until(&mut observer, Duration::from_secs(5), |s| {
        s.joined.contains_key("leaving")
    })
    .await;
    let mut stopping = apps.pop().expect("second instance");
    stopping.shutdown();
    seen.until(&mut observer, Duration::from_secs(5), |s| {
        s.left.contains_key("leaving")
    })
    .await;
    let (status, body) = apps[0]
        .post("/v1/channels/stop/publish", &key, json!({"data": 1}))
        .await;
    assert_eq!(
        (status, body["delivered"].clone()),
        (StatusCode::OK, json!(1))
    );
}

/// A real `channeld serve` process in the cluster; killed when dropped.
struct Process {
    child: std::process::Child,
    app: TestApp,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn process(db: &PgPool, prefix: &str, ttl: &str) -> Process {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_channeld"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "text"])
        .env("DATABASE_URL", common::database_url(db))
        .env("CHANNELD_MASTER_KEY", MASTER_KEY)
        .env("CHANNELD_REDIS_URL", redis_url())
        .env("CHANNELD_REDIS_PREFIX", prefix)
        .env("CHANNELD_NODE_TTL", ttl)
        .env("CHANNELD_CONNECTS_PER_IP", "100000")
        .env("RUST_LOG", "warn,channeld::startup=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start channeld");
    // It listens on a port the OS chose and says which.
    let addr: SocketAddr = common::listening_address(&mut child).await;
    // A client of the process: the test's own TestApp helpers, pointed at its port.
    // (An in-memory server, stopped at once: only its client side is used.)
    let mut app = TestApp::spawn_instance(db.clone(), common::test_config()).await;
    app.shutdown();
    app.base = format!("http://{addr}");
    app.ws_base = format!("ws://{addr}");
    eventually(
        Duration::from_secs(30),
        "the channeld process comes up with Redis",
        || async {
            match app.http.get(format!("{}/metrics", app.base)).send().await {
                Ok(response) => response
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("channeld_redis_up 1"),
                Err(_) => false,
            }
        },
    )
    .await;
    Process { child, app }
}

#[sqlx::test]
async fn killing_an_instance_removes_its_peers_within_the_ttl(db: PgPool) {
    let prefix = fresh_prefix();
    let apps = instances(&db, &prefix, 1, Duration::from_secs(2)).await;
    let a = &apps[0];
    let key = a.key(&REALTIME).await;
    let mut doomed = process(&db, &prefix, "2s").await;
    let mut observer = a.peer(&key, "observer", json!({})).await;
    join(&mut observer, "kill").await;
    let mut on_b = Vec::new();
    let mut on_a = Vec::new();
    for i in 0..10 {
        let mut ws = doomed.app.peer(&key, &format!("p{i}"), json!({})).await;
        join(&mut ws, "kill").await;
        on_b.push(ws);
        if i < 5 {
            let mut ws = a.peer(&key, &format!("p{i}"), json!({})).await;
            join(&mut ws, "kill").await;
            on_a.push(ws);
        }
    }
    let mut seen = Seen::default();
    seen.until(&mut observer, Duration::from_secs(5), |s| {
        s.joined.len() == 10
    })
    .await;
    let (_, body) = a
        .post("/v1/channels/kill/publish", &key, json!({"data": 1}))
        .await;
    assert_eq!(
        body["delivered"], 16,
        "observer, 5 tabs on A, 10 on the process"
    );

    // SIGKILL: no goodbye; only the heartbeat's lapse tells the cluster.
    doomed.child.kill().expect("kill -9");
    doomed.child.wait().expect("reaped");
    let killed_at = Instant::now();
    seen.until(&mut observer, Duration::from_secs(10), |s| {
        s.left.len() == 5
    })
    .await;
    let took = killed_at.elapsed();
    let left: BTreeSet<_> = seen.left.keys().cloned().collect();
    let expected: BTreeSet<_> = (5..10).map(|i| format!("p{i}")).collect();
    assert_eq!(
        left, expected,
        "only the peers that were on the killed process left"
    );
    assert!(
        took < Duration::from_secs(6),
        "left within TTL and a beat: {took:?}"
    );

    let (_, body) = a
        .post("/v1/channels/kill/publish", &key, json!({"data": 2}))
        .await;
    assert_eq!(
        body["delivered"], 6,
        "the killed process's subscribers no longer count"
    );
    let gone = answer(
        &mut observer,
        json!({"type": "send", "to": "p7", "data": 1, "requestId": "s"}),
    )
    .await;
    assert_eq!(gone["code"], "peer_not_found", "{gone}");
    let alive = answer(
        &mut observer,
        json!({"type": "send", "to": "p2", "data": 1, "requestId": "s"}),
    )
    .await;
    assert_eq!(alive["type"], "ack", "{alive}");
    drop(on_b);
}

#[sqlx::test]
async fn redis_cut_off_fails_closed_and_recovers_with_presence_resynchronised(db: PgPool) {
    let (proxy, cut_off, others) = behind_a_proxy(&db).await;
    let b = &others[0];
    let key = cut_off.key(&REALTIME).await;
    let mut observer = cut_off.peer(&key, "observer", json!({})).await;
    join(&mut observer, "faults").await;

    proxy.cut();
    redis_up(&cut_off, false).await;
    let (status, body) = cut_off
        .post("/v1/channels/faults/publish", &key, json!({"data": 1}))
        .await;
    common::assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let (status, body) = cut_off.get("/v1/channels/faults/peers", &key).await;
    common::assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let refused = observer
        .request(json!({"type": "publish", "channel": "faults", "data": 1, "requestId": "p"}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["requestId"], "p");
    let refused = observer
        .request(json!({"type": "subscribe", "channel": "elsewhere", "requestId": "s"}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        observer
            .request(json!({"type": "ping", "requestId": "x"}))
            .await["type"],
        "pong",
        "the socket stays open"
    );

    // While this instance is cut off, a peer joins through another.
    let mut late = b.peer(&key, "late", json!({})).await;
    join(&mut late, "faults").await;

    proxy.restore();
    redis_up(&cut_off, true).await;
    let mut seen = Seen::default();
    seen.until(&mut observer, Duration::from_secs(10), |s| {
        s.joined.contains_key("late")
    })
    .await;
    // Publishing works again both ways.
    let (status, body) = cut_off
        .post("/v1/channels/faults/publish", &key, json!({"data": "back"}))
        .await;
    assert_eq!(
        (status, body["delivered"].clone()),
        (StatusCode::OK, json!(2))
    );
    assert_eq!(next_of_type(&mut late, "message").await["data"], "back");
    assert_eq!(next_of_type(&mut observer, "message").await["data"], "back");
    assert!(
        cut_off
            .metrics_text()
            .await
            .contains("channeld_redis_pubsub_connects_total 2"),
        "the pub/sub connection was made again"
    );
}
