#!/usr/bin/env bash
# Prints a Redis URL for cluster mode and tests, starting Redis first when none answers.
#
# 1. $CHANNELD_REDIS_URL, when set, is printed unchanged.
# 2. Otherwise the Redis at 127.0.0.1:6379 is used if it answers.
# 3. Otherwise a private redis-server is started under ./.data/redis on 127.0.0.1:63799,
#    installing Debian's redis-server package first when it is missing.
# Progress goes to stderr; stdout carries only the URL.
set -euo pipefail

if [ -n "${CHANNELD_REDIS_URL:-}" ]; then
  echo "$CHANNELD_REDIS_URL"
  exit 0
fi

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
say() { echo "dev-redis: $*" >&2; }

if answers 6379; then
  echo "redis://127.0.0.1:6379"
  exit 0
fi

port=63799
url="redis://127.0.0.1:$port"
if answers "$port"; then
  echo "$url"
  exit 0
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    say "Redis is not installed and not running; install the redis-server package or set CHANNELD_REDIS_URL"
    exit 1
  fi
  say "installing Debian's redis-server package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq redis-server >&2
fi

dir="$(pwd)/.data/redis"
mkdir -p "$dir"
say "starting Redis on 127.0.0.1:$port"
redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' --appendonly no \
  --daemonize yes --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" >&2
for _ in $(seq 1 100); do
  answers "$port" && { echo "$url"; exit 0; }
  sleep 0.05
done
say "Redis did not start; see $dir/redis.log"
exit 1
