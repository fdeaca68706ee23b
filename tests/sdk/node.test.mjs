// Metered's JavaScript SDK (npm @metered-ca/realtime, pinned in package.json), unchanged, in
// Node with the `ws` package as its WebSocket, against a real channeld.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import {
  SignallingClient,
  SignallingConnectError,
  OversizedPayloadError,
} from "@metered-ca/realtime";
import { Server, freePort, next, eventually } from "./harness.mjs";

const server = new Server(await freePort());
const ORIGIN = "https://app.example.test";
let secret;
let publishable;

before(async () => {
  await server.start();
  secret = server.createKey(
    "--name", "sdk-backend",
    "--scopes", "channels:read,channels:write,publish,subscribe,presence,send,admin",
  );
  publishable = server.createKey(
    "--name", "sdk-web", "--publishable",
    "--scopes", "subscribe,presence,publish",
    "--channel-pattern", "public/*",
    "--allowed-origin", ORIGIN,
  );
});
after(() => server.stop());

const open = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((client) => client.close().catch(() => {})));
});

/** A client as an app would build one: the SDK's own options, with `url` naming channeld. */
function client({ peerId, peerMetadata, tokenProvider, apiKey }) {
  const credential = apiKey
    ? { apiKey }
    : { tokenProvider: tokenProvider ?? (() => server.mint(secret, { peerId, peerMetadata })) };
  const sdk = new SignallingClient({
    url: server.ws,
    ...credential,
    webSocketFactory: (url) => new WebSocket(url, { origin: ORIGIN }),
    reconnect: { initialDelayMs: 100, maxDelayMs: 1000 },
  });
  open.push(sdk);
  return sdk;
}

test("token provider: presence with metadata, publish, direct and unsubscribe", async () => {
  const room = "team/standup";
  const alice = client({ peerId: "alice", peerMetadata: { name: "Alice" } });
  const bob = client({ peerId: "bob", peerMetadata: { name: "Bob" } });
  const welcome = next(alice, "connected");
  await alice.connect();
  assert.equal((await welcome).peerId, "alice");
  assert.equal(alice.state, "connected");

  const aliceRoster = next(alice, "presence");
  await alice.subscribe(room, { includeSenderMetadata: true });
  assert.deepEqual(await aliceRoster, { channel: room, joined: [], left: [] });

  await bob.connect();
  const bobRoster = next(bob, "presence");
  const bobJoined = next(alice, "presence", (p) => p.joined.length > 0);
  await bob.subscribe(room);
  assert.deepEqual(await bobRoster, {
    channel: room,
    joined: [{ peerId: "alice", metadata: { name: "Alice" } }],
    left: [],
  });
  assert.deepEqual(await bobJoined, {
    channel: room,
    joined: [{ peerId: "bob", metadata: { name: "Bob" } }],
    left: [],
  });

  // Alice asked for sender metadata; Bob did not.
  const toAlice = next(alice, "message");
  await bob.publish(room, { text: "hello" });
  assert.deepEqual(await toAlice, {
    channel: room,
    from: "bob",
    data: { text: "hello" },
    fromMetadata: { name: "Bob" },
  });
  const toBob = next(bob, "message");
  await alice.publish(room, null);
  assert.deepEqual(await toBob, { channel: room, from: "alice", data: null });

  const direct = next(bob, "direct");
  await alice.send("bob", { private: true });
  assert.deepEqual(await direct, {
    from: "alice",
    data: { private: true },
    fromMetadata: { name: "Alice" },
  });
  await assert.rejects(alice.send("nobody", 1), { name: "peer_not_found" });

  const bobLeft = next(alice, "presence", (p) => p.left.length > 0);
  await bob.unsubscribe(room);
  assert.deepEqual((await bobLeft).left.map((p) => p.peerId), ["bob"]);
  const fromBackend = next(alice, "message");
  const published = await server.call(
    "POST", `/v1/channels/${encodeURIComponent(room)}/publish`, secret, { data: { n: 1 } },
  );
  assert.deepEqual(published.body, { channel: room, delivered: 1 }, "Bob no longer receives");
  assert.deepEqual(await fromBackend, { channel: room, from: "server", data: { n: 1 } });
});

test("publishable key: connects from an allowed origin and receives a REST publish", async () => {
  const lobby = "public/lobby";
  const web = client({ apiKey: publishable });
  const welcome = next(web, "connected");
  await web.connect();
  const { peerId, expiresAt } = await welcome;
  assert.match(peerId, /^[0-9a-f-]{36}$/);
  assert.equal(expiresAt, null);

  const roster = next(web, "presence");
  await web.subscribe(lobby);
  assert.deepEqual(await roster, { channel: lobby, joined: [], left: [] });
  const backend = client({ peerId: "host", peerMetadata: { role: "host" } });
  await backend.connect();
  const joined = next(web, "presence", (p) => p.joined.length > 0);
  await backend.subscribe(lobby);
  assert.deepEqual((await joined).joined, [{ peerId: "host", metadata: { role: "host" } }]);

  const received = next(web, "message");
  const published = await server.call(
    "POST", `/v1/channels/${encodeURIComponent(lobby)}/publish`, secret, { data: "welcome" },
  );
  assert.equal(published.body.delivered, 2);
  assert.deepEqual(await received, { channel: lobby, from: "server", data: "welcome" });
  await assert.rejects(web.subscribe("private/room"), { name: "channel_not_authorized" });
});

test("stored messages posted over REST arrive on the channel's id", async () => {
  const created = await server.call("POST", "/v1/channels", secret, { name: `sdk-${Date.now()}` });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.channel.id;
  const follower = client({ peerId: "dashboard" });
  await follower.connect();
  await follower.subscribe(String(id));

  const arrived = next(follower, "message");
  const posted = await server.call("POST", `/v1/channels/${id}/messages`, secret, {
    content: "deploy started",
    pod_key: "pod-7",
  });
  assert.equal(posted.status, 201);
  assert.deepEqual(await arrived, { channel: String(id), from: "pod-7", data: posted.body.message });
});

test("a data of exactly maxMessageSize is accepted; one byte more is refused by the SDK", async () => {
  const sender = client({ peerId: "big-sender" });
  const receiver = client({ peerId: "big-receiver" });
  const welcome = next(sender, "connected");
  await sender.connect();
  const { maxMessageSize } = await welcome;
  assert.equal(maxMessageSize, 65_536);
  await receiver.connect();
  await receiver.subscribe("bulk");

  // JSON of a string of n ASCII letters is n + 2 bytes, as the SDK measures it.
  const exact = "x".repeat(maxMessageSize - 2);
  const received = next(receiver, "message");
  await sender.publish("bulk", exact);
  assert.equal((await received).data.length, exact.length);
  await assert.rejects(sender.publish("bulk", `${exact}x`), OversizedPayloadError);
  assert.equal(sender.state, "connected", "the connection survives");
});

test("reconnects and re-subscribes after the server restarts", async () => {
  const room = "survives-restarts";
  const sdk = client({ peerId: "survivor" });
  await sdk.connect();
  await sdk.subscribe(room);

  const goingAway = next(sdk, "going-away");
  const dropped = next(sdk, "disconnected");
  await server.stop("SIGTERM");
  assert.ok((await goingAway).retryAfterMs > 0);
  assert.deepEqual(
    { ...(await dropped), reason: undefined },
    { code: 1001, reason: undefined, willReconnect: true },
  );

  const back = next(sdk, "connected", (event) => event.isReconnect);
  await server.start();
  await back;
  const received = next(sdk, "message");
  await eventually(async () => {
    const { body } = await server.call(
      "POST", `/v1/channels/${room}/publish`, secret, { data: "after restart" },
    );
    return body.delivered === 1;
  }, "the SDK re-subscribed after reconnecting");
  assert.equal((await received).data, "after restart");
});

test("an expired token (4002) is refreshed through the token provider", async () => {
  let minted = 0;
  const sdk = client({
    tokenProvider: () => {
      minted += 1;
      // The first token lives 3 s (2-3 s counted in whole seconds); channeld closes with 4002
      // just before it expires.
      return server.mint(secret, { peerId: "refresher", expiresInSec: minted === 1 ? 3 : 3600 });
    },
  });
  const expired = next(sdk, "disconnected");
  const refreshed = next(sdk, "connected", (event) => event.isReconnect);
  await sdk.connect();
  const { code, willReconnect } = await expired;
  assert.deepEqual({ code, willReconnect }, { code: 4002, willReconnect: true });
  await refreshed;
  assert.equal(minted, 2);
  assert.equal(sdk.state, "connected");
});

test("a bad token closes with 4001 and the SDK stops reconnecting", async () => {
  let asked = 0;
  const sdk = client({
    tokenProvider: async () => {
      asked += 1;
      return "not-a-token";
    },
  });
  await assert.rejects(sdk.connect(), (error) => {
    assert.ok(error instanceof SignallingConnectError, String(error));
    assert.equal(error.closeCode, 4001);
    return true;
  });
  assert.equal(sdk.state, "closed");
  assert.equal(asked, 1, "no second attempt");
});

test("a kick (4020) disconnects for good", async () => {
  const sdk = client({ peerId: "to-be-kicked" });
  await sdk.connect();
  const dropped = next(sdk, "disconnected");
  const kicked = await server.call("DELETE", "/v1/peers/to-be-kicked", secret);
  assert.deepEqual(kicked.body, { peerId: "to-be-kicked", closed: 1 });
  const { code, willReconnect } = await dropped;
  assert.deepEqual({ code, willReconnect }, { code: 4020, willReconnect: false });
  assert.equal(sdk.state, "closed");
});

test("close() completes the closing handshake", async () => {
  const sdk = client({ peerId: "leaves-politely" });
  await sdk.connect();
  const dropped = next(sdk, "disconnected");
  await sdk.close();
  const { code, willReconnect } = await dropped;
  assert.deepEqual({ code, willReconnect }, { code: 1000, willReconnect: false });
});
