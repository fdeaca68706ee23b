//! Bounded under abuse: what a hostile or broken client can do to one connection stays with that
//! connection.

mod common;

use channeld::auth::Scope;
use common::TestApp;
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
