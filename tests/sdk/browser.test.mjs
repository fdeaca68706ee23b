// Metered's JavaScript SDK in headless Chromium (Debian's `chromium`, driven by playwright-core;
// no browser download): a page that loads the SDK's own browser bundle connects to channeld with a
// publishable key, subscribes, sees presence and receives a REST publish. The screenshot is kept
// in target/test-artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { once } from "node:events";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { SignallingClient } from "@metered-ca/realtime";
import { Server, freePort, next, root, DEADLINE_MS } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = `${root}target/test-artifacts`;
const bundle = readFileSync(
  createRequire(import.meta.url).resolve("@metered-ca/realtime").replace(/index\.cjs$/, "index.umd.js"),
);

// The app's page: the SDK's UMD bundle exposes `MeteredPeer`; the page shows what it receives.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>channeld + Metered SDK</title>
<script src="/realtime.js"></script>
<style>body{font:14px system-ui;margin:2em} pre{background:#f4f4f4;padding:1em}</style>
</head><body>
<h1>Metered SDK on channeld</h1>
<p>State: <b id="state">idle</b></p>
<pre id="log"></pre>
<script>
  const params = new URLSearchParams(location.search);
  window.events = [];
  const record = (kind, payload) => {
    window.events.push({ kind, payload });
    document.getElementById("log").textContent += kind + " " + JSON.stringify(payload) + "\\n";
  };
  const client = new MeteredPeer.SignallingClient({ url: params.get("url"), apiKey: params.get("key") });
  client.on("state-change", ({ to }) => { document.getElementById("state").textContent = to; });
  for (const kind of ["connected", "presence", "message", "disconnected", "server-error"]) {
    client.on(kind, (payload) => record(kind, payload));
  }
  client.connect()
    .then(() => client.subscribe("public/lobby"))
    .then(() => record("subscribed", "public/lobby"))
    .catch((error) => record("failed", { name: error.name, closeCode: error.closeCode }));
</script></body></html>`;

const server = new Server(await freePort());
let page;
let browser;
let http;
let origin;
let secret;
let publishable;

before(async () => {
  http = createServer((request, response) => {
    if (request.url === "/realtime.js") {
      response.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
    } else {
      response.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
    }
  }).listen(0, "127.0.0.1");
  await once(http, "listening");
  origin = `http://127.0.0.1:${http.address().port}`;
  await server.start();
  secret = server.createKey("--name", "sdk-browser-backend", "--scopes", "publish,subscribe,presence");
  publishable = server.createKey(
    "--name", "sdk-browser", "--publishable",
    "--scopes", "subscribe,presence",
    "--channel-pattern", "public/*",
    "--allowed-origin", origin,
  );
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  page = await browser.newPage();
});

after(async () => {
  await browser?.close();
  http?.close();
  await server.stop();
});

/** Waits until the page has recorded an event of `kind` matching `accept` (page-side source). */
function pageEvent(kind, accept = "true") {
  return page.waitForFunction(
    ([kind, accept]) =>
      window.events.find((event) => event.kind === kind && new Function("p", `return ${accept}`)(event.payload))
        ?.payload,
    [kind, accept],
    { timeout: DEADLINE_MS },
  ).then((handle) => handle.jsonValue());
}

test("a browser page using the SDK connects, sees presence and receives a REST publish", async () => {
  const url = `${origin}/?url=${encodeURIComponent(server.ws)}&key=${encodeURIComponent(publishable)}`;
  await page.goto(url);
  const connected = await pageEvent("connected");
  assert.equal(connected.expiresAt, null);
  await pageEvent("subscribed");
  assert.deepEqual(await pageEvent("presence"), { channel: "public/lobby", joined: [], left: [] });

  // A backend peer joins from Node: the page sees it arrive with its metadata.
  const host = new SignallingClient({
    url: server.ws,
    tokenProvider: () => server.mint(secret, { peerId: "host", peerMetadata: { name: "Host" } }),
    webSocketFactory: (address) => new WebSocket(address),
  });
  await host.connect();
  const hostRoster = next(host, "presence");
  await host.subscribe("public/lobby");
  assert.deepEqual((await hostRoster).joined, [{ peerId: connected.peerId }]);
  assert.deepEqual(
    await pageEvent("presence", "p.joined.length > 0"),
    { channel: "public/lobby", joined: [{ peerId: "host", metadata: { name: "Host" } }], left: [] },
  );

  const published = await server.call(
    "POST", "/v1/channels/public%2Flobby/publish", secret, { data: { text: "hello, browser" } },
  );
  assert.equal(published.body.delivered, 2);
  assert.deepEqual(await pageEvent("message"), {
    channel: "public/lobby",
    from: "server",
    data: { text: "hello, browser" },
  });
  assert.equal(await page.textContent("#state"), "connected");
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/sdk-chromium.png`, fullPage: true });
  await host.close();
});

test("a key for another origin reaches the browser as close code 4001, and the SDK stops", async () => {
  const elsewhere = server.createKey(
    "--name", "sdk-browser-elsewhere", "--publishable",
    "--scopes", "subscribe",
    "--allowed-origin", "https://another-app.example",
  );
  // A browser never sees the HTTP status of a refused upgrade: the close code is all it gets.
  await page.goto(`${origin}/?url=${encodeURIComponent(server.ws)}&key=${encodeURIComponent(elsewhere)}`);
  assert.deepEqual(await pageEvent("failed"), { name: "SignallingConnectError", closeCode: 4001 });
  await page.waitForFunction(() => document.getElementById("state").textContent === "closed", null, {
    timeout: DEADLINE_MS,
  });
});
