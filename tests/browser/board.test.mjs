// The board in a real browser (Debian's Chromium, driven by playwright-core) behind a real load
// balancer (Debian's nginx, round robin, buffering off) in front of two relay replicas.
import assert from "node:assert/strict";
import { readFileSync, mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import {
  ROOT, launchBrowser, openConnections, publish, startNats, startRelay, startStack, stop, timelineSeqs, until,
} from "./harness.mjs";

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** Publishes a sentinel event to `pavilion` (the pipeline stopped), waits until the page has it
 * — so everything published before it has arrived — then checks the page holds exactly the
 * pavilions' timelines, each event once, in order. */
async function expectExactly(page, stack, pavilions) {
  const sentinel = (await publish(stack.nats.url, { deployment: "d-sentinel", pavilion: pavilions[0], data: { last: true } }))
    .pavilion_seq;
  await until(`the page to receive the sentinel ${sentinel}`, () =>
    page.evaluate((seq) => window.relayLog.includes(seq), sentinel));
  const base = stack.relays.find((r) => r.child.exitCode === null && r.child.signalCode === null).base;
  const expected = (await Promise.all(pavilions.map((p) => timelineSeqs(base, "pavilions", p))))
    .flat().sort((a, b) => a - b);
  assert.ok(expected.length >= 20, `enough events published (${expected.length})`);
  const log = await page.evaluate(() => window.relayLog.slice());
  assert.deepEqual(log, expected, "every published event exactly once, in order");
}

test("the page reconnects through nginx to the other replica after a SIGKILL and misses nothing", async () => {
  const stack = await startStack({ RELAY_RETRY: "500ms" });
  const { relays, lb, pipeline } = stack;
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  try {
    await page.goto(`${lb.base}/?pavilion=p-1&pavilion=p-2`);
    await until("live", () => page.evaluate(() => window.relayMode === "live"));
    await until("some events", async () => (await page.evaluate(() => window.relayLog.length)) >= 8);

    // Kill the replica that holds the browser's connection.
    const counts = await Promise.all(relays.map((r) => openConnections(r, "multi")));
    const serving = counts.indexOf(1);
    assert.notEqual(serving, -1, `one replica serves the page (${counts})`);
    const before = await page.evaluate(() => window.relayLog.length);
    await stop(relays[serving].child, "SIGKILL");
    const survivor = relays[1 - serving];
    await until("reconnected to the survivor", async () => (await openConnections(survivor, "multi")) === 1);
    await until("events after the kill", async () => (await page.evaluate(() => window.relayLog.length)) > before + 5);
    await until("20 events in all", async () => (await page.evaluate(() => window.relayLog.length)) >= 20);
    assert.equal(await page.evaluate(() => window.relayMode), "live");

    await stop(pipeline);
    await expectExactly(page, stack, ["p-1", "p-2"]);

    // The board shows deployments moving through the stages, with text states.
    const rows = await page.locator("#rows tr").count();
    assert.ok(rows >= 2, `deployment rows (${rows})`);
    assert.ok((await page.locator("td.succeeded").count()) > 0, "succeeded stages");
    assert.equal(await page.locator("#connection").textContent(), "live");

    // A screenshot: into a temporary directory, or where SCREENSHOT says (`make screenshot`
    // refreshes the README's docs/board.png that way; a test never writes a tracked file).
    const shot = process.env.SCREENSHOT
      ? path.resolve(ROOT, process.env.SCREENSHOT)
      : path.join(mkdtempSync(path.join(tmpdir(), "board-shot-")), "board.png");
    mkdirSync(path.dirname(shot), { recursive: true });
    await page.screenshot({ path: shot, fullPage: true });
    const png = readFileSync(shot);
    assert.ok(png.length > 10_000, "a non-trivial PNG");
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "PNG signature");
  } finally {
    await page.close();
    await stack.stop();
  }
});

test("refused by the per-key limit, the page polls, misses nothing, and goes live when a slot frees", async () => {
  const stack = await startStack({ RELAY_RETRY: "500ms", RELAY_MAX_CONNECTIONS_PER_KEY: "1" });
  const { relays, lb, pipeline } = stack;
  // Other clients hold the only slot for pavilion p-1 on both replicas.
  const holders = relays.map(() => new AbortController());
  await Promise.all(relays.map(async (r, i) => {
    const res = await fetch(`${r.base}/v1/pavilions/p-1/events`, { signal: holders[i].signal });
    assert.equal(res.status, 200);
    res.body.getReader().read().catch(() => {});
  }));
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } }); // phone width
  try {
    await page.goto(`${lb.base}/?pavilion=p-1`);
    await until("polling", async () => (await page.locator("#connection").textContent()) === "polling");
    await until("events while polling", async () => (await page.evaluate(() => window.relayLog.length)) >= 6);
    assert.equal(await page.evaluate(() => window.relayMode), "polling");

    for (const h of holders) h.abort();
    await until("live again", () => page.evaluate(() => window.relayMode === "live"), 60_000);
    const live = await page.evaluate(() => window.relayLog.length);
    await until("events after going live", async () => (await page.evaluate(() => window.relayLog.length)) > live + 3);

    await until("20 events in all", async () => (await page.evaluate(() => window.relayLog.length)) >= 20);
    await stop(pipeline);
    await expectExactly(page, stack, ["p-1"]);
  } finally {
    await page.close();
    await stack.stop();
  }
});

test("presence: the board shows who watches a deployment across replicas, and the module's onPresence follows", async () => {
  const nats = await startNats();
  const env = { RELAY_PRESENCE_INTERVAL: "500ms" };
  const relays = [await startRelay(nats.url, env), await startRelay(nats.url, env)];
  const board = await browser.newPage();
  const other = await browser.newPage();
  try {
    // The board on one replica, a page using the module's onPresence on the other.
    await board.goto(`${relays[0].base}/?deployment=d-pr`);
    await until("the board live", () => board.evaluate(() => window.relayMode === "live"));
    await other.goto(`${relays[1].base}/healthz`);
    await other.evaluate(async () => {
      const { watch } = await import("/client.js");
      window.presence = [];
      window.feed = watch({ deployments: ["d-pr"] }, { onPresence: (p) => window.presence.push(p) });
    });
    const item = board.locator('#presence li[data-subject="deploy.d-pr"]');
    await until("the board counts both watchers", async () =>
      (await item.textContent().catch(() => "")) === "deployment d-pr: 2 watching");
    await until("the module is told 2", () =>
      other.evaluate(() => window.presence.at(-1)?.connections === 2));
    const list = board.locator("#presence");
    assert.equal(await list.getAttribute("aria-label"), "Who is watching");
    assert.equal(await list.getAttribute("aria-live"), "polite");
    assert.ok(await list.isVisible(), "the list is shown");

    // The board leaves: the module hears 1, and no figures twice in a row.
    await board.close();
    await until("the module is told 1", () =>
      other.evaluate(() => window.presence.at(-1)?.connections === 1));
    const told = await other.evaluate(() => window.presence.map((p) => [p.subject, p.connections, p.users]));
    for (let i = 1; i < told.length; i++) assert.notDeepEqual(told[i], told[i - 1], `repeated: ${JSON.stringify(told)}`);
    assert.deepEqual(told.at(-1), ["deploy.d-pr", 1, []]);
  } finally {
    await other.evaluate(() => window.feed?.close()).catch(() => {});
    await other.close();
    if (!board.isClosed()) await board.close();
    for (const r of relays) await stop(r.child);
    await stop(nats.child);
  }
});
