//! Runs one relay replica: NATS connection, stream watcher, HTTP server, shutdown.

use std::future::IntoFuture;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{router, AppState};
use crate::jetstream::{self, EventStore, ServerTooOld};
use crate::readiness::Readiness;

/// Why a replica stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("NATS connection options: {0}")]
    Nats(std::io::Error),
    #[error(transparent)]
    ServerTooOld(#[from] ServerTooOld),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Serves until `shutdown` is cancelled, then lets open streams end and returns.
/// `on_ready` is told the bound address (useful with port 0) the first time the replica is ready.
pub async fn serve(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(std::net::SocketAddr) + Send + 'static,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let readiness = Arc::new(Readiness::default());
    let wake = Arc::new(Notify::new());

    let store = EventStore::connect(&config, {
        let readiness = readiness.clone();
        let wake = wake.clone();
        move |event| {
            tracing::info!(%event, "nats connection event");
            if matches!(event, async_nats::Event::Disconnected) {
                readiness.set_nats_connected(false);
            }
            wake.notify_one();
        }
    })
    .await
    .map_err(ServeError::Nats)?;

    let manage = config.stream_manage.then(|| config.stream_settings());
    let watcher = tokio::spawn(jetstream::watch_stream(
        store.clone(),
        manage,
        readiness.clone(),
        wake,
        shutdown.clone(),
    ));

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Http)?;
    tracing::info!(addr = %local, replica = store.replica_id(), "listening");
    tokio::spawn({
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        async move {
            while readiness.check().is_err() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
                }
            }
            on_ready(local);
        }
    });

    let state = AppState {
        config: config.clone(),
        store,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
    };
    let app = router(state);
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let shutdown = shutdown.clone();
        let readiness = readiness.clone();
        async move {
            shutdown.cancelled().await;
            readiness.start_draining();
            tracing::info!("shutting down");
        }
    });

    let server = server.into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.map_err(ServeError::Http),
        // The watcher only returns early for a server the relay must not use; on shutdown
        // it returns Ok and the server finishes draining.
        Ok(Err(too_old)) = watcher => Err(ServeError::ServerTooOld(too_old)),
    }
}
