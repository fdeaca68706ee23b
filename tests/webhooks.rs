//! Webhooks (SPEC §9) against real receivers on 127.0.0.1: signatures checked by the Standard
//! Webhooks reference libraries (PyPI's and npm's), retries that keep `webhook-id`, order per
//! channel through an outage, 410, rotation, address refusals, apps kept apart, two instances
//! that never send one attempt twice, a slow receiver beside a fast one, and `kill -9` of a real
//! `channeld` between a commit and its delivery.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode as AxumStatus},
};
use channeld::{apps::Quotas, auth::Scope, config::Config};
use common::{TestApp, assert_error, cluster::MASTER_KEY, eventually, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

/// How a receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Every request with this status.
    Status(u16),
    /// 500 to an event's first request, 200 to the next.
    FailFirst,
    /// Holds every request until the mode changes, then answers as the new mode says.
    Hold,
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    json: Value,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    mode: Arc<watch::Sender<Mode>>,
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, mode)
    }

    /// On `port`, which the test kept free until now (the receiver was down).
    async fn start_on(port: u16, mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self::serve(listener, mode)
    }

    fn serve(listener: tokio::net::TcpListener, mode: Mode) -> Self {
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = Self {
            url,
            received: Arc::default(),
            mode: Arc::new(watch::channel(mode).0),
        };
        let app = Router::new().fallback(answer).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived; returns them.
    async fn wait(&self, n: usize, what: &str) -> Vec<Received> {
        wait_for(Duration::from_secs(20), what, || async {
            let all = self.all();
            (all.len() >= n).then_some(all)
        })
        .await
    }
}

async fn answer(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let text = String::from_utf8(body.to_vec()).unwrap();
    let received = Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        body: text,
    };
    let seen_before = {
        let mut all = receiver.received.lock().unwrap();
        let seen = all.iter().any(|r| r.id == received.id);
        all.push(received);
        seen
    };
    let mut mode = receiver.mode.subscribe();
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Status(status) => return AxumStatus::from_u16(status).unwrap(),
            Mode::FailFirst if seen_before => return AxumStatus::OK,
            Mode::FailFirst => return AxumStatus::INTERNAL_SERVER_ERROR,
            Mode::Hold => {
                if mode.changed().await.is_err() {
                    return AxumStatus::SERVICE_UNAVAILABLE;
                }
            }
        }
    }
}

/// Test settings: receivers on loopback over plain HTTP, a short retry schedule, a short attempt
/// timeout, and a quick poll.
fn config() -> Config {
    let mut config = common::base_config();
    config.webhooks.allow_private_networks = true;
    config.webhooks.allow_http = true;
    config.webhooks.retry_schedule = vec![Duration::from_millis(300), Duration::from_millis(600)];
    config.webhooks.timeout = Duration::from_secs(2);
    config.webhooks.order_hold = Duration::from_secs(30);
    config.webhooks.poll_interval = Duration::from_millis(200);
    // Concurrent first requests of a key an instance has not seen yet count as guesses.
    config.auth_failures_per_minute = 1_000_000;
    // One master key for every instance (and process) of a test, as in a real deployment.
    config.master_key = MASTER_KEY.parse().expect("master key");
    config
}

async fn admin_key(app: &TestApp) -> String {
    app.key(&[Scope::Admin, Scope::ChannelsRead, Scope::ChannelsWrite])
        .await
}

/// Registers a webhook; returns its id and secret.
async fn webhook(app: &TestApp, key: &str, url: &str, events: &[&str]) -> (String, String) {
    let (status, body) = app
        .post("/v1/webhooks", key, json!({"url": url, "events": events}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "create webhook: {body}");
    assert!(body["secret"].as_str().unwrap().starts_with("whsec_"));
    (
        body["webhook"]["id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

/// Checks every delivery with PyPI's and npm's `standardwebhooks`, under each of its secrets.
fn verify_with_reference_libraries(deliveries: &[(Received, Vec<String>)]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let installed = std::process::Command::new(format!("{root}/scripts/webhook-verifiers.sh"))
        .status()
        .expect("run scripts/webhook-verifiers.sh");
    assert!(installed.success(), "the reference verifiers install");
    let file =
        std::env::temp_dir().join(format!("channeld-webhooks-{}.json", uuid::Uuid::new_v4()));
    let records: Vec<Value> = deliveries
        .iter()
        .map(|(r, secrets)| {
            json!({
                "secrets": secrets,
                "headers": {"webhook-id": r.id, "webhook-timestamp": r.timestamp,
                            "webhook-signature": r.signature},
                "body": r.body,
            })
        })
        .collect();
    std::fs::write(&file, serde_json::to_vec(&records).unwrap()).unwrap();
    let expected: usize = deliveries.iter().map(|(_, s)| s.len()).sum();
    for (program, script) in [
        (
            format!("{root}/.data/webhooks-venv/bin/python"),
            "verify.py",
        ),
        ("node".to_owned(), "verify.mjs"),
    ] {
        let out = std::process::Command::new(&program)
            .arg(format!("{root}/tests/webhooks/{script}"))
            .arg(&file)
            .current_dir(format!("{root}/tests/webhooks"))
            .output()
            .expect("run a verifier");
        assert!(
            out.status.success(),
            "{script} refused a delivery: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let checked: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(checked, expected, "{script} checked every signature");
    }
    let _ = std::fs::remove_file(file);
}

#[sqlx::test]
async fn every_event_type_arrives_signed_and_the_reference_libraries_accept_it(db: PgPool) {
    let app = TestApp::spawn_config(db, config()).await;
    let key = admin_key(&app).await;
    let receiver = Receiver::start(Mode::Status(204)).await;
    let all = channeld::webhooks::model::EVENT_TYPES;
    let (_, secret) = webhook(&app, &key, &receiver.url, &all).await;

    let channel = app.channel(&key, "hooked").await;
    let message = app.message(&key, channel, "hello").await;
    let path = format!("/v1/channels/{channel}");
    let (status, _) = app
        .put(&path, &key, json!({"description": "now described"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.put(&path, &key, json!({"archived": true})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.put(&path, &key, json!({"archived": false})).await;
    assert_eq!(status, StatusCode::OK);
    // A message that dies: one delivery of a 1 s lease, claimed and left to lapse.
    let consumers = format!("/v1/channels/{channel}/consumers");
    let (status, body) = app
        .post(
            &consumers,
            &key,
            json!({"name": "work", "start": "earliest", "ack_wait": "1s", "max_deliveries": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let claim = format!("{consumers}/work/claim");
    let (status, body) = app
        .post(&claim, &key, json!({"member": "m", "max": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(Duration::from_secs(10), "the message dies", || async {
        let (_, dead) = app.get(&format!("{consumers}/work/dead"), &key).await;
        dead["dead"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;

    // A peer joins a realtime channel and leaves it.
    let realtime = app
        .key(&[Scope::Subscribe, Scope::Presence, Scope::Publish])
        .await;
    let mut peer = app
        .peer(
            &realtime,
            "agent-7",
            json!({"peerMetadata": {"role": "planner"}}),
        )
        .await;
    peer.subscribe("lobby").await;
    drop(peer);

    let received = receiver.wait(8, "eight events").await;
    let types: Vec<&str> = received
        .iter()
        .map(|r| r.json["type"].as_str().unwrap())
        .collect();
    for expected in [
        "channel.created",
        "message.created",
        "channel.updated",
        "channel.archived",
        "channel.unarchived",
        "consumer.dead",
        "presence.joined",
        "presence.left",
    ] {
        assert!(types.contains(&expected), "{expected} arrived: {types:?}");
    }
    let joined = received
        .iter()
        .find(|r| r.json["type"] == "presence.joined")
        .unwrap();
    assert_eq!(
        joined.json["data"],
        json!({"channel": "lobby", "peerId": "agent-7", "metadata": {"role": "planner"}})
    );
    let left = received
        .iter()
        .find(|r| r.json["type"] == "presence.left")
        .unwrap();
    assert_eq!(left.json["data"]["peerId"], "agent-7");
    let created = received
        .iter()
        .find(|r| r.json["type"] == "message.created")
        .unwrap();
    assert_eq!(created.json["data"]["id"], message);
    assert_eq!(created.json["data"]["content"], "hello");
    assert!(created.id.starts_with("evt_"));
    let archived = received
        .iter()
        .find(|r| r.json["type"] == "channel.archived")
        .unwrap();
    assert_eq!(archived.json["data"]["archived"], true);
    let updated = received
        .iter()
        .find(|r| r.json["type"] == "channel.updated")
        .unwrap();
    assert_eq!(updated.json["data"]["description"], "now described");
    let dead = received
        .iter()
        .find(|r| r.json["type"] == "consumer.dead")
        .unwrap();
    assert_eq!(
        dead.json["data"],
        json!({"channel_id": channel, "consumer": "work", "message_id": message, "attempts": 1})
    );
    // Posting is not an update of the channel.
    assert_eq!(types.iter().filter(|t| **t == "channel.updated").count(), 1);

    let deliveries: Vec<(Received, Vec<String>)> = received
        .into_iter()
        .map(|r| (r, vec![secret.clone()]))
        .collect();
    verify_with_reference_libraries(&deliveries);
}

#[sqlx::test]
async fn a_rotated_secret_signs_beside_the_old_one(db: PgPool) {
    let app = TestApp::spawn_config(db, config()).await;
    let key = admin_key(&app).await;
    let receiver = Receiver::start(Mode::Status(200)).await;
    let (id, old) = webhook(&app, &key, &receiver.url, &["message.created"]).await;
    let channel = app.channel(&key, "rotating").await;
    app.message(&key, channel, "before").await;
    let before = receiver.wait(1, "the first message").await;
    assert_eq!(before[0].signature.split(' ').count(), 1);

    let (status, body) = app
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    app.message(&key, channel, "after").await;
    let after = receiver.wait(2, "the second message").await;
    assert_eq!(
        after[1].signature.split(' ').count(),
        2,
        "both secrets sign"
    );
    verify_with_reference_libraries(&[
        (after[0].clone(), vec![old.clone()]),
        (after[1].clone(), vec![old, new]),
    ]);
}

#[sqlx::test]
async fn retries_keep_the_event_id_and_are_signed_afresh(db: PgPool) {
    let app = TestApp::spawn_config(db, config()).await;
    let key = admin_key(&app).await;
    let receiver = Receiver::start(Mode::FailFirst).await;
    let (id, _) = webhook(&app, &key, &receiver.url, &["message.created"]).await;
    let channel = app.channel(&key, "retried").await;
    app.message(&key, channel, "again").await;
    let received = receiver.wait(2, "an attempt and its retry").await;
    assert_eq!(received[0].id, received[1].id, "webhook-id is the event's");
    assert_eq!(received[0].body, received[1].body);

    let path = format!("/v1/webhooks/{id}/deliveries");
    let log = wait_for(
        Duration::from_secs(5),
        "the log shows delivered",
        || async {
            let (_, body) = app.get(&path, &key).await;
            (body["deliveries"][0]["state"] == "delivered").then_some(body)
        },
    )
    .await;
    let delivery = &log["deliveries"][0];
    assert_eq!(delivery["attempts"], 2);
    assert_eq!(delivery["last_status_code"], 200);
    assert_eq!(delivery["type"], "message.created");
    assert_eq!(delivery["event_id"], received[0].id.as_str());
    assert_eq!(delivery["next_attempt_at"], Value::Null);

    // A manual retry sends it once more, under the same id.
    let retry = format!("{path}/{}/retry", received[0].id);
    let (status, body) = app.post(&retry, &key, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["delivery"]["state"], "pending");
    let again = receiver.wait(3, "the manual retry").await;
    assert_eq!(again[2].id, received[0].id);
    let (status, body) = app
        .post(&format!("{path}/evt_999999/retry"), &key, json!({}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test]
async fn a_receiver_down_through_two_backoff_steps_gets_everything_in_order(db: PgPool) {
    // Attempts at 0, 0.3 s and 0.9 s fail; the next is due at 2.9 s, after the receiver is up.
    let mut config = config();
    config.webhooks.retry_schedule = [300, 600, 2000].map(Duration::from_millis).to_vec();
    let app = TestApp::spawn_config(db, config).await;
    let key = admin_key(&app).await;
    // A port with nobody listening: connections are refused until the receiver starts on it.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let (id, _) = webhook(&app, &key, &url, &["message.created"]).await;
    let (a, b) = (
        app.channel(&key, "first").await,
        app.channel(&key, "second").await,
    );
    let mut posted: HashMap<i64, Vec<i64>> = HashMap::new();
    for n in 0..20 {
        let channel = if n % 2 == 0 { a } else { b };
        posted
            .entry(channel)
            .or_default()
            .push(app.message(&key, channel, &format!("m{n}")).await);
    }
    // Both backoff steps pass with the receiver down: a third attempt failed.
    let path = format!("/v1/webhooks/{id}/deliveries?state=pending");
    let log = wait_for(
        Duration::from_secs(10),
        "a third failed attempt",
        || async {
            let (_, body) = app.get(&path, &key).await;
            let third = body["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["attempts"].as_i64() >= Some(3));
            third.then_some(body)
        },
    )
    .await;
    let first = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["attempts"] == 3)
        .unwrap()
        .clone();
    assert!(
        first["last_error"].as_str().unwrap().contains("connection"),
        "{first}"
    );
    assert!(first["next_attempt_at"].is_string(), "{first}");
    // Up again, before the third wait ends.
    let receiver = Receiver::start_on(port, Mode::Status(200)).await;
    eventually(Duration::from_secs(20), "all 20 messages", || async {
        let ids: HashSet<String> = receiver.all().into_iter().map(|r| r.id).collect();
        ids.len() == 20
    })
    .await;
    // Per channel, the first arrival of each message is in id order.
    let mut seen = HashSet::new();
    let mut order: HashMap<i64, Vec<i64>> = HashMap::new();
    for r in receiver.all() {
        if seen.insert(r.id.clone()) {
            let data = &r.json["data"];
            order
                .entry(data["channel_id"].as_i64().unwrap())
                .or_default()
                .push(data["id"].as_i64().unwrap());
        }
    }
    assert_eq!(order, posted);
}

#[sqlx::test]
async fn gone_disables_the_webhook_and_enabling_it_sends_what_waited_and_what_follows(db: PgPool) {
    let app = TestApp::spawn_config(db, config()).await;
    let key = admin_key(&app).await;
    let receiver = Receiver::start(Mode::Status(410)).await;
    let (id, _) = webhook(&app, &key, &receiver.url, &["message.created"]).await;
    let channel = app.channel(&key, "gone").await;
    app.message(&key, channel, "one").await;
    receiver.wait(1, "the 410").await;
    let path = format!("/v1/webhooks/{id}");
    eventually(
        Duration::from_secs(5),
        "the webhook is disabled",
        || async { app.get(&path, &key).await.1["webhook"]["enabled"] == false },
    )
    .await;
    app.message(&key, channel, "two").await;
    let deliveries = format!("{path}/deliveries");
    let delivery = wait_for(Duration::from_secs(5), "the 410 in the log", || async {
        let (_, log) = app.get(&deliveries, &key).await;
        log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["attempts"] == 1)
            .cloned()
    })
    .await;
    assert_eq!(delivery["last_status_code"], 410);
    assert_eq!(delivery["state"], "pending");

    receiver.set(Mode::Status(200));
    let (status, body) = app.put(&path, &key, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["webhook"]["enabled"], true);
    receiver.wait(2, "the waiting message after enabling").await;
    app.message(&key, channel, "three").await;
    let received = receiver.wait(3, "a message posted after enabling").await;
    let contents: Vec<&str> = received[1..]
        .iter()
        .map(|r| r.json["data"]["content"].as_str().unwrap())
        .collect();
    // What was posted while it was disabled is not recorded for it (were it, it would come
    // before "three", which is later on the same channel).
    assert_eq!(contents, ["one", "three"]);
}

#[sqlx::test]
async fn a_slow_receiver_does_not_hold_back_another(db: PgPool) {
    let mut config = config();
    config.webhooks.timeout = Duration::from_secs(20);
    let app = TestApp::spawn_config(db, config).await;
    let key = admin_key(&app).await;
    let slow = Receiver::start(Mode::Hold).await;
    let fast = Receiver::start(Mode::Status(200)).await;
    webhook(&app, &key, &slow.url, &["message.created"]).await;
    webhook(&app, &key, &fast.url, &["message.created"]).await;
    let channel = app.channel(&key, "mixed").await;
    for n in 0..10 {
        app.message(&key, channel, &format!("m{n}")).await;
    }
    // The slow one holds its first request; the fast one gets all ten meanwhile.
    slow.wait(1, "the slow receiver's first request").await;
    fast.wait(10, "all ten at the fast receiver").await;
    assert_eq!(
        slow.all().len(),
        1,
        "the slow receiver's lane waits for its answer"
    );
    slow.set(Mode::Status(200));
    slow.wait(10, "the slow receiver catches up").await;
}

#[sqlx::test]
async fn apps_never_see_each_others_events(db: PgPool) {
    let app = TestApp::spawn_config(db, config()).await;
    let other_app = app.app("other", Quotas::default()).await;
    let ours = admin_key(&app).await;
    let theirs = app
        .app_key(
            other_app,
            &[Scope::Admin, Scope::ChannelsRead, Scope::ChannelsWrite],
            &[],
        )
        .await;
    let our_receiver = Receiver::start(Mode::Status(200)).await;
    let their_receiver = Receiver::start(Mode::Status(200)).await;
    let (our_hook, _) = webhook(
        &app,
        &ours,
        &our_receiver.url,
        &["message.created", "channel.created"],
    )
    .await;
    webhook(
        &app,
        &theirs,
        &their_receiver.url,
        &["message.created", "channel.created"],
    )
    .await;
    let channel = app.channel(&theirs, "theirs").await;
    app.message(&theirs, channel, "private").await;
    their_receiver.wait(2, "their own events").await;
    // Ours hears of our own channel, and of nothing before it.
    let mine = app.channel(&ours, "ours").await;
    let got = our_receiver.wait(1, "our channel").await;
    assert_eq!(got[0].json["data"]["id"], mine);
    // Events are made into deliveries in id order, so theirs (earlier) were dispatched before
    // ours was: our webhook's log holds ours alone.
    let (_, log) = app
        .get(&format!("/v1/webhooks/{our_hook}/deliveries"), &ours)
        .await;
    assert_eq!(log["deliveries"].as_array().unwrap().len(), 1, "{log}");
    // Another app's webhook reads as missing.
    let (status, body) = app.get(&format!("/v1/webhooks/{our_hook}"), &theirs).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, list) = app.get("/v1/webhooks", &theirs).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
}

#[sqlx::test]
async fn a_webhooks_channels_narrow_what_it_hears(db: PgPool) {
    let app = TestApp::spawn_config(db, config()).await;
    let key = admin_key(&app).await;
    let receiver = Receiver::start(Mode::Status(200)).await;
    let first = app.channel(&key, "one").await;
    let second = app.channel(&key, "two").await;
    let (status, body) = app
        .post("/v1/webhooks", &key, json!({"url": receiver.url, "events": ["message.created"], "channels": [second.to_string()]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hook = body["webhook"]["id"].as_str().unwrap().to_owned();
    app.message(&key, first, "unheard").await;
    app.message(&key, second, "heard").await;
    let got = receiver.wait(1, "the matching channel's message").await;
    assert_eq!(got[0].json["data"]["content"], "heard");
    // "unheard" was dispatched first (events go in id order): had it matched, the log would
    // hold it.
    let (_, log) = app
        .get(&format!("/v1/webhooks/{hook}/deliveries"), &key)
        .await;
    assert_eq!(log["deliveries"].as_array().unwrap().len(), 1, "{log}");
    // A key limited to some channels registers no wider webhook.
    let narrow = app.key_with_patterns(&[Scope::Admin], &["1*"]).await;
    let (status, body) = app
        .post(
            "/v1/webhooks",
            &narrow,
            json!({"url": receiver.url, "events": ["message.created"], "channels": ["**"]}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "channel_not_authorized",
    );
}

#[sqlx::test]
async fn bad_registrations_are_refused_with_the_field_named(db: PgPool) {
    let app = TestApp::spawn_config(db, config()).await;
    let key = admin_key(&app).await;
    for (body, field) in [
        (
            json!({"url": "https://example.com/h", "events": ["message.deleted"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com/h", "events": []}),
            "events",
        ),
        (
            json!({"url": "ftp://example.com/h", "events": ["message.created"]}),
            "url",
        ),
        (
            json!({"url": "not a url", "events": ["message.created"]}),
            "url",
        ),
        (
            json!({"url": "https://user:pw@example.com/h", "events": ["message.created"]}),
            "url",
        ),
    ] {
        let (status, answer) = app.post("/v1/webhooks", &key, body.clone()).await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            answer["details"][field].is_array(),
            "{body} names {field}: {answer}"
        );
    }
    let reader = app.key(&[Scope::ChannelsRead]).await;
    let (status, body) = app
        .post(
            "/v1/webhooks",
            &reader,
            json!({"url": "https://example.com/h", "events": ["message.created"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "insufficient_scope");
    let (status, body) = app.get("/v1/webhooks/wh_missing", &key).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test]
async fn private_addresses_are_refused_at_registration_and_at_connection(db: PgPool) {
    let mut strict = common::base_config();
    strict.webhooks.allow_http = true;
    strict.webhooks.timeout = Duration::from_secs(2);
    strict.webhooks.poll_interval = Duration::from_millis(200);
    let app = TestApp::spawn_config(db.clone(), strict.clone()).await;
    let key = admin_key(&app).await;
    for url in [
        "https://127.0.0.1/h",
        "https://10.0.0.8/h",
        "https://192.168.1.1/h",
        "https://172.16.0.1/h",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/h",
        "https://[::1]/h",
        "https://[fe80::1]/h",
        "https://localhost/h",
        "http://127.0.0.1:9/h",
        "ftp://example.com/h",
    ] {
        let (status, body) = app
            .post(
                "/v1/webhooks",
                &key,
                json!({"url": url, "events": ["message.created"]}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(body["details"]["url"].is_array(), "{url}: {body}");
    }
    let mut https_only = strict.clone();
    https_only.webhooks.allow_http = false;
    let other = TestApp::spawn_config(db.clone(), https_only).await;
    let (status, body) = other
        .post(
            "/v1/webhooks",
            &key,
            json!({"url": "http://example.com/h", "events": ["message.created"]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        body["message"].as_str().unwrap().contains("https"),
        "{body}"
    );

    // A webhook stored while loopback was allowed (as a name that later resolves to loopback
    // would be): an instance without the flag refuses the address when it connects.
    let receiver = Receiver::start(Mode::Status(200)).await;
    let (id, _) = {
        let mut lax = strict.clone();
        lax.webhooks.allow_private_networks = true;
        let mut registrar = TestApp::spawn_config(db.clone(), lax).await;
        let registered = webhook(
            &registrar,
            &key,
            &receiver.url.replace("127.0.0.1", "localhost"),
            &["message.created"],
        )
        .await;
        registrar
            .shutdown_within(Duration::from_secs(10), "the registrar")
            .await;
        registered
    };
    let channel = app.channel(&key, "guarded").await;
    app.message(&key, channel, "never sent").await;
    let path = format!("/v1/webhooks/{id}/deliveries");
    let log = wait_for(Duration::from_secs(10), "a refused attempt", || async {
        let (_, body) = app.get(&path, &key).await;
        (body["deliveries"][0]["attempts"].as_i64() >= Some(1)).then_some(body)
    })
    .await;
    let error = log["deliveries"][0]["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("no public address"), "{error}");
    assert!(receiver.all().is_empty(), "nothing reached the receiver");
}

#[sqlx::test]
async fn two_instances_never_send_one_attempt_twice(db: PgPool) {
    let a = TestApp::spawn_instance(db.clone(), config()).await;
    let b = TestApp::spawn_instance(db.clone(), config()).await;
    let key = admin_key(&a).await;
    let receiver = Receiver::start(Mode::Status(200)).await;
    webhook(&a, &key, &receiver.url, &["message.created"]).await;
    let channels = [a.channel(&key, "ex").await, a.channel(&key, "why").await];
    let contents: Vec<String> = (0..200).map(|n| format!("m{n}")).collect();
    let mut posts = Vec::new();
    for (n, content) in contents.iter().enumerate() {
        let (server, channel) = if n % 2 == 0 {
            (&a, channels[0])
        } else {
            (&b, channels[1])
        };
        posts.push(server.message(&key, channel, content));
    }
    futures::future::join_all(posts).await;
    receiver.wait(200, "200 deliveries").await;
    // Every attempt is recorded once the queue is empty: the instances' counts of delivered
    // attempts add up to the events, so neither sent one that the other sent too.
    let value = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap())
    };
    eventually(Duration::from_secs(10), "the queue drains", || async {
        value(&a.metrics_text().await, "channeld_webhook_queue_depth") == Some(0.0)
    })
    .await;
    let delivered = r#"channeld_webhook_attempts_total{result="delivered"}"#;
    let by_a = value(&a.metrics_text().await, delivered).unwrap();
    let by_b = value(&b.metrics_text().await, delivered).unwrap();
    assert_eq!(by_a + by_b, 200.0, "a sent {by_a}, b sent {by_b}");
    let received = receiver.all();
    let ids: HashSet<&str> = received.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 200);
    assert_eq!(received.len(), 200, "each event was sent once");
}

/// Webhooks to loopback, with a short timeout, poll and retry schedule.
const WEBHOOK_FLAGS: &[&str] = &[
    "--webhook-allow-private-networks",
    "--webhook-allow-http",
    "--webhook-timeout",
    "1s",
    "--webhook-poll-interval",
    "200ms",
    "--webhook-retry-schedule",
    "300ms,600ms,1s,1s,1s",
];

#[sqlx::test]
async fn kill_9_between_a_commit_and_its_delivery_loses_nothing(db: PgPool) {
    let config = config();
    // This instance only registers the webhook and makes the key; the processes deliver.
    let mut setup = TestApp::spawn_config(db.clone(), config).await;
    let key = admin_key(&setup).await;
    let receiver = Receiver::start(Mode::Hold).await;
    webhook(&setup, &key, &receiver.url, &["message.created"]).await;
    let channel = setup.channel(&key, "crash").await;
    setup
        .shutdown_within(Duration::from_secs(10), "the set-up server")
        .await;

    let doomed = common::process(&db, WEBHOOK_FLAGS).await;
    let http = reqwest::Client::new();
    for n in 0..5 {
        let response = http
            .post(format!("{}/v1/channels/{channel}/messages", doomed.base))
            .bearer_auth(&key)
            .json(&json!({"content": format!("m{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    // Committed, and the first delivery is in flight (held by the receiver): kill -9.
    receiver
        .wait(1, "the first attempt reaches the receiver")
        .await;
    drop(doomed);

    receiver.set(Mode::Status(200));
    let _heir = common::process(&db, WEBHOOK_FLAGS).await;
    eventually(
        Duration::from_secs(20),
        "all five arrive after the restart",
        || async {
            let ids: HashSet<String> = receiver.all().into_iter().map(|r| r.id).collect();
            ids.len() == 5
        },
    )
    .await;
    let mut contents = Vec::new();
    for r in receiver.all() {
        let content = r.json["data"]["content"].as_str().unwrap().to_owned();
        if !contents.contains(&content) {
            contents.push(content);
        }
    }
    assert_eq!(
        contents,
        ["m0", "m1", "m2", "m3", "m4"],
        "in order, at least once"
    );
}

#[sqlx::test]
async fn with_redis_a_presence_change_seen_by_two_instances_is_one_event(db: PgPool) {
    let prefix = common::cluster::fresh_prefix();
    let redis = common::cluster::redis_url();
    let instance = || {
        let mut config = common::cluster::cluster_config(&prefix, &redis, Duration::from_secs(2));
        let webhooks = self::config().webhooks;
        config.webhooks = webhooks;
        config.auth_failures_per_minute = 1_000_000;
        config
    };
    let a = TestApp::spawn_instance(db.clone(), instance()).await;
    let b = TestApp::spawn_instance(db.clone(), instance()).await;
    let key = admin_key(&a).await;
    let receiver = Receiver::start(Mode::Status(200)).await;
    webhook(
        &a,
        &key,
        &receiver.url,
        &["presence.joined", "presence.left"],
    )
    .await;
    // b learns of the webhook at its next look at the table.
    let app_id = channeld::apps::DEFAULT_APP;
    eventually(
        Duration::from_secs(5),
        "b knows the app has a webhook",
        || async { b.state.webhooks.knows_app(app_id) },
    )
    .await;
    // Both instances serve the channel (each has a subscriber), so both observe every change.
    let realtime = a.key(&[Scope::Subscribe, Scope::Presence]).await;
    let mut on_a = a.peer(&realtime, "resident-a", json!({})).await;
    on_a.subscribe("hall").await;
    let mut on_b = b.peer(&realtime, "resident-b", json!({})).await;
    on_b.subscribe("hall").await;
    receiver.wait(2, "the residents' joins").await;

    let mut visitor = a.peer(&realtime, "visitor", json!({})).await;
    visitor.subscribe("hall").await;
    // b hears of the visitor through Redis: its resident is told (each `recv` waits at most 5 s).
    loop {
        let frame = on_b.recv().await;
        let joined = frame["joined"].as_array().cloned().unwrap_or_default();
        if frame["type"] == "presence" && joined.iter().any(|p| p["peerId"] == "visitor") {
            break;
        }
    }
    drop(visitor);
    let for_visitor = |all: &[Received], kind: &str| {
        all.iter()
            .filter(|r| r.json["type"] == kind && r.json["data"]["peerId"] == "visitor")
            .count()
    };
    eventually(Duration::from_secs(10), "the visitor's leave", || async {
        for_visitor(&receiver.all(), "presence.left") == 1
    })
    .await;
    // Each instance records changes in the order it observes them, and b observed the join
    // before the visitor left: both have recorded (or found recorded) the join by now. The queue
    // is empty once every recorded event was sent.
    eventually(Duration::from_secs(10), "the queue drains", || async {
        a.metrics_text()
            .await
            .contains("channeld_webhook_queue_depth 0\n")
    })
    .await;
    let all = receiver.all();
    assert_eq!(for_visitor(&all, "presence.joined"), 1, "one join event");
    assert_eq!(for_visitor(&all, "presence.left"), 1, "one leave event");
    drop(on_a);
    drop(on_b);
}
