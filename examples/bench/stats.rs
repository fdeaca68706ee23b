//! Latency percentiles and the CPU and memory of processes, read from `/proc`.

use std::time::Instant;

use serde::Serialize;

/// Throughput and latency of one measured run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Figures {
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Figures {
    /// From a count over `seconds` and latencies in microseconds (sorted here).
    pub fn new(count: u64, seconds: f64, latencies_us: &mut [u32]) -> Self {
        latencies_us.sort_unstable();
        Self {
            per_sec: count as f64 / seconds.max(f64::EPSILON),
            p50_ms: percentile(latencies_us, 0.50),
            p99_ms: percentile(latencies_us, 0.99),
        }
    }
}

/// The median of repeated runs with their minimum and maximum.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Of one figure over runs; with an even count, the upper of the two middle values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_by(f64::total_cmp);
        if values.is_empty() {
            return Self::default();
        }
        Self {
            median: values[values.len() / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }
}

/// Repeated runs whose figures belong together: the run with the median headline figure, that
/// figure's range, and every run.
#[derive(Debug, Clone, Serialize)]
pub struct Repeats<T> {
    /// The headline figure the median run was chosen by.
    pub by: &'static str,
    pub median: T,
    pub spread: Spread,
    pub runs: Vec<T>,
}

impl<T: Clone> Repeats<T> {
    pub fn of(by: &'static str, runs: Vec<T>, key: impl Fn(&T) -> f64) -> Self {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| key(&runs[a]).total_cmp(&key(&runs[b])));
        Self {
            by,
            median: runs[order[order.len() / 2]].clone(),
            spread: Spread::of(runs.iter().map(&key)),
            runs,
        }
    }
}

/// The `p` quantile of sorted microseconds, in milliseconds.
fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() as f64 * p) as usize).min(sorted_us.len() - 1);
    f64::from(sorted_us[index]) / 1000.0
}

/// Microseconds since the Unix epoch: publish timestamps that another task on this machine
/// compares with its own clock.
pub fn epoch_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// CPU time of a process in clock ticks (user + system), from `/proc/<pid>/stat`; with
/// `children`, also that of its exited children it has waited for.
fn cpu_ticks(pid: &str, children: bool) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime, stime, cutime and cstime are fields 14-17 of stat; 12-15 counting after the name.
    let own = field(11) + field(12);
    if children {
        own + field(13) + field(14)
    } else {
        own
    }
}

/// CPU time of every PostgreSQL process on the machine (backends, WAL writer, checkpointer).
/// Backends that exit are reaped by the postmaster, whose children's time then holds theirs.
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_ticks(&pid, true))
        .sum()
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU use of the load generator and of the server over one measured window.
pub struct CpuWindow {
    started: Instant,
    server: String,
    bench_ticks: u64,
    server_ticks: u64,
    postgres_ticks: u64,
}

/// Percent of one core: 200 means both cores of a 2-core machine were busy.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuShare {
    /// Length of the window measured.
    pub seconds: f64,
    pub bench_pct: f64,
    pub server_pct: f64,
    pub postgres_pct: f64,
}

impl CpuWindow {
    pub fn start(server_pid: u32) -> Self {
        let server = server_pid.to_string();
        Self {
            started: Instant::now(),
            bench_ticks: cpu_ticks("self", false),
            server_ticks: cpu_ticks(&server, false),
            postgres_ticks: postgres_ticks(),
            server,
        }
    }

    pub fn stop(&self) -> CpuShare {
        // Linux reports CPU time in USER_HZ, which is 100 on every architecture it runs on.
        let ticks_per_sec = 100.0;
        let seconds = self.started.elapsed().as_secs_f64().max(f64::EPSILON);
        let pct = |now: u64, then: u64| {
            (now.saturating_sub(then)) as f64 / ticks_per_sec / seconds * 100.0
        };
        CpuShare {
            seconds,
            bench_pct: pct(cpu_ticks("self", false), self.bench_ticks),
            server_pct: pct(cpu_ticks(&self.server, false), self.server_ticks),
            postgres_pct: pct(postgres_ticks(), self.postgres_ticks),
        }
    }
}

/// Waits until the process `pid` has gone quiet (under 10% of a core over half a second), at
/// most 30 s: a server still draining the backlog of an overloaded run must not take CPU from
/// the next run, its own or another server's.
pub async fn wait_quiet(pid: u32) {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while Instant::now() < deadline {
        let window = CpuWindow::start(pid);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if window.stop().server_pct < 10.0 {
            return;
        }
    }
}
