#!/usr/bin/env bash
# Times `GET /v1/channels` on a database of 100,000 channels beside the same requests on one of
# 1,000, through two real servers on loopback: the default list, each sort, the archived filter,
# a filter by ticket, name searches, a cursor page and keys bound to some channels. Each query is
# requested of both in turn (scripts/history-client.py: a keep-alive connection per server, the
# order alternating), 3 rounds; prints per query and size the median and p99 of each round, then
# the large database's figure over the small one's (1.00 = flat).
#
#   scripts/list-bench.sh   (LIST_BENCH_CHANNELS=100000, LIST_BENCH_SMALL=1000,
#                            LIST_BENCH_REQUESTS=500, CHANNELD_BIN=target/release/channeld;
#                            `make bench` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

# Databases of its own, whatever DATABASE_URL says.
unset DATABASE_URL
bin=${CHANNELD_BIN:-target/release/channeld}
large=${LIST_BENCH_CHANNELS:-100000}
small=${LIST_BENCH_SMALL:-1000}
requests=${LIST_BENCH_REQUESTS:-500}
port=${LIST_BENCH_PORT:-18105}
small_port=$((port + 2))
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
admin=$(scripts/dev-db.sh postgres)

for p in "$port" "$small_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "list-bench: port $p is taken" >&2
    exit 1
  fi
done

servers=()
trap 'kill "${servers[@]}" 2>/dev/null || true' EXIT
declare -A key one wild

# A database of $2 channels named $1, its keys (by database name), and a server for it on port $3.
# Names like "Deploy rollout 4711 of service-724"; one channel in ten archived; activity spread
# over 100 days; message counts and last messages filled in as posting would have left them.
prepare() { # database count port
  local url
  url=$(scripts/dev-db.sh "$1")
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $1" >/dev/null 2>&1
  DATABASE_URL=$url "$bin" migrate --log-format text >/dev/null 2>&1
  psql -q "$url" >/dev/null <<SQL
INSERT INTO channels (name, ticket_slug, repository_id, archived, created_at, updated_at,
                      message_count, last_message_id, last_message_at, last_sender_type, last_content)
SELECT format('%s rollout %s of service-%s',
              (ARRAY['Deploy', 'Rollback', 'Migrate', 'Hotfix', 'Canary'])[1 + n % 5], n, n % 997),
       'AM-' || (n % 5000), 1 + n % 50, n % 10 = 0,
       now() - make_interval(secs => n * 7),
       now() - make_interval(secs => (n * 7919) % 8640000),
       n % 300, n, now(), 'agent', 'status update ' || n
FROM generate_series(1, $2) AS n;
VACUUM ANALYZE channels, channel_counts;
SQL
  key[$1]=$(DATABASE_URL=$url "$bin" keys create --name list-bench --quiet \
    --scopes channels:read --rate-limit 1000000 --rate-burst 1000000)
  # Keys whose patterns bind persistent channels: one channel, and a wildcard over digits.
  one[$1]=$(DATABASE_URL=$url "$bin" keys create --name list-bench-one --quiet \
    --scopes channels:read --channel-pattern 4711 --rate-limit 1000000 --rate-burst 1000000)
  wild[$1]=$(DATABASE_URL=$url "$bin" keys create --name list-bench-wild --quiet \
    --scopes channels:read --channel-pattern '4711*' --rate-limit 1000000 --rate-burst 1000000)
  DATABASE_URL=$url "$bin" serve --listen "127.0.0.1:$3" --no-migrate --log-format json \
    >/dev/null 2>&1 &
  servers+=($!)
  for attempt in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && break
    [ "$attempt" -lt 100 ] || { echo "list-bench: the server did not start" >&2; exit 1; }
    sleep 0.1
  done
}
large_db=channeld_listbench small_db=channeld_listbench_small
prepare "$large_db" "$large" "$port"
prepare "$small_db" "$small" "$small_port"

cursor() { # port key
  curl -sf "http://127.0.0.1:$1/v1/channels?limit=50" -H "Authorization: Bearer $2" \
    | grep -o '"next_cursor":"[^"]*"' | cut -d'"' -f4
}
large_cursor=$(cursor "$port" "${key[$large_db]}")
small_cursor=$(cursor "$small_port" "${key[$small_db]}")

# label|query|which key (key, one, wild); "CURSOR" stands for each database's own cursor.
queries=(
  "default (most recently active first)|limit=50|key"
  "next page by cursor|limit=50&cursor=CURSOR|key"
  "offset=5000|limit=50&offset=5000|key"
  "sort=created_at&order=asc|sort=created_at&order=asc&limit=50|key"
  "sort=name|sort=name&limit=50|key"
  "archived=true|archived=true&limit=50|key"
  "ticket_slug=AM-42|ticket_slug=AM-42&limit=50|key"
  "q=hotfix (matches 20,000)|q=hotfix&limit=50|key"
  "q=rollout 4711 (matches 1)|q=rollout%204711%20&limit=50|key"
  "q=service-7 (matches 11,000, by name)|q=service-7&sort=name&limit=50|key"
  "a key limited to channel 4711|limit=50|one"
  "a key limited to 4711* (matches 11)|limit=50|wild"
)
declare -A figures
for round in 1 2 3; do
  for i in "${!queries[@]}"; do
    IFS='|' read -r label query which <<<"${queries[$i]}"
    case $which in
      key) large_key=${key[$large_db]} small_key=${key[$small_db]} ;;
      one) large_key=${one[$large_db]} small_key=${one[$small_db]} ;;
      wild) large_key=${wild[$large_db]} small_key=${wild[$small_db]} ;;
    esac
    read -r m1 t1 m2 t2 < <(python3 scripts/history-client.py --port "$port" --key "$large_key" \
      --short-port "$small_port" --short-key "$small_key" --requests "$requests" \
      "/v1/channels?${query//CURSOR/$large_cursor}" "/v1/channels?${query//CURSOR/$small_cursor}")
    figures[p50,$i,1,$round]=$m1 figures[p99,$i,1,$round]=$t1
    figures[p50,$i,2,$round]=$m2 figures[p99,$i,2,$round]=$t2
    echo "round $round  $label  median $m1 / $m2 ms  p99 $t1 / $t2 ms (large / small)" >&2
  done
done

echo "GET /v1/channels, 50 per page: $large channels ($((large / 10)) archived) beside $small" \
  "($((small / 10)) archived), $requests requests of each per round, alternating, 3 rounds"
for figure in p50 p99; do
  printf "  %-40s %-24s %-24s %s\n" query "$figure ms, $large" "$figure ms, $small" \
    "large / small (median of rounds)"
  for i in "${!queries[@]}"; do
    IFS='|' read -r label _ _ <<<"${queries[$i]}"
    l="${figures[$figure,$i,1,1]} ${figures[$figure,$i,1,2]} ${figures[$figure,$i,1,3]}"
    s="${figures[$figure,$i,2,1]} ${figures[$figure,$i,2,2]} ${figures[$figure,$i,2,3]}"
    ratio=$(echo "$l" "$s" | awk -f scripts/rounds-ratio.awk)
    printf "  %-40s %-24s %-24s %s\n" "$label" "$l" "$s" "$ratio"
  done
done
