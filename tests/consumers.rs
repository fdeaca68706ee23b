//! Consumer groups (SPEC §8) against real servers and PostgreSQL: exclusive leases under
//! concurrent claimers on two instances, lease expiry and `lost`, nack delays, extend, dead
//! letters and retry, waiting claims woken from another instance, `kill -9` of a real `channeld`
//! process in the middle of a run, the database's connections cut, and a PostgreSQL of the
//! test's own crashed (`pg_ctl stop -m immediate`) and started again mid-run.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use common::{DbProxy, TestApp, assert_error, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::time::Instant;

fn group_path(channel: i64, name: &str) -> String {
    format!("/v1/channels/{channel}/consumers/{name}")
}

async fn create_group(app: &TestApp, key: &str, channel: i64, body: Value) -> Value {
    let (status, created) = app
        .post(&format!("/v1/channels/{channel}/consumers"), key, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["consumer"].clone()
}

async fn claim(app: &TestApp, key: &str, channel: i64, body: Value) -> Vec<Value> {
    let (status, claimed) = app
        .post(&format!("{}/claim", group_path(channel, "work")), key, body)
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    claimed["deliveries"]
        .as_array()
        .expect("deliveries")
        .clone()
}

async fn settle(app: &TestApp, key: &str, channel: i64, verb: &str, body: Value) -> Value {
    let (status, answer) = app
        .post(
            &format!("{}/{verb}", group_path(channel, "work")),
            key,
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// `verb` (`ack`, `nack`, `extend`) on every lease of a claim's deliveries.
async fn settle_leases(
    app: &TestApp,
    key: &str,
    channel: i64,
    verb: &str,
    deliveries: &[Value],
) -> Value {
    let body = json!({"delivery_ids": delivery_ids(deliveries)});
    settle(app, key, channel, verb, body).await
}

async fn show(app: &TestApp, key: &str, channel: i64) -> Value {
    let (status, body) = app.get(&group_path(channel, "work"), key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["consumer"].clone()
}

fn ids(deliveries: &[Value]) -> Vec<i64> {
    deliveries
        .iter()
        .map(|d| d["message"]["id"].as_i64().expect("message id"))
        .collect()
}

fn delivery_ids(deliveries: &[Value]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d["delivery_id"].as_str().expect("delivery id").to_owned())
        .collect()
}

fn expires(delivery: &Value) -> DateTime<Utc> {
    delivery["lease_expires_at"]
        .as_str()
        .expect("lease_expires_at")
        .parse()
        .expect("a timestamp")
}

#[sqlx::test]
async fn a_group_hands_out_messages_in_order_once_and_counts_its_work(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    let before = app.message(&key, channel, "posted before the group").await;

    let group = create_group(&app, &key, channel, json!({"name": "work"})).await;
    assert_eq!(group["start"], "latest");
    assert_eq!(group["ack_wait"], "30s");
    assert_eq!(group["max_deliveries"], 5);
    assert_eq!(group["pending"], 0);
    assert_eq!(group["oldest_pending_age_ms"], Value::Null);
    let (status, body) = app
        .post(
            &format!("/v1/channels/{channel}/consumers"),
            &key,
            json!({"name": "work"}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "consumer_exists");

    let mut posted = Vec::new();
    for n in 0..5 {
        posted.push(app.message(&key, channel, &format!("task {n}")).await);
    }
    let shown = show(&app, &key, channel).await;
    assert_eq!(shown["pending"], 5, "{shown}");
    assert!(shown["oldest_pending_age_ms"].as_i64().is_some(), "{shown}");

    // In id order, each to one member; the message from before `latest` is not the group's.
    let first = claim(&app, &key, channel, json!({"member": "a", "max": 3})).await;
    let second = claim(&app, &key, channel, json!({"member": "b", "max": 10})).await;
    assert_eq!(ids(&first), posted[..3]);
    assert_eq!(ids(&second), posted[3..]);
    assert!(!ids(&first).contains(&before));
    assert!(first.iter().all(|d| d["attempt"] == 1));
    assert!(
        claim(&app, &key, channel, json!({"member": "c"}))
            .await
            .is_empty()
    );
    let shown = show(&app, &key, channel).await;
    assert_eq!(
        (shown["pending"].clone(), shown["in_flight"].clone()),
        (json!(0), json!(5))
    );
    let members: BTreeSet<&str> = shown["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["member"].as_str().expect("member"))
        .collect();
    assert_eq!(members, BTreeSet::from(["a", "b", "c"]));

    let mut all = delivery_ids(&first);
    all.extend(delivery_ids(&second));
    let acked = settle(&app, &key, channel, "ack", json!({"delivery_ids": all})).await;
    assert_eq!(acked, json!({"acked": 5, "lost": []}));
    // An ack given twice is lost the second time: nothing is acked twice.
    let again = settle(
        &app,
        &key,
        channel,
        "ack",
        json!({"delivery_ids": [all[0]]}),
    )
    .await;
    assert_eq!(again, json!({"acked": 0, "lost": [all[0]]}));
    let shown = show(&app, &key, channel).await;
    assert_eq!(
        (
            &shown["acked"],
            &shown["in_flight"],
            &shown["pending"],
            &shown["dead"]
        ),
        (&json!(5), &json!(0), &json!(0), &json!(0))
    );
    assert!(
        claim(&app, &key, channel, json!({"member": "a", "max": 100}))
            .await
            .is_empty()
    );

    // `earliest` takes the whole history; a message id, what follows it.
    let earliest = create_group(
        &app,
        &key,
        channel,
        json!({"name": "replay", "start": "earliest"}),
    )
    .await;
    assert_eq!(earliest["pending"], 6);
    // A start past the channel's newest message starts at it.
    let ahead = create_group(
        &app,
        &key,
        channel,
        json!({"name": "ahead", "start": 999_999_999}),
    )
    .await;
    assert_eq!(ahead["pending"], 0, "{ahead}");
    let from = create_group(
        &app,
        &key,
        channel,
        json!({"name": "tail", "start": posted[2]}),
    )
    .await;
    assert_eq!(from["pending"], 2);
    assert_eq!(from["start"], posted[2]);
    // An id written as an integral number (JSON Schema's integer in either spelling) is the same id.
    let spelled = create_group(
        &app,
        &key,
        channel,
        json!({"name": "tail-spelled", "start": posted[2] as f64}),
    )
    .await;
    assert_eq!(spelled["pending"], 2, "{spelled}");
    assert_eq!(spelled["start"], posted[2]);
    let (status, listed) = app
        .get(&format!("/v1/channels/{channel}/consumers"), &key)
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = listed["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["ahead", "replay", "tail", "tail-spelled", "work"]);

    let (status, _) = common::call(app.request(
        reqwest::Method::DELETE,
        &group_path(channel, "replay"),
        &key,
    ))
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get(&group_path(channel, "replay"), &key).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // The group that started past the newest message takes what comes next, and counts it.
    app.message(&key, channel, "next").await;
    let (_, ahead) = app.get(&group_path(channel, "ahead"), &key).await;
    assert_eq!(ahead["consumer"]["pending"], 1, "{ahead}");
}

#[sqlx::test]
async fn bad_input_is_refused_with_the_field_named(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let reader = app.key(&[channeld::auth::Scope::ChannelsRead]).await;
    let channel = app.channel(&key, "jobs").await;
    let path = format!("/v1/channels/{channel}/consumers");
    for (body, field) in [
        (json!({"name": "Work"}), "name"),
        (json!({"name": "w", "ack_wait": "500ms"}), "ack_wait"),
        (json!({"name": "w", "ack_wait": "13h"}), "ack_wait"),
        (json!({"name": "w", "max_deliveries": 0}), "max_deliveries"),
        (json!({"name": "w", "start": "newest"}), "start"),
        (json!({"name": "w", "start": -1}), "start"),
        (json!({"name": "w", "start": 1.5}), "start"),
        (json!({"name": "w", "mentions": ""}), "mentions"),
    ] {
        let (status, answer) = app.post(&path, &key, body.clone()).await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(answer["details"][field].is_array(), "{body}: {answer}");
    }
    let (status, answer) = app.post(&path, &reader, json!({"name": "w"})).await;
    assert_error(status, &answer, StatusCode::FORBIDDEN, "insufficient_scope");
    let (status, answer) = app
        .post("/v1/channels/999999/consumers", &key, json!({"name": "w"}))
        .await;
    assert_error(status, &answer, StatusCode::NOT_FOUND, "not_found");

    create_group(&app, &key, channel, json!({"name": "work"})).await;
    for (verb, body, field) in [
        ("claim", json!({"member": ""}), "member"),
        ("claim", json!({"member": "a", "max": 101}), "max"),
        ("claim", json!({"member": "a", "wait": 31}), "wait"),
        ("ack", json!({"delivery_ids": []}), "delivery_ids"),
        ("ack", json!({"delivery_ids": ["nope"]}), "delivery_ids"),
        ("ack", json!({"delivery_ids": ["042.17"]}), "delivery_ids"),
        (
            "nack",
            json!({"delivery_ids": ["1.1"], "delay": "1y"}),
            "delay",
        ),
    ] {
        let (status, answer) = app
            .post(
                &format!("{}/{verb}", group_path(channel, "work")),
                &key,
                body.clone(),
            )
            .await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            answer["details"][field].is_array(),
            "{verb} {body}: {answer}"
        );
    }
    let (status, answer) = app
        .post(
            &format!("{}/claim", group_path(channel, "nobody")),
            &key,
            json!({"member": "a"}),
        )
        .await;
    assert_error(status, &answer, StatusCode::NOT_FOUND, "not_found");
    // A well-formed id that names no lease is lost, not an error.
    let lost = settle(&app, &key, channel, "ack", json!({"delivery_ids": ["1.1"]})).await;
    assert_eq!(lost, json!({"acked": 0, "lost": ["1.1"]}));
}

#[sqlx::test]
async fn an_expired_lease_goes_to_another_member_and_the_late_ack_is_lost(db: PgPool) {
    // Only the lease's expiry can wake the waiting claim within the test's bound.
    let app = TestApp::spawn_config(db, slow_recheck()).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    create_group(
        &app,
        &key,
        channel,
        json!({"name": "work", "ack_wait": "1s"}),
    )
    .await;
    let id = app.message(&key, channel, "slow task").await;

    let held = claim(&app, &key, channel, json!({"member": "slow"})).await;
    assert_eq!(ids(&held), [id]);
    // A waiting claim is handed the message as soon as the lease expires, as attempt 2.
    let taken = claim(&app, &key, channel, json!({"member": "fast", "wait": 10})).await;
    let after_expiry = Utc::now() - expires(&held[0]);
    assert_eq!(ids(&taken), [id]);
    assert_eq!(taken[0]["attempt"], 2);
    assert!(
        after_expiry >= chrono::Duration::zero(),
        "handed out before the lease expired"
    );
    assert!(
        after_expiry < chrono::Duration::seconds(1),
        "handed out {after_expiry} after the lease expired"
    );

    let late = settle_leases(&app, &key, channel, "ack", &held).await;
    assert_eq!(late, json!({"acked": 0, "lost": delivery_ids(&held)}));
    let extend = settle_leases(&app, &key, channel, "extend", &held).await;
    assert_eq!(extend, json!({"extended": 0, "lost": delivery_ids(&held)}));
    let acked = settle_leases(&app, &key, channel, "ack", &taken).await;
    assert_eq!(acked, json!({"acked": 1, "lost": []}));
    assert_eq!(show(&app, &key, channel).await["acked"], 1);
}

#[sqlx::test]
async fn extend_keeps_a_lease_past_its_first_expiry(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    create_group(
        &app,
        &key,
        channel,
        json!({"name": "work", "ack_wait": "3s"}),
    )
    .await;
    app.message(&key, channel, "long task").await;
    let held = claim(&app, &key, channel, json!({"member": "worker"})).await;
    let first_expiry = expires(&held[0]);
    // Halfway through the lease, renewed for another 3 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let extended = settle_leases(&app, &key, channel, "extend", &held).await;
    assert_eq!(extended, json!({"extended": 1, "lost": []}));
    // Past the first expiry, the message is still held: nobody else gets it.
    let past =
        (first_expiry - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    tokio::time::sleep(past).await;
    assert!(
        claim(&app, &key, channel, json!({"member": "other"}))
            .await
            .is_empty()
    );
    assert_eq!(show(&app, &key, channel).await["in_flight"], 1);
    let acked = settle_leases(&app, &key, channel, "ack", &held).await;
    assert_eq!(acked, json!({"acked": 1, "lost": []}));
}

#[sqlx::test]
async fn a_nack_with_a_delay_holds_the_message_back_until_then(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    create_group(&app, &key, channel, json!({"name": "work"})).await;
    let id = app.message(&key, channel, "flaky task").await;
    let held = claim(&app, &key, channel, json!({"member": "a"})).await;

    let nacked_at = Utc::now();
    let nacked = settle(
        &app,
        &key,
        channel,
        "nack",
        json!({"delivery_ids": delivery_ids(&held), "delay": "1500ms"}),
    )
    .await;
    assert_eq!(nacked, json!({"nacked": 1, "lost": []}));
    assert!(
        claim(&app, &key, channel, json!({"member": "b"}))
            .await
            .is_empty(),
        "claimable before its delay"
    );
    assert_eq!(show(&app, &key, channel).await["pending"], 1);
    // A waiting claim gets it once the delay has passed.
    let again = claim(&app, &key, channel, json!({"member": "b", "wait": 10})).await;
    assert_eq!(ids(&again), [id]);
    assert_eq!(again[0]["attempt"], 2);
    let waited = Utc::now() - nacked_at;
    assert!(
        waited >= chrono::Duration::milliseconds(1400),
        "claimed after {waited}"
    );
    // A nack without a delay makes it claimable at once.
    settle_leases(&app, &key, channel, "nack", &again).await;
    assert_eq!(
        ids(&claim(&app, &key, channel, json!({"member": "c"})).await),
        [id]
    );
}

#[sqlx::test]
async fn a_message_that_keeps_failing_is_dead_listed_and_retryable(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    create_group(
        &app,
        &key,
        channel,
        json!({"name": "work", "max_deliveries": 2, "ack_wait": "1s"}),
    )
    .await;
    let poison = app.message(&key, channel, "poison").await;
    let fine = app.message(&key, channel, "fine").await;

    // Attempt 1 is nacked; attempt 2's lease expires: that was the last one.
    let first = claim(&app, &key, channel, json!({"member": "a"})).await;
    assert_eq!(ids(&first), [poison]);
    settle_leases(&app, &key, channel, "nack", &first).await;
    let second = claim(&app, &key, channel, json!({"member": "b"})).await;
    assert_eq!(
        (ids(&second), second[0]["attempt"].clone()),
        (vec![poison], json!(2))
    );
    // Meanwhile the next claim gets the next message.
    let next = claim(
        &app,
        &key,
        channel,
        json!({"member": "c", "max": 5, "wait": 10}),
    )
    .await;
    assert_eq!(ids(&next), [fine]);
    settle_leases(&app, &key, channel, "ack", &next).await;
    // Once attempt 2's lease has expired, the next claim sets the message aside.
    let expiry = (expires(&second[0]) - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(expiry + Duration::from_millis(50)).await;
    assert!(
        claim(&app, &key, channel, json!({"member": "a"}))
            .await
            .is_empty()
    );
    let settled: bool =
        sqlx::query_scalar("SELECT dead FROM consumer_deliveries WHERE message_id = $1")
            .bind(poison)
            .fetch_one(&db)
            .await
            .expect("the delivery");
    assert!(settled, "the claim set the expired last attempt aside");
    let (_, body) = app
        .get(&format!("{}/dead", group_path(channel, "work")), &key)
        .await;
    let dead = body["dead"].as_array().cloned().unwrap_or_default();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["message_id"], poison);
    assert_eq!(dead[0]["attempts"], 2);
    assert_eq!(dead[0]["last_member"], "b");
    assert_eq!(dead[0]["message"]["content"], "poison");
    let shown = show(&app, &key, channel).await;
    assert_eq!(
        (&shown["dead"], &shown["pending"]),
        (&json!(1), &json!(0)),
        "{shown}"
    );
    assert!(
        claim(&app, &key, channel, json!({"member": "a"}))
            .await
            .is_empty()
    );
    assert!(
        app.metrics_text().await.contains(&format!(
            "channeld_consumer_dead{{app=\"default\",channel_id=\"{channel}\",consumer=\"work\"}} 1"
        )),
        "the dead letter is in /metrics"
    );

    // Retried by hand, it is a first attempt again.
    let retry = format!("{}/dead/{poison}/retry", group_path(channel, "work"));
    let (status, body) = app.post(&retry, &key, json!({})).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"message_id": poison}))
    );
    let retried = claim(&app, &key, channel, json!({"member": "d"})).await;
    assert_eq!(
        (ids(&retried), retried[0]["attempt"].clone()),
        (vec![poison], json!(1))
    );
    let (status, body) = app.post(&retry, &key, json!({})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(show(&app, &key, channel).await["dead"], 0);
}

#[sqlx::test]
async fn a_group_filtered_by_mentions_takes_only_those_messages(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    create_group(
        &app,
        &key,
        channel,
        json!({"name": "work", "mentions": "reviewer"}),
    )
    .await;
    let path = format!("/v1/channels/{channel}/messages");
    let mut wanted = Vec::new();
    for n in 0..6 {
        let mentions = if n % 2 == 0 {
            json!(["reviewer"])
        } else {
            json!(["builder"])
        };
        let (_, body) = app
            .post(
                &path,
                &key,
                json!({"content": format!("m{n}"), "mentions": mentions}),
            )
            .await;
        if n % 2 == 0 {
            wanted.push(body["message"]["id"].as_i64().expect("id"));
        }
    }
    assert_eq!(show(&app, &key, channel).await["pending"], 3);
    let claimed = claim(&app, &key, channel, json!({"member": "r", "max": 10})).await;
    assert_eq!(ids(&claimed), wanted);
}

/// A claim of `member` that waits up to 20 s, started in the background; returns once the
/// server counts it as waiting. The task answers when it was answered, and the answer.
async fn waiting_claim(
    app: &TestApp,
    key: &str,
    channel: i64,
    member: &str,
) -> tokio::task::JoinHandle<(Instant, Value)> {
    let (http, base, key) = (app.http.clone(), app.base.clone(), key.to_owned());
    let body = json!({"member": member, "wait": 20});
    let waiter = tokio::spawn(async move {
        let response = http
            .post(format!("{base}/v1/channels/{channel}/consumers/work/claim"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("claim answers");
        (
            Instant::now(),
            response.json::<Value>().await.expect("json"),
        )
    });
    eventually(Duration::from_secs(10), "the claim is waiting", || async {
        app.metrics_text()
            .await
            .contains("channeld_message_waiters 1")
    })
    .await;
    waiter
}

#[sqlx::test]
async fn a_waiting_claim_is_woken_by_a_post_on_another_instance(db: PgPool) {
    // Nothing but the post can wake the claim within the test's bound.
    let a = TestApp::spawn_config(db.clone(), slow_recheck()).await;
    let b = TestApp::spawn_instance(db.clone(), slow_recheck()).await;
    let key = a.writer().await;
    let channel = a.channel(&key, "jobs").await;
    create_group(&a, &key, channel, json!({"name": "work"})).await;

    let waiter = waiting_claim(&a, &key, channel, "waiter").await;
    let id = b.message(&key, channel, "for whoever waits").await;
    let posted = Instant::now();
    let (answered, body) = waiter.await.expect("waiter");
    assert_eq!(body["deliveries"][0]["message"]["id"], id, "{body}");
    let took = answered.saturating_duration_since(posted);
    assert!(
        took < Duration::from_secs(1),
        "woken {took:?} after the post"
    );
}

/// Test settings in which a waiting claim looks again on its own only every 30 s.
fn slow_recheck() -> channeld::config::Config {
    let mut config = common::test_config();
    config.realtime.consumer_recheck_interval = Duration::from_secs(30);
    config
}

#[sqlx::test]
async fn a_nack_wakes_a_waiting_claim_at_once(db: PgPool) {
    let app = TestApp::spawn_config(db, slow_recheck()).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    create_group(&app, &key, channel, json!({"name": "work"})).await;
    let id = app.message(&key, channel, "handed back").await;
    let held = claim(&app, &key, channel, json!({"member": "a"})).await;
    let waiter = waiting_claim(&app, &key, channel, "b").await;
    let body = json!({"delivery_ids": delivery_ids(&held)});
    settle(&app, &key, channel, "nack", body).await;
    let nacked = Instant::now();
    let (answered, body) = waiter.await.expect("waiter");
    assert_eq!(body["deliveries"][0]["message"]["id"], id, "{body}");
    let took = answered.saturating_duration_since(nacked);
    assert!(
        took < Duration::from_secs(1),
        "woken {took:?} after the nack"
    );
}

/// What the members of a run saw: every lease claimed, and every ack the server confirmed.
#[derive(Default)]
struct Ledger {
    /// Message id → leases handed out for it: (lease, attempt, when it expires).
    claimed: BTreeMap<i64, Vec<(i64, i64, DateTime<Utc>)>>,
    /// Message id → the lease whose ack was confirmed (at most one may be).
    acked: BTreeMap<i64, Vec<i64>>,
    /// Requests that failed (refused, cut off, 5xx).
    failures: usize,
}

/// Writes the leases of a claim's answer into the ledger.
fn record_claims(ledger: &Mutex<Ledger>, deliveries: &[Value]) {
    let mut ledger = ledger.lock().expect("ledger");
    for delivery in deliveries {
        let (message, lease) = lease_of(delivery["delivery_id"].as_str().expect("id"));
        let attempt = delivery["attempt"].as_i64().expect("attempt");
        ledger
            .claimed
            .entry(message)
            .or_default()
            .push((lease, attempt, expires(delivery)));
    }
}

fn lease_of(delivery_id: &str) -> (i64, i64) {
    let (message, lease) = delivery_id.split_once('.').expect("message.lease");
    (message.parse().expect("id"), lease.parse().expect("lease"))
}

/// The JSON body of an answered 200, or `None` (counted as a failure, after a short pause).
async fn answered(
    ledger: &Mutex<Ledger>,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Option<Value> {
    let body = match sent {
        Ok(response) if response.status() == StatusCode::OK => response.json::<Value>().await.ok(),
        _ => None,
    };
    if body.is_none() {
        ledger.lock().expect("ledger").failures += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    body
}

/// A member: claims up to 10 at a time from the servers of `bases` in turn, acks what it got
/// through the next one, and stops once `stop` is set. Requests that fail (a killed server, a
/// database away) are counted and tried again on the next server.
async fn member(
    name: String,
    bases: Arc<Mutex<Vec<String>>>,
    key: String,
    channel: i64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    channeld::webhooks::send::install_tls_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut turn = name.len();
    let base = |turn: usize| {
        let bases = bases.lock().expect("bases");
        bases[turn % bases.len()].clone()
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        turn += 1;
        let url = format!("{}/v1/channels/{channel}/consumers/work", base(turn));
        let claimed = http
            .post(format!("{url}/claim"))
            .bearer_auth(&key)
            .json(&json!({"member": name, "max": 10, "wait": 1}))
            .send()
            .await;
        let Some(body) = answered(&ledger, claimed).await else {
            continue;
        };
        let deliveries = body["deliveries"].as_array().cloned().unwrap_or_default();
        if deliveries.is_empty() {
            continue;
        }
        record_claims(&ledger, &deliveries);
        let given = delivery_ids(&deliveries);
        // Acked on the next server in turn: any instance may settle any lease.
        let url = format!("{}/v1/channels/{channel}/consumers/work", base(turn + 1));
        let sent = http
            .post(format!("{url}/ack"))
            .bearer_auth(&key)
            .json(&json!({"delivery_ids": given}))
            .send()
            .await;
        let Some(body) = answered(&ledger, sent).await else {
            continue;
        };
        let lost: BTreeSet<&str> = body["lost"]
            .as_array()
            .expect("lost")
            .iter()
            .map(|id| id.as_str().expect("id"))
            .collect();
        let mut ledger = ledger.lock().expect("ledger");
        for id in given.iter().filter(|id| !lost.contains(id.as_str())) {
            let (message, lease) = lease_of(id);
            ledger.acked.entry(message).or_default().push(lease);
        }
    }
}

/// Runs 8 members over `bases` until the group has acked `total` messages (as the database
/// says), calling `during` once the run is under way; returns the ledger.
async fn run_members<F, Fut>(
    db: &PgPool,
    bases: Arc<Mutex<Vec<String>>>,
    key: &str,
    channel: i64,
    total: i64,
    during: F,
) -> Ledger
where
    F: FnOnce(Arc<Mutex<Ledger>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let members: Vec<_> = (0..8)
        .map(|n| {
            tokio::spawn(member(
                format!("member-{n}"),
                bases.clone(),
                key.to_owned(),
                channel,
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // Under way: some messages acked, most not yet.
    eventually(
        Duration::from_secs(30),
        "the members have begun",
        || async { !ledger.lock().expect("ledger").acked.is_empty() },
    )
    .await;
    during(ledger.clone()).await;
    eventually(
        Duration::from_secs(60),
        "every message is acked",
        || async { acked_in_database(db, channel).await == total },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for member in members {
        member.await.expect("member");
    }
    Arc::into_inner(ledger)
        .expect("members are done")
        .into_inner()
        .expect("ledger")
}

async fn acked_in_database(db: &PgPool, channel: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(n.acked), 0)::bigint FROM consumer_counts n \
         JOIN consumers c ON c.id = n.consumer_id WHERE c.channel_id = $1",
    )
    .bind(channel)
    .fetch_one(db)
    .await
    .expect("acked")
}

/// What every run must show: each message acked exactly once, by its newest lease (an acked
/// message is never handed out again); no lease of a message began before the previous one
/// expired (no run nacks); nothing left in flight or dead.
async fn assert_exactly_once(
    db: &PgPool,
    ledger: &Ledger,
    posted: &[i64],
    channel: i64,
    ack_wait: chrono::Duration,
) {
    let posted: BTreeSet<i64> = posted.iter().copied().collect();
    let claimed: BTreeSet<i64> = ledger.claimed.keys().copied().collect();
    assert_eq!(claimed, posted, "every message was handed out");
    for (message, acks) in &ledger.acked {
        assert_eq!(
            acks.len(),
            1,
            "message {message} acked {} times",
            acks.len()
        );
        let newest = ledger.claimed[message].iter().map(|claim| claim.0).max();
        assert_eq!(
            newest,
            Some(acks[0]),
            "message {message} was handed out again after its ack"
        );
    }
    for (message, leases) in &ledger.claimed {
        let mut leases = leases.clone();
        leases.sort();
        for pair in leases.windows(2) {
            let ((_, _, held_until), (_, attempt, next_until)) = (pair[0], pair[1]);
            assert!(
                next_until - ack_wait >= held_until,
                "message {message}: attempt {attempt} was leased before the previous lease expired"
            );
        }
    }
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM consumer_deliveries d JOIN consumers c ON c.id = d.consumer_id \
         WHERE c.channel_id = $1",
    )
    .bind(channel)
    .fetch_one(db)
    .await
    .expect("left");
    assert_eq!(left, 0, "nothing in flight, pending or dead");
    assert_eq!(acked_in_database(db, channel).await, posted.len() as i64);
}

async fn post_many(app: &TestApp, key: &str, channel: i64, count: usize) -> Vec<i64> {
    let mut posted = Vec::with_capacity(count);
    for n in 0..count {
        posted.push(app.message(key, channel, &format!("task {n}")).await);
    }
    posted
}

#[sqlx::test]
async fn eight_members_on_two_instances_ack_every_message_exactly_once(db: PgPool) {
    let a = TestApp::spawn(db.clone()).await;
    let b = TestApp::spawn_instance(db.clone(), common::test_config()).await;
    let key = a.writer().await;
    let channel = a.channel(&key, "jobs").await;
    let group = json!({"name": "work", "start": "earliest", "ack_wait": "5s"});
    create_group(&a, &key, channel, group).await;
    let mut posted = post_many(&a, &key, channel, 300).await;
    let bases = Arc::new(Mutex::new(vec![a.base.clone(), b.base.clone()]));
    let more = Arc::new(Mutex::new(Vec::new()));
    // Posting goes on while the members work.
    let ledger = run_members(&db, bases, &key, channel, 400, |_| {
        let (b, key, more) = (&b, key.clone(), more.clone());
        async move {
            let ids = post_many(b, &key, channel, 100).await;
            more.lock().expect("more").extend(ids);
        }
    })
    .await;
    posted.extend(more.lock().expect("more").iter().copied());
    assert_exactly_once(&db, &ledger, &posted, channel, chrono::Duration::seconds(5)).await;
    let members = show(&a, &key, channel).await["members"]
        .as_array()
        .expect("members")
        .len();
    assert_eq!(members, 8);
}

#[sqlx::test]
async fn killing_a_server_mid_run_loses_no_ack_and_redelivers_nothing_acked(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    let group = json!({"name": "work", "start": "earliest", "ack_wait": "1s"});
    create_group(&app, &key, channel, group).await;
    let posted = post_many(&app, &key, channel, 400).await;
    let mut doomed = common::process(&db, &[]).await;
    let survivor = common::process(&db, &[]).await;
    let bases = Arc::new(Mutex::new(vec![doomed.base.clone(), survivor.base.clone()]));
    let total = posted.len() as i64;
    let ledger = run_members(&db, bases.clone(), &key, channel, total, |ledger| {
        let (doomed, app, key) = (&mut doomed, &app, key.clone());
        async move {
            // A member dies holding 10 leases: others get them once the leases expire.
            let path = format!("{}/claim", group_path(channel, "work"));
            let (status, body) = app
                .post(&path, &key, json!({"member": "crashing", "max": 10}))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let held = body["deliveries"].as_array().expect("deliveries");
            assert_eq!(held.len(), 10, "{body}");
            record_claims(&ledger, held);
            // kill -9 of a server that members are using: their requests to it fail.
            let failures = ledger.lock().expect("ledger").failures;
            doomed.child.kill().expect("kill -9");
            doomed.child.wait().expect("reaped");
            eventually(
                Duration::from_secs(10),
                "members see the server die",
                || async { ledger.lock().expect("ledger").failures > failures },
            )
            .await;
            bases
                .lock()
                .expect("bases")
                .retain(|base| *base != doomed.base);
        }
    })
    .await;
    assert_exactly_once(&db, &ledger, &posted, channel, chrono::Duration::seconds(1)).await;
    let redelivered = ledger
        .claimed
        .values()
        .flatten()
        .filter(|(_, attempt, _)| *attempt > 1)
        .count();
    assert!(
        redelivered >= 10,
        "the dead member's leases were handed out again ({redelivered} redeliveries)"
    );
    drop(survivor);
}

#[sqlx::test]
async fn a_database_outage_mid_run_loses_no_ack_and_redelivers_nothing_acked(db: PgPool) {
    let options = (*db.connect_options()).clone();
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let proxy = DbProxy::start(target.parse().expect("tcp database address")).await;
    let server_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_lazy_with(options.host("127.0.0.1").port(proxy.addr.port()));
    let mut config = common::test_config();
    config.db_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_full(db.clone(), server_pool, config).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    let group = json!({"name": "work", "start": "earliest", "ack_wait": "1s"});
    create_group(&app, &key, channel, group).await;
    let posted = post_many(&app, &key, channel, 300).await;
    let bases = Arc::new(Mutex::new(vec![app.base.clone()]));
    let total = posted.len() as i64;
    let ledger = run_members(&db, bases, &key, channel, total, |_| async {
        // Every connection to PostgreSQL drops, as in a restart, and none is taken for a while.
        proxy.cut();
        eventually(
            Duration::from_secs(10),
            "the server answers 503",
            || async {
                let (status, _) = app.get(&group_path(channel, "work"), &key).await;
                status == StatusCode::SERVICE_UNAVAILABLE
            },
        )
        .await;
        proxy.restore();
    })
    .await;
    assert_exactly_once(&db, &ledger, &posted, channel, chrono::Duration::seconds(1)).await;
    assert!(ledger.failures > 0, "the members saw the outage");
}

#[sqlx::test]
async fn apps_do_not_see_each_others_groups(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    create_group(&app, &key, channel, json!({"name": "work"})).await;
    let other_app = app.app("other", Default::default()).await;
    let other = app
        .app_key(other_app, &[channeld::auth::Scope::ChannelsWrite], &[])
        .await;
    for (status, body) in [
        app.get(&group_path(channel, "work"), &other).await,
        app.get(&format!("/v1/channels/{channel}/consumers"), &other)
            .await,
        app.post(
            &format!("{}/claim", group_path(channel, "work")),
            &other,
            json!({"member": "x"}),
        )
        .await,
        app.post(
            &format!("/v1/channels/{channel}/consumers"),
            &other,
            json!({"name": "mine"}),
        )
        .await,
    ] {
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        assert_eq!(
            body["message"],
            format!("channel {channel} not found"),
            "{body}"
        );
    }
}

/// A PostgreSQL cluster of the test's own (initdb and pg_ctl, as the postgres user when the test
/// runs as root), which the test can crash and start again; removed when dropped.
struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|version| version.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("PostgreSQL's initdb (Debian's postgresql package; make test installs it)");
        let dir = std::env::temp_dir().join(format!("channeld-pg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("data directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let pg = Self { bin, dir, port };
        if Self::as_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&pg.dir)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        pg.run("initdb", &["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        pg.pg_ctl(&["start"]);
        pg
    }

    fn as_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0"))
    }

    /// Runs a PostgreSQL tool on the cluster's data directory; its output.
    fn tool(&self, tool: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
        let program = self.bin.join(tool);
        let mut command = if Self::as_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        };
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .output()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.tool(tool, args).expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, args: &[&str]) {
        let all = self.pg_ctl_args(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.run("pg_ctl", &all);
    }

    fn pg_ctl_args(&self, args: &[&str]) -> Vec<String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        let mut all: Vec<String> = vec!["-w".into(), "-o".into(), options, "-l".into(), log];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        all
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Never panics: it may run while a failed test unwinds.
        let args = self.pg_ctl_args(&["stop", "-m", "immediate"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = self.tool("pg_ctl", &args);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_postgresql_crash_and_restart_mid_run_loses_no_ack() {
    let postgres = PrivatePostgres::start();
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&postgres.url())
        .await
        .expect("the private PostgreSQL answers");
    channeld::db::MIGRATOR.run(&db).await.expect("migrations");
    let mut config = common::test_config();
    config.db_timeout = Duration::from_secs(2);
    let server_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&postgres.url())
        .expect("pool");
    let app = TestApp::spawn_full(db.clone(), server_pool, config).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "jobs").await;
    let group = json!({"name": "work", "start": "earliest", "ack_wait": "1s"});
    create_group(&app, &key, channel, group).await;
    let posted = post_many(&app, &key, channel, 300).await;
    let bases = Arc::new(Mutex::new(vec![app.base.clone()]));
    let total = posted.len() as i64;
    let ledger = run_members(&db, bases, &key, channel, total, |_| async {
        // PostgreSQL dies as in a crash (no checkpoint, in-flight transactions lost), and comes
        // back through crash recovery.
        postgres.pg_ctl(&["stop", "-m", "immediate"]);
        eventually(
            Duration::from_secs(10),
            "the server answers 503",
            || async {
                let (status, _) = app.get(&group_path(channel, "work"), &key).await;
                status == StatusCode::SERVICE_UNAVAILABLE
            },
        )
        .await;
        postgres.pg_ctl(&["start"]);
    })
    .await;
    assert_exactly_once(&db, &ledger, &posted, channel, chrono::Duration::seconds(1)).await;
    assert!(ledger.failures > 0, "the members saw PostgreSQL go away");
}
