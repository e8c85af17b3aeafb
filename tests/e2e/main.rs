//! End-to-end tests: real nats-server, real `sse-relay` processes, real HTTP and SSE.
//! One binary, one module per promise.

mod support;

mod bad_input;
mod cli;
mod consumer_debt;
mod delivery;
mod demo;
mod failover;
mod nats_restart;
mod resume;
mod timeline;
