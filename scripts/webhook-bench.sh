#!/usr/bin/env bash
# Webhooks (SPEC §9) on a release build, on a fresh database of their own, with receivers in the
# load generator on loopback: posting at 1,000/s with and without a webhook (commit-to-delivery
# latency), the most posts/s with and without one, a backlog of 100,000 events sent after the
# fact, and a fast receiver beside one that answers after 16 s. See examples/bench/webhooks.rs.
#
#   scripts/webhook-bench.sh     (CHANNELD_BIN=target/release/channeld, WEBHOOK_REPEATS=3,
#                                 WEBHOOK_BACKLOG=100000; `make bench` runs it)
#   WEBHOOK_AUTOVACUUM=on scripts/webhook-bench.sh
#       the same with PostgreSQL's autovacuum turned on for the run, on a server where it is off
#       (ALTER SYSTEM and a reload, as its superuser; reset when the run ends): the webhook tables
#       are queues that only VACUUM clears of dead index entries (docs/BENCHMARKS.md, "Webhooks
#       and autovacuum")
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
autovacuum_set=
restore() {
  kill "$server" 2>/dev/null || true
  if [ -n "$autovacuum_set" ]; then
    psql -q "$admin" -c 'ALTER SYSTEM RESET autovacuum' -c 'SELECT pg_reload_conf()' >/dev/null
  fi
}
trap restore EXIT
if [ -n "${WEBHOOK_AUTOVACUUM:-}" ]; then
  autovacuum_set=yes
  psql -q "$admin" -c "ALTER SYSTEM SET autovacuum = $WEBHOOK_AUTOVACUUM" \
    -c 'SELECT pg_reload_conf()' >/dev/null
  # The reload reaches new sessions once the postmaster has read the file again.
  for _ in $(seq 1 50); do
    [ "$(psql -XAtq "$admin" -c 'SHOW autovacuum')" = "$WEBHOOK_AUTOVACUUM" ] && break
    sleep 0.1
  done
fi
echo "webhook-bench: PostgreSQL autovacuum is $(psql -XAtq "$admin" -c 'SHOW autovacuum')" >&2
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
# Whatever an earlier run left to write (a dropped database, dirty pages) is written now, not
# during the first row.
psql -q "$admin" -c 'CHECKPOINT' >/dev/null
"$loadgen" --base "http://127.0.0.1:$port" --key "$key" --pid "$server" --database-url "$url" \
  --only webhooks --repeats "${WEBHOOK_REPEATS:-3}" --webhook-backlog "${WEBHOOK_BACKLOG:-100000}" \
  --out bench/results/webhooks.json
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_webhookbench' >/dev/null 2>&1 || true
