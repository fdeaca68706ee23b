//! Posts stored together: group commit for `POST …/messages` and MCP's `post_message`.
//!
//! Each post is one statement and one commit, and a commit waits for PostgreSQL to flush its
//! write-ahead log; posts to one channel also take turns on the channel's row. So an instance
//! runs at most `--post-statements` (2 by default, and never more than half of
//! `--db-max-connections`) statements storing posts at once: as many as the database has cores
//! to run them, rather than a statement per poster. A post that arrives while they all run
//! waits, and when one of them finishes, the waiting posts (to any channels, up to
//! [`MAX_POSTS`] and [`MAX_BYTES`]) are stored by one statement, run by the first of them: one
//! commit, one flush, and one update of each channel's row for all of them. A post that finds a
//! statement free runs at once, alone, exactly as it would without this: a lone client waits for
//! nothing.
//!
//! A post waits at most `post_batch_wait` (100 ms). Statements take a millisecond or so; one that
//! takes longer is held up (most likely by a channel row another transaction holds), and the
//! posts behind it, to other channels, should not wait for that: past the wait they are stored
//! alone, each in a statement of its own, as without batching. With few statements, two posts to
//! a channel whose row is held can occupy both: the wait bounds what that costs the others.
//!
//! What a poster sees does not change. Each post is answered with its own stored message (or
//! 404/409 for its own channel), after its commit. The ordering guarantee holds: the statement
//! locks the channels' rows (in id order, so two instances' statements cannot deadlock) before it
//! draws the ids. Posts stored together share a `created_at`, the time their statement began.
//!
//! If PostgreSQL refuses the shared statement (its own error, which commits nothing, and not one
//! that says the database is unavailable), each of its posts is stored alone, so that one post
//! cannot fail the others. Any other error is every post's answer (503): a lost connection leaves
//! unknown whether the statement committed, and storing again could store twice; an unavailable
//! database or pool would refuse each of them too. Posts with an idempotency key are stored alone:
//! their statement finds an earlier post by key.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::oneshot;

use super::{db, model::Message};

/// Posts one statement stores at most.
pub const MAX_POSTS: usize = 64;
/// Bytes of content and metadata one statement stores at most (more than one post's maximum).
const MAX_BYTES: usize = 1 << 20;

pub use super::db::Post;

/// What a post adds to a statement, counting metadata at its largest (16 KiB encoded) rather
/// than encoding it to measure.
fn size(post: &Post) -> usize {
    post.content.len() + post.metadata.as_ref().map_or(0, |_| 16 * 1024)
}

/// The instance's statements storing posts, and the posts waiting for one.
pub struct Posts {
    queue: Mutex<Queue>,
    statements: usize,
    wait: Duration,
    /// Statements that stored two or more posts.
    pub batches: AtomicU64,
    /// Posts stored by such statements.
    pub batched: AtomicU64,
    /// Such statements that PostgreSQL refused (their posts were stored alone).
    pub failed: AtomicU64,
    /// Posts that waited their whole wait and were stored alone.
    pub waited_out: AtomicU64,
}

#[derive(Default)]
struct Queue {
    running: usize,
    waiting: VecDeque<Waiting>,
    tickets: u64,
}

struct Waiting {
    ticket: u64,
    post: Post,
    turn: oneshot::Sender<Turn>,
}

/// What a waiting post is told when a statement finishes.
enum Turn {
    /// Stored by another post's statement (`None`: its channel is missing or archived).
    Stored(Option<Message>),
    /// Run the next statement, in the place `Running` holds: this post and the others.
    Lead(Post, Vec<Waiting>, Running),
    /// PostgreSQL refused the shared statement: store it alone.
    Alone(Post),
    /// The shared statement's answer was lost, or it could not run.
    Failed(String),
}

impl Posts {
    /// `statements`: how many statements storing posts run at once (at least 1); `wait`: how
    /// long a post waits for one of them to finish before it is stored alone.
    pub fn new(statements: usize, wait: Duration) -> Self {
        Self {
            queue: Mutex::default(),
            statements: statements.max(1),
            wait,
            batches: AtomicU64::new(0),
            batched: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            waited_out: AtomicU64::new(0),
        }
    }

    /// Stores `post` and returns its message, or `None` if its channel is missing or archived.
    pub async fn store(
        self: &Arc<Self>,
        db: &PgPool,
        post: Post,
    ) -> Result<Option<Message>, sqlx::Error> {
        let waiting = {
            let mut queue = self.lock();
            if queue.running < self.statements {
                queue.running += 1;
                Ok(post)
            } else {
                let (turn, told) = oneshot::channel();
                queue.tickets += 1;
                let ticket = queue.tickets;
                queue.waiting.push_back(Waiting { ticket, post, turn });
                Err((ticket, told))
            }
        };
        let (post, others, running) = match waiting {
            // The place is released however this ends (a panic included).
            Ok(post) => (post, Vec::new(), Running(Some(self.clone()))),
            Err((ticket, mut told)) => {
                let turn = match tokio::time::timeout(self.wait, &mut told).await {
                    Ok(turn) => turn,
                    Err(_) => match self.leave(ticket) {
                        // No statement finished in time: stored alone, as without batching.
                        Some(post) => {
                            self.waited_out.fetch_add(1, Ordering::Relaxed);
                            return post.insert(db, None).await;
                        }
                        // Taken by a statement just now: its answer is coming.
                        None => told.await,
                    },
                };
                match turn {
                    Ok(Turn::Stored(message)) => return Ok(message),
                    Ok(Turn::Lead(post, others, running)) => (post, others, running),
                    Ok(Turn::Alone(post)) => return post.insert(db, None).await,
                    Ok(Turn::Failed(error)) => return Err(failed(error)),
                    // The statement that was to store it ended without a word: the runtime is
                    // shutting down, or it panicked.
                    Err(_) => return Err(sqlx::Error::PoolClosed),
                }
            }
        };
        let stored = self.run(db, post, others).await;
        drop(running);
        stored
    }

    /// How many statements storing posts run at once.
    pub fn statements(&self) -> usize {
        self.statements
    }

    /// Posts waiting for a statement to finish.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    async fn run(
        &self,
        db: &PgPool,
        post: Post,
        others: Vec<Waiting>,
    ) -> Result<Option<Message>, sqlx::Error> {
        if others.is_empty() {
            return post.insert(db, None).await;
        }
        let posts: Vec<&Post> = std::iter::once(&post)
            .chain(others.iter().map(|waiting| &waiting.post))
            .collect();
        match db::insert_many(db, &posts).await {
            Ok(stored) => {
                self.batches.fetch_add(1, Ordering::Relaxed);
                let count = stored.iter().filter(|message| message.is_some()).count();
                self.batched.fetch_add(count as u64, Ordering::Relaxed);
                let mut stored = stored.into_iter();
                let own = stored.next().flatten();
                for (waiting, message) in others.into_iter().zip(stored) {
                    let _ = waiting.turn.send(Turn::Stored(message));
                }
                Ok(own)
            }
            Err(error)
                if error.as_database_error().is_some() && !crate::error::is_unavailable(&error) =>
            {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %error,
                    posts = posts.len(),
                    "posts stored together were refused; each is stored alone"
                );
                for Waiting { post, turn, .. } in others {
                    let _ = turn.send(Turn::Alone(post));
                }
                post.insert(db, None).await
            }
            Err(error) => {
                let text = error.to_string();
                for waiting in others {
                    let _ = waiting.turn.send(Turn::Failed(text.clone()));
                }
                Err(error)
            }
        }
    }

    /// Takes the post with `ticket` out of the queue, unless a statement took it already.
    fn leave(&self, ticket: u64) -> Option<Post> {
        let mut queue = self.lock();
        let at = queue.waiting.iter().position(|w| w.ticket == ticket)?;
        queue.waiting.remove(at).map(|waiting| waiting.post)
    }

    /// A statement finished (its [`Running`] was dropped): the waiting posts (as many as one
    /// statement stores) go to the first of them to run, with the statement's place, or the
    /// place is free.
    fn finished(self: &Arc<Self>) {
        let mut queue = self.lock();
        while let Some(first) = queue.waiting.pop_front() {
            let mut bytes = size(&first.post);
            let mut others = Vec::new();
            while others.len() + 1 < MAX_POSTS
                && let Some(next) = queue.waiting.front()
                && bytes + size(&next.post) <= MAX_BYTES
            {
                bytes += size(&next.post);
                others.extend(queue.waiting.pop_front());
            }
            let place = Running(Some(self.clone()));
            match first.turn.send(Turn::Lead(first.post, others, place)) {
                Ok(()) => return,
                // Its poster is gone (the runtime is shutting down): the next one leads.
                Err(Turn::Lead(_, others, place)) => {
                    // The place is still this statement's, to pass on in this loop.
                    place.keep();
                    for waiting in others.into_iter().rev() {
                        queue.waiting.push_front(waiting);
                    }
                }
                Err(_) => unreachable!("a turn comes back as it was sent"),
            }
        }
        queue.running -= 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A place among the statements: passed on (or freed) when dropped, wherever that happens,
/// even inside a [`Turn::Lead`] its poster never read.
struct Running(Option<Arc<Posts>>);

impl Running {
    /// Dropped without passing the place on: the caller does.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(posts) = self.0.take() {
            posts.finished();
        }
    }
}

/// The error of a shared statement whose answer was lost, for each of its other posts: a
/// connection error, answered 503 like the statement's own.
fn failed(error: String) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(format!(
        "storing posts together: {error}"
    )))
}
