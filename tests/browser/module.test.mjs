// The client module (GET /client.js) imported by a page in Debian's Chromium, behind nginx
// against real relays: a SIGTERM drain, streams renewed at their age (`relay.drain` reason
// `rebalance`), `relay.reset` after the stream is recreated and
// `relay.gap` after retention. Every event is counted through the module's onEvent, and each
// test ends with a sentinel event published last: once the page has it, everything before it
// has arrived, so the log is compared exactly (no waiting for extras that might come).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  launchBrowser, natsRequest, openConnections, publish, startNats, startNginx, startRelay, startStack,
  stop, timelineSeqs, until,
} from "./harness.mjs";

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** A page on `base` (so `/client.js` is same-origin) running watch(subjects, options); it keeps
 * every onEvent sequence (and "reset" for each onReset) in order, the states and the gaps. */
async function watchInPage(base, subjects, options = {}) {
  const page = await browser.newPage();
  await page.goto(`${base}/healthz`);
  await page.evaluate(async ({ subjects, options }) => {
    const { watch } = await import("/client.js");
    window.seen = { log: [], states: [], gaps: [] };
    window.feed = watch(subjects, {
      ...options,
      minRetryMs: 200,
      onEvent: (e) => window.seen.log.push(e.seq),
      onState: (s) => window.seen.states.push(s),
      onReset: () => window.seen.log.push("reset"),
      onGap: (g) => window.seen.gaps.push(g),
    });
  }, { subjects, options });
  return page;
}

const seen = (page) => page.evaluate(() => structuredClone(window.seen));

/** Waits until the page's log holds `seq` (after a reset, with `afterReset`). */
async function waitFor(page, seq, { afterReset = false } = {}) {
  await until(`the page to receive ${seq}${afterReset ? " after a reset" : ""}`, async () => {
    const { log } = await seen(page);
    const reset = log.lastIndexOf("reset");
    return (!afterReset || reset >= 0) && log.slice(reset + 1).includes(seq);
  });
}

test("a SIGTERM drain: the module follows the drained stream to the other replica, every event once", async () => {
  const stack = await startStack({ RELAY_RETRY: "300ms", RELAY_DRAIN_TIMEOUT: "2s" });
  const { nats, relays, lb, pipeline } = stack;
  const page = await watchInPage(lb.base, { pavilions: ["p-1"] });
  try {
    await until("some events", async () => (await seen(page)).log.length >= 5);
    const counts = await Promise.all(relays.map((r) => openConnections(r, "pavilion")));
    const serving = counts.indexOf(1);
    assert.notEqual(serving, -1, `one replica serves the page (${counts})`);
    const before = (await seen(page)).log.length;

    const drained = relays[serving].child;
    await stop(drained, "SIGTERM"); // bounded
    assert.equal(drained.exitCode, 0, "the drained replica exits cleanly");
    const survivor = relays[1 - serving];
    await until("reconnected to the survivor", async () => (await openConnections(survivor, "pavilion")) === 1);
    await until("events after the drain", async () => (await seen(page)).log.length > before + 3);

    await stop(pipeline);
    const sentinel = (await publish(nats.url, { deployment: "d-sentinel", pavilion: "p-1", data: { last: true } }))
      .pavilion_seq;
    await waitFor(page, sentinel);
    const expected = await timelineSeqs(survivor.base, "pavilions", "p-1");
    const { log, states } = await seen(page);
    assert.equal(expected.at(-1), sentinel);
    assert.deepEqual(log, expected, "every published event exactly once, in order");
    // relay.drain marks the stream as reconnecting; the module is live again afterwards.
    const drainedAt = states.indexOf("reconnecting");
    assert.ok(drainedAt > states.indexOf("live"), `states ${states}`);
    assert.equal(states.at(-1), "live", `states ${states}`);
  } finally {
    await page.close();
    await stack.stop();
  }
});

test("streams renewed at their age (rebalance): reconnecting, live again, every event once", async () => {
  const stack = await startStack({ RELAY_RETRY: "300ms", RELAY_MAX_CONNECTION_AGE: "2s" });
  const { nats, relays, lb, pipeline } = stack;
  const page = await watchInPage(lb.base, { pavilions: ["p-1"] });
  try {
    await until("some events", async () => (await seen(page)).log.length >= 5);
    // Each stream lives 1.8 to 2.2 s: wait for two renewals.
    await until("two renewals", async () => {
      const { states } = await seen(page);
      return states.filter((s) => s === "reconnecting").length >= 2 && states.at(-1) === "live";
    });
    await stop(pipeline);
    const sentinel = (await publish(nats.url, { deployment: "d-sentinel", pavilion: "p-1", data: { last: true } }))
      .pavilion_seq;
    await waitFor(page, sentinel);
    const expected = await timelineSeqs(relays[0].base, "pavilions", "p-1");
    const { log, states } = await seen(page);
    assert.equal(expected.at(-1), sentinel);
    assert.deepEqual(log, expected, "every published event exactly once, in order");
    assert.ok(!states.includes("polling"), `a renewal is not a refusal: ${states}`);
    const shed = await Promise.all(relays.map(async (r) => {
      const text = await (await fetch(`${r.admin}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith('relay_streams_shed_total{reason="rebalance"}'));
      return Number(line?.split(" ").at(-1) ?? 0);
    }));
    assert.ok(shed[0] + shed[1] >= 2, `renewals counted: ${shed}`);
  } finally {
    await page.close();
    await stack.stop();
  }
});

test("the stream recreated: relay.reset, onReset once, then the new stream's events", async () => {
  const nats = await startNats();
  const relay = await startRelay(nats.url, { RELAY_FANOUT: "shared", RELAY_RETRY: "300ms" });
  const lb = await startNginx([relay.base]);
  const old = [];
  for (let i = 0; i < 5; i++) old.push((await publish(nats.url, { deployment: "d-reset", data: { i } })).deploy_seq);
  assert.deepEqual(old, [1, 2, 3, 4, 5]);
  const page = await watchInPage(lb.base, { deployments: ["d-reset"] });
  try {
    await waitFor(page, 5);
    const deleted = await natsRequest(nats.url, "$JS.API.STREAM.DELETE.DEPLOY_EVENTS");
    assert.equal(deleted.success, true, JSON.stringify(deleted));
    // The relay provisions the stream again; publish once it exists (sequences start over).
    const fresh = [];
    await until("the stream provisioned again", async () => {
      try {
        fresh.push((await publish(nats.url, { deployment: "d-reset", data: { fresh: 0 } })).deploy_seq);
        return true;
      } catch { return false; }
    });
    for (let i = 1; i < 3; i++) {
      fresh.push((await publish(nats.url, { deployment: "d-reset", data: { fresh: i } })).deploy_seq);
    }
    assert.deepEqual(fresh, [1, 2, 3], "the recreated stream starts over");
    await waitFor(page, 3, { afterReset: true });
    const { log, gaps } = await seen(page);
    assert.deepEqual(log, [1, 2, 3, 4, 5, "reset", 1, 2, 3], "old events, one reset, the new stream's events");
    assert.deepEqual(gaps, []);
    assert.equal(await page.evaluate(() => window.feed.cursor), 3);
  } finally {
    await page.close();
    await stop(lb.child);
    await stop(relay.child);
    await stop(nats.child);
  }
});

test("a resume point older than retained: relay.gap with what is gone, then every retained event once", async () => {
  const nats = await startNats();
  const relay = await startRelay(nats.url, { RELAY_FANOUT: "shared", RELAY_STREAM_MAX_MSGS_PER_SUBJECT: "5" });
  const lb = await startNginx([relay.base]);
  for (let i = 0; i < 10; i++) await publish(nats.url, { deployment: "d-gap", data: { i } });
  const page = await watchInPage(lb.base, { deployments: ["d-gap"] }, { since: 2 });
  try {
    await waitFor(page, 10);
    const sentinel = (await publish(nats.url, { deployment: "d-gap", data: { last: true } })).deploy_seq;
    assert.equal(sentinel, 11);
    await waitFor(page, sentinel);
    const { log, gaps } = await seen(page);
    assert.deepEqual(gaps, [{ requested: 2, first_available: 6 }]);
    assert.deepEqual(log, [6, 7, 8, 9, 10, 11], "the retained events and the live one, each once");
  } finally {
    await page.close();
    await stop(lb.child);
    await stop(relay.child);
    await stop(nats.child);
  }
});
