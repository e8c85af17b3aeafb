//! Timeline polls per client (`RELAY_TIMELINE_RATE`, `RELAY_TIMELINE_BURST`, `docs/api.md` §4):
//! refused SSE clients fall back to polling, so a 429 storm must not turn into an unbounded
//! polling storm. A token bucket per client address (the `governor` crate, GCRA); over it, a
//! poll gets `429 too_many_requests` with the `Retry-After` the bucket computes.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use axum::http::{HeaderMap, HeaderName};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// The per-client poll budget, or none (`RELAY_TIMELINE_RATE=0`).
pub struct PollRate {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Where a proxy in front of the relay puts the client's address (its right-most entry is
    /// the one the nearest proxy added); the TCP peer otherwise.
    address_header: Option<HeaderName>,
}

impl PollRate {
    /// `per_second` polls a second with bursts of `burst`; `per_second == 0` disables the limit.
    pub fn new(per_second: u32, burst: u32, address_header: Option<HeaderName>) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            address_header,
        }
    }

    /// Takes one poll from the client's budget.
    pub fn check(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Some(client) = self.client_address(peer, headers) else {
            return Ok(());
        };
        limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            ApiError::TooManyPolls {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// Forgets clients whose buckets are full again, so the table does not grow with every
    /// address ever seen.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn client_address(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        self.address_header
            .as_ref()
            .and_then(|name| headers.get_all(name).iter().next_back())
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok())
            .or(peer.map(|p| p.ip()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, last], 40000)))
    }

    #[test]
    fn a_client_past_its_burst_is_told_when_to_come_back() {
        let rate = PollRate::new(1, 3, None);
        let headers = HeaderMap::new();
        for _ in 0..3 {
            rate.check(peer(1), &headers).expect("within the burst");
        }
        match rate.check(peer(1), &headers) {
            Err(ApiError::TooManyPolls { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected TooManyPolls, got {other:?}"),
        }
        // Another client has its own budget.
        rate.check(peer(2), &headers).expect("another client");
    }

    #[test]
    fn behind_a_proxy_the_right_most_forwarded_address_is_the_client() {
        let rate = PollRate::new(1, 1, Some(HeaderName::from_static("x-forwarded-for")));
        let mut a = HeaderMap::new();
        a.insert(
            "x-forwarded-for",
            "1.2.3.4, 192.0.2.7".parse().expect("value"),
        );
        let mut b = HeaderMap::new();
        b.insert(
            "x-forwarded-for",
            "1.2.3.4, 192.0.2.8".parse().expect("value"),
        );
        // Same proxy peer, same spoofable left part, different client: separate budgets.
        rate.check(peer(9), &a).expect("first of a");
        rate.check(peer(9), &b).expect("first of b");
        assert!(rate.check(peer(9), &a).is_err());
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        let rate = PollRate::new(0, 0, None);
        for _ in 0..1000 {
            rate.check(peer(1), &HeaderMap::new()).expect("unlimited");
        }
    }
}
