//! sse-relay: NATS JetStream deployment-pipeline events to browsers over Server-Sent Events,
//! with exact resume on any replica.

pub mod cli;
pub mod config;
pub mod demo;
pub mod fanout;
pub mod http;
pub mod jetstream;
pub mod open_files;
pub mod presence;
pub mod publish;
pub mod readiness;
pub mod server;
pub mod shedding;
pub mod sse;
pub mod subject;
pub mod telemetry;
