//! The table `make bench` prints.

use serde::Serialize;

use crate::{
    fanout::{Ladder, Repeated},
    realtime::{Churn, Footprint},
    stats::{CpuShare, Figures, Repeats, Spread},
    stored::StoredRun,
};

/// One measured round: pgbench, the floor and channeld (in a rotating order), at one concurrency.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestRun {
    /// pgbench's throughput and, as `p50_ms`, its average latency (no per-transaction log).
    pub pgbench: Figures,
    pub channeld: Figures,
    /// The floor server's (`examples/floor.rs`), when it ran.
    pub floor: Option<Figures>,
    /// channeld requests/s over pgbench transactions/s.
    pub ratio: f64,
    /// channeld requests/s over the floor's.
    pub floor_ratio: Option<f64>,
    /// PostgreSQL's CPU while pgbench ran, in % of one core.
    pub pgbench_postgres_pct: f64,
    /// channeld's, the load generator's and PostgreSQL's CPU while channeld was measured.
    pub cpu: CpuShare,
    /// The same while the floor was measured (`server_pct` is the floor's).
    pub floor_cpu: Option<CpuShare>,
    /// CPU per request, in µs: PostgreSQL's under pgbench, under the floor and under channeld,
    /// and the floor's and channeld's own.
    pub pg_us_pgbench: f64,
    pub pg_us_floor: Option<f64>,
    pub pg_us_channeld: f64,
    pub server_us_floor: Option<f64>,
    pub server_us_channeld: f64,
}

/// µs of CPU per request from a CPU share (% of one core) and a rate.
fn per_request_us(pct: f64, per_sec: f64) -> f64 {
    pct * 10_000.0 / per_sec.max(f64::EPSILON)
}

impl RestRun {
    /// Works out the ratios and the CPU per request once every system has run.
    pub fn finish(&mut self) {
        self.ratio = self.channeld.per_sec / self.pgbench.per_sec.max(f64::EPSILON);
        self.floor_ratio = self
            .floor
            .map(|floor| self.channeld.per_sec / floor.per_sec.max(f64::EPSILON));
        self.pg_us_pgbench = per_request_us(self.pgbench_postgres_pct, self.pgbench.per_sec);
        self.pg_us_channeld = per_request_us(self.cpu.postgres_pct, self.channeld.per_sec);
        self.server_us_channeld = per_request_us(self.cpu.server_pct, self.channeld.per_sec);
        if let (Some(floor), Some(cpu)) = (self.floor, self.floor_cpu) {
            self.pg_us_floor = Some(per_request_us(cpu.postgres_pct, floor.per_sec));
            self.server_us_floor = Some(per_request_us(cpu.server_pct, floor.per_sec));
        }
    }

    /// Notes for CPU readings that cannot be right: PostgreSQL nearly idle while it served
    /// hundreds of requests a second, or a server idle while it answered them.
    pub fn implausible(&self, op: &str, clients: usize, round: usize) -> Vec<String> {
        let mut notes = Vec::new();
        let mut check = |what: &str, pct: f64, per_sec: f64| {
            if per_sec > 100.0 && pct < 5.0 {
                notes.push(format!(
                    "implausible CPU reading: {what} at {pct:.1}% of a core for {per_sec:.0}/s ({op}, {clients} clients, round {round})"
                ));
            }
        };
        check(
            "PostgreSQL under pgbench",
            self.pgbench_postgres_pct,
            self.pgbench.per_sec,
        );
        check(
            "PostgreSQL under channeld",
            self.cpu.postgres_pct,
            self.channeld.per_sec,
        );
        check("channeld", self.cpu.server_pct, self.channeld.per_sec);
        if let (Some(floor), Some(cpu)) = (self.floor, self.floor_cpu) {
            check(
                "PostgreSQL under the floor",
                cpu.postgres_pct,
                floor.per_sec,
            );
            check("the floor", cpu.server_pct, floor.per_sec);
        }
        notes
    }
}

/// One REST operation at one concurrency over repeated pairs. `pgbench`, `channeld` and `ratio`
/// are medians (each field on its own), `ratio_min`/`ratio_max` the range, `runs` every pair.
#[derive(Debug, Clone, Serialize)]
pub struct RestRow {
    pub op: &'static str,
    pub clients: usize,
    pub pgbench: Figures,
    pub channeld: Figures,
    pub floor: Option<Figures>,
    pub ratio: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// channeld over the floor: median, min, max.
    pub floor_ratio: Option<Spread>,
    pub floor_per_sec: Option<Spread>,
    /// Medians of the runs' CPU per request, in µs.
    pub pg_us_pgbench: f64,
    pub pg_us_floor: Option<f64>,
    pub pg_us_channeld: f64,
    pub server_us_floor: Option<f64>,
    pub server_us_channeld: f64,
    /// channeld's server CPU per request over the floor's, round by round: median, min, max.
    pub floor_cpu_ratio: Option<Spread>,
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
        let with_floor = runs.iter().all(|r| r.floor.is_some());
        let floor_spread = |f: &dyn Fn(&RestRun) -> Option<f64>| {
            with_floor.then(|| Spread::of(runs.iter().filter_map(f)))
        };
        Self {
            op,
            clients,
            pgbench: figures(&|r| r.pgbench),
            channeld: figures(&|r| r.channeld),
            floor: with_floor.then(|| figures(&|r| r.floor.unwrap_or_default())),
            ratio: ratio.median,
            ratio_min: ratio.min,
            ratio_max: ratio.max,
            floor_ratio: floor_spread(&|r| r.floor_ratio),
            floor_per_sec: floor_spread(&|r| r.floor.map(|f| f.per_sec)),
            pg_us_pgbench: median(&|r| r.pg_us_pgbench),
            pg_us_floor: floor_spread(&|r| r.pg_us_floor).map(|s| s.median),
            pg_us_channeld: median(&|r| r.pg_us_channeld),
            server_us_floor: floor_spread(&|r| r.server_us_floor).map(|s| s.median),
            server_us_channeld: median(&|r| r.server_us_channeld),
            floor_cpu_ratio: floor_spread(&|r| {
                r.server_us_floor
                    .filter(|floor| *floor > 0.0)
                    .map(|floor| r.server_us_channeld / floor)
            }),
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
            "REST: pgbench runs channeld's own per-request SQL (-M prepared, no per-transaction log; its latency is the average), the floor (examples/floor.rs) the same routes with nothing else, channeld itself; median of {} rounds [min-max], order rotated each round, VACUUM ANALYZE and CHECKPOINT before every run",
            rest.first().map_or(0, |r| r.runs.len())
        );
        println!(
            "| operation | clients | pgbench tx/s | avg ms | floor req/s | p50 / p99 ms | channeld req/s | p50 / p99 ms | channeld / pgbench | channeld / floor | PG µs/req: pgbench, floor, channeld | server µs/req: floor, channeld | server CPU / floor |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let spread = |s: &Spread| format!("{:.0} [{:.0}-{:.0}]", s.median, s.min, s.max);
        let optional = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let ratio = |r: Option<&Spread>| {
            r.map_or("-".to_owned(), |r| {
                format!("{:.2} [{:.2}-{:.2}]", r.median, r.min, r.max)
            })
        };
        for row in rest {
            // pgbench is left out with `--rest-systems`: its columns are then empty.
            let pgbench_ran = row.pgbench_per_sec.median > 0.0;
            let if_ran = |text: String| if pgbench_ran { text } else { "-".to_owned() };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} / {:.2} | {} | {} | {}, {}, {:.0} | {}, {:.0} | {} |",
                row.op,
                row.clients,
                if_ran(spread(&row.pgbench_per_sec)),
                if_ran(format!("{:.2}", row.pgbench.p50_ms)),
                row.floor_per_sec.as_ref().map_or("-".to_owned(), spread),
                row.floor.map_or("-".to_owned(), |f| format!(
                    "{:.2} / {:.2}",
                    f.p50_ms, f.p99_ms
                )),
                spread(&row.channeld_per_sec),
                row.channeld.p50_ms,
                row.channeld.p99_ms,
                if_ran(format!(
                    "{:.2} [{:.2}-{:.2}]",
                    row.ratio, row.ratio_min, row.ratio_max
                )),
                ratio(row.floor_ratio.as_ref()),
                if_ran(format!("{:.0}", row.pg_us_pgbench)),
                optional(row.pg_us_floor),
                row.pg_us_channeld,
                optional(row.server_us_floor),
                row.server_us_channeld,
                ratio(row.floor_cpu_ratio.as_ref()),
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
