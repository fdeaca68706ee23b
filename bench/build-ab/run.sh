#!/usr/bin/env bash
# Two builds of channeld, each beside the floor: the REST load generator's floor and channeld
# rows, run for one build then the other, alternating, on a fresh database each time. The floor
# is the common yardstick, so the builds compare through their ratios to it and their server
# CPU per request beside its own, measured in the same minutes.
#
#   bench/build-ab/run.sh BEFORE AFTER [OUT]     two channeld binaries (copies: the build moves on)
#   BUILD_AB_ROUNDS (3 alternations), BUILD_AB_ARGS (load generator options; default POST at 1
#   and 8 clients, 3 rounds of 5 s)
#
# Writes OUT/{before,after}-N.json (default .data/build-ab) and prints, per build and row, the
# median channeld/floor ratio [min-max], server CPU µs per request over all rounds, and the
# median [min-max] of channeld's CPU per request over the floor's, round by round.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { sed -n 2,12p "$0" >&2; exit 2; }
before=$(realpath "$1") after=$(realpath "$2") out=${3:-.data/build-ab}
rounds=${BUILD_AB_ROUNDS:-3}
args=${BUILD_AB_ARGS:---rest-ops post --rest-clients 1,8 --repeats 3 --rest-seconds 5}
mkdir -p "$out" .data
SQLX_OFFLINE=true cargo build --release --quiet --example bench --example floor
export CHANNELD_MAX_STREAMS_PER_KEY=1000000
admin=$(scripts/dev-db.sh postgres)
export DATABASE_URL=${admin%/postgres}/channeld_build_ab
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
port=${BUILD_AB_PORT:-18150} floor_port=$((${BUILD_AB_PORT:-18150} + 1))
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
trap stop EXIT
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for round in $(seq 1 "$rounds"); do
  for build in before after; do
    binary=$before; [ "$build" = after ] && binary=$after
    psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_build_ab' >/dev/null
    "$binary" migrate --log-format text 2>/dev/null
    key=$("$binary" keys create --name ab --quiet --scopes channels:write \
      --rate-limit 1000000 --rate-burst 1000000)
    RUST_LOG=warn "$binary" serve --no-migrate --listen "127.0.0.1:$port" >".data/build-ab-$build.log" 2>&1 &
    server=$!
    pids+=("$server")
    RUST_LOG=warn target/release/examples/floor --listen "127.0.0.1:$floor_port" >.data/build-ab-floor.log 2>&1 &
    floor=$!
    pids+=("$floor")
    for p in "$port" "$floor_port"; do
      for _ in $(seq 1 100); do answers "$p" && break; sleep 0.1; done
    done
    echo "build-ab: $build, alternation $round" >&2
    # shellcheck disable=SC2086
    target/release/examples/bench --base "http://127.0.0.1:$port" --key "$key" --pid "$server" \
      --database-url "$DATABASE_URL" --pusher-skipped build-ab \
      --floor "http://127.0.0.1:$floor_port" --floor-pid "$floor" \
      --only rest --rest-systems floor,channeld $args --out "$out/$build-$round.json" >/dev/null
    stop
  done
done

python3 - "$out" <<'PY'
import collections, glob, json, os, statistics, sys
rows = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*-*.json"))):
    build = os.path.basename(path).split("-")[0]
    for row in json.load(open(path))["rest"]:
        for run in row["runs"]:
            rows[(row["op"], row["clients"], build)].append((
                run["channeld"]["per_sec"] / run["floor"]["per_sec"],
                run["server_us_channeld"], run["server_us_floor"]))
print("row | build | rounds | channeld/floor, median [min-max] | server µs: channeld, floor (medians) | server CPU / floor, median [min-max]")
for (op, clients, build), runs in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "before")):
    ratios = [r[0] for r in runs]
    cpu = [r[1] / r[2] for r in runs if r[2]]
    print(f"{op}, {clients} | {build} | {len(runs)} | {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}] | {statistics.median(r[1] for r in runs):.1f}, "
          f"{statistics.median(r[2] for r in runs):.1f} | {statistics.median(cpu):.3f} "
          f"[{min(cpu):.3f}-{max(cpu):.3f}]")
PY
