//! The command line (`docs/api.md` §2).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sse-relay",
    version,
    about = "NATS JetStream → Server-Sent Events relay with exact resume on any replica"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay; configuration from RELAY_* environment variables.
    Serve,
    /// Publish one event to deploy.<D> (and pavilion.<P>) and print the stream sequence(s).
    Publish(PublishArgs),
    /// Run a self-contained demo: a child nats-server (unless RELAY_NATS_URL is set), a simulated
    /// pipeline and the relay.
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Deployment id: publishes to deploy.<id>.
    #[arg(long)]
    pub deployment: String,
    /// Pavilion id: also publishes to pavilion.<id>.
    #[arg(long)]
    pub pavilion: Option<String>,
    /// SSE event type (Relay-Event-Type header).
    #[arg(long = "type", default_value = "stage")]
    pub event_type: String,
    /// Idempotency key (Nats-Msg-Id): a retry with the same id is stored once.
    #[arg(long)]
    pub msg_id: Option<String>,
    /// The JSON payload, published verbatim.
    #[arg(long)]
    pub data: String,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Average pause between two pipeline steps (humantime, e.g. 750ms, 2s).
    #[arg(long, default_value = "750ms", value_parser = humantime::parse_duration)]
    pub pace: std::time::Duration,
}

/// Parses the command line; `serve --help` ends with `variables` (every configuration variable
/// and its default, from [`crate::config::Config::variables_help`]).
pub fn parse(variables: &str) -> Cli {
    let command =
        Cli::command().mut_subcommand("serve", |serve| serve.after_help(variables.to_owned()));
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}
