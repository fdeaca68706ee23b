// The channeld console: a key from the user (kept in this tab's session storage only, never in
// local storage, and shown by its key id while in use), the channel list with its filters, one
// persistent channel's description, document and history paged back, new messages over
// Server-Sent Events (which keep its message count and its row in the list current), who is
// connected to the channel's live stream, and its consumer groups with their dead letters. Plain DOM, no dependencies; user data only ever goes
// into the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "channeld.key";
const state = {
  // The list: the parameters last applied, where the next page starts, the latest request.
  applied: null,
  cursor: null,
  listRequest: 0,
  // The open channel. `generation` changes whenever a channel is opened or left, so that work
  // started for an earlier one stops instead of writing into the page.
  generation: 0,
  channel: null,
  // The newest message id that the open channel's `message_count` includes: a message with a
  // higher id (ids increase in commit order within a channel, and the count and `last_message`
  // are written by the statement that stores a message) is one more message.
  counted: 0,
  oldest: null,
  newest: 0,
  seen: new Set(),
  live: null,
  presence: null,
  consumers: null,
  webhooks: null,
};

function key() {
  return sessionStorage.getItem(KEY) || "";
}

// What the page shows of a key: its id (`sk_id_…`), never its secret. No endpoint tells a key its
// own name; `channeld keys list` pairs ids with names.
function keyId(raw) {
  const live = raw.match(/^sk_live_([A-Za-z0-9]{16})_[A-Za-z0-9]{32}$/);
  if (live) return `sk_id_${live[1]}`;
  const pair = raw.match(/^(sk_id_[A-Za-z0-9]{16}):sk_secret_[A-Za-z0-9]{32}$/);
  if (pair) return pair[1];
  return "a key of an unknown form";
}

async function api(path, options = {}, withKey = key()) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${withKey}`, ...(options.headers || {}) },
  });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      message = body.message || body.error || message;
    } catch {
      // Not the error envelope; the status says enough.
    }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

function showError(error) {
  $("error").textContent = error.message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function when(timestamp) {
  return new Date(timestamp).toLocaleString();
}

function countText(count) {
  return count === 1 ? "1 message" : `${count} messages`;
}

// --- The channel list ------------------------------------------------------------------------

function listParameters() {
  const params = new URLSearchParams();
  const q = $("q").value.trim();
  if (q) params.set("q", q);
  const status = $("status").value;
  if (status === "archived") params.set("archived", "true");
  if (status === "all") params.set("include_archived", "true");
  params.set("sort", $("sort").value);
  if ($("order").value) params.set("order", $("order").value);
  params.set("limit", "50");
  return params;
}

function channelItem(channel) {
  const item = element("li");
  item.dataset.channel = channel.id;
  const button = element("button");
  button.type = "button";
  const last = channel.last_message;
  button.append(
    element("span", "name", channel.name),
    element("span", "hint", ` · ${countText(channel.message_count)}${channel.archived ? " · archived" : ""}`),
    element("span", "last", last ? `${last.pod_key || last.sender_type}: ${last.content}` : "No messages yet"),
  );
  button.addEventListener("click", () => {
    location.hash = `#/channels/${channel.id}`;
  });
  item.append(button);
  return item;
}

async function loadChannels(more = false) {
  clearError();
  if (!more || !state.applied) state.applied = listParameters();
  const params = new URLSearchParams(state.applied);
  if (more && state.cursor) {
    // A cursor carries its own sort and order.
    params.delete("sort");
    params.delete("order");
    params.set("cursor", state.cursor);
  }
  const request = ++state.listRequest;
  try {
    const body = await (await api(`/v1/channels?${params}`)).json();
    if (request !== state.listRequest) return; // a newer list was asked for meanwhile
    if (!more) $("channels").replaceChildren();
    $("channels").append(...body.channels.map(channelItem));
    if (body.channels.length === 0 && !more) {
      $("channels").append(element("li", "hint", "No channel matches."));
    }
    state.cursor = body.next_cursor;
    $("more").hidden = !body.next_cursor;
    $("total").textContent = `(${body.total})`;
  } catch (error) {
    showError(error);
  }
}

// --- One channel -----------------------------------------------------------------------------

function messageItem(message) {
  const item = element("li", message.sender_type, message.content);
  item.dataset.id = message.id;
  const who = message.pod_key || message.sender_type;
  let meta = `#${message.id} · ${who} · ${when(message.created_at)}`;
  // A reply says what it answers; mentions say who is addressed (all as text, never markup).
  if (message.reply_to != null) meta += ` · reply to #${message.reply_to}`;
  item.prepend(element("span", "meta", meta));
  if (message.mentions && message.mentions.length) {
    item.append(element("span", "mentions", message.mentions.map((name) => `@${name}`).join(" ")));
  }
  return item;
}

function addMessages(messages, { atTop = false, announce = false } = {}) {
  const fresh = messages.filter((message) => !state.seen.has(message.id));
  if (announce && fresh.length) {
    const last = fresh[fresh.length - 1];
    $("announce").textContent = `New message from ${last.pod_key || last.sender_type}: ${last.content.slice(0, 200)}`;
  }
  for (const message of fresh) {
    state.seen.add(message.id);
    state.newest = Math.max(state.newest, message.id);
  }
  count(fresh);
  const items = fresh.map(messageItem);
  if (atTop) $("messages").prepend(...items);
  else $("messages").append(...items);
}

// The name the channel view is filtered by (`mentions=`), or "" for every message: the one
// applied when the channel was opened, not what the box holds before it is submitted.
function mentionFilter() {
  return state.mentions || "";
}

function withFilter(params) {
  const query = new URLSearchParams(params);
  if (mentionFilter()) query.set("mentions", mentionFilter());
  return query;
}

// Messages shown for the first time that the channel's `message_count` did not include yet (posted
// after the channel was read): the header and the channel's row in the list count them.
function count(fresh) {
  const channel = state.channel;
  // A filtered view sees only some of the new messages: the count stays the channel's, as read.
  if (!channel || mentionFilter()) return;
  let changed = false;
  for (const message of fresh) {
    if (message.id <= state.counted) continue;
    state.counted = message.id;
    channel.message_count += 1;
    channel.last_message = {
      id: message.id,
      created_at: message.created_at,
      sender_type: message.sender_type,
      pod_key: message.pod_key,
      content: Array.from(message.content).slice(0, 200).join(""),
    };
    changed = true;
  }
  if (!changed) return;
  showFacts();
  // The list is hidden while a channel is open, and read again on the way back; its row is kept
  // current meanwhile so that it never shows an older count, even for a moment.
  const row = $("channels").querySelector(`li[data-channel="${channel.id}"]`);
  if (row) row.replaceWith(channelItem(channel));
}

function showFacts() {
  const channel = state.channel;
  const facts = [countText(channel.message_count), `created ${when(channel.created_at)}`];
  if (channel.ticket_slug) facts.unshift(channel.ticket_slug);
  $("channel-meta").textContent = facts.join(" · ");
}

function showChannel(channel) {
  $("channel-name").textContent = channel.name;
  showFacts();
  $("live").className = "status";
  if (channel.archived) {
    // The API gives no archiving time: `updated_at` is the last change, the archiving or later.
    $("live").textContent = `Archived (last changed ${when(channel.updated_at)}): it takes no new messages.`;
    $("live").classList.add("archived");
  }
  $("channel-description").textContent = channel.description || "";
  $("channel-description").hidden = !channel.description;
  $("document").textContent = channel.document ?? "";
  $("channel-document").hidden = channel.document == null;
}

async function openChannel(id) {
  stopFollowing();
  clearError();
  const generation = state.generation;
  const current = () => generation === state.generation;
  try {
    const { channel } = await (await api(`/v1/channels/${id}`)).json();
    if (!current()) return;
    state.channel = channel;
    state.mentions = $("mentions").value.trim();
    state.counted = channel.last_message ? channel.last_message.id : 0;
    state.seen = new Set();
    state.newest = 0;
    showChannel(channel);
    $("messages").replaceChildren();
    const page = await (await api(`/v1/channels/${id}/messages?${withFilter({ limit: "50" })}`)).json();
    if (!current()) return;
    addMessages(page.messages.slice().reverse());
    state.oldest = page.messages.length ? page.messages[page.messages.length - 1].id : null;
    $("older").hidden = !page.has_more;
    show("channel");
    $("channel-name").focus();
    watchConsumers(id, generation);
    // An archived channel takes no new messages (posting is 409 `channel_archived`), so the page
    // neither follows it nor reads who is on its live stream, and shows no live indicator: it
    // says "Archived" instead. Unarchived meanwhile, it is followed once opened again.
    if (channel.archived) return;
    follow(id, generation);
    watchPresence(id, generation);
  } catch (error) {
    if (current()) showError(error);
  }
}

async function loadOlder() {
  const generation = state.generation;
  try {
    const params = withFilter({ before: state.oldest, limit: "50" });
    const page = await (await api(`/v1/channels/${state.channel.id}/messages?${params}`)).json();
    if (generation !== state.generation) return;
    addMessages(page.messages.slice().reverse(), { atTop: true });
    if (page.messages.length) state.oldest = page.messages[page.messages.length - 1].id;
    $("older").hidden = !page.has_more;
  } catch (error) {
    showError(error);
  }
}

// New messages over Server-Sent Events, read with fetch so that the key travels in a header, not
// in the URL. Reconnects with Last-Event-ID, so nothing is missed or shown twice.
async function follow(id, generation) {
  const controller = new AbortController();
  state.live = controller;
  let attempt = 0;
  while (!controller.signal.aborted && generation === state.generation) {
    try {
      const response = await api(`/v1/channels/${id}/events?${withFilter({})}`, {
        headers: { Accept: "text/event-stream", "Last-Event-ID": String(state.newest) },
        signal: controller.signal,
      });
      attempt = 0;
      $("live").textContent = "Live: new messages appear below as they are posted.";
      $("live").className = "status live";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        // Lines end with LF, CRLF or CR; a CR at the very end may be half of a CRLF.
        buffer = (buffer + value).replace(/\r\n/g, "\n").replace(/\r(?!$)/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (!data) continue;
          let message;
          try {
            message = JSON.parse(data);
          } catch {
            continue; // not a message; the next event is
          }
          addMessages([message], { announce: true });
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error.status && error.status < 500) {
        showError(error);
        return;
      }
    }
    $("live").textContent = "Reconnecting…";
    $("live").className = "status";
    await new Promise((resolve) => setTimeout(resolve, Math.min(500 * 2 ** attempt++, 15_000)));
  }
}

// Who is connected to the channel's live stream, read every 5 s while the key has `presence`.
function watchPresence(id, generation) {
  let timer = null;
  const read = async () => {
    try {
      const { peers } = await (await api(`/v1/channels/${id}/peers`)).json();
      if (generation !== state.generation) return;
      const names = peers.map((peer) => (peer.metadata && peer.metadata.name) || peer.peerId);
      $("presence").textContent = names.length
        ? `Connected now: ${names.join(", ")}`
        : "Nobody is connected to this channel's live stream.";
      $("presence").hidden = false;
    } catch (error) {
      if (generation !== state.generation) return;
      $("presence").hidden = true;
      if (error.status === 403) clearInterval(timer);
    }
  };
  read();
  timer = setInterval(read, 5000);
  state.presence = timer;
}

// The channel's consumer groups (how much work is pending, in flight, acked and dead, and who
// claims it) with each group's dead letters, read every 5 s.
function consumerItem(consumer, dead) {
  const item = element("li");
  item.dataset.consumer = consumer.name;
  const oldest = consumer.oldest_pending_age_ms;
  const facts = [
    `${consumer.pending} pending`,
    `${consumer.in_flight} in flight`,
    `${consumer.acked} acked`,
    `${consumer.dead} dead`,
  ];
  if (oldest != null) facts.push(`oldest pending ${Math.round(oldest / 1000)} s`);
  const members = consumer.members.map((m) => m.member);
  item.append(
    element("span", "name", consumer.name),
    element("span", "hint", ` · ${facts.join(" · ")}`),
    element("span", "hint", members.length ? ` · members: ${members.join(", ")}` : " · no member lately"),
  );
  if (dead.length) {
    const list = element("ul", "dead-letters");
    list.setAttribute("aria-label", `Dead letters of ${consumer.name}`);
    for (const letter of dead) {
      const line = element("li", "dead");
      line.dataset.message = letter.message_id;
      const attempts = letter.attempts === 1 ? "1 attempt" : `${letter.attempts} attempts`;
      line.textContent = `#${letter.message_id} after ${attempts} (last: ${letter.last_member}): ${letter.message.content}`;
      list.append(line);
    }
    item.append(list);
  }
  return item;
}

function watchConsumers(id, generation) {
  // Each read starts 5 s after the previous one ended, so slow answers never pile up.
  const read = async () => {
    try {
      const { consumers } = await (await api(`/v1/channels/${id}/consumers`)).json();
      const dead = await Promise.all(consumers.map(async (consumer) => {
        if (!consumer.dead) return [];
        const name = encodeURIComponent(consumer.name);
        return (await (await api(`/v1/channels/${id}/consumers/${name}/dead?limit=20`)).json()).dead;
      }));
      if (generation !== state.generation) return;
      $("consumer-list").replaceChildren(...consumers.map((c, i) => consumerItem(c, dead[i])));
      $("consumers").hidden = consumers.length === 0;
    } catch (error) {
      if (generation !== state.generation) return;
      $("consumers").hidden = true;
      if (error.status === 403) return;
    }
    if (generation === state.generation) state.consumers = setTimeout(read, 5000);
  };
  read();
}

// The app's webhooks, each with its recent failed attempts (an attempt that left an error, on an
// event still pending or given up on), read every 10 s while the channel list shows. A key
// without `admin` sees no section.
function webhookItem(webhook, deliveries) {
  const item = element("li");
  item.dataset.webhook = webhook.id;
  const state = webhook.enabled ? "enabled" : "disabled";
  item.append(
    element("span", "name", webhook.url),
    element("span", "hint", ` · ${state} · ${webhook.events.join(", ")}`),
  );
  const failures = deliveries.filter((d) => d.last_error && d.state !== "delivered");
  if (failures.length) {
    const list = element("ul", "dead-letters");
    list.setAttribute("aria-label", `Recent failures of ${webhook.url}`);
    for (const delivery of failures) {
      const line = element("li", "dead");
      line.dataset.event = delivery.event_id;
      const attempts = delivery.attempts === 1 ? "1 attempt" : `${delivery.attempts} attempts`;
      const next = delivery.next_attempt_at ? `, next ${when(delivery.next_attempt_at)}` : "";
      line.textContent = `${delivery.type} ${delivery.event_id} ${delivery.state} after ${attempts}${next}: ${delivery.last_error}`;
      list.append(line);
    }
    item.append(list);
  }
  return item;
}

function watchWebhooks(generation) {
  const read = async () => {
    try {
      const { webhooks } = await (await api("/v1/webhooks")).json();
      const deliveries = await Promise.all(webhooks.map(async (webhook) =>
        (await (await api(`/v1/webhooks/${webhook.id}/deliveries?limit=20`)).json()).deliveries));
      if (generation !== state.generation) return;
      $("webhook-list").replaceChildren(...webhooks.map((w, i) => webhookItem(w, deliveries[i])));
      $("webhooks").hidden = webhooks.length === 0;
    } catch (error) {
      if (generation !== state.generation) return;
      $("webhooks").hidden = true;
      if (error.status === 403) return;
    }
    if (generation === state.generation) state.webhooks = setTimeout(read, 10000);
  };
  read();
}

function stopFollowing() {
  state.generation += 1;
  if (state.live) state.live.abort();
  state.live = null;
  clearInterval(state.presence);
  clearTimeout(state.consumers);
  clearTimeout(state.webhooks);
  $("consumers").hidden = true;
  $("webhooks").hidden = true;
  $("live").textContent = "";
  $("live").className = "status";
  $("presence").hidden = true;
}

// --- Views, the key and navigation -------------------------------------------------------------

function show(view) {
  $("list-view").hidden = view !== "list";
  $("channel-view").hidden = view !== "channel";
}

function route() {
  const current = key();
  $("key-form").hidden = Boolean(current);
  $("key-in-use").hidden = !current;
  $("key-id").textContent = current ? keyId(current) : "";
  if (!current) {
    stopFollowing();
    show("none");
    return;
  }
  const match = location.hash.match(/^#\/channels\/(\d+)$/);
  if (match) {
    // A filter belongs to the channel it was set on.
    if (String(state.channel?.id) !== match[1]) $("mentions").value = "";
    openChannel(match[1]);
  } else {
    stopFollowing();
    show("list");
    loadChannels();
    watchWebhooks(state.generation);
  }
}

// A key is kept only once the API accepts it for reading channels: a refused one stays in the box
// to be corrected, with the reason.
$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const candidate = $("key").value.trim();
  const submit = $("key-form").querySelector("button[type=submit]");
  clearError();
  submit.disabled = true;
  try {
    await api("/v1/channels?limit=1", {}, candidate);
  } catch (error) {
    showError(error);
    return;
  } finally {
    submit.disabled = false;
  }
  sessionStorage.setItem(KEY, candidate);
  $("key").value = "";
  route();
});

// Forgetting the key removes it from the tab and everything read with it from the page.
$("mention-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.channel) openChannel(state.channel.id);
});

$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  stopFollowing();
  clearError();
  state.channel = null;
  state.applied = null;
  state.cursor = null;
  state.listRequest += 1;
  for (const id of ["channels", "messages", "total", "channel-name", "channel-meta", "channel-description", "document", "presence", "announce"]) {
    $(id).replaceChildren();
  }
  $("more").hidden = true;
  $("older").hidden = true;
  history.replaceState(null, "", location.pathname + location.search);
  route();
  $("key").focus();
});
$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  loadChannels();
});
for (const id of ["status", "sort", "order"]) $(id).addEventListener("change", () => loadChannels());
$("q").addEventListener("input", () => {
  // Typed but not applied: "Load more" keeps the list it continues.
  $("more").hidden = true;
});
$("more").addEventListener("click", () => loadChannels(true));
$("older").addEventListener("click", loadOlder);
$("back").addEventListener("click", () => {
  location.hash = "";
});
window.addEventListener("hashchange", route);
$("channel-name").tabIndex = -1;
route();
