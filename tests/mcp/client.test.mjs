// The official TypeScript MCP client (@modelcontextprotocol/sdk, pinned in package.json) against
// two real channeld instances on one database, started by scripts/mcp-test.sh. This client
// speaks protocol revision 2025-11-25 (with the initialize handshake); tests/mcp/test_client.py
// covers the current one.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const A = process.env.CHANNELD_A; // http://127.0.0.1:port
const B = process.env.CHANNELD_B;
const KEY = process.env.CHANNELD_KEY; // channels:read + channels:write
const READ_KEY = process.env.CHANNELD_READ_KEY; // channels:read only
const DEADLINE_MS = 15_000;

/** A connected client. `fetch` may route each request itself (round-robin). */
async function connect({ base = A, key = KEY, fetch } = {}) {
  const transport = new StreamableHTTPClientTransport(new URL(`${base}/v1/mcp`), {
    requestInit: { headers: { Authorization: `Bearer ${key}` } },
    fetch,
  });
  const client = new Client({ name: "channeld-test", version: "1.0.0" });
  await client.connect(transport);
  return client;
}

async function rest(method, path, body, base = A) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

async function newChannel(client) {
  const result = await client.callTool({
    name: "create_channel",
    arguments: { name: `node-${randomUUID()}` },
  });
  assert.equal(result.isError, false, JSON.stringify(result.content));
  return result.structuredContent.channel.id;
}

/** Resolves once `base` reports at least `count` waiters (polled, with a deadline). */
async function waiters(base, count) {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const text = await (await fetch(`${base}/metrics`)).text();
    const match = text.match(/^channeld_message_waiters (\d+)$/m);
    if (match && Number(match[1]) >= count) return;
    assert.ok(Date.now() < deadline, `never saw ${count} waiter(s) on ${base}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test("tools/list names every tool with its schema and annotations", async () => {
  const client = await connect();
  try {
    assert.equal(client.getServerVersion().name, "channeld");
    const { tools } = await client.listTools();
    const byName = Object.fromEntries(tools.map((tool) => [tool.name, tool]));
    assert.deepEqual(Object.keys(byName).sort(), [
      "ack_messages",
      "claim_messages",
      "create_channel",
      "get_channel",
      "list_channels",
      "mark_read",
      "post_message",
      "read_messages",
      "update_channel_document",
      "wait_for_messages",
    ]);
    for (const name of ["list_channels", "get_channel", "read_messages", "wait_for_messages"]) {
      assert.equal(byName[name].annotations.readOnlyHint, true, name);
    }
    assert.equal(byName.post_message.annotations.readOnlyHint, false);
    assert.equal(byName.update_channel_document.annotations.idempotentHint, true);
    const wait = byName.wait_for_messages.inputSchema;
    assert.deepEqual(wait.required.sort(), ["after", "channel_id"]);
    assert.equal(wait.properties.wait_seconds.maximum, 25);
    assert.match(byName.post_message.description, /same key/);
  } finally {
    await client.close();
  }
});

test("post_message twice with one idempotency key stores one message", async () => {
  const client = await connect();
  try {
    const channel = await newChannel(client);
    const post = () =>
      client.callTool({
        name: "post_message",
        arguments: {
          channel_id: channel,
          content: "deploy finished",
          pod_key: "pod-node",
          idempotency_key: "node-retry-1",
        },
      });
    const first = await post();
    const second = await post();
    assert.equal(first.isError, false);
    assert.equal(first.structuredContent.replayed, false);
    assert.equal(second.structuredContent.replayed, true);
    assert.equal(second.structuredContent.message.id, first.structuredContent.message.id);
    const read = await client.callTool({ name: "read_messages", arguments: { channel_id: channel } });
    assert.equal(read.structuredContent.messages.length, 1);
    const [message] = read.structuredContent.messages;
    assert.equal(message.content, "deploy finished");
    assert.equal(message.sender_type, "agent");
    assert.equal(message.pod_key, "pod-node");
  } finally {
    await client.close();
  }
});

test("read_messages pages forward and backward with no gap or duplicate", async () => {
  const client = await connect();
  try {
    const channel = await newChannel(client);
    const posted = [];
    for (let i = 0; i < 23; i += 1) {
      const { message } = await rest("POST", `/v1/channels/${channel}/messages`, { content: `m${i}` });
      posted.push(message.id);
    }
    const forward = [];
    let after = 0;
    for (let pages = 0; ; pages += 1) {
      assert.ok(pages < 10, "paging forward never ended");
      const { structuredContent: page } = await client.callTool({
        name: "read_messages",
        arguments: { channel_id: channel, after, limit: 5 },
      });
      forward.push(...page.messages.map((m) => m.id));
      after = page.next_after;
      if (!page.has_more) break;
    }
    assert.deepEqual(forward, posted);

    const backward = [];
    let page = (await client.callTool({
      name: "read_messages",
      arguments: { channel_id: channel, limit: 7 },
    })).structuredContent;
    for (let pages = 0; ; pages += 1) {
      assert.ok(pages < 10, "paging backward never ended");
      backward.unshift(...page.messages.map((m) => m.id));
      if (page.next_before === null) break;
      page = (await client.callTool({
        name: "read_messages",
        arguments: { channel_id: channel, before: page.next_before, limit: 7 },
      })).structuredContent;
    }
    assert.deepEqual(backward, posted);
    assert.equal(page.messages[0].content, "m0");
  } finally {
    await client.close();
  }
});

test("wait_for_messages is woken by a REST post within a second", async () => {
  const client = await connect();
  try {
    const channel = await newChannel(client);
    const { structuredContent: start } = await client.callTool({
      name: "read_messages",
      arguments: { channel_id: channel },
    });
    assert.equal(start.next_after, 0);
    const waiting = client.callTool(
      { name: "wait_for_messages", arguments: { channel_id: channel, after: start.next_after, wait_seconds: 20 } },
      undefined,
      { timeout: 60_000 },
    );
    await waiters(A, 1);
    const { message } = await rest("POST", `/v1/channels/${channel}/messages`, {
      content: "wake up",
      pod_key: "pod-rest",
    });
    const posted = performance.now();
    const { structuredContent: woken } = await waiting;
    const elapsed = performance.now() - posted;
    assert.ok(elapsed < 1000, `woken ${elapsed.toFixed(0)} ms after the post`);
    assert.equal(woken.timed_out, false);
    assert.deepEqual(woken.messages.map((m) => m.id), [message.id]);
    assert.equal(woken.next_after, message.id);

    const quiet = await client.callTool({
      name: "wait_for_messages",
      arguments: { channel_id: channel, after: woken.next_after, wait_seconds: 1 },
    });
    assert.equal(quiet.structuredContent.timed_out, true);
    assert.deepEqual(quiet.structuredContent.messages, []);
    assert.equal(quiet.structuredContent.next_after, message.id);
  } finally {
    await client.close();
  }
});

test("claim_messages and ack_messages split a consumer group's work between two instances", async () => {
  const a = await connect({ base: A });
  const b = await connect({ base: B });
  try {
    const channel = await newChannel(a);
    await rest("POST", `/v1/channels/${channel}/consumers`, { name: "workers", start: "earliest" });
    const ids = [];
    for (const content of ["one", "two", "three"]) {
      ids.push((await rest("POST", `/v1/channels/${channel}/messages`, { content })).message.id);
    }
    const claim = (client, member) =>
      client.callTool({
        name: "claim_messages",
        arguments: { channel_id: channel, consumer: "workers", member, max: 2 },
      });
    const first = (await claim(a, "pod-a")).structuredContent.deliveries;
    const second = (await claim(b, "pod-b")).structuredContent.deliveries;
    assert.deepEqual(first.map((d) => d.message.id), ids.slice(0, 2));
    assert.deepEqual(second.map((d) => d.message.id), ids.slice(2));
    for (const [client, deliveries] of [[a, first], [b, second]]) {
      const acked = await client.callTool({
        name: "ack_messages",
        arguments: {
          channel_id: channel,
          consumer: "workers",
          delivery_ids: deliveries.map((d) => d.delivery_id),
        },
      });
      assert.equal(acked.isError, false, JSON.stringify(acked.content));
      assert.deepEqual(acked.structuredContent, { acked: deliveries.length, lost: [] });
    }
    const none = await claim(a, "pod-a");
    assert.deepEqual(none.structuredContent.deliveries, []);
    const unknown = await a.callTool({
      name: "claim_messages",
      arguments: { channel_id: channel, consumer: "nobody", member: "pod-a" },
    });
    assert.equal(unknown.isError, true);
    assert.equal(unknown.structuredContent.error, "not_found");
  } finally {
    await a.close();
    await b.close();
  }
});

test("a key without channels:write gets a tool error naming the scope", async () => {
  const writer = await connect();
  const reader = await connect({ key: READ_KEY });
  try {
    const channel = await newChannel(writer);
    const result = await reader.callTool({
      name: "post_message",
      arguments: { channel_id: channel, content: "not allowed" },
    });
    assert.equal(result.isError, true);
    assert.match(result.content[0].text, /channels:write/);
    assert.equal(result.structuredContent.error, "insufficient_scope");
    assert.deepEqual(result.structuredContent.required_scopes, ["channels:write"]);
    // Reading is allowed, and nothing was stored.
    const read = await reader.callTool({ name: "read_messages", arguments: { channel_id: channel } });
    assert.equal(read.isError, false);
    assert.deepEqual(read.structuredContent.messages, []);
  } finally {
    await writer.close();
    await reader.close();
  }
});

test("no key or a wrong key is HTTP 401, and the client shows the server's reason", async () => {
  const wrong = KEY.slice(0, -1) + (KEY.endsWith("0") ? "1" : "0");
  const cases = [
    [{}, "unauthorized: missing API key: send `Authorization: Bearer sk_live_…`"],
    [{ Authorization: `Bearer ${wrong}` }, "unauthorized: unknown API key: no such key, or a wrong secret"],
  ];
  for (const [headers, shown] of cases) {
    const transport = new StreamableHTTPClientTransport(new URL(`${A}/v1/mcp`), {
      requestInit: { headers },
    });
    const client = new Client({ name: "channeld-test", version: "1.0.0" });
    // The SDK's error: "Streamable HTTP error: Error POSTing to endpoint: <the body>", code 401.
    await assert.rejects(client.connect(transport), (error) => {
      assert.equal(error.code, 401);
      assert.ok(error.message.includes(shown), error.message);
      return true;
    });
  }
  const response = await fetch(`${A}/v1/mcp`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
  });
  assert.equal(response.status, 401);
  assert.equal(response.headers.get("www-authenticate"), "Bearer");
  const body = await response.json();
  assert.equal(body.error.code, -32001);
  assert.deepEqual(body.error.data, { error: "unauthorized" });
});

test("two instances behind a round-robin client both answer, with no session affinity", async () => {
  const served = { [A]: 0, [B]: 0 };
  let next = 0;
  const roundRobin = (url, init) => {
    const base = [A, B][next++ % 2];
    served[base] += 1;
    const target = new URL(url);
    const routed = new URL(`${base}${target.pathname}${target.search}`);
    return fetch(routed, init);
  };
  const client = await connect({ fetch: roundRobin });
  try {
    const channel = await newChannel(client);
    const ids = [];
    for (let i = 0; i < 6; i += 1) {
      const result = await client.callTool({
        name: "post_message",
        arguments: { channel_id: channel, content: `rr${i}`, idempotency_key: `rr-${i}` },
      });
      assert.equal(result.isError, false, JSON.stringify(result.content));
      ids.push(result.structuredContent.message.id);
    }
    const read = await client.callTool({
      name: "read_messages",
      arguments: { channel_id: channel, after: 0 },
    });
    assert.deepEqual(read.structuredContent.messages.map((m) => m.id), ids);
    assert.ok(served[A] >= 4 && served[B] >= 4, `requests per instance: ${JSON.stringify(served)}`);
  } finally {
    await client.close();
  }
});
