//! The table `make bench` prints.

use serde::Serialize;

use crate::{
    fanout::{Ladder, Repeated},
    realtime::{Churn, Footprint},
    stats::{CpuShare, Figures, Repeats, Spread},
    stored::StoredRun,
};

/// One measured pair: pgbench, then channeld, at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct RestRun {
    pub pgbench: Figures,
    pub channeld: Figures,
    /// channeld requests/s over pgbench transactions/s.
    pub ratio: f64,
    /// PostgreSQL's CPU while pgbench ran, in % of one core.
    pub pgbench_postgres_pct: f64,
    /// channeld's, the load generator's and PostgreSQL's CPU while channeld was measured.
    pub cpu: CpuShare,
}

/// One REST operation at one concurrency over repeated pairs. `pgbench`, `channeld` and `ratio`
/// are medians (each field on its own), `ratio_min`/`ratio_max` the range, `runs` every pair.
#[derive(Debug, Clone, Serialize)]
pub struct RestRow {
    pub op: &'static str,
    pub clients: usize,
    pub pgbench: Figures,
    pub channeld: Figures,
    pub ratio: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    pub pgbench_per_sec: Spread,
    pub channeld_per_sec: Spread,
    pub pgbench_postgres_pct: f64,
    pub cpu: CpuShare,
    pub runs: Vec<RestRun>,
}

impl RestRow {
    pub fn of(op: &'static str, clients: usize, runs: Vec<RestRun>) -> Self {
        let median = |f: &dyn Fn(&RestRun) -> f64| Spread::of(runs.iter().map(f)).median;
        let figures = |f: &dyn Fn(&RestRun) -> Figures| Figures {
            per_sec: median(&|r| f(r).per_sec),
            p50_ms: median(&|r| f(r).p50_ms),
            p99_ms: median(&|r| f(r).p99_ms),
        };
        let ratio = Spread::of(runs.iter().map(|r| r.ratio));
        Self {
            op,
            clients,
            pgbench: figures(&|r| r.pgbench),
            channeld: figures(&|r| r.channeld),
            ratio: ratio.median,
            ratio_min: ratio.min,
            ratio_max: ratio.max,
            pgbench_per_sec: Spread::of(runs.iter().map(|r| r.pgbench.per_sec)),
            channeld_per_sec: Spread::of(runs.iter().map(|r| r.channeld.per_sec)),
            pgbench_postgres_pct: median(&|r| r.pgbench_postgres_pct),
            cpu: CpuShare {
                seconds: median(&|r| r.cpu.seconds),
                bench_pct: median(&|r| r.cpu.bench_pct),
                server_pct: median(&|r| r.cpu.server_pct),
                postgres_pct: median(&|r| r.cpu.postgres_pct),
            },
            runs,
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn print(
    rest: &[RestRow],
    ladders: &[Ladder],
    fanout: &[Repeated],
    stored: &[Repeats<StoredRun>],
    footprint: Option<&Footprint>,
    churn: Option<&Repeats<Churn>>,
    cluster: Option<&crate::cluster::ClusterFigures>,
    notes: &[String],
) {
    if !rest.is_empty() {
        println!();
        println!(
            "REST against the database ceiling: pgbench runs channeld's own per-request SQL (-M prepared); median of {} pairs [min-max]; CPU in % of one core",
            rest.first().map_or(0, |r| r.runs.len())
        );
        println!(
            "{:<14} {:>7} | {:>24} {:>7} {:>7} {:>6} | {:>24} {:>7} {:>7} {:>6} {:>6} {:>6} | {:>18}",
            "operation",
            "clients",
            "pgbench tx/s",
            "p50 ms",
            "p99 ms",
            "pg CPU",
            "channeld req/s",
            "p50 ms",
            "p99 ms",
            "pg CPU",
            "server",
            "bench",
            "ratio"
        );
        for row in rest {
            println!(
                "{:<14} {:>7} | {:>6.0} [{:>6.0}-{:>6.0}] {:>7.2} {:>7.2} {:>5.0}% | {:>6.0} [{:>6.0}-{:>6.0}] {:>7.2} {:>7.2} {:>5.0}% {:>5.0}% {:>5.0}% | {:>4.2} [{:.2}-{:.2}]",
                row.op,
                row.clients,
                row.pgbench_per_sec.median,
                row.pgbench_per_sec.min,
                row.pgbench_per_sec.max,
                row.pgbench.p50_ms,
                row.pgbench.p99_ms,
                row.pgbench_postgres_pct,
                row.channeld_per_sec.median,
                row.channeld_per_sec.min,
                row.channeld_per_sec.max,
                row.channeld.p50_ms,
                row.channeld.p99_ms,
                row.cpu.postgres_pct,
                row.cpu.server_pct,
                row.cpu.bench_pct,
                row.ratio,
                row.ratio_min,
                row.ratio_max
            );
        }
    }

    if !ladders.is_empty() {
        println!();
        println!(
            "WebSocket fan-out, maximum sustainable rate: the publish rate doubled until p99 > 100 ms, a loss, a drop, or the publisher fell behind"
        );
        for ladder in ladders {
            let steps: Vec<String> = ladder
                .steps
                .iter()
                .map(|s| {
                    format!(
                        "{}/s: p99 {:.1} ms, lost {}, drops {}",
                        s.publish_rate, s.deliveries.p99_ms, s.lost, s.disconnected
                    )
                })
                .collect();
            println!(
                "  {:<9} {:>5} subscribers: max {}/s  ({})",
                ladder.server,
                ladder.subscribers,
                ladder.max_rate,
                steps.join("; ")
            );
        }
    }
    if !fanout.is_empty() {
        println!();
        println!(
            "WebSocket fan-out: one publisher, ~100-byte messages; median of {} runs [min-max]; deliveries/s over the window they arrived in",
            fanout.first().map_or(0, |r| r.runs.len())
        );
        println!(
            "{:<9} {:<12} {:>6} {:>7} | {:>31} {:>22} {:>22} {:>5} {:>5} | {:>16}",
            "server",
            "load",
            "subs",
            "msg/s",
            "deliveries/s",
            "p50 ms",
            "p99 ms",
            "lost",
            "drops",
            "server CPU us/dl"
        );
        for row in fanout {
            println!(
                "{:<9} {:<12} {:>6} {:>7} | {:>9.0} [{:>9.0}-{:>9.0}] {:>7.1} [{:>5.1}-{:>6.1}] {:>7.1} [{:>5.1}-{:>6.1}] {:>5} {:>5} | {:>5.2} [{:.2}-{:.2}]",
                row.server,
                row.load,
                row.subscribers,
                row.publish_rate,
                row.deliveries_per_sec.median,
                row.deliveries_per_sec.min,
                row.deliveries_per_sec.max,
                row.p50_ms.median,
                row.p50_ms.min,
                row.p50_ms.max,
                row.p99_ms.median,
                row.p99_ms.min,
                row.p99_ms.max,
                row.lost,
                row.disconnected,
                row.server_cpu_us_per_delivery.median,
                row.server_cpu_us_per_delivery.min,
                row.server_cpu_us_per_delivery.max
            );
        }
    }

    if !stored.is_empty() {
        println!();
        println!(
            "Stored messages to live followers: one writer POSTing to one channel; latency from POST to frame; the run with the median WebSocket p99 of {}, [min-max] of that p99 (CPU in % of one core)",
            stored.first().map_or(0, |r| r.runs.len())
        );
        println!(
            "{:<15} {:>5} {:>4} {:>7} | {:>7} {:>7} {:>7} | {:>10} {:>7} {:>7} {:>15} | {:>8} {:>7} {:>7} | {:>5} {:>5} | {:>6} {:>8} {:>5}",
            "followers on",
            "ws",
            "sse",
            "offered",
            "posts/s",
            "POST50",
            "POST99",
            "ws frames/s",
            "p50 ms",
            "p99 ms",
            "p99 range",
            "sse ev/s",
            "p50 ms",
            "p99 ms",
            "lost",
            "drops",
            "writer",
            "follower",
            "pg"
        );
        for repeats in stored {
            let row = &repeats.median;
            println!(
                "{:<15} {:>5} {:>4} {:>7} | {:>7.0} {:>7.2} {:>7.2} | {:>10.0} {:>7.2} {:>7.2} {:>15} | {:>8.0} {:>7.2} {:>7.2} | {:>5} {:>5} | {:>5.0}% {:>7.0}% {:>4.0}%",
                row.followers_on,
                row.ws_subscribers,
                row.sse_streams,
                row.offered_rate.map_or("max".to_owned(), |r| r.to_string()),
                row.posts.per_sec,
                row.posts.p50_ms,
                row.posts.p99_ms,
                row.ws.per_sec,
                row.ws.p50_ms,
                row.ws.p99_ms,
                format!("[{:.1}-{:.1}]", repeats.spread.min, repeats.spread.max),
                row.sse.per_sec,
                row.sse.p50_ms,
                row.sse.p99_ms,
                row.lost,
                row.disconnected,
                row.writer_cpu.server_pct,
                row.follower_cpu.server_pct,
                row.writer_cpu.postgres_pct
            );
        }
    }

    println!();
    if let Some(footprint) = footprint {
        println!(
            "Idle connections: {} subscribed, RSS {} -> {} KiB, {:.2} KiB per connection (one run, in a fresh process)",
            footprint.connections,
            footprint.rss_before_kib,
            footprint.rss_after_kib,
            footprint.per_connection_kib
        );
    }
    if let Some(churn) = churn {
        let median = &churn.median;
        println!(
            "Presence churn: {} peers, {:.0} joins+leaves/s (median of {} [{:.0}-{:.0}]), {} disconnected (server CPU {:.0}%, bench CPU {:.0}%)",
            median.peers,
            median.joins_leaves_per_sec,
            churn.runs.len(),
            churn.spread.min,
            churn.spread.max,
            median.disconnected,
            median.cpu.server_pct,
            median.cpu.bench_pct
        );
    }
    if let Some(cluster) = cluster {
        println!();
        println!(
            "Cluster mode (Redis): fan-out, median of {} runs [min-max]; publisher on the first instance, CPU of that instance",
            cluster.fanout.first().map_or(0, |r| r.runs.len())
        );
        println!(
            "{:<9} {:<20} {:>11} {:>8} | {:>28} {:>24} {:>6}",
            "server", "placement", "subscribers", "msg/s", "deliveries/s", "p99 ms", "lost"
        );
        for row in &cluster.fanout {
            println!(
                "{:<9} {:<20} {:>11} {:>8} | {:>10.0} [{:>7.0}-{:>7.0}] {:>6.2} [{:>6.2}-{:>6.2}] {:>6}",
                row.server,
                row.load,
                row.subscribers,
                row.publish_rate,
                row.deliveries_per_sec.median,
                row.deliveries_per_sec.min,
                row.deliveries_per_sec.max,
                row.p99_ms.median,
                row.p99_ms.min,
                row.p99_ms.max,
                row.lost
            );
        }
        for (label, churn) in [
            ("1 instance", &cluster.churn_one_instance),
            ("2 instances", &cluster.churn_two_instances),
        ] {
            println!(
                "Cluster presence churn, {label}: {} peers, {:.0} joins+leaves/s, {} disconnected",
                churn.peers, churn.joins_leaves_per_sec, churn.disconnected
            );
        }
        let c = &cluster.convergence;
        println!(
            "Cluster presence convergence: {} peers joining at once over 2 instances: {} of {} runs converged",
            c.peers, c.converged, c.runs
        );
        for failure in &c.failures {
            println!("  {failure}");
        }
    }
    for note in notes {
        println!("note: {note}");
    }
}
