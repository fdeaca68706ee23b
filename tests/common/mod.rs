//! Test harness: the real server on 127.0.0.1:0 against the per-test database `#[sqlx::test]`
//! creates, real API keys, and a TCP proxy that can cut the server off from PostgreSQL.
#![allow(dead_code)]

pub mod cluster;

use std::{net::SocketAddr, sync::Arc};

use channeld::{
    apps::{DEFAULT_APP, Quotas, create_app},
    auth::{NewKey, NewPublishableKey, Scope, create_key, create_publishable_key, tokens},
    config::Config,
    startup::{Addresses, Application},
    state::AppState,
};
use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

pub struct TestApp {
    pub base: String,
    pub ws_base: String,
    /// `/metrics` on its own listener, when the test asked for one.
    pub metrics_base: Option<String>,
    pub db: PgPool,
    pub http: reqwest::Client,
    pub config: Config,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    /// Serves the app on a free port with `db` as its pool.
    pub async fn spawn(db: PgPool) -> Self {
        Self::spawn_full(db.clone(), db, test_config()).await
    }

    /// Serves the app with `server_pool`, while the test keeps `db` for set-up and checks.
    pub async fn spawn_with(db: PgPool, server_pool: PgPool) -> Self {
        Self::spawn_full(db, server_pool, test_config()).await
    }

    pub async fn spawn_config(db: PgPool, config: Config) -> Self {
        Self::spawn_full(db.clone(), db, config).await
    }

    /// Another instance on the same database: a pool of its own (as a second process has),
    /// `config` for its settings.
    pub async fn spawn_instance(db: PgPool, config: Config) -> Self {
        let own_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect_with((*db.connect_options()).clone())
            .await
            .expect("second pool");
        Self::spawn_full(db, own_pool, config).await
    }

    pub async fn spawn_full(db: PgPool, server_pool: PgPool, config: Config) -> Self {
        Self::spawn_at(db, server_pool, config, None).await
    }

    /// Builds the application as `channeld serve` does, on port 0 (and `/metrics` on a port of
    /// its own when `metrics` is set), and serves it until the test shuts it down.
    pub async fn spawn_at(
        db: PgPool,
        server_pool: PgPool,
        config: Config,
        metrics: Option<SocketAddr>,
    ) -> Self {
        let addresses = Addresses {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics,
        };
        let app = Application::build(server_pool, config, addresses)
            .await
            .expect("the application builds");
        let addr = app.address();
        let metrics_address = app.metrics_address();
        let state = app.state().clone();
        let config = state.config.as_ref().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let test_app = Self {
            base: format!("http://{addr}"),
            ws_base: format!("ws://{addr}"),
            metrics_base: metrics_address.map(|a| format!("http://{a}")),
            db,
            http: reqwest::Client::new(),
            config,
            state,
            stop: Some(stop),
            server: Some(server),
        };
        test_app.engine_ready().await;
        test_app
    }

    /// Waits until the realtime engine can serve (with Redis: connected and subscribed).
    pub async fn engine_ready(&self) {
        eventually(
            std::time::Duration::from_secs(10),
            "the realtime engine is ready",
            || async { self.state.realtime.engine.is_ready() },
        )
        .await;
    }

    /// Begins graceful shutdown, as SIGTERM does.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Begins graceful shutdown and asserts the server has stopped within `within`.
    pub async fn shutdown_within(&mut self, within: std::time::Duration, what: &str) {
        self.shutdown();
        let server = self.server.take().expect("running");
        tokio::time::timeout(within, server)
            .await
            .unwrap_or_else(|_| panic!("shutdown did not finish within {within:?}: {what}"))
            .expect("server task")
            .expect("served");
    }

    /// The text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    /// A new key with these scopes, in its `sk_live_` form.
    pub async fn key(&self, scopes: &[Scope]) -> String {
        self.key_expiring(scopes, None).await
    }

    pub async fn key_expiring(
        &self,
        scopes: &[Scope],
        expires_at: Option<DateTime<Utc>>,
    ) -> String {
        let new = NewKey {
            app_id: DEFAULT_APP,
            name: "test".into(),
            scopes: scopes.to_vec(),
            channel_patterns: vec![],
            expires_at,
            rate_limit: None,
            rate_burst: None,
        };
        let (generated, _) = create_key(&self.db, &new, &self.config.master_key)
            .await
            .expect("create key");
        generated.live_form()
    }

    /// A key limited to `patterns`.
    pub async fn key_with_patterns(&self, scopes: &[Scope], patterns: &[&str]) -> String {
        self.app_key(DEFAULT_APP, scopes, patterns).await
    }

    /// A new app with these quotas; its id.
    pub async fn app(&self, name: &str, quotas: Quotas) -> i64 {
        create_app(&self.db, name, &quotas)
            .await
            .expect("create app")
            .id
    }

    /// A key of app `app_id` limited to `patterns` (`[]` for every name).
    pub async fn app_key(&self, app_id: i64, scopes: &[Scope], patterns: &[&str]) -> String {
        let new = NewKey {
            app_id,
            name: "test".into(),
            scopes: scopes.to_vec(),
            channel_patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            expires_at: None,
            rate_limit: None,
            rate_burst: None,
        };
        let (generated, _) = create_key(&self.db, &new, &self.config.master_key)
            .await
            .expect("create key");
        generated.live_form()
    }

    /// A publishable key with these actions, patterns and allowed origins.
    pub async fn publishable(
        &self,
        actions: &[Scope],
        patterns: &[&str],
        origins: &[&str],
    ) -> String {
        let new = NewPublishableKey {
            app_id: DEFAULT_APP,
            name: "browser".into(),
            actions: actions.to_vec(),
            channel_patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            expires_at: None,
        };
        create_publishable_key(&self.db, &new)
            .await
            .expect("create pk")
            .key
    }

    /// Mints a token through `POST /v1/tokens`.
    pub async fn token(&self, key: &str, body: Value) -> String {
        let (status, response) = self.post("/v1/tokens", key, body).await;
        assert_eq!(status, StatusCode::OK, "mint token: {response}");
        response["token"].as_str().expect("token").to_owned()
    }

    /// Connects with `?<query>` and reads the welcome frame.
    pub async fn ws(&self, query: &str) -> (Ws, Value) {
        let mut ws = self
            .ws_raw(query)
            .await
            .unwrap_or_else(|status| panic!("upgrade refused: {status}"));
        let welcome = ws.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }

    /// A connected peer: mints a token for `peer` with `extra` claims and connects.
    pub async fn peer(&self, key: &str, peer: &str, extra: Value) -> Ws {
        let mut body = json!({"peerId": peer});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let token = self.token(key, body).await;
        self.ws(&format!("token={token}")).await.0
    }

    /// Attempts an upgrade; `Err(status)` when the server answers with plain HTTP instead.
    pub async fn ws_raw(&self, query: &str) -> Result<Ws, u16> {
        self.ws_request(query, None).await
    }

    pub async fn ws_request(&self, query: &str, origin: Option<&str>) -> Result<Ws, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{}/v1?{query}", self.ws_base)
            .into_client_request()
            .unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(Ws { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("websocket connect failed: {other}"),
        }
    }

    /// Upgrades with `?<query>` (and `Origin`), expecting a refusal: the close code the server
    /// closes the new socket with at once.
    pub async fn refused(&self, query: &str, origin: Option<&str>) -> u16 {
        self.refusal(query, origin).await.0
    }

    /// The close code and reason of a refused WebSocket connect.
    pub async fn refusal(&self, query: &str, origin: Option<&str>) -> (u16, String) {
        let mut ws = self
            .ws_request(query, origin)
            .await
            .unwrap_or_else(|status| panic!("refusals come after the upgrade, not as {status}"));
        ws.closed_with_reason().await
    }

    /// Waits, up to `within`, until at least `count` long polls or MCP waits wait on this
    /// server.
    pub async fn until_waiting(&self, count: u64, within: std::time::Duration) {
        eventually(within, "the waiters wait", || async {
            self.state
                .metrics
                .waiters
                .load(std::sync::atomic::Ordering::Relaxed)
                >= count
        })
        .await;
    }

    /// A key that may read and write channels.
    pub async fn writer(&self) -> String {
        self.key(&[Scope::ChannelsWrite]).await
    }

    pub fn request(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        call(self.request(Method::GET, path, key)).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        call(self.request(Method::POST, path, key).json(&body)).await
    }

    pub async fn put(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        call(self.request(Method::PUT, path, key).json(&body)).await
    }

    /// Creates a channel and returns its id.
    pub async fn channel(&self, key: &str, name: &str) -> i64 {
        let (status, body) = self
            .post("/v1/channels", key, serde_json::json!({"name": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "create channel: {body}");
        body["channel"]["id"].as_i64().expect("channel id")
    }

    /// Posts a message and returns its id.
    pub async fn message(&self, key: &str, channel: i64, content: &str) -> i64 {
        let path = format!("/v1/channels/{channel}/messages");
        let (status, body) = self
            .post(&path, key, serde_json::json!({"content": content}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "post message: {body}");
        body["message"]["id"].as_i64().expect("message id")
    }
}

/// The ids of a channel's stored messages newer than `after`, in id order: what every follower
/// must have received.
pub async fn ids_after(db: &PgPool, channel: i64, after: i64) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM messages WHERE channel_id = $1 AND id > $2 ORDER BY id")
        .bind(channel)
        .bind(after)
        .fetch_all(db)
        .await
        .expect("read message ids")
}

/// Sends the request and returns the status and the JSON body (`Null` when there is none).
pub async fn call(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request reaches the server");
    let status = response.status();
    (status, json_body(response).await)
}

pub async fn json_body(response: Response) -> Value {
    let bytes = response.bytes().await.expect("body");
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("body is not JSON: {bytes:?}"))
}

/// Asserts the error envelope: status, `error` code and a human `message`.
pub fn assert_error(status: StatusCode, body: &Value, expected_status: StatusCode, code: &str) {
    assert_eq!(status, expected_status, "body: {body}");
    assert_eq!(body["error"], code, "body: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message missing: {body}"
    );
}

/// A `DATABASE_URL` naming `db`, for a `channeld` process started by a test.
pub fn database_url(db: &PgPool) -> String {
    let options = db.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().expect("database name"),
    )
}

/// A TCP proxy between the server and PostgreSQL that the test can cut and restore, standing in
/// for a database that goes away and comes back, or hold, standing in for one that freezes.
pub struct DbProxy {
    pub addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    held: Arc<watch::Sender<bool>>,
}

impl DbProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(watch::channel(true).0);
        let held = Arc::new(watch::channel(false).0);
        let (accept_up, accept_held) = (up.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut state = accept_up.subscribe();
                if !*state.borrow() {
                    continue; // dropped: connection refused in effect
                }
                let held = accept_held.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = pump(client_read, server_write, held.subscribe()) => {}
                        () = pump(server_read, client_write, held.subscribe()) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, held }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Keeps connections open but passes no byte either way, as a frozen database would.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

/// Copies bytes from `from` to `to`, waiting whenever the proxy is held.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if n == 0 || held.wait_for(|held| !*held).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// The server's defaults, but with per-key limits high enough that tests generating load measure
/// delivery rather than rate limiting. Tests about limits set their own.
/// The address a `channeld serve --listen 127.0.0.1:0 --log-format text` child reports in its
/// "channeld listening" line on stderr; the rest of its stderr is drained in the background so
/// that the child never blocks on a full pipe.
pub async fn listening_address(child: &mut std::process::Child) -> SocketAddr {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("the child's stderr is piped");
    let (found, address) = oneshot::channel();
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("channeld listening")
                && let Some(address) = line.split("address=").nth(1)
                && let Some(found) = found.take()
            {
                let _ = found.send(address.trim().parse::<SocketAddr>());
            }
        }
    });
    tokio::time::timeout(std::time::Duration::from_secs(30), address)
        .await
        .expect("the child reports its address within 30 s")
        .expect("the child reports its address before its stderr ends")
        .expect("a socket address")
}

/// A real `channeld serve` process on `db` (no Redis, limits out of the way, plus `extra` flags);
/// killed with SIGKILL when dropped, which is how the tests that need a death use it.
pub struct Process {
    pub child: std::process::Child,
    pub base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn process(db: &PgPool, extra: &[&str]) -> Process {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_channeld"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "text"])
        .arg("--no-migrate")
        .args(extra)
        .env("DATABASE_URL", database_url(db))
        .env("CHANNELD_MASTER_KEY", cluster::MASTER_KEY)
        .env("CHANNELD_RATE_LIMIT", "1000000")
        .env("CHANNELD_RATE_BURST", "1000000")
        .env("RUST_LOG", "warn,channeld::startup=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start channeld");
    let addr: SocketAddr = listening_address(&mut child).await;
    Process {
        child,
        base: format!("http://{addr}"),
    }
}

/// Polls `check` every 10 ms until it answers `Some`, and returns that; fails the test, naming
/// `what`, once `within` has passed. For waiting on an observable state (a row, a metric, a
/// count) rather than sleeping.
pub async fn wait_for<T, F, Fut>(within: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// [`wait_for`] a condition.
pub async fn eventually<F, Fut>(within: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(within, what, || {
        let ready = check();
        async move { ready.await.then_some(()) }
    })
    .await;
}

/// The settings every test server starts from. With `CHANNELD_TEST_ENGINE=redis` the realtime
/// engine is Redis (the one `CHANNELD_TEST_REDIS_URL` names), under a key prefix of this
/// server's own, so that the realtime suites run once per engine (`make test` does both).
pub fn test_config() -> Config {
    let config = base_config();
    match std::env::var("CHANNELD_TEST_ENGINE").as_deref() {
        Ok("redis") => cluster::cluster_config(
            &cluster::fresh_prefix(),
            &cluster::redis_url(),
            std::time::Duration::from_secs(2),
        ),
        Ok("memory") | Err(_) => config,
        Ok(other) => panic!("CHANNELD_TEST_ENGINE is `memory` or `redis`, not `{other}`"),
    }
}

/// [`test_config`] with the in-memory engine, whatever `CHANNELD_TEST_ENGINE` says.
pub fn base_config() -> Config {
    Config {
        rate_limit: channeld::ratelimit::Limit {
            rate: 1_000_000,
            burst: 1_000_000,
        },
        ..Config::default()
    }
}

/// Splits an `sk_live_` key into its id and secret, as a backend minting tokens locally would.
pub fn key_parts(live: &str) -> (String, String) {
    (
        format!("sk_id_{}", &live[8..24]),
        format!("sk_secret_{}", &live[25..]),
    )
}

/// A token signed locally with the key's secret (no server round trip).
pub fn local_token(live: &str, claims: &tokens::Claims) -> String {
    let (id, secret) = key_parts(live);
    tokens::sign(&id, &secret, claims)
}

pub fn claims(peer: &str, exp: i64) -> tokens::Claims {
    tokens::Claims {
        sub: peer.into(),
        exp,
        iat: None,
        nbf: None,
        channels: None,
        permissions: None,
        peer_metadata: None,
        metadata: None,
    }
}

/// A WebSocket client speaking the JSON protocol.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Ws {
    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .expect("send frame");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.stream
            .send(Message::text(text.to_owned()))
            .await
            .expect("send frame");
    }

    /// The next JSON frame (pings are skipped); panics after 5 s or on close.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame within 5 s")
                .expect("stream open")
                .expect("frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a frame with a requestId and returns the reply (ack, error or pong).
    pub async fn request(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// Subscribes and asserts the ack.
    pub async fn subscribe(&mut self, channel: &str) {
        let ack = self
            .request(json!({"type": "subscribe", "channel": channel, "requestId": "sub"}))
            .await;
        assert_eq!(
            ack,
            json!({"type": "ack", "requestId": "sub"}),
            "subscribe {channel}"
        );
    }

    /// Reads until the server closes; returns the close code. Text frames before it are skipped.
    pub async fn closed(&mut self) -> u16 {
        self.closed_with_reason().await.0
    }

    /// The close code and reason the server sent.
    pub async fn closed_with_reason(&mut self) -> (u16, String) {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("closed within 5 s");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("socket error before a close frame: {error}"),
            }
        }
    }

    /// Reads until the connection ends: the close code when a close frame came first, `None`
    /// when the stream ended or was reset without one (a server that let go of a connection
    /// whose client was not reading).
    pub async fn ended(&mut self) -> Option<u16> {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("ended within 5 s");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => return Some(frame.code.into()),
                Some(Ok(Message::Close(None))) => return Some(1005),
                Some(Ok(_)) => continue,
                None => return None,
                Some(Err(error)) => {
                    let reset = matches!(
                        &error,
                        tokio_tungstenite::tungstenite::Error::Io(io)
                            if io.kind() == std::io::ErrorKind::ConnectionReset
                    ) || matches!(
                        &error,
                        tokio_tungstenite::tungstenite::Error::Protocol(
                            tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                        )
                    );
                    assert!(reset, "socket error other than a reset: {error}");
                    return None;
                }
            }
        }
    }

    /// Asserts nothing but pings arrives for `duration`.
    pub async fn silent_for(&mut self, duration: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// Reads Server-Sent Events from a streaming response.
pub struct Events {
    pub response: reqwest::Response,
    buffer: String,
}

impl Events {
    pub async fn open(app: &TestApp, path: &str, key: &str, last_event_id: Option<i64>) -> Self {
        let mut request = app
            .request(Method::GET, path, key)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next block (event or comment), as its raw lines.
    pub async fn next_block(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block = self.buffer[..end].to_owned();
                self.buffer.drain(..end + 2);
                return block;
            }
            let chunk =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.response.chunk())
                    .await
                    .expect("an event within 5 s")
                    .unwrap()
                    .expect("stream open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `message` event's id and data, skipping keep-alive comments.
    pub async fn next_message(&mut self) -> (i64, Value) {
        loop {
            let block = self.next_block().await;
            if block.starts_with(':') {
                continue;
            }
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| {
                        line.strip_prefix(&format!("{name}:"))
                            .map(|v| v.trim_start().to_owned())
                    })
                    .unwrap_or_else(|| panic!("no {name} in {block:?}"))
            };
            assert_eq!(field("event"), "message");
            return (
                field("id").parse().unwrap(),
                serde_json::from_str(&field("data")).unwrap(),
            );
        }
    }
}
