#!/usr/bin/env bash
# A credential flood while a real key works: 20,000 requests with well-formed keys that name no
# stored key, from 32 connections, while one connection reads a channel's messages with a real
# key back to back; the real key's p50/p99 and any answer but 200 are reported. Run against two
# servers on a fresh database each:
#   - as served (`--auth-failures-per-minute 60`): the flood's source is refused after 60 guesses,
#     before any key lookup;
#   - with that bound lifted: every guess is looked up (a flood from many sources), and the real
#     key must still never wait behind the lookups nor get a 503.
#
#   scripts/flood-bench.sh        (CHANNELD_BIN=target/release/channeld, FLOOD_REPEATS=3;
#                                  `make bench` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
unset DATABASE_URL
bin=${CHANNELD_BIN:-target/release/channeld}
loadgen=${FLOOD_LOADGEN:-target/release/examples/bench}
port=${FLOOD_BENCH_PORT:-18106}
admin=$(scripts/dev-db.sh postgres)
url=$(scripts/dev-db.sh channeld_floodbench)
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
mkdir -p .data bench/results

run() { # label [serve flags...]
  local label=$1
  shift
  psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_floodbench' >/dev/null 2>&1
  DATABASE_URL=$url "$bin" migrate --log-format text >/dev/null 2>&1
  local key
  key=$(DATABASE_URL=$url "$bin" keys create --name flood-bench --quiet \
    --scopes channels:read,channels:write --rate-limit 1000000 --rate-burst 1000000)
  DATABASE_URL=$url RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --no-migrate "$@" \
    >".data/flood-bench.log" 2>&1 &
  local server=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  echo "flood-bench: $label" >&2
  "$loadgen" --base "http://127.0.0.1:$port" --key "$key" --pid "$server" --database-url "$url" \
    --only flood --repeats "${FLOOD_REPEATS:-3}" --out "bench/results/flood-$label.json" >/dev/null
  kill "$server"
  wait "$server" 2>/dev/null || true
}

run as-served
run bound-lifted --auth-failures-per-minute 1000000000
python3 - <<'PY'
import json
print("| server | run | real key: requests, p50, p99 (ms), not 200 | flood: 401 / 429 / other, seconds |")
print("|---|---|---|---|")
for label in ("as-served", "bound-lifted"):
    for i, f in enumerate(json.load(open(f"bench/results/flood-{label}.json"))["flood"], 1):
        real = f["real"]
        print(f"| {label} | {i} | {real['per_sec'] * f['flood_seconds']:.0f}, {real['p50_ms']:.2f}, "
              f"{real['p99_ms']:.2f}, {f['real_refused']} | {f['flood_401']} / {f['flood_429']} / "
              f"{f['flood_other']}, {f['flood_seconds']:.1f} |")
PY
