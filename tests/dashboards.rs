//! What a dashboard needs from `GET /v1/channels`: the archived filter, search, sort and order,
//! message counts and the last message, keyset paging that holds while agents post, and unknown
//! query parameters refused on every endpoint.

mod common;

use std::collections::{HashMap, HashSet};

use channeld::auth::Scope;
use common::{TestApp, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

fn names(body: &Value) -> Vec<String> {
    body["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {body}"))
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test]
async fn archived_lists_only_archived_or_only_active_and_conflicts_with_include_archived(
    db: PgPool,
) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    app.channel(&key, "active one").await;
    let gone = app.channel(&key, "archived one").await;
    let (status, _) = app
        .put(
            &format!("/v1/channels/{gone}"),
            &key,
            json!({"archived": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    for (query, expected) in [
        ("", vec!["active one"]),
        ("?archived=false", vec!["active one"]),
        ("?archived=true", vec!["archived one"]),
        ("?include_archived=true", vec!["archived one", "active one"]),
        ("?include_archived=false", vec!["active one"]),
    ] {
        let (status, body) = app.get(&format!("/v1/channels{query}"), &key).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(names(&body), expected, "{query}");
        assert_eq!(body["total"], expected.len(), "{query}");
    }
    let (status, body) = app
        .get("/v1/channels?archived=true&include_archived=true", &key)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        body["details"],
        json!({"archived": ["conflict"], "include_archived": ["conflict"]})
    );
}

#[sqlx::test]
async fn unknown_query_parameters_are_refused_on_every_endpoint(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app
        .key(&[
            Scope::ChannelsWrite,
            Scope::Publish,
            Scope::Presence,
            Scope::Admin,
        ])
        .await;
    let channel = app.channel(&key, "strict").await;
    let (status, body) = app.get("/v1/channels?archivd=true", &key).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(body["details"], json!({"archivd": ["unknown_field"]}));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("accepted: repository_id, ticket_slug, archived, include_archived, q"),
        "{body}"
    );

    let (status, body) = app
        .get("/v1/channels?archived=true&archived=false", &key)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(body["details"], json!({"archived": ["duplicate"]}));

    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/channels/{channel}"), None),
        (
            Method::PUT,
            format!("/v1/channels/{channel}"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/channels".into(),
            Some(json!({"name": "x y"})),
        ),
        (
            Method::GET,
            format!("/v1/channels/{channel}/messages"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/channels/{channel}/messages"),
            Some(json!({"content": "x"})),
        ),
        (Method::GET, format!("/v1/channels/{channel}/events"), None),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"peerId": "p"})),
        ),
        (Method::GET, "/v1/channels/room/peers".into(), None),
        (
            Method::POST,
            "/v1/channels/room/publish".into(),
            Some(json!({"data": 1})),
        ),
        (Method::GET, "/v1/channels/app/room/peers".into(), None),
        (Method::DELETE, "/v1/peers/p".into(), None),
    ];
    for (method, path, body) in routes {
        let mut request = app.request(method.clone(), &format!("{path}?colour=red"), &key);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let (status, answer) = common::call(request).await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(
            answer["details"],
            json!({"colour": ["unknown_field"]}),
            "{method} {path}"
        );
    }
    // Nothing was stored by the refused posts.
    let (_, listed) = app.get("/v1/channels", &key).await;
    assert_eq!(names(&listed), vec!["strict"]);
    assert_eq!(listed["channels"][0]["message_count"], 0);
}

#[sqlx::test]
async fn q_finds_names_containing_the_text_ignoring_case(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    for name in [
        "Deploy AM-1",
        "deploy am-2",
        "Rollback",
        "100%_done",
        "Ünïcode Straße",
    ] {
        app.channel(&key, name).await;
    }
    for (q, expected) in [
        ("DEPLOY", vec!["deploy am-2", "Deploy AM-1"]),
        ("am-", vec!["deploy am-2", "Deploy AM-1"]),
        ("%", vec!["100%_done"]),
        ("_d", vec!["100%_done"]),
        ("straße", vec!["Ünïcode Straße"]),
        ("nothing like it", vec![]),
    ] {
        let encoded: String = url_encode(q);
        let (status, body) = app.get(&format!("/v1/channels?q={encoded}"), &key).await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        assert_eq!(names(&body), expected, "q={q}");
        assert_eq!(body["total"], expected.len(), "q={q}");
    }
    app.channel(&key, r"back\slash").await;
    let (_, body) = app.get("/v1/channels?q=k%5Cs", &key).await;
    assert_eq!(
        names(&body),
        vec![r"back\slash"],
        "a backslash is a plain character"
    );
    let (status, body) = app.get("/v1/channels?q=", &key).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(body["details"], json!({"q": ["format"]}));
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[sqlx::test]
async fn sort_and_order_choose_the_column_and_direction(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let b = app.channel(&key, "bravo").await;
    app.channel(&key, "alpha").await;
    app.channel(&key, "charlie").await;
    app.message(&key, b, "bravo is now the most recently active")
        .await;
    for (query, expected) in [
        ("", vec!["bravo", "charlie", "alpha"]),
        (
            "?sort=updated_at&order=asc",
            vec!["alpha", "charlie", "bravo"],
        ),
        ("?sort=created_at", vec!["charlie", "alpha", "bravo"]),
        (
            "?sort=created_at&order=asc",
            vec!["bravo", "alpha", "charlie"],
        ),
        ("?sort=name", vec!["alpha", "bravo", "charlie"]),
        ("?sort=name&order=desc", vec!["charlie", "bravo", "alpha"]),
    ] {
        let (status, body) = app.get(&format!("/v1/channels{query}"), &key).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(names(&body), expected, "{query}");
    }
    for (query, field) in [
        ("sort=id", "sort"),
        ("order=up", "order"),
        ("cursor=nope", "cursor"),
    ] {
        let (status, body) = app.get(&format!("/v1/channels?{query}"), &key).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(body["details"], json!({field: ["format"]}), "{query}");
    }
}

#[sqlx::test]
async fn every_channel_carries_its_message_count_and_last_message(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let quiet = app.channel(&key, "quiet").await;
    let busy = app.channel(&key, "busy").await;
    app.message(&key, busy, "first").await;
    let long: String = "é".repeat(150) + &"x".repeat(150);
    let path = format!("/v1/channels/{busy}/messages");
    let (status, posted) = app
        .post(&path, &key, json!({"content": long, "pod_key": "pod-7"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let last_id = posted["message"]["id"].as_i64().unwrap();
    // An idempotent replay and a post to an archived channel change nothing.
    for _ in 0..2 {
        let (status, _) = common::call(
            app.request(Method::POST, &path, &key)
                .header("Idempotency-Key", "once")
                .json(&json!({"content": "idempotent"})),
        )
        .await;
        assert!(status.is_success());
    }
    let (_, listed) = app.get("/v1/channels", &key).await;
    let busy_row = &listed["channels"][0];
    assert_eq!(busy_row["name"], "busy");
    assert_eq!(busy_row["message_count"], 3);
    let last = &busy_row["last_message"];
    assert_eq!(last["content"], "idempotent");
    assert_eq!(last["sender_type"], "api");

    let (_, read) = app.get(&format!("/v1/channels/{busy}"), &key).await;
    assert_eq!(read["channel"]["message_count"], 3);
    assert_eq!(read["channel"]["last_message"], *last);

    // The preview is the first 200 characters, counted as characters.
    let other = app.channel(&key, "long").await;
    let (_, posted) = app
        .post(
            &format!("/v1/channels/{other}/messages"),
            &key,
            json!({"content": long, "pod_key": "pod-7"}),
        )
        .await;
    let (_, read) = app.get(&format!("/v1/channels/{other}"), &key).await;
    let preview = &read["channel"]["last_message"];
    let expected: String = long.chars().take(200).collect();
    assert_eq!(preview["content"], expected);
    assert_eq!(preview["id"], posted["message"]["id"]);
    assert_eq!(preview["created_at"], posted["message"]["created_at"]);
    assert_eq!(preview["pod_key"], "pod-7");
    assert_eq!(preview["sender_type"], "agent");
    assert!(last_id < posted["message"]["id"].as_i64().unwrap());

    let (_, read) = app.get(&format!("/v1/channels/{quiet}"), &key).await;
    assert_eq!(read["channel"]["message_count"], 0);
    assert_eq!(read["channel"]["last_message"], Value::Null);

    let (status, _) = app
        .put(
            &format!("/v1/channels/{other}"),
            &key,
            json!({"archived": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .post(
            &format!("/v1/channels/{other}/messages"),
            &key,
            json!({"content": "too late"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, read) = app.get(&format!("/v1/channels/{other}"), &key).await;
    assert_eq!(read["channel"]["message_count"], 1);
}

#[sqlx::test]
async fn counts_stay_exact_under_concurrent_posters(db: PgPool) {
    let app = std::sync::Arc::new(TestApp::spawn(db.clone()).await);
    let key = app.writer().await;
    let channel = app.channel(&key, "contended").await;
    let posters: Vec<_> = (0..8)
        .map(|poster| {
            let app = app.clone();
            let key = key.clone();
            tokio::spawn(async move {
                for n in 0..25 {
                    app.message(&key, channel, &format!("{poster}-{n}")).await;
                }
            })
        })
        .collect();
    for poster in posters {
        poster.await.unwrap();
    }
    let (_, read) = app.get(&format!("/v1/channels/{channel}"), &key).await;
    let newest: i64 = sqlx::query_scalar!(
        r#"SELECT max(id) AS "id!" FROM messages WHERE channel_id = $1"#,
        channel
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(read["channel"]["message_count"], 200);
    assert_eq!(read["channel"]["last_message"]["id"], newest);
}

/// Walks every page of `query` by cursor, calling `between` after each page.
async fn walk(
    app: &TestApp,
    key: &str,
    query: &str,
    mut between: impl AsyncFnMut(usize),
) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    // 40 channels never take more than 40 pages: a wrong keyset fails here instead of looping.
    for page in 0..=40 {
        assert!(page < 40, "more pages than channels: {seen:?}");
        let path = match &cursor {
            None => format!("/v1/channels?{query}"),
            Some(cursor) => format!("/v1/channels?{query}&cursor={cursor}"),
        };
        let (status, body) = app.get(&path, key).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        seen.extend(
            body["channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_i64().unwrap()),
        );
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        between(page).await;
    }
    seen
}

#[sqlx::test]
async fn keyset_pages_neither_repeat_nor_skip_while_writers_reorder_the_list(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(app.channel(&key, &format!("channel {n:02}")).await);
    }

    // Between every two pages, a channel not yet listed and one already listed become the most
    // recently active: both move to the top, ahead of the cursor.
    let touched = std::cell::RefCell::new(HashSet::new());
    let seen = walk(&app, &key, "limit=7", async |page| {
        for id in [ids[page * 3], ids[39 - page]] {
            app.message(&key, id, "moves this channel to the top").await;
            touched.borrow_mut().insert(id);
        }
    })
    .await;
    let touched = touched.into_inner();
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for id in &seen {
        *counts.entry(*id).or_default() += 1;
    }
    assert!(
        counts.values().all(|n| *n == 1),
        "a channel listed twice: {seen:?}"
    );
    for id in ids.iter().filter(|id| !touched.contains(id)) {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "channel {id} was skipped: {seen:?}"
        );
    }

    // Offset paging under the same writes repeats channels: what cursors are for.
    let mut offset_seen = Vec::new();
    for page in 0..6 {
        let (_, body) = app
            .get(&format!("/v1/channels?limit=7&offset={}", page * 7), &key)
            .await;
        offset_seen.extend(
            body["channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_i64().unwrap()),
        );
        // A channel not listed yet sits past this page: moving it to the top shifts the rest.
        let unseen = *ids.iter().find(|id| !offset_seen.contains(id)).unwrap();
        app.message(&key, unseen, "again").await;
    }
    let distinct: HashSet<_> = offset_seen.iter().collect();
    assert!(
        distinct.len() < offset_seen.len(),
        "offset paging repeated nothing"
    );

    // Every order pages completely, each channel once, in the order of the sort.
    let by_name = ids.clone(); // "channel 00" … "channel 39", created in that order
    let mut by_name_desc = ids.clone();
    by_name_desc.reverse();
    for (query, expected) in [
        ("sort=name&limit=6", &by_name),
        ("sort=created_at&order=asc&limit=9", &by_name),
        ("sort=name&order=desc&limit=40", &by_name_desc),
        ("sort=name&order=desc&limit=39", &by_name_desc),
    ] {
        let seen = walk(&app, &key, query, async |_| {}).await;
        assert_eq!(&seen, expected, "{query}");
    }
    let (_, first) = app.get("/v1/channels?sort=name&limit=5", &key).await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let (status, body) = app
        .get(
            &format!("/v1/channels?sort=created_at&cursor={cursor}"),
            &key,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(body["details"], json!({"cursor": ["conflict"]}));
    let (status, body) = app
        .get(&format!("/v1/channels?offset=5&cursor={cursor}"), &key)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        body["details"],
        json!({"cursor": ["conflict"], "offset": ["conflict"]})
    );
    let (_, last) = app.get("/v1/channels?limit=200", &key).await;
    assert_eq!(last["next_cursor"], Value::Null);
    assert_eq!(last["total"], 40);
}
