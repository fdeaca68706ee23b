// A client written only against the types openapi-typescript generated from channeld's OpenAPI
// document (generated/api.d.ts), compiled with `strict`, then run against a real server:
//
//   node dist/client.js <base url> <secret key>
//
// A path, parameter, body or response field the document gets wrong fails to compile here, or
// fails the checks below at run time.
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/api.js";

type Message = components["schemas"]["Message"];
type Envelope = components["schemas"]["Envelope"];

const [base, key] = process.argv.slice(2);
if (!base || !key) throw new Error("usage: node dist/client.js <base url> <secret key>");

const api = createClient<paths>({ baseUrl: base, headers: { Authorization: `Bearer ${key}` } });

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`check failed: ${what}`);
}

const created = await api.POST("/v1/channels", {
  body: { name: `generated client ${Date.now()}`, ticket_slug: "AM-1", repository_id: 7 },
});
check(created.response.status === 201 && created.data !== undefined, "channel created");
const channel = created.data.channel;
check(typeof channel.id === "number" && channel.ticket_slug === "AM-1", "channel fields");

const posted = await api.POST("/v1/channels/{id}/messages", {
  params: { path: { id: channel.id } },
  body: { content: "hello from a generated client", pod_key: "pod-1" },
});
check(posted.data !== undefined, "message posted");
const message: Message = posted.data.message;
check(message.channel_id === channel.id && message.sender_type === "agent", "message fields");

const history = await api.GET("/v1/channels/{id}/messages", {
  params: { path: { id: channel.id }, query: { after: 0, limit: 10 } },
});
check(history.data !== undefined, "history read");
check(history.data.messages.length === 1 && history.data.has_more === false, "history page");
check(history.data.messages[0]?.id === message.id, "history holds the message");

const listed = await api.GET("/v1/channels", { params: { query: { ticket_slug: "AM-1" } } });
check(listed.data !== undefined && listed.data.total >= 1, "channel listed");

const token = await api.POST("/v1/tokens", { body: { peerId: "u_generated" } });
check(token.data !== undefined && token.data.token.split(".").length === 3, "token minted");

// Errors arrive in the documented envelope.
const missing = await api.GET("/v1/channels/{id}", { params: { path: { id: 999_999_999 } } });
const notFound: Envelope | undefined = missing.error;
check(missing.response.status === 404 && notFound?.error === "not_found", "404 envelope");
const anonymous = createClient<paths>({ baseUrl: base });
const refused = await anonymous.GET("/v1/channels", {});
check(refused.response.status === 401 && refused.error?.error === "unauthorized", "401 envelope");

console.log(`generated client: ${channel.id} ${message.id} ok`);
