//! The table `make bench` prints.

use serde::Serialize;

use crate::{
    fanout::FanOut,
    realtime::{Churn, Footprint},
    stats::{CpuShare, Figures},
    stored::StoredRun,
};

/// One REST operation at one concurrency, pgbench beside channeld.
#[derive(Debug, Clone, Serialize)]
pub struct RestRow {
    pub op: &'static str,
    pub clients: usize,
    pub pgbench: Figures,
    pub channeld: Figures,
    /// channeld requests/s over pgbench transactions/s.
    pub ratio: f64,
    /// PostgreSQL's CPU while pgbench ran, in % of one core.
    pub pgbench_postgres_pct: f64,
    /// channeld's, the load generator's and PostgreSQL's CPU while channeld was measured.
    pub cpu: CpuShare,
}

pub fn print(
    rest: &[RestRow],
    fanout: &[FanOut],
    stored: &[StoredRun],
    footprint: Option<&Footprint>,
    churn: Option<&Churn>,
    cluster: Option<&crate::cluster::ClusterFigures>,
    notes: &[String],
) {
    if !rest.is_empty() {
        println!();
        println!(
            "REST against the database ceiling (pgbench runs channeld's own SQL, -M prepared; CPU in % of one core)"
        );
        println!(
            "{:<14} {:>7} | {:>10} {:>8} {:>8} {:>6} | {:>10} {:>8} {:>8} {:>6} {:>6} {:>6} | {:>6}",
            "operation",
            "clients",
            "pgbench/s",
            "p50 ms",
            "p99 ms",
            "pg CPU",
            "channeld/s",
            "p50 ms",
            "p99 ms",
            "pg CPU",
            "server",
            "bench",
            "ratio"
        );
        for row in rest {
            println!(
                "{:<14} {:>7} | {:>10.0} {:>8.2} {:>8.2} {:>5.0}% | {:>10.0} {:>8.2} {:>8.2} {:>5.0}% {:>5.0}% {:>5.0}% | {:>6.2}",
                row.op,
                row.clients,
                row.pgbench.per_sec,
                row.pgbench.p50_ms,
                row.pgbench.p99_ms,
                row.pgbench_postgres_pct,
                row.channeld.per_sec,
                row.channeld.p50_ms,
                row.channeld.p99_ms,
                row.cpu.postgres_pct,
                row.cpu.server_pct,
                row.cpu.bench_pct,
                row.ratio
            );
        }
    }

    if !fanout.is_empty() {
        println!();
        println!("WebSocket fan-out: one publisher, ~100-byte messages (CPU in % of one core)");
        println!(
            "{:<9} {:>6} {:>8} {:>12} {:>8} {:>8} {:>6} {:>6} {:>10} {:>9}",
            "server",
            "subs",
            "pub/s",
            "deliveries/s",
            "p50 ms",
            "p99 ms",
            "lost",
            "drops",
            "server CPU",
            "bench CPU"
        );
        for row in fanout {
            println!(
                "{:<9} {:>6} {:>8} {:>12.0} {:>8.2} {:>8.2} {:>6} {:>6} {:>9.0}% {:>8.0}%",
                row.server,
                row.subscribers,
                row.publish_rate,
                row.deliveries.per_sec,
                row.deliveries.p50_ms,
                row.deliveries.p99_ms,
                row.lost,
                row.disconnected,
                row.cpu.server_pct,
                row.cpu.bench_pct
            );
        }
        for ours in fanout.iter().filter(|r| r.server == "channeld") {
            let theirs = fanout
                .iter()
                .find(|t| t.server == "sockudo" && t.subscribers == ours.subscribers);
            if let Some(theirs) = theirs {
                println!(
                    "  {} subscribers: channeld / sockudo = {:.2}x deliveries/s, p99 {:.2} vs {:.2} ms",
                    ours.subscribers,
                    ours.deliveries.per_sec / theirs.deliveries.per_sec.max(f64::EPSILON),
                    ours.deliveries.p99_ms,
                    theirs.deliveries.p99_ms
                );
            }
        }
    }

    if !stored.is_empty() {
        println!();
        println!(
            "Stored messages to live followers: one writer POSTing to one channel; latency from POST to frame (CPU in % of one core)"
        );
        println!(
            "{:<15} {:>5} {:>4} {:>7} | {:>7} {:>7} {:>7} | {:>10} {:>7} {:>7} | {:>8} {:>7} {:>7} | {:>5} {:>5} | {:>6} {:>8} {:>5}",
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
            "sse ev/s",
            "p50 ms",
            "p99 ms",
            "lost",
            "drops",
            "writer",
            "follower",
            "pg"
        );
        for row in stored {
            println!(
                "{:<15} {:>5} {:>4} {:>7} | {:>7.0} {:>7.2} {:>7.2} | {:>10.0} {:>7.2} {:>7.2} | {:>8.0} {:>7.2} {:>7.2} | {:>5} {:>5} | {:>5.0}% {:>7.0}% {:>4.0}%",
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
            "Idle connections: {} subscribed, RSS {} -> {} KiB, {:.2} KiB per connection",
            footprint.connections,
            footprint.rss_before_kib,
            footprint.rss_after_kib,
            footprint.per_connection_kib
        );
    }
    if let Some(churn) = churn {
        println!(
            "Presence churn: {} peers, {:.0} joins+leaves/s, {} disconnected (server CPU {:.0}%, bench CPU {:.0}%)",
            churn.peers,
            churn.joins_leaves_per_sec,
            churn.disconnected,
            churn.cpu.server_pct,
            churn.cpu.bench_pct
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
                row.placement,
                row.subscribers,
                row.publish_rate,
                row.deliveries_per_sec_median,
                row.deliveries_per_sec_min,
                row.deliveries_per_sec_max,
                row.p99_ms_median,
                row.p99_ms_min,
                row.p99_ms_max,
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
