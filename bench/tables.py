#!/usr/bin/env python3
"""Prints README's performance tables (Markdown) from bench/results/latest.json: every row."""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json"
d = json.load(open(path))


def n(x, digits=0):
    return f"{x:,.{digits}f}"


def spread(s, digits=0, unit=""):
    return f"{n(s['median'], digits)}{unit} [{n(s['min'], digits)}-{n(s['max'], digits)}]"


pg = d.get("postgres", {})
print(f"Machine: {d['cpus']} cores shared by everything; PostgreSQL {pg.get('server_version', '?').split()[0]}, "
      f"shared_buffers {pg.get('shared_buffers')}, synchronous_commit {pg.get('synchronous_commit')}, "
      f"fsync {pg.get('fsync')}; every figure the median of {d['repeats']} runs [min-max] unless marked.\n")

print("| REST | clients | pgbench tx/s | channeld req/s | ratio | channeld p50 / p99 | CPU: PostgreSQL under pgbench / under channeld, channeld |")
print("|---|---|---|---|---|---|---|")
for r in d["rest"]:
    print(f"| {r['op']} | {r['clients']} | {spread(r['pgbench_per_sec'])} | {spread(r['channeld_per_sec'])} | "
          f"**{r['ratio']:.2f}** [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}] | "
          f"{r['channeld']['p50_ms']:.2f} / {r['channeld']['p99_ms']:.2f} ms | "
          f"{r['pgbench_postgres_pct']:.0f}% / {r['cpu']['postgres_pct']:.0f}%, {r['cpu']['server_pct']:.0f}% |")
print()

print("| fan-out: maximum sustainable rate | subscribers | highest rate sustained | steps (msg/s: p99, lost) |")
print("|---|---|---|---|")
for l in d["fanout_ladders"]:
    steps = "; ".join(f"{s['publish_rate']}: {s['deliveries']['p99_ms']:.0f} ms, {s['lost']}" for s in l["steps"])
    print(f"| {l['server']} | {n(l['subscribers'])} | {n(l['max_rate'])} msg/s | {steps} |")
print()

print("| fan-out | load | subscribers x msg/s | deliveries/s | p50 ms | p99 ms | lost | drops | server CPU µs per delivery |")
print("|---|---|---|---|---|---|---|---|---|")
for r in d["fanout"]:
    print(f"| {r['server']} | {r['load']} | {n(r['subscribers'])} x {n(r['publish_rate'])} | "
          f"{spread(r['deliveries_per_sec'])} | {spread(r['p50_ms'], 1)} | {spread(r['p99_ms'], 1)} | "
          f"{r['lost']} | {r['disconnected']} | {spread(r['server_cpu_us_per_delivery'], 2)} |")
print()

print("| stored delivery: followers on | WebSockets + SSE | posts/s (offered) | POST -> WebSocket p50 / p99 | p99 over runs | POST -> SSE p50 / p99 | lost |")
print("|---|---|---|---|---|---|---|")
for rep in d["stored"]:
    m = rep["median"]
    offered = m["offered_rate"] if m["offered_rate"] is not None else "one writer, flat out"
    print(f"| {m['followers_on']} | {n(m['ws_subscribers'])} + {m['sse_streams']} | {n(m['posts']['per_sec'])} ({offered}) | "
          f"{m['ws']['p50_ms']:.1f} / {m['ws']['p99_ms']:.1f} ms | [{rep['spread']['min']:.1f}-{rep['spread']['max']:.1f}] ms | "
          f"{m['sse']['p50_ms']:.1f} / {m['sse']['p99_ms']:.1f} ms | {sum(r['lost'] for r in rep['runs'])} |")
print()

f = d["footprint"]
print(f"Idle connections (one run, fresh process): {n(f['connections'])} subscribed, "
      f"**{f['per_connection_kib']:.2f} KiB each** (RSS {n(f['rss_before_kib'])} -> {n(f['rss_after_kib'])} KiB).")
c = d["churn"]
print(f"Presence churn, {n(c['median']['peers'])} peers in memory: **{spread(c['spread'])} joins + leaves/s**, "
      f"{c['median']['disconnected']} disconnected.\n")

cl = d["cluster"]
print("| cluster fan-out (Redis) | placement | subscribers x msg/s | deliveries/s | p99 ms | lost (3 runs) |")
print("|---|---|---|---|---|---|")
for r in cl["fanout"]:
    print(f"| {r['server']} | {r['load']} | {n(r['subscribers'])} x {n(r['publish_rate'])} | "
          f"{spread(r['deliveries_per_sec'])} | {spread(r['p99_ms'], 0)} | {n(r['lost'])} |")
print()
one, two, conv = cl["churn_one_instance"], cl["churn_two_instances"], cl["convergence"]
print(f"Cluster presence churn with {n(one['peers'])} peers (one run each): {n(one['joins_leaves_per_sec'])}/s on one "
      f"instance, {n(two['joins_leaves_per_sec'])}/s over two; convergence of {conv['peers']} concurrent joins over two "
      f"instances: {conv['converged']} of {conv['runs']} runs.")
for note in d.get("notes", []):
    print(f"\nNote: {note}")
