//! The NATS connection: credentials from configuration, reconnecting forever, and a check that
//! the server is new enough to honour multi-subject consumer filters.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};

use crate::config::Config;

/// The oldest nats-server a fan-out mode works with, and what it needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinServer {
    pub version: (u64, u64),
    pub needs: &'static str,
}

/// `RELAY_FANOUT=consumer`: 2.10 is the first to apply `filter_subjects` (2.9 silently ignores
/// them, which would leak other subjects).
pub const CONSUMER_MODE_SERVER: MinServer = MinServer {
    version: (2, 10),
    needs: "multi-subject consumer filters",
};

/// `RELAY_FANOUT=shared`: 2.11 is the first to answer batched direct gets (ADR-31).
pub const SHARED_MODE_SERVER: MinServer = MinServer {
    version: (2, 11),
    needs: "batched direct gets",
};

/// The connected server is older than the mode needs.
#[derive(Debug, thiserror::Error)]
#[error("nats-server {found} is too old: this mode of sse-relay needs {}.{} or newer ({})", needed.version.0, needed.version.1, needed.needs)]
pub struct ServerTooOld {
    pub found: String,
    pub needed: MinServer,
}

/// How often the client pings a server that has sent nothing (`docs/api.md` §10).
const PING_INTERVAL: Duration = Duration::from_secs(3);

/// The size of each buffer the client reads NATS messages into. async-nats hands out a message's
/// payload as a slice of that buffer, so a message still held (the events pulled for a client
/// that stopped reading) keeps its whole buffer alive, shared with the messages read beside it:
/// 4 KiB buffers instead of the default 32 KiB keep that near the message's own size (the
/// benchmark's stuck consumer-mode readers: 59 → 39 KiB per connection). More read calls on the
/// NATS socket are the cost; messages larger than a buffer still arrive whole.
const READ_BUFFER_BYTES: u16 = 4096;

/// Connects in the background and keeps reconnecting; returns at once even if no server is up
/// yet, so the relay can start and report itself not ready. `on_event` sees every connection
/// event (connected, disconnected, ...).
pub async fn connect<F>(config: &Config, on_event: F) -> Result<async_nats::Client, std::io::Error>
where
    F: Fn(Event) + Send + Sync + 'static,
{
    let on_event = std::sync::Arc::new(on_event);
    let mut options = ConnectOptions::new()
        .name("sse-relay")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        // A connection silent for three intervals (no message, no PONG) is dropped and another
        // server tried: a path cut without a reset (a dead NAT entry, a partitioned node) is
        // noticed in about 9-12 s, before `RELAY_SHED_UNREACHABLE_AFTER` (15 s) sheds clients.
        .ping_interval(PING_INTERVAL)
        .read_buffer_capacity(READ_BUFFER_BYTES)
        .reconnect_delay_callback(|attempts| {
            // 0, 100 ms, 200 ms, ... capped at 2 s: NATS restarts are noticed quickly.
            Duration::from_millis((attempts as u64 * 100).min(2000))
        })
        .event_callback(move |event| {
            let on_event = on_event.clone();
            async move {
                if let Event::ServerError(err) = &event {
                    // A refused request otherwise only times out: say why, once, loudly.
                    tracing::error!(
                        error = %err,
                        "NATS refused a request; a permissions violation means the NATS user \
                         lacks a permission (docs/operations.md, NATS permissions)"
                    );
                }
                on_event(event)
            }
        });
    if let Some(creds) = &config.nats_creds {
        options = options.credentials_file(creds).await?;
    }
    if let Some(token) = &config.nats_token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.nats_ca {
        options = options.add_root_certificates(ca.clone());
    }
    let urls = config.nats_urls();
    if let Some((user, password)) = url_credentials(&urls) {
        options = options.user_and_password(user, password);
    }
    options
        .connect(urls.as_slice())
        .await
        .map_err(std::io::Error::other)
}

/// The `user:password@` of the first URL that carries them, percent-decoded: async-nats parses
/// them but sends no credentials taken from a URL, and a user of NATS expects
/// `nats://relay:secret@nats:4222` to log in (`docs/api.md` §3).
pub fn url_credentials(urls: &[String]) -> Option<(String, String)> {
    urls.iter().find_map(|url| {
        let addr: async_nats::ServerAddr = url.parse().ok()?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = decode(addr.username()?);
        Some((user, decode(addr.password().unwrap_or_default())))
    })
}

/// Checks the version the connected server reported.
pub fn check_server_version(version: &str, needed: MinServer) -> Result<(), ServerTooOld> {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found >= needed.version {
        Ok(())
    } else {
        Err(ServerTooOld {
            found: version.to_owned(),
            needed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_first_url_that_has_them() {
        let urls = |all: &[&str]| all.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        assert_eq!(url_credentials(&urls(&["nats://a:4222"])), None);
        assert_eq!(
            url_credentials(&urls(&["nats://a:4222", "nats://relay:s%40cr%3At@b:4222"])),
            Some(("relay".into(), "s@cr:t".into()))
        );
        assert_eq!(
            url_credentials(&urls(&["nats://only-user@a:4222"])),
            Some(("only-user".into(), String::new()))
        );
    }

    #[test]
    fn versions_below_the_modes_minimum_are_refused() {
        let consumer = |v| check_server_version(v, CONSUMER_MODE_SERVER);
        assert!(consumer("2.10.0").is_ok());
        assert!(consumer("2.15.1").is_ok());
        assert!(consumer("3.0.0-beta").is_ok());
        assert!(consumer("2.9.25").is_err());
        assert!(consumer("").is_err());
        let shared = |v| check_server_version(v, SHARED_MODE_SERVER);
        assert!(shared("2.11.0").is_ok());
        let err = shared("2.10.22").expect_err("too old for direct batches");
        assert!(
            err.to_string()
                .contains("2.11 or newer (batched direct gets)"),
            "{err}"
        );
    }
}
