#!/usr/bin/env python3
"""The client of scripts/request-cost.sh: one keep-alive connection, a warm-up, then the
counted requests between two commands that switch the server's instrumentation on and off.
Every answer's status is checked, so a count never covers failed requests."""
import argparse
import http.client
import json
import subprocess
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--key", required=True)
parser.add_argument("--op", choices=["post", "get", "get-held", "mcp-wake"], required=True)
parser.add_argument("--waiters", type=int, default=200)
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


def mcp_wake():
    """`--waiters` MCP wait_for_messages calls, then one post wakes them all: the counted work is
    the post and every answer it sets off."""
    import threading
    import time

    connection.request("POST", path, body=content, headers=headers)
    after = json.loads(connection.getresponse().read())["message"]["id"]
    call = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "wait_for_messages",
        "arguments": {"channel_id": args.channel, "after": after, "wait_seconds": 25}}})
    mcp_headers = dict(headers, Accept="application/json, text/event-stream")
    mcp_headers["MCP-Protocol-Version"] = "2025-11-25"
    woken = []

    def wait():
        waiter = http.client.HTTPConnection("127.0.0.1", args.port, timeout=120)
        waiter.request("POST", "/v1/mcp", body=call, headers=mcp_headers)
        answer = json.loads(waiter.getresponse().read())
        messages = answer["result"]["structuredContent"].get("messages")
        if not messages:
            print(f"request-cost: a waiter was answered {answer}", file=sys.stderr)
            return
        woken.append(messages[0]["id"])

    threads = [threading.Thread(target=wait) for _ in range(args.waiters)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while True:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        waiting = [line for line in text.splitlines() if line.startswith("channeld_message_waiters ")]
        if waiting and int(float(waiting[0].split()[1])) >= args.waiters:
            break
        if time.monotonic() > deadline:
            raise SystemExit("request-cost: the waiters did not all wait")
        time.sleep(0.2)
    subprocess.run(args.on, shell=True, check=True, capture_output=True)
    connection.request("POST", path, body=content, headers=headers)
    posted = json.loads(connection.getresponse().read())["message"]["id"]
    for thread in threads:
        thread.join()
    subprocess.run(args.off, shell=True, check=True, capture_output=True)
    if woken != [posted] * args.waiters:
        raise SystemExit(f"request-cost: {len(woken)} waiters answered, not all with {posted}")


if args.op == "mcp-wake":
    mcp_wake()
else:
    for _ in range(args.warmup):
        once()
    subprocess.run(args.on, shell=True, check=True, capture_output=True)
    for _ in range(args.requests):
        once()
    subprocess.run(args.off, shell=True, check=True, capture_output=True)
