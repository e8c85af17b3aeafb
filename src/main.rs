//! Wires configuration, telemetry, NATS and the HTTP server for each subcommand.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use sse_relay::cli::Command;
use sse_relay::config::Config;
use sse_relay::{demo, publish, server, telemetry};

fn main() -> ExitCode {
    let cli = sse_relay::cli::parse(&Config::variables_help());
    let mut config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("sse-relay: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Publish(_)) && std::env::var_os("RELAY_LOG").is_none() {
        // A command-line tool stays quiet unless asked: stdout carries its JSON line.
        config.log = "warn".to_owned();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("sse-relay: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the gRPC trace exporter needs one.
    let telemetry = {
        let _entered = runtime.enter();
        telemetry::init(&config.log, config.log_format)
    };
    if let Err(err) = telemetry {
        eprintln!("sse-relay: configuration error: {err}");
        return ExitCode::from(2);
    }
    for unknown in Config::unknown_variables(std::env::vars()) {
        match unknown.closest {
            Some(closest) => tracing::warn!(
                variable = %unknown.name,
                closest,
                "unknown configuration variable {} ignored; did you mean {closest}?",
                unknown.name
            ),
            None => tracing::warn!(
                variable = %unknown.name,
                "unknown configuration variable {} ignored",
                unknown.name
            ),
        }
    }
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Serve => run_serve(config).await,
            Command::Publish(args) => run_publish(config, args).await,
            Command::Demo(args) => run_demo(config, args).await,
        }
    });
    // Outside the runtime's workers: exporting the last spans blocks.
    telemetry::shutdown();
    code
}

async fn run_serve(config: Config) -> ExitCode {
    sse_relay::open_files::raise_and_report(config.max_connections);
    let shutdown = on_signals();
    match server::serve(config, shutdown, |_| {}).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "relay stopped");
            eprintln!("sse-relay: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run_publish(config: Config, args: sse_relay::cli::PublishArgs) -> ExitCode {
    let request = match publish::PublishRequest::new(
        args.deployment,
        args.pavilion,
        args.event_type,
        args.msg_id,
        args.data,
    ) {
        Ok(request) => request,
        Err(err) => {
            eprintln!("sse-relay publish: {err}");
            return ExitCode::from(2);
        }
    };
    match publish::run(&config, request).await {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("sse-relay publish: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run_demo(mut config: Config, args: sse_relay::cli::DemoArgs) -> ExitCode {
    let shutdown = on_signals();
    if std::env::var_os("RELAY_ADMIN_LISTEN").is_none() {
        // A demo on a laptop: metrics and probes on a free loopback port, not 9090 on every
        // interface.
        config.admin_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    }
    let child = if std::env::var_os("RELAY_NATS_URL").is_none() {
        match demo::ChildNats::start().await {
            Ok(child) => {
                config.nats_url = child.url.clone();
                Some(child)
            }
            Err(err) => {
                eprintln!("sse-relay demo: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let store = match demo::pipeline_store(&config).await {
        Ok(store) => store,
        Err(err) => {
            eprintln!("sse-relay demo: {err}");
            return ExitCode::FAILURE;
        }
    };
    let pipeline = tokio::spawn(demo::simulate_pipeline(store, args.pace, shutdown.clone()));
    let nats_url = config.nats_url.clone();
    let result = server::serve(config, shutdown.clone(), move |addr| {
        let host = if addr.ip().is_unspecified() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        println!();
        println!("sse-relay demo is running (NATS at {nats_url}).");
        println!("  Board:   http://{host}/?pavilion=p-1");
        println!("  Try:     curl -N http://{host}/v1/pavilions/p-1/events");
        println!(
            "  Resume:  curl -N -H 'Last-Event-ID: 5' http://{host}/v1/deployments/d-1/events"
        );
        println!("  Poll:    curl 'http://{host}/v1/deployments/d-1/timeline?after=0&limit=10'");
        println!("Ctrl-C stops everything.");
        println!();
    })
    .await;
    shutdown.cancel();
    pipeline.await.ok();
    if let Some(child) = child {
        child.stop().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sse-relay demo: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Cancelled on the first SIGTERM or SIGINT; a second signal exits at once.
fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down (again to exit at once)");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal; exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers only Ctrl-C via tokio's portable API is left.
            tokio::signal::ctrl_c().await.ok();
        }
    }
}
