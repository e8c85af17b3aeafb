//! The open-files limit: every SSE client is a socket, and containers commonly start with a soft
//! `RLIMIT_NOFILE` of 1024 (containerd 2.0 dropped its higher default), so a replica configured
//! for 10,000 connections would fail at ~1,000. At start-up the soft limit is raised to the hard
//! one, as the Go runtime does for nats-server.

/// File descriptors the relay needs besides its SSE sockets: the listeners, NATS, the pending
/// (not yet SSE) connections' share, logs, timers.
pub const HEADROOM: u64 = 256;

/// The soft and hard limits before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; what it was and is.
// `rlim_t` is `u64` on Linux but not on every platform libc supports.
#[allow(clippy::unnecessary_cast)]
pub fn raise() -> std::io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let soft_before = limit.rlim_cur as u64;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(OpenFiles {
        soft_before,
        soft: limit.rlim_cur as u64,
        hard: limit.rlim_max as u64,
    })
}

/// Raises the limit and says so in the log, warning when even the hard limit leaves no room for
/// `connections` sockets plus [`HEADROOM`].
pub fn raise_and_report(connections: usize) {
    match raise() {
        Ok(files) => {
            let needed = connections as u64 + HEADROOM;
            tracing::info!(
                soft_before = files.soft_before,
                soft = files.soft,
                hard = files.hard,
                "open files limit"
            );
            if files.soft < needed {
                tracing::warn!(
                    limit = files.soft,
                    needed,
                    "the open files limit is below RELAY_MAX_CONNECTIONS plus {HEADROOM}: \
                     connections past it will be refused; raise the container's nofile limit"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot read or raise the open files limit"),
    }
}
