//! Self-healing (`docs/api.md` §10): a replica gives away the streams it cannot serve well, each
//! with `relay.drain` and a jittered `retry:`, so its clients resume on another replica with
//! their `Last-Event-ID` — nothing lost, nothing repeated.
//!
//! One task, the [`Shedder`], decides which streams end and when:
//! - `shutdown`: SIGTERM; every stream, spread over the drain;
//! - `unavailable`: no successful stream check for `RELAY_SHED_UNREACHABLE_AFTER` (NATS
//!   disconnected, cut off, or the stream without a leader); every stream, spread over
//!   [`UNAVAILABLE_SPREAD`] so the healthy replicas do not take one burst;
//! - `overloaded`: live lag over `RELAY_SHED_LAG`, sustained ([`lag`]); at most 10 % of the
//!   streams a second until it is under half of that, and not ready meanwhile;
//! - `rebalance`: a stream older than `RELAY_MAX_CONNECTION_AGE` (±10 %).

pub mod lag;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use lag::{LagWindow, LiveLag};
pub use streams::{OpenStreams, ShedReason, StreamSwitch, StreamTicket};

use crate::readiness::Readiness;
use crate::telemetry::metrics::STREAMS_SHED;

/// How often the shedder looks.
const TICK: Duration = Duration::from_millis(100);
/// How long a lag window is, and how often streams are checked for their age.
const WINDOW: Duration = Duration::from_secs(1);
/// Streams ended for `unavailable` are spread over this long.
pub const UNAVAILABLE_SPREAD: Duration = Duration::from_secs(1);
/// The share of the open streams ended each second while the replica lags.
const OVERLOADED_PER_SECOND: f64 = 0.1;

/// What the shedder acts on.
pub struct Shedder {
    pub streams: Arc<OpenStreams>,
    pub readiness: Arc<Readiness>,
    pub lag: Arc<LiveLag>,
    /// `RELAY_SHED_UNREACHABLE_AFTER`; zero: never.
    pub unreachable_after: Duration,
    /// Cancelled when the replica starts draining.
    pub draining: CancellationToken,
    /// The spread of a drain.
    pub drain_spread: Duration,
}

/// Ends every running stream over `over`, in proportion to the time gone by; once `over` has
/// passed, every stream still running (also those opened since) at once.
struct Spread {
    start: Instant,
    over: Duration,
    initial: usize,
    ended: usize,
}

impl Spread {
    fn new(start: Instant, over: Duration, initial: usize) -> Self {
        Self {
            start,
            over,
            initial,
            ended: 0,
        }
    }

    /// How many more streams to end at `now`.
    fn due(&self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= self.over {
            return usize::MAX;
        }
        let share = elapsed.as_secs_f64() / self.over.as_secs_f64();
        ((self.initial as f64 * share).ceil() as usize).saturating_sub(self.ended)
    }
}

impl Shedder {
    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain: Option<Spread> = None;
        let mut unavailable: Option<Spread> = None;
        let mut lag_state = lag::LagState::default();
        let mut next_window = Instant::now() + WINDOW;
        let mut overload_credit = 0.0;
        let mut last_tick = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let dt = now.saturating_duration_since(last_tick);
            last_tick = now;
            if self.draining.is_cancelled() {
                let spread = drain.get_or_insert_with(|| {
                    Spread::new(now, self.drain_spread, self.streams.running())
                });
                spread.ended += self.end(spread.due(now), ShedReason::Shutdown);
                continue;
            }

            let cut_off = self.readiness.unreachable_for(now);
            if !self.unreachable_after.is_zero() && cut_off >= self.unreachable_after {
                let spread = unavailable.get_or_insert_with(|| {
                    let open = self.streams.running();
                    if open > 0 {
                        tracing::warn!(
                            unreachable_for = ?cut_off,
                            open,
                            "NATS or the stream unreachable; ending every stream so its client \
                             resumes on a ready replica"
                        );
                    }
                    Spread::new(now, UNAVAILABLE_SPREAD, open)
                });
                spread.ended += self.end(spread.due(now), ShedReason::Unavailable);
            } else if unavailable.take().is_some() {
                tracing::info!("NATS and the stream reachable again");
            }

            if now >= next_window {
                next_window = now + WINDOW;
                let was = lag_state.lagging();
                let lagging = lag_state.observe(self.lag.take_window());
                if lagging != was {
                    if lagging {
                        tracing::warn!(
                            "live events reach clients late; not ready, ending streams \
                             (overloaded) until the lag is under half the threshold"
                        );
                    } else {
                        tracing::info!("live lag back under half the threshold; ready again");
                    }
                    self.readiness.set_lagging(lagging);
                }
                self.end_counted(self.streams.end_expired(now), ShedReason::Rebalance);
            }
            if lag_state.lagging() {
                overload_credit +=
                    OVERLOADED_PER_SECOND * self.streams.running() as f64 * dt.as_secs_f64();
                let n = overload_credit.floor();
                overload_credit -= n;
                self.end(n as usize, ShedReason::Overloaded);
            } else {
                overload_credit = 0.0;
            }
        }
    }

    /// Ends up to `n` random running streams for `reason`; how many.
    fn end(&self, n: usize, reason: ShedReason) -> usize {
        let ended = self.streams.end_random(n, reason);
        self.end_counted(ended, reason);
        ended
    }

    fn end_counted(&self, n: usize, reason: ShedReason) {
        if n > 0 {
            counter!(STREAMS_SHED, "reason" => reason.as_str()).increment(n as u64);
            tracing::debug!(streams = n, reason = reason.as_str(), "ending streams");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_ends_in_proportion_then_everything() {
        let start = Instant::now();
        let mut s = Spread::new(start, Duration::from_secs(2), 100);
        assert_eq!(s.due(start), 0);
        assert_eq!(s.due(start + Duration::from_millis(500)), 25);
        s.ended = 25;
        assert_eq!(s.due(start + Duration::from_millis(500)), 0);
        assert_eq!(s.due(start + Duration::from_millis(1000)), 25);
        assert_eq!(s.due(start + Duration::from_secs(2)), usize::MAX);
    }
}
