//! Command line and environment configuration.
//!
//! Every flag has a `CHANNELD_…` environment variable (the database URL uses the conventional
//! `DATABASE_URL`). Secrets are wrapped in [`Secret`] so that `Debug` never prints them.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{auth::MasterKey, ratelimit::Limit};

/// channeld: collaboration channels with persistent history and live delivery.
#[derive(Debug, Parser)]
#[command(name = "channeld", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: human-readable `text` or one JSON object per line.
    #[arg(long, env = "CHANNELD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Parsed once at start, so the size of `serve`'s arguments costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (applies pending migrations first unless --no-migrate).
    Serve(ServeArgs),
    /// Create the database if it is missing, apply pending migrations, and exit.
    Migrate(DatabaseArgs),
    /// Create, list and revoke API keys.
    Keys {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Master key that encrypts key secrets at rest (64 hex characters); needed to create secret keys.
        #[arg(long, env = "CHANNELD_MASTER_KEY", hide_env_values = true)]
        master_key: Option<MasterKey>,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create, list and update apps: the isolated tenants of one server.
    Apps {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Follow realtime channels over WebSocket and print every frame, one JSON object per line.
    Follow(crate::follow::FollowArgs),
    /// Print the OpenAPI document of the REST API and exit: what `GET /v1/openapi.json` serves
    /// (with `/metrics`, which is left out when `--metrics-listen` moves it).
    Openapi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How to reach PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL, e.g. postgres://user:pass@127.0.0.1:5432/channeld.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,

    /// Largest number of pooled database connections.
    #[arg(long, env = "CHANNELD_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// How long a request waits for a pooled connection before answering 503 (e.g. 5s, 500ms).
    #[arg(long, env = "CHANNELD_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address to listen on.
    #[arg(long, env = "CHANNELD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Do not apply pending migrations at start (run `channeld migrate` as a separate step).
    #[arg(long, env = "CHANNELD_NO_MIGRATE")]
    pub no_migrate: bool,

    /// Largest accepted request body in bytes.
    #[arg(long, env = "CHANNELD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// After SIGTERM, how long in-flight requests may take before the process exits anyway.
    #[arg(long, env = "CHANNELD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// The deadline of a request's database work: the pool's `statement_timeout`, and how long a
    /// request may take before it answers 503 `unavailable` (a long poll adds its `wait`).
    #[arg(long, env = "CHANNELD_DB_TIMEOUT", default_value = "5s", value_parser = parse_interval)]
    pub db_timeout: Duration,

    /// Master key that encrypts key secrets at rest (64 hex characters, e.g. `openssl rand -hex 32`).
    #[arg(long, env = "CHANNELD_MASTER_KEY", hide_env_values = true)]
    pub master_key: MasterKey,

    /// Requests per second each key may make, sustained (a key created with --rate-limit overrides it).
    #[arg(long, env = "CHANNELD_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,

    /// Requests each key may make at once.
    #[arg(long, env = "CHANNELD_RATE_BURST", default_value_t = 100)]
    pub rate_burst: u32,

    /// Failed authentications one source (an IPv4 address, an IPv6 /64) may make per minute;
    /// beyond, its credentials are refused with 429 without being looked up.
    #[arg(long, env = "CHANNELD_AUTH_FAILURES_PER_MINUTE", default_value_t = 60)]
    pub auth_failures_per_minute: u32,

    /// Server-Sent Events streams, long polls and MCP waits one key may have open at once;
    /// beyond, 429 with `Retry-After`.
    #[arg(long, env = "CHANNELD_MAX_STREAMS_PER_KEY", default_value_t = 100)]
    pub max_streams_per_key: usize,

    /// Insert statements storing posts that run at once; posts arriving while they all run wait
    /// and are stored together by the next (at most half of --db-max-connections).
    #[arg(long, env = "CHANNELD_POST_STATEMENTS", default_value_t = POST_STATEMENTS,
        value_parser = clap::value_parser!(u16).range(1..))]
    pub post_statements: u16,

    /// Serve /metrics on this separate address (e.g. 127.0.0.1:9090) instead of on --listen.
    #[arg(long, env = "CHANNELD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub http: HttpConfig,

    #[command(flatten)]
    pub realtime: RealtimeConfig,

    #[command(flatten)]
    pub mcp: McpConfig,

    #[command(flatten)]
    pub webhooks: WebhookConfig,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Webhook delivery (SPEC §9).
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Lets webhook URLs reach loopback, private, link-local, CGNAT, multicast and metadata
    /// addresses: for private deployments and tests. Off, such addresses are refused at
    /// registration and at every connection.
    #[arg(
        long = "webhook-allow-private-networks",
        env = "CHANNELD_WEBHOOK_ALLOW_PRIVATE_NETWORKS"
    )]
    pub allow_private_networks: bool,

    /// Accepts `http://` webhook URLs besides `https://`.
    #[arg(long = "webhook-allow-http", env = "CHANNELD_WEBHOOK_ALLOW_HTTP")]
    pub allow_http: bool,

    /// The waits between a failed attempt and the next, each with ±10 % jitter; after the last,
    /// the event is `failed`.
    #[arg(long = "webhook-retry-schedule", env = "CHANNELD_WEBHOOK_RETRY_SCHEDULE", value_delimiter = ',',
          default_value = "5s,5m,30m,2h,5h,10h,10h", value_parser = parse_interval)]
    pub retry_schedule: Vec<Duration>,

    /// How long one attempt may take, response included.
    #[arg(long = "webhook-timeout", env = "CHANNELD_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_interval)]
    pub timeout: Duration,

    /// How long a `message.created` event holds back later ones of its webhook and channel
    /// while it is retried, counted from its first attempt.
    #[arg(long = "webhook-order-hold", env = "CHANNELD_WEBHOOK_ORDER_HOLD", default_value = "30s", value_parser = parse_interval)]
    pub order_hold: Duration,

    /// How often an instance looks for events it was not told of (committed on another
    /// instance, or left by one that died).
    #[arg(long = "webhook-poll-interval", env = "CHANNELD_WEBHOOK_POLL_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub poll_interval: Duration,

    /// Receivers posted to at once by this instance.
    #[arg(
        long = "webhook-concurrency",
        env = "CHANNELD_WEBHOOK_CONCURRENCY",
        default_value_t = 64
    )]
    pub concurrency: usize,

    /// How long delivered and failed events stay in the deliveries log.
    #[arg(long = "webhook-retention", env = "CHANNELD_WEBHOOK_RETENTION", default_value = "3d", value_parser = parse_interval)]
    pub retention: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        let hour = 3600;
        Self {
            allow_private_networks: false,
            allow_http: false,
            retry_schedule: [5, 300, 1800, 2 * hour, 5 * hour, 10 * hour, 10 * hour]
                .map(Duration::from_secs)
                .to_vec(),
            timeout: Duration::from_secs(15),
            order_hold: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            concurrency: 64,
            retention: Duration::from_secs(3 * 24 * hour),
        }
    }
}

/// Cluster mode: several instances sharing realtime through Redis.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Redis URL (e.g. redis://127.0.0.1:6379): share publish, presence, direct messages and
    /// kicks with every instance using the same Redis and prefix. Without it, realtime stays in
    /// this process.
    #[arg(long, env = "CHANNELD_REDIS_URL", hide_env_values = true, value_parser = parse_redis_url)]
    pub redis_url: Option<Secret>,

    /// Prefix of every Redis key and pub/sub channel; instances with the same prefix form one cluster.
    #[arg(long, env = "CHANNELD_REDIS_PREFIX", default_value = "channeld")]
    pub redis_prefix: String,

    /// An instance silent this long (killed, cut off) is removed: its peers leave everywhere.
    #[arg(long, env = "CHANNELD_NODE_TTL", default_value = "5s", value_parser = parse_interval)]
    pub node_ttl: Duration,
}

impl ClusterArgs {
    pub fn settings(&self) -> Option<ClusterSettings> {
        self.redis_url.as_ref().map(|url| ClusterSettings {
            redis_url: url.expose().to_owned(),
            prefix: self.redis_prefix.clone(),
            node_ttl: self.node_ttl,
        })
    }
}

/// How to reach Redis, and how long a silent instance counts as alive.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub redis_url: String,
    /// Prefix of every key and pub/sub channel, so that several clusters can share one Redis.
    pub prefix: String,
    /// An instance whose heartbeat is older than this is reaped.
    pub node_ttl: Duration,
}

fn parse_redis_url(input: &str) -> Result<Secret, String> {
    redis::Client::open(input)
        .map(|_| Secret::new(input))
        .map_err(|error| format!("not a usable Redis URL: {error}"))
}

/// HTTP connection and request limits.
#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Time to receive a request's headers, counted from when the connection starts waiting for
    /// one: it also closes idle keep-alive connections.
    #[arg(long = "http-header-timeout", env = "CHANNELD_HTTP_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_interval)]
    pub header_timeout: Duration,

    /// Time to receive a request's body once its headers are in (beyond: 408).
    #[arg(long = "http-body-timeout", env = "CHANNELD_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_interval)]
    pub body_timeout: Duration,

    /// Longest request URI, path and query, in bytes (beyond: 414).
    #[arg(
        long = "http-max-uri-bytes",
        env = "CHANNELD_HTTP_MAX_URI_BYTES",
        default_value_t = 8 * 1024
    )]
    pub max_uri_bytes: usize,

    /// Largest total size of a request's headers in bytes (beyond: 431).
    #[arg(
        long = "http-max-header-bytes",
        env = "CHANNELD_HTTP_MAX_HEADER_BYTES",
        default_value_t = 16 * 1024
    )]
    pub max_header_bytes: usize,

    /// A load balancer or proxy (address or CIDR, e.g. 10.0.0.0/8) whose `X-Forwarded-For` is
    /// believed: the client's address for the per-IP connect limit and the logs. Repeatable.
    #[arg(
        long = "trusted-proxy",
        env = "CHANNELD_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,
}

/// An address block, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("`{input}` is not an address or CIDR block (e.g. 10.0.0.0/8)");
        let (address, bits) = match input.split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (input, None),
        };
        let network: std::net::IpAddr = address.trim().parse().map_err(|_| invalid())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(bits) => bits.trim().parse::<u8>().map_err(|_| invalid())?,
            None => max,
        };
        if bits > max {
            return Err(invalid());
        }
        Ok(Self { network, bits })
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The MCP endpoint, `POST /v1/mcp`.
#[derive(Debug, Clone, Args)]
pub struct McpConfig {
    /// A `Host` (name, or `name:port`) `/v1/mcp` answers; any other is refused 403, and so is a
    /// browser `Origin` whose host is not listed. This defeats DNS rebinding. Behind a load
    /// balancer, list the public name (e.g. `agents.example.com`); `*` accepts any. Repeatable.
    #[arg(
        long = "mcp-allowed-host",
        env = "CHANNELD_MCP_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned(), "[::1]".to_owned()]
    )]
    pub allowed_hosts: Vec<String>,

    /// The longest `wait_seconds` the `wait_for_messages` tool accepts (and its default).
    #[arg(long = "mcp-max-wait", env = "CHANNELD_MCP_MAX_WAIT", default_value = "25s", value_parser = parse_mcp_wait)]
    pub max_wait: Duration,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()],
            max_wait: Duration::from_secs(25),
        }
    }
}

/// Whole seconds from 1 to 300: a tool call is one HTTP request, and clients time those out.
fn parse_mcp_wait(input: &str) -> Result<Duration, String> {
    let wait = parse_interval(input)?;
    if wait.subsec_nanos() != 0 || wait > Duration::from_secs(300) {
        return Err(format!(
            "`{input}` is not a usable wait: whole seconds from 1s to 300s"
        ));
    }
    Ok(wait)
}

/// WebSocket limits and timers.
#[derive(Debug, Clone, Args)]
pub struct RealtimeConfig {
    /// Interval between server pings on each WebSocket.
    #[arg(long = "ws-ping-interval", env = "CHANNELD_WS_PING_INTERVAL", default_value = "30s", value_parser = parse_interval)]
    pub ping_interval: Duration,

    /// A WebSocket silent for this long (no frame, no pong) is dropped.
    #[arg(long = "ws-idle-timeout", env = "CHANNELD_WS_IDLE_TIMEOUT", default_value = "40s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Largest `data` of an inbound WebSocket frame in bytes, announced as `maxMessageSize` (the
    /// frame may carry 4 KiB of envelope around it; larger: close 1009).
    #[arg(long = "ws-max-frame-bytes", env = "CHANNELD_WS_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Subscriptions one connection may hold.
    #[arg(
        long = "ws-max-subscriptions",
        env = "CHANNELD_WS_MAX_SUBSCRIPTIONS",
        default_value_t = 100
    )]
    pub max_subscriptions: usize,

    /// Sustained inbound frames per second per connection (beyond the burst: close 4011).
    #[arg(
        long = "ws-frame-rate",
        env = "CHANNELD_WS_FRAME_RATE",
        default_value_t = 100
    )]
    pub frame_rate: u32,

    /// Inbound frames a connection may send in a burst.
    #[arg(
        long = "ws-frame-burst",
        env = "CHANNELD_WS_FRAME_BURST",
        default_value_t = 200
    )]
    pub frame_burst: u32,

    /// WebSocket connects allowed per source IP per window (beyond: HTTP 429).
    #[arg(
        long = "ws-connects-per-ip",
        env = "CHANNELD_WS_CONNECTS_PER_IP",
        default_value_t = 60
    )]
    pub connects_per_ip: u32,

    /// The window of --ws-connects-per-ip.
    #[arg(long = "ws-connect-window", env = "CHANNELD_WS_CONNECT_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub connect_window: Duration,

    /// Frames queued for one connection before it counts as a slow consumer and is dropped.
    #[arg(
        long = "ws-outbound-queue",
        env = "CHANNELD_WS_OUTBOUND_QUEUE",
        default_value_t = 4096
    )]
    pub outbound_queue: usize,

    /// Bytes queued for one connection before it counts as a slow consumer and is dropped.
    #[arg(
        long = "ws-outbound-bytes",
        env = "CHANNELD_WS_OUTBOUND_BYTES",
        default_value_t = 4 * 1024 * 1024
    )]
    pub outbound_bytes: usize,

    /// Interval of the comment lines that keep quiet Server-Sent Events streams open.
    #[arg(long = "sse-keep-alive", env = "CHANNELD_SSE_KEEP_ALIVE", default_value = "15s", value_parser = parse_interval)]
    pub sse_keep_alive: Duration,

    /// Longest lifetime of a realtime token: `exp - iat` (`exp` minus now when `iat` is absent).
    /// Longer tokens are refused with 4001, and `POST /v1/tokens` mints at most this.
    #[arg(long = "token-max-lifetime", env = "CHANNELD_TOKEN_MAX_LIFETIME", default_value = "24h", value_parser = parse_interval)]
    pub token_max_lifetime: Duration,

    /// How often open connections, streams, long polls and MCP waits are checked against revoked
    /// or expired keys: revocation ends them within this long.
    #[arg(long = "key-check-interval", env = "CHANNELD_KEY_CHECK_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub key_check_interval: Duration,

    /// How often every followed persistent channel is re-read from its cursor, catching messages
    /// whose hint was lost (a poster that died between its commit and its notification).
    #[arg(long = "delivery-sweep-interval", env = "CHANNELD_DELIVERY_SWEEP_INTERVAL", default_value = "2s", value_parser = parse_interval)]
    pub delivery_sweep_interval: Duration,

    /// How often a waiting consumer-group claim looks again when nothing woke it: a nack on
    /// another instance wakes no claim here.
    #[arg(long = "consumer-recheck-interval", env = "CHANNELD_CONSUMER_RECHECK_INTERVAL", default_value = "2s", value_parser = parse_interval)]
    pub consumer_recheck_interval: Duration,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(40),
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 100,
            frame_rate: 100,
            frame_burst: 200,
            connects_per_ip: 60,
            connect_window: Duration::from_secs(60),
            outbound_queue: 4096,
            outbound_bytes: 4 * 1024 * 1024,
            key_check_interval: Duration::from_secs(1),
            token_max_lifetime: Duration::from_secs(86_400),
            sse_keep_alive: Duration::from_secs(15),
            delivery_sweep_interval: Duration::from_secs(2),
            consumer_recheck_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a secret key and print it once.
    Create(CreateKeyArgs),
    /// List keys (secrets are never shown again).
    List,
    /// Revoke a key: it stops working at once (on a running server within a second).
    Revoke {
        /// The key's id (sk_id_…), the whole secret key (sk_live_… or sk_id_…:sk_secret_…),
        /// or a publishable key (pk_live_…).
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an app.
    Create {
        /// 1-64 characters of a-z, 0-9, `_` and `-`.
        name: String,
        #[command(flatten)]
        quotas: AppQuotaArgs,
    },
    /// List apps, one per line, name first.
    List,
    /// Change an app's quotas (`none` makes one unlimited again).
    Update {
        name: String,
        #[command(flatten)]
        quotas: AppQuotaArgs,
    },
}

/// An app's quotas; each is unlimited when unset, and `none` unsets it.
#[derive(Debug, Args)]
pub struct AppQuotaArgs {
    /// Active persistent channels at most (beyond: 403 quota_exceeded).
    #[arg(long, value_parser = parse_quota)]
    pub max_channels: Option<Quota>,
    /// WebSocket connections at most (beyond: the upgrade closes with 4010).
    #[arg(long, value_parser = parse_quota)]
    pub max_connections: Option<Quota>,
    /// Requests per second shared by all the app's keys, e.g. 500 or 500/s.
    #[arg(long, value_parser = parse_rate)]
    pub rate_limit: Option<Quota>,
}

/// A quota as given: a number, or `None` for `none` (unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota(pub Option<u32>);

fn parse_quota(value: &str) -> Result<Quota, String> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(Quota(None));
    }
    let limit = value
        .parse::<u32>()
        .map_err(|_| format!("`{value}` is not a whole number (or `none`)"))?;
    if i32::try_from(limit).is_err() {
        return Err(format!("`{value}` is too large"));
    }
    Ok(Quota(Some(limit)))
}

fn parse_rate(value: &str) -> Result<Quota, String> {
    match parse_quota(value.strip_suffix("/s").unwrap_or(value))? {
        Quota(Some(0)) => Err("a rate limit is at least 1 request per second".into()),
        rate => Ok(rate),
    }
}

#[derive(Debug, Args)]
pub struct CreateKeyArgs {
    /// A label for people, e.g. the orchestrator that will use the key.
    #[arg(long)]
    pub name: String,

    /// The app the key acts for (`channeld apps list`).
    #[arg(long, default_value = "default")]
    pub app: String,

    /// Comma-separated scopes: channels:read, channels:write, publish, subscribe, presence, send, admin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,

    /// Realtime channel pattern the key may touch; repeat for several (default `**`).
    #[arg(long = "channel-pattern")]
    pub channel_patterns: Vec<String>,

    /// Lifetime, e.g. 90d, 12h, 1h30m; the key never expires when omitted.
    #[arg(long, value_parser = parse_duration)]
    pub expires_in: Option<Duration>,

    /// Print only the single-string secret (sk_live_…, or pk_live_…), for scripts.
    #[arg(long, short)]
    pub quiet: bool,

    /// This key's own sustained requests per second (default: the server's --rate-limit).
    #[arg(long)]
    pub rate_limit: Option<u32>,

    /// This key's own burst (default: the server's --rate-burst).
    #[arg(long)]
    pub rate_burst: Option<u32>,

    /// Create a publishable key (pk_live_…): a browser-safe WebSocket credential.
    #[arg(long)]
    pub publishable: bool,

    /// Origin allowed to use a publishable key, e.g. https://app.example.com (`*` for any); repeatable.
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,
}

/// Settings the running server consults per request.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_body_bytes: usize,
    /// A request's deadline for its database work (a long poll adds its `wait`).
    pub db_timeout: Duration,
    pub master_key: MasterKey,
    /// Per-key rate limit for keys without their own.
    pub rate_limit: Limit,
    /// Failed authentications per source and minute before 429.
    pub auth_failures_per_minute: u32,
    /// Long-lived requests (SSE, long polls, MCP waits) per key.
    pub max_streams_per_key: usize,
    /// `/metrics` is served on the main listener (false when --metrics-listen moves it).
    pub metrics_on_main: bool,
    pub http: HttpConfig,
    pub realtime: RealtimeConfig,
    pub mcp: McpConfig,
    pub webhooks: WebhookConfig,
    /// Cluster mode, when a Redis URL was given.
    pub cluster: Option<ClusterSettings>,
    /// Insert statements storing posts that run at once (`--post-statements`; see
    /// `messages::batch`).
    pub post_statements: usize,
    /// How long a post waits for one of the instance's insert statements to finish, to be
    /// stored together with others, before it is stored alone (see `messages::batch`). No flag
    /// sets it: 100 ms.
    pub post_batch_wait: Duration,
    /// Fault injection for tests; no flag sets it, and it is all zero in a served process.
    pub faults: Faults,
}

/// See [`Config::post_statements`]: as many as a small database server has cores. Each statement
/// stores up to 64 posts, so two keep up with thousands of posts a second.
pub const POST_STATEMENTS: u16 = 2;

/// See [`Config::post_batch_wait`].
const POST_BATCH_WAIT: Duration = Duration::from_millis(100);

/// Pauses that tests put where a race would otherwise be a matter of luck.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Between a post's commit and its doorbell, during which a test's client hangs up.
    pub post_commit_pause: Duration,
    /// A WebSocket frame carrying this `requestId` panics inside its connection's task.
    pub panic_on_request_id: Option<String>,
}

impl Default for Config {
    /// Defaults with a freshly generated master key, for tests and embedding.
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            db_timeout: Duration::from_secs(5),
            master_key: MasterKey::generate(),
            rate_limit: Limit {
                rate: 50,
                burst: 100,
            },
            auth_failures_per_minute: 60,
            max_streams_per_key: 100,
            metrics_on_main: true,
            http: HttpConfig::default(),
            realtime: RealtimeConfig::default(),
            mcp: McpConfig::default(),
            webhooks: WebhookConfig::default(),
            cluster: None,
            post_statements: usize::from(POST_STATEMENTS),
            post_batch_wait: POST_BATCH_WAIT,
            faults: Faults::default(),
        }
    }
}

impl From<&ServeArgs> for Config {
    fn from(args: &ServeArgs) -> Self {
        Self {
            max_body_bytes: args.max_body_bytes,
            db_timeout: args.db_timeout,
            master_key: args.master_key.clone(),
            rate_limit: Limit {
                rate: args.rate_limit,
                burst: args.rate_burst,
            },
            auth_failures_per_minute: args.auth_failures_per_minute,
            max_streams_per_key: args.max_streams_per_key,
            metrics_on_main: args.metrics_listen.is_none(),
            http: args.http.clone(),
            realtime: args.realtime.clone(),
            mcp: args.mcp.clone(),
            webhooks: args.webhooks.clone(),
            cluster: args.cluster.settings(),
            post_statements: usize::from(args.post_statements),
            post_batch_wait: POST_BATCH_WAIT,
            faults: Faults::default(),
        }
    }
}

/// A string that must never reach a log line.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A duration that must not be zero: the period of something repeated.
pub fn parse_interval(input: &str) -> Result<Duration, String> {
    match parse_duration(input)? {
        Duration::ZERO => Err(format!(
            "`{input}` is not a usable interval: it must be above zero"
        )),
        interval => Ok(interval),
    }
}

/// Parses durations such as `30s`, `500ms`, `15m`, `12h`, `90d`, `2w` or `1h30m`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let invalid =
        || format!("invalid duration `{input}` (examples: 500ms, 30s, 15m, 12h, 90d, 1h30m)");
    let mut total = Duration::ZERO;
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "w" => Duration::from_secs(7 * 86_400),
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        let part = unit.checked_mul(u32::try_from(amount).map_err(|_| invalid())?);
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(invalid)?;
    }
    Ok(total)
}

/// What a duration in a request body looks like (`ack_wait`, `expires_in`), as the OpenAPI
/// document states it: 1-4 amounts of at most 6 digits, each with its unit.
pub const API_DURATION_PATTERN: &str = r"^([0-9]{1,6}(ms|s|m|h|d)){1,4}$";

/// 1-4 amounts of at most 6 digits, each with its unit (`ms`, `s`, `m`, `h`, `d`): `2h`, `1h30m`.
/// What [`API_DURATION_PATTERN`] says, so the document and the server refuse alike.
pub fn is_api_duration(text: &str) -> bool {
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=6).contains(&digits) {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d"]
            .into_iter()
            .find(|unit| rest.starts_with(unit));
        let Some(unit) = unit else {
            return false;
        };
        rest = &rest[unit.len()..];
        parts += 1;
    }
    (1..=4).contains(&parts)
}

/// A duration as the API shows it: `30s`, `1m30s`, `1h`, `1500ms`.
pub fn format_api_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let mut secs = millis / 1000;
    let mut text = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size {
            text.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 || text.is_empty() {
        text.push_str(&format!("{secs}s"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_combinations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        for bad in ["", "10", "s", "10x", "-5s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "`{bad}` should be rejected");
        }
        assert!(parse_interval("0s").is_err(), "a zero period is refused");
        for good in ["2h", "1h30m", "500ms", "999999d", "1d1h1m1s"] {
            assert!(is_api_duration(good), "{good}");
        }
        for bad in ["", "2", "h", "1234567s", "1d1h1m1s1ms", " 2h", "2h ", "2x"] {
            assert!(!is_api_duration(bad), "{bad}");
        }
        for (millis, text) in [
            (30_000, "30s"),
            (90_000, "1m30s"),
            (3_600_000, "1h"),
            (1500, "1500ms"),
        ] {
            assert_eq!(format_api_duration(Duration::from_millis(millis)), text);
        }
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn trusted_proxies_are_addresses_or_blocks() {
        let block: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(block.contains("10.1.2.3".parse().unwrap()));
        assert!(block.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!block.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "`{bad}` should be refused");
        }
    }

    #[test]
    fn secrets_do_not_print_in_debug_output() {
        let secret = Secret::new("postgres://user:hunter2@db/channeld");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
