//! Cluster mode, in a test binary of its own: `CLIENT KILL TYPE pubsub` cuts every pub/sub
//! connection of the Redis, so no other cluster test may run beside it.

mod common;

use std::time::Duration;

use common::{
    cluster::{REALTIME, Seen, fresh_prefix, instances, join, redis},
    eventually,
};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Mutex;

#[sqlx::test]
async fn a_killed_pubsub_connection_is_replaced_and_missed_joins_arrive(db: PgPool) {
    let prefix = fresh_prefix();
    let apps = instances(&db, &prefix, 2, Duration::from_secs(2)).await;
    let key = apps[0].key(&REALTIME).await;
    let mut observer = apps[0].peer(&key, "observer", json!({})).await;
    join(&mut observer, "killed").await;
    let mut redis = redis().await;
    // Kill every pub/sub connection; both instances subscribe again on their own.
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut redis)
        .await
        .expect("CLIENT KILL");
    // Behind a lock so that each attempt can borrow it mutably; held until the test ends.
    let joiner = Mutex::new(apps[1].peer(&key, "joiner", json!({})).await);
    // The join may fail while the instance reconnects; retry until it lands.
    eventually(Duration::from_secs(10), "subscribed again", || async {
        let reply = joiner
            .lock()
            .await
            .request(json!({"type": "subscribe", "channel": "killed", "requestId": "s"}))
            .await;
        reply["type"] == "ack"
    })
    .await;
    let mut seen = Seen::default();
    seen.until(&mut observer, Duration::from_secs(10), |s| {
        s.joined.contains_key("joiner")
    })
    .await;
    assert_eq!(seen.joined["joiner"], 1);
    for app in &apps {
        assert!(
            app.metrics_text()
                .await
                .contains("channeld_redis_pubsub_connects_total 2"),
            "each instance made its pub/sub connection again"
        );
    }
}
