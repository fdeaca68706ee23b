//! Posts stored together (`messages::batch`): while an instance's insert statements run, posts
//! to any channels wait and are then stored by one statement. Each poster still gets its own
//! message (or its own channel's error), nothing is stored twice or lost, and history, the
//! channel's count and its last message read as if each post had been stored alone.
//!
//! The statements are made to run long for certain: a transaction of the test's own holds a
//! channel's row, so posts to it wait in PostgreSQL, and the test waits until PostgreSQL shows
//! them waiting and channeld shows the later posts queued.

mod common;

use std::{collections::HashSet, time::Duration};

use channeld::auth::Scope;
use common::{TestApp, assert_error, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

const WITHIN: Duration = Duration::from_secs(10);

/// A server whose posts wait as long as the test holds rows (the default is 100 ms).
async fn patient(db: PgPool) -> TestApp {
    let mut config = common::test_config();
    config.post_batch_wait = WITHIN * 3;
    TestApp::spawn_config(db, config).await
}

/// A metric's value in the scrape, 0 when absent.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// Asserts how many statements stored posts together, and how many of those PostgreSQL refused.
async fn assert_batches(app: &TestApp, batches: f64, failed: f64) {
    assert_eq!(
        (
            metric(app, "channeld_message_batches_total").await,
            metric(app, "channeld_message_batches_failed_total").await,
        ),
        (batches, failed),
        "(statements storing posts together, of them refused)"
    );
}

/// Holds channel `channel`'s row until the returned transaction ends.
async fn hold_row(db: &PgPool, channel: i64) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = db.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM channels WHERE id = $1 FOR UPDATE")
        .bind(channel)
        .execute(&mut *holder)
        .await
        .expect("lock the channel's row");
    holder
}

/// Waits until `count` statements wait in PostgreSQL for a row lock.
async fn until_blocked(db: &PgPool, count: i64) {
    wait_for(WITHIN, "posts waiting for the held row", || async {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND query LIKE '%INSERT INTO messages%'",
        )
        .fetch_one(db)
        .await
        .expect("pg_stat_activity");
        (blocked == count).then_some(())
    })
    .await;
}

/// Holds channel `channel`'s row and posts to it until every statement the instance runs for
/// posts waits on the row in PostgreSQL; returns the holder and those posts.
async fn block_statements(
    app: &TestApp,
    db: &PgPool,
    key: &str,
    channel: i64,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    Vec<tokio::task::JoinHandle<(StatusCode, Value)>>,
) {
    let holder = hold_row(db, channel).await;
    let statements = app.state.posts.statements();
    let blocked = (0..statements)
        .map(|i| {
            post(
                app,
                key,
                channel,
                json!({"content": format!("blocked {i}")}),
            )
        })
        .collect();
    until_blocked(db, statements as i64).await;
    (holder, blocked)
}

async fn until_queued(app: &TestApp, count: usize) {
    wait_for(
        WITHIN,
        "posts queued behind the running statements",
        || async { (metric(app, "channeld_posts_waiting").await == count as f64).then_some(()) },
    )
    .await;
}

fn post(
    app: &TestApp,
    key: &str,
    channel: i64,
    body: Value,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let request = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/channels/{channel}/messages"),
            key,
        )
        .json(&body);
    tokio::spawn(common::call(request))
}

async fn history(app: &TestApp, key: &str, channel: i64) -> Vec<Value> {
    let (status, page) = app
        .get(&format!("/v1/channels/{channel}/messages?limit=100"), key)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut messages = page["messages"].as_array().expect("messages").clone();
    messages.reverse();
    messages
}

#[sqlx::test]
async fn posts_waiting_for_a_statement_are_stored_together_each_answered_with_its_own(db: PgPool) {
    let app = patient(db.clone()).await;
    let key = app.key(&[Scope::ChannelsRead, Scope::ChannelsWrite]).await;
    let hot = app.channel(&key, "hot").await;
    let calm = app.channel(&key, "calm").await;
    let threads = app.channel(&key, "threads").await;
    let archived = app.channel(&key, "archived").await;
    let first = app.message(&key, threads, "a question").await;
    let (status, body) = app
        .put(
            &format!("/v1/channels/{archived}"),
            &key,
            json!({"archived": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Every statement the instance runs for posts waits on the hot channel's row.
    let (holder, blocked) = block_statements(&app, &db, &key, hot).await;

    // These wait in channeld, for one of those statements to finish.
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push((hot, json!({"content": format!("hot {i}")})));
        sent.push((
            calm,
            json!({"content": format!("calm {i}"), "pod_key": "pod-7"}),
        ));
    }
    sent.push((
        threads,
        json!({"content": "an answer", "reply_to": first, "mentions": ["ana", "bo"],
               "metadata": {"kind": "answer"}}),
    ));
    sent.push((
        threads,
        json!({"content": "another thought", "mentions": ["cy"]}),
    ));
    sent.push((archived, json!({"content": "too late"})));
    let queued: Vec<_> = sent
        .iter()
        .map(|(channel, body)| post(&app, &key, *channel, body.clone()))
        .collect();
    until_queued(&app, sent.len()).await;
    let batches_before = metric(&app, "channeld_message_batches_total").await;

    holder.commit().await.expect("release the row");
    for blocked in blocked {
        let (status, body) = blocked.await.expect("answer");
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut ids = HashSet::new();
    let mut stored_at = HashSet::new();
    let mut answered = Vec::new();
    for ((channel, sent), queued) in sent.iter().zip(queued) {
        let (status, body) = queued.await.expect("answer");
        if *channel == archived {
            assert_error(status, &body, StatusCode::CONFLICT, "channel_archived");
            continue;
        }
        assert_eq!(status, StatusCode::CREATED, "{sent} -> {body}");
        let message = &body["message"];
        assert_eq!(message["channel_id"], *channel, "{message}");
        assert_eq!(message["content"], sent["content"], "{message}");
        let agent = sent.get("pod_key").is_some();
        assert_eq!(message["sender_type"], if agent { "agent" } else { "api" });
        assert_eq!(
            message["pod_key"],
            sent.get("pod_key").cloned().unwrap_or(Value::Null)
        );
        assert_eq!(
            message["mentions"],
            sent.get("mentions").cloned().unwrap_or(json!([]))
        );
        assert_eq!(
            message["metadata"],
            sent.get("metadata").cloned().unwrap_or(Value::Null)
        );
        match sent.get("reply_to") {
            Some(answered) => {
                assert_eq!(message["reply_to"], *answered);
                assert_eq!(message["thread_id"], *answered);
            }
            None => assert_eq!(message["thread_id"], message["id"]),
        }
        assert!(
            ids.insert(message["id"].as_i64().unwrap()),
            "ids are distinct"
        );
        stored_at.insert(message["created_at"].as_str().unwrap().to_owned());
        answered.push(message.clone());
    }
    assert_eq!(answered.len(), sent.len() - 1);
    assert_eq!(
        metric(&app, "channeld_message_batches_total").await,
        batches_before + 1.0,
        "the queued posts were stored by one statement"
    );
    assert_eq!(stored_at.len(), 1, "stored together, they share a commit");
    assert_eq!(metric(&app, "channeld_posts_waiting").await, 0.0);

    // History, counts and last messages read as if each had been stored alone.
    for channel in [hot, calm, threads] {
        let mut expected: Vec<&Value> = answered
            .iter()
            .filter(|message| message["channel_id"] == channel)
            .collect();
        expected.sort_by_key(|message| message["id"].as_i64());
        let read = history(&app, &key, channel).await;
        // (A post that was held may have committed before or after them.)
        let theirs: Vec<&Value> = read
            .iter()
            .filter(|m| ids.contains(&m["id"].as_i64().unwrap()))
            .collect();
        assert_eq!(theirs, expected, "channel {channel}");
        let order: Vec<i64> = read.iter().map(|m| m["id"].as_i64().unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        let (status, body) = app.get(&format!("/v1/channels/{channel}"), &key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let found = &body["channel"];
        assert_eq!(found["message_count"], read.len(), "{found}");
        assert_eq!(
            found["last_message"]["id"],
            *order.last().unwrap(),
            "{found}"
        );
    }
    let mentioned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_mentions WHERE channel_id = $1 AND name = ANY('{ana,bo,cy}')",
    )
    .bind(threads)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        mentioned, 3,
        "mentions are recorded for each post stored together"
    );
    let (status, body) = app
        .get(&format!("/v1/channels/{archived}/messages"), &key)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["messages"],
        json!([]),
        "nothing stored on the archived channel"
    );
}

#[sqlx::test]
async fn a_post_that_fails_the_shared_statement_fails_alone(db: PgPool) {
    let app = patient(db.clone()).await;
    let key = app.key(&[Scope::ChannelsRead, Scope::ChannelsWrite]).await;
    let hot = app.channel(&key, "hot").await;
    let calm = app.channel(&key, "calm").await;
    // PostgreSQL refuses one post, as a constraint or a trigger of an operator's could.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.content = 'poison' THEN RAISE EXCEPTION 'poison refused'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse_poison BEFORE INSERT ON messages \
         FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&db)
    .await
    .expect("trigger");

    let (holder, blocked) = block_statements(&app, &db, &key, hot).await;
    let contents = ["fine 1", "poison", "fine 2", "fine 3"];
    let queued: Vec<_> = contents
        .iter()
        .map(|content| post(&app, &key, calm, json!({"content": content})))
        .collect();
    until_queued(&app, contents.len()).await;
    holder.commit().await.expect("release the row");
    for blocked in blocked {
        assert_eq!(blocked.await.unwrap().0, StatusCode::CREATED);
    }

    let mut stored = Vec::new();
    for (content, queued) in contents.iter().zip(queued) {
        let (status, body) = queued.await.expect("answer");
        if *content == "poison" {
            assert_error(
                status,
                &body,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
            );
        } else {
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["message"]["content"], *content);
            stored.push(body["message"].clone());
        }
    }
    // Each of the others is stored once, and the refused one not at all.
    let read = history(&app, &key, calm).await;
    let read_contents: Vec<&str> = read
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = vec!["fine 1", "fine 2", "fine 3"];
    let mut got = read_contents.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "{read_contents:?}");
    assert_batches(&app, 0.0, 1.0).await;
}

/// Two instances under concurrent posters on the same channels, each walking them in its own
/// order: every post is stored once with its own answer, the channels count each once, and no
/// statement storing posts together failed (a deadlock would fail one).
#[sqlx::test]
async fn two_instances_under_concurrent_posters_store_every_post_once(db: PgPool) {
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 25;
    let a = TestApp::spawn(db.clone()).await;
    let b = TestApp::spawn_instance(db.clone(), common::test_config()).await;
    let key = a.key(&[Scope::ChannelsRead, Scope::ChannelsWrite]).await;
    let mut channels = Vec::new();
    for name in ["one", "two", "three", "four"] {
        channels.push(a.channel(&key, name).await);
    }

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let app = if w % 2 == 0 { &a } else { &b };
            let (http, base, key, channels) = (
                app.http.clone(),
                app.base.clone(),
                key.clone(),
                channels.clone(),
            );
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for n in 0..PER_WRITER {
                    // Each writer walks the channels in its own order.
                    let channel = channels[(w + n * (1 + w % 3)) % channels.len()];
                    let response = http
                        .post(format!("{base}/v1/channels/{channel}/messages"))
                        .bearer_auth(&key)
                        .json(&json!({"content": format!("w{w}-{n}")}))
                        .send()
                        .await
                        .expect("answer");
                    assert_eq!(response.status(), StatusCode::CREATED);
                    let body: Value = response.json().await.expect("json");
                    assert_eq!(body["message"]["channel_id"], channel);
                    assert_eq!(body["message"]["content"], format!("w{w}-{n}"));
                    mine.push(body["message"]["id"].as_i64().unwrap());
                }
                mine
            })
        })
        .collect();
    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.expect("writer"));
    }
    assert_eq!(
        written.len(),
        WRITERS * PER_WRITER,
        "every post has an id of its own"
    );

    let mut read = 0;
    for channel in &channels {
        let (status, body) = a.get(&format!("/v1/channels/{channel}"), &key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        read += body["channel"]["message_count"].as_u64().unwrap() as usize;
    }
    assert_eq!(
        read,
        WRITERS * PER_WRITER,
        "the channels count every post once"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored as usize, WRITERS * PER_WRITER);
    for app in [&a, &b] {
        assert_eq!(
            metric(app, "channeld_message_batches_failed_total").await,
            0.0,
            "no statement failed (a deadlock would have failed one)"
        );
    }
}

/// A statement storing posts to two channels, waiting for the first channel's row, holds no lock
/// on the second: rows are locked in id order, so a transaction that holds the first row and
/// then wants the second (or another instance's statement doing the same) is not deadlocked.
#[sqlx::test]
async fn a_statement_waiting_for_one_channel_holds_no_other(db: PgPool) {
    let app = patient(db.clone()).await;
    let key = app.key(&[Scope::ChannelsRead, Scope::ChannelsWrite]).await;
    let low = app.channel(&key, "low").await;
    let high = app.channel(&key, "high").await;
    let busy = app.channel(&key, "busy").await;
    assert!(low < high && high < busy);

    // Every statement for posts waits on the busy channel; then posts to high and low (in that order) queue.
    let (busy_holder, blocked) = block_statements(&app, &db, &key, busy).await;
    let to_high = post(&app, &key, high, json!({"content": "to high"}));
    until_queued(&app, 1).await;
    let to_low = post(&app, &key, low, json!({"content": "to low"}));
    until_queued(&app, 2).await;
    let queued = [to_high, to_low];

    // The low channel is held when the busy one is let go: the statement storing the two queued
    // posts waits for it.
    let mut low_holder = hold_row(&db, low).await;
    busy_holder.commit().await.expect("release busy");
    for blocked in blocked {
        assert_eq!(blocked.await.unwrap().0, StatusCode::CREATED);
    }
    wait_for(
        WITHIN,
        "the shared statement waiting for the low row",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND query LIKE '%unnest%FOR UPDATE%'",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            (waiting == 1).then_some(())
        },
    )
    .await;
    // The high row is free: the waiting statement has not locked it ahead of the low one.
    let high_free = sqlx::query("SELECT 1 FROM channels WHERE id = $1 FOR UPDATE NOWAIT")
        .bind(high)
        .execute(&mut *low_holder)
        .await;
    assert!(high_free.is_ok(), "the high row is held: {high_free:?}");
    low_holder.commit().await.expect("release low");

    for (queued, (channel, content)) in queued.into_iter().zip([(high, "to high"), (low, "to low")])
    {
        let (status, body) = queued.await.expect("answer");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["message"]["channel_id"], channel);
        assert_eq!(body["message"]["content"], content);
    }
    assert_batches(&app, 1.0, 0.0).await;
}

/// A post to one channel is not held up for long by another channel's row: with all of the
/// instance's statements waiting for a row another transaction holds, a post to a free channel
/// waits its 100 ms and is then stored alone, while the row is still held.
#[sqlx::test]
async fn a_held_channel_row_holds_up_posts_to_other_channels_only_briefly(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let key = app.key(&[Scope::ChannelsRead, Scope::ChannelsWrite]).await;
    let held = app.channel(&key, "held").await;
    let free = app.channel(&key, "free").await;
    let (holder, blocked) = block_statements(&app, &db, &key, held).await;

    let (status, body) = app
        .post(
            &format!("/v1/channels/{free}/messages"),
            &key,
            json!({"content": "not held up"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["message"]["channel_id"], free);
    assert_eq!(metric(&app, "channeld_posts_waited_out_total").await, 1.0);
    assert!(
        blocked.iter().all(|post| !post.is_finished()),
        "the posts to the held channel still wait"
    );

    holder.commit().await.expect("release the row");
    for blocked in blocked {
        assert_eq!(blocked.await.unwrap().0, StatusCode::CREATED);
    }
    assert_eq!(history(&app, &key, free).await.len(), 1);
}

/// `serve`'s arguments as the binary parses them, or clap's complaint.
fn serve_args(extra: &[&str]) -> Result<channeld::config::ServeArgs, String> {
    use clap::Parser;
    let master = channeld::auth::MasterKey::generate().to_hex();
    let args = ["channeld", "serve", "--database-url", "postgres://unused"]
        .into_iter()
        .chain(["--master-key", &master])
        .chain(extra.iter().copied());
    match channeld::config::Cli::try_parse_from(args).map_err(|e| e.to_string())? {
        channeld::config::Cli {
            command: channeld::config::Command::Serve(args),
            ..
        } => Ok(args),
        _ => unreachable!("serve was asked for"),
    }
}

#[sqlx::test]
async fn post_statements_sets_how_many_statements_store_posts_at_once(db: PgPool) {
    // Two by default; zero is refused; any other number within half the pool is kept.
    let default = channeld::config::Config::from(&serve_args(&[]).unwrap());
    assert_eq!(default.post_statements, 2);
    let refused = serve_args(&["--post-statements", "0"]).unwrap_err();
    assert!(refused.contains("--post-statements"), "{refused}");
    let mut config =
        channeld::config::Config::from(&serve_args(&["--post-statements", "3"]).unwrap());
    assert_eq!(config.post_statements, 3);

    // A server told 3 (with a pool of 8) runs three statements at once: with all three waiting
    // on a held row in PostgreSQL, the next post waits in channeld, not in a fourth statement.
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with((*db.connect_options()).clone())
        .await
        .expect("a pool of 8");
    config.post_batch_wait = WITHIN * 3;
    let app = TestApp::spawn_config(db.clone(), config).await;
    assert_eq!(app.state.posts.statements(), 3);
    let key = app.key(&[Scope::ChannelsRead, Scope::ChannelsWrite]).await;
    let hot = app.channel(&key, "hot").await;
    let (holder, blocked) = block_statements(&app, &db, &key, hot).await;
    let queued = post(&app, &key, hot, json!({"content": "the fourth"}));
    until_queued(&app, 1).await;
    until_blocked(&db, 3).await;
    holder.commit().await.expect("release the row");
    for answer in blocked.into_iter().chain([queued]) {
        let (status, body) = answer.await.expect("answer");
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(history(&app, &key, hot).await.len(), 4);

    // Never more than half the pool: the rest is left to reads.
    let mut greedy = common::test_config();
    greedy.post_statements = 8;
    let app = TestApp::spawn_config(db, greedy).await;
    assert_eq!(app.state.posts.statements(), 4);
}
