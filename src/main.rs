//! The `regcache` command: parse the CLI, load config, start logging, bind, serve.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use regcache::config::{CacheArgs, CacheSettings, Config, ServeArgs};
use regcache::mirror::Mirror;

/// `println!` that ignores a closed stdout (`regcache status | head` must not panic on EPIPE).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

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
    Serve(Box<ServeArgs>),
    /// Show the cache's size against its budget, object counts, free disk, oldest and newest use.
    Status(CacheArgs),
    /// Re-hash every cached object and remove those that do not match their digest
    /// (exit status 1 when any was removed).
    Verify(CacheArgs),
    /// Fetch whole images into the cache ahead of time (mirror running or not).
    Prefetch(regcache::prefetch::PrefetchArgs),
    /// Write a self-signed certificate and key for serving HTTPS (an edge box serving a site).
    GenCert {
        /// Name (or IP address) clients use to reach the mirror; repeatable.
        #[arg(long = "hostname", value_name = "NAME", required = true)]
        hostnames: Vec<String>,
        /// Directory to write regcache.crt and regcache.key into.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        out_dir: std::path::PathBuf,
    },
    /// Evict least recently used content now, down to the budget's low watermark.
    Gc {
        #[command(flatten)]
        cache: CacheArgs,
        /// Show what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go through a background writer thread, so a request never waits on stderr. Lossless:
    // under extreme load the access log slows requests rather than dropping lines.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REGCACHE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Prefetch(args) => prefetch(args),
        Command::GenCert { hostnames, out_dir } => {
            match regcache::tls::generate(&hostnames, &out_dir) {
                Ok((cert, key)) => {
                    let host = &hostnames[0];
                    say!(
                        "wrote {} and {} (key mode 0600)",
                        cert.display(),
                        key.display()
                    );
                    say!("serve:      regcache serve --listen 0.0.0.0:5000 --tls-cert {} --tls-key {}", cert.display(), key.display());
                    say!("docker:     copy {} to /etc/docker/certs.d/{host}:5000/ca.crt on each client;", cert.display());
                    say!("            daemon.json: {{\"registry-mirrors\": [\"https://{host}:5000\"]}}");
                    say!("containerd: hosts.toml: [host.\"https://{host}:5000\"] capabilities = [\"pull\", \"resolve\"], ca = \"/path/to/regcache.crt\"");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("regcache gen-cert: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status(args) => with_cache(&args, |s| {
            say_raw!("{}", regcache::admin::status(s)?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Verify(args) => with_cache(&args, |s| {
            let r = regcache::admin::verify(s)?;
            for (d, why) in &r.removed {
                say!("removed {d}: {why}");
            }
            say!(
                "checked {} objects ({}): {} removed",
                r.checked,
                regcache::admin::human(r.bytes),
                r.removed.len()
            );
            Ok(if r.removed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }),
        Command::Gc { cache, dry_run } => with_cache(&cache, |s| {
            if s.budget.is_unbounded() {
                say!("no max_size or min_free configured: nothing to evict (use --max-size or --min-free)");
                return Ok(ExitCode::SUCCESS);
            }
            let (r, lines) = regcache::admin::gc(s, dry_run)?;
            for l in lines {
                say!("{l}");
            }
            let verb = if dry_run { "would remove" } else { "removed" };
            say!(
                "{verb} {} objects ({}), {} tags",
                r.objects,
                regcache::admin::human(r.bytes),
                r.tags
            );
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// The tokio runtime, or `None` (after saying why) when it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("regcache: cannot start the runtime: {e}");
            None
        }
    }
}

fn prefetch(args: regcache::prefetch::PrefetchArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(regcache::prefetch::run(&args)) {
        Ok(s) => {
            say!(
                "prefetched {} images: {} manifests, {} blobs fetched ({}), {} blobs already cached",
                s.images,
                s.manifests,
                s.blobs_fetched,
                regcache::admin::human(s.bytes_fetched),
                s.blobs_cached
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("regcache prefetch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn with_cache(
    args: &CacheArgs,
    f: impl FnOnce(&CacheSettings) -> std::io::Result<ExitCode>,
) -> ExitCode {
    let settings = match CacheSettings::load(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("regcache: {e}");
            return ExitCode::from(2);
        }
    };
    match f(&settings) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("regcache: {}: {e}", settings.cache_dir.display());
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    regcache::config::raise_open_file_limit();
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regcache: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let listen = config.listen;
        let mirror = match Mirror::new(config) {
            Ok(m) => Arc::new(m),
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
            default_registry = %mirror.config().default_registry,
            upstream = %mirror.registries().default_upstream().host(),
            registries = %mirror.registries().names().collect::<Vec<_>>().join(","),
            cache_dir = %mirror.cache().store().root().display(),
            tag_ttl = %humantime::format_duration(mirror.config().tag_ttl),
            "regcache serving"
        );
        match regcache::http::server::run(listener, mirror, shutdown_signal()).await {
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
