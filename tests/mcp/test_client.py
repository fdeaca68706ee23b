"""The official Python MCP client (PyPI `mcp`, pinned in requirements.txt) against two real
channeld instances on one database, started by scripts/mcp-test.sh.

`mode="auto"` speaks the current protocol revision (2026-07-28, no handshake); `mode="legacy"`
the previous one (2025-11-25, with `initialize`). Both are exercised.
"""

import asyncio
import contextlib
import functools
import os
import re
import time
import unittest
import uuid

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

A = os.environ["CHANNELD_A"]  # http://127.0.0.1:port
B = os.environ["CHANNELD_B"]
KEY = os.environ["CHANNELD_KEY"]  # channels:read + channels:write
READ_KEY = os.environ["CHANNELD_READ_KEY"]  # channels:read only
DEADLINE = 15.0


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next instance in turn, as a load balancer without affinity."""

    def __init__(self, bases):
        self.targets = [httpx2.URL(base) for base in bases]
        self.served = {str(t): 0 for t in self.targets}
        self.inner = httpx2.AsyncHTTPTransport()
        self.turn = 0

    async def handle_async_request(self, request):
        target = self.targets[self.turn % len(self.targets)]
        self.turn += 1
        self.served[str(target)] += 1
        request.url = request.url.copy_with(host=target.host, port=target.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self):
        await self.inner.aclose()


def innermost(error):
    """The one error inside nested exception groups: what the client actually raised."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def in_one_task(test):
    """Runs a test with its clients closed before it returns: anyio requires a client to be
    left in the task that entered it, and unittest runs cleanups in another."""

    @functools.wraps(test)
    async def run(self):
        async with contextlib.AsyncExitStack() as self.clients:
            await test(self)

    return run


class McpTest(unittest.IsolatedAsyncioTestCase):

    async def connect(self, base=A, key=KEY, mode="auto", transport=None):
        http = await self.clients.enter_async_context(
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {key}"}, timeout=60, transport=transport
            )
        )
        url = f"{base}/v1/mcp"
        return await self.clients.enter_async_context(
            Client(streamable_http_client(url, http_client=http), mode=mode)
        )

    async def rest(self, method, path, body=None, base=A):
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
            response = await http.request(method, f"{base}{path}", json=body)
        self.assertLess(response.status_code, 300, response.text)
        return response.json()

    async def new_channel(self, client):
        result = await client.call_tool("create_channel", {"name": f"py-{uuid.uuid4()}"})
        self.assertFalse(result.is_error, result.content)
        return result.structured_content["channel"]["id"]

    async def waiters(self, base, count):
        deadline = time.monotonic() + DEADLINE
        async with httpx2.AsyncClient() as http:
            while True:
                text = (await http.get(f"{base}/metrics")).text
                match = re.search(r"^channeld_message_waiters (\d+)$", text, re.M)
                if match and int(match.group(1)) >= count:
                    return
                self.assertLess(time.monotonic(), deadline, f"never saw {count} waiter(s)")
                await asyncio.sleep(0.01)

    @in_one_task
    async def test_list_tools_in_both_protocol_revisions(self):
        expected = {
            "list_channels",
            "get_channel",
            "read_messages",
            "wait_for_messages",
            "post_message",
            "create_channel",
            "update_channel_document",
            "mark_read",
            "claim_messages",
            "ack_messages",
        }
        for mode, version in (("auto", "2026-07-28"), ("legacy", "2025-11-25")):
            with self.subTest(mode=mode):
                client = await self.connect(mode=mode)
                self.assertEqual(client.protocol_version, version)
                tools = {tool.name: tool for tool in (await client.list_tools()).tools}
                self.assertEqual(set(tools), expected)
                self.assertTrue(tools["read_messages"].annotations.read_only_hint)
                self.assertFalse(tools["create_channel"].annotations.read_only_hint)
                schema = tools["read_messages"].input_schema
                self.assertEqual(schema["properties"]["limit"]["maximum"], 100)
                self.assertEqual(schema["required"], ["channel_id"])
                # A call works in this revision too.
                channel = await self.new_channel(client)
                got = await client.call_tool("get_channel", {"channel_id": channel})
                self.assertEqual(got.structured_content["channel"]["id"], channel)
                self.assertIn(f"channel {channel}", got.content[0].text)

    @in_one_task
    async def test_idempotent_post(self):
        client = await self.connect()
        channel = await self.new_channel(client)
        args = {
            "channel_id": channel,
            "content": "tests passed",
            "pod_key": "pod-py",
            "idempotency_key": "py-retry-1",
        }
        first = await client.call_tool("post_message", args)
        second = await client.call_tool("post_message", args)
        self.assertFalse(first.structured_content["replayed"])
        self.assertTrue(second.structured_content["replayed"])
        self.assertEqual(
            first.structured_content["message"]["id"], second.structured_content["message"]["id"]
        )
        page = await self.rest("GET", f"/v1/channels/{channel}/messages")
        self.assertEqual([m["content"] for m in page["messages"]], ["tests passed"])

    @in_one_task
    async def test_read_messages_paging_has_no_gap_or_duplicate(self):
        client = await self.connect()
        channel = await self.new_channel(client)
        posted = []
        for i in range(17):
            body = await self.rest("POST", f"/v1/channels/{channel}/messages", {"content": f"m{i}"})
            posted.append(body["message"]["id"])
        seen, after = [], 0
        for _ in range(10):
            page = (
                await client.call_tool(
                    "read_messages", {"channel_id": channel, "after": after, "limit": 4}
                )
            ).structured_content
            seen += [m["id"] for m in page["messages"]]
            after = page["next_after"]
            if not page["has_more"]:
                break
        self.assertEqual(seen, posted)

    @in_one_task
    async def test_wait_is_woken_by_a_post_on_another_instance(self):
        client = await self.connect(base=A)
        channel = await self.new_channel(client)
        waiting = asyncio.create_task(
            client.call_tool(
                "wait_for_messages", {"channel_id": channel, "after": 0, "wait_seconds": 20}
            )
        )
        await self.waiters(A, 1)
        body = await self.rest(
            "POST", f"/v1/channels/{channel}/messages", {"content": "from B"}, base=B
        )
        posted = time.monotonic()
        result = await asyncio.wait_for(waiting, DEADLINE)
        elapsed = time.monotonic() - posted
        self.assertLess(elapsed, 1.0, f"woken {elapsed * 1000:.0f} ms after the post")
        self.assertFalse(result.structured_content["timed_out"])
        self.assertEqual(
            [m["id"] for m in result.structured_content["messages"]], [body["message"]["id"]]
        )

    @in_one_task
    async def test_a_wait_for_mentions_wakes_only_for_a_mention_posted_on_another_instance(self):
        client = await self.connect(base=A)
        other = await self.connect(base=B)
        channel = await self.new_channel(client)
        waiting = asyncio.create_task(
            client.call_tool(
                "wait_for_messages",
                {"channel_id": channel, "after": 0, "wait_seconds": 20, "mentions": "pod-7"},
            )
        )
        await self.waiters(A, 1)
        # For someone else, on the other instance: the waiter sleeps on.
        await self.rest(
            "POST",
            f"/v1/channels/{channel}/messages",
            {"content": "for pod-3", "mentions": ["pod-3"]},
            base=B,
        )
        posted = await other.call_tool(
            "post_message",
            {"channel_id": channel, "content": "pod-7: yours", "mentions": ["pod-7"],
             "pod_key": "lead"},
        )
        self.assertFalse(posted.is_error, posted.content)
        result = await asyncio.wait_for(waiting, DEADLINE)
        self.assertFalse(result.structured_content["timed_out"])
        messages = result.structured_content["messages"]
        self.assertEqual([m["id"] for m in messages], [posted.structured_content["message"]["id"]])
        self.assertEqual(messages[0]["mentions"], ["pod-7"])

    @in_one_task
    async def test_claim_and_ack_through_a_consumer_group_on_two_instances(self):
        a = await self.connect(base=A)
        b = await self.connect(base=B)
        channel = await self.new_channel(a)
        await self.rest("POST", f"/v1/channels/{channel}/consumers", {"name": "workers"})
        # A waiting claim on A is woken by a post on B.
        waiting = asyncio.create_task(
            a.call_tool(
                "claim_messages",
                {"channel_id": channel, "consumer": "workers", "member": "pod-a", "wait": 20},
            )
        )
        await self.waiters(A, 1)
        posted = await self.rest(
            "POST", f"/v1/channels/{channel}/messages", {"content": "task 1"}, base=B
        )
        claimed = await asyncio.wait_for(waiting, DEADLINE)
        self.assertFalse(claimed.is_error, claimed.content)
        [delivery] = claimed.structured_content["deliveries"]
        self.assertEqual(delivery["message"]["id"], posted["message"]["id"])
        self.assertEqual(delivery["attempt"], 1)
        # Held by pod-a: pod-b, on the other instance, gets nothing.
        other = await b.call_tool(
            "claim_messages", {"channel_id": channel, "consumer": "workers", "member": "pod-b"}
        )
        self.assertEqual(other.structured_content["deliveries"], [])
        # Nacked, it goes to pod-b as attempt 2; pod-b acks it; pod-a's old lease is lost.
        nacked = await a.call_tool(
            "ack_messages",
            {"channel_id": channel, "consumer": "workers",
             "delivery_ids": [delivery["delivery_id"]], "nack": True},
        )
        self.assertEqual(nacked.structured_content, {"nacked": 1, "lost": []})
        again = await b.call_tool(
            "claim_messages", {"channel_id": channel, "consumer": "workers", "member": "pod-b"}
        )
        [redelivered] = again.structured_content["deliveries"]
        self.assertEqual(redelivered["attempt"], 2)
        acked = await b.call_tool(
            "ack_messages",
            {"channel_id": channel, "consumer": "workers",
             "delivery_ids": [redelivered["delivery_id"], delivery["delivery_id"]]},
        )
        self.assertEqual(
            acked.structured_content, {"acked": 1, "lost": [delivery["delivery_id"]]}
        )
        group = await self.rest("GET", f"/v1/channels/{channel}/consumers/workers")
        self.assertEqual(group["consumer"]["acked"], 1)
        self.assertEqual(group["consumer"]["pending"], 0)

    @in_one_task
    async def test_read_only_key_cannot_post(self):
        writer = await self.connect()
        reader = await self.connect(key=READ_KEY)
        channel = await self.new_channel(writer)
        result = await reader.call_tool("post_message", {"channel_id": channel, "content": "no"})
        self.assertTrue(result.is_error)
        self.assertIn("channels:write", result.content[0].text)
        self.assertEqual(result.structured_content["error"], "insufficient_scope")

    @in_one_task
    async def test_no_key_is_401(self):
        async with httpx2.AsyncClient() as http:
            response = await http.post(
                f"{A}/v1/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Accept": "application/json, text/event-stream"},
            )
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response.headers["www-authenticate"], "Bearer")
        body = response.json()
        self.assertEqual(body["error"]["code"], -32001)
        self.assertEqual(body["error"]["data"], {"error": "unauthorized"})
        # What a user of the client sees: the server's reason, as the error's text (the client
        # wraps it in exception groups when it escapes `async with`).
        wrong = KEY[:-1] + ("0" if KEY[-1] != "0" else "1")
        cases = [
            ({}, "unauthorized: missing API key: send `Authorization: Bearer sk_live_…`"),
            (
                {"Authorization": f"Bearer {wrong}"},
                "unauthorized: unknown API key: no such key, or a wrong secret",
            ),
        ]
        for headers, shown in cases:
            for mode in ("auto", "legacy"):
                async with httpx2.AsyncClient(headers=headers, timeout=10) as http:
                    with self.assertRaises(Exception) as raised:
                        async with Client(
                            streamable_http_client(f"{A}/v1/mcp", http_client=http), mode=mode
                        ):
                            pass
                self.assertIn(shown, str(innermost(raised.exception)), (headers, mode))

    @in_one_task
    async def test_two_instances_round_robin(self):
        transport = RoundRobin([A, B])
        client = await self.connect(transport=transport)
        channel = await self.new_channel(client)
        ids = []
        for i in range(6):
            result = await client.call_tool(
                "post_message", {"channel_id": channel, "content": f"rr{i}"}
            )
            self.assertFalse(result.is_error, result.content)
            ids.append(result.structured_content["message"]["id"])
        page = await client.call_tool("read_messages", {"channel_id": channel, "after": 0})
        self.assertEqual([m["id"] for m in page.structured_content["messages"]], ids)
        self.assertTrue(all(n >= 3 for n in transport.served.values()), transport.served)


if __name__ == "__main__":
    unittest.main(verbosity=2)
