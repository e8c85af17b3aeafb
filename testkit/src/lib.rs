//! The one test kit of sse-relay: what its end-to-end tests and its benchmark both need, written
//! once. Real parts only — a nats-server (one node, or the 3-node cluster of
//! `nats/cluster/*.conf`) on free loopback ports with temporary stores, `sse-relay serve`
//! processes, an HTTP/SSE client with a spec-following SSE parser, a publisher that uses the
//! relay's own publishing code, and Prometheus samples read strictly. Every wait is bounded by
//! [`WAIT`].

pub mod balancer;
pub mod client;
pub mod metrics;
pub mod nats;
pub mod netns;
pub mod process;
pub mod publisher;
pub mod raw_client;
pub mod relay;
pub mod sse;

use std::time::Duration;

pub use balancer::{follow, Balancer, Followed, Move};
pub use client::{get_json, http, SseClient};
pub use metrics::{sample, sample_opt};
pub use nats::{ClusterNode, Nats, NatsCluster};
pub use netns::{Host, TestNet};
pub use process::{free_port, Proc};
pub use publisher::{deployment, pavilion, Publisher};
pub use relay::{Echo, Fanout, Relay};
pub use sse::{SseEvent, SseItem, SseParser};

/// The relay's stream (`nats/stream.json`).
pub const STREAM: &str = "DEPLOY_EVENTS";

/// Upper bound for any single wait; a hang fails fast instead of stalling CI.
pub const WAIT: Duration = Duration::from_secs(20);
