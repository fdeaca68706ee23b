//! `channeld follow`: follows channels over WebSocket and prints every frame, one JSON object
//! per line — the small client the README's live examples use.
//!
//! ```sh
//! target/debug/channeld follow [--count N] [--timeout SECS] [--detach] <ws-url> <channel>...
//! ```
//!
//! `<ws-url>` carries the credential (`ws://localhost:8080/v1?token=…`). `--count N` stops after
//! `N` `message` frames, `--timeout SECS` after that many seconds.
//!
//! `--detach` follows in the background, for shell scripts and pasted commands: it returns once
//! every subscription is live (acknowledged, its presence roster received), prints the
//! background follower's process id on stdout, and the follower goes on printing frames to the
//! terminal (stderr), for at most 10 minutes unless `--timeout` says otherwise:
//!
//! ```sh
//! FOLLOWER=$(target/debug/channeld follow --detach "ws://localhost:8080/v1?token=$TOKEN" app_abc/room-1)
//! kill $FOLLOWER
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::{connect_async, tungstenite::Message};

/// What the background follower tells the command that started it once it is subscribed.
const READY: &str = "ready";
/// How long a background follower lives without `--timeout`.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(600);

type Error = Box<dyn std::error::Error + Send + Sync>;

/// `channeld follow`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    /// Stop after this many `message` frames.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this many seconds (connecting included).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
    /// Follow in the background: return once every subscription is live, printing the
    /// follower's process id; its frames go to stderr.
    #[arg(long)]
    detach: bool,
    /// Set by `--detach` on the background follower it starts.
    #[arg(long, hide = true, requires = "detach")]
    background: bool,
    /// The WebSocket URL with its credential, e.g. `ws://localhost:8080/v1?token=…`.
    url: String,
    /// Realtime channel names to subscribe to (a persistent channel's is its id, e.g. `42`).
    #[arg(required = true)]
    channels: Vec<String>,
}

fn parse_secs(value: &str) -> Result<Duration, String> {
    value
        .parse()
        .map(Duration::from_secs)
        .map_err(|_| format!("needs a whole number of seconds, not `{value}`"))
}

/// Runs `channeld follow`: in the foreground, or detached (see the module documentation).
pub async fn run(args: FollowArgs) -> Result<(), Error> {
    if !args.detach {
        follow(args, &mut std::io::stdout(), None).await
    } else if args.background {
        let args = FollowArgs {
            timeout: args.timeout.or(Some(BACKGROUND_TIMEOUT)),
            ..args
        };
        let ready: &mut (dyn Write + Send) = &mut std::io::stdout();
        follow(args, &mut std::io::stderr(), Some(ready)).await
    } else {
        tokio::task::spawn_blocking(detach).await?
    }
}

/// Starts a copy of this program as the background follower and waits until it says it is
/// subscribed. Its frames go to our stderr; its stdout is a pipe to us alone, so a caller reading
/// our stdout (`$(…)`) gets the process id and end-of-file as soon as we exit.
fn detach() -> Result<(), Error> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .arg("--background")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let said = BufReader::new(child.stdout.take().expect("stdout is piped"))
        .lines()
        .next()
        .transpose()?;
    if said.as_deref() != Some(READY) {
        let status = child.wait()?;
        return Err(format!("the follower stopped before it was subscribed ({status})").into());
    }
    println!("{}", child.id());
    Ok(())
}

/// Subscribes to every channel and prints frames to `out` until the socket closes, `--count`
/// messages arrived or `--timeout` ran out. Once every subscription is live, writes `ready`
/// to `ready`, if given.
async fn follow(
    options: FollowArgs,
    out: &mut (impl Write + Send),
    mut ready: Option<&mut (dyn Write + Send)>,
) -> Result<(), Error> {
    let mut subscribed = false;
    let mut messages = 0;
    // Connecting counts against `--timeout` too: a server that never answers cannot hold us.
    let frames = async {
        let (mut socket, _) = connect_async(options.url.as_str()).await?;
        for (n, channel) in options.channels.iter().enumerate() {
            let subscribe = serde_json::json!({"type": "subscribe", "channel": channel, "requestId": format!("sub-{n}")});
            socket.send(Message::text(subscribe.to_string())).await?;
        }
        // Frames are answered in order: the pong comes after every subscription's ack (or error)
        // and presence roster, so once it is here every subscription is live.
        let ping = serde_json::json!({"type": "ping", "requestId": READY});
        socket.send(Message::text(ping.to_string())).await?;

        while let Some(message) = socket.next().await {
            let text = match message? {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    writeln!(out, "closed: {frame:?}")?;
                    break;
                }
                _ => continue,
            };
            let frame: serde_json::Value = serde_json::from_str(&text)?;
            if frame["type"] == "pong" && frame["requestId"] == READY && !subscribed {
                // The answer to our own ping, not printed.
                subscribed = true;
                if let Some(ready) = ready.take() {
                    writeln!(ready, "{READY}")?;
                    ready.flush()?;
                }
                continue;
            }
            writeln!(out, "{text}")?;
            match frame["type"].as_str() {
                Some("error") if !subscribed => return Err("a subscription was refused".into()),
                Some("message") => {
                    messages += 1;
                    if options.count == Some(messages) {
                        socket.close(None).await?;
                        break;
                    }
                }
                _ => {}
            }
        }
        if !subscribed {
            return Err("the connection closed before every subscription was live".into());
        }
        Ok::<_, Error>(())
    };
    match options.timeout {
        Some(timeout) => match tokio::time::timeout(timeout, frames).await {
            Ok(result) => result,
            Err(_) if !subscribed => Err(format!(
                "not every subscription was live within {} s",
                timeout.as_secs()
            )
            .into()),
            Err(_) => {
                writeln!(out, "follow: stopping after {} s", timeout.as_secs())?;
                Ok(())
            }
        },
        None => frames.await,
    }
}
