#!/usr/bin/env bash
# Installs the Standard Webhooks reference verifiers that tests/webhooks.rs checks signatures with:
# npm's `standardwebhooks` (pinned by tests/webhooks/package-lock.json) into
# tests/webhooks/node_modules, PyPI's (pinned by tests/webhooks/requirements.txt) into
# .data/webhooks-venv. Does nothing when both are current; quiet unless it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=tests/webhooks
stamp=$dir/node_modules/.installed-lock
if ! cmp -s "$dir/package-lock.json" "$stamp"; then
  echo "webhooks: installing the pinned npm verifier into $dir/node_modules" >&2
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2
  cp "$dir/package-lock.json" "$stamp"
fi
venv=.data/webhooks-venv
if ! cmp -s "$dir/requirements.txt" "$venv/.installed-requirements"; then
  echo "webhooks: installing the pinned Python verifier into $venv" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$dir/requirements.txt" >&2
  cp "$dir/requirements.txt" "$venv/.installed-requirements"
fi
