//! Live lag: how late live events reach this replica's clients, measured from JetStream's store
//! time to the write, replays excluded. Connections count their live deliveries locally and add
//! them here in bursts; once a second the shedder reads a window and decides whether the replica
//! is lagging (`RELAY_SHED_LAG`, `docs/api.md` §5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A window is bad when more than this share of its live deliveries were over the threshold
/// (its 95th percentile is above it), and good when at most this share were over half of it.
const LATE_SHARE: f64 = 0.05;
/// Bad windows in a row before the replica counts as lagging: one slow second is no trend.
pub const BAD_WINDOWS: u32 = 3;
/// Good windows in a row before it stops lagging.
pub const GOOD_WINDOWS: u32 = 2;

/// Live deliveries of every connection, since the last window was taken.
#[derive(Debug)]
pub struct LiveLag {
    threshold: f64,
    live: AtomicU64,
    over_half: AtomicU64,
    over: AtomicU64,
}

/// One window's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagWindow {
    pub live: u64,
    /// Later than half the threshold.
    pub over_half: u64,
    /// Later than the threshold.
    pub over: u64,
}

impl LiveLag {
    /// Counts against `threshold` (`RELAY_SHED_LAG`; zero: nothing is ever late).
    pub fn new(threshold: Duration) -> Self {
        Self {
            threshold: if threshold.is_zero() {
                f64::INFINITY
            } else {
                threshold.as_secs_f64()
            },
            live: AtomicU64::new(0),
            over_half: AtomicU64::new(0),
            over: AtomicU64::new(0),
        }
    }

    /// Where one live delivery of `lag_seconds` falls.
    pub fn classify(&self, lag_seconds: f64, counts: &mut LagWindow) {
        counts.live += 1;
        if lag_seconds > self.threshold / 2.0 {
            counts.over_half += 1;
            if lag_seconds > self.threshold {
                counts.over += 1;
            }
        }
    }

    /// Adds `deliveries` live deliveries of one event, all `lag_seconds` late (the live tail's
    /// direct writes, counted once per event).
    pub fn add_many(&self, lag_seconds: f64, deliveries: u64) {
        let mut counts = LagWindow::default();
        self.classify(lag_seconds, &mut counts);
        counts.live *= deliveries;
        counts.over_half *= deliveries;
        counts.over *= deliveries;
        self.add(&mut counts);
    }

    /// Adds a connection's counts (and clears them).
    pub fn add(&self, counts: &mut LagWindow) {
        if counts.live == 0 {
            return;
        }
        let c = std::mem::take(counts);
        self.live.fetch_add(c.live, Ordering::Relaxed);
        if c.over_half > 0 {
            self.over_half.fetch_add(c.over_half, Ordering::Relaxed);
            self.over.fetch_add(c.over, Ordering::Relaxed);
        }
    }

    /// The counts since the last call.
    pub fn take_window(&self) -> LagWindow {
        LagWindow {
            live: self.live.swap(0, Ordering::Relaxed),
            over_half: self.over_half.swap(0, Ordering::Relaxed),
            over: self.over.swap(0, Ordering::Relaxed),
        }
    }
}

/// Whether the replica lags, with hysteresis: it starts lagging after [`BAD_WINDOWS`] windows
/// over the threshold and stops after [`GOOD_WINDOWS`] under half of it (a window without live
/// deliveries is good: nothing waits).
#[derive(Debug, Default)]
pub struct LagState {
    lagging: bool,
    streak: u32,
}

impl LagState {
    /// Takes one window; returns whether the replica is lagging now.
    pub fn observe(&mut self, w: LagWindow) -> bool {
        let share = |n: u64| w.live > 0 && n as f64 > LATE_SHARE * w.live as f64;
        let towards_change = if self.lagging {
            !share(w.over_half)
        } else {
            share(w.over)
        };
        self.streak = if towards_change { self.streak + 1 } else { 0 };
        let needed = if self.lagging {
            GOOD_WINDOWS
        } else {
            BAD_WINDOWS
        };
        if self.streak >= needed {
            self.lagging = !self.lagging;
            self.streak = 0;
        }
        self.lagging
    }

    pub fn lagging(&self) -> bool {
        self.lagging
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(lag: &LiveLag, lags: &[f64]) -> LagWindow {
        let mut counts = LagWindow::default();
        for l in lags {
            lag.classify(*l, &mut counts);
        }
        lag.add(&mut counts);
        assert_eq!(counts, LagWindow::default(), "added and cleared");
        lag.take_window()
    }

    #[test]
    fn deliveries_are_classified_against_the_threshold_and_half_of_it() {
        let lag = LiveLag::new(Duration::from_secs(2));
        let w = window(&lag, &[0.1, 0.9, 1.5, 2.5, 3.0]);
        assert_eq!(
            w,
            LagWindow {
                live: 5,
                over_half: 3,
                over: 2
            }
        );
        assert_eq!(lag.take_window(), LagWindow::default(), "taken once");
        lag.add_many(1.5, 4);
        lag.add_many(0.5, 3);
        lag.add_many(2.5, 2);
        assert_eq!(
            lag.take_window(),
            LagWindow {
                live: 9,
                over_half: 6,
                over: 2
            },
            "one event's deliveries at once"
        );
        let off = LiveLag::new(Duration::ZERO);
        assert_eq!(window(&off, &[1e9]).over, 0, "zero: never late");
    }

    #[test]
    fn lagging_needs_three_bad_windows_and_two_good_ones_to_clear() {
        let lag = LiveLag::new(Duration::from_secs(2));
        let bad = || window(&lag, &[3.0; 10]);
        let mixed = || window(&lag, &[1.5; 10]); // over half, under the threshold
        let good = || window(&lag, &[0.1; 10]);
        let mut state = LagState::default();
        assert!(!state.observe(bad()));
        assert!(!state.observe(bad()));
        assert!(!state.observe(good()), "a good window breaks the streak");
        assert!(!state.observe(bad()));
        assert!(!state.observe(bad()));
        assert!(state.observe(bad()), "three in a row");
        assert!(state.observe(mixed()), "under the threshold is not enough");
        assert!(state.observe(good()));
        assert!(state.observe(mixed()), "the streak of good ones restarts");
        assert!(state.observe(good()));
        assert!(
            !state.observe(LagWindow::default()),
            "nothing delivered is good"
        );
    }

    #[test]
    fn one_slow_client_among_many_is_not_a_lagging_replica() {
        let lag = LiveLag::new(Duration::from_secs(2));
        let mut state = LagState::default();
        for _ in 0..10 {
            let mut lags = vec![0.01; 99];
            lags.push(30.0); // 1 % late
            assert!(!state.observe(window(&lag, &lags)));
        }
        for _ in 0..3 {
            let mut lags = vec![0.01; 90];
            lags.extend([30.0; 10]); // 10 % late
            state.observe(window(&lag, &lags));
        }
        assert!(state.lagging());
    }
}
