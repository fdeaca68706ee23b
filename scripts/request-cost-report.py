#!/usr/bin/env python3
"""Reads scripts/request-cost.sh's callgrind files: instructions per request for each system and
operation, then the functions channeld spends them in (inclusive, per request), beside the
floor's figure for the same function where it has one."""
import os
import re
import subprocess
import sys
from pathlib import Path

out, requests, waiters = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$")
SHOWN = re.compile(r"rmcp::|channeld::|tower_http::|axum::|sqlx_core::|sqlx_postgres::|serde_json::|hyper::|malloc|free|memcpy|memmove")


def inclusive(path):
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=99.9", str(path)],
        check=True, capture_output=True, text=True).stdout
    total, functions = 0, {}
    for line in text.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        count, name = int(match[1].replace(",", "")), match[2].strip()
        if name.startswith("PROGRAM TOTALS"):
            total = count
            continue
        # "file:function [object]" -> function
        name = re.sub(r"\s*\[[^\]]*\]$", "", name)
        name = name.split(":", 1)[1] if name.startswith("???:") or ".rs:" in name.split(" ")[0] else name
        functions[name] = functions.get(name, 0) + count
    return total, functions


# COST_OPS: the operations this run counted (scripts/request-cost.sh); without it, all of them.
ops = os.environ.get("COST_OPS", "post get").replace(",", " ").split()

for op in ops:
    floor_total, floor = inclusive(out / f"floor-{op}.callgrind")
    total, channeld = inclusive(out / f"channeld-{op}.callgrind")
    print(f"{op.upper()}: instructions per request (user space): floor {floor_total / requests:,.0f}, "
          f"channeld {total / requests:,.0f} ({total / floor_total:.2f}x)")
    rows = sorted(((count, name) for name, count in channeld.items() if SHOWN.search(name)), reverse=True)
    print(f"  {'channeld':>10} {'floor':>10}  function (inclusive, per request)")
    for count, name in rows[:60]:
        other = floor.get(name)
        shown = f"{other / requests:,.0f}" if other else "-"
        print(f"  {count / requests:>10,.0f} {shown:>10}  {name[:150]}")
    print()

if "COST_OPS" in os.environ:
    sys.exit(0)
total, channeld = inclusive(out / "channeld-mcp-wake.callgrind")
print(f"MCP wake-up: {waiters} wait_for_messages calls answered by one post: "
      f"{total / waiters:,.0f} instructions per answer (user space, the post included)")
rows = sorted(((count, name) for name, count in channeld.items() if SHOWN.search(name)), reverse=True)
for count, name in rows[:40]:
    print(f"  {count / waiters:>10,.0f}  {name[:150]}")
