//! What every part shares besides the load: the run's settings, the report (every line printed
//! and kept for `docs/benchmarks-raw.md`, the lost/dup tally), and the environment it reads.

use super::{pushpin, FLOOR, MODES, PEERS};

const OPEN_FILES_LIMIT: u64 = 20_000;

/// What the parts run with, read once in `main`.
pub struct Settings {
    /// `BENCH_QUICK=1`: a smoke run.
    pub quick: bool,
    /// The relay's fan-out modes selected (`BENCH_MODES`); every part runs once per mode.
    pub modes: Vec<&'static str>,
    /// The sweep's client counts and rates (`BENCH_CLIENTS`, `BENCH_RATES`).
    pub clients: Vec<u64>,
    pub rates: Vec<u64>,
    /// Publishing time per row (`BENCH_SECONDS`).
    pub seconds: f64,
    /// The sweep's `pushpin` rows.
    pub with_pushpin: bool,
    /// The sweep's `floor` rows.
    pub with_floor: bool,
    /// Why a peer selected has no rows (its binaries are missing), to print.
    pub peers_left_out: Option<String>,
    /// Neither `BENCH_CLIENTS`, `BENCH_RATES` nor `BENCH_SECONDS` is set.
    pub default_sweep: bool,
}

impl Settings {
    /// From the environment; exits with status 2 on a mode it does not know, or on `pushpin`
    /// named in `BENCH_MODES` without its binaries.
    pub fn from_env() -> Settings {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
        let known_modes: Vec<&'static str> = MODES
            .iter()
            .chain(&[FLOOR])
            .chain(&PEERS)
            .copied()
            .collect();
        let selected_modes = selection("BENCH_MODES", &known_modes);
        // The relay's modes (every part); the floor and the peers (the sweep only).
        let modes: Vec<&'static str> = selected_modes
            .iter()
            .copied()
            .filter(|m| MODES.contains(m))
            .collect();
        // Pushpin: in the default selection when it can run; named without its binaries, an
        // error.
        let pushpin_missing = pushpin::missing_binaries();
        let pushpin_selected = selected_modes.contains(&"pushpin");
        if pushpin_selected
            && !pushpin_missing.is_empty()
            && std::env::var_os("BENCH_MODES").is_some()
        {
            eprintln!(
                "BENCH_MODES names pushpin, but {} not on PATH: install Debian's pushpin (apt-get install pushpin condure zurl; `make bench` installs them when missing)",
                pushpin_missing.join(", ")
            );
            std::process::exit(2);
        }
        let with_pushpin = pushpin_selected && pushpin_missing.is_empty();
        let peers_left_out = (pushpin_selected && !with_pushpin).then(|| {
            format!(
                "(No pushpin rows: {} not on PATH; `make bench` installs Debian's pushpin.)",
                pushpin_missing.join(", ")
            )
        });
        let default_sweep = !["BENCH_CLIENTS", "BENCH_RATES", "BENCH_SECONDS"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        let clients = list_env(
            "BENCH_CLIENTS",
            if quick {
                &[100, 500]
            } else {
                &[100, 1000, 5000, 10000]
            },
        );
        let rates = list_env("BENCH_RATES", if quick { &[200] } else { &[100, 1000] });
        let seconds: f64 = std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if quick { 3.0 } else { 10.0 });
        Settings {
            quick,
            modes,
            clients,
            rates,
            seconds,
            with_pushpin,
            with_floor: selected_modes.contains(&FLOOR),
            peers_left_out,
            default_sweep,
        }
    }
}

/// The run's output: every line printed at once and kept, and the lost/dup tally.
#[derive(Default)]
pub struct Report {
    pub out: String,
    pub tally: Tally,
}

impl Report {
    /// Prints `line` and keeps it.
    pub fn emit(&mut self, line: String) {
        println!("{line}");
        self.out.push_str(&line);
        self.out.push('\n');
    }
}

pub fn list_env(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1024.0
                    / 1024.0
            })
        })
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem:.0} GiB, Linux {}, open files limit {OPEN_FILES_LIMIT} per process", kernel.trim())
}

/// The names a comma-separated variable selects out of `known` (all of them when it is unset),
/// in `known`'s order; exits with status 2 on a name it does not know.
pub fn selection(var: &str, known: &[&'static str]) -> Vec<&'static str> {
    let Ok(value) = std::env::var(var) else {
        return known.to_vec();
    };
    let names: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
        eprintln!("{var}: unknown '{unknown}' (known: {})", known.join(","));
        std::process::exit(2);
    }
    if names.is_empty() {
        eprintln!(
            "{var} is set but names nothing (known: {})",
            known.join(",")
        );
        std::process::exit(2);
    }
    known
        .iter()
        .copied()
        .filter(|k| names.contains(k))
        .collect()
}

/// Lost and duplicated events, by part.
#[derive(Default)]
pub struct Tally {
    pub parts: Vec<(String, u64, u64)>,
}

impl Tally {
    pub fn add(&mut self, part: &str, lost: u64, duplicated: u64) {
        match self.parts.iter_mut().find(|(p, _, _)| p == part) {
            Some((_, l, d)) => {
                *l += lost;
                *d += duplicated;
            }
            None => self.parts.push((part.to_owned(), lost, duplicated)),
        }
    }

    /// Lost and duplicated over sse-relay's parts, the floor and the ceiling — what the run's
    /// exit status stands for. A peer's losses (`sweep (pushpin)`) are findings about the peer: reported,
    /// not failed on.
    pub fn total(&self) -> (u64, u64) {
        self.parts
            .iter()
            .filter(|(part, _, _)| !Self::is_peer(part))
            .fold((0, 0), |(l, d), (_, pl, pd)| (l + pl, d + pd))
    }

    pub fn is_peer(part: &str) -> bool {
        PEERS.iter().any(|peer| part == format!("sweep ({peer})"))
    }
}
