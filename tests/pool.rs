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

/// As [`until_idle`], for every connection the pool has, however many the reaper leaves.
async fn until_all_idle(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pool.num_idle() != pool.size() as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} connections idle",
            pool.num_idle(),
            pool.size()
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

#[sqlx::test]
async fn idle_connections_left_unused_are_closed_and_the_one_in_use_stays(
    options: PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = options
        .max_connections(3)
        .min_connections(0)
        .idle_timeout(Duration::from_millis(300))
        .connect_with(connect)
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    until_all_idle(&pool).await;

    // Sequential queries, paced, until the reaper has closed the two connections they never
    // needed: the one they use is never idle for long, so it is never closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut used = HashSet::new();
    while pool.size() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} connections still open",
            pool.size()
        );
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        used.insert(pid);
        until_all_idle(&pool).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(used.len(), 1, "backends used: {used:?}");
}
