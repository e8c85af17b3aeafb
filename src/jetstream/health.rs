//! Keeps [`Readiness`] true to NATS: polls the connection and the stream, provisions the stream
//! when managed (again after every reconnect), and refuses servers older than 2.10.
//!
//! The ordered consumers never report a missing stream (they retry forever), so readiness must
//! come from here rather than from them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::connect::check_server_version;
use super::{EventStore, ServerTooOld, StreamSettings};
use crate::readiness::Readiness;

/// How often the stream is checked when nothing else wakes the watcher.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until `shutdown`; returns an error only for a server the relay must not use.
pub async fn watch_stream(
    store: EventStore,
    manage: Option<StreamSettings>,
    readiness: Arc<Readiness>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), ServerTooOld> {
    let mut provisioned = false;
    let mut was_ready = false;
    let mut offline_peers: Vec<String> = Vec::new();
    loop {
        let connected = store.is_connected();
        readiness.set_nats_connected(connected);
        let mut reachable = false;
        if connected {
            check_server_version(&store.client().server_info().version)?;
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
                    if offline.iter().any(|p| !offline_peers.contains(p)) {
                        store.reset_consumers("a stream peer went offline");
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
