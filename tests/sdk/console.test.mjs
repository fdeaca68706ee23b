// The built-in console (/console) in headless Chromium (Debian's `chromium`, driven by
// playwright-core): a key entered by hand, the channel list filtered and searched, a channel
// opened, a message posted through the API appearing live, presence of the channel's live
// stream, and a phone-sized screen. Screenshots are kept in target/test-artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { Server, freePort, root, DEADLINE_MS } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = `${root}target/test-artifacts`;

const server = new Server(await freePort());
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
