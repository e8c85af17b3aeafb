//! Configuration from `RELAY_*` environment variables (`docs/api.md` §3).
//!
//! Read with `envy` into one flat struct; durations are humantime strings. A value that does not
//! parse refuses start-up with an error naming the variable, because a relay that silently runs
//! with a default its operator did not choose is worse than one that does not start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The stream's name unless `RELAY_STREAM` says otherwise (`nats/stream.json` names it too; a
/// unit test in `jetstream` keeps them equal).
pub const DEFAULT_STREAM: &str = "DEPLOY_EVENTS";

/// Prefix of every variable this module reads.
pub const ENV_PREFIX: &str = "RELAY_";

/// Who may open a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who can reach the relay may subscribe to any valid id.
    #[default]
    None,
    /// A JWT granting the requested subjects is required.
    Jwt,
}

/// How events reach clients (`docs/api.md` §1, `RELAY_FANOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FanoutMode {
    /// One ordered JetStream consumer per SSE connection.
    #[default]
    Consumer,
    /// One live tail per replica, fanned out in process; JetStream only for old cursors.
    Shared,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    #[default]
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// The relay's whole configuration. Field names are the variable names without `RELAY_`,
/// lower-cased (envy's convention).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz`, apart from the public API.
    pub admin_listen: SocketAddr,
    pub fanout: FanoutMode,
    /// Shared mode: recent events (all subjects) each replica keeps for catch-ups.
    pub ring_events: usize,
    /// Shared mode: the most memory (bytes) the ring's events may take.
    pub ring_bytes: usize,
    /// Shared mode: live events a client may have queued before it falls back to catch-up.
    pub client_backlog: usize,
    /// Comma-separated NATS server URLs.
    pub nats_url: String,
    pub nats_creds: Option<PathBuf>,
    pub nats_token: Option<String>,
    pub nats_ca: Option<PathBuf>,
    pub stream: String,
    pub stream_manage: bool,
    /// The stream's settings the operator overrides; unset ones come from `nats/stream.json`
    /// when the stream is provisioned (`jetstream::StreamSettings::from_config`).
    pub stream_replicas: Option<usize>,
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Option<Duration>,
    pub stream_max_msgs_per_subject: Option<i64>,
    /// Consumers the stream allows: one per open SSE connection on every replica. nats-server
    /// 2.15 otherwise applies a default of 1000 per stream.
    pub stream_max_consumers: Option<i32>,
    pub max_connections: usize,
    pub max_connections_per_key: usize,
    /// TCP connections the public listener holds besides `max_connections` streams: requests in
    /// progress, timeline polls, idle keep-alive connections, clients still sending a head.
    pub max_pending_connections: usize,
    /// Time a connection has to send a request head (also an idle keep-alive connection's next
    /// one) before it is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Timeline polls a second per client (0: unlimited), and the burst a client may spend.
    pub timeline_rate: u32,
    pub timeline_burst: u32,
    /// The request header a proxy in front of the relay puts the client's address in (its
    /// right-most entry counts), e.g. `x-forwarded-for`; empty: the TCP peer.
    pub client_address_header: String,
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// A connection whose writes make no progress this long (a client that stopped reading)
    /// is closed.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// NATS or the stream unreachable this long: every open stream is ended (`unavailable`) so
    /// its client resumes on a ready replica. Zero: never.
    #[serde(with = "humantime_serde")]
    pub shed_unreachable_after: Duration,
    /// Live events delivered this late, sustained: the replica turns not ready (`lagging`) and
    /// ends a share of its streams (`overloaded`). Zero: never.
    #[serde(with = "humantime_serde")]
    pub shed_lag: Duration,
    /// A stream older than this (±10 %) ends (`rebalance`), so connections spread over replicas
    /// added later. Zero: unlimited.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// Who is watching each subject, summed over the replicas (`docs/api.md` §12). Off: the
    /// presence endpoints answer 404 and the replica sends and reads nothing for it.
    pub presence: bool,
    /// How often a replica publishes the counts that changed (and a keep-alive); a replica not
    /// heard from for three of them drops out of every count.
    #[serde(with = "humantime_serde")]
    pub presence_interval: Duration,
    pub auth: AuthMode,
    pub jwt_secret: Option<String>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub jwt_audience: Option<String>,
    /// Comma-separated allowed origins; empty means same-origin only.
    pub cors_origins: String,
    pub log: String,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            fanout: FanoutMode::Consumer,
            ring_events: 10_000,
            ring_bytes: 32 * 1024 * 1024,
            client_backlog: 256,
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            nats_creds: None,
            nats_token: None,
            nats_ca: None,
            stream: DEFAULT_STREAM.to_owned(),
            stream_manage: true,
            stream_replicas: None,
            stream_max_age: None,
            stream_max_msgs_per_subject: None,
            stream_max_consumers: None,
            max_connections: 10_000,
            max_connections_per_key: 100,
            max_pending_connections: 1000,
            header_read_timeout: Duration::from_secs(10),
            timeline_rate: 10,
            timeline_burst: 50,
            client_address_header: String::new(),
            heartbeat: Duration::from_secs(25),
            retry: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(20),
            write_timeout: Duration::from_secs(30),
            shed_unreachable_after: Duration::from_secs(15),
            shed_lag: Duration::from_secs(5),
            max_connection_age: Duration::ZERO,
            presence: true,
            presence_interval: Duration::from_secs(5),
            auth: AuthMode::None,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_audience: None,
            cors_origins: String::new(),
            log: "info".to_owned(),
            log_format: LogFormat::Json,
        }
    }
}

/// Where `RELAY_AUTH=jwt` finds its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(String),
    /// RS256 or ES256 public key, PEM.
    PublicKeyFile(PathBuf),
}

/// A configuration that cannot be used; the message names the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    pub variable: String,
    pub reason: String,
}

impl ConfigError {
    /// An error naming `variable`.
    pub fn new(variable: &str, reason: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the given variables (those without the `RELAY_` prefix are ignored).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let config = match envy::prefixed(ENV_PREFIX).from_iter::<_, Config>(vars.clone()) {
            Ok(config) => config,
            Err(err) => return Err(name_the_culprit(&vars, err)),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that need more than one field or a range.
    fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::new(name, "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        nonzero("RELAY_HEARTBEAT", self.heartbeat)?;
        nonzero("RELAY_RETRY", self.retry)?;
        nonzero("RELAY_DRAIN_TIMEOUT", self.drain_timeout)?;
        nonzero("RELAY_WRITE_TIMEOUT", self.write_timeout)?;
        nonzero("RELAY_HEADER_READ_TIMEOUT", self.header_read_timeout)?;
        if self.presence_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "RELAY_PRESENCE_INTERVAL",
                "must be at least 100ms",
            ));
        }
        if self.nats_urls().is_empty() {
            return Err(ConfigError::new("RELAY_NATS_URL", "no NATS URL given"));
        }
        if self.stream.is_empty()
            || self
                .stream
                .chars()
                .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
        {
            return Err(ConfigError::new(
                "RELAY_STREAM",
                format!("'{}' is not a valid JetStream stream name", self.stream),
            ));
        }
        if self.stream_replicas.is_some_and(|r| !(1..=5).contains(&r)) {
            return Err(ConfigError::new("RELAY_STREAM_REPLICAS", "must be 1 to 5"));
        }
        if self
            .stream_max_msgs_per_subject
            .is_some_and(|n| n == 0 || n < -1)
        {
            return Err(ConfigError::new(
                "RELAY_STREAM_MAX_MSGS_PER_SUBJECT",
                "must be a positive count, or -1 for unlimited",
            ));
        }
        if self.stream_max_consumers.is_some_and(|n| n < 1) {
            return Err(ConfigError::new(
                "RELAY_STREAM_MAX_CONSUMERS",
                "must be a positive count (the server substitutes its own default for -1 or 0)",
            ));
        }
        if self.ring_events == 0 {
            return Err(ConfigError::new("RELAY_RING_EVENTS", "must be at least 1"));
        }
        if self.client_backlog == 0 {
            return Err(ConfigError::new(
                "RELAY_CLIENT_BACKLOG",
                "must be at least 1",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "RELAY_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        if !self.client_address_header.is_empty()
            && axum::http::HeaderName::try_from(self.client_address_header.as_str()).is_err()
        {
            return Err(ConfigError::new(
                "RELAY_CLIENT_ADDRESS_HEADER",
                format!("'{}' is not a header name", self.client_address_header),
            ));
        }
        if self.max_pending_connections == 0 {
            return Err(ConfigError::new(
                "RELAY_MAX_PENDING_CONNECTIONS",
                "must be at least 1",
            ));
        }
        if self.max_connections_per_key == 0 {
            return Err(ConfigError::new(
                "RELAY_MAX_CONNECTIONS_PER_KEY",
                "must be at least 1",
            ));
        }
        self.jwt_key()?;
        Ok(())
    }

    /// The key tokens are checked with: none without `RELAY_AUTH=jwt`, else exactly one of
    /// `RELAY_JWT_SECRET` and `RELAY_JWT_PUBLIC_KEY_FILE`.
    pub fn jwt_key(&self) -> Result<Option<JwtKey>, ConfigError> {
        if self.auth == AuthMode::None {
            return Ok(None);
        }
        match (&self.jwt_secret, &self.jwt_public_key_file) {
            (Some(secret), None) => Ok(Some(JwtKey::Secret(secret.clone()))),
            (None, Some(path)) => Ok(Some(JwtKey::PublicKeyFile(path.clone()))),
            (Some(_), Some(_)) => Err(ConfigError::new(
                "RELAY_JWT_SECRET",
                "set either RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY_FILE, not both",
            )),
            (None, None) => Err(ConfigError::new(
                "RELAY_AUTH",
                "jwt needs RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY_FILE",
            )),
        }
    }

    /// The NATS server URLs, split on commas, blanks dropped.
    pub fn nats_urls(&self) -> Vec<String> {
        split_list(&self.nats_url)
    }

    /// The allowed CORS origins.
    pub fn cors_origins(&self) -> Vec<String> {
        split_list(&self.cors_origins)
    }
}

/// A `RELAY_*` variable the relay does not read, and the known name closest to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    pub name: String,
    pub closest: Option<&'static str>,
}

/// What each variable means, for `sse-relay serve --help` (`docs/api.md` §3 has the long form).
/// A unit test checks that it names every field of [`Config`] and nothing else.
const VARIABLES: &[(&str, &str)] = &[
    (
        "RELAY_LISTEN",
        "public HTTP listener: the API and the board",
    ),
    (
        "RELAY_ADMIN_LISTEN",
        "admin listener: /metrics, /healthz, /readyz",
    ),
    (
        "RELAY_FANOUT",
        "consumer (a consumer per connection) or shared (a live tail per replica)",
    ),
    (
        "RELAY_RING_EVENTS",
        "shared mode: recent events kept for catch-ups",
    ),
    (
        "RELAY_RING_BYTES",
        "shared mode: memory budget of those events, in bytes",
    ),
    (
        "RELAY_CLIENT_BACKLOG",
        "shared mode: live events a client may have queued",
    ),
    ("RELAY_NATS_URL", "comma-separated NATS URLs"),
    ("RELAY_NATS_CREDS", "NATS credentials file"),
    ("RELAY_NATS_TOKEN", "NATS token"),
    ("RELAY_NATS_CA", "CA file for NATS over TLS"),
    ("RELAY_STREAM", "JetStream stream name"),
    (
        "RELAY_STREAM_MANAGE",
        "create/update the stream at start-up",
    ),
    ("RELAY_STREAM_REPLICAS", "stream replicas (1-5)"),
    ("RELAY_STREAM_MAX_AGE", "retention"),
    (
        "RELAY_STREAM_MAX_MSGS_PER_SUBJECT",
        "retention per subject (-1: unlimited)",
    ),
    ("RELAY_STREAM_MAX_CONSUMERS", "consumers the stream allows"),
    ("RELAY_MAX_CONNECTIONS", "SSE connections per replica"),
    (
        "RELAY_MAX_CONNECTIONS_PER_KEY",
        "SSE connections per subject per replica",
    ),
    (
        "RELAY_MAX_PENDING_CONNECTIONS",
        "other TCP connections per replica (polls, heads, idle)",
    ),
    (
        "RELAY_HEADER_READ_TIMEOUT",
        "time to send a request head (or the next one on keep-alive)",
    ),
    (
        "RELAY_TIMELINE_RATE",
        "timeline polls a second per client (0: unlimited)",
    ),
    (
        "RELAY_TIMELINE_BURST",
        "timeline polls a client may make at once",
    ),
    (
        "RELAY_CLIENT_ADDRESS_HEADER",
        "header with the client address behind a proxy (right-most entry), e.g. x-forwarded-for",
    ),
    (
        "RELAY_HEARTBEAT",
        "heartbeat comment interval on idle streams",
    ),
    ("RELAY_RETRY", "retry: advice (sent with +-50% jitter)"),
    ("RELAY_DRAIN_TIMEOUT", "how long a SIGTERM drain may take"),
    (
        "RELAY_WRITE_TIMEOUT",
        "a connection whose writes stall this long is closed",
    ),
    (
        "RELAY_SHED_UNREACHABLE_AFTER",
        "NATS or the stream unreachable this long: end every stream (0: never)",
    ),
    (
        "RELAY_SHED_LAG",
        "live lag above this, sustained: not ready, end streams at 10 %/s (0: never)",
    ),
    (
        "RELAY_MAX_CONNECTION_AGE",
        "end streams older than this, +-10 %, to rebalance (0: unlimited)",
    ),
    (
        "RELAY_PRESENCE",
        "count who watches each subject over the replicas (false: /presence is 404)",
    ),
    (
        "RELAY_PRESENCE_INTERVAL",
        "how often a replica publishes its changed counts; 3 of them silent: dropped",
    ),
    ("RELAY_AUTH", "none or jwt"),
    ("RELAY_JWT_SECRET", "HS256 secret"),
    ("RELAY_JWT_PUBLIC_KEY_FILE", "RS256/ES256 public key (PEM)"),
    ("RELAY_JWT_AUDIENCE", "required aud claim"),
    (
        "RELAY_CORS_ORIGINS",
        "comma-separated allowed origins (empty: same-origin only)",
    ),
    ("RELAY_LOG", "tracing filter"),
    ("RELAY_LOG_FORMAT", "json or pretty"),
];

/// Variables whose default is the stream definition's (`nats/stream.json`).
const STREAM_FILE_SETTINGS: &[&str] = &[
    "RELAY_STREAM_REPLICAS",
    "RELAY_STREAM_MAX_AGE",
    "RELAY_STREAM_MAX_MSGS_PER_SUBJECT",
    "RELAY_STREAM_MAX_CONSUMERS",
];

impl Config {
    /// The `RELAY_*` variables among `vars` that configure nothing (a typo such as
    /// `RELAY_HEARTBEATS`), each with the closest known name when one is close.
    pub fn unknown_variables(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<UnknownVariable> {
        vars.into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.starts_with(ENV_PREFIX))
            .filter(|name| VARIABLES.iter().all(|(known, _)| known != name))
            .map(|name| {
                let closest = VARIABLES
                    .iter()
                    .map(|(known, _)| (*known, strsim::jaro_winkler(&name, known)))
                    .filter(|(_, score)| *score >= 0.9)
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(known, _)| known);
                UnknownVariable { name, closest }
            })
            .collect()
    }

    /// Every variable, its default and what it means: the text `sse-relay serve --help` ends with.
    pub fn variables_help() -> String {
        let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
        let mut help = String::from("Configuration (environment variables, [default]):\n");
        for (name, meaning) in VARIABLES {
            let field = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let default = match defaults.get(&field) {
                Some(serde_json::Value::String(s)) if s.is_empty() => "empty".to_owned(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None if STREAM_FILE_SETTINGS.contains(name) => {
                    "nats/stream.json".to_owned()
                }
                Some(serde_json::Value::Null) | None => "unset".to_owned(),
                Some(other) => other.to_string(),
            };
            help.push_str(&format!("  {name:<34} {meaning} [{default}]\n"));
        }
        help
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// envy does not say which variable a value-level error came from; parse each variable alone
/// (every field has a default) to find the one that fails and name it.
fn name_the_culprit(vars: &[(String, String)], err: envy::Error) -> ConfigError {
    for (key, value) in vars {
        if let Err(single) =
            envy::prefixed(ENV_PREFIX).from_iter::<_, Config>(vec![(key.clone(), value.clone())])
        {
            return ConfigError::new(key, format!("invalid value '{value}': {single}"));
        }
    }
    ConfigError::new("RELAY_*", err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_a_listed_variable_and_nothing_else_is() {
        let fields = serde_json::to_value(Config::default()).expect("serialize");
        let mut fields: Vec<String> = fields
            .as_object()
            .expect("object")
            .keys()
            .map(|k| format!("{ENV_PREFIX}{}", k.to_ascii_uppercase()))
            .collect();
        let mut listed: Vec<String> = VARIABLES.iter().map(|(n, _)| n.to_string()).collect();
        fields.sort();
        listed.sort();
        assert_eq!(fields, listed);
    }

    #[test]
    fn unknown_variables_are_named_with_the_closest_known_one() {
        let unknown = Config::unknown_variables(vars(&[
            ("RELAY_HEARTBEATS", "5s"),
            ("RELAY_HEARTBEAT", "5s"),
            ("RELAY_ADMIN_LISTN", "[::]:9090"),
            ("RELAY_SOMETHING_ELSE", "1"),
            ("HOME", "/root"),
        ]));
        assert_eq!(
            unknown,
            vec![
                UnknownVariable {
                    name: "RELAY_HEARTBEATS".into(),
                    closest: Some("RELAY_HEARTBEAT")
                },
                UnknownVariable {
                    name: "RELAY_ADMIN_LISTN".into(),
                    closest: Some("RELAY_ADMIN_LISTEN")
                },
                UnknownVariable {
                    name: "RELAY_SOMETHING_ELSE".into(),
                    closest: None
                },
            ]
        );
    }

    #[test]
    fn the_help_lists_every_variable_with_its_default() {
        let help = Config::variables_help();
        for (name, _) in VARIABLES {
            assert!(help.contains(name), "{name} missing from:\n{help}");
        }
        assert!(help.contains("RELAY_ADMIN_LISTEN"));
        assert!(help.contains("[0.0.0.0:9090]"), "{help}");
        assert!(help.contains("[25s]"), "{help}");
        assert!(help.contains("[consumer]"), "{help}");
    }

    #[test]
    fn the_admin_listener_defaults_to_port_9090_and_is_configurable() {
        assert_eq!(Config::default().admin_listen.to_string(), "0.0.0.0:9090");
        let c = Config::from_vars(vars(&[("RELAY_ADMIN_LISTEN", "[::]:9191")])).expect("config");
        assert_eq!(c.admin_listen.to_string(), "[::]:9191");
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_api_doc() {
        let c = Config::from_vars(vec![]).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.fanout, FanoutMode::Consumer);
        assert_eq!(c.ring_events, 10_000);
        assert_eq!(c.ring_bytes, 32 * 1024 * 1024);
        assert_eq!(c.client_backlog, 256);
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.stream, "DEPLOY_EVENTS");
        assert!(c.stream_manage);
        // Unset: nats/stream.json's values apply (checked in jetstream::provision).
        assert_eq!(c.stream_replicas, None);
        assert_eq!(c.stream_max_age, None);
        assert_eq!(c.stream_max_msgs_per_subject, None);
        assert_eq!(c.stream_max_consumers, None);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_key, 100);
        assert_eq!(c.heartbeat, Duration::from_secs(25));
        assert_eq!(c.retry, Duration::from_secs(2));
        assert_eq!(c.drain_timeout, Duration::from_secs(20));
        assert_eq!(c.shed_unreachable_after, Duration::from_secs(15));
        assert_eq!(c.shed_lag, Duration::from_secs(5));
        assert_eq!(c.max_connection_age, Duration::ZERO);
        assert_eq!(c.auth, AuthMode::None);
        assert_eq!(c.log, "info");
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn reads_humantime_durations_and_lists() {
        let c = Config::from_vars(vars(&[
            ("RELAY_HEARTBEAT", "1m 30s"),
            ("RELAY_STREAM_MAX_AGE", "2h"),
            ("RELAY_NATS_URL", "nats://a:4222, nats://b:4222"),
            ("RELAY_LOG_FORMAT", "pretty"),
            ("PATH", "ignored"),
        ]))
        .expect("valid");
        assert_eq!(c.heartbeat, Duration::from_secs(90));
        assert_eq!(c.stream_max_age, Some(Duration::from_secs(7200)));
        assert_eq!(c.nats_urls(), vec!["nats://a:4222", "nats://b:4222"]);
        assert_eq!(c.log_format, LogFormat::Pretty);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (key, value) in [
            ("RELAY_HEARTBEAT", "soon"),
            ("RELAY_MAX_CONNECTIONS", "many"),
            ("RELAY_AUTH", "magic"),
            ("RELAY_FANOUT", "broadcast"),
            ("RELAY_RING_EVENTS", "0"),
            ("RELAY_STREAM_MANAGE", "maybe"),
            ("RELAY_LISTEN", "here"),
            ("RELAY_HEARTBEAT", "0s"),
            ("RELAY_STREAM", "a.b"),
        ] {
            let err =
                Config::from_vars(vars(&[("RELAY_RETRY", "3s"), (key, value)])).expect_err(value);
            assert_eq!(err.variable, key, "{err}");
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }

    #[test]
    fn jwt_needs_a_key() {
        let err = Config::from_vars(vars(&[("RELAY_AUTH", "jwt")])).expect_err("no key");
        assert_eq!(err.variable, "RELAY_AUTH");
        Config::from_vars(vars(&[("RELAY_AUTH", "jwt"), ("RELAY_JWT_SECRET", "s")]))
            .expect("secret given");
    }
}
