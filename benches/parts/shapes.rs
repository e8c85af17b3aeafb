//! The `shapes` part of `make bench`: the two shapes a replica's live source can take, on a
//! stream of many subjects of which a replica's clients watch all, a tenth or a hundredth: one
//! firehose consumer (the `shared` mode) against one ordered consumer per watched subject (what
//! the `consumer` mode does with one client per subject); relay and nats-server CPU, consumers.

use super::processes::{start_relay, Nats};
use super::report::{Report, Settings};
use super::rows::{relay_run_over, Load};

pub async fn run(settings: &Settings, report: &mut Report) {
    let seconds = settings.seconds;
    let (published, rate) = if settings.quick {
        (200, 200)
    } else {
        (1000, 1000)
    };
    report.emit(String::new());
    report.emit(format!("Live source shapes: {rate} events/s over {published} subjects; one client per watched subject, so deliveries are the same in both shapes and the difference is what the source costs. firehose = the `shared` mode's one consumer for the whole stream; per subject = one ordered consumer per watched subject (the `consumer` mode with one client per subject).\n"));
    report.emit("| shape | subjects watched | events taken in /s | deliveries /s | relay CPU % | nats CPU % | nats RSS MiB | consumers | p99 ms | lost | dup |\n|---|---|---|---|---|---|---|---|---|---|---|".to_owned());
    for watched in [published, published / 10, published / 100] {
        for &mode in &settings.modes {
            let (shape, taken_in) = match mode {
                "shared" => ("firehose", rate as usize),
                _ => ("per subject", rate as usize * watched / published),
            };
            let mut nats = Nats::single().await;
            let relay = start_relay(&nats.url_list(), 1, mode, &[]).await;
            let load = Load {
                clients: watched,
                rate,
                seconds,
                subjects: published,
                payload_bytes: 0,
            };
            let row = relay_run_over(
                &mut nats,
                std::slice::from_ref(&relay),
                mode.to_owned(),
                load,
                false,
            )
            .await;
            relay.kill().await;
            nats.stop().await;
            report.emit(format!(
                "| {shape} | {watched} | {taken_in} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} | {} |",
                row.delivered_per_s,
                row.relay.as_ref().map_or(0.0, |r| r.cpu),
                row.nats_cpu,
                row.nats_rss,
                row.consumers.map_or("?".to_owned(), |n| n.to_string()),
                row.p99,
                row.lost,
                row.duplicated,
            ));
            report.tally.add("shapes", row.lost, row.duplicated);
        }
    }
}
