#!/usr/bin/env python3
"""The timing client of scripts/history-bench.sh and scripts/list-bench.sh: GETs two pages in
turn, each on a keep-alive connection of its own, the order of each pair alternating, so whatever
the machine does meanwhile falls on both alike. Prints the median and p99, in ms, of each page's
requests. The second page may be on another server (`--short-port`, `--short-key`)."""
import argparse
import http.client
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--key", required=True)
parser.add_argument("--short-port", type=int)
parser.add_argument("--short-key")
parser.add_argument("--requests", type=int, default=2000)
parser.add_argument("long")
parser.add_argument("short")
args = parser.parse_args()

paths = [args.long, args.short]
ports = [args.port, args.short_port or args.port]
keys = [args.key, args.short_key or args.key]
headers = [{"Authorization": f"Bearer {key}"} for key in keys]
connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for port in ports]
times = [[], []]


def get(which):
    started = time.perf_counter_ns()
    connections[which].request("GET", paths[which], headers=headers[which])
    response = connections[which].getresponse()
    response.read()
    elapsed = time.perf_counter_ns() - started
    if response.status != 200:
        raise SystemExit(f"history-client: GET {paths[which]} answered {response.status}")
    return elapsed


for which in (0, 1, 1, 0):  # warm both connections and pages
    get(which)
for n in range(args.requests):
    for which in ((0, 1) if n % 2 == 0 else (1, 0)):
        times[which].append(get(which))


def figures(samples):
    samples = sorted(samples)
    median = samples[(len(samples) - 1) // 2]
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"{median / 1e6:.3f} {p99 / 1e6:.3f}"


print(figures(times[0]), figures(times[1]))
