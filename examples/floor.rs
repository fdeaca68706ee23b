//! The floor the REST benchmark compares channeld with: the thinnest HTTP server that does a
//! request's work. It serves `POST` and `GET /v1/channels/{id}/messages` with axum, the same
//! pool settings (`channeld::db::pool`), the very statements channeld runs (its own `insert` and
//! `page` functions, whose SQL is in `.sqlx/`) and the same JSON shapes, and nothing else: no
//! middleware, no authentication, no rate limit, no metrics, no request id, no tracing, no ETag.
//!
//! ```sh
//! target/release/examples/floor --listen 127.0.0.1:18109   # DATABASE_URL as for channeld
//! ```
//!
//! What channeld costs beyond this is its own; what this costs beyond pgbench is the HTTP hop.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::get,
    serve::ListenerExt,
};
use channeld::{
    config::DatabaseArgs,
    messages::{self, Addressing, Page, model::Message},
};
use clap::Parser;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Parser)]
#[command(about = "The REST benchmark's floor: channeld's message routes and nothing else")]
struct Args {
    #[command(flatten)]
    database: DatabaseArgs,
    #[arg(long, default_value = "127.0.0.1:18109")]
    listen: SocketAddr,
}

#[derive(Deserialize)]
struct NewMessage {
    content: String,
}

#[derive(Serialize)]
struct MessageBody {
    message: Message,
}

#[derive(Serialize)]
struct MessagePage {
    messages: Vec<Message>,
    has_more: bool,
}

type Answer<T> = Result<(StatusCode, Json<T>), StatusCode>;

fn failed(error: sqlx::Error) -> StatusCode {
    eprintln!("floor: {error}");
    StatusCode::SERVICE_UNAVAILABLE
}

async fn post(
    State(db): State<PgPool>,
    Path(id): Path<i64>,
    Json(new): Json<NewMessage>,
) -> Answer<MessageBody> {
    let addressing = Addressing {
        mentions: &[],
        metadata: None,
        reply: None,
    };
    match messages::insert(&db, id, &new.content, "api", None, addressing, None).await {
        Ok(Some(message)) => Ok((StatusCode::CREATED, Json(MessageBody { message }))),
        Ok(None) => Err(StatusCode::NOT_FOUND),
        Err(error) => Err(failed(error)),
    }
}

#[derive(Deserialize)]
struct PageQuery {
    before: Option<i64>,
}

async fn latest(
    State(db): State<PgPool>,
    Path(id): Path<i64>,
    Query(query): Query<PageQuery>,
) -> Answer<MessagePage> {
    let page = query.before.map_or(Page::Latest, Page::Before);
    // One more than the page, as channeld reads it, to know whether another follows.
    let mut messages = messages::page(&db, id, page, 51).await.map_err(failed)?;
    let has_more = messages.len() > 50;
    messages.truncate(50);
    Ok((StatusCode::OK, Json(MessagePage { messages, has_more })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let db = channeld::db::pool(&args.database, Duration::from_secs(5))?;
    let app = Router::new()
        .route("/v1/channels/{id}/messages", get(latest).post(post))
        .with_state(db);
    // As channeld's own listener does: no Nagle delay on answers.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    eprintln!("floor listening on {}", args.listen);
    axum::serve(listener, app).await?;
    Ok(())
}
