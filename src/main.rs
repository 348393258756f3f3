//! The `regcache` command: parse the CLI, load config, start logging, bind, serve.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use regcache::config::{Config, ServeArgs};
use regcache::routes::App;

/// A pull-through cache (mirror) for container registries.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror (defaults: listen 127.0.0.1:5000, upstream Docker Hub).
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REGCACHE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regcache: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regcache: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listen = config.listen;
        let app = match App::new(config) {
            Ok(a) => Arc::new(a),
            Err(e) => {
                eprintln!("regcache: cannot open cache directory: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("regcache: cannot listen on {listen}: {e} (use --listen ADDR)");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            listen = %listen,
            default_registry = %app.config.default_registry,
            upstream = %app.default_upstream().host(),
            registries = %app.registries.keys().cloned().collect::<Vec<_>>().join(","),
            cache_dir = %app.store.root().display(),
            tag_ttl = ?app.config.tag_ttl,
            "regcache serving"
        );
        match regcache::server::run(listener, app, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("regcache: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
