//! The HTTP/1.1 server loop: one task per connection. A connection whose first request asks
//! for an event stream is served on the lean path (`lean.rs`); every other one by hyper's HTTP/1
//! connection directly, with hyper-util's graceful shutdown (which waits for both).
//!
//! `axum::serve` runs every connection through hyper-util's auto (HTTP/1 + HTTP/2) connection,
//! which costs about 7 KiB more per idle connection than an HTTP/1 connection alone (17.5 vs
//! 10.4 KiB measured with 3,000 idle streams) — a third of an SSE connection's memory. The
//! relay speaks HTTP/1.1 only (browsers reach it through an ingress), so it serves that alone.
//!
//! Two bounds keep sockets that never become streams from piling up (`docs/api.md` §3): a
//! request head (and an idle keep-alive connection's next one) must arrive within
//! `RELAY_HEADER_READ_TIMEOUT`, and the listener holds at most a fixed number of TCP
//! connections — SSE streams and the rest together — answering any beyond it with a 503.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::lean::{self, First, Rewind};
use super::StallGuardedListener;
use crate::telemetry::metrics::CONNECTIONS_REJECTED;

/// How one listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// Time allowed for a request head, counted from when the connection waits for one.
    pub header_read_timeout: Duration,
    /// TCP connections the listener holds at once.
    pub max_connections: usize,
}

/// What a connection over the listener's bound is told before it is closed: the relay's usual
/// error body, written by hand because no HTTP connection is set up for it.
fn over_capacity() -> &'static [u8] {
    static RESPONSE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let body =
            r#"{"error":"not_ready","message":"this replica holds its maximum of connections"}"#;
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    &RESPONSE
}

/// Serves `router` on `listener` until `stop`; then stops accepting, lets each open connection
/// finish its response (SSE streams end themselves in a drain) and returns once all are closed.
pub async fn serve(
    mut listener: StallGuardedListener,
    router: Router,
    settings: ServeSettings,
    stop: CancellationToken,
) -> io::Result<()> {
    let connections = GracefulShutdown::new();
    let capacity = Arc::new(Semaphore::new(settings.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok(permit) = capacity.clone().try_acquire_owned() else {
            metrics::counter!(CONNECTIONS_REJECTED, "reason" => "connection_limit").increment(1);
            tokio::spawn(async move {
                // Best effort, and never waiting long on a client that does not read.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    stream.write_all(over_capacity()).await?;
                    stream.shutdown().await
                })
                .await;
            });
            continue;
        };
        let watcher = connections.watcher();
        let (router, http) = (router.clone(), http.clone());
        let header_read_timeout = settings.header_read_timeout;
        tokio::spawn(async move {
            match lean::first_request(&mut stream, header_read_timeout, peer).await {
                // Watched until it ends: a shutdown waits for it (streams end in the drain).
                First::Stream(request) => {
                    lean::serve_stream(stream, router, request).await;
                    drop(watcher);
                }
                First::Other(read) => {
                    // The peer travels on each request (the timeline's per-client poll budget
                    // reads it).
                    let service = TowerToHyperService::new(router.map_request(
                        move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                            request.extensions_mut().insert(ConnectInfo(peer));
                            request
                        },
                    ));
                    let io = TokioIo::new(Rewind::new(read, stream));
                    let connection = watcher.watch(http.serve_connection(io, service));
                    if let Err(err) = connection.await {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                }
                First::Closed => drop(watcher),
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}
