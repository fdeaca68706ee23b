//! Follows channels over WebSocket and prints every frame, one JSON object per line.
//!
//! ```sh
//! target/debug/examples/follow [--count N] [--timeout SECS] [--detach] <ws-url> <channel>...
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
//! FOLLOWER=$(target/debug/examples/follow --detach "ws://localhost:8080/v1?token=$TOKEN" app_abc/room-1)
//! kill $FOLLOWER
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::{connect_async, tungstenite::Message};

const USAGE: &str =
    "usage: follow [--count N] [--timeout SECS] [--detach] <ws-url-with-credential> <channel>...";
/// Set in the environment of the background follower that `--detach` starts.
const BACKGROUND: &str = "FOLLOW_BACKGROUND";
/// What the background follower tells the command that started it once it is subscribed.
const READY: &str = "ready";
/// How long a background follower lives without `--timeout`.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(600);

type Error = Box<dyn std::error::Error>;

struct Options {
    count: Option<u64>,
    timeout: Option<Duration>,
    detach: bool,
    url: String,
    channels: Vec<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, Error> {
    let mut options = Options {
        count: None,
        timeout: None,
        detach: false,
        url: String::new(),
        channels: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<u64, Error> {
            let value = args.next().ok_or(format!("{flag} needs a number"))?;
            Ok(value
                .parse()
                .map_err(|_| format!("{flag} needs a number, not `{value}`"))?)
        };
        match arg.as_str() {
            "--count" => options.count = Some(number("--count")?),
            "--timeout" => options.timeout = Some(Duration::from_secs(number("--timeout")?)),
            "--detach" => options.detach = true,
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}").into()),
            _ if options.url.is_empty() => options.url = arg,
            _ => options.channels.push(arg),
        }
    }
    if options.url.is_empty() || options.channels.is_empty() {
        return Err(USAGE.into());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let result = parse(std::env::args().skip(1)).and_then(|options| {
        if !options.detach {
            tokio_runtime()?.block_on(follow(options, &mut std::io::stdout(), None))
        } else if std::env::var_os(BACKGROUND).is_some() {
            let options = Options {
                timeout: options.timeout.or(Some(BACKGROUND_TIMEOUT)),
                ..options
            };
            let ready: &mut dyn Write = &mut std::io::stdout();
            tokio_runtime()?.block_on(follow(options, &mut std::io::stderr(), Some(ready)))
        } else {
            detach()
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("follow: {error}");
            ExitCode::FAILURE
        }
    }
}

fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Starts a copy of this program as the background follower and waits until it says it is
/// subscribed. Its frames go to our stderr; its stdout is a pipe to us alone, so a caller reading
/// our stdout (`$(…)`) gets the process id and end-of-file as soon as we exit.
fn detach() -> Result<(), Error> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(BACKGROUND, "1")
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
    options: Options,
    out: &mut impl Write,
    mut ready: Option<&mut dyn Write>,
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
            Err(_) => {
                writeln!(out, "follow: stopping after {} s", timeout.as_secs())?;
                Ok(())
            }
        },
        None => frames.await,
    }
}
