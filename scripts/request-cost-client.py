#!/usr/bin/env python3
"""The client of scripts/request-cost.sh: one keep-alive connection, a warm-up, then the
counted requests between two commands that switch the server's instrumentation on and off.
Every answer's status is checked, so a count never covers failed requests."""
import argparse
import http.client
import json
import subprocess

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--key", required=True)
parser.add_argument("--op", choices=["post", "get", "get-held"], required=True)
parser.add_argument("--channel", type=int, default=1)
parser.add_argument("--requests", type=int, default=2000)
parser.add_argument("--warmup", type=int, default=300)
parser.add_argument("--on", required=True)
parser.add_argument("--off", required=True)
args = parser.parse_args()

connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
path = f"/v1/channels/{args.channel}/messages"
content = json.dumps({"content": "a message of about the size agents post: " + "x" * 160})
# A page read from the database (past every id), as the REST benchmark's GET row reads it.
page = f"{path}?before=9000000000000000000"


def once():
    if args.op == "post":
        connection.request("POST", path, body=content, headers=headers)
        expected = (201,)
    else:
        connection.request("GET", path if args.op == "get-held" else page, headers=headers)
        expected = (200,)
    response = connection.getresponse()
    body = response.read()
    if response.status not in expected:
        raise SystemExit(f"request-cost: {args.op} answered {response.status}: {body[:200]!r}")


for _ in range(args.warmup):
    once()
subprocess.run(args.on, shell=True, check=True, capture_output=True)
for _ in range(args.requests):
    once()
subprocess.run(args.off, shell=True, check=True, capture_output=True)
