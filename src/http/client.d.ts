// Types of the sse-relay browser client (GET /client.js). docs/api.md §4.

/** The subjects to watch: deploy.<id> and pavilion.<id>. One to sixteen in all. */
export interface Subjects {
  deployments?: string[];
  pavilions?: string[];
}

/** One relayed event, delivered once per watch, never at or below the cursor. */
export interface RelayEvent {
  /** The JetStream stream sequence: the cursor to resume from. */
  seq: number;
  /** `deploy.<id>` or `pavilion.<id>`; null for live events of a multi-subject watch (the SSE
   * stream does not carry it — the payload usually names its deployment). */
  subject: string | null;
  /** The SSE event type (`stage`, `message`, ...). */
  type: string;
  /** The payload, parsed when it is JSON, else the text. */
  data: unknown;
  /** The time JetStream stored it (RFC 3339) for polled events; null for live ones. */
  time: string | null;
}

/** Who watches a subject, over every replica (`GET .../presence`, `relay.presence`). */
export interface Presence {
  /** `deploy.<id>` or `pavilion.<id>`. */
  subject: string;
  /** Open streams of the subject. */
  connections: number;
  /** Distinct JWT `sub` values, sorted, at most 100; empty without auth. */
  users: string[];
  /** When the relay computed it (RFC 3339). */
  as_of: string;
}

/** connecting → live; reconnecting while the EventSource retries; polling while the relay
 * refuses the stream (429/503) and /timeline is polled instead; closed after close(). */
export type WatchState = "connecting" | "live" | "reconnecting" | "polling" | "closed";

export interface WatchOptions {
  onEvent?: (event: RelayEvent) => void;
  onState?: (state: WatchState) => void;
  /** relay.reset: the stream was recreated; the cursor starts over and every retained event
   * follows. */
  onReset?: () => void;
  /** relay.gap: events between the cursor and `first_available` expired from the stream. */
  onGap?: (gap: { requested: number; first_available: number } | null) => void;
  /** Who watches each subject: called with a subject's figures when they changed (streams ask
   * with `?presence=1`; while polling, `/presence` is asked on each poll). */
  onPresence?: (presence: Presence) => void;
  /** Resume after this sequence (a saved `cursor`); default: every retained event. */
  since?: number;
  /** A JWT, or a function returning the current one (asked on every (re)connect and poll). */
  token?: string | (() => string | undefined);
  /** The relay's origin, e.g. "https://relay.example.com"; default: this page's. */
  baseUrl?: string;
  /** SSE event types to listen for (an EventSource only reports named events it is told
   * of). Default: ["stage", "message"]. */
  types?: string[];
  /** Backoff bounds for going live again, in milliseconds (jittered ±50 %). */
  minRetryMs?: number;
  maxRetryMs?: number;
  /** Implementations to use instead of the globals (e.g. in Node). */
  EventSource?: unknown;
  fetch?: typeof fetch;
}

export interface Watch {
  /** The highest sequence delivered so far. */
  readonly cursor: number;
  readonly state: WatchState | null;
  close(): void;
}

export declare function watch(subjects: Subjects, options?: WatchOptions): Watch;
