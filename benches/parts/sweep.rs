//! The `sweep` part of `make bench`: for every (C clients, R events/s) one row per relay fan-out
//! mode, the peers' rows (`pushpin`), the least program that does the same job (`floor`,
//! `peers/floor.rs`), and the same load delivered by plain NATS core subscriptions (`ceiling`);
//! then the relay ÷ ceiling and relay ÷ floor tables and the capacity model of
//! `docs/scaling.md` fitted to the shared rows (the `scale` part checks it).

use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;

use super::floor;
use super::processes::Nats;
use super::pushpin;
use super::report::{Report, Settings};
use super::rows::{fresh_row, kib_per_conn, Load, Row};
use super::traffic::{
    check, new_received, publish_load, subject_name, wait_delivered, K_DEPLOYMENTS,
};

/// The sweep's rows and tables.
pub async fn run(settings: &Settings, report: &mut Report) -> Option<CapacityModel> {
    let Settings {
        modes,
        clients,
        rates,
        seconds,
        with_pushpin,
        with_floor,
        ..
    } = settings;
    let (seconds, with_pushpin, with_floor) = (*seconds, *with_pushpin, *with_floor);
    report.emit("Sweep: each relay mode and the NATS-core ceiling side by side for every (C, R). nats RSS is that row's own nats-server's at the end of the row; nats KiB/conn (idle) its growth from start to all clients connected ÷ C; consumers = the stream's consumer_count with every client connected and caught up.\n".to_owned());
    report.emit(Row::header());
    let mut ratios = Vec::new();
    let mut floor_ratios = Vec::new();
    let mut peer_notes = Vec::new();
    let mut fit_rows = Vec::new();
    let mut fanout_ignored = false;
    for &rate in rates {
        for &c in clients {
            let (c, rate) = (c as usize, rate as u32);
            let mut rows = Vec::new();
            for &mode in modes {
                // A fresh nats-server and relay per row: their memory is then this row's alone.
                let load = Load::default_subjects(c, rate, seconds);
                let row = fresh_row(mode, mode.to_owned(), &[], load).await;
                report.emit(row.line());
                report.tally.add("sweep", row.lost, row.duplicated);
                if mode == "shared" && c > 1 && row.consumers.is_some_and(|n| n >= c) {
                    fanout_ignored = true;
                }
                if mode == "shared" {
                    fit_rows.push(ModelRow::of(&row));
                }
                rows.push(row);
            }
            if with_pushpin {
                let (row, note) = pushpin::pushpin_run(c, rate, seconds).await;
                report.emit(row.line());
                report
                    .tally
                    .add("sweep (pushpin)", row.lost, row.duplicated);
                peer_notes.push(note);
                rows.push(row);
            }
            let floor_row = if with_floor {
                let row = floor::floor_run(c, rate, seconds).await;
                report.emit(row.line());
                report.tally.add("sweep (floor)", row.lost, row.duplicated);
                Some(row)
            } else {
                None
            };
            if let Some(floor) = &floor_row {
                floor_ratios.extend(rows.iter().map(|row| per_floor(row, floor)));
            }
            rows.extend(floor_row);
            let mut nats = Nats::single().await;
            nats.create_stream().await;
            let ceiling = ceiling_run(&mut nats, c, rate, seconds).await;
            nats.stop().await;
            report.emit(ceiling.line());
            report
                .tally
                .add("sweep (ceiling)", ceiling.lost, ceiling.duplicated);
            for row in rows {
                ratios.push(format!(
                    "| {} | {c} | {rate} | {:.2} | {:.1}× |",
                    row.mode,
                    row.delivered_per_s / ceiling.delivered_per_s.max(1.0),
                    row.p99 / ceiling.p99.max(0.001)
                ));
            }
        }
    }
    if with_pushpin {
        let max_clients = clients.iter().copied().max().unwrap_or(0) as usize;
        report.emit(String::new());
        report.emit(pushpin::settings_note(max_clients));
        for note in peer_notes {
            report.emit(note);
        }
    }
    report.emit(String::new());
    report.emit("Relay (or peer, or floor) ÷ ceiling, one row per mode:\n".to_owned());
    report.emit("| mode | C | R ev/s | throughput | p99 |\n|---|---|---|---|---|".to_owned());
    for ratio in ratios {
        report.emit(ratio);
    }
    if !floor_ratios.is_empty() {
        report.emit(String::new());
        report.emit("Relay (or peer) ÷ floor, one row per mode: CPU per delivery = the server's CPU over the row ÷ deliveries (µs of one core); p99 and KiB per idle connection from the rows above (— where the floor's is not above 0).\n".to_owned());
        report.emit("| mode | C | R ev/s | CPU µs per delivery | floor's | CPU per delivery ÷ floor | p99 ÷ floor | KiB/conn (idle) ÷ floor |\n|---|---|---|---|---|---|---|---|".to_owned());
        for ratio in floor_ratios {
            report.emit(ratio);
        }
    }
    let model = CapacityModel::fit(&fit_rows);
    if let Some(model) = &model {
        report.emit(String::new());
        report.emit(model.line());
    }
    if fanout_ignored {
        report.emit("\n(The `shared` rows held one JetStream consumer per client: this relay build ignores RELAY_FANOUT, so they measured the consumer mode.)".to_owned());
    }
    model
}

/// CPU per delivery of a row's server (relay, peer or floor), in µs of one core.
fn cpu_us_per_delivery(row: &Row) -> Option<f64> {
    let cpu = row.relay.as_ref()?.cpu;
    (row.delivered_per_s > 0.0).then(|| cpu / 100.0 / row.delivered_per_s * 1e6)
}

/// The relay ÷ floor line of `row` against the floor's row of the same (C, R).
fn per_floor(row: &Row, floor: &Row) -> String {
    let ratio = |of: Option<f64>, base: Option<f64>| match (of, base) {
        (Some(of), Some(base)) if base > 0.0 => format!("{:.1}×", of / base),
        _ => "—".to_owned(),
    };
    let kib = |row: &Row| row.relay.as_ref().map(|r| r.kib_per_conn);
    let (cpu, floor_cpu) = (cpu_us_per_delivery(row), cpu_us_per_delivery(floor));
    let us = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}"));
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        row.mode,
        row.clients,
        row.rate,
        us(cpu),
        us(floor_cpu),
        ratio(cpu, floor_cpu),
        ratio(Some(row.p99), Some(floor.p99)),
        ratio(kib(row), kib(floor)),
    )
}

/// What the capacity model (docs/scaling.md) takes from a shared-mode row.
pub struct ModelRow {
    pub rate: f64,
    pub deliveries: f64,
    /// Relay CPU, in cores.
    pub cpu: f64,
    pub clients: usize,
    pub kib_per_conn: f64,
}

impl ModelRow {
    pub fn of(row: &Row) -> Self {
        let relay = row.relay.as_ref();
        Self {
            rate: f64::from(row.rate),
            deliveries: row.delivered_per_s,
            cpu: relay.map_or(0.0, |r| r.cpu) / 100.0,
            clients: row.clients,
            kib_per_conn: relay.map_or(0.0, |r| r.kib_per_conn),
        }
    }
}

/// docs/scaling.md's model of a shared-mode replica, fitted to this run's sweep rows: CPU =
/// `rate × c_in + deliveries × c_out` (least squares), memory per idle connection `m_conn`
/// (the mean over rows of at least 1,000 clients).
pub struct CapacityModel {
    pub c_in: f64,
    pub c_out: f64,
    pub m_conn: f64,
}

impl CapacityModel {
    pub fn fit(rows: &[ModelRow]) -> Option<Self> {
        // Normal equations of cpu ≈ c_in·rate + c_out·deliveries.
        let (mut rr, mut rd, mut dd, mut rc, mut dc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for r in rows {
            rr += r.rate * r.rate;
            rd += r.rate * r.deliveries;
            dd += r.deliveries * r.deliveries;
            rc += r.rate * r.cpu;
            dc += r.deliveries * r.cpu;
        }
        let det = rr * dd - rd * rd;
        if rows.len() < 2 || det.abs() < f64::EPSILON {
            return None;
        }
        let big: Vec<&ModelRow> = rows.iter().filter(|r| r.clients >= 1000).collect();
        let m_conn = if big.is_empty() {
            0.0
        } else {
            big.iter().map(|r| r.kib_per_conn).sum::<f64>() / big.len() as f64
        };
        Some(Self {
            c_in: (rc * dd - dc * rd) / det,
            c_out: (dc * rr - rc * rd) / det,
            m_conn,
        })
    }

    pub fn line(&self) -> String {
        format!(
            "Capacity model (docs/scaling.md), fitted to the shared rows above: relay CPU = R × {:.2} µs + deliveries/s × {:.2} µs (cores); {:.1} KiB per idle connection.",
            self.c_in * 1e6,
            self.c_out * 1e6,
            self.m_conn
        )
    }

    /// The model's prediction for a run over `replicas` relays beside what it measured.
    pub fn check(&self, row: &Row, replicas: usize) -> String {
        let rate = f64::from(row.rate);
        let cpu_predicted =
            (replicas as f64 * rate * self.c_in + row.delivered_per_s * self.c_out) * 100.0;
        let measured = row.relay.as_ref();
        let cpu_measured = measured.map_or(0.0, |r| r.cpu);
        let mem_predicted = self.m_conn;
        let mem_measured = measured.map_or(0.0, |r| r.kib_per_conn);
        let ratio = |p: f64, m: f64| if m > 0.0 { p / m } else { 0.0 };
        format!(
            "  ↳ model vs measured over {replicas} replicas: relay CPU {cpu_predicted:.0} % vs {cpu_measured:.0} % ({:.2}×); relay KiB per idle connection {mem_predicted:.1} vs {mem_measured:.1} ({:.2}×)",
            ratio(cpu_predicted, cpu_measured),
            ratio(mem_predicted, mem_measured),
        )
    }
}

/// The ceiling: the same subjects and load, delivered by plain NATS core subscriptions. `nats`
/// should be fresh and have the stream (`Nats::create_stream`).
pub async fn ceiling_run(nats: &mut Nats, clients: usize, rate: u32, seconds: f64) -> Row {
    let run = format!("c{}", rand::rng().random::<u32>());
    let connections = clients.div_ceil(100).max(1);
    let mut received = Vec::new();
    let mut subject_of = Vec::new();
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    let nats_rss_before = nats.rss_mib();
    for _ in 0..connections {
        conns.push(
            async_nats::ConnectOptions::new()
                .subscription_capacity(1 << 16)
                .connect(nats.first_url())
                .await
                .expect("connect"),
        );
    }
    for i in 0..clients {
        let s = i % (K_DEPLOYMENTS + 1);
        let mut sub = conns[i % connections]
            .subscribe(subject_name(&run, s).0)
            .await
            .expect("subscribe");
        let rec = new_received();
        received.push(rec.clone());
        subject_of.push(s);
        tasks.push(tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                // Core NATS carries no stream sequence.
                rec.lock().expect("lock").record(0, &message.payload);
            }
        }));
    }
    for c in &conns {
        c.flush().await.ok();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nats_idle_rss = nats.rss_mib() - nats_rss_before;
    let nats_cpu_before = nats.cpu_seconds();
    let started = Instant::now();
    let expected = publish_load(&nats.url_list(), &run, rate, seconds).await;
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = (0..clients).map(|i| expected[subject_of[i]]).sum();
    wait_delivered(received.iter(), total, Duration::from_secs(30)).await;
    let nats_cpu = (nats.cpu_seconds() - nats_cpu_before) / elapsed * 100.0;
    let nats_rss = nats.rss_mib();
    let consumers = nats.consumer_count().await;
    drop(conns);
    for t in tasks {
        t.abort();
    }
    let mut outcome = check(&expected, &subject_of, &received);
    outcome.held = clients;
    let mut row = Row::new("ceiling".to_owned(), clients, rate, outcome, elapsed);
    row.nats_rss = nats_rss;
    row.nats_kib_per_conn = kib_per_conn(nats_idle_rss, clients);
    row.nats_cpu = nats_cpu;
    row.consumers = consumers;
    row
}
