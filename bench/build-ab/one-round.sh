#!/usr/bin/env bash
# One round of POST beside the floor, for a look at how each server spends its CPU: the floor's
# row then channeld's, with `perf stat` (task clock, context switches, CPU migrations) on each
# server and its threads' CPU and switches read from /proc before and after.
#
#   bench/build-ab/one-round.sh BINARY OUT [CLIENTS (8)] [SECONDS (6)]
#   CH_PRE / FLOOR_PRE: a command to start each server under (e.g. "taskset -c 1");
#   CH_ENV / FLOOR_ENV: one VAR=value for each (e.g. TOKIO_WORKER_THREADS=1, LD_PRELOAD=…).
#
# Prints the round's rates and server CPU µs per POST, and each server's counters per POST.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { sed -n 2,10p "$0" >&2; exit 2; }
bin=$(realpath "$1") out=$2 clients=${3:-8} secs=${4:-6}
mkdir -p "$out"
export CHANNELD_MAX_STREAMS_PER_KEY=1000000
admin=$(scripts/dev-db.sh postgres)
export DATABASE_URL=${admin%/postgres}/channeld_one_round
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_one_round' >/dev/null 2>&1
"$bin" migrate --log-format text 2>/dev/null
key=$("$bin" keys create --name ab --quiet --scopes channels:write --rate-limit 1000000 --rate-burst 1000000)
threads() { for t in /proc/"$1"/task/*; do
  echo "$(basename "$t") $(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat") $(awk '/ctxt/ {printf "%s ", $2}' "$t/status")"
done; }
# shellcheck disable=SC2086
${CH_PRE:-} env ${CH_ENV:-} RUST_LOG=warn "$bin" serve --no-migrate --listen 127.0.0.1:18160 >"$out/server.log" 2>&1 &
server=$!
# shellcheck disable=SC2086
${FLOOR_PRE:-} env ${FLOOR_ENV:-} RUST_LOG=warn target/release/examples/floor --listen 127.0.0.1:18161 >"$out/floor.log" 2>&1 &
floor=$!
trap 'kill $server $floor 2>/dev/null; wait $server $floor 2>/dev/null' EXIT
for p in 18160 18161; do
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
threads $server >"$out/threads-ch-before.txt"; threads $floor >"$out/threads-fl-before.txt"
events=task-clock,context-switches,cpu-migrations
perf stat -e $events -p $server -o "$out/perf-channeld.txt" & stat_server=$!
perf stat -e $events -p $floor -o "$out/perf-floor.txt" & stat_floor=$!
target/release/examples/bench --base http://127.0.0.1:18160 --key "$key" --pid $server \
  --database-url "$DATABASE_URL" --pusher-skipped one-round --floor http://127.0.0.1:18161 \
  --floor-pid $floor --only rest --rest-systems floor,channeld --rest-ops post \
  --rest-clients "$clients" --repeats 1 --rest-seconds "$secs" --out "$out/bench.json" \
  >/dev/null 2>"$out/bench.err"
kill -INT $stat_server $stat_floor; wait $stat_server $stat_floor 2>/dev/null || true
threads $server >"$out/threads-ch-after.txt"; threads $floor >"$out/threads-fl-after.txt"
python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
run = json.load(open(out + "/bench.json"))["rest"][0]["runs"][0]
ch, fl = run["channeld"], run["floor"]
print(f"per second: channeld {ch['per_sec']:.0f}, floor {fl['per_sec']:.0f} ({ch['per_sec'] / fl['per_sec']:.3f}); "
      f"server µs per POST: channeld {run['server_us_channeld']:.1f}, floor {run['server_us_floor']:.1f} "
      f"({run['server_us_channeld'] / run['server_us_floor']:.3f})")
posts = {"channeld": ch["per_sec"] * run["cpu"]["seconds"], "floor": fl["per_sec"] * run["floor_cpu"]["seconds"]}
for side, n in posts.items():
    counts = {}
    for line in open(f"{out}/perf-{side}.txt"):
        m = re.match(r"\s*([\d,.]+)\s+(?:msec\s+)?(task-clock|context-switches|cpu-migrations)\b", line)
        if m:
            counts[m.group(2)] = float(m.group(1).replace(",", "")) * (1000 if m.group(2) == "task-clock" else 1)
    print(side, " ".join(f"{k} {v / n:.2f}" for k, v in counts.items()), "(per POST; task-clock in µs)")
PY
