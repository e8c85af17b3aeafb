//! Keeps [`Readiness`] true to NATS: polls the connection and the stream, provisions the stream
//! when managed (again after every reconnect), and refuses servers older than the fan-out mode needs.
//!
//! The ordered consumers never report a missing stream (they retry forever), so readiness must
//! come from here rather than from them.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::connect::check_server_version;
use super::{EventStore, MinServer, ServerTooOld, StreamSettings};
use crate::readiness::Readiness;

/// How often the stream is checked when nothing else wakes the watcher.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// While a stream peer is offline, consumers are re-created again every this often...
const FAILOVER_RESET_EVERY: Duration = Duration::from_secs(10);
/// ...for this long after the peer went offline: while the cluster reassigns, a consumer can be
/// created on a peer that is already gone and stall without an error.
const FAILOVER_RESET_FOR: Duration = Duration::from_secs(60);

/// When to re-create the feeds' consumers while a stream peer is offline.
#[derive(Debug, Default)]
struct Failover {
    since: Option<Instant>,
    last_reset: Option<Instant>,
}

impl Failover {
    fn should_reset(&mut self, newly_offline: bool, any_offline: bool, now: Instant) -> bool {
        if !any_offline {
            *self = Failover::default();
            return false;
        }
        if newly_offline || self.since.is_none() {
            self.since = Some(now);
            self.last_reset = Some(now);
            return true;
        }
        let within = self
            .since
            .is_some_and(|since| now - since < FAILOVER_RESET_FOR);
        let due = self
            .last_reset
            .is_none_or(|last| now - last >= FAILOVER_RESET_EVERY);
        if within && due {
            self.last_reset = Some(now);
            return true;
        }
        false
    }
}

/// Runs until `shutdown`; returns an error only for a server the relay must not use.
pub async fn watch_stream(
    store: EventStore,
    manage: Option<StreamSettings>,
    min_server: MinServer,
    readiness: Arc<Readiness>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), ServerTooOld> {
    let mut provisioned = false;
    let mut was_ready = false;
    let mut offline_peers: Vec<String> = Vec::new();
    let mut failover = Failover::default();
    loop {
        let connected = store.is_connected();
        readiness.set_nats_connected(connected);
        let mut reachable = false;
        if connected {
            check_server_version(&store.client().server_info().version, min_server)?;
            if let (Some(settings), false) = (&manage, provisioned) {
                match store.provision(settings).await {
                    Ok(()) => {
                        tracing::info!(stream = %settings.name, "stream provisioned");
                        provisioned = true;
                    }
                    Err(err) => tracing::warn!(error = %err, "stream provisioning failed"),
                }
            }
            match store.stream_info().await {
                Ok(info) => {
                    reachable = true;
                    // A stream peer that went offline took the consumers it hosted with it.
                    let offline: Vec<String> = info
                        .cluster
                        .iter()
                        .flat_map(|c| c.replicas.iter())
                        .filter(|peer| peer.offline)
                        .map(|peer| peer.name.clone())
                        .collect();
                    let newly = offline.iter().any(|p| !offline_peers.contains(p));
                    if failover.should_reset(newly, !offline.is_empty(), Instant::now()) {
                        store.reset_consumers("a stream peer is offline");
                    }
                    offline_peers = offline;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "stream unreachable");
                    provisioned = false;
                }
            }
        } else {
            provisioned = false;
        }
        readiness.set_stream_reachable(reachable && store.is_connected());
        let is_ready = readiness.check().is_ok();
        readiness.report();
        if was_ready != is_ready {
            tracing::info!(ready = is_ready, "readiness changed");
            was_ready = is_ready;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = wake.notified() => {}
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_resets_at_once_then_every_ten_seconds_for_a_minute() {
        let mut f = Failover::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!f.should_reset(false, false, at(0)), "healthy: nothing");
        assert!(f.should_reset(true, true, at(1)), "a peer went offline");
        assert!(!f.should_reset(false, true, at(5)));
        assert!(f.should_reset(false, true, at(11)));
        assert!(!f.should_reset(false, true, at(15)));
        assert!(f.should_reset(false, true, at(21)));
        assert!(f.should_reset(false, true, at(51)));
        assert!(!f.should_reset(false, true, at(62)), "a minute is enough");
        assert!(!f.should_reset(false, false, at(70)), "back to healthy");
        assert!(
            f.should_reset(true, true, at(80)),
            "a new failure starts over"
        );
    }
}
