//! `/v1/channels` and `/v1/channels/{id}`: shapes, filters, paging, updates and their errors.

mod common;

use common::{TestApp, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

fn keys_of(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[sqlx::test]
async fn creating_and_reading_a_channel_returns_every_field(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let (status, body) = app
        .post(
            "/v1/channels",
            &key,
            json!({
                "name": "  AM-123 rollout  ",
                "description": "Coordinating the rollout",
                "repository_id": 42,
                "ticket_slug": "AM-123",
                "document": "# Plan\n1. ship",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let channel = &body["channel"];
    assert_eq!(
        keys_of(channel),
        [
            "archived",
            "created_at",
            "description",
            "document",
            "id",
            "last_message",
            "message_count",
            "name",
            "repository_id",
            "ticket_slug",
            "updated_at"
        ]
    );
    assert_eq!(
        channel["name"], "AM-123 rollout",
        "names are stored trimmed"
    );
    assert_eq!(channel["description"], "Coordinating the rollout");
    assert_eq!(channel["repository_id"], 42);
    assert_eq!(channel["ticket_slug"], "AM-123");
    assert_eq!(channel["document"], "# Plan\n1. ship");
    assert_eq!(channel["archived"], false);
    let created_at = channel["created_at"].as_str().expect("created_at");
    assert!(created_at.ends_with('Z'), "RFC 3339 UTC: {created_at}");
    chrono::DateTime::parse_from_rfc3339(created_at).expect("RFC 3339");

    let id = channel["id"].as_i64().expect("id");
    let (status, fetched) = app.get(&format!("/v1/channels/{id}"), &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, body, "GET returns what POST returned");

    let (_, minimal) = app
        .post("/v1/channels", &key, json!({"name": "bare"}))
        .await;
    for field in ["description", "repository_id", "ticket_slug", "document"] {
        assert_eq!(
            minimal["channel"][field],
            Value::Null,
            "{field} defaults to null"
        );
    }
}

#[sqlx::test]
async fn list_omits_documents_filters_and_counts_all_matches(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    for (name, repo, slug) in [("a-1", 1, "AM-1"), ("a-2", 1, "AM-2"), ("b-1", 2, "AM-1")] {
        let body =
            json!({"name": name, "repository_id": repo, "ticket_slug": slug, "document": "big"});
        assert_eq!(
            app.post("/v1/channels", &key, body).await.0,
            StatusCode::CREATED
        );
    }

    let (status, all) = app.get("/v1/channels", &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys_of(&all), ["channels", "next_cursor", "total"]);
    assert_eq!(all["total"], 3);
    for entry in all["channels"].as_array().expect("array") {
        assert!(
            entry.get("document").is_none(),
            "list entries omit document: {entry}"
        );
    }

    let names = |body: &Value| -> Vec<String> {
        body["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, by_repo) = app.get("/v1/channels?repository_id=1", &key).await;
    assert_eq!(names(&by_repo), ["a-2", "a-1"], "newest activity first");
    assert_eq!(by_repo["total"], 2);
    let (_, by_slug) = app.get("/v1/channels?ticket_slug=AM-1", &key).await;
    assert_eq!(names(&by_slug), ["b-1", "a-1"]);
    let (_, both) = app
        .get("/v1/channels?repository_id=2&ticket_slug=AM-1", &key)
        .await;
    assert_eq!(names(&both), ["b-1"]);

    let (_, page) = app.get("/v1/channels?limit=2&offset=1", &key).await;
    assert_eq!(names(&page), ["a-2", "a-1"]);
    assert_eq!(page["total"], 3, "total ignores paging");
    let (_, past_end) = app.get("/v1/channels?offset=10", &key).await;
    assert_eq!(past_end["channels"], json!([]));
    assert_eq!(past_end["total"], 3);
}

#[sqlx::test]
async fn posting_a_message_moves_the_channel_to_the_top(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let older = app.channel(&key, "older").await;
    app.channel(&key, "newer").await;
    let (_, before) = app.get("/v1/channels", &key).await;
    assert_eq!(before["channels"][0]["name"], "newer");

    app.message(&key, older, "bump").await;
    let (_, after) = app.get("/v1/channels", &key).await;
    assert_eq!(after["channels"][0]["name"], "older");
    let (_, channel) = app.get(&format!("/v1/channels/{older}"), &key).await;
    assert!(
        channel["channel"]["updated_at"].as_str() > channel["channel"]["created_at"].as_str(),
        "updated_at moves: {channel}"
    );
}

#[sqlx::test]
async fn archived_channels_are_hidden_unless_asked_for_and_free_their_name(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let id = app.channel(&key, "release").await;

    let (status, body) = app
        .post("/v1/channels", &key, json!({"name": "release"}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "channel_name_taken");

    let (status, body) = app
        .put(
            &format!("/v1/channels/{id}"),
            &key,
            json!({"archived": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["channel"]["archived"], true);

    let (_, listed) = app.get("/v1/channels", &key).await;
    assert_eq!(listed["total"], 0);
    let (_, with_archived) = app.get("/v1/channels?include_archived=true", &key).await;
    assert_eq!(with_archived["total"], 1);

    let (status, body) = app
        .post(
            &format!("/v1/channels/{id}/messages"),
            &key,
            json!({"content": "late"}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "channel_archived");

    let replacement = app.channel(&key, "release").await;
    assert_ne!(replacement, id, "an archived channel's name is free again");
    let (status, body) = app
        .put(
            &format!("/v1/channels/{id}"),
            &key,
            json!({"archived": false}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "channel_name_taken");
    let (_, unchanged) = app.get(&format!("/v1/channels/{id}"), &key).await;
    assert_eq!(
        unchanged["channel"]["archived"], true,
        "the failed unarchive stored nothing"
    );
}

#[sqlx::test]
async fn put_changes_only_present_fields_and_null_clears(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let (_, created) = app
        .post(
            "/v1/channels",
            &key,
            json!({"name": "doc", "description": "first", "document": "v1", "repository_id": 7, "ticket_slug": "T-1"}),
        )
        .await;
    let id = created["channel"]["id"].as_i64().unwrap();
    let path = format!("/v1/channels/{id}");

    let (status, body) = app.put(&path, &key, json!({"document": "v2"})).await;
    assert_eq!(status, StatusCode::OK);
    let channel = &body["channel"];
    assert_eq!(channel["document"], "v2");
    assert_eq!(
        channel["description"], "first",
        "absent fields keep their value"
    );
    assert_eq!(channel["name"], "doc");
    assert_eq!(channel["repository_id"], 7);

    let (_, body) = app
        .put(
            &path,
            &key,
            json!({"description": null, "name": " renamed "}),
        )
        .await;
    assert_eq!(body["channel"]["description"], Value::Null, "null clears");
    assert_eq!(body["channel"]["name"], "renamed");
    assert_eq!(body["channel"]["document"], "v2");

    let (status, body) = app.put(&path, &key, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["channel"]["name"], "renamed",
        "an empty update changes nothing"
    );

    let (_, other) = app
        .post("/v1/channels", &key, json!({"name": "taken"}))
        .await;
    assert!(other["channel"]["id"].is_i64());
    let (status, body) = app.put(&path, &key, json!({"name": "taken"})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "channel_name_taken");
}

#[sqlx::test]
async fn invalid_channel_bodies_name_the_field(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let id = app.channel(&key, "target").await;
    let cases = [
        ("POST", json!({}), "name", "required"),
        ("POST", json!({"name": "x"}), "name", "length"),
        ("POST", json!({"name": "   y   "}), "name", "length"),
        ("POST", json!({"name": "n".repeat(101)}), "name", "length"),
        (
            "POST",
            json!({"name": "bad\u{0}name"}),
            "name",
            "control_characters",
        ),
        ("POST", json!({"name": 12}), "name", "type"),
        (
            "POST",
            json!({"name": "ok", "description": "d".repeat(1001)}),
            "description",
            "length",
        ),
        (
            "POST",
            json!({"name": "ok", "repository_id": -3}),
            "repository_id",
            "range",
        ),
        (
            "POST",
            json!({"name": "ok", "repository_id": "3"}),
            "repository_id",
            "type",
        ),
        (
            "POST",
            json!({"name": "ok", "ticket_slug": "AM 1"}),
            "ticket_slug",
            "format",
        ),
        (
            "POST",
            json!({"name": "ok", "ticket_slug": "A".repeat(65)}),
            "ticket_slug",
            "format",
        ),
        (
            "POST",
            json!({"name": "ok", "document": "d".repeat(512 * 1024 + 1)}),
            "document",
            "length",
        ),
        (
            "POST",
            json!({"name": "ok", "colour": "red"}),
            "colour",
            "unknown_field",
        ),
        ("PUT", json!({"name": null}), "name", "type"),
        ("PUT", json!({"archived": "yes"}), "archived", "type"),
        ("PUT", json!({"archived": null}), "archived", "type"),
        (
            "PUT",
            json!({"repository_id": 5}),
            "repository_id",
            "unknown_field",
        ),
        (
            "PUT",
            json!({"description": "d".repeat(1001)}),
            "description",
            "length",
        ),
        (
            "PUT",
            json!({"description": "a\u{0}b"}),
            "description",
            "null_character",
        ),
        (
            "POST",
            json!({"name": "ok", "document": "a\u{0}b"}),
            "document",
            "null_character",
        ),
    ];
    for (method, body, field, code) in cases {
        let (status, response) = if method == "POST" {
            app.post("/v1/channels", &key, body.clone()).await
        } else {
            app.put(&format!("/v1/channels/{id}"), &key, body.clone())
                .await
        };
        assert_error(
            status,
            &response,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
        assert_eq!(
            response["details"],
            json!({field: [code]}),
            "{method} {field}/{code}: {response}"
        );
    }
    let (_, unchanged) = app.get(&format!("/v1/channels/{id}"), &key).await;
    assert_eq!(
        unchanged["channel"]["name"], "target",
        "rejected updates stored nothing"
    );
}

#[sqlx::test]
async fn malformed_json_is_an_invalid_request(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    for raw in ["", "{", "not json", "[]", "{\"name\": \"ab\"} extra"] {
        let response = app
            .request(reqwest::Method::POST, "/v1/channels", &key)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = common::json_body(response).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[sqlx::test]
async fn bad_list_parameters_are_rejected_not_clamped(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let cases = [
        ("limit=0", "limit", "range"),
        ("limit=201", "limit", "range"),
        ("limit=ten", "limit", "type"),
        ("offset=-1", "offset", "range"),
        ("repository_id=0", "repository_id", "range"),
        ("repository_id=abc", "repository_id", "type"),
        ("include_archived=yes", "include_archived", "type"),
        ("ticket_slug=has%20space", "ticket_slug", "format"),
    ];
    for (query, field, code) in cases {
        let (status, body) = app.get(&format!("/v1/channels?{query}"), &key).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(body["details"], json!({field: [code]}), "{query}");
    }
    // The message says what is allowed.
    let (_, body) = app.get("/v1/channels?limit=1000", &key).await;
    assert_eq!(
        body["message"],
        "limit must be an integer from 1 to 200 (got 1000)"
    );
    let (_, body) = app.get("/v1/channels?limit=ten&offset=-1", &key).await;
    assert_eq!(
        body["message"],
        "limit must be an integer from 1 to 200 (got `ten`); offset must be an integer of at least 0 (got -1)"
    );
    let (status, body) = app
        .get(
            "/v1/channels?limit=200&offset=0&include_archived=false",
            &key,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[sqlx::test]
async fn unknown_ids_are_404_and_malformed_ids_400(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let cases = [
        ("999999", StatusCode::NOT_FOUND, None),
        ("abc", StatusCode::BAD_REQUEST, Some("type")),
        ("-1", StatusCode::BAD_REQUEST, Some("type")),
        ("1.5", StatusCode::BAD_REQUEST, Some("type")),
        ("%FF", StatusCode::BAD_REQUEST, Some("type")),
        ("0", StatusCode::BAD_REQUEST, Some("format")),
        ("042", StatusCode::BAD_REQUEST, Some("format")),
        (
            "99999999999999999999999",
            StatusCode::BAD_REQUEST,
            Some("range"),
        ),
    ];
    for (id, expected, detail) in cases {
        let calls = [
            app.get(&format!("/v1/channels/{id}"), &key).await,
            app.get(&format!("/v1/channels/{id}/messages"), &key).await,
            app.put(
                &format!("/v1/channels/{id}"),
                &key,
                json!({"description": "x"}),
            )
            .await,
            app.post(
                &format!("/v1/channels/{id}/messages"),
                &key,
                json!({"content": "x"}),
            )
            .await,
        ];
        for (status, body) in calls {
            match detail {
                None => assert_error(status, &body, expected, "not_found"),
                Some(code) => {
                    assert_error(status, &body, expected, "invalid_request");
                    assert_eq!(body["details"], json!({"id": [code]}), "{id}");
                    assert!(
                        body["message"]
                            .as_str()
                            .unwrap()
                            .contains("channel ids are"),
                        "{id}: {body}"
                    );
                }
            }
        }
    }
    let (_, body) = app.get("/v1/channels/abc", &key).await;
    assert_eq!(
        body["message"],
        "channel ids are positive integers such as 42 (got `abc`); realtime channel names go to \
         /v1/channels/{channel}/peers and /publish"
    );
}

/// `total` of the unfiltered list comes from counts a trigger keeps (constant time on any number
/// of channels): it must match a count of the rows through creation at once, archiving,
/// unarchiving, another app's channels, past-the-end pages and every sort.
#[sqlx::test]
async fn the_lists_total_is_exact_through_creation_archiving_and_apps(db: PgPool) {
    use channeld::{apps::Quotas, auth::Scope};

    let app = TestApp::spawn(db.clone()).await;
    let key = app.writer().await;
    let other_app = app.app("other", Quotas::default()).await;
    let other = app
        .app_key(other_app, &[Scope::ChannelsRead, Scope::ChannelsWrite], &[])
        .await;
    let created: Vec<_> = (0..24)
        .map(|n| {
            let (http, base, key) = (app.http.clone(), app.base.clone(), key.clone());
            tokio::spawn(async move {
                let (status, body) = common::call(
                    http.post(format!("{base}/v1/channels"))
                        .bearer_auth(&key)
                        .json(&json!({"name": format!("at once {n}")})),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                body["channel"]["id"].as_i64().unwrap()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in created {
        ids.push(task.await.unwrap());
    }
    for n in 0..3 {
        app.channel(&other, &format!("theirs {n}")).await;
    }
    for id in &ids[..5] {
        let (status, _) = app
            .put(
                &format!("/v1/channels/{id}"),
                &key,
                json!({"archived": true}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = app
        .put(
            &format!("/v1/channels/{}", ids[0]),
            &key,
            json!({"archived": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let rows = |archived: Option<bool>| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM channels WHERE app_id = 1 AND ($1::boolean IS NULL OR archived = $1)",
            )
            .bind(archived)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let cases = [
        ("", rows(Some(false)).await, 20),
        ("archived=true", rows(Some(true)).await, 4),
        ("include_archived=true", rows(None).await, 24),
    ];
    for (query, counted, expected) in cases {
        assert_eq!(counted, expected, "{query}: the rows themselves");
        for page in [
            "limit=5",
            "limit=5&offset=500",
            "limit=5&sort=name",
            "limit=5&sort=created_at&order=asc",
        ] {
            let (status, listed) = app.get(&format!("/v1/channels?{query}&{page}"), &key).await;
            assert_eq!(status, StatusCode::OK, "{listed}");
            assert_eq!(listed["total"], expected, "{query}&{page}: {listed}");
        }
    }
    let (_, theirs) = app.get("/v1/channels", &other).await;
    assert_eq!(theirs["total"], 3, "{theirs}");
    // A filter still counts the matching rows.
    let (_, named) = app.get("/v1/channels?q=at%20once%201", &key).await;
    assert_eq!(named["total"], 10, "at once 1 and 10-19, active: {named}");

    // The unfiltered total is read from the kept counts, not from the rows: skewing a count
    // shows in it (and not in a filtered list's).
    sqlx::query("UPDATE channel_counts SET count = count + 1000 WHERE app_id = 1 AND NOT archived AND shard = 0")
        .execute(&db)
        .await
        .unwrap();
    let (_, skewed) = app.get("/v1/channels", &key).await;
    assert_eq!(skewed["total"], 1020, "{skewed}");
    let (_, named) = app.get("/v1/channels?q=at%20once%201", &key).await;
    assert_eq!(named["total"], 10, "{named}");
}

/// Archiving one channel while unarchiving another of the same count shard, 40 times at once:
/// each moves between the same two count rows in opposite directions. Every request succeeds and
/// the total stays exact. (The trigger touches the two rows in key order, which is what rules out
/// a deadlock; this run does not force the interleaving that would show one.)
#[sqlx::test]
async fn archiving_and_unarchiving_at_once_never_fail(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let mut ids = Vec::new();
    for n in 0..17 {
        ids.push(app.channel(&key, &format!("shard {n}")).await);
    }
    // Two channels whose ids fall in the same shard (ids % 16), 17 apart at most.
    let (x, y) = ids
        .iter()
        .flat_map(|a| ids.iter().map(move |b| (*a, *b)))
        .find(|(a, b)| a < b && a % 16 == b % 16)
        .expect("two of 17 ids share a shard");
    let set = |id: i64, archived: bool| {
        let (http, base, key) = (app.http.clone(), app.base.clone(), key.clone());
        tokio::spawn(async move {
            common::call(
                http.put(format!("{base}/v1/channels/{id}"))
                    .bearer_auth(&key)
                    .json(&json!({"archived": archived})),
            )
            .await
        })
    };
    for round in 0..40 {
        let archived = round % 2 == 0;
        let (a, b) = (set(x, archived), set(y, !archived));
        for task in [a, b] {
            let (status, body) = task.await.unwrap();
            assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        }
        let (_, active) = app.get("/v1/channels?limit=1", &key).await;
        assert_eq!(active["total"], 16, "round {round}: {active}");
    }
}

/// A channel id written percent-encoded in the path is decoded first, and names the same channel
/// as the id written plainly, for reads and for posts.
#[sqlx::test]
async fn a_percent_encoded_id_names_the_same_channel(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let key = app.writer().await;
    let id = app.channel(&key, "encoded").await;
    let encoded: String = id
        .to_string()
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let (status, plain) = app.get(&format!("/v1/channels/{id}"), &key).await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    let (status, decoded) = app.get(&format!("/v1/channels/{encoded}"), &key).await;
    assert_eq!(status, StatusCode::OK, "{decoded}");
    assert_eq!(decoded["channel"]["name"], "encoded");
    assert_eq!(decoded["channel"]["id"], plain["channel"]["id"]);
    let (status, body) = app
        .post(
            &format!("/v1/channels/{encoded}/messages"),
            &key,
            json!({"content": "through the encoded id"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["message"]["channel_id"], id);
}
