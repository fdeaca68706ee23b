//! Bounded under abuse: what a hostile or broken client can do to one connection stays with that
//! connection.

mod common;

use std::time::{Duration, Instant};

use channeld::auth::Scope;
use common::{DbProxy, TestApp, assert_error, call};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

async fn realtime_key(app: &TestApp) -> String {
    app.key(&[
        Scope::Subscribe,
        Scope::Presence,
        Scope::Publish,
        Scope::Send,
    ])
    .await
}

#[sqlx::test]
async fn a_connection_whose_task_panics_leaves_its_channels(db: PgPool) {
    let mut config = common::test_config();
    config.faults.panic_on_request_id = Some("boom".into());
    let app = TestApp::spawn_config(db, config).await;
    let key = realtime_key(&app).await;
    let mut watcher = app.peer(&key, "watcher", json!({})).await;
    watcher.subscribe("room").await;
    watcher.recv().await; // the empty roster
    let mut victim = app.peer(&key, "victim", json!({})).await;
    victim.subscribe("room").await;
    assert_eq!(
        watcher.recv().await,
        json!({"type": "presence", "channel": "room", "joined": [{"peerId": "victim"}], "left": []})
    );

    victim
        .send(json!({"type": "ping", "requestId": "boom"}))
        .await;
    assert_eq!(
        watcher.recv().await,
        json!({"type": "presence", "channel": "room", "joined": [], "left": [{"peerId": "victim"}]}),
        "the peer whose task died leaves"
    );
    assert_eq!(app.state.realtime.hub.connection_count(), 1);
    assert!(
        app.state
            .realtime
            .hub
            .peers("room")
            .iter()
            .all(|(peer, _)| &**peer != "victim")
    );
}

#[sqlx::test]
async fn a_frozen_database_answers_503_within_the_deadline_and_recovers(db: PgPool) {
    let options = (*db.connect_options()).clone();
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let proxy = DbProxy::start(target.parse().expect("tcp database address")).await;
    let server_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_lazy_with(options.host("127.0.0.1").port(proxy.addr.port()));
    let mut config = common::test_config();
    config.db_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_full(db, server_pool, config).await;
    let key = app.writer().await;
    let channel = app.channel(&key, "frozen").await;
    let path = format!("/v1/channels/{channel}");

    proxy.hold();
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (
            Method::POST,
            format!("{path}/messages"),
            Some(json!({"content": "into the freeze"})),
        ),
    ] {
        let started = Instant::now();
        let mut request = app
            .request(method.clone(), &path, &key)
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, body) = call(request).await;
        assert_error(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{method} {path} answered after {:?}, past the 1 s deadline",
            started.elapsed()
        );
    }

    proxy.release();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = app.get(&path, &key).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} after the thaw");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
