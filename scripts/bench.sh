#!/usr/bin/env bash
# `make bench`: measures channeld on a release build, on loopback, and writes the figures to
# bench/results/latest.json. See examples/bench/main.rs for what each row measures.
#
#   scripts/bench.sh                                the whole run (about 4 minutes once built)
#   BENCH_ARGS="--only rest --rest-seconds 10" scripts/bench.sh   options for the load generator
#   BENCH_NO_SOCKUDO=1 scripts/bench.sh             without the sockudo comparison
#   BENCH_NO_LIST=1 scripts/bench.sh                without the channel list on 100,000 channels
#   BENCH_NO_HISTORY=1 scripts/bench.sh             without the pages of 10,000,000 messages
#   BENCH_NO_FLOOD=1 scripts/bench.sh               without the credential flood
#   BENCH_NO_CONSUMERS=1 scripts/bench.sh           without the consumer groups
#   BENCH_NO_WEBHOOKS=1 scripts/bench.sh            without the webhooks
#
# Runs on a fresh database (channeld_bench) with channeld's limits raised so that they do not
# shape the load. sockudo, the Pusher-protocol server the fan-out is compared with, is built once
# with `cargo install` into $BENCH_CACHE (outside the repository); when that fails, its rows are
# skipped with a note.
set -euo pipefail
# The load generator holds many streams and waits with one key: no per-key bound on them here.
export CHANNELD_MAX_STREAMS_PER_KEY=1000000
cd "$(dirname "$0")/.."
say() { echo "bench: $*" >&2; }
as_root=$([ "$(id -u)" -eq 0 ] && echo yes || true)

# Both servers and the load generator hold one descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
idle=10000
limit=$(ulimit -n)
if [ "$limit" != unlimited ] && [ "$limit" -lt $((idle + 1024)) ]; then
  idle=$((limit - 1024))
  say "at most $limit open files here; measuring $idle idle connections"
fi

if ! command -v pgbench >/dev/null && ! ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1; then
  [ -n "$as_root" ] || { say "pgbench is missing: install Debian's postgresql package"; exit 1; }
  say "installing pgbench (Debian's postgresql package)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
command -v pgbench >/dev/null || PATH="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1):$PATH"

SQLX_OFFLINE=true cargo build --release --quiet --bin channeld --example bench --example floor

# sockudo, built once and cached outside the repository.
BENCH_CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/channeld-bench}
SOCKUDO_VERSION=5.2.0
# Built with its Redis adapter too, for the cluster rows (ADAPTER_DRIVER=redis at run time).
sockudo_root="$BENCH_CACHE/sockudo-$SOCKUDO_VERSION-redis"
sockudo="$sockudo_root/bin/sockudo"
sockudo_skipped=""
if [ ! -x "$sockudo" ] && [ -z "${BENCH_NO_SOCKUDO:-}" ]; then
  say "building sockudo $SOCKUDO_VERSION once into $BENCH_CACHE (several minutes; log in $BENCH_CACHE/install.log)"
  mkdir -p "$BENCH_CACHE"
  if ! command -v protoc >/dev/null && [ -n "$as_root" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler libprotobuf-dev >&2 || true
  fi
  CARGO_TARGET_DIR="$BENCH_CACHE/target" cargo install sockudo --version "$SOCKUDO_VERSION" --locked \
    --no-default-features --features local,redis --root "$sockudo_root" \
    >"$BENCH_CACHE/install.log" 2>&1 || sockudo_skipped="cargo install sockudo failed (see $BENCH_CACHE/install.log)"
fi
[ -x "$sockudo" ] || sockudo_skipped=${sockudo_skipped:-"sockudo is not installed"}
[ -z "${BENCH_NO_SOCKUDO:-}" ] || sockudo_skipped="BENCH_NO_SOCKUDO is set"

admin=$(scripts/dev-db.sh postgres)
redis_url=$(scripts/dev-redis.sh)
export DATABASE_URL=${admin%/postgres}/channeld_bench
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_bench' >/dev/null
target/release/channeld migrate --log-format text 2>/dev/null
key=$(target/release/channeld keys create --name bench --quiet \
  --scopes channels:write,publish,subscribe,presence,send --rate-limit 1000000 --rate-burst 1000000)

mkdir -p .data bench/results
port=${BENCH_PORT:-18100}
pusher_port=${BENCH_PUSHER_PORT:-18101}
pids=()
stop_servers() {
  kill "${pids[@]}" 2>/dev/null || true
  # sockudo drains for a grace period after SIGTERM; the next run needs its port.
  for _ in $(seq 1 30); do kill -0 "${pids[@]}" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "${pids[@]}" 2>/dev/null || true
}
trap stop_servers EXIT

RUST_LOG=warn target/release/channeld serve --no-migrate --listen "127.0.0.1:$port" \
  --ws-connects-per-ip 1000000 --ws-frame-rate 100000 --ws-frame-burst 100000 \
  >.data/bench-channeld.log 2>&1 &
server=$!
pids+=("$server")

# The floor the REST rows compare channeld with: the same routes, pool, SQL and JSON, nothing else.
floor_port=${BENCH_FLOOR_PORT:-18109}
RUST_LOG=warn target/release/examples/floor --listen "127.0.0.1:$floor_port" \
  >.data/bench-floor.log 2>&1 &
floor=$!
pids+=("$floor")

pusher_args=()
cluster_ports=()
if [ -z "$sockudo_skipped" ]; then
  # In-memory defaults, with the default app's limits raised for the workload.
  HOST=127.0.0.1 PORT=$pusher_port RUST_LOG=warn METRICS_ENABLED=false RATE_LIMITER_ENABLED=false \
    SOCKUDO_MAX_CONNECTIONS=1000000 SOCKUDO_DEFAULT_APP_ID=bench SOCKUDO_DEFAULT_APP_KEY=bench-key \
    SOCKUDO_DEFAULT_APP_SECRET=bench-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
    SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=1000000 \
    "$sockudo" >.data/bench-sockudo.log 2>&1 &
  pusher=$!
  pids+=("$pusher")
  pusher_args=(--pusher-ws "ws://127.0.0.1:$pusher_port" --pusher-pid "$pusher")
  # Two more, sharing Redis through sockudo's Redis adapter, for the cluster rows.
  cluster_ws=() cluster_pids=()
  for p in $((pusher_port + 10)) $((pusher_port + 11)); do
    HOST=127.0.0.1 PORT=$p RUST_LOG=warn METRICS_ENABLED=false RATE_LIMITER_ENABLED=false \
      ADAPTER_DRIVER=redis CACHE_DRIVER=redis REDIS_URL="$redis_url" INSTANCE_PROCESS_ID="bench-$p" \
      SOCKUDO_MAX_CONNECTIONS=1000000 SOCKUDO_DEFAULT_APP_ID=bench SOCKUDO_DEFAULT_APP_KEY=bench-key \
      SOCKUDO_DEFAULT_APP_SECRET=bench-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
      SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=1000000 \
      "$sockudo" >".data/bench-sockudo-$p.log" 2>&1 &
    pids+=("$!")
    cluster_pids+=("$!")
    cluster_ws+=("ws://127.0.0.1:$p")
    cluster_ports+=("$p")
  done
  pusher_args+=(--pusher-cluster-ws "$(IFS=,; echo "${cluster_ws[*]}")" \
    --pusher-cluster-pids "$(IFS=,; echo "${cluster_pids[*]}")")
else
  pusher_args=(--pusher-skipped "$sockudo_skipped")
fi

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$port" "$floor_port" ${pusher:+"$pusher_port"} ${cluster_ports[@]+"${cluster_ports[@]}"}; do
  for _ in $(seq 1 100); do answers "$p" && break; sleep 0.1; done
  answers "$p" || { say "nothing answers on port $p; see .data/bench-*.log"; exit 1; }
done

# shellcheck disable=SC2086
target/release/examples/bench --base "http://127.0.0.1:$port" --key "$key" --pid "$server" \
  --second-server target/release/channeld --second-listen "127.0.0.1:${BENCH_PORT2:-18102}" \
  --database-url "$DATABASE_URL" --idle "$idle" --redis-url "$redis_url" "${pusher_args[@]}" \
  --floor "http://127.0.0.1:$floor_port" --floor-pid "$floor" ${BENCH_ARGS:-}

# The channel list on 100,000 channels beside 1,000, requests alternating: databases and
# servers of its own (BENCH_NO_LIST=1 skips it).
if [ -z "${BENCH_NO_LIST:-}" ]; then
  env -u DATABASE_URL CHANNELD_BIN=target/release/channeld scripts/list-bench.sh
fi

# Pages of a channel of 10,000,000 messages beside one of 1,000 (BENCH_NO_HISTORY=1 skips it).
if [ -z "${BENCH_NO_HISTORY:-}" ]; then
  CHANNELD_BIN=target/release/channeld scripts/history-bench.sh
fi

# A flood of 20,000 unknown keys while a real key works, with and without the per-source bound
# (BENCH_NO_FLOOD=1 skips it).
if [ -z "${BENCH_NO_FLOOD:-}" ]; then
  CHANNELD_BIN=target/release/channeld scripts/flood-bench.sh
fi

# Addressed messages: mentions pages on 1,000,000 messages, 1,000 filtered long polls, the list
# with ?reader= on 100,000 channels (BENCH_NO_ADDRESSING=1 skips it); then posting with mentions
# against posting without, the statement alone under pgbench.
if [ -z "${BENCH_NO_ADDRESSING:-}" ]; then
  env -u DATABASE_URL CHANNELD_BIN=target/release/channeld scripts/addressing-bench.sh
  CHANNELD_BIN=target/release/channeld bench/mentions-ab/run.sh
fi

# Consumer groups beside Redis Streams, post-to-claim latency, and the claim cost on a channel of
# 10,000,000 messages (BENCH_NO_CONSUMERS=1 skips it).
if [ -z "${BENCH_NO_CONSUMERS:-}" ]; then
  CHANNELD_BIN=target/release/channeld scripts/consumer-bench.sh
fi

# Webhooks: commit-to-delivery at 1,000 posts/s, posting with and without a webhook, a backlog of
# 100,000 events, a slow receiver beside a fast one (BENCH_NO_WEBHOOKS=1 skips it).
if [ -z "${BENCH_NO_WEBHOOKS:-}" ]; then
  CHANNELD_BIN=target/release/channeld scripts/webhook-bench.sh
fi
