//! End-to-end tests: real nats-server, real `sse-relay` processes, real HTTP and SSE.
//! One binary, one module per promise.

#[macro_use]
mod support;

mod admin;
mod auth;
mod bad_input;
mod cli;
mod cluster;
mod consumer_debt;
mod cors;
mod delivery;
mod demo;
mod direct_get;
mod drain;
mod failover;
mod faults;
mod fuzz;
mod jaeger;
mod lean;
mod limits;
mod metrics;
mod nats_cli;
mod nats_restart;
mod otlp;
mod permissions;
mod presence;
mod process;
mod prometheus;
mod resume;
mod shared_fanout;
mod shedding;
mod slow_client;
mod timeline;
mod tracing;
