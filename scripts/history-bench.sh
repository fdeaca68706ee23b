#!/usr/bin/env bash
# Reading history as it grows: `GET /v1/channels/{id}/messages` pages on a channel of 10,000,000
# messages beside the same pages on a channel of 1,000, through a real server on loopback. Each
# page is requested on both channels in turn (scripts/history-client.py: a keep-alive connection
# per channel, the order alternating), 3 rounds; prints per page and channel the median and p99
# of each round, then the long channel's figure over the short one's (1.00 = flat).
#
#   scripts/history-bench.sh   (HISTORY_BENCH_MESSAGES=10000000, HISTORY_BENCH_REQUESTS=2000,
#                               CHANNELD_BIN=target/release/channeld; `make bench` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

# Its own database, whatever DATABASE_URL says.
unset DATABASE_URL
bin=${CHANNELD_BIN:-target/release/channeld}
long_count=${HISTORY_BENCH_MESSAGES:-10000000}
short_count=1000
requests=${HISTORY_BENCH_REQUESTS:-2000}
port=${HISTORY_BENCH_PORT:-18106}

admin=$(scripts/dev-db.sh postgres)
url=$(scripts/dev-db.sh channeld_historybench)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_historybench' >/dev/null 2>&1
export DATABASE_URL=$url
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
"$bin" migrate --log-format text >/dev/null 2>&1

echo "history-bench: storing $long_count messages (a few minutes)" >&2
started=$(date +%s)
# Two channels; the messages in id order, as posting stores them, and each channel's row left as
# channeld's insert leaves it (count and newest id).
psql -q -v ON_ERROR_STOP=1 "$url" >/dev/null <<SQL
INSERT INTO channels (name) VALUES ('long history'), ('short history');
INSERT INTO messages (channel_id, content, sender_type)
SELECT 1, 'status update ' || n || ': build green, rollout at ' || (n % 100) || '%', 'agent'
FROM generate_series(1, $long_count) AS n;
INSERT INTO messages (channel_id, content, sender_type)
SELECT 2, 'status update ' || n || ': build green, rollout at ' || (n % 100) || '%', 'agent'
FROM generate_series(1, $short_count) AS n;
UPDATE channels c SET message_count = s.n, last_message_id = s.last
FROM (SELECT channel_id, count(*) AS n, max(id) AS last FROM messages GROUP BY channel_id) s
WHERE c.id = s.channel_id;
VACUUM ANALYZE;
CHECKPOINT;
SQL
echo "history-bench: stored in $(( $(date +%s) - started )) s" >&2

key=$("$bin" keys create --name history-bench --quiet --scopes channels:read \
  --rate-limit 1000000 --rate-burst 1000000)
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "history-bench: port $port is taken" >&2
  exit 1
fi
"$bin" serve --listen "127.0.0.1:$port" --no-migrate --log-format json >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for attempt in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  [ "$attempt" -lt 100 ] || { echo "history-bench: the server did not start" >&2; exit 1; }
  sleep 0.1
done

bound() { # channel min|max
  psql -At "$url" -c "SELECT $2(id) FROM messages WHERE channel_id = $1"
}
declare -A first last
for c in 1 2; do
  first[$c]=$(bound "$c" min)
  last[$c]=$(bound "$c" max)
done

# The median and p99 of $requests sequential requests, in ms, as "median p99".
page() { # channel kind
  local c=$1
  local middle=$(( (${first[$c]} + ${last[$c]}) / 2 ))
  case $2 in
    latest) echo "" ;;
    latest-read) echo "?before=9223372036854775807" ;;
    oldest) echo "?after=0" ;;
    after-middle) echo "?after=$middle" ;;
    before-middle) echo "?before=$middle" ;;
    newest-after) echo "?after=$(( ${last[$c]} - 10 ))" ;;
  esac
}

kinds=(latest latest-read oldest after-middle before-middle newest-after)
declare -A figures
for round in 1 2 3; do
  for kind in "${kinds[@]}"; do
    # The two channels' requests alternate, on a keep-alive connection each.
    read -r m1 t1 m2 t2 < <(python3 scripts/history-client.py --port "$port" --key "$key" \
      --requests "$requests" "/v1/channels/1/messages$(page 1 "$kind")" \
      "/v1/channels/2/messages$(page 2 "$kind")")
    figures[p50,$kind,1,$round]=$m1 figures[p99,$kind,1,$round]=$t1
    figures[p50,$kind,2,$round]=$m2 figures[p99,$kind,2,$round]=$t2
    echo "round $round  $kind  median $m1 / $m2 ms  p99 $t1 / $t2 ms (long / short)" >&2
  done
done

echo "GET …/messages, 50 per page: $long_count messages beside $short_count, $requests requests of each per round, alternating, 3 rounds"
for figure in p50 p99; do
  printf "  %-14s %-36s %-36s %s\n" page "$figure ms, $long_count (rounds)" "$figure ms, $short_count (rounds)" "long / short (median of rounds)"
  for kind in "${kinds[@]}"; do
    l="${figures[$figure,$kind,1,1]} ${figures[$figure,$kind,1,2]} ${figures[$figure,$kind,1,3]}"
    s="${figures[$figure,$kind,2,1]} ${figures[$figure,$kind,2,2]} ${figures[$figure,$kind,2,3]}"
    ratio=$(echo "$l" "$s" | awk -f scripts/rounds-ratio.awk)
    printf "  %-14s %-36s %-36s %s\n" "$kind" "$l" "$s" "$ratio"
  done
done
