// sse-relay browser client (docs/api.md §4): one EventSource over several subjects, each event
// applied once by stream sequence, a polling fallback on /timeline when the relay refuses the
// stream (429/503 close an EventSource for good), Retry-After honoured, live again with backoff
// and jitter. No dependencies; works in browsers and in Node with a global EventSource and fetch.
//
//   import { watch } from "https://relay.example.com/client.js";
//   const feed = watch({ deployments: ["d-42"], pavilions: ["p-7"] }, { onEvent, onState });
//   feed.cursor; feed.close();

const KINDS = [["deployments", "deployment"], ["pavilions", "pavilion"]];

/** Watches the given subjects; see client.d.ts for every option. */
export function watch(subjects, options = {}) {
  const {
    onEvent = () => {},
    onState = () => {},
    onReset = () => {},
    onGap = () => {},
    onPresence,
    since = 0,
    token,
    baseUrl = "",
    types = ["stage", "message"],
    minRetryMs = 1000,
    maxRetryMs = 60000,
  } = options;
  const EventSourceImpl = options.EventSource || globalThis.EventSource;
  const fetchImpl = options.fetch || globalThis.fetch.bind(globalThis);
  const watched = KINDS.flatMap(([plural, key]) =>
    (subjects[plural] || []).map((id) => ({ kind: plural, key, id: String(id) })));
  if (!watched.length) throw new Error("watch: name at least one deployment or pavilion");

  let cursor = Number(since) || 0; // the highest sequence delivered
  const polled = new Map(watched.map((w) => [w, cursor])); // per subject, for polling
  const seen = new Set(); // sequences above the lowest polled cursor, delivered already
  let state = null;
  let source = null;
  let closed = false;
  let retryMs = minRetryMs;
  let timers = new Set();

  const later = (fn, ms) => { const t = setTimeout(() => { timers.delete(t); fn(); }, ms); timers.add(t); };
  const jitter = (ms) => Math.round(ms * (0.5 + Math.random()));
  const setState = (next) => { if (next !== state) { state = next; onState(next); } };
  const currentToken = () => (typeof token === "function" ? token() : token);
  const base = baseUrl.replace(/\/$/, "");
  const presenceSeen = new Map(); // subject -> the last figures reported to onPresence

  /** Reports a subject's presence when its figures changed (a reconnect is sent them again). */
  function presence(p) {
    if (!onPresence || !p || typeof p.subject !== "string") return;
    const figures = JSON.stringify([p.connections, p.users]);
    if (presenceSeen.get(p.subject) === figures) return;
    presenceSeen.set(p.subject, figures);
    onPresence(p);
  }

  function deliver(seq, subject, type, data, time) {
    if (!Number.isSafeInteger(seq) || seq <= 0 || seen.has(seq)) return;
    const low = Math.min(...polled.values());
    if (seq <= low) return; // before every subject's cursor: delivered already
    seen.add(seq);
    if (seq > cursor) cursor = seq;
    let parsed = data;
    if (typeof data === "string") { try { parsed = JSON.parse(data); } catch { parsed = data; } }
    onEvent({ seq, subject, type, data: parsed, time: time ?? null });
  }

  function advance(w, to) {
    polled.set(w, Math.max(polled.get(w), to));
    const low = Math.min(...polled.values());
    for (const s of seen) if (s <= low) seen.delete(s);
  }

  function reset() {
    cursor = 0;
    seen.clear();
    for (const w of watched) polled.set(w, 0);
    onReset();
  }

  function streamUrl() {
    const q = new URLSearchParams();
    let path;
    if (watched.length === 1) {
      const [w] = watched;
      path = `/v1/${w.kind}/${encodeURIComponent(w.id)}/events`;
    } else {
      path = "/v1/events";
      for (const w of watched) q.append(w.key, w.id);
    }
    const resume = Math.min(...polled.values(), cursor);
    if (resume > 0) q.set("last_event_id", String(resume));
    if (onPresence) q.set("presence", "1");
    const t = currentToken();
    if (t) q.set("access_token", t);
    const qs = q.toString();
    return `${base}${path}${qs ? `?${qs}` : ""}`;
  }

  function onMessage(e) {
    const seq = Number(e.lastEventId);
    const subject = watched.length === 1 ? `${watched[0].key === "deployment" ? "deploy" : "pavilion"}.${watched[0].id}` : null;
    deliver(seq, subject, e.type, e.data, null);
    // The stream is in sequence order across its subjects: each is covered up to seq.
    for (const w of watched) advance(w, seq);
  }

  function connect() {
    if (closed) return;
    setState(state === null ? "connecting" : "reconnecting");
    source = new EventSourceImpl(streamUrl());
    source.onopen = () => { setState("live"); retryMs = minRetryMs; };
    for (const type of types) source.addEventListener(type, onMessage);
    source.addEventListener("relay.reset", () => { reset(); });
    source.addEventListener("relay.gap", (e) => {
      try { onGap(JSON.parse(e.data)); } catch { onGap(null); }
    });
    source.addEventListener("relay.drain", () => setState("reconnecting"));
    source.addEventListener("relay.presence", (e) => {
      try { presence(JSON.parse(e.data)); } catch { /* not JSON: ignored */ }
    });
    source.onerror = () => {
      if (closed) return;
      if (source.readyState === 2 /* CLOSED */) {
        // Refused (429, 503) or not an event stream: poll, and go live again later.
        source.close();
        source = null;
        refused();
      } else {
        setState("reconnecting"); // the EventSource reconnects with Last-Event-ID itself
      }
    };
  }

  /** Learns why the stream was refused (an EventSource cannot see statuses), then polls. */
  async function refused() {
    let wait = jitter(retryMs);
    retryMs = Math.min(retryMs * 2, maxRetryMs);
    try {
      const r = await fetchImpl(streamUrl(), { headers: authHeaders(), cache: "no-store" });
      const after = Number(r.headers.get("retry-after"));
      if (r.body && r.body.cancel) r.body.cancel().catch(() => {});
      if (r.ok) wait = 0; // a slot freed meanwhile
      else if (after > 0) wait = Math.max(wait, jitter(after * 1000));
    } catch { /* the relay is unreachable: poll and retry with backoff */ }
    if (closed) return;
    if (wait === 0) { connect(); return; }
    setState("polling");
    poll();
    later(() => { stopPolling(); connect(); }, wait);
  }

  function authHeaders() {
    const t = currentToken();
    return t ? { authorization: `Bearer ${t}` } : {};
  }

  let polling = false;
  let pollDelay = minRetryMs;
  function stopPolling() { polling = false; }
  async function poll() {
    if (polling) return;
    polling = true;
    while (polling && !closed) {
      try {
        await pollOnce();
        pollDelay = minRetryMs;
      } catch (err) {
        pollDelay = Math.min(pollDelay * 2, 15000);
        if (err && err.retryAfter) pollDelay = Math.max(pollDelay, err.retryAfter * 1000);
      }
      if (!polling || closed) break;
      await new Promise((resolve) => later(resolve, jitter(pollDelay)));
    }
  }

  async function pollOnce() {
    const pages = [];
    for (const w of watched) {
      let after = polled.get(w);
      for (let i = 0; i < 50; i++) {
        const url = `${base}/v1/${w.kind}/${encodeURIComponent(w.id)}/timeline?after=${after}&limit=1000`;
        const r = await fetchImpl(url, { headers: authHeaders(), cache: "no-store" });
        if (!r.ok) {
          const err = new Error(`timeline ${r.status}`);
          err.retryAfter = Number(r.headers.get("retry-after")) || 0;
          throw err;
        }
        const page = await r.json();
        pages.push(...page.events);
        after = page.next_after;
        if (!page.events.length || after >= page.last_seq) break;
      }
      pages.push({ w, after });
    }
    const events = pages.filter((e) => e.seq !== undefined).sort((a, b) => a.seq - b.seq);
    for (const e of events) deliver(e.seq, e.subject, e.type, e.data, e.time);
    for (const p of pages) if (p.w) advance(p.w, p.after);
    if (onPresence) {
      // Polling, presence is asked for too (a sum in the relay's memory: no NATS request).
      for (const w of watched) {
        const url = `${base}/v1/${w.kind}/${encodeURIComponent(w.id)}/presence`;
        const r = await fetchImpl(url, { headers: authHeaders(), cache: "no-store" }).catch(() => null);
        if (r && r.ok) presence(await r.json().catch(() => null));
      }
    }
  }

  connect();
  return {
    get cursor() { return cursor; },
    get state() { return state; },
    close() {
      closed = true;
      polling = false;
      if (source) source.close();
      for (const t of timers) clearTimeout(t);
      timers.clear();
      setState("closed");
    },
  };
}
