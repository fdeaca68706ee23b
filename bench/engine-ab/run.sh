#!/usr/bin/env bash
# Two channeld builds side by side, same machine, same sitting: idle memory per connection,
# WebSocket fan-out and presence churn (the load generator's `footprint,fanout,churn` parts),
# each build on a fresh database and a fresh process, in alternating order, ROUNDS times.
#
#   bench/engine-ab/run.sh BEFORE_BIN AFTER_BIN LOADGEN [ROUNDS]
#
# BEFORE_BIN and AFTER_BIN are `channeld` release binaries, LOADGEN one `bench` example binary
# (the same load generator for both). Every run's figures go to bench/results/engine-ab/; the
# summary prints each row of each run, then medians with min-max per build.
#
# AB_PARTS chooses the load generator's parts (default `footprint,fanout,churn`; `rest` compares
# REST posts and reads at 1, 8 and 32 clients), AB_NAME the results folder (default engine-ab),
# AB_ARGS further options for the load generator (e.g. `--repeats 1`).
set -euo pipefail
cd "$(dirname "$0")/../.."
before=$1 after=$2 loadgen=$3 rounds=${4:-2}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
admin=$(scripts/dev-db.sh postgres)
export DATABASE_URL=${admin%/postgres}/channeld_engine_ab
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
parts=${AB_PARTS:-footprint,fanout,churn}
out=bench/results/${AB_NAME:-engine-ab}
mkdir -p "$out" .data
port=${BENCH_PORT:-18100}

run_one() { # name binary round
  local name=$1 bin=$2 round=$3
  psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_engine_ab' >/dev/null 2>&1
  "$bin" migrate --log-format text >/dev/null 2>&1
  local key
  key=$("$bin" keys create --name ab --quiet --scopes channels:write,publish,subscribe,presence,send \
    --rate-limit 1000000 --rate-burst 1000000)
  RUST_LOG=warn "$bin" serve --no-migrate --listen "127.0.0.1:$port" \
    --ws-connects-per-ip 1000000 --ws-frame-rate 100000 --ws-frame-burst 100000 \
    >".data/engine-ab-$name.log" 2>&1 &
  local server=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  echo "engine-ab: round $round, $name" >&2
  # shellcheck disable=SC2086
  "$loadgen" --base "http://127.0.0.1:$port" --key "$key" --pid "$server" \
    --database-url "$DATABASE_URL" --only "$parts" \
    --pusher-skipped "not compared here" --out "$out/$name-$round.json" ${AB_ARGS:-} >/dev/null
  kill "$server"
  wait "$server" 2>/dev/null || true
}

for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    run_one before "$before" "$round"
    run_one after "$after" "$round"
  else
    run_one after "$after" "$round"
    run_one before "$before" "$round"
  fi
done

python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
def add(label, name, value):
    rows.setdefault(label, {}).setdefault(name, []).append(value)
for name in ("before", "after"):
    for r in range(1, rounds + 1):
        figures = json.load(open(f"{out}/{name}-{r}.json"))
        fp = figures.get("footprint")
        if fp:
            add("idle memory per connection (KiB)", name, fp["per_connection_kib"])
        for row in figures.get("rest") or []:
            for run in row["runs"]:
                add(f"REST {row['op']} at {row['clients']} clients (req/s)", name, run["channeld"]["per_sec"])
                add(f"REST {row['op']} at {row['clients']} clients: p99 (ms)", name, run["channeld"]["p99_ms"])
        for ladder in figures.get("fanout_ladders") or []:
            add(f"fan-out to {ladder['subscribers']}: highest rate sustained (msg/s)", name, ladder["max_rate"])
        for row in figures.get("fanout") or []:
            what = f"fan-out {row['subscribers']} x {row['publish_rate']}/s"
            for run in row["runs"]:
                add(f"{what}: p99 (ms)", name, run["deliveries"]["p99_ms"] if "p99_ms" in run["deliveries"] else row["p99_ms"]["median"])
                add(f"{what}: server CPU us per delivery", name, run["server_cpu_us_per_delivery"])
        for run in (figures.get("churn") or {}).get("runs", []):
            add("presence churn (joins+leaves/s)", name, run["joins_leaves_per_sec"])
print("| row | before: median [min-max] (n) | after: median [min-max] (n) |")
print("|---|---|---|")
for label in sorted(rows):
    cells = []
    for name in ("before", "after"):
        values = rows[label].get(name, [])
        cells.append(f"{statistics.median(values):,.2f} [{min(values):,.2f}-{max(values):,.2f}] ({len(values)})" if values else "-")
    print(f"| {label} | {cells[0]} | {cells[1]} |")
PY
