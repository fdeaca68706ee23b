#!/usr/bin/env bash
# Prints a DATABASE_URL for development and tests, starting PostgreSQL first when none answers.
#
#   scripts/dev-db.sh [DBNAME]      (default DBNAME: $CHANNELD_DEV_DB, else channeld)
#
# `make run`, `make key`, `make migrate` and `make cluster` use the default, so
# `CHANNELD_DEV_DB=other make run` serves another database (created at start if needed).
#
# 1. $DATABASE_URL, when set, is printed unchanged.
# 2. Otherwise the PostgreSQL at 127.0.0.1:5432 is used if it answers (user postgres, trust auth).
# 3. Otherwise a private cluster is created under ./.data/pg and started on 127.0.0.1:54329,
#    installing Debian's postgresql package first when initdb is missing. As root, initdb and
#    pg_ctl run as the postgres user, as PostgreSQL requires.
# Progress goes to stderr; stdout carries only the URL.
set -euo pipefail

db_name=${1:-${CHANNELD_DEV_DB:-channeld}}
if [ -n "${DATABASE_URL:-}" ]; then
  echo "$DATABASE_URL"
  exit 0
fi

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
say() { echo "dev-db: $*" >&2; }

if answers 5432; then
  echo "postgres://postgres@127.0.0.1:5432/$db_name"
  exit 0
fi

port=54329
if answers "$port"; then
  echo "postgres://postgres@127.0.0.1:$port/$db_name"
  exit 0
fi

find_pg_bin() {
  local found
  if found=$(command -v initdb 2>/dev/null) && [ -x "$(dirname "$found")/pg_ctl" ]; then
    dirname "$found"
    return 0
  fi
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && [ -x "$found/initdb" ] && echo "$found"
}

pg_bin=$(find_pg_bin || true)
if [ -z "$pg_bin" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "PostgreSQL is not installed and not running; install the postgresql package or set DATABASE_URL"
    exit 1
  fi
  say "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  pg_bin=$(find_pg_bin)
fi

root="$(pwd)/.data"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  as_pg=(runuser -u postgres --)
  # The postgres user must be able to reach the data directory; fall back to /var/tmp otherwise.
  mkdir -p "$root"
  if ! runuser -u postgres -- test -x "$root"; then
    root="/var/tmp/channeld-$(echo "$PWD" | sha256sum | cut -c1-12)"
  fi
fi
pgdata="$root/pg"
mkdir -p "$pgdata"
[ ${#as_pg[@]} -eq 0 ] || chown -R postgres: "$pgdata"
chmod 700 "$pgdata"

if [ ! -f "$pgdata/PG_VERSION" ]; then
  say "initialising a private cluster in $pgdata"
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 >"$root/initdb.log" 2>&1 ||
    { cat "$root/initdb.log" >&2; exit 1; }
fi
say "starting PostgreSQL on 127.0.0.1:$port"
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 60 \
  -o "-p $port -k $pgdata -c listen_addresses=127.0.0.1" start >&2
echo "postgres://postgres@127.0.0.1:$port/$db_name"
