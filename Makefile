# channeld — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
LISTEN ?= 0.0.0.0:8080
# Queries are checked against the committed .sqlx/ data, so building needs no database.
export SQLX_OFFLINE ?= true
BIN := target/debug/channeld
# The suites that exercise realtime through real sockets; `make test` runs them on both engines.
REALTIME_SUITES := --test apps --test realtime --test realtime_connections --test realtime_rest \
  --test stored_delivery --test delivery --test addressing --test abuse --test observability \
  --test mcp --test least_privilege --test revocation

.PHONY: run test sdk-test mcp-test build key migrate prepare fuzz bench fmt lint ci readme-test openapi-check db-stop cluster redis-stop

## Build, bootstrap PostgreSQL if needed, migrate, and serve on :8080.
## (The database is `channeld`, or $CHANNELD_DEV_DB; see scripts/dev-db.sh.)
run: build
	@url=$$(scripts/dev-db.sh) && \
	  DATABASE_URL=$$url CHANNELD_MASTER_KEY=$$(scripts/dev-master-key.sh) CHANNELD_LISTEN=$(LISTEN) $(BIN) serve

## Bootstrap PostgreSQL (and Redis, for the cluster tests) if needed, then run the whole test suite:
## the Rust tests (the realtime suites twice: on the in-memory engine, then on the Redis engine),
## then Metered's JavaScript SDK in Node and in headless Chromium, then the official MCP clients
## (npm and PyPI) against two instances.
test:
	@url=$$(scripts/dev-db.sh postgres) && redis=$$(scripts/dev-redis.sh) && \
	  DATABASE_URL=$$url CHANNELD_TEST_REDIS_URL=$$redis $(CARGO) test --all-targets && \
	  echo "== the realtime suites again, on the Redis engine" && \
	  DATABASE_URL=$$url CHANNELD_TEST_REDIS_URL=$$redis CHANNELD_TEST_ENGINE=redis \
	    $(CARGO) test $(REALTIME_SUITES)
	@$(CARGO) build --quiet
	@scripts/sdk-test.sh
	@scripts/mcp-test.sh

## Only the MCP client suites (npm's and PyPI's official clients against two instances).
mcp-test: build
	@scripts/mcp-test.sh

## Only the SDK suites (Node and Chromium).
sdk-test: build
	@scripts/sdk-test.sh

## Two instances in cluster mode on :8081 and :8082, sharing Redis and the `make run` database.
## Ctrl-C stops both.
cluster: build
	@url=$$(scripts/dev-db.sh) && redis=$$(scripts/dev-redis.sh) && \
	  key=$$(scripts/dev-master-key.sh) && \
	  DATABASE_URL=$$url $(BIN) migrate && \
	  trap 'trap - INT TERM EXIT; kill 0' INT TERM EXIT; \
	  for port in 8081 8082; do \
	    DATABASE_URL=$$url CHANNELD_MASTER_KEY=$$key CHANNELD_REDIS_URL=$$redis \
	      CHANNELD_LISTEN=0.0.0.0:$$port CHANNELD_NO_MIGRATE=true $(BIN) serve & \
	  done; \
	  wait

## The one binary: the server, its CLI and `channeld follow`, the WebSocket client the README uses.
## (Examples and test dependencies are built only by `make test` and `make bench`.)
build:
	@$(CARGO) build --bin channeld

## Print a new API key for the `make run` database: export KEY=$(make key)
## (choose with SCOPES=publish,subscribe NAME=my-agent). Stdout carries the key and nothing else;
## a build, when one is needed, reports only errors, on stderr.
SCOPES ?= channels:read,channels:write,publish,subscribe,presence,send
NAME ?= quickstart
key:
	@$(CARGO) build --quiet --bin channeld >&2
	@url=$$(scripts/dev-db.sh) && \
	  DATABASE_URL=$$url $(BIN) migrate --log-format text 2>/dev/null && \
	  DATABASE_URL=$$url CHANNELD_MASTER_KEY=$$(scripts/dev-master-key.sh) \
	  $(BIN) keys create --name "$(NAME)" --scopes "$(SCOPES)" --quiet

migrate: build
	@url=$$(scripts/dev-db.sh) && DATABASE_URL=$$url $(BIN) migrate

## Regenerate .sqlx/ after changing a query. The scratch database it checks queries against is
## built with psql from migrations/, each in one transaction unless marked `no-transaction`, as the
## migrator runs them (the binary cannot migrate it while .sqlx/ is stale); it only serves
## compile-time checks and is never touched by the migrator.
prepare:
	@admin=$$(scripts/dev-db.sh postgres) && url=$$(scripts/dev-db.sh channeld_sqlx) && \
	  psql -q "$$admin" -c 'DROP DATABASE IF EXISTS channeld_sqlx' -c 'CREATE DATABASE channeld_sqlx' && \
	  for f in migrations/*.sql; do \
	    one=-1; grep -q 'no-transaction' "$$f" && one=; \
	    psql -q $$one "$$url" -v ON_ERROR_STOP=1 -f "$$f" >/dev/null || exit 1; \
	  done && \
	  rm -rf .sqlx && mkdir .sqlx && touch src/lib.rs && \
	  SQLX_OFFLINE=false SQLX_OFFLINE_DIR=$(CURDIR)/.sqlx DATABASE_URL=$$url $(CARGO) check --quiet --all-targets && \
	  echo "wrote $$(ls .sqlx | wc -l) query files to .sqlx/"

## Fuzz the live API from its OpenAPI document (schemathesis from PyPI, in .data/venv).
fuzz: build
	@scripts/fuzz.sh

## Validate the OpenAPI document, generate TypeScript types from it, compile a client written
## against them and run it against a live server (npm packages pinned in tests/openapi/).
openapi-check: build
	@scripts/openapi-check.sh

## Benchmark a release build on loopback: REST against pgbench running the same SQL, WebSocket
## fan-out against sockudo, idle-connection memory and presence churn. Prints a table and writes
## bench/results/latest.json. The first run builds sockudo once into ~/.cache/channeld-bench.
bench:
	@scripts/bench.sh

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	python3 scripts/import-cycles.py

ci:
	bash .ci/run

## Paste every shell block of README.md in order against a fresh `make run` on a fresh database,
## and check the relative links of README.md and docs/ (scripts/readme-test.sh).
readme-test:
	@scripts/readme-test.sh

## Stop the private Redis that scripts/dev-redis.sh may have started under ./.data.
redis-stop:
	@if [ -f .data/redis/redis.pid ]; then kill "$$(cat .data/redis/redis.pid)"; fi

## Stop the private cluster that scripts/dev-db.sh may have started under ./.data.
db-stop:
	@if [ -f .data/pg/postmaster.pid ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then runuser -u postgres -- pg_ctl -D .data/pg stop; else pg_ctl -D .data/pg stop; fi; \
	fi
