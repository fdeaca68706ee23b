// The built-in console (/console) in headless Chromium (Debian's `chromium`, driven by
// playwright-core): a key entered by hand, the channel list filtered and searched, a channel
// opened, a message posted through the API appearing live, presence of the channel's live
// stream, and a phone-sized screen; a channel's description and document, its message count
// following live messages (in its header and its row in the list), an archived channel saying so
// with no live indicator, and the key kept for the tab (shown by its id) until forgotten; the
// mentions and replies of messages, and a channel filtered to the messages that mention one name;
// a channel's consumer groups with their counts, members and dead letters; the app's webhooks
// with their recent failures, for a key with `admin`.
// Assertions read what a user sees; every wait is on an element or a condition, with a deadline.
// Screenshots are kept in target/test-artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { Server, freePort, root, DEADLINE_MS } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = `${root}target/test-artifacts`;

// Webhooks may reach loopback over plain HTTP here: the failing receiver is a closed local port.
const server = new Server(await freePort(), [
  "--webhook-allow-private-networks",
  "--webhook-allow-http",
]);
let browser;
let key;
const channels = {};

before(async () => {
  await server.start();
  key = server.createKey(
    "--name", "console",
    "--scopes", "channels:read,channels:write,subscribe,presence",
  );
  for (const name of ["Deploy AM-1 rollout", "Rollback AM-2", "Quiet one"]) {
    const { status, body } = await server.call("POST", "/v1/channels", key, {
      name, ticket_slug: name.split(" ")[1],
    });
    assert.equal(status, 201, JSON.stringify(body));
    channels[name] = body.channel.id;
  }
  const deploy = channels["Deploy AM-1 rollout"];
  for (const content of ["Canary is green", "Rolling out to everyone"]) {
    await server.call("POST", `/v1/channels/${deploy}/messages`, key, { content, pod_key: "pod-7" });
  }
  const archived = await server.call("POST", "/v1/channels", key, { name: "Old rollout" });
  await server.call("PUT", `/v1/channels/${archived.body.channel.id}`, key, { archived: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
});

after(async () => {
  await browser?.close();
  await server.stop();
});

const listed = (page) =>
  page.$$eval("#channels .name", (names) => names.map((name) => name.textContent));

/**
 * Waits until the element at `selector` is visible and its rendered text matches `pattern`, and
 * returns that text.
 */
async function shows(page, selector, pattern) {
  try {
    await page.waitForFunction(
      ([selector, source, flags]) => {
        const node = document.querySelector(selector);
        return Boolean(node?.checkVisibility() && new RegExp(source, flags).test(node.innerText));
      },
      [selector, pattern.source, pattern.flags],
      { timeout: DEADLINE_MS },
    );
  } catch (error) {
    const text = await page.$eval(selector, (node) => node.innerText).catch(() => "(absent)");
    throw new Error(`${selector} never showed ${pattern} (it shows ${JSON.stringify(text)}): ${error.message}`);
  }
  return page.innerText(selector);
}

/** The key's id as the console shows it: `sk_id_` and the id part of `sk_live_<id>_<secret>`. */
const keyIdOf = (key) => `sk_id_${key.split("_")[2]}`;

const storage = (page) =>
  page.evaluate(() => ({
    session: Object.fromEntries(Object.entries(sessionStorage)),
    local: Object.fromEntries(Object.entries(localStorage)),
  }));

async function useKey(page, withKey = key) {
  await page.goto(`${server.http}/console`);
  await page.getByLabel("API key").fill(withKey);
  await page.getByRole("button", { name: "Use key" }).click();
  await page.waitForSelector("#channels .name", { timeout: DEADLINE_MS });
}

const rowOf = (page, name) => page.locator("#channels li", { hasText: name });

test("the console lists, filters and searches channels, and follows one live", async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  await page.goto(`${server.http}/console`);

  // Every control has a label, and the key is asked for first.
  const unlabeled = await page.$$eval("input, select", (controls) =>
    controls.filter((control) => control.labels.length === 0).map((control) => control.id),
  );
  assert.deepEqual(unlabeled, []);
  assert.equal(await page.isVisible("#list-view"), false);

  await page.getByLabel("API key").fill(key);
  await page.keyboard.press("Enter");
  await page.waitForSelector("#channels .name");
  assert.deepEqual((await listed(page)).sort(), ["Deploy AM-1 rollout", "Quiet one", "Rollback AM-2"]);
  const stored = await page.evaluate(() => [sessionStorage.getItem("channeld.key"), localStorage.length]);
  assert.deepEqual(stored, [key, 0], "the key stays in this tab's session storage only");
  assert.match(await page.textContent("#channels"), /2 messages.*pod-7: Rolling out to everyone/s);

  await page.getByLabel("Status").selectOption("archived");
  await page.waitForFunction(() => document.querySelector("#total").textContent === "(1)");
  assert.deepEqual(await listed(page), ["Old rollout"]);
  await page.getByLabel("Status").selectOption("active");
  await page.getByLabel("Sort by").selectOption("name");
  await page.waitForFunction(() => document.querySelector("#channels .name")?.textContent === "Deploy AM-1 rollout"
    && document.querySelector("#total").textContent === "(3)");
  assert.deepEqual(await listed(page), ["Deploy AM-1 rollout", "Quiet one", "Rollback AM-2"]);

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/console-list.png`, fullPage: true });

  await page.getByLabel("Name contains").fill("am-");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForFunction(() => document.querySelector("#total").textContent === "(2)");
  assert.deepEqual(await listed(page), ["Deploy AM-1 rollout", "Rollback AM-2"]);

  // Opened from the keyboard.
  await page.getByRole("button", { name: /Deploy AM-1 rollout/ }).focus();
  await page.keyboard.press("Enter");
  await page.waitForSelector("#channel-view:not([hidden])");
  assert.equal(await page.textContent("#channel-name"), "Deploy AM-1 rollout");
  await page.waitForFunction(() => document.querySelector("#live").textContent.startsWith("Live"));
  const history = await page.$$eval("#messages li", (items) => items.map((item) => item.lastChild.textContent));
  assert.deepEqual(history, ["Canary is green", "Rolling out to everyone"]);

  // A message posted through the API appears within a second.
  const deploy = channels["Deploy AM-1 rollout"];
  const posted = Date.now();
  const { status } = await server.call("POST", `/v1/channels/${deploy}/messages`, key, {
    content: "Everyone is on the new version",
  });
  assert.equal(status, 201);
  await page.waitForFunction(
    () => document.querySelector("#messages li:last-child")?.textContent.includes("Everyone is on the new version"),
    null,
    { timeout: 1000 },
  );
  console.log(`# a posted message appeared in the console after ${Date.now() - posted} ms`);

  // Someone joins the channel's live stream: the console shows them.
  const token = await server.mint(key, { peerId: "u_alice", peerMetadata: { name: "Alice" } });
  const socket = new WebSocket(`${server.ws}/v1?token=${token}`);
  await new Promise((resolve, reject) => {
    socket.once("open", resolve);
    socket.once("error", reject);
  });
  socket.send(JSON.stringify({ type: "subscribe", channel: String(deploy), requestId: "s" }));
  await page.waitForFunction(
    () => document.querySelector("#presence").textContent.includes("Alice"),
    null,
    { timeout: DEADLINE_MS },
  );

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/console.png`, fullPage: true });
  socket.close();

  await page.getByRole("button", { name: "← All channels" }).click();
  await page.waitForSelector("#list-view:not([hidden])");

  // Switching channels before the first one finished opening: only the second is followed.
  const rollback = channels["Rollback AM-2"];
  await page.evaluate(([first, second]) => {
    location.hash = `#/channels/${first}`;
    setTimeout(() => { location.hash = `#/channels/${second}`; }, 0);
  }, [deploy, rollback]);
  await page.waitForFunction(
    () => document.querySelector("#channel-name").textContent === "Rollback AM-2"
      && document.querySelector("#live").textContent.startsWith("Live"),
  );
  await server.call("POST", `/v1/channels/${deploy}/messages`, key, { content: "meant for the deploy channel" });
  await server.call("POST", `/v1/channels/${rollback}/messages`, key, { content: "meant for the rollback channel" });
  await page.waitForFunction(
    () => document.querySelector("#messages").textContent.includes("meant for the rollback channel"),
  );
  assert.equal(await page.textContent("#channel-name"), "Rollback AM-2");
  assert.doesNotMatch(await page.textContent("#messages"), /meant for the deploy channel/);
  await context.close();
});

test("the console fits a phone's screen and says why a key is refused", async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const page = await context.newPage();
  await page.goto(`${server.http}/console`);
  await page.getByLabel("API key").fill("sk_live_not_a_key");
  await page.getByRole("button", { name: "Use key" }).click();
  await page.waitForSelector("#error:not([hidden])");
  assert.match(await page.textContent("#error"), /malformed API key/);

  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Use key" }).click();
  await page.waitForSelector("#channels .name");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow} px on a phone`);
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/console-phone.png`, fullPage: true });
  await context.close();
});

test("a channel shows its description and document, and its count follows live messages", async () => {
  const document = [
    "Steps:",
    "1. <b>drain</b> the pool",
    "   then wait for the canary",
    "",
    "<script>document.title = 'injected'</script>",
    `https://example.com/${"x".repeat(300)}`,
  ].join("\n");
  const created = await server.call("POST", "/v1/channels", key, {
    name: "Runbook AM-3",
    ticket_slug: "AM-3",
    description: "How to roll out <i>AM-3</i>, step by step",
    document,
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.channel.id;
  await server.call("POST", `/v1/channels/${id}/messages`, key, { content: "Step one done", pod_key: "pod-3" });

  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  await useKey(page);
  assert.match(await rowOf(page, "Runbook AM-3").innerText(), /1 message\b.*pod-3: Step one done/s);

  await rowOf(page, "Runbook AM-3").getByRole("button").click();
  await shows(page, "#channel-name", /^Runbook AM-3$/);
  await shows(page, "#live", /^Live/);
  assert.match(await shows(page, "#channel-meta", /1 message\b/), /^AM-3 · 1 message · created /);

  // Both as plain text: the markup in them is shown, never interpreted.
  assert.equal(
    await shows(page, "#channel-description", /step by step/),
    "How to roll out <i>AM-3</i>, step by step",
  );
  assert.equal(await shows(page, "#channel-document summary", /Document/), "Document");
  assert.equal(await shows(page, "#document", /drain/), document);
  assert.equal(await page.$$eval("#channel-view i, #channel-view b, #channel-view script", (nodes) => nodes.length), 0);
  assert.equal(await page.title(), "channeld console");
  // The long line wraps instead of widening the page.
  const overflow = await page.$eval("#document", (pre) => pre.scrollWidth - pre.clientWidth);
  assert.ok(overflow <= 0, `the document scrolls sideways by ${overflow} px`);

  // Messages posted through the API: the header counts each as it arrives.
  for (const [content, count] of [["Step two done", "2 messages"], ["All steps done", "3 messages"]]) {
    const { status } = await server.call("POST", `/v1/channels/${id}/messages`, key, { content });
    assert.equal(status, 201);
    await shows(page, "#messages li:last-child", new RegExp(content));
    await shows(page, "#channel-meta", new RegExp(`\\b${count}\\b`));
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/console-document.png`, fullPage: true });

  // Back in the list, the channel's row says so too, from the moment the list is shown.
  await page.getByRole("button", { name: "← All channels" }).click();
  await page.waitForSelector("#list-view:not([hidden])", { timeout: DEADLINE_MS });
  assert.match(await rowOf(page, "Runbook AM-3").innerText(), /3 messages.*api: All steps done/s);
  await page.waitForFunction(
    (id) => document.querySelectorAll(`#channels li[data-channel="${id}"]`).length === 1,
    id,
    { timeout: DEADLINE_MS },
  );
  assert.match(await rowOf(page, "Runbook AM-3").innerText(), /3 messages.*api: All steps done/s);
  await context.close();
});

test("mentions and replies show, and a channel can be filtered to one name, live too", async () => {
  const created = await server.call("POST", "/v1/channels", key, { name: "Handoffs AM-5" });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.channel.id;
  const say = async (body) => {
    const { status, body: answer } = await server.call("POST", `/v1/channels/${id}/messages`, key, body);
    assert.equal(status, 201, JSON.stringify(answer));
    return answer.message.id;
  };
  const root = await say({ content: "Who takes the canary?" });
  await say({ content: "pod-7, yours", mentions: ["pod-7", "pod-9"], reply_to: root });
  await say({ content: "pod-3 watches the logs", mentions: ["pod-3"] });

  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  await useKey(page);
  await rowOf(page, "Handoffs AM-5").getByRole("button").click();
  await shows(page, "#live", /^Live/);
  const reply = await shows(page, "#messages li:nth-child(2)", /pod-7, yours/);
  assert.match(reply, new RegExp(`reply to #${root}`));
  assert.match(reply, /@pod-7 @pod-9/);

  // Only what mentions pod-7: the history, then live messages that mention it, and no other.
  await page.fill("#mentions", "pod-7");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForFunction(
    () => document.querySelectorAll("#messages li").length === 1,
    undefined,
    { timeout: DEADLINE_MS },
  );
  await shows(page, "#live", /^Live/);
  await say({ content: "not for pod-7", mentions: ["pod-3"] });
  await say({ content: "pod-7: ship it", mentions: ["pod-7"] });
  await shows(page, "#messages li:last-child", /pod-7: ship it/);
  const shown = await page.$$eval("#messages li", (items) => items.map((item) => item.textContent));
  assert.equal(shown.length, 2, shown.join(" | "));
  assert.ok(shown.every((text) => text.includes("@pod-7")), shown.join(" | "));
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/console-mentions.png`, fullPage: true });
  await context.close();
});

test("an archived channel says so, with no live indicator and no live stream", async () => {
  const created = await server.call("POST", "/v1/channels", key, {
    name: "Retired AM-4",
    description: "Kept for the record",
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.channel.id;
  await server.call("POST", `/v1/channels/${id}/messages`, key, { content: "Final word" });
  const archived = await server.call("PUT", `/v1/channels/${id}`, key, { archived: true });
  assert.equal(archived.body.channel.archived, true);

  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  const streams = [];
  page.on("request", (request) => {
    if (new URL(request.url()).pathname.endsWith("/events")) streams.push(request.url());
  });
  await useKey(page);
  await page.evaluate((id) => { location.hash = `#/channels/${id}`; }, id);

  await shows(page, "#channel-name", /^Retired AM-4$/);
  const status = await shows(page, "#live", /^Archived/);
  assert.match(status, /^Archived \(last changed .+\): it takes no new messages\.$/);
  await shows(page, "#channel-description", /^Kept for the record$/);
  await shows(page, "#channel-meta", /^1 message · created /);
  await shows(page, "#messages li", /Final word/);
  assert.doesNotMatch(await page.innerText("#channel-view"), /\bLive\b/);
  assert.equal(await page.isVisible("#presence"), false);
  assert.equal(await page.isVisible("#channel-document"), false, "no document, no document section");
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/console-archived.png`, fullPage: true });

  // Leaving the channel and listing again takes a round trip: a stream opened for the archived
  // channel would have been requested by then.
  await page.getByRole("button", { name: "← All channels" }).click();
  await page.waitForSelector("#list-view:not([hidden])", { timeout: DEADLINE_MS });
  await page.getByLabel("Status").selectOption("archived");
  await page.waitForFunction(
    () => [...document.querySelectorAll("#channels .name")].some((name) => name.textContent === "Retired AM-4"),
    null,
    { timeout: DEADLINE_MS },
  );
  assert.match(await rowOf(page, "Retired AM-4").innerText(), /1 message · archived/);
  assert.deepEqual(streams, []);
  await context.close();
});

test("the key stays for the tab, shown by its id, until forgotten", async () => {
  const keyId = keyIdOf(key);
  const secret = key.split("_")[3];
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  await page.goto(`${server.http}/console`);
  assert.equal(await page.isVisible("#key-in-use"), false);
  await useKey(page);

  // Which key is in use, by its id; never its secret.
  await shows(page, "#key-in-use", new RegExp(`^Key in use: ${keyId}\\b`));
  assert.equal(await page.isVisible("#key"), false);
  assert.ok(!(await page.innerText("body")).includes(secret), "the page shows the key's secret");
  assert.deepEqual(await storage(page), { session: { "channeld.key": key }, local: {} });

  // A reload in the same tab keeps using it, on the channel that was open.
  await rowOf(page, "Deploy AM-1 rollout").getByRole("button").click();
  await shows(page, "#live", /^Live/);
  await page.reload();
  await shows(page, "#key-in-use", new RegExp(`^Key in use: ${keyId}\\b`));
  await shows(page, "#channel-name", /^Deploy AM-1 rollout$/);
  await shows(page, "#live", /^Live/);
  assert.equal(await page.isVisible("#key"), false);
  assert.deepEqual(await storage(page), { session: { "channeld.key": key }, local: {} });

  // Another tab does not have it.
  const other = await context.newPage();
  await other.goto(`${server.http}/console`);
  await shows(other, "#key-form", /API key/);
  assert.equal(await other.isVisible("#key-in-use"), false);
  assert.equal(await other.isVisible("#list-view"), false);
  assert.deepEqual(await storage(other), { session: {}, local: {} });
  await other.close();

  // Forgetting it: back to the key prompt, nothing read with it left on the page or in storage.
  await page.getByRole("button", { name: "Forget key" }).click();
  await shows(page, "#key-form", /API key/);
  assert.equal(await page.isVisible("#key-in-use"), false);
  assert.equal(await page.isVisible("#channel-view"), false);
  assert.equal(await page.isVisible("#list-view"), false);
  assert.equal(await page.$$eval("#channels li, #messages li", (items) => items.length), 0);
  assert.equal(await page.evaluate(() => document.activeElement.id), "key");
  assert.deepEqual(await storage(page), { session: {}, local: {} });
  assert.equal(await page.evaluate(() => location.hash), "");

  // And it stays forgotten across a reload.
  await page.reload();
  await shows(page, "#key-form", /API key/);
  assert.equal(await page.isVisible("#key-in-use"), false);
  assert.equal(await page.isVisible("#list-view"), false);
  assert.deepEqual(await storage(page), { session: {}, local: {} });
  await context.close();
});

test("a channel's consumer groups show their work, their members and their dead letters", async () => {
  const created = await server.call("POST", "/v1/channels", key, { name: "Build queue AM-6" });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.channel.id;
  const group = await server.call("POST", `/v1/channels/${id}/consumers`, key, {
    name: "builders", max_deliveries: 1,
  });
  assert.equal(group.status, 201, JSON.stringify(group.body));
  for (const content of ["build web", "build api", "build docs"]) {
    await server.call("POST", `/v1/channels/${id}/messages`, key, { content });
  }
  const claim = await server.call("POST", `/v1/channels/${id}/consumers/builders/claim`, key, {
    member: "pod-4", max: 2,
  });
  assert.equal(claim.status, 200, JSON.stringify(claim.body));
  const [first, second] = claim.body.deliveries;
  // The first build fails on its only allowed attempt: a dead letter. The second is acked.
  await server.call("POST", `/v1/channels/${id}/consumers/builders/nack`, key, {
    delivery_ids: [first.delivery_id],
  });
  await server.call("POST", `/v1/channels/${id}/consumers/builders/ack`, key, {
    delivery_ids: [second.delivery_id],
  });

  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  await useKey(page);
  await rowOf(page, "Build queue AM-6").getByRole("button").click();
  const row = await shows(page, '#consumer-list li[data-consumer="builders"]', /builders/);
  assert.match(row, /1 pending · 0 in flight · 1 acked · 1 dead/);
  assert.match(row, /members: pod-4/);
  const letter = await shows(
    page,
    `#consumer-list li[data-message="${first.message.id}"]`,
    /build web/,
  );
  assert.match(letter, new RegExp(`#${first.message.id} after 1 attempt \\(last: pod-4\\): build web`));
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/console-consumers.png`, fullPage: true });
  await context.close();
});

test("an admin key sees the app's webhooks and their recent failures", async () => {
  const admin = server.createKey("--name", "console-admin", "--scopes", "admin,channels:read,channels:write");
  // A receiver that is down: nothing listens on this port.
  const url = `http://127.0.0.1:${await freePort()}/hook`;
  const created = await server.call("POST", "/v1/webhooks", admin, {
    url, events: ["message.created"],
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const hook = created.body.webhook.id;
  const channel = await server.call("POST", "/v1/channels", admin, { name: "Hooked AM-7" });
  await server.call("POST", `/v1/channels/${channel.body.channel.id}/messages`, admin, { content: "ping" });

  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  await useKey(page, admin);
  const row = await shows(page, `#webhook-list li[data-webhook="${hook}"]`, /enabled/);
  assert.ok(row.includes(url), row);
  assert.match(row, /message\.created/);
  // The failed attempt shows within the console's next read (every 10 s).
  const failure = await shows(
    page,
    `#webhook-list li[data-webhook="${hook}"] .dead`,
    /message\.created evt_\d+ pending after 1 attempt, next .*: connection failed/,
  );
  assert.ok(failure.length > 0);
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/console-webhooks.png`, fullPage: true });
  await context.close();

  // A key without `admin` sees no webhook section.
  const reader = await browser.newContext();
  const plain = await reader.newPage();
  await useKey(plain);
  await plain.waitForLoadState("networkidle");
  assert.equal(await plain.isVisible("#webhooks"), false);
  await reader.close();
});
