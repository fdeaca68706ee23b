#!/usr/bin/env bash
# Posting a message, the statement alone: the statement before channels counted their messages
# (previous.sql: bump updated_at, insert) against the current one (current.sql: one UPDATE that
# also counts the message and keeps the last one, then the insert), with pgbench on 100
# channels, alternating, 3 rounds of 8 s at 1, 8 and 32 clients. current.sql is the query of
# src/messages/db.rs `insert_plain` with its parameters bound as the load generator binds them.
#
#   bench/post-ab/run.sh      (after `make run` or any migrated database; uses a fresh one)
set -euo pipefail
cd "$(dirname "$0")/../.."
admin=$(scripts/dev-db.sh postgres)
url=$(scripts/dev-db.sh channeld_post_ab)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_post_ab' >/dev/null 2>&1
DATABASE_URL=$url target/debug/channeld migrate --log-format text >/dev/null 2>&1
psql -q "$url" -c "INSERT INTO channels (name) SELECT 'ab ' || n FROM generate_series(1, 100) n"
pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -n 1)
results=$(mktemp)
for clients in 1 8 32; do
  for round in 1 2 3; do
    for statement in previous current; do
      tps=$("$pgbench" -n -M prepared -c "$clients" -j 2 -T 8 -f "bench/post-ab/$statement.sql" "$url" \
        2>/dev/null | grep -o 'tps = [0-9.]*' | cut -d' ' -f3)
      echo "$clients $statement $tps" >>"$results"
    done
  done
done
python3 - "$results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    clients, statement, tps = line.split()
    runs[(int(clients), statement)].append(float(tps))
for clients in (1, 8, 32):
    old, new = runs[(clients, "previous")], runs[(clients, "current")]
    print(f"{clients:>2} clients: previous {statistics.median(old):,.0f} tx/s [{min(old):,.0f}-{max(old):,.0f}]"
          f", current {statistics.median(new):,.0f} [{min(new):,.0f}-{max(new):,.0f}]"
          f", ratio {statistics.median(new) / statistics.median(old):.2f}")
PY
rm -f "$results"
