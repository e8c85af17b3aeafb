//! Whether this replica should receive traffic: NATS connected, stream reachable, the live tail
//! started (shared mode), not lagging, not draining.
//! Written by the NATS watcher, the shedder and the shutdown path, read by `/readyz`, every SSE
//! request and the shedder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use metrics::gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::telemetry::metrics::{DRAINING, NATS_CONNECTED, READY};

#[derive(Debug)]
pub struct Readiness {
    nats_connected: AtomicBool,
    stream_reachable: AtomicBool,
    /// When the stream was last found reachable (or the replica started).
    last_reachable: Mutex<Instant>,
    /// A stream not found reachable for this long counts as unreachable, even while the check
    /// that would say so still waits for its answer (a silently cut path).
    stale_after: Duration,
    /// Shared mode: the live tail does not know where it starts yet.
    live_tail_pending: AtomicBool,
    /// Live events reach clients late (`RELAY_SHED_LAG`).
    lagging: AtomicBool,
    draining: AtomicBool,
    /// Told whenever one of the above changes.
    changed: Notify,
}

/// How long without a successful stream check makes a replica not ready (the watcher checks
/// every second; a check answers in milliseconds).
pub const STALE_AFTER: Duration = Duration::from_secs(3);

impl Default for Readiness {
    fn default() -> Self {
        Self::new(STALE_AFTER)
    }
}

impl Readiness {
    /// Readiness that takes a stream not found reachable for `stale_after` as unreachable.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            nats_connected: AtomicBool::default(),
            stream_reachable: AtomicBool::default(),
            last_reachable: Mutex::new(Instant::now()),
            stale_after,
            live_tail_pending: AtomicBool::default(),
            lagging: AtomicBool::default(),
            draining: AtomicBool::default(),
            changed: Notify::default(),
        }
    }
}

/// Why the replica is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// NATS disconnected or the stream unreachable.
    Unavailable,
    /// Shared mode: the live tail has not started.
    LiveTailPending,
    /// Live events reach clients too late.
    Lagging,
    /// Shutting down.
    Draining,
}

impl Readiness {
    pub fn set_nats_connected(&self, connected: bool) {
        self.nats_connected.store(connected, Ordering::Relaxed);
        gauge!(NATS_CONNECTED).set(if connected { 1.0 } else { 0.0 });
        if !connected {
            self.stream_reachable.store(false, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
    }

    pub fn set_stream_reachable(&self, reachable: bool) {
        self.stream_reachable.store(reachable, Ordering::Relaxed);
        if reachable {
            *self.lock_last_reachable() = Instant::now();
        }
        self.changed.notify_waiters();
    }

    /// How long since the stream was last found reachable (zero while it is).
    pub fn unreachable_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.lock_last_reachable())
    }

    fn lock_last_reachable(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.last_reachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_lagging(&self, lagging: bool) {
        self.lagging.store(lagging, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Shared mode: whether the live tail is still to start.
    pub fn set_live_tail_pending(&self, pending: bool) {
        self.live_tail_pending.store(pending, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        gauge!(DRAINING).set(1.0);
        gauge!(READY).set(0.0);
        self.changed.notify_waiters();
    }

    /// Returns once the replica is ready (at once if it is).
    pub async fn ready(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read: a change in between still wakes it.
            changed.as_mut().enable();
            if self.check().is_ok() {
                return;
            }
            changed.await;
        }
    }

    pub fn nats_connected(&self) -> bool {
        self.nats_connected.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Publishes [`Readiness::check`] as the `relay_ready` gauge (the NATS watcher does, every
    /// second).
    pub fn report(&self) {
        gauge!(READY).set(if self.check().is_ok() { 1.0 } else { 0.0 });
    }

    /// `Ok` when the replica may take a new stream.
    pub fn check(&self) -> Result<(), NotReady> {
        if self.is_draining() {
            Err(NotReady::Draining)
        } else if !self.nats_connected()
            || !self.stream_reachable.load(Ordering::Relaxed)
            || self.unreachable_for(Instant::now()) >= self.stale_after
        {
            Err(NotReady::Unavailable)
        } else if self.live_tail_pending.load(Ordering::Relaxed) {
            Err(NotReady::LiveTailPending)
        } else if self.lagging.load(Ordering::Relaxed) {
            Err(NotReady::Lagging)
        } else {
            Ok(())
        }
    }
}
