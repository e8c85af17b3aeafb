// The browser client module (GET /client.js) in Node, with the npm `eventsource` package: the
// module served by a real relay, refused by the per-key limit, polls the timeline, goes live when
// the slot frees, and delivers every event exactly once, ascending, through onEvent.
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

import { EventSource } from "eventsource";

import { publish as publishEvent, startNats, startRelay, stop, until } from "./harness.mjs";

async function publish(natsUrl, deployment, n) {
  return (await publishEvent(natsUrl, { deployment, data: { n } })).deploy_seq;
}

/** Imports the module exactly as the relay serves it. */
async function importServed(base) {
  const response = await fetch(`${base}/client.js`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^text\/javascript/);
  const etag = response.headers.get("etag");
  assert.ok(etag, "an ETag");
  const again = await fetch(`${base}/client.js`, { headers: { "if-none-match": etag } });
  assert.equal(again.status, 304, "revalidated by its ETag");
  const types = await fetch(`${base}/client.d.ts`);
  assert.equal(types.status, 200);
  assert.match(await types.text(), /export declare function watch/);
  const file = path.join(mkdtempSync(path.join(tmpdir(), "relay-client-")), "client.mjs");
  writeFileSync(file, await response.text());
  return import(pathToFileURL(file).href);
}

test("refused by the per-key limit, the module polls, goes live when the slot frees, and misses nothing", async () => {
  const nats = await startNats();
  const relay = await startRelay(nats.url, { RELAY_MAX_CONNECTIONS_PER_KEY: "1", RELAY_RETRY: "500ms" });
  let feed;
  const holder = new AbortController();
  try {
    const { watch } = await importServed(relay.base);
    const published = [];
    for (let i = 0; i < 3; i++) published.push(await publish(nats.url, "d-node", i));

    // Another client holds the only slot of d-node.
    const held = await fetch(`${relay.base}/v1/deployments/d-node/events`, { signal: holder.signal });
    assert.equal(held.status, 200);

    const got = [];
    const states = [];
    feed = watch({ deployments: ["d-node"] }, {
      baseUrl: relay.base,
      EventSource,
      minRetryMs: 200,
      maxRetryMs: 1000,
      onEvent: (e) => got.push(e),
      onState: (s) => states.push(s),
    });
    await until("polling", () => states.includes("polling"));
    await until("the retained events by polling", () => got.length >= 3);
    for (let i = 3; i < 6; i++) published.push(await publish(nats.url, "d-node", i));
    await until("new events by polling", () => got.length >= 6);
    assert.equal(feed.state, "polling", "still refused: the slot is held");

    // The slot frees: the module goes live and takes up from its cursor.
    holder.abort();
    await until("live", () => feed.state === "live");
    for (let i = 6; i < 10; i++) published.push(await publish(nats.url, "d-node", i));
    await until("every event", () => got.length >= published.length);
    await new Promise((r) => setTimeout(r, 300)); // a repeat would show up now

    assert.deepEqual(got.map((e) => e.seq), published, "every event once, ascending");
    assert.deepEqual(got.map((e) => e.data.n), [...Array(10).keys()], "payloads parsed");
    assert.ok(got.every((e) => e.subject === "deploy.d-node" && e.type === "stage"));
    assert.equal(feed.cursor, published.at(-1));
    assert.deepEqual(states.slice(0, 2), ["connecting", "polling"]);
    assert.equal(states.at(-1), "live");
    feed.close();
    assert.equal(feed.state, "closed");
  } finally {
    feed?.close();
    holder.abort();
    await stop(relay.child);
    await stop(nats.child);
  }
});
