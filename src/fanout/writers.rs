//! Who writes the queues of clients waiting idle on their sockets (`direct.rs`): the thread
//! that took the event in, and helper threads of their own. At thousands of clients per event a
//! single writer becomes the replica's bottleneck — one core busy with socket writes while the
//! other waits — so each event's writes are shared out: a helper gets a share, the taking-in
//! thread keeps the rest. A share is a list of clients, not of frames: each client's queue is
//! written under its own lock, from its front, whoever writes it, so frames reach a socket in
//! order whichever thread writes them.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::task::Waker;

use super::direct::Tally;
use crate::shedding::LiveLag;

/// A client whose queue can be written to its socket.
pub(super) trait WriteQueued: Send + Sync + 'static {
    /// Writes what the client may be written now; its waker when its task must take over.
    fn write_queued(&self, tally: &mut Tally<'_>) -> Option<Waker>;
}

/// Fewer clients than this per writer are written by the taking-in thread alone: handing a
/// share over costs a cross-thread wake-up, about what a few socket writes cost.
const MIN_SHARE: usize = 16;

/// Shares not yet taken up a helper may have waiting; beyond it the taking-in thread writes.
const SHARES_WAITING: usize = 64;

pub(super) struct DirectWriters<T> {
    live_lag: Arc<LiveLag>,
    helpers: Vec<SyncSender<Vec<Arc<T>>>>,
}

impl<T: WriteQueued> DirectWriters<T> {
    /// Writers counting their lag in `live_lag`, with `helpers` threads beside the taking-in one.
    pub(super) fn new(live_lag: Arc<LiveLag>, helpers: usize) -> Self {
        let helpers = (0..helpers)
            .filter_map(|i| {
                let (shares, receiver) = mpsc::sync_channel(SHARES_WAITING);
                let live_lag = live_lag.clone();
                std::thread::Builder::new()
                    .name(format!("direct-writer-{i}"))
                    .spawn(move || help(&live_lag, receiver))
                    .map_err(|err| tracing::warn!(error = %err, "no direct-writer thread"))
                    .ok()
                    .map(|_| shares)
            })
            .collect();
        Self { live_lag, helpers }
    }

    /// Writes the queues of `clients`, sharing them with the helpers when there are enough;
    /// the wakers of clients whose tasks must take over go to `wake`.
    pub(super) fn write(&self, mut clients: Vec<Arc<T>>, wake: &mut Vec<Waker>) {
        if clients.is_empty() {
            return;
        }
        let share = clients.len() / (self.helpers.len() + 1);
        if share >= MIN_SHARE {
            for helper in &self.helpers {
                let theirs = clients.split_off(clients.len() - share);
                match helper.try_send(theirs) {
                    Ok(()) => {}
                    Err(TrySendError::Full(theirs) | TrySendError::Disconnected(theirs)) => {
                        clients.extend(theirs);
                    }
                }
            }
        }
        let mut tally = Tally::new(&self.live_lag);
        for client in clients {
            wake.extend(client.write_queued(&mut tally));
        }
    }
}

/// A helper: writes the shares it is given until the registry is gone.
fn help<T: WriteQueued>(live_lag: &LiveLag, shares: Receiver<Vec<Arc<T>>>) {
    for share in shares {
        let mut tally = Tally::new(live_lag);
        for client in share {
            if let Some(waker) = client.write_queued(&mut tally) {
                waker.wake();
            }
        }
    }
}
