//! `make bench`: the load benchmark (README, *Benchmark*; the analysis is in `docs/benchmarks.md`).
//!
//! Starts its own nats-server(s) and relay(s) on loopback, opens concurrent SSE clients, publishes
//! events spread over K deployments and one pavilion, and checks that every client got every event
//! of its subject exactly once (the `lost` and `dup` columns). Parts, selected with
//! `BENCH_PARTS=sweep,traced,storm,churn,stuck,shapes,scale,presence,faults` (comma-separated;
//! default: all of them):
//!
//! - `sweep`: for every (C clients, R events/s) one row per relay fan-out mode and, beside them in
//!   the same run, the least program that does the same job (`floor`, below) and the same load
//!   delivered by plain NATS core subscriptions (`ceiling`); then a relay ÷ ceiling table and a
//!   relay ÷ floor table (CPU per delivery, p99, KiB per idle connection) with one row per mode
//!   and (C, R);
//! - `traced`: the cost of tracing every delivery (OTLP to a local sink that discards it);
//! - `storm`: a reconnect storm — every client reconnecting with its `Last-Event-ID`, jittered
//!   over 3 s, once after all clients dropped their connections at once (the relay stays) and once
//!   after the relay was SIGKILLed and a new one started; time until all are live again, the
//!   consumers created meanwhile (relay `/metrics` and nats-server advisories);
//! - `churn`: 200 clients each dropping and resuming its connection about every second while
//!   100 events/s flow; relay RSS at start, peak and end;
//! - `stuck`: per mode, 1,000 clients that read (50 with `BENCH_QUICK`) and, on a fresh relay, as
//!   many that stop reading (`SO_RCVBUF` 2 KiB, the response head read, then nothing) while
//!   4 KiB events flow to 5 subjects at 2,000/s, each subject getting twice the kernel's largest
//!   TCP send buffer (8 MiB with the default `tcp_wmem`; less would all fit in the relay's socket
//!   buffers and never stall its writes), `RELAY_WRITE_TIMEOUT=10s`: relay RSS before and after
//!   the load in each row, KiB per stuck reader beyond a reading one, the kernel send queue per
//!   stuck connection, and how many stuck connections the relay shed and when (seconds from the
//!   last event, p50 and max).
//!   Shed = the relay process no longer holds the connection's socket (its fds and
//!   `/proc/<pid>/net/tcp`, polled every 100 ms; the stuck client cannot see the close, as the
//!   relay's FIN waits behind the data it never read); the readers count in lost/dup, the stuck
//!   clients do not (`parts/stuck.rs`);
//! - `shapes`: the two shapes a replica's live source can take, on a stream of many subjects of
//!   which a replica's clients watch all, a tenth or a hundredth: one firehose consumer (the
//!   `shared` mode) against one ordered consumer per watched subject (what the `consumer` mode
//!   does with one client per subject); relay and nats-server CPU, consumers;
//! - `scale`: 3 relay replicas on a 3-node NATS cluster, a NATS node SIGKILLed halfway: the
//!   stream's leader at that moment (the worst case), or the node `BENCH_KILL_NODE` names
//!   (`relay-nats-1` to `relay-nats-3`);
//! - `presence`: what presence costs: the 10,000-client, 1,000 events/s row
//!   with `RELAY_PRESENCE=false` and with presence on, and the presence bucket's writes counted
//!   by a NATS subscriber (messages/s, the most writes of one key against the intervals
//!   elapsed); then a
//!   reconnect storm of the same clients, counted the same way;
//! - `faults`: a fleet that heals itself, on network namespaces of its own: 10,000
//!   clients over 3 replicas, one replica's path to NATS silently cut for 60 s — seconds until
//!   every one of its clients is live elsewhere, lost, dup; then a 4th replica added with
//!   `RELAY_MAX_CONNECTION_AGE=60s` — connections per replica one age later.
//!
//! Fan-out modes (`RELAY_FANOUT`, given to every relay started): `BENCH_MODES=consumer,shared`
//! (default: both) — `consumer` is one JetStream ordered consumer per SSE client, `shared` one live
//! tail per replica fanned out in process. Every part runs once per selected mode.
//!
//! Floor: `BENCH_MODES` also names `floor` (in the default selection): a `floor` row in the sweep
//! (only there) — the same events taken from NATS and written as ready SSE frames straight to
//! the same clients' sockets by a server of the benchmark's own, as a separate process (this
//! executable started again with `BENCH_FLOOR_SERVE`, so its CPU and RSS fill the relay
//! columns as the relay's do): one ordered pull consumer over the whole stream (the relay's
//! shared-mode tail's settings), a hand-read request head, a plain HTTP/1.1 response on TCP,
//! each frame built once and written to every socket of its subject with a non-blocking write,
//! no task per client (`peers/floor.rs`). Its losses count in the exit status.
//!
//! Peers: `BENCH_MODES` also names `pushpin` — Pushpin 1.36 (Debian's `pushpin` package, which
//! `make bench` installs) fed from the same stream by a GRIP backend and a feeder in this process
//! (`peers/pushpin.rs`): a `pushpin` row beside the relay's in the sweep (only there), the same
//! clients and events. In the default selection when its binaries are on `PATH` (a line says so
//! when they are not); named in `BENCH_MODES` without them, the benchmark exits with status 2.
//! The settings it runs with are printed under the sweep table; `BENCH_PUSHPIN_SET` changes them
//! (`section/key=value;…`, e.g. `handler/message_rate=2500` for Debian's rate limit).
//!
//! Every row gets a fresh nats-server (a fresh cluster for `scale`) and a fresh relay (or peer,
//! or floor), so the nats RSS of a row is that row's alone and comparable across client counts;
//! the `consumers` column is the stream's `consumer_count` with all clients connected and caught
//! up.
//!
//! `BENCH_QUICK=1` for a smoke run; `BENCH_CLIENTS=100,1000` and `BENCH_RATES=1000` override the
//! sweep; `BENCH_SECONDS` the publishing time per row; `BENCH_DEBUG=1` prints every client that
//! missed an event. Results go to stdout and — only for a full run: every part, both modes and the floor, the
//! default sweep, no `BENCH_QUICK` — to `docs/benchmarks-raw.md` (`docs/benchmarks.md` is the
//! written analysis of them). Ends with the lost and duplicated totals over every part, and exits
//! with status 1 if either is not 0.
//!
//! Source: this file selects the parts and prints the totals; each part is a module of its own
//! (`parts/<part>.rs`, with its module comment), the peers are in `peers/`, and what the parts
//! share in `common/` — `processes.rs` (nats-server(s), relays, what is measured of them),
//! `traffic.rs` (subjects, the publisher, the SSE clients' reads, the lost/dup check),
//! `rows.rs` (a row of C clients under a load; `fresh_row`: one on a fresh nats-server and relay)
//! and `report.rs` (the settings read from the environment, the output and the tally).

use report::{machine, selection, Report, Settings};
use traffic::K_DEPLOYMENTS;

/// The parts, in the order they run.
const PARTS: [&str; 9] = [
    "sweep", "traced", "storm", "churn", "stuck", "shapes", "scale", "presence", "faults",
];
/// The relay's fan-out modes (`RELAY_FANOUT`).
const MODES: [&str; 2] = ["consumer", "shared"];
/// The sweep's floor: the least program that does the relay's job (`BENCH_MODES` names it).
const FLOOR: &str = "floor";
/// Peers run in the sweep beside the relay's modes (`BENCH_MODES` names them too).
const PEERS: [&str; 1] = ["pushpin"];

// What every part shares: the processes, the load and its check, a row, the report, the client.
#[path = "common/processes.rs"]
mod processes;
#[path = "common/report.rs"]
mod report;
#[path = "common/rows.rs"]
mod rows;
// The raw SSE client the tests use too.
use sse_relay_testkit::raw_client as sse_client;
#[path = "common/traffic.rs"]
mod traffic;

// The parts, one module each.
#[path = "parts/churn.rs"]
mod churn;
#[path = "parts/faults.rs"]
mod faults;
#[path = "parts/presence.rs"]
mod presence;
#[path = "parts/scale.rs"]
mod scale;
#[path = "parts/shapes.rs"]
mod shapes;
#[path = "parts/storm.rs"]
mod storm;
#[path = "parts/stuck.rs"]
mod stuck;
#[path = "parts/sweep.rs"]
mod sweep;
#[path = "parts/traced.rs"]
mod traced;

// The sweep's peers, and its floor (the benchmark's own least server).
#[path = "peers/floor.rs"]
mod floor;
#[path = "peers/pushpin.rs"]
mod pushpin;

fn main() {
    // Started again as the sweep's floor server (`peers/floor.rs`): that, and nothing else.
    floor::serve_if_asked();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench());
}

async fn bench() {
    // reqwest is built with rustls but no crypto provider of its own (see the relay's OTLP client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let parts = selection("BENCH_PARTS", &PARTS);
    let settings = Settings::from_env();
    let Settings {
        quick,
        ref modes,
        seconds,
        with_pushpin,
        with_floor,
        ..
    } = settings;
    // Only a full run replaces docs/benchmarks-raw.md.
    let full_run = !quick
        && parts.len() == PARTS.len()
        && modes.len() == MODES.len()
        && with_floor
        && settings.default_sweep;

    let mut report = Report::default();
    report.emit(format!("Machine: {}", machine()));
    report.emit(format!(
        "Load: K = {K_DEPLOYMENTS} deployments + 1 pavilion, clients spread evenly over them; {seconds} s of publishing per row; latency = publish timestamp in the payload → client receipt. Parts: {}; fan-out modes (RELAY_FANOUT): {}; peers in the sweep: {}; the floor in the sweep: {}. A fresh nats-server and relay (or peer, or floor) for every row.\n",
        parts.join(", "),
        if modes.is_empty() { "none".to_owned() } else { modes.join(", ") },
        if with_pushpin { "pushpin" } else { "none" },
        if with_floor { "yes" } else { "no" }
    ));
    if let Some(line) = &settings.peers_left_out {
        report.emit(format!("{line}\n"));
    }

    // The sweep's capacity model, which the scale-out part checks.
    let mut capacity_model = None;
    for part in parts {
        // Every part but the sweep (which has its peers and the ceiling) needs a relay mode.
        if part != "sweep" && modes.is_empty() {
            continue;
        }
        match part {
            "sweep" => capacity_model = sweep::run(&settings, &mut report).await,
            "traced" => traced::run(&settings, &mut report).await,
            "storm" => storm::run(&settings, &mut report).await,
            "churn" => churn::run(&settings, &mut report).await,
            "stuck" => stuck::run(&settings, &mut report).await,
            "shapes" => shapes::run(&settings, &mut report).await,
            "scale" => scale::run(&settings, &mut report, capacity_model.as_ref()).await,
            "presence" => presence::run(&settings, &mut report).await,
            "faults" => faults::run(&settings, &mut report).await,
            other => unreachable!("part {other} is in PARTS but not run"),
        }
    }

    let (lost, duplicated) = report.tally.total();
    report.emit(String::new());
    report.emit("| lost and duplicated, by part | lost | dup |\n|---|---|---|".to_owned());
    for (part, l, d) in report.tally.parts.clone() {
        report.emit(format!("| {part} | {l} | {d} |"));
    }
    report.emit(format!(
        "| total (sse-relay, the floor and the ceiling; the exit status) | {lost} | {duplicated} |"
    ));

    if full_run {
        let doc = format!(
            "# Benchmark results\n\nProduced by `make bench` ({}): the raw output of the latest full run. The analysis is in [`benchmarks.md`](benchmarks.md).\n\n```\n{}```\n",
            time::OffsetDateTime::now_utc().date(),
            report.out
        );
        let path = format!("{}/docs/benchmarks-raw.md", env!("CARGO_MANIFEST_DIR"));
        match std::fs::write(&path, doc) {
            Ok(()) => println!("\n(written to {path})"),
            Err(e) => eprintln!("\ncould not write {path}: {e}"),
        }
    } else {
        println!("\n(docs/benchmarks-raw.md not written: only a full run — every part, both modes and the floor, the default sweep, no BENCH_QUICK — writes it)");
    }
    if lost > 0 || duplicated > 0 {
        eprintln!("FAILED: {lost} events lost and {duplicated} duplicated over the run");
        std::process::exit(1);
    }
}
