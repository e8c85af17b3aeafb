//! Prometheus metrics (`docs/api.md` §9), through the `metrics` facade so the modules that count do
//! not depend on the exporter. Hot-path handles are resolved once per connection.

use std::sync::OnceLock;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "relay_connections";
pub const CONNECTIONS_REJECTED: &str = "relay_connections_rejected_total";
pub const EVENTS_DELIVERED: &str = "relay_events_delivered_total";
pub const RESUMES: &str = "relay_resumes_total";
pub const CONSUMERS_CREATED: &str = "relay_consumers_created_total";
pub const CONSUMERS_DELETED: &str = "relay_consumers_deleted_total";
pub const DELIVERY_LAG: &str = "relay_delivery_lag_seconds";
pub const NATS_CONNECTED: &str = "relay_nats_connected";
pub const DRAINING: &str = "relay_draining";
pub const HTTP_REQUESTS: &str = "relay_http_requests_total";
pub const LIVE_SOURCES: &str = "relay_live_sources";
pub const RING_HITS: &str = "relay_ring_hits_total";
pub const RING_MISSES: &str = "relay_ring_misses_total";
pub const CATCH_UP_PAGES: &str = "relay_catch_up_pages_total";
pub const HANDOVERS: &str = "relay_handovers_total";
pub const CLIENTS_LAGGED: &str = "relay_clients_lagged_total";
pub const EVENTS_WRITTEN_DIRECTLY: &str = "relay_events_written_directly_total";
pub const STREAMS_SHED: &str = "relay_streams_shed_total";
pub const LIVE_LAG: &str = "relay_live_lag_seconds";
pub const MAX_CONNECTIONS: &str = "relay_max_connections";
pub const READY: &str = "relay_ready";
pub const INFO: &str = "relay_info";
pub const PRESENCE_PUBLISHED: &str = "relay_presence_messages_published_total";
pub const PRESENCE_RECEIVED: &str = "relay_presence_messages_received_total";
pub const PRESENCE_REPLICAS: &str = "relay_presence_replicas";

/// Delivery lag buckets: from a millisecond (live events) to minutes (a replayed backlog).
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide recorder (once) and registers every series at zero, so a scrape
/// shows the full set from the start.
///
/// The exporter queues every histogram sample (one per delivered event) until a scrape or an
/// upkeep folds them into buckets; `PrometheusBuilder::install` would run that upkeep, a
/// recorder built by hand must: an unscraped relay would otherwise grow by ~24 bytes per
/// delivery. A plain thread does it, so it runs whatever the runtime is doing.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DELIVERY_LAG.to_owned()), LAG_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(LIVE_LAG.to_owned()), LAG_BUCKETS))
            // Only an empty bucket list fails, which LAG_BUCKETS is not.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "no metrics upkeep thread; histograms grow until scraped");
        }
        handle
    })
}

/// The Prometheus text exposition.
pub fn render() -> String {
    install().render()
}

fn describe() {
    describe_gauge!(
        CONNECTIONS,
        "Open SSE connections, by kind (deployment, pavilion, multi)"
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "SSE requests refused, by reason (limit, key_limit, not_ready, draining, unauthorized, forbidden), and TCP connections over the listener's bound (connection_limit)"
    );
    describe_counter!(EVENTS_DELIVERED, "Events written to SSE clients");
    describe_counter!(RESUMES, "SSE connections opened with a resume point");
    describe_counter!(
        CONSUMERS_CREATED,
        "Ordered consumers created (including re-creations)"
    );
    describe_counter!(CONSUMERS_DELETED, "Ordered consumers deleted by the relay");
    describe_histogram!(
        DELIVERY_LAG,
        Unit::Seconds,
        "Now minus the message's JetStream timestamp, at delivery"
    );
    describe_histogram!(
        LIVE_LAG,
        Unit::Seconds,
        "Live deliveries only (events stored after the stream opened): now minus the message's JetStream timestamp, at delivery"
    );
    describe_counter!(
        STREAMS_SHED,
        "Streams the replica ended on purpose with relay.drain, by reason (shutdown, unavailable, overloaded, rebalance)"
    );
    describe_gauge!(
        MAX_CONNECTIONS,
        "The configured limit of SSE connections (RELAY_MAX_CONNECTIONS)"
    );
    describe_gauge!(
        READY,
        "1 while /readyz answers 200 (NATS, stream, live tail, not lagging, not draining)"
    );
    describe_gauge!(
        INFO,
        "Always 1; labels: version, fanout (consumer or shared): what alerts and dashboards select on"
    );
    describe_counter!(
        PRESENCE_PUBLISHED,
        "Presence writes to the bucket (a replica's changed subjects, keep-alives, deletions)"
    );
    describe_counter!(
        PRESENCE_RECEIVED,
        "Presence entries read from the bucket's watch (every replica's writes)"
    );
    describe_gauge!(
        PRESENCE_REPLICAS,
        "Replicas whose presence this one counts (itself included)"
    );
    describe_gauge!(NATS_CONNECTED, "1 while connected to NATS");
    describe_gauge!(DRAINING, "1 while the replica drains for shutdown");
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status");
    describe_gauge!(
        LIVE_SOURCES,
        "Shared mode: live sources (stream-wide ordered consumers) this replica follows"
    );
    describe_counter!(
        RING_HITS,
        "Shared mode: catch-ups and timeline pages served from the in-memory ring"
    );
    describe_counter!(
        RING_MISSES,
        "Shared mode: catch-ups and timeline pages the ring did not reach back for (read from JetStream)"
    );
    describe_counter!(
        CATCH_UP_PAGES,
        "Shared mode: catch-up pages read from JetStream with batched direct gets"
    );
    describe_counter!(
        HANDOVERS,
        "Shared mode: clients switched from catch-up to the live tail"
    );
    describe_counter!(
        CLIENTS_LAGGED,
        "Shared mode: times a client fell a whole backlog behind the live tail and went back to catch-up"
    );
    describe_counter!(
        EVENTS_WRITTEN_DIRECTLY,
        "Shared mode: deliveries the live tail wrote to an idle client's socket itself (also counted in relay_events_delivered_total)"
    );
    for kind in ["deployment", "pavilion", "multi"] {
        gauge!(CONNECTIONS, "kind" => kind).set(0.0);
    }
    for reason in [
        "limit",
        "key_limit",
        "connection_limit",
        "not_ready",
        "draining",
        "unauthorized",
        "forbidden",
    ] {
        counter!(CONNECTIONS_REJECTED, "reason" => reason).absolute(0);
    }
    for reason in crate::shedding::ShedReason::ALL {
        counter!(STREAMS_SHED, "reason" => reason.as_str()).absolute(0);
    }
    for name in [
        EVENTS_DELIVERED,
        RESUMES,
        CONSUMERS_CREATED,
        CONSUMERS_DELETED,
        RING_HITS,
        RING_MISSES,
        CATCH_UP_PAGES,
        HANDOVERS,
        CLIENTS_LAGGED,
        EVENTS_WRITTEN_DIRECTLY,
        PRESENCE_PUBLISHED,
        PRESENCE_RECEIVED,
    ] {
        counter!(name).absolute(0);
    }
    // Registered, so a scrape lists them before the first delivery.
    let _ = histogram!(DELIVERY_LAG);
    let _ = histogram!(LIVE_LAG);
    gauge!(LIVE_SOURCES).set(0.0);
    gauge!(NATS_CONNECTED).set(0.0);
    gauge!(DRAINING).set(0.0);
    gauge!(READY).set(0.0);
}
