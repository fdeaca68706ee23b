#!/usr/bin/env bash
# Measures channeld's realtime side on loopback with a release build: the memory of idle
# subscribed connections, fan-out at 100 and 1,000 subscribers, and presence churn.
#
#   scripts/bench.sh [IDLE_CONNECTIONS]     (default 10000)
#
# The server runs on a fresh database with limits raised so that they do not shape the load.
set -euo pipefail
cd "$(dirname "$0")/.."
idle=${1:-10000}
# The server and the load generator each hold one descriptor per connection.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((idle + 1024)) ]; then
  echo "bench: at most $(ulimit -n) open files here; lowering idle connections" >&2
  idle=$(($(ulimit -n) - 1024))
fi

SQLX_OFFLINE=true cargo build --release --quiet
SQLX_OFFLINE=true cargo build --release --quiet --example bench

admin=$(scripts/dev-db.sh postgres)
export DATABASE_URL=$(scripts/dev-db.sh channeld_bench)
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_bench' >/dev/null
target/release/channeld migrate 2>/dev/null
key=$(target/release/channeld keys create --name bench --quiet \
  --scopes publish,subscribe,presence,send --rate-limit 1000000 --rate-burst 1000000)

port=${BENCH_PORT:-18100}
RUST_LOG=warn target/release/channeld serve --no-migrate --listen "127.0.0.1:$port" \
  --ws-connects-per-ip 1000000 --ws-frame-rate 100000 --ws-frame-burst 100000 \
  >.data/bench-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
target/release/examples/bench "http://127.0.0.1:$port" "$key" "$server" "$idle"
