#!/usr/bin/env bash
# Runs the official MCP clients against two real channeld instances sharing one database:
#
#   scripts/mcp-test.sh        (after a debug build; `make test` runs it)
#
# - npm's @modelcontextprotocol/sdk, pinned by tests/mcp/package-lock.json, installed into
#   tests/mcp/node_modules (ignored by git): protocol revision 2025-11-25;
# - PyPI's mcp, pinned with its dependencies by tests/mcp/requirements.txt, installed into
#   .data/mcp-venv: the current revision (2026-07-28) and 2025-11-25.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=tests/mcp
stamp=$dir/node_modules/.installed-lock
if ! cmp -s "$dir/package-lock.json" "$stamp"; then
  echo "mcp: installing the pinned npm packages into $dir/node_modules" >&2
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  cp "$dir/package-lock.json" "$stamp"
fi
venv=.data/mcp-venv
if ! cmp -s "$dir/requirements.txt" "$venv/.installed-requirements"; then
  echo "mcp: installing the pinned Python packages into $venv" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$dir/requirements.txt"
  cp "$dir/requirements.txt" "$venv/.installed-requirements"
fi

# Its own database, whatever DATABASE_URL says.
bin=target/debug/channeld
admin=$(scripts/dev-db.sh postgres)
db_url=$(scripts/dev-db.sh channeld_mcp)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_mcp' >/dev/null 2>&1
export DATABASE_URL=$db_url
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
"$bin" migrate --log-format text >/dev/null 2>&1
CHANNELD_KEY=$("$bin" keys create --name mcp-test --scopes channels:read,channels:write --quiet)
CHANNELD_READ_KEY=$("$bin" keys create --name mcp-test-read --scopes channels:read --quiet)
export CHANNELD_KEY CHANNELD_READ_KEY

out=target/mcp-test
mkdir -p "$out"
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start() {
  local port=$1
  if answers "$port"; then
    echo "mcp: port $port is taken; free it or set MCP_TEST_PORT" >&2
    exit 1
  fi
  "$bin" serve --listen "127.0.0.1:$port" --no-migrate --log-format text >"$out/server-$port.log" 2>&1 &
  pids+=($!)
}
port=${MCP_TEST_PORT:-18111}
start "$port"
start $((port + 1))
for p in "$port" $((port + 1)); do
  for _ in $(seq 200); do answers "$p" && break; sleep 0.05; done
  answers "$p" || { echo "mcp: the server on $p never listened (see $out/server-$p.log)" >&2; exit 1; }
done
export CHANNELD_A=http://127.0.0.1:$port CHANNELD_B=http://127.0.0.1:$((port + 1))

echo "mcp: @modelcontextprotocol/sdk (Node) against $CHANNELD_A and $CHANNELD_B"
(cd "$dir" && node --test --test-reporter=spec --test-concurrency=1 client.test.mjs)
echo "mcp: mcp (Python) against $CHANNELD_A and $CHANNELD_B"
"$venv/bin/python" "$dir/test_client.py"
