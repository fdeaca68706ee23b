//! HTTP connections cannot be held open, trickled or oversized without limit, and shutdown does
//! not wait for clients that never finish a request.

mod common;

use std::time::{Duration, Instant};

use channeld::config::Config;
use common::{TestApp, assert_error, call};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn short_timeouts() -> Config {
    let mut config = common::test_config();
    config.http.header_timeout = Duration::from_millis(500);
    config.http.body_timeout = Duration::from_millis(500);
    config
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent, or panics after `within`.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .expect("the server closed the connection in time");
    String::from_utf8_lossy(&received).into_owned()
}

#[sqlx::test]
async fn idle_and_slowloris_connections_are_closed_after_the_header_timeout(db: PgPool) {
    let app = TestApp::spawn_config(db, short_timeouts()).await;

    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut kept_alive = TcpStream::connect(addr(&app)).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    assert_eq!(
        read_until_closed(&mut idle, Duration::from_secs(5)).await,
        ""
    );
    assert_eq!(
        read_until_closed(&mut slow, Duration::from_secs(5)).await,
        ""
    );
    let answered = read_until_closed(&mut kept_alive, Duration::from_secs(5)).await;
    assert!(
        answered.starts_with("HTTP/1.1 200"),
        "answered, then closed once idle: {answered:?}"
    );
    let metrics = app.metrics_text().await;
    let timed_out: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("channeld_http_connections_timed_out_total "))
        .and_then(|v| v.parse().ok())
        .expect("the series is there");
    assert!(timed_out >= 3, "counted for operators: {timed_out}");
}

#[sqlx::test]
async fn a_trickled_body_is_refused_with_408_in_the_envelope(db: PgPool) {
    let app = TestApp::spawn_config(db, short_timeouts()).await;
    let key = app.writer().await;
    let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
    let head = format!(
        "POST /v1/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"], "invalid_request", "{body}");
}

#[sqlx::test]
async fn oversized_uris_and_headers_are_refused_in_the_envelope(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let long = "a".repeat(10 * 1024);
    let (status, body) = app.get(&format!("/v1/channels?q={long}"), &key).await;
    assert_error(status, &body, StatusCode::URI_TOO_LONG, "invalid_request");

    let (status, body) = call(
        app.request(Method::GET, "/v1/channels", &key)
            .header("x-padding", "b".repeat(20 * 1024)),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "invalid_request",
    );
}

#[sqlx::test]
async fn a_half_sent_request_does_not_hold_shutdown_hostage(db: PgPool) {
    // Timeouts long enough that only shutdown itself can end the connection in time.
    let mut config = common::test_config();
    config.http.header_timeout = Duration::from_secs(60);
    let mut app = TestApp::spawn_config(db, config).await;
    let mut half = TcpStream::connect(addr(&app)).await.unwrap();
    half.write_all(b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    // The server has taken the connection: a full request on another one is answered.
    let (status, _) = call(app.http.get(format!("{}/healthz", app.base))).await;
    assert_eq!(status, StatusCode::OK);

    app.shutdown_within(Duration::from_secs(5), "a request is still half-sent")
        .await;
    assert_eq!(
        read_until_closed(&mut half, Duration::from_secs(1)).await,
        ""
    );
}

#[sqlx::test]
async fn a_body_is_never_waited_for_without_a_valid_key(db: PgPool) {
    let mut config = common::test_config();
    config.http.body_timeout = Duration::from_secs(60);
    let app = TestApp::spawn_config(db, config).await;
    let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
    tcp.write_all(
        b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_live_nope\r\n\
          Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "refused at once, the body unread: {answer:?}"
    );
}

#[sqlx::test]
async fn a_half_sent_body_does_not_hold_shutdown_hostage(db: PgPool) {
    let mut config = common::test_config();
    config.http.body_timeout = Duration::from_secs(60);
    let mut app = TestApp::spawn_config(db, config).await;
    let key = app.writer().await;
    let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
    let head = format!(
        "POST /v1/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The request is in: the server waits on its body.
    common::eventually(
        Duration::from_secs(5),
        "the request reaches the server",
        || async {
            app.state
                .metrics
                .server
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        },
    )
    .await;
    app.shutdown_within(Duration::from_secs(5), "a body is still half-sent")
        .await;
    let answer = read_until_closed(&mut tcp, Duration::from_secs(1)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
}

#[sqlx::test]
async fn a_declared_body_over_the_limit_is_413_at_once(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
    // 10 GB declared, nothing sent: refused on the header alone, not waited for.
    let head = format!(
        "POST /v1/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let answer = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buffer))
            .await
            .expect("an answer, not a wait for the body")
            .unwrap();
        received.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if n == 0 || text.ends_with("}\n") {
            break text;
        }
    };
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "after {:?}: {answer:?}",
        started.elapsed()
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert_eq!(
        body["message"],
        "the body is 10000000000 bytes; at most 1048576 are accepted"
    );
}

/// The request's deadline (--db-timeout) is shorter than the body's own timeout.
fn short_deadline() -> Config {
    let mut config = common::test_config();
    config.db_timeout = Duration::from_millis(300);
    config.http.body_timeout = Duration::from_secs(2);
    config
}

#[sqlx::test]
async fn a_slow_body_gets_the_whole_body_timeout_not_the_request_deadline(db: PgPool) {
    let app = TestApp::spawn_config(db, short_deadline()).await;
    let key = app.writer().await;
    let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
    let body = br#"{"name": "sent slowly, past the request deadline"}"#;
    let head = format!(
        "POST /v1/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // A slow client (the behaviour under test): the body takes ~0.8 s, past the 0.3 s deadline
    // and within the 2 s body timeout.
    for chunk in body.chunks(body.len().div_ceil(4)) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tcp.write_all(chunk).await.unwrap();
    }
    let answer = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer:?}");
}

#[sqlx::test]
async fn a_stalled_body_is_408_not_503(db: PgPool) {
    // Past the request's deadline the body is still the client's to send: stalling is the
    // client's fault, answered 408 when the body's own timeout ends, never a 5xx.
    let app = TestApp::spawn_config(db, short_deadline()).await;
    let key = app.writer().await;
    let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
    let head = format!(
        "POST /v1/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert_eq!(body["message"], "the request body did not arrive in time");
}
