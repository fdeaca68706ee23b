//! The database pool, as `vendor/sqlx-core` changes it: a connection is taken from where the last
//! one released went, so sequential work keeps using one warm backend instead of rotating
//! through every idle connection.

use std::{collections::HashSet, time::Duration};

use sqlx::{
    PgExecutor, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Waits, up to a deadline, until every connection the pool has is back in it (a connection is
/// returned by a task of its own once its user drops it; the reaper may close some meanwhile).
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

async fn backend_pid<'e>(executor: impl PgExecutor<'e>) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(executor)
        .await
        .unwrap()
}

/// A pool of `size` connections, opened at once and then all idle, and their backends.
async fn opened(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    size: u32,
    idle_timeout: Option<Duration>,
) -> (PgPool, HashSet<i32>) {
    let pool = options
        .max_connections(size)
        .min_connections(0)
        .idle_timeout(idle_timeout)
        .connect_with(connect)
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..size {
        held.push(pool.acquire().await.unwrap());
    }
    let mut backends = HashSet::new();
    for connection in &mut held {
        backends.insert(backend_pid(&mut **connection).await);
    }
    drop(held);
    until_all_idle(&pool).await;
    (pool, backends)
}

#[sqlx::test]
async fn sequential_queries_reuse_the_connection_released_last(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (pool, opened) = opened(options, connect, 4, None).await;
    assert_eq!(opened.len(), 4);

    // One query at a time, each once the previous connection is back: a queue would hand out
    // the four in turn.
    let mut used = Vec::new();
    for _ in 0..12 {
        used.push(backend_pid(&pool).await);
        until_all_idle(&pool).await;
    }
    let distinct: HashSet<_> = used.iter().collect();
    assert_eq!(distinct.len(), 1, "backends used in turn: {used:?}");
    assert!(opened.contains(&used[0]));
}

#[sqlx::test]
async fn idle_connections_left_unused_are_closed_and_the_one_in_use_stays(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (pool, _) = opened(options, connect, 3, Some(Duration::from_millis(300))).await;

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
        used.insert(backend_pid(&pool).await);
        until_all_idle(&pool).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(used.len(), 1, "backends used: {used:?}");
}
