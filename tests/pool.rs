//! The database pool, as `vendor/sqlx-core` changes it: a connection is taken from where the last
//! one released went, so sequential work keeps using one warm backend instead of rotating
//! through every idle connection; and a connection that owes the server nothing is back in the
//! pool the moment its user drops it, with no task spawned to return it.

use std::{collections::HashSet, time::Duration};

use futures::TryStreamExt;

use sqlx::{
    Connection, PgExecutor, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Waits, up to a deadline, until every connection the pool has is back in it (one that still
/// owes the server part of a result is returned by a task of its own once drained; the reaper
/// may close some meanwhile).
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

async fn int8(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
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

#[sqlx::test]
async fn a_connection_is_back_in_the_pool_when_its_query_ends(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (pool, _) = opened(options, connect, 1, None).await;
    // No await between the query's end and the check: on this test's single-threaded runtime,
    // a return left to a spawned task would not have run yet.
    assert_eq!(int8(&pool, "SELECT 7::int8").await, 7);
    assert_eq!(pool.num_idle(), 1, "the connection is idle again at once");
}

#[sqlx::test]
async fn a_connection_dropped_in_the_middle_of_a_result_is_drained_before_reuse(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (pool, backends) = opened(options, connect, 1, None).await;
    {
        // The server ends this result half a second after its rows: when it is dropped, the
        // connection certainly still owes the rest.
        let mut rows = sqlx::query_scalar::<_, i32>(
            "SELECT x FROM generate_series(1, 200000) x \
             WHERE CASE WHEN x = 200000 THEN pg_sleep(0.5) IS NULL ELSE true END",
        )
        .fetch(&pool);
        assert_eq!(rows.try_next().await.unwrap(), Some(1));
    }
    assert_eq!(
        pool.num_idle(),
        0,
        "a connection that owes the server is drained by a task before it is idle"
    );
    // The pool's one connection answers the next query with its own answer, not the rest of
    // the last one's.
    assert_eq!(int8(&pool, "SELECT 42::int8").await, 42);
    assert_eq!(pool.size(), 1);
    assert!(
        backends.contains(&backend_pid(&pool).await),
        "the same connection, kept"
    );
}

#[sqlx::test]
async fn a_transaction_dropped_without_commit_is_rolled_back_before_reuse(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (pool, backends) = opened(options, connect.clone(), 1, None).await;
    sqlx::query("CREATE TABLE dropped_work (n int NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    {
        let mut transaction = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO dropped_work VALUES (1)")
            .execute(&mut *transaction)
            .await
            .unwrap();
        // Dropped, not committed: the rollback is queued and owed before the connection is idle.
    }
    // The pool's one connection, reused: the insert is gone, and what runs on it now is no
    // longer inside the abandoned transaction, so another connection sees it committed.
    assert_eq!(int8(&pool, "SELECT count(*) FROM dropped_work").await, 0);
    sqlx::query("INSERT INTO dropped_work VALUES (2)")
        .execute(&pool)
        .await
        .unwrap();
    let mut other = sqlx::PgConnection::connect_with(&connect).await.unwrap();
    let seen: Vec<i32> = sqlx::query_scalar("SELECT n FROM dropped_work ORDER BY n")
        .fetch_all(&mut other)
        .await
        .unwrap();
    assert_eq!(
        seen,
        [2],
        "the dropped insert rolled back, the next one committed"
    );
    assert_eq!(pool.size(), 1);
    assert!(
        backends.contains(&backend_pid(&pool).await),
        "the same connection, kept"
    );
}
