//! The database pool, as `vendor/sqlx-core` changes it: a connection is taken from where the last
//! one released went, so sequential work keeps using one warm backend instead of rotating
//! through every idle connection.

use std::{collections::HashSet, time::Duration};

use sqlx::{PgPool, postgres::PgPoolOptions};

/// Waits, up to a deadline, until `idle` connections are back in the pool (a connection is
/// returned by a task of its own once its user drops it).
async fn until_idle(pool: &PgPool, idle: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pool.num_idle() != idle {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} idle connections, never {idle}",
            pool.num_idle()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[sqlx::test]
async fn sequential_queries_reuse_the_connection_released_last(
    options: PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = options
        .max_connections(4)
        .idle_timeout(None)
        .connect_with(connect)
        .await
        .unwrap();
    // Four connections open at once, then all idle.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await.unwrap());
    }
    let mut opened = HashSet::new();
    for connection in &mut held {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut **connection)
            .await
            .unwrap();
        opened.insert(pid);
    }
    assert_eq!(opened.len(), 4);
    drop(held);
    until_idle(&pool, 4).await;

    // One query at a time, each once the previous connection is back: a queue would hand out
    // the four in turn.
    let mut used = Vec::new();
    for _ in 0..12 {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        used.push(pid);
        until_idle(&pool, 4).await;
    }
    let distinct: HashSet<_> = used.iter().collect();
    assert_eq!(distinct.len(), 1, "backends used in turn: {used:?}");
    assert!(opened.contains(&used[0]));
}
