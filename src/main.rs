//! The `channeld` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use channeld::{
    cli,
    config::{Cli, Command, Config},
    db,
    startup::{self, Addresses, Application},
    telemetry,
};
use clap::Parser;

/// mimalloc instead of the system allocator: fewer cycles per request and per delivered frame,
/// and memory handed back to the system as connections come and go.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Cli::parse();
    telemetry::init(args.log_format);
    match run(args.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("channeld: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> cli::CliResult {
    match command {
        Command::Migrate(database) => {
            db::migrate(&database).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Follow(args) => channeld::follow::run(args).await,
        Command::Openapi => {
            let document = channeld::json::body(&startup::api_document())?;
            std::io::Write::write_all(&mut std::io::stdout(), &document)?;
            Ok(())
        }
        Command::Apps { database, command } => {
            let pool = db::pool_options(&database)
                .max_connections(1)
                .connect(database.database_url.expose())
                .await?;
            cli::run_apps(&pool, command, &mut std::io::stdout()).await
        }
        Command::Keys {
            database,
            master_key,
            command,
        } => {
            let pool = db::pool_options(&database)
                .max_connections(1)
                .connect(database.database_url.expose())
                .await?;
            cli::run_keys(&pool, master_key.as_ref(), command, &mut std::io::stdout()).await
        }
        Command::Serve(args) => {
            if !args.no_migrate {
                db::migrate(&args.database).await?;
            }
            let pool = db::pool(&args.database, args.db_timeout)?;
            // In the background: the server starts whether or not PostgreSQL answers yet.
            tokio::spawn({
                let pool = pool.clone();
                async move { db::check_autovacuum(&pool).await }
            });
            let addresses = Addresses {
                listen: args.listen,
                metrics: args.metrics_listen,
            };
            let app = Application::build(pool, Config::from(&args), addresses).await?;
            let grace = args.shutdown_timeout;
            let shutdown = async move {
                startup::shutdown_signal().await;
                // In-flight requests get `grace` to finish; then the process exits regardless.
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    tracing::warn!("shutdown timeout reached; exiting");
                    std::process::exit(0);
                });
            };
            app.run_until(shutdown).await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}
