//! The `scale` part of `make bench`: 3 relay replicas on a 3-node NATS cluster, a NATS node
//! SIGKILLed halfway — the stream's leader at that moment (the worst case), or the node
//! `BENCH_KILL_NODE` names (`relay-nats-1` to `relay-nats-3`); the shared rows checked against
//! the sweep's capacity model when the sweep ran.

use super::processes::{killed_node, start_relay, Nats};
use super::report::{Report, Settings};
use super::rows::{relay_run, Row};
use super::sweep::CapacityModel;

pub async fn run(settings: &Settings, report: &mut Report, model: Option<&CapacityModel>) {
    // The 1:10 run of docs/scaling.md: 10,000 clients over 3 replicas (the model's worked
    // example is 100,000).
    let scale_clients = if settings.quick { 300 } else { 10_000 };
    report.emit(String::new());
    let killed = match killed_node().as_str() {
        "leader" => "the NATS node leading the stream".to_owned(),
        node => format!("NATS node {node}"),
    };
    report.emit(format!("Scale-out: 3 relay replicas on a fresh 3-node NATS cluster (R3 stream) per mode, clients spread round robin, {killed} SIGKILLed halfway.\n"));
    report.emit(Row::header());
    for &mode in &settings.modes {
        let mut cluster = Nats::cluster().await;
        let mut relays = Vec::new();
        for _ in 0..3 {
            relays.push(start_relay(&cluster.url_list(), 3, mode, &[]).await);
        }
        let row = relay_run(
            &mut cluster,
            &relays,
            format!("{mode}×3"),
            scale_clients,
            settings.rates[0] as u32,
            settings.seconds.max(6.0),
            true,
        )
        .await;
        for relay in relays {
            relay.kill().await;
        }
        cluster.stop().await;
        report.emit(row.line());
        if let (Some(model), "shared") = (model, mode) {
            report.emit(model.check(&row, 3));
        }
        report.tally.add("scale", row.lost, row.duplicated);
    }
}
