#!/usr/bin/env bash
# Runs Metered's JavaScript SDK, unchanged, against a real channeld: in Node 20 (with the `ws`
# package) and in headless Chromium (Debian's `chromium`, driven by playwright-core).
#
#   scripts/sdk-test.sh        (after a debug build; `make test` runs it last)
#
# npm packages are pinned by tests/sdk/package-lock.json and installed into tests/sdk/node_modules
# (ignored by git); Debian's chromium is installed when missing. The suites start their own
# servers on loopback ports, on a fresh database.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=tests/sdk
stamp=$dir/node_modules/.installed-lock
if ! cmp -s "$dir/package-lock.json" "$stamp"; then
  echo "sdk: installing the pinned npm packages into $dir/node_modules" >&2
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  cp "$dir/package-lock.json" "$stamp"
fi

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "sdk: installing Debian's chromium" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium </dev/null >/dev/null \
    || { $sudo apt-get update -q </dev/null >/dev/null && $sudo apt-get install -y -q chromium </dev/null >/dev/null; }
fi

admin=$(scripts/dev-db.sh postgres)
db_url=$(scripts/dev-db.sh channeld_sdk)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_sdk' >/dev/null 2>&1
export DATABASE_URL=$db_url
export CHANNELD_MASTER_KEY=$(scripts/dev-master-key.sh)
export CHROMIUM=$chromium
target/debug/channeld migrate --log-format text >/dev/null 2>&1

cd "$dir"
node --test --test-reporter=spec --test-concurrency=1 node.test.mjs browser.test.mjs console.test.mjs
