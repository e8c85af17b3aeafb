//! Runs one relay replica: NATS connection, stream watcher, HTTP server, and the drain that ends
//! it.
//!
//! Drain (on `shutdown`): `/readyz` turns 503 and new streams get `503 draining` at once; the
//! shedder ends the open streams (`relay.drain`, a jittered `retry:`) spread over three quarters
//! of `RELAY_DRAIN_TIMEOUT`; once all are closed (or the time is up) the HTTP server stops, the
//! consumers' deletions are awaited, and `serve` returns. The shedder also ends streams while
//! the replica runs: cut off from NATS, lagging, or past their age (`crate::shedding`).

use std::sync::Arc;
use std::time::Duration;

use ::metrics::gauge;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, FanoutMode};
use crate::fanout::{Fanout, LiveTail, TailSettings};
use crate::http::{self, admin_router, router, AppState, ServeSettings, StallGuardedListener};
use crate::jetstream::{self, EventStore, ServerTooOld};
use crate::readiness::{Readiness, STALE_AFTER};
use crate::shedding::{LiveLag, Shedder};
use crate::telemetry::metrics::{self, INFO, MAX_CONNECTIONS};

/// Connections the admin listener holds at once: probes and a few scrapers.
const ADMIN_CONNECTIONS: usize = 64;

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
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    ServerTooOld(#[from] ServerTooOld),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Serves until `shutdown` is cancelled, then drains and returns.
/// `on_ready` is told the bound address (useful with port 0) the first time the replica is ready.
pub async fn serve(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(std::net::SocketAddr) + Send + 'static,
) -> Result<(), ServeError> {
    metrics::install();
    let config = Arc::new(config);
    // Not ready once the stream has not been found reachable for a few seconds, and in any case
    // before streams are shed for it: shed clients must not be sent back here.
    let stale_after = match config.shed_unreachable_after {
        Duration::ZERO => STALE_AFTER,
        shed => shed.min(STALE_AFTER),
    };
    let readiness = Arc::new(Readiness::new(stale_after));
    readiness.set_nats_connected(false);
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
    let draining = CancellationToken::new();
    let tail_stop = CancellationToken::new();
    let mut tail_task = None;
    let live_lag = Arc::new(LiveLag::new(config.shed_lag));
    let fanout = match config.fanout {
        FanoutMode::Consumer => Fanout::Consumer(Box::new(store.clone())),
        FanoutMode::Shared => {
            let tail = LiveTail::new(
                store.clone(),
                TailSettings {
                    ring_events: config.ring_events,
                    ring_bytes: config.ring_bytes,
                    client_backlog: config.client_backlog,
                },
                live_lag.clone(),
            );
            readiness.set_live_tail_pending(true);
            let started = readiness.clone();
            tail_task = Some(tokio::spawn(
                tail.clone().run(tail_stop.clone(), move || {
                    started.set_live_tail_pending(false)
                }),
            ));
            Fanout::Shared(tail)
        }
    };
    let state = AppState::new(config.clone(), fanout, readiness.clone(), live_lag)?;
    let limits = state.limits.clone();
    let presence_stop = CancellationToken::new();
    let presence_task = state.presence.clone().map(|presence| {
        let replicas = jetstream::StreamSettings::from_config(&config).replicas;
        tokio::spawn(presence.run(store.clone(), replicas, presence_stop.clone()))
    });
    gauge!(MAX_CONNECTIONS).set(config.max_connections as f64);
    let fanout_name = match config.fanout {
        FanoutMode::Consumer => "consumer",
        FanoutMode::Shared => "shared",
    };
    gauge!(INFO, "version" => env!("CARGO_PKG_VERSION"), "fanout" => fanout_name).set(1.0);
    let shedder_stop = CancellationToken::new();
    let _shedder_guard = shedder_stop.clone().drop_guard();
    tokio::spawn(
        Shedder {
            streams: state.streams.clone(),
            readiness: readiness.clone(),
            lag: state.live_lag.clone(),
            unreachable_after: config.shed_unreachable_after,
            draining: draining.clone(),
            // Three quarters of the drain timeout: the rest is for closing and deleting consumers.
            drain_spread: config.drain_timeout.mul_f64(0.75),
        }
        .run(shedder_stop),
    );
    tokio::spawn({
        let (poll_rate, shutdown) = (state.poll_rate.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => poll_rate.forget_idle(),
                }
            }
        }
    });

    let watcher_stop = CancellationToken::new();
    let mut watcher = tokio::spawn(jetstream::watch_stream(
        store.clone(),
        config
            .stream_manage
            .then(|| jetstream::StreamSettings::from_config(&config)),
        match config.fanout {
            FanoutMode::Consumer => jetstream::CONSUMER_MODE_SERVER,
            FanoutMode::Shared => jetstream::SHARED_MODE_SERVER,
        },
        readiness.clone(),
        wake,
        watcher_stop.clone(),
    ));

    let bind = |addr: std::net::SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })
    };
    let listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let local = listener.local_addr().map_err(ServeError::Http)?;
    let admin_local = admin_listener.local_addr().map_err(ServeError::Http)?;
    tracing::info!(addr = %local, admin = %admin_local, replica = store.replica_id(), "listening");
    tokio::spawn(announce_when_ready(
        readiness.clone(),
        shutdown.clone(),
        local,
        on_ready,
    ));

    let stop_http = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let listener = StallGuardedListener::new(listener, config.write_timeout);
    let admin_listener = StallGuardedListener::new(admin_listener, config.write_timeout);
    let admin = tokio::spawn(http::serve(
        admin_listener,
        admin_router(state.clone()),
        ServeSettings {
            header_read_timeout: config.header_read_timeout,
            max_connections: ADMIN_CONNECTIONS,
        },
        stop_admin.clone(),
    ));
    // Stops the admin listener however `serve` returns; it answers `/readyz` (503) during a drain.
    let _admin_guard = stop_admin.clone().drop_guard();
    // Its own task: it must keep accepting (and refusing with 503) while the drain runs.
    let public = ServeSettings {
        header_read_timeout: config.header_read_timeout,
        max_connections: config
            .max_connections
            .saturating_add(config.max_pending_connections)
            .min(tokio::sync::Semaphore::MAX_PERMITS),
    };
    let mut server = tokio::spawn(http::serve(
        listener,
        router(state),
        public,
        stop_http.clone(),
    ));

    tokio::select! {
        result = &mut server => {
            return match result {
                Ok(result) => result.map_err(ServeError::Http),
                Err(join) => Err(ServeError::Http(std::io::Error::other(join))),
            };
        }
        // The watcher only returns early for a server the relay must not use.
        Ok(Err(too_old)) = &mut watcher => return Err(ServeError::ServerTooOld(too_old)),
        _ = shutdown.cancelled() => {}
    }

    let deadline = Instant::now() + config.drain_timeout;
    readiness.start_draining();
    draining.cancel();
    tracing::info!(open = limits.active(), timeout = ?config.drain_timeout, "draining");
    // Streams close themselves, spread over three quarters of the timeout.
    let streams_deadline = deadline - config.drain_timeout / 8;
    let _ = tokio::time::timeout_at(streams_deadline, limits.all_closed()).await;
    stop_http.cancel();
    // Its streams are closed: the replica's presence keys are deleted, so peers stop counting it.
    presence_stop.cancel();
    watcher_stop.cancel();
    tail_stop.cancel();
    match tokio::time::timeout_at(deadline, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::warn!(error = %err, "HTTP server ended with an error"),
        Ok(Err(err)) => tracing::warn!(error = %err, "HTTP server task failed"),
        Err(_) => tracing::warn!(open = limits.active(), "drain timeout reached"),
    }
    // The live tail hands its consumer's deletion to the store when it ends: before the store's
    // deletions are awaited.
    if let Some(tail) = tail_task {
        if tokio::time::timeout_at(deadline, tail).await.is_err() {
            tracing::warn!("the live tail did not stop before the drain timeout");
        }
    }
    if let Some(presence) = presence_task {
        if tokio::time::timeout_at(deadline, presence).await.is_err() {
            tracing::warn!("presence not withdrawn before the drain timeout");
        }
    }
    store.finish_deletions(deadline).await;
    stop_admin.cancel();
    if tokio::time::timeout_at(deadline, admin).await.is_err() {
        tracing::warn!("the admin listener did not stop before the drain timeout");
    }
    tracing::info!("drained");
    let flushing = tokio::task::spawn_blocking(crate::telemetry::flush);
    if tokio::time::timeout_at(deadline, flushing).await.is_err() {
        tracing::warn!("spans not flushed before the drain timeout");
    }
    Ok(())
}

async fn announce_when_ready(
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    local: std::net::SocketAddr,
    on_ready: impl FnOnce(std::net::SocketAddr),
) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = readiness.ready() => on_ready(local),
    }
}
