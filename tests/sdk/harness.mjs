// A real channeld for the SDK suites: the debug binary serving a database that
// scripts/sdk-test.sh created and migrated, on a loopback port, restartable on that same port.
import { spawn, execFileSync } from "node:child_process";
import net from "node:net";
import { once } from "node:events";

export const root = new URL("../../", import.meta.url).pathname;
const bin = process.env.CHANNELD_BIN ?? `${root}target/debug/channeld`;

/** How long any awaited event may take before the test fails. */
export const DEADLINE_MS = 15_000;

export async function freePort() {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

export class Server {
  /** `args`: more `channeld serve` flags. */
  constructor(port, args = []) {
    this.port = port;
    this.args = args;
    this.origin = `127.0.0.1:${port}`;
    this.http = `http://${this.origin}`;
    this.ws = `ws://${this.origin}`;
    this.child = null;
    this.log = "";
  }

  async start() {
    this.child = spawn(
      bin,
      [
        "serve",
        "--listen", this.origin,
        "--no-migrate",
        "--log-format", "text",
        "--ws-connects-per-ip", "1000000",
        ...this.args,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    this.child.stderr.on("data", (chunk) => {
      this.log = (this.log + chunk).slice(-20_000);
    });
    const exited = once(this.child, "exit").then(([code]) => {
      throw new Error(`channeld exited with ${code} while starting:\n${this.log}`);
    });
    await Promise.race([exited, this.#ready()]);
    exited.catch(() => {});
  }

  async #ready() {
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      try {
        if ((await fetch(`${this.http}/readyz`)).ok) return;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) throw new Error(`channeld never became ready:\n${this.log}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  async stop(signal = "SIGTERM") {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = once(this.child, "exit");
    this.child.kill(signal);
    await exited;
  }

  /** A key printed by the CLI, as an operator would create it. */
  createKey(...args) {
    return execFileSync(bin, ["keys", "create", "--quiet", ...args], {
      encoding: "utf8",
    }).trim();
  }

  async call(method, path, key, body) {
    const response = await fetch(`${this.http}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${key}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  }

  async mint(key, claims) {
    const { status, body } = await this.call("POST", "/v1/tokens", key, claims);
    if (status !== 200) throw new Error(`minting failed: ${status} ${JSON.stringify(body)}`);
    return body.token;
  }
}

/**
 * Resolves with the first `event` payload from `client` that satisfies `accept`; rejects after
 * the deadline with what it was waiting for.
 */
export function next(client, event, accept = () => true, ms = DEADLINE_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off(event, handler);
      reject(new Error(`no matching "${event}" within ${ms} ms`));
    }, ms);
    const handler = (payload) => {
      if (!accept(payload)) return;
      clearTimeout(timer);
      client.off(event, handler);
      resolve(payload);
    };
    client.on(event, handler);
  });
}

/** Retries `attempt` until it returns a truthy value, for conditions only a request can see. */
export async function eventually(attempt, what, ms = DEADLINE_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await attempt();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`never happened within ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
