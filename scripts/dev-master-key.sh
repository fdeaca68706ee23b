#!/usr/bin/env bash
# Prints the development master key (64 hex characters), creating .data/master.key on first use.
# CHANNELD_MASTER_KEY, when set, is printed unchanged. Production sets its own key.
set -euo pipefail
if [ -n "${CHANNELD_MASTER_KEY:-}" ]; then
  echo "$CHANNELD_MASTER_KEY"
  exit 0
fi
file=.data/master.key
if [ ! -s "$file" ]; then
  mkdir -p .data
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file")
fi
cat "$file"
