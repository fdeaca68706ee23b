#!/usr/bin/env bash
# Counts the instructions a server spends in user space per REST request, under Valgrind's
# callgrind: channeld against the floor (examples/floor.rs), same release build, same database.
# Unlike CPU time on 2 shared cores, an instruction count does not move with the machine's
# load, so a layer's cost shows to the hundred instructions. The kernel's share (loopback TCP,
# wake-ups) is not counted: strace shows channeld and the floor making the same system calls per
# request (docs/BENCHMARKS.md).
#
#   scripts/request-cost.sh    (COST_REQUESTS per operation, default 2000; COST_WAITERS MCP
#                               wait_for_messages calls woken by one post, default 200;
#                               COST_OPS to count only some of post and get, e.g. COST_OPS=post,
#                               which also skips the MCP row)
#
# Keeps the profiles in .data/request-cost/{system}-{op}.callgrind (callgrind_annotate reads
# them) and prints, per operation, instructions per request of each system and channeld's
# costliest functions (inclusive, per request) beside the floor's figure for the same function.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "request-cost: valgrind is not installed" >&2; exit 1; }
# The MCP rows hold many waits with one key: no per-key bound on them here.
export CHANNELD_MAX_STREAMS_PER_KEY=1000000
requests=${COST_REQUESTS:-2000}
waiters=${COST_WAITERS:-200}
out=.data/request-cost
mkdir -p "$out" .data

admin=$(scripts/dev-db.sh postgres)
export DATABASE_URL=${admin%/postgres}/channeld_cost
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_cost' >/dev/null
target/release/channeld migrate --log-format text 2>/dev/null
key=$(target/release/channeld keys create --name cost --quiet \
  --scopes channels:read,channels:write --rate-limit 1000000 --rate-burst 1000000)

port=${COST_PORT:-18140}
server=
stop() { [ -z "$server" ] || { kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; }; server=; }
trap stop EXIT

# One system under callgrind, instrumentation off until the warm-up is done.
measure() {
  local system=$1 op=$2 file=$out/$1-$2.callgrind
  local bin=target/release/channeld args=(serve --no-migrate --listen "127.0.0.1:$port")
  [ "$system" = floor ] && bin=target/release/examples/floor args=(--listen "127.0.0.1:$port")
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file" \
    "$bin" "${args[@]}" >".data/cost-$system.log" 2>&1 &
  server=$!
  for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  python3 scripts/request-cost-client.py --port "$port" --key "$key" --op "$op" \
    --requests "$requests" --waiters "$waiters" --on "callgrind_control -i on $server" \
    --off "callgrind_control -i off $server"
  stop
}

# Channel 1, with a page of messages to read, seeded through channeld itself.
target/release/channeld serve --no-migrate --listen "127.0.0.1:$port" >.data/cost-seed.log 2>&1 &
server=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
api=http://127.0.0.1:$port/v1
auth=(-H "Authorization: Bearer $key" -H 'Content-Type: application/json')
curl -sf -o /dev/null "${auth[@]}" -d '{"name":"cost"}' "$api/channels"
for n in $(seq 1 60); do
  curl -sf -o /dev/null "${auth[@]}" -d "{\"content\":\"seed $n\"}" "$api/channels/1/messages"
done
stop

for op in $(echo "${COST_OPS:-post get}" | tr , " "); do
  for system in floor channeld; do
    measure "$system" "$op"
  done
done

# And MCP's wake-up: `waiters` wait_for_messages calls answered by one post (channeld only).
[ -n "${COST_OPS:-}" ] || measure channeld mcp-wake

python3 scripts/request-cost-report.py "$out" "$requests" "$waiters"
