#!/usr/bin/env bash
# Checks the OpenAPI document the way API tooling consumes it:
#
#   scripts/openapi-check.sh      (after a debug build; CI runs it)
#
# 1. `channeld openapi` prints the document the router serves at /v1/openapi.json.
# 2. openapi-spec-validator (PyPI, pinned, in .data/venv) validates it against OpenAPI 3.1.
# 3. openapi-typescript (npm, pinned by tests/openapi/package-lock.json) generates TypeScript
#    types from it; tsc compiles tests/openapi/client.ts, a client written against those types
#    with openapi-fetch, in strict mode.
# 4. The compiled client runs against a real server on a fresh database.
set -euo pipefail
cd "$(dirname "$0")/.."

# Its own database, whatever DATABASE_URL says.
unset DATABASE_URL
bin=target/debug/channeld
out=target/openapi
mkdir -p "$out"
"$bin" openapi >"$out/openapi.json"
echo "openapi: $(grep -o '"operationId":' "$out/openapi.json" | wc -l) operations in $out/openapi.json"

venv=.data/venv
validator=0.9.0
if [ "$("$venv/bin/pip" show openapi-spec-validator 2>/dev/null | awk '/^Version:/ {print $2}')" != "$validator" ]; then
  echo "openapi: installing openapi-spec-validator $validator into $venv" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q "openapi-spec-validator==$validator"
fi
"$venv/bin/openapi-spec-validator" "$out/openapi.json"

dir=tests/openapi
stamp=$dir/node_modules/.installed-lock
if ! cmp -s "$dir/package-lock.json" "$stamp"; then
  echo "openapi: installing the pinned npm packages into $dir/node_modules" >&2
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  cp "$dir/package-lock.json" "$stamp"
fi
rm -rf "$dir/generated" "$dir/dist"
(cd "$dir" && npx --no-install openapi-typescript "../../$out/openapi.json" -o generated/api.d.ts \
  && npx --no-install tsc -p .)
echo "openapi: generated types compile with the client"

admin=$(scripts/dev-db.sh postgres)
db_url=$(scripts/dev-db.sh channeld_openapi)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_openapi' >/dev/null 2>&1
export DATABASE_URL=$db_url
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
"$bin" migrate --log-format text >/dev/null 2>&1
key=$("$bin" keys create --name openapi --quiet \
  --scopes channels:read,channels:write,publish,subscribe,presence,send)
port=${OPENAPI_PORT:-18091}
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
if answers; then
  echo "openapi: port $port is taken; free it or set OPENAPI_PORT" >&2
  exit 1
fi
"$bin" serve --listen "127.0.0.1:$port" --no-migrate >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for attempt in $(seq 1 100); do
  kill -0 $server 2>/dev/null || { tail -n 20 "$out/server.log" >&2; exit 1; }
  answers && break
  [ "$attempt" -lt 100 ] || { echo "openapi: the server did not answer in 10 s" >&2; exit 1; }
  sleep 0.1
done
node "$dir/dist/client.js" "http://127.0.0.1:$port" "$key"
