#!/usr/bin/env bash
# Times `GET /v1/channels` on a database of 100,000 channels, through a real server on loopback:
# the default list, each sort, the archived filter, a filter by ticket, name searches and a
# cursor page. Prints, per query, the median, min and max of sequential requests.
#
#   scripts/list-bench.sh        (LIST_BENCH_CHANNELS=100000, LIST_BENCH_RUNS=21,
#                                 CHANNELD_BIN=target/release/channeld; `make bench` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

# Its own database, whatever DATABASE_URL says.
unset DATABASE_URL
bin=${CHANNELD_BIN:-target/release/channeld}
count=${LIST_BENCH_CHANNELS:-100000}
runs=${LIST_BENCH_RUNS:-21}
port=${LIST_BENCH_PORT:-18105}

admin=$(scripts/dev-db.sh postgres)
url=$(scripts/dev-db.sh channeld_listbench)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_listbench' >/dev/null 2>&1
export DATABASE_URL=$url
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
"$bin" migrate --log-format text >/dev/null 2>&1

# Names like "Deploy rollout 4711 of service-724"; one channel in ten archived; activity spread
# over 100 days; message counts and last messages filled in as posting would have left them.
psql -q "$url" >/dev/null <<SQL
INSERT INTO channels (name, ticket_slug, repository_id, archived, created_at, updated_at,
                      message_count, last_message_id, last_message_at, last_sender_type, last_content)
SELECT format('%s rollout %s of service-%s',
              (ARRAY['Deploy', 'Rollback', 'Migrate', 'Hotfix', 'Canary'])[1 + n % 5], n, n % 997),
       'AM-' || (n % 5000), 1 + n % 50, n % 10 = 0,
       now() - make_interval(secs => n * 7),
       now() - make_interval(secs => (n * 7919) % 8640000),
       n % 300, n, now(), 'agent', 'status update ' || n
FROM generate_series(1, $count) AS n;
VACUUM ANALYZE channels, channel_counts;
SQL

key=$("$bin" keys create --name list-bench --quiet --scopes channels:read \
  --rate-limit 1000000 --rate-burst 1000000)
# Keys whose patterns bind persistent channels: one channel, and a wildcard over digits.
one=$("$bin" keys create --name list-bench-one --quiet --scopes channels:read \
  --channel-pattern 4711 --rate-limit 1000000 --rate-burst 1000000)
wild=$("$bin" keys create --name list-bench-wild --quiet --scopes channels:read \
  --channel-pattern '4711*' --rate-limit 1000000 --rate-burst 1000000)
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "list-bench: port $port is taken" >&2
  exit 1
fi
"$bin" serve --listen "127.0.0.1:$port" --no-migrate --log-format json >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for attempt in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  [ "$attempt" -lt 100 ] || { echo "list-bench: the server did not start" >&2; exit 1; }
  sleep 0.1
done

get() {
  curl -sf "http://127.0.0.1:$port/v1/channels?$1" -H "Authorization: Bearer $key"
}

measure() { # label query [key]
  local label=$1 query=$2 as=${3:-$key}
  curl -sf -o /dev/null "http://127.0.0.1:$port/v1/channels?$query" -H "Authorization: Bearer $as"
  for _ in $(seq "$runs"); do
    curl -sf -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/v1/channels?$query" \
      -H "Authorization: Bearer $as"
  done | sort -n | awk -v label="$label" '
    { t[NR] = $1 * 1000 }
    END { printf "  %-44s median %7.2f ms   min %7.2f   max %7.2f   (%d requests)\n",
          label, t[int((NR + 1) / 2)], t[1], t[NR], NR }'
}

cursor=$(get "limit=50" | grep -o '"next_cursor":"[^"]*"' | cut -d'"' -f4)
echo "GET /v1/channels on $count channels ($((count / 10)) archived), 50 per page:"
measure "default (most recently active first)" "limit=50"
measure "next page by cursor" "limit=50&cursor=$cursor"
measure "offset=5000" "limit=50&offset=5000"
measure "sort=created_at&order=asc" "sort=created_at&order=asc&limit=50"
measure "sort=name" "sort=name&limit=50"
measure "archived=true" "archived=true&limit=50"
measure "ticket_slug=AM-42" "ticket_slug=AM-42&limit=50"
measure "q=hotfix (matches 20,000)" "q=hotfix&limit=50"
measure "q=rollout 4711 (matches 1)" "q=rollout%204711%20&limit=50"
measure "q=service-7 (matches 11,000, by name)" "q=service-7&sort=name&limit=50"
measure "a key limited to channel 4711" "limit=50" "$one"
measure "a key limited to 4711* (matches 11)" "limit=50" "$wild"
