#!/usr/bin/env bash
# Consumer groups (SPEC §8) on a release build, on a fresh database of their own: throughput of
# 8 members claiming 10 at a time beside Redis Streams consumer groups (the machine's Redis, and a
# private one under .data/ that fsyncs every write), post-to-claim latency of waiting members, and
# the claim cost on a channel of 10,000,000 messages against a fresh one. See
# examples/bench/consumers.rs for what each row measures.
#
#   scripts/consumer-bench.sh     (CHANNELD_BIN=target/release/channeld, CONSUMER_REPEATS=3,
#                                  CONSUMER_HISTORY=10000000; `make bench` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
unset DATABASE_URL
bin=${CHANNELD_BIN:-target/release/channeld}
loadgen=${CONSUMER_LOADGEN:-target/release/examples/bench}
port=${CONSUMER_BENCH_PORT:-18107}
redis_port=${CONSUMER_BENCH_REDIS_PORT:-18108}
admin=$(scripts/dev-db.sh postgres)
url=$(scripts/dev-db.sh channeld_consumerbench)
redis_url=$(scripts/dev-redis.sh)
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
mkdir -p .data/consumer-bench-redis bench/results

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
durable=()
if command -v redis-server >/dev/null; then
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$PWD/.data/consumer-bench-redis" \
    --appendonly yes --appendfsync always --save '' --daemonize no >.data/consumer-bench-redis.log 2>&1 &
  pids+=("$!")
  durable=(--redis-durable-url "redis://127.0.0.1:$redis_port")
fi

psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_consumerbench' >/dev/null 2>&1
DATABASE_URL=$url "$bin" migrate --log-format text >/dev/null 2>&1
key=$(DATABASE_URL=$url "$bin" keys create --name consumer-bench --quiet \
  --scopes channels:read,channels:write --rate-limit 1000000 --rate-burst 1000000)
DATABASE_URL=$url RUST_LOG=warn CHANNELD_MAX_STREAMS_PER_KEY=1000000 "$bin" serve \
  --listen "127.0.0.1:$port" --no-migrate >.data/consumer-bench.log 2>&1 &
server=$!
pids+=("$server")
for p in "$port" "$redis_port"; do
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
"$loadgen" --base "http://127.0.0.1:$port" --key "$key" --pid "$server" --database-url "$url" \
  --only consumers --repeats "${CONSUMER_REPEATS:-3}" --consumer-history "${CONSUMER_HISTORY:-10000000}" \
  --redis-url "$redis_url" "${durable[@]}" --out bench/results/consumers.json
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_consumerbench' >/dev/null 2>&1 || true
