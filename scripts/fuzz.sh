#!/usr/bin/env bash
# Fuzzes the live API from its own OpenAPI document with schemathesis (from PyPI).
#
#   scripts/fuzz.sh            (FUZZ_MAX_TIME seconds, default 90; FUZZ_CHECKS, default below)
#
# Starts channeld on a fresh database and a loopback port, with a key that holds every scope
# and a rate limit high enough not to get in the way, then lets schemathesis generate requests.
# It fails on any 5xx, on any response that differs from the document, and on any operation
# whose generated requests were all refused (scripts/schemathesis.toml). Every path is fuzzed,
# the event stream included: scripts/schemathesis.toml reads each stream for a few seconds and
# checks every event against the document. Every request and answer is kept in
# .data/fuzz-report/ (HAR), to read what a failed run sent.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.data/venv
rm -rf .data/fuzz-report
version=4.32.5
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" != "$version" ]; then
  echo "fuzz: installing schemathesis $version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version"
fi

admin=$(scripts/dev-db.sh postgres)
db_url=$(scripts/dev-db.sh channeld_fuzz)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_fuzz' >/dev/null
export DATABASE_URL=$db_url
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
bin=target/debug/channeld
$bin migrate 2>/dev/null
key=$($bin keys create --name fuzz --quiet --rate-limit 1000000 --rate-burst 1000000 \
  --scopes channels:read,channels:write,publish,subscribe,presence,send,admin)
# DELETE /v1/keys/{key_id} runs with this one (scripts/schemathesis.toml): it reaches no wider key.
FUZZ_REVOKER_KEY=$($bin keys create --name fuzz-revoker --quiet --rate-limit 1000000 \
  --rate-burst 1000000 --scopes admin)
export FUZZ_REVOKER_KEY

port=${FUZZ_PORT:-18089}
$bin serve --listen "127.0.0.1:$port" --no-migrate --ws-connects-per-ip 1000000 \
  --auth-failures-per-minute 1000000 --webhook-allow-private-networks --webhook-allow-http \
  --db-acquire-timeout 10s >.data/fuzz-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

# Stored data the generated requests can name (scripts/schemathesis.toml draws ids from it):
# channel 1 with messages 1, 2 and 3, and its consumer group `fuzz`.
api=http://127.0.0.1:$port/v1
channel=$(curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"name":"fuzz"}' "$api/channels" | python3 -c 'import json,sys; print(json.load(sys.stdin)["channel"]["id"])')
for text in one two three; do
  curl -sf -o /dev/null -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d "{\"content\":\"$text\"}" "$api/channels/$channel/messages"
done
# …and its consumer group `fuzz`, which claims, acks and dead-letter routes can name. It gives
# each message one delivery of 1 s: the messages claimed here are dead letters once the run's
# own claims settle them, so retrying a dead letter reaches more than 404.
curl -sf -o /dev/null -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"name":"fuzz","start":"earliest","ack_wait":"1s","max_deliveries":1}' \
  "$api/channels/$channel/consumers"
curl -sf -o /dev/null -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"member":"seed","max":3}' "$api/channels/$channel/consumers/fuzz/claim"
if [ "$channel" != 1 ]; then
  echo "fuzz: the seeded channel is $channel, not 1 as scripts/schemathesis.toml expects" >&2
  exit 1
fi

# Every response must be no 5xx, and match the document in status, content type, headers and body;
# invalid input must be refused. "Schema-valid request rejected" is not checked: rules such as
# "no control characters" or "`before` and `after` exclude each other" are beyond JSON Schema and
# documented in README. Response time is not checked either: a long poll waits by design.
checks=${FUZZ_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection}
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml \
  run "http://127.0.0.1:$port/v1/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks "$checks" \
  --phases "${FUZZ_PHASES:-examples,fuzzing,stateful}" \
  --max-time "${FUZZ_MAX_TIME:-90}" \
  --request-timeout 40 \
  --workers 2 \
  --seed "${FUZZ_SEED:-42}" \
  --report har --report-dir .data/fuzz-report \
  --suppress-health-check all ${FUZZ_EXTRA:-}
