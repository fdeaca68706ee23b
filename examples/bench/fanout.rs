//! WebSocket fan-out: one publisher, many subscribers, the same workload for channeld and for a
//! Pusher-protocol server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::{io::AsyncReadExt, sync::watch};
use tokio_tungstenite::{MaybeTlsStream, tungstenite::Message};

use crate::{
    realtime::{Server, Socket, open_many},
    stats::{CpuShare, CpuWindow, Figures, Spread, epoch_micros, wait_quiet},
};

/// What a fan-out run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanOut {
    pub server: &'static str,
    pub subscribers: usize,
    pub publish_rate: u64,
    pub published: u64,
    pub deliveries: Figures,
    /// Messages that subscribers still connected at the end never received.
    pub lost: u64,
    /// Subscribers the server disconnected during the run.
    pub disconnected: usize,
    /// From the first publish to the last delivery: the window `deliveries.per_sec` is over.
    pub arrival_seconds: f64,
    pub cpu: CpuShare,
    /// The server's CPU time per delivered frame, in microseconds.
    pub server_cpu_us_per_delivery: f64,
}

impl FanOut {
    /// Sustained: nothing lost, nobody dropped, p99 within 100 ms, and the publisher kept to
    /// 95% of the offered rate.
    pub fn sustained(&self, seconds: u64) -> bool {
        self.lost == 0
            && self.disconnected == 0
            && self.deliveries.p99_ms <= 100.0
            && self.published as f64 >= 0.95 * (self.publish_rate * seconds) as f64
    }
}

/// Fan-out runs of one server at one load, repeated: medians with their min-max.
#[derive(Debug, Clone, Serialize)]
pub struct Repeated {
    pub server: &'static str,
    /// What the load is: "equal load", "own maximum", or a cluster placement.
    pub load: &'static str,
    pub subscribers: usize,
    pub publish_rate: u64,
    pub deliveries_per_sec: Spread,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub server_cpu_us_per_delivery: Spread,
    pub lost: u64,
    pub disconnected: usize,
    pub runs: Vec<FanOut>,
}

impl Repeated {
    pub fn of(load: &'static str, runs: Vec<FanOut>) -> Self {
        Self {
            server: runs[0].server,
            load,
            subscribers: runs[0].subscribers,
            publish_rate: runs[0].publish_rate,
            deliveries_per_sec: Spread::of(runs.iter().map(|r| r.deliveries.per_sec)),
            p50_ms: Spread::of(runs.iter().map(|r| r.deliveries.p50_ms)),
            p99_ms: Spread::of(runs.iter().map(|r| r.deliveries.p99_ms)),
            server_cpu_us_per_delivery: Spread::of(
                runs.iter().map(|r| r.server_cpu_us_per_delivery),
            ),
            lost: runs.iter().map(|r| r.lost).sum(),
            disconnected: runs.iter().map(|r| r.disconnected).sum(),
            runs,
        }
    }
}

/// The steps of a search for a server's maximum sustainable publish rate.
#[derive(Debug, Clone, Serialize)]
pub struct Ladder {
    pub server: &'static str,
    pub subscribers: usize,
    /// The highest rate sustained; 0 when even the first step was not.
    pub max_rate: u64,
    pub steps: Vec<FanOut>,
}

/// Finds the highest publish rate a server sustains ([`FanOut::sustained`]), in powers of two
/// times `first`: doubling from `first` until a run is not sustained, or, when `first` itself is
/// not, halving until one is. At most `max_steps` runs.
pub async fn ladder(
    server: &Server,
    name: &'static str,
    subscribers: usize,
    first: u64,
    seconds: u64,
    max_steps: usize,
) -> Ladder {
    let mut steps: Vec<FanOut> = Vec::new();
    let mut max_rate = 0;
    let mut rate = first;
    let mut climbing = None;
    while steps.len() < max_steps && rate > 0 {
        eprintln!("bench: fan-out to {subscribers} subscribers at {rate}/s ({name}), searching");
        let run = fan_out(server, name, subscribers, rate, seconds).await;
        let sustained = run.sustained(seconds);
        steps.push(run);
        let up = *climbing.get_or_insert(sustained);
        if sustained {
            max_rate = rate;
        }
        match (up, sustained) {
            (true, true) => rate *= 2,
            (false, false) => rate /= 2,
            _ => break,
        }
    }
    Ladder {
        server: name,
        subscribers,
        max_rate,
        steps,
    }
}

/// One publisher sending `rate` ~100-byte messages per second for `seconds` to `subscribers`.
pub async fn fan_out(
    server: &Server,
    name: &'static str,
    subscribers: usize,
    rate: u64,
    seconds: u64,
) -> FanOut {
    fan_out_over(server, &[server], name, subscribers, rate, seconds).await
}

/// [`fan_out`] with the subscribers dealt in turn over `spread` (instances of one cluster), the
/// publisher on `server`. CPU is that of `server`'s process.
pub async fn fan_out_over(
    server: &Server,
    spread: &[&Server],
    name: &'static str,
    subscribers: usize,
    rate: u64,
    seconds: u64,
) -> FanOut {
    let channel = server.channel(&format!("fanout-{subscribers}"));
    let credential = server.credential("subscriber", &["subscribe"]).await;
    let turn = AtomicUsize::new(0);
    let sockets = open_many(subscribers, || {
        let at = spread[turn.fetch_add(1, Ordering::Relaxed) % spread.len()];
        at.subscriber(&credential, &channel)
    })
    .await;

    let disconnected = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = watch::channel(false);
    let (counters, tasks) = spawn_receivers(sockets, &disconnected, &stopped);

    let publisher_credential = server
        .credential("publisher", &["publish", "subscribe"])
        .await;
    let publisher = server.subscriber(&publisher_credential, &channel).await;
    let (mut sink, mut replies) = publisher.split();
    // Whatever the server says to the publisher is read and dropped.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = replies.next().await {} });

    let cpu = CpuWindow::start(server.pid());
    let started = Instant::now();
    let started_us = epoch_micros();
    let pad = "x".repeat(72);
    let mut published = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        // Catch up to the schedule, so the rate holds whatever the timer's granularity.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while published < due {
            let data = format!("ts:{}:{pad}", epoch_micros());
            sink.feed(Message::text(server.publish_frame(&channel, &data)))
                .await
                .expect("publish");
            published += 1;
        }
        sink.flush().await.expect("publish");
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let deliveries in flight arrive: until every live subscriber has them all, or 5 s.
    let settle = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settle {
        let live = (subscribers - disconnected.load(Ordering::Relaxed)) as u64;
        let received: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if received >= published * live {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu.stop();
    let _ = stop.send(true);
    let mut latencies = Vec::new();
    let mut lost = 0;
    let mut last_arrival_us = 0;
    for task in tasks {
        let (count, mut local, closed, last) = task.await.expect("subscriber task");
        if !closed {
            lost += published.saturating_sub(count);
        }
        last_arrival_us = last_arrival_us.max(last);
        latencies.append(&mut local);
    }
    drain.abort();
    wait_quiet(server.pid()).await;
    let delivered = latencies.len() as u64;
    // Deliveries that arrived while the server caught up count over the time they took.
    let arrival_seconds = (last_arrival_us.saturating_sub(started_us) as f64 / 1e6).max(elapsed);
    FanOut {
        server: name,
        subscribers,
        publish_rate: rate,
        published,
        deliveries: Figures::new(delivered, arrival_seconds, &mut latencies),
        lost,
        disconnected: disconnected.load(Ordering::Relaxed),
        arrival_seconds,
        server_cpu_us_per_delivery: cpu.server_pct / 100.0 * cpu.seconds * 1e6
            / (delivered.max(1) as f64),
        cpu,
    }
}

/// Received frames per subscriber, one task each, on one counter each: a single shared counter
/// would bounce between cores a million times a second and make the load generator its own
/// bottleneck.
pub(crate) type Receivers = (Vec<Arc<AtomicU64>>, Vec<tokio::task::JoinHandle<Received>>);

/// What one subscriber got: frames counted, their latencies in microseconds, whether the server
/// closed it, and when (epoch microseconds) its last frame arrived.
pub(crate) type Received = (u64, Vec<u32>, bool, u64);

/// Starts a [`receive`] task for each socket.
pub(crate) fn spawn_receivers(
    sockets: Vec<Socket>,
    disconnected: &Arc<AtomicUsize>,
    stopped: &watch::Receiver<bool>,
) -> Receivers {
    let counters: Vec<Arc<AtomicU64>> = sockets.iter().map(|_| Arc::default()).collect();
    let tasks = sockets
        .into_iter()
        .zip(&counters)
        .map(|(socket, counter)| {
            tokio::spawn(receive(
                socket,
                counter.clone(),
                disconnected.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    (counters, tasks)
}

/// Reads one subscriber's frames until told to stop (see [`Received`]).
///
/// After the handshake the frames are read straight off the TCP stream: server frames are
/// unmasked, so a frame is a 2-10 byte header and its payload, scanned in place with no
/// allocation per frame. That keeps the load generator's CPU well below the server's. Pings are
/// not answered; a run is shorter than the server's idle timeout.
async fn receive(
    socket: Socket,
    received: Arc<AtomicU64>,
    disconnected: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> Received {
    let MaybeTlsStream::Plain(mut tcp) = socket.into_inner() else {
        unreachable!("the bench speaks plain ws://");
    };
    let mut latencies = Vec::new();
    let mut count = 0u64;
    let mut last = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let gone = |count, latencies, last| {
        disconnected.fetch_add(1, Ordering::Relaxed);
        (count, latencies, true, last)
    };
    loop {
        tokio::select! {
            read = tcp.read(&mut buffer[filled..]) => match read {
                Ok(0) | Err(_) => return gone(count, latencies, last),
                Ok(n) => filled += n,
            },
            _ = stop.wait_for(|stop| *stop) => return (count, latencies, false, last),
        }
        let mut at = 0;
        while let Some((opcode, payload)) = frame(&buffer[at..filled]) {
            at += payload.end;
            match opcode {
                0x8 => return gone(count, latencies, last),
                0x1 | 0x0 => {
                    if let Some(sent) = stamp(&buffer[at - payload.len()..at]) {
                        last = epoch_micros();
                        latencies.push(last.saturating_sub(sent) as u32);
                        count += 1;
                        received.store(count, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
        buffer.copy_within(at..filled, 0);
        filled -= at;
        if filled == buffer.len() {
            buffer.resize(buffer.len() * 2, 0);
        }
    }
}

/// The opcode and payload range (from the start of `bytes`) of the first whole frame in `bytes`.
fn frame(bytes: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let (length, header) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    (bytes.len() >= header + length).then_some((first & 0x0f, header..header + length))
}

/// The microseconds after `ts:` in a frame, found without parsing the JSON.
pub(crate) fn stamp(frame: &[u8]) -> Option<u64> {
    let at = frame.windows(3).position(|w| w == b"ts:")? + 3;
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit());
    Some(digits.fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_whole_with_every_length_form() {
        let short = [&[0x81, 3][..], b"abc"].concat();
        assert_eq!(frame(&short), Some((0x1, 2..5)));
        assert_eq!(
            frame(&short[..4]),
            None,
            "a partial payload waits for more bytes"
        );

        let medium = [&[0x81, 126, 0x01, 0x00][..], &[b'x'; 256]].concat();
        assert_eq!(frame(&medium), Some((0x1, 4..260)));

        let long = [&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0][..], &vec![0u8; 65_536]].concat();
        assert_eq!(frame(&long), Some((0x2, 10..65_546)));
        assert_eq!(frame(&[0x88]), None);
    }

    #[test]
    fn the_publish_timestamp_is_read_from_the_frame() {
        let frame =
            br#"{"type":"message","channel":"c","from":"p","data":"ts:1795384855123456:xxxx"}"#;
        assert_eq!(stamp(frame), Some(1_795_384_855_123_456));
        assert_eq!(stamp(br#"{"type":"ack"}"#), None);
    }
}
