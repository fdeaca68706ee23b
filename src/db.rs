//! Connecting to PostgreSQL and applying migrations.

use std::time::Duration;

use sqlx::{
    Connection, PgPool,
    migrate::{MigrateDatabase, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseArgs;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// A pool that connects on demand, so the server starts and stays up while PostgreSQL is away.
/// Each statement on its connections is cancelled after `statement_timeout`, and none is
/// JIT-compiled: every statement here is a short index walk, and PostgreSQL's JIT, which starts
/// on the planner's cost estimate alone, spent 136 ms compiling the 1 ms unread-count statement
/// of a channel list whose estimate a 1,000,000-message channel had inflated.
pub fn pool(args: &DatabaseArgs, statement_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = args.database_url.expose().parse()?;
    let timeout = format!("{}ms", statement_timeout.as_millis().max(1));
    let options = options.options([("statement_timeout", timeout.as_str()), ("jit", "off")]);
    Ok(pool_options(args).connect_lazy_with(options))
}

/// Connections idle longer than this are pinged before use; busier ones are handed out as they
/// are, so a request under load costs no extra round trip to the database.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

pub fn pool_options(args: &DatabaseArgs) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .acquire_timeout(args.db_acquire_timeout)
        // sqlx pings on every acquire by default, doubling the round trips of a one-query
        // request. A connection that just finished a query is known to be alive; one that sat
        // idle (across a database restart, say) is checked, and replaced when the ping fails.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Creates the database when it does not exist yet, then applies pending migrations.
/// The migrator holds an advisory lock, so replicas starting together migrate once.
pub async fn migrate(args: &DatabaseArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = args.database_url.expose();
    if !sqlx::Postgres::database_exists(url).await? {
        tracing::info!("creating the database");
        sqlx::Postgres::create_database(url).await?;
    }
    let pool = pool_options(args).max_connections(1).connect(url).await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Says at startup whether PostgreSQL vacuums on its own, warning when it does not. The webhook
/// outbox and deliveries and the consumer groups' claims are queues: their rows are updated or
/// deleted as the work is done, and leave dead entries in the indexes their workers read from
/// the start, which only VACUUM removes; with autovacuum off every round reads further and gets
/// slower (docs/OPERATING.md, "Vacuum").
pub async fn check_autovacuum(pool: &PgPool) {
    let setting = sqlx::query_scalar!(r#"SELECT current_setting('autovacuum') AS "setting!""#)
        .fetch_one(pool)
        .await;
    match setting {
        Ok(setting) if setting == "off" => tracing::warn!(
            autovacuum = %setting,
            "PostgreSQL runs with autovacuum off: webhook and consumer-group queues slow down as \
             dead rows pile up; turn it on, or run VACUUM on a schedule"
        ),
        Ok(setting) => tracing::info!(autovacuum = %setting, "PostgreSQL vacuums on its own"),
        Err(error) => tracing::debug!(%error, "the autovacuum setting was not read"),
    }
}
