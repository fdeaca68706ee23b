//! Test harness: the real server on 127.0.0.1:0 against the per-test database `#[sqlx::test]`
//! creates, real API keys, and a TCP proxy that can cut the server off from PostgreSQL.
#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc};

use channeld::{
    auth::{NewKey, Scope, create_key},
    config::Config,
    startup::{AppState, serve},
};
use chrono::{DateTime, Utc};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub struct TestApp {
    pub base: String,
    pub db: PgPool,
    pub http: reqwest::Client,
}

impl TestApp {
    /// Serves the app on a free port with `db` as its pool.
    pub async fn spawn(db: PgPool) -> Self {
        Self::spawn_with(db.clone(), db).await
    }

    /// Serves the app with `server_pool`, while the test keeps `db` for set-up and checks.
    pub async fn spawn_with(db: PgPool, server_pool: PgPool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = AppState::new(server_pool, Config::default());
        tokio::spawn(serve(listener, state, std::future::pending()));
        Self {
            base: format!("http://{addr}"),
            db,
            http: reqwest::Client::new(),
        }
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
            name: "test".into(),
            scopes: scopes.to_vec(),
            channel_patterns: vec![],
            expires_at,
        };
        let (generated, _) = create_key(&self.db, &new).await.expect("create key");
        generated.live_form()
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

/// A TCP proxy between the server and PostgreSQL that the test can cut and restore, standing in
/// for a database that goes away and comes back.
pub struct DbProxy {
    pub addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
}

impl DbProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let accept_up = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = accept_up.subscribe();
                if !*state.borrow() {
                    continue; // dropped: connection refused in effect
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}
