#!/usr/bin/env bash
# Posting a message, the statement alone, with pgbench on 100 channels: the statement before
# messages carried mentions (before.sql, bench/post-ab's current.sql), the current one with no
# mentions (plain.sql), and the current one with two mentions and a metadata object
# (mentions.sql: the message row, its two message_mentions rows, the channel's row). The
# current statements are the query of src/messages/db.rs `insert_plain` from .sqlx/, bound as
# the load generator binds them. Alternating, 3 rounds of 8 s at 1, 8 and 32 clients.
#
#   bench/mentions-ab/run.sh      (CHANNELD_BIN, default target/debug/channeld, migrates a fresh database)
set -euo pipefail
cd "$(dirname "$0")/../.."
admin=$(scripts/dev-db.sh postgres)
url=$(scripts/dev-db.sh channeld_mentions_ab)
psql -q "$admin" -c 'DROP DATABASE IF EXISTS channeld_mentions_ab' >/dev/null 2>&1
DATABASE_URL=$url "${CHANNELD_BIN:-target/debug/channeld}" migrate --log-format text >/dev/null 2>&1
psql -q "$url" -c "INSERT INTO channels (name) SELECT 'ab ' || n FROM generate_series(1, 100) n"
pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -n 1)
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for clients in 1 8 32; do
  for round in 1 2 3; do
    for statement in before plain mentions; do
      psql -q "$url" -c 'CHECKPOINT' >/dev/null
      tps=$("$pgbench" -n -M prepared -c "$clients" -j 2 -T 8 -f "bench/mentions-ab/$statement.sql" "$url" \
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
    row = []
    for statement in ("before", "plain", "mentions"):
        tps = runs[(clients, statement)]
        row.append(f"{statement} {statistics.median(tps):,.0f} tx/s [{min(tps):,.0f}-{max(tps):,.0f}]")
    plain = statistics.median(runs[(clients, "plain")])
    print(f"{clients:>2} clients: " + ", ".join(row)
          + f"; mentions/plain {statistics.median(runs[(clients, 'mentions')]) / plain:.2f}"
          + f", plain/before {plain / statistics.median(runs[(clients, 'before')]):.2f}")
PY
