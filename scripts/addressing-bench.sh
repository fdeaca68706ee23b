#!/usr/bin/env bash
# Addressed messages at scale, through a real server on loopback (SPEC §4b figures):
#   1. a page of the messages that mention pod-7 on a channel of 1,000,000 messages, 1 % of them
#      for pod-7: newest first, and after a cursor in the middle (sequential requests);
#   2. 1,000 long polls on that channel, each waiting for a different name, and rounds of one
#      post that mentions one of them: how long the matching waiter takes to answer after the
#      post was sent, and that the other waiters stay asleep;
#   3. the channel list of 100,000 channels with ?reader= (a read state on every channel).
# Prints, per row, the median, p99, min and max in milliseconds.
#
#   scripts/addressing-bench.sh   (CHANNELD_BIN=target/release/channeld, ADDRESSING_RUNS=200,
#                                  ADDRESSING_ROUNDS=20; `make bench` runs it)
set -euo pipefail
# The load generator holds many streams and waits with one key: no per-key bound on them here.
export CHANNELD_MAX_STREAMS_PER_KEY=1000000
cd "$(dirname "$0")/.."

unset DATABASE_URL
bin=${CHANNELD_BIN:-target/release/channeld}
runs=${ADDRESSING_RUNS:-200}
rounds=${ADDRESSING_ROUNDS:-20}
waiters=${ADDRESSING_WAITERS:-1000}
port=${ADDRESSING_PORT:-18106}
base="http://127.0.0.1:$port"

admin=$(scripts/dev-db.sh postgres)
url=$(scripts/dev-db.sh channeld_addressbench)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_addressbench' >/dev/null 2>&1
export DATABASE_URL=$url
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
"$bin" migrate --log-format text >/dev/null 2>&1

echo "addressing-bench: seeding 1,000,000 messages and 100,000 channels" >&2
psql -q -v ON_ERROR_STOP=1 "$url" >/dev/null <<'SQL'
INSERT INTO channels (name) VALUES ('big');
INSERT INTO messages (channel_id, content, sender_type, pod_key, mentions)
SELECT 1, 'status update ' || n, 'agent', 'pod-' || (n % 50),
       CASE WHEN n % 100 = 0 THEN ARRAY['pod-7', 'pod-' || (n % 13 + 40)]
            WHEN n % 10 = 0 THEN ARRAY['pod-' || (n % 13 + 20)]
            ELSE '{}' END
FROM generate_series(1, 1000000) AS n;
INSERT INTO message_mentions (channel_id, name, message_id)
SELECT channel_id, unnest(mentions), id FROM messages WHERE mentions <> '{}';
UPDATE channels SET message_count = 1000000, last_message_id = (SELECT max(id) FROM messages),
       last_message_at = now(), last_sender_type = 'agent', last_content = 'status update'
WHERE id = 1;
INSERT INTO channels (name, updated_at, message_count, last_message_id, last_message_at,
                      last_sender_type, last_content)
SELECT 'rollout ' || n, now() - make_interval(secs => (n * 7919) % 8640000), n % 300,
       1000000 + n, now(), 'agent', 'status ' || n
FROM generate_series(2, 100000) AS n;
INSERT INTO read_states (channel_id, reader, last_read_id)
SELECT id, 'ana', GREATEST(coalesce(last_message_id, 0) - 3, 0) FROM channels;
VACUUM ANALYZE;
SQL

key=$("$bin" keys create --name addressing-bench --quiet --scopes channels:read,channels:write \
  --rate-limit 1000000 --rate-burst 1000000)
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "addressing-bench: port $port is taken" >&2
  exit 1
fi
"$bin" serve --listen "127.0.0.1:$port" --no-migrate --log-format json >/dev/null 2>&1 &
server=$!
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work" 2>/dev/null || true' EXIT
for attempt in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  [ "$attempt" -lt 100 ] || { echo "addressing-bench: the server did not start" >&2; exit 1; }
  sleep 0.1
done

# Milliseconds, one per line on stdin: median, p99, min, max.
summary() {
  sort -n | awk -v label="$1" '
    { t[NR] = $1 }
    END { p99 = t[int(NR * 0.99 + 0.999)]; if (p99 == "") p99 = t[NR];
          printf "  %-58s median %7.2f ms   p99 %7.2f   min %7.2f   max %7.2f   (%d)\n",
          label, t[int((NR + 1) / 2)], p99, t[1], t[NR], NR }'
}

measure() {
  local label=$1 path=$2
  curl -sf -o /dev/null "$base$path" -H "Authorization: Bearer $key" # warm
  for _ in $(seq "$runs"); do
    curl -sf -o /dev/null -w '%{time_total}\n' "$base$path" -H "Authorization: Bearer $key"
  done | awk '{ print $1 * 1000 }' | summary "$label"
}

middle=$(psql -At "$url" -c "SELECT message_id FROM message_mentions WHERE name = 'pod-7' ORDER BY message_id OFFSET 5000 LIMIT 1")
echo "1. mentions=pod-7 on a channel of 1,000,000 messages (10,000 for pod-7), 50 per page:"
measure "unfiltered latest page (for comparison)" "/v1/channels/1/messages?limit=50"
measure "mentions=pod-7, newest first" "/v1/channels/1/messages?mentions=pod-7&limit=50"
measure "mentions=pod-7, after a cursor in the middle" "/v1/channels/1/messages?mentions=pod-7&after=$middle&limit=50"
measure "mentions=pod-7, before a cursor in the middle" "/v1/channels/1/messages?mentions=pod-7&before=$middle&limit=50"

echo "3. GET /v1/channels?reader=ana on 100,000 channels (a read state on each), 50 per page:"
measure "without reader (for comparison)" "/v1/channels?limit=50"
measure "reader=ana" "/v1/channels?reader=ana&limit=50"
measure "reader=bo (no read state: all unread)" "/v1/channels?reader=bo&limit=50"

waiting() {
  curl -s "$base/metrics" | awk '/^channeld_message_waiters / { print $2 }'
}
newest=$(psql -At "$url" -c "SELECT max(id) FROM messages")
echo "2. $waiters long polls on that channel, each for its own name (wait=30), $rounds rounds of one" \
  "post for one of them:"
for i in $(seq 1 "$waiters"); do
  ( curl -s -o /dev/null "$base/v1/channels/1/messages?after=$newest&wait=30&mentions=waiter-$i" \
      -H "Authorization: Bearer $key"
    date +%s%N >"$work/done.$i" ) &
done
deadline=$((SECONDS + 30))
until [ "$(waiting)" = "$waiters" ]; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "addressing-bench: only $(waiting) waiters" >&2; exit 1; }
  sleep 0.2
done
asleep_ok=yes
for round in $(seq 1 "$rounds"); do
  target=$((round * 37 % waiters + 1))
  start=$(date +%s%N)
  curl -sf -o /dev/null -X POST "$base/v1/channels/1/messages" -H "Authorization: Bearer $key" \
    -d "{\"content\": \"for waiter-$target\", \"mentions\": [\"waiter-$target\"]}"
  until [ -s "$work/done.$target" ]; do sleep 0.001; done
  echo $(( ($(cat "$work/done.$target") - start) / 1000 )) >>"$work/latencies"
  [ "$(waiting)" = "$((waiters - round))" ] || asleep_ok="no: $(waiting) waiting after round $round"
done
awk '{ print $1 / 1000 }' "$work/latencies" | summary "post to the matching waiter's answer"
echo "  the other waiters stayed asleep through every round: $asleep_ok"
# The waiters still waiting end with the server; wait for them before cleaning up.
kill "$server" 2>/dev/null || true
wait 2>/dev/null || true
