#!/usr/bin/env bash
# Webhooks (SPEC §9) on a release build, on a fresh database of their own, with receivers in the
# load generator on loopback: posting at 1,000/s with and without a webhook (commit-to-delivery
# latency), the most posts/s with and without one, a backlog of 100,000 events sent after the
# fact, and a fast receiver beside one that answers after 16 s. See examples/bench/webhooks.rs.
#
#   scripts/webhook-bench.sh     (CHANNELD_BIN=target/release/channeld, WEBHOOK_REPEATS=3,
#                                 WEBHOOK_BACKLOG=100000; `make bench` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
unset DATABASE_URL
bin=${CHANNELD_BIN:-target/release/channeld}
loadgen=${WEBHOOK_LOADGEN:-target/release/examples/bench}
port=${WEBHOOK_BENCH_PORT:-18110}
admin=$(scripts/dev-db.sh postgres)
url=$(scripts/dev-db.sh channeld_webhookbench)
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
mkdir -p bench/results

psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_webhookbench' >/dev/null 2>&1
DATABASE_URL=$url "$bin" migrate --log-format text >/dev/null 2>&1
key=$(DATABASE_URL=$url "$bin" keys create --name webhook-bench --quiet \
  --scopes admin,channels:read,channels:write --rate-limit 1000000 --rate-burst 1000000)
# The receivers are on loopback, over plain HTTP.
DATABASE_URL=$url RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --no-migrate \
  --webhook-allow-private-networks --webhook-allow-http >.data/webhook-bench.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
# Whatever an earlier run left to write (a dropped database, dirty pages) is written now, not
# during the first row.
psql -q "$admin" -c 'CHECKPOINT' >/dev/null
"$loadgen" --base "http://127.0.0.1:$port" --key "$key" --pid "$server" --database-url "$url" \
  --only webhooks --repeats "${WEBHOOK_REPEATS:-3}" --webhook-backlog "${WEBHOOK_BACKLOG:-100000}" \
  --out bench/results/webhooks.json
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_webhookbench' >/dev/null 2>&1 || true
