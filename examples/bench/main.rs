//! channeld's benchmark: the load generator that `make bench` drives (scripts/bench.sh starts the
//! servers and passes their addresses). It measures, in one run:
//!
//! 1. the REST ceiling: pgbench running channeld's own SQL, then channeld over HTTP, at 1, 8 and
//!    32 clients, and the ratio of the two;
//! 2. WebSocket fan-out from one publisher to 100, 1,000 and 5,000 subscribers;
//! 3. the resident memory of 10,000 idle subscribed connections;
//! 4. presence churn with 1,000 peers;
//! 5. the same fan-out against a Pusher-protocol server (sockudo), when one is given;
//! 6. stored messages to live followers: one writer POSTing to a channel followed by WebSocket
//!    subscribers and SSE streams, on the same instance and on a second one;
//! 7. cluster mode (see `cluster`): fan-out through one and two instances sharing Redis, presence
//!    churn over two instances, and presence convergence under 100 concurrent joins;
//! 8. MCP (see `mcp`): `read_messages` beside the same REST read, and how fast 1,000 waiting
//!    `wait_for_messages` calls are woken by a post, with the pooled connections they hold.
//!
//! It prints a table and writes every figure to a JSON file.

mod cluster;
mod consumers;
mod fanout;
mod mcp;
mod realtime;
mod report;
mod rest;
mod stats;
mod stored;
mod webhooks;

use std::path::PathBuf;

use clap::Parser;
use serde_json::{Value, json};

use realtime::Server;
use rest::{Op, Target};
use stats::{CpuWindow, Repeats};

#[derive(Parser)]
#[command(
    about = "Load generator for channeld's benchmark (run it through `make bench`)",
    args_override_self = true
)]
struct Args {
    /// channeld's base URL, e.g. http://127.0.0.1:18100.
    #[arg(long)]
    base: String,
    /// A key with channels:write and the realtime actions, its rate limit raised.
    #[arg(long)]
    key: String,
    /// channeld's process id, for its CPU time and memory.
    #[arg(long)]
    pid: u32,
    /// The database channeld serves from; pgbench runs against it too.
    #[arg(long)]
    database_url: String,
    /// The compile-time query data the pgbench scripts are taken from.
    #[arg(long, default_value = ".sqlx")]
    sqlx_dir: PathBuf,
    /// Seconds per REST run.
    #[arg(long, default_value_t = 10)]
    rest_seconds: u64,
    /// REST operations to run, comma separated: post, get, held, 304.
    #[arg(long, default_value = "post,get,held,304")]
    rest_ops: String,
    /// REST concurrencies, comma separated.
    #[arg(long, default_value = "1,8,32")]
    rest_clients: String,
    /// REST systems to run, comma separated: pgbench, floor, channeld.
    #[arg(long, default_value = "pgbench,floor,channeld")]
    rest_systems: String,
    /// The floor server (`examples/floor.rs`): channeld's message routes and nothing else, on
    /// the same database; its REST rows run beside pgbench's and channeld's.
    #[arg(long)]
    floor: Option<String>,
    /// Its process id, for its CPU time.
    #[arg(long)]
    floor_pid: Option<u32>,
    /// Idle connections for the memory footprint.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Fan-out subscriber counts and the first publish rate of each one's search for its
    /// maximum, as SUBSCRIBERS:FIRST_RATE, comma separated. The rate doubles until a server no
    /// longer sustains it; then both servers run at the highest rate both sustained, and each at
    /// its own maximum, --repeats times.
    #[arg(long, default_value = "100:1000,1000:100,5000:20")]
    fanout: String,
    /// Seconds each fan-out run publishes for.
    #[arg(long, default_value_t = 5)]
    fanout_seconds: u64,
    /// Most doublings in a search for a maximum rate.
    #[arg(long, default_value_t = 8)]
    fanout_steps: usize,
    /// How many times every measured configuration runs; figures are medians with min-max.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Peers in the presence-churn run.
    #[arg(long, default_value_t = 1000)]
    churn_peers: usize,
    /// A Pusher-protocol server to run the same fan-out against: ws://host:port.
    #[arg(long)]
    pusher_ws: Option<String>,
    #[arg(long, default_value = "bench-key")]
    pusher_key: String,
    #[arg(long, default_value = "bench-secret")]
    pusher_secret: String,
    #[arg(long)]
    pusher_pid: Option<u32>,
    /// Why the Pusher comparison is missing, when it is.
    #[arg(long)]
    pusher_skipped: Option<String>,
    /// The channeld binary to start a second instance from (same database and environment), for
    /// followers on another instance. It runs only for those runs, so every other figure is of
    /// one instance alone.
    #[arg(long)]
    second_server: Option<PathBuf>,
    /// Where the second instance listens.
    #[arg(long, default_value = "127.0.0.1:18102")]
    second_listen: String,
    /// Stored-delivery runs as WEBSOCKETS:SSE_STREAMS:POSTS_PER_SEC, comma separated; a rate of
    /// `max` posts as fast as one sequential writer goes. Each runs with the followers on the
    /// instance posted to, then on the second instance.
    #[arg(long, default_value = "10:1:50,1000:100:200,1000:100:max")]
    stored: String,
    /// Seconds each stored run posts for.
    #[arg(long, default_value_t = 10)]
    stored_seconds: u64,
    /// Redis for the cluster runs (which start two instances of --second-server in cluster
    /// mode, on --cluster-listen).
    #[arg(long)]
    redis_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1:18103,127.0.0.1:18104")]
    cluster_listen: String,
    /// Cluster fan-out runs, as --fanout; each is repeated --cluster-repeats times.
    #[arg(long, default_value = "1000:1000,5000:200,5000:400")]
    cluster_fanout: String,
    #[arg(long, default_value_t = 3)]
    cluster_repeats: usize,
    /// Two Pusher-protocol servers sharing Redis (sockudo with ADAPTER_DRIVER=redis), for the
    /// same cluster fan-out: ws://host:port,ws://host:port.
    #[arg(long)]
    pusher_cluster_ws: Option<String>,
    /// Their process ids, comma separated.
    #[arg(long)]
    pusher_cluster_pids: Option<String>,
    /// Concurrent `wait_for_messages` calls woken by one post in the MCP part.
    #[arg(long, default_value_t = 1000)]
    mcp_waiters: usize,
    /// Rounds of that wake-up.
    #[arg(long, default_value_t = 5)]
    mcp_rounds: usize,
    /// Messages each consumer-group throughput run works through.
    #[arg(long, default_value_t = 20_000)]
    consumer_backlog: i64,
    /// Messages of the long channel the consumer-group claim cost is measured on.
    #[arg(long, default_value_t = 10_000_000)]
    consumer_history: i64,
    /// Seconds of each posting run of the webhook rows.
    #[arg(long, default_value_t = 10)]
    webhook_seconds: u64,
    /// Events of the webhook backlog row.
    #[arg(long, default_value_t = 100_000)]
    webhook_backlog: i64,
    /// A Redis that appends and fsyncs every write, for the durable Redis Streams row.
    #[arg(long)]
    redis_durable_url: Option<String>,
    /// Which parts to run, comma separated: rest, footprint, fanout, churn, stored, cluster, mcp
    /// (and flood, consumers and webhooks, which scripts/flood-bench.sh,
    /// scripts/consumer-bench.sh and scripts/webhook-bench.sh run on servers of their own).
    #[arg(long, default_value = "rest,footprint,fanout,churn,stored,cluster,mcp")]
    only: String,
    /// Where to write the figures.
    #[arg(long, default_value = "bench/results/latest.json")]
    out: PathBuf,
}

/// What a REST run measures.
#[derive(Debug, Clone, Copy)]
enum System {
    Pgbench,
    Floor,
    Channeld,
}

impl System {
    fn flag(self) -> &'static str {
        match self {
            System::Pgbench => "pgbench",
            System::Floor => "floor",
            System::Channeld => "channeld",
        }
    }

    fn name(self) -> &'static str {
        match self {
            System::Pgbench => "pgbench",
            System::Floor => "the floor",
            System::Channeld => "channeld",
        }
    }
}
/// Unknown keys in a credential flood.
const FLOOD_KEYS: usize = 20_000;
/// Channels the REST load spreads over, and the history each starts with.
const CHANNELS: i64 = 256;
const SEEDED_MESSAGES: usize = 60;

#[tokio::main]
async fn main() -> Result<(), String> {
    channeld::webhooks::send::install_tls_provider();
    let args = Args::parse();
    let fanouts = parse_fanouts(&args.fanout)?;
    let channeld = Server::Channeld {
        base: args.base.clone(),
        key: args.key.clone(),
        pid: args.pid,
    };
    let mut notes = Vec::new();

    let run = |part: &str| args.only.split(',').any(|p| p.trim() == part);

    // First, and once: a run after others in the same process reuses the memory they freed, so
    // only a fresh process shows what connections cost.
    let mut footprint = None;
    if run("footprint") {
        eprintln!("bench: {} idle connections", args.idle);
        footprint = Some(realtime::footprint(&channeld, args.idle).await);
    }

    let mut rest_rows = Vec::new();
    if run("rest") {
        eprintln!("bench: seeding {CHANNELS} channels");
        let target = seed(&args).await?;
        let floor_addr = args
            .floor
            .as_deref()
            .map(|base| base.trim_start_matches("http://").to_owned());
        if floor_addr.is_none() {
            notes.push("floor rows skipped: no --floor given".into());
        }
        let listed = |list: &str, item: &str| list.split(',').any(|p| p.trim() == item);
        let clients_list: Vec<usize> = args
            .rest_clients
            .split(',')
            .map(|c| c.trim().parse().map_err(|_| format!("--rest-clients: {c}")))
            .collect::<Result<_, _>>()?;
        for clients in clients_list {
            for op in Op::ALL {
                if !listed(&args.rest_ops, op.flag()) {
                    continue;
                }
                let script = rest::pgbench_script(&args.sqlx_dir, op)?;
                let mut runs = Vec::new();
                for repeat in 1..=args.repeats {
                    // The order rotates each round, so that no system always runs first (on a
                    // cold cache) or last (after the others' autovacuum and checkpoints).
                    let mut order = vec![System::Pgbench, System::Floor, System::Channeld];
                    order.rotate_left((repeat - 1) % 3);
                    let mut run = report::RestRun::default();
                    for system in order {
                        if matches!(system, System::Floor) && floor_addr.is_none()
                            || !listed(&args.rest_systems, system.flag())
                        {
                            continue;
                        }
                        // Every run starts from the same state: statistics fresh, and no dirty
                        // pages left for a checkpoint to write during it.
                        rest::psql(&args.database_url, "VACUUM ANALYZE")?;
                        rest::psql(&args.database_url, "CHECKPOINT")?;
                        eprintln!(
                            "bench: {} at {clients} clients, {} (round {repeat})",
                            op.name(),
                            system.name()
                        );
                        match system {
                            System::Pgbench => {
                                let window = CpuWindow::start(args.pid);
                                run.pgbench = rest::pgbench(
                                    &args.database_url,
                                    &script,
                                    &target,
                                    clients,
                                    args.rest_seconds,
                                )?;
                                run.pgbench_postgres_pct = window.stop().postgres_pct;
                            }
                            System::Floor => {
                                let (Some(addr), Some(pid)) = (&floor_addr, args.floor_pid) else {
                                    continue;
                                };
                                let floor_target = rest::Target {
                                    addr: addr.clone(),
                                    key: target.key.clone(),
                                    channels: target.channels,
                                };
                                let window = CpuWindow::start(pid);
                                let figures =
                                    rest::load(&floor_target, op, clients, args.rest_seconds)
                                        .await?;
                                run.floor = Some(figures);
                                run.floor_cpu = Some(window.stop());
                            }
                            System::Channeld => {
                                let window = CpuWindow::start(args.pid);
                                run.channeld =
                                    rest::load(&target, op, clients, args.rest_seconds).await?;
                                run.cpu = window.stop();
                            }
                        }
                    }
                    run.finish();
                    notes.extend(run.implausible(op.name(), clients, repeat));
                    runs.push(run);
                }
                rest_rows.push(report::RestRow::of(op.name(), clients, runs));
            }
        }
    }

    let pusher = match (&args.pusher_ws, args.pusher_pid) {
        (Some(ws), Some(pid)) => Some(Server::Pusher {
            ws: ws.clone(),
            app_key: args.pusher_key.clone(),
            secret: args.pusher_secret.clone(),
            pid,
        }),
        _ => {
            notes.push(format!(
                "sockudo rows skipped: {}",
                args.pusher_skipped
                    .as_deref()
                    .unwrap_or("no Pusher server given")
            ));
            None
        }
    };
    let mut ladders = Vec::new();
    let mut fanout_rows = Vec::new();
    for &(subscribers, first_rate) in fanouts.iter().filter(|_| run("fanout")) {
        let mut servers = vec![(&channeld, "channeld")];
        if let Some(pusher) = &pusher {
            servers.push((pusher, "sockudo"));
        }
        let mut found = Vec::new();
        for &(server, name) in &servers {
            let ladder = fanout::ladder(
                server,
                name,
                subscribers,
                first_rate,
                args.fanout_seconds,
                args.fanout_steps,
            )
            .await;
            found.push(ladder.max_rate);
            ladders.push(ladder);
        }
        // The highest rate every server sustained (the lowest step tried if one sustained none).
        let lowest = ladders
            .iter()
            .rev()
            .take(servers.len())
            .flat_map(|l: &fanout::Ladder| l.steps.iter().map(|s| s.publish_rate))
            .min()
            .unwrap_or(first_rate);
        let equal = found
            .iter()
            .copied()
            .min()
            .filter(|&r| r > 0)
            .unwrap_or(lowest);
        for (&(server, name), &own_max) in servers.iter().zip(&found) {
            let mut loads = vec![("equal load", equal)];
            if own_max > equal {
                loads.push(("own maximum", own_max));
            }
            for (load, rate) in loads {
                let mut runs = Vec::new();
                for repeat in 1..=args.repeats {
                    eprintln!(
                        "bench: fan-out to {subscribers} subscribers at {rate}/s ({name}, {load}, run {repeat})"
                    );
                    runs.push(
                        fanout::fan_out(server, name, subscribers, rate, args.fanout_seconds).await,
                    );
                }
                fanout_rows.push(fanout::Repeated::of(load, runs));
            }
        }
    }

    let mut churn = None;
    if run("churn") {
        let mut runs = Vec::new();
        for repeat in 1..=args.repeats {
            eprintln!(
                "bench: presence churn with {} peers (run {repeat})",
                args.churn_peers
            );
            runs.push(realtime::churn(&channeld, args.churn_peers, 5).await);
        }
        churn = Some(Repeats::of("joins_leaves_per_sec", runs, |c| {
            c.joins_leaves_per_sec
        }));
    }

    let mut stored_rows = Vec::new();
    if run("stored") {
        let runs = parse_stored(&args.stored)?;
        let first = stored::Instance {
            base: args.base.clone(),
            pid: args.pid,
        };
        let stored_run = |placement: &'static str,
                          followers: stored::Instance,
                          ws: usize,
                          sse: usize,
                          rate: Option<u64>| {
            eprintln!(
                "bench: stored delivery to {ws} WebSockets and {sse} event streams on the {placement}, {} posts/s",
                rate.map_or("max".to_owned(), |r: u64| r.to_string())
            );
            let (first, key, seconds) = (first.clone(), args.key.clone(), args.stored_seconds);
            async move { stored::run(&first, &followers, placement, &key, ws, sse, rate, seconds).await }
        };
        let by_p99 = |runs| Repeats::of("ws.p99_ms", runs, |r: &stored::StoredRun| r.ws.p99_ms);
        for &(ws, sse, rate) in &runs {
            let mut repeats = Vec::new();
            for _ in 0..args.repeats {
                repeats.push(stored_run("same instance", first.clone(), ws, sse, rate).await);
            }
            stored_rows.push(by_p99(repeats));
        }
        match &args.second_server {
            Some(binary) => {
                let second =
                    stored::SecondInstance::start(binary, &args.second_listen, &args.base).await?;
                for &(ws, sse, rate) in &runs {
                    let mut repeats = Vec::new();
                    for _ in 0..args.repeats {
                        repeats.push(
                            stored_run("other instance", second.instance(), ws, sse, rate).await,
                        );
                    }
                    stored_rows.push(by_p99(repeats));
                }
            }
            None => notes
                .push("stored delivery across instances skipped: no --second-server given".into()),
        }
    }

    let mut cluster_figures = None;
    if run("cluster") {
        match (&args.second_server, &args.redis_url) {
            (Some(binary), Some(redis_url)) => {
                let listens: Vec<&str> = args.cluster_listen.split(',').collect();
                let [first, second] = listens[..] else {
                    return Err("--cluster-listen takes two addresses".into());
                };
                let loads = parse_fanouts(&args.cluster_fanout)?;
                let plan = cluster::Plan {
                    binary,
                    listens: [first, second],
                    redis_url,
                    key: &args.key,
                    loads: &loads,
                    seconds: args.fanout_seconds,
                    repeats: args.cluster_repeats,
                    churn_peers: args.churn_peers,
                    pusher: pusher_cluster(&args),
                };
                if plan.pusher.is_none() {
                    notes.push("sockudo cluster rows skipped: no --pusher-cluster-ws given".into());
                }
                cluster_figures = Some(cluster::run(&plan).await?);
            }
            _ => notes.push("cluster rows skipped: no --second-server or --redis-url given".into()),
        }
    }

    // A flood of unknown keys while a real key reads (scripts/flood-bench.sh runs it against a
    // server with the per-source bound and one without).
    let mut floods = Vec::new();
    if run("flood") {
        let target = seed(&args).await?;
        for repeat in 1..=args.repeats {
            eprintln!("bench: a flood of {FLOOD_KEYS} unknown keys (run {repeat})");
            let flood = rest::flood(&target, FLOOD_KEYS, 32).await?;
            eprintln!(
                "bench: real key during the flood: {} requests, p50 {:.2} ms, p99 {:.2} ms, \
                 {} not 200; flood: {} x 401, {} x 429, {} other, in {:.1} s",
                (flood.real.per_sec * flood.flood_seconds).round(),
                flood.real.p50_ms,
                flood.real.p99_ms,
                flood.real_refused,
                flood.flood_401,
                flood.flood_429,
                flood.flood_other,
                flood.flood_seconds
            );
            floods.push(flood);
        }
    }

    let mut mcp_figures = None;
    if run("mcp") {
        let plan = mcp::Plan {
            base: &args.base,
            key: &args.key,
            seconds: args.rest_seconds,
            repeats: args.repeats,
            waiters: args.mcp_waiters,
            rounds: args.mcp_rounds,
        };
        mcp_figures = Some(mcp::run(&plan).await?);
    }

    let mut consumer_figures = None;
    if run("consumers") {
        let plan = consumers::Plan {
            base: &args.base,
            key: &args.key,
            database_url: &args.database_url,
            repeats: args.repeats,
            backlog: args.consumer_backlog,
            history: args.consumer_history,
            redis_url: args.redis_url.as_deref(),
            redis_durable_url: args.redis_durable_url.as_deref(),
        };
        consumer_figures = Some(consumers::run(&plan).await?);
    }

    let mut webhook_figures = None;
    if run("webhooks") {
        let plan = webhooks::Plan {
            base: &args.base,
            key: &args.key,
            database_url: &args.database_url,
            repeats: args.repeats,
            seconds: args.webhook_seconds,
            backlog: args.webhook_backlog,
        };
        webhook_figures = Some(webhooks::run(&plan).await?);
    }

    let postgres = postgres_settings(&args.database_url);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!();
    println!(
        "Machine: {cpus} cores shared by the servers, PostgreSQL and the load generator; PostgreSQL {}",
        postgres
            .as_object()
            .map(|o| o
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default()
    );
    report::print(
        &rest_rows,
        &ladders,
        &fanout_rows,
        &stored_rows,
        footprint.as_ref(),
        churn.as_ref(),
        cluster_figures.as_ref(),
        &notes,
    );
    if let Some(figures) = &mcp_figures {
        mcp::print(figures);
    }
    if let Some(figures) = &consumer_figures {
        consumers::print(figures);
    }
    if let Some(figures) = &webhook_figures {
        webhooks::print(figures);
    }
    let figures = json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "cpus": cpus,
        "rest": rest_rows,
        "fanout": fanout_rows,
        "fanout_ladders": ladders,
        "repeats": args.repeats,
        "postgres": postgres,
        "footprint": footprint,
        "churn": churn,
        "stored": stored_rows,
        "cluster": cluster_figures,
        "mcp": mcp_figures,
        "flood": floods,
        "consumers": consumer_figures,
        "webhooks": webhook_figures,
        "notes": notes,
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let text = serde_json::to_string_pretty(&figures).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, text + "\n").map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!("bench: figures written to {}", args.out.display());
    Ok(())
}

/// The two sockudo instances of the cluster rows, when given.
fn pusher_cluster(args: &Args) -> Option<[Server; 2]> {
    let ws: Vec<&str> = args.pusher_cluster_ws.as_deref()?.split(',').collect();
    let pids: Vec<u32> = args
        .pusher_cluster_pids
        .as_deref()?
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let server = |n: usize| Server::Pusher {
        ws: ws[n].trim().to_owned(),
        app_key: args.pusher_key.clone(),
        secret: args.pusher_secret.clone(),
        pid: pids[n],
    };
    (ws.len() == 2 && pids.len() == 2).then(|| [server(0), server(1)])
}

fn parse_fanouts(spec: &str) -> Result<Vec<(usize, u64)>, String> {
    spec.split(',')
        .map(|run| {
            let (subscribers, rate) = run
                .split_once(':')
                .ok_or_else(|| format!("bad fan-out run {run:?}"))?;
            Ok((
                subscribers
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad subscribers in {run:?}"))?,
                rate.trim()
                    .parse()
                    .map_err(|_| format!("bad rate in {run:?}"))?,
            ))
        })
        .collect()
}

/// `WEBSOCKETS:SSE_STREAMS:RATE` runs; a rate of `max` is `None`.
fn parse_stored(spec: &str) -> Result<Vec<(usize, usize, Option<u64>)>, String> {
    spec.split(',')
        .map(|run| {
            let bad = || format!("bad stored run {run:?} (expected WEBSOCKETS:SSE_STREAMS:RATE)");
            let mut parts = run.trim().split(':');
            let mut next = || parts.next().ok_or_else(bad);
            let ws = next()?.parse().map_err(|_| bad())?;
            let sse = next()?.parse().map_err(|_| bad())?;
            let rate = match next()? {
                "max" => None,
                n => Some(n.parse().map_err(|_| bad())?),
            };
            Ok((ws, sse, rate))
        })
        .collect()
}

/// Creates the channels the REST load uses over REST, then gives each a history longer than one
/// page in one statement, interleaved across channels as concurrent posting leaves it.
async fn seed(args: &Args) -> Result<Target, String> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for n in 0..CHANNELS {
        let created: Value = http
            .post(format!("{}/v1/channels", args.base))
            .bearer_auth(&args.key)
            .json(&json!({"name": format!("bench {n} {}", std::process::id())}))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let id = created["channel"]["id"]
            .as_i64()
            .ok_or_else(|| format!("channel not created: {created}"))?;
        ids.push(id);
    }
    let (lo, hi) = (
        ids.iter().min().copied().unwrap_or(1),
        ids.iter().max().copied().unwrap_or(1),
    );
    if hi - lo + 1 != CHANNELS {
        return Err("seeded channel ids are not contiguous".into());
    }
    let history = format!(
        "INSERT INTO messages (channel_id, content, sender_type) \
         SELECT c, '{}', 'api' FROM generate_series(1, {SEEDED_MESSAGES}) AS n, generate_series({lo}, {hi}) AS c \
         ORDER BY n, c",
        rest::CONTENT
    );
    rest::psql(&args.database_url, &history)?;
    // As channeld's own insert does, so that each channel's row names its newest message.
    rest::psql(
        &args.database_url,
        &format!(
            "UPDATE channels c SET message_count = s.n, last_message_id = s.last \
             FROM (SELECT channel_id, count(*) AS n, max(id) AS last FROM messages \
                   WHERE channel_id BETWEEN {lo} AND {hi} GROUP BY channel_id) s \
             WHERE c.id = s.channel_id"
        ),
    )?;
    Ok(Target {
        addr: args.base.trim_start_matches("http://").to_owned(),
        key: args.key.clone(),
        channels: (lo, hi),
    })
}

/// The PostgreSQL settings that shape the REST figures, as `SHOW` prints them.
fn postgres_settings(database_url: &str) -> Value {
    let names = [
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "autovacuum",
        "max_connections",
        "work_mem",
    ];
    let mut settings = serde_json::Map::new();
    for name in names {
        let output = std::process::Command::new("psql")
            .args(["-XAtq", "-c", &format!("SHOW {name}"), database_url])
            .output();
        if let Ok(output) = output
            && output.status.success()
        {
            let value = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            settings.insert(name.to_owned(), Value::String(value));
        }
    }
    Value::Object(settings)
}
