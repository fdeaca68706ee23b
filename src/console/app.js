// The channeld console: a key from the user (kept in this tab's session storage only), the
// channel list with its filters, one channel's history paged back, new messages over Server-Sent
// Events, and who is connected to the channel's live stream. Plain DOM, no dependencies.
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
  oldest: null,
  newest: 0,
  seen: new Set(),
  live: null,
  presence: null,
};

function key() {
  return sessionStorage.getItem(KEY) || "";
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${key()}`, ...(options.headers || {}) },
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
  const button = element("button");
  button.type = "button";
  const count = channel.message_count === 1 ? "1 message" : `${channel.message_count} messages`;
  const last = channel.last_message;
  button.append(
    element("span", "name", channel.name),
    element("span", "hint", ` · ${count}${channel.archived ? " · archived" : ""}`),
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
  item.prepend(element("span", "meta", `#${message.id} · ${who} · ${when(message.created_at)}`));
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
  const items = fresh.map(messageItem);
  if (atTop) $("messages").prepend(...items);
  else $("messages").append(...items);
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
    state.seen = new Set();
    state.newest = 0;
    $("channel-name").textContent = channel.name;
    const facts = [`${channel.message_count} messages`, `created ${when(channel.created_at)}`];
    if (channel.ticket_slug) facts.unshift(channel.ticket_slug);
    if (channel.archived) facts.push("archived");
    $("channel-meta").textContent = facts.join(" · ");
    $("messages").replaceChildren();
    const page = await (await api(`/v1/channels/${id}/messages?limit=50`)).json();
    if (!current()) return;
    addMessages(page.messages.slice().reverse());
    state.oldest = page.messages.length ? page.messages[page.messages.length - 1].id : null;
    $("older").hidden = !page.has_more;
    show("channel");
    $("channel-name").focus();
    follow(id, generation);
    watchPresence(id, generation);
  } catch (error) {
    if (current()) showError(error);
  }
}

async function loadOlder() {
  const generation = state.generation;
  try {
    const params = new URLSearchParams({ before: state.oldest, limit: "50" });
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
      const response = await api(`/v1/channels/${id}/events`, {
        headers: { Accept: "text/event-stream", "Last-Event-ID": String(state.newest) },
        signal: controller.signal,
      });
      attempt = 0;
      $("live").textContent = "Live: new messages appear here as they are posted.";
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

function stopFollowing() {
  state.generation += 1;
  if (state.live) state.live.abort();
  state.live = null;
  clearInterval(state.presence);
  $("live").textContent = "";
  $("presence").hidden = true;
}

// --- Views, the key and navigation -------------------------------------------------------------

function show(view) {
  $("list-view").hidden = view !== "list";
  $("channel-view").hidden = view !== "channel";
}

function route() {
  if (!key()) {
    show("none");
    $("forget").hidden = true;
    return;
  }
  $("forget").hidden = false;
  const match = location.hash.match(/^#\/channels\/(\d+)$/);
  if (match) {
    openChannel(match[1]);
  } else {
    stopFollowing();
    show("list");
    loadChannels();
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  route();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  stopFollowing();
  location.hash = "";
  route();
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
