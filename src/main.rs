//! The `regcache` command: parse the CLI, load config, start logging, bind, serve.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use regcache::config::{CacheArgs, CacheSettings, Config, LogFormat, ServeArgs};

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
#[command(
    version,
    about,
    after_help = "Examples:\n  regcache serve                                   # 127.0.0.1:5000, Docker Hub, embedded defaults\n  regcache serve --config /etc/regcache/regcache.toml\n  regcache check-config --config /etc/regcache/regcache.toml\n  regcache status\n  regcache certs init --hostname mirror.site.lan   # HTTPS for other machines: a local CA\n\nThe config file is --config FILE, else $REGCACHE_CONFIG, else /etc/regcache/regcache.toml when it exists."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror (defaults: listen 127.0.0.1:5000, upstream Docker Hub).
    #[command(
        after_help = "Examples:\n  regcache serve\n  regcache serve --config /etc/regcache/regcache.toml\n  regcache serve --listen 0.0.0.0:5000 --tls-cert certs/regcache.crt --tls-key certs/regcache.key --max-size 50GiB\n  REGCACHE_LOG=debug regcache serve --log-format json\n\nThen name it in /etc/docker/daemon.json: {\"registry-mirrors\": [\"http://127.0.0.1:5000\"]}"
    )]
    Serve(Box<ServeArgs>),
    /// Show what the mirror serving the cache directory is doing (uptime, hit ratio, bytes
    /// saved, fills in progress, each registry's state), asked over its admin socket; with no
    /// mirror running, the cache's size against its budget, object counts, free disk, oldest
    /// and newest use.
    #[command(
        after_help = "Examples:\n  regcache status --config /etc/regcache/regcache.toml\n  regcache status --json | jq .hit_ratio_bytes"
    )]
    Status {
        #[command(flatten)]
        cache: CacheArgs,
        /// Print JSON (the live status, or `{\"running\": false, \"why\": ..., \"disk\": {...}}`).
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every cached object and remove those that do not match their digest
    /// (exit status 1 when any was removed).
    #[command(after_help = "Example:\n  regcache verify --cache-dir /var/cache/regcache")]
    Verify(CacheArgs),
    /// Fetch whole images into the cache ahead of time (mirror running or not).
    #[command(
        after_help = "Examples:\n  regcache prefetch alpine:3.19 debian:bookworm\n  regcache prefetch --all-platforms ghcr.io/org/app@sha256:<64 hex> --config /etc/regcache/regcache.toml\n  regcache prefetch --with-referrers cgr.dev/chainguard/static:latest   # signatures and SBOMs too, for offline verification"
    )]
    Prefetch(regcache::prefetch::PrefetchArgs),
    /// A local CA and its certificates, for serving HTTPS without a PKI at hand: `certs init`
    /// (a CA and a server certificate, and what each client needs), `certs client` (TLS client
    /// certificates), `certs show` (what certificate files hold, expiry warnings).
    #[command(
        subcommand,
        after_help = "Examples:\n  regcache certs init --hostname mirror.site.lan --ip 10.0.0.5\n  regcache certs client --name builder-1\n  regcache certs show --config /etc/regcache/regcache.toml"
    )]
    Certs(regcache::certs::CertsCommand),
    /// Kept for compatibility: the same as `regcache certs init --out DIR` (a local CA and a
    /// server certificate signed by it; never overwrites).
    #[command(
        after_help = "Example:\n  regcache gen-cert --hostname mirror.site.lan --hostname 10.0.0.5 --out-dir /etc/regcache/certs\n\nPrefer `regcache certs init` (--ip, --port, --force to reissue keeping the CA)."
    )]
    GenCert {
        /// Name (or IP address) clients use to reach the mirror; repeatable.
        #[arg(long = "hostname", value_name = "NAME", required = true)]
        hostnames: Vec<String>,
        /// Directory to write ca.crt, ca.key, regcache.crt and regcache.key into.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        out_dir: std::path::PathBuf,
        /// Replace the server certificate and key, keeping an existing CA.
        #[arg(long)]
        force: bool,
        /// With --force: replace the CA too (every client then needs the new ca.crt).
        #[arg(long, requires = "force")]
        new_ca: bool,
    },
    /// Check a configuration (the file and any `serve` flags) as `serve` would, without serving:
    /// every problem is printed with its key (and line) and the fix; exit status 2 on any.
    #[command(
        after_help = "Example:\n  regcache check-config --config /etc/regcache/regcache.toml"
    )]
    CheckConfig(Box<ServeArgs>),
    /// Evict least recently used content now, down to the budget's low watermark.
    #[command(
        after_help = "Examples:\n  regcache gc --dry-run --max-size 20GiB\n  regcache gc --config /etc/regcache/regcache.toml"
    )]
    Gc {
        #[command(flatten)]
        cache: CacheArgs,
        /// Show what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the cached repositories and tags: digest, age, what each takes on disk.
    #[command(
        after_help = "Examples:\n  regcache ls\n  regcache ls library/alpine\n  regcache ls --json | jq '.[] | select(.age_seconds > 86400)'"
    )]
    Ls {
        /// Only repositories whose `registry/repository` contains this, e.g. `library/alpine`.
        #[arg(value_name = "REPOSITORY")]
        repository: Option<String>,
        #[command(flatten)]
        cache: CacheArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a tag (default `latest`) and the content only it uses, or with @DIGEST that
    /// manifest and its tags, keeping what other cached tags use. Safe beside a serving mirror
    /// (a removed file is a miss, fetched again).
    #[command(
        after_help = "Examples:\n  regcache rm alpine:3.19\n  regcache rm ghcr.io/org/app@sha256:<64 hex>"
    )]
    Rm {
        /// `[registry/]repository[:tag|@digest]`, as docker writes it.
        #[arg(value_name = "IMAGE")]
        image: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Wire a client to this mirror: dockerd's daemon.json, containerd's hosts.toml files and
    /// CRI config_path (what its version needs), a podman/CRI-O registries.conf.d drop-in,
    /// buildkitd.toml. Keeps every other setting, backs the old file up beside it, prints what
    /// to restart (restarts nothing).
    #[command(
        after_help = "Examples:\n  regcache setup docker --dry-run\n  regcache setup all --mirror https://mirror.site.lan:5000\n  regcache setup containerd --default-host\n  regcache setup podman --root /srv/chroot   # every client path under /srv/chroot\n\nVersions are read from the installed binaries (dockerd, containerd, podman, buildkitd --version)."
    )]
    Setup(regcache::clients::setup::SetupArgs),
    /// Check that each client installed here really uses this mirror: its config names it in
    /// a form that version honours, the mirror answers there with the client's scheme, TLS
    /// trust, and end to end: the client resolves a small image and the running mirror saw
    /// that request from that client. One line per client (✔/✘, reason, fix); exit status 1
    /// on any ✘.
    #[command(
        after_help = "Examples:\n  regcache doctor\n  regcache doctor docker --image library/busybox:latest\n  regcache doctor --json --no-pull\n  regcache doctor containerd --containerd-address /run/k3s/containerd/containerd.sock --containerd-config /var/lib/rancher/k3s/agent/etc/containerd/config.toml"
    )]
    Doctor(Box<regcache::clients::doctor::DoctorArgs>),
    /// Print shell completions for SHELL to stdout.
    #[command(
        after_help = "Examples:\n  regcache completions bash > /etc/bash_completion.d/regcache\n  regcache completions zsh > \"${fpath[1]}/_regcache\""
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    #[command(after_help = "Example:\n  regcache man > /usr/local/share/man/man1/regcache.1")]
    Man,
}

/// Starts logging to stderr in `format`, filtered by `REGCACHE_LOG` (default `info`; a filter
/// that does not parse is said and replaced by `info`). Logs go through a background writer
/// thread, so a request never waits on stderr. Lossless: under extreme load the access log
/// slows requests rather than dropping lines. The writer thread writes lines in batches
/// ([`regcache::logging::PacedWriter`]: one write for many lines, at most ~5 ms late). The guard
/// flushes on drop.
fn init_logging(format: LogFormat, default: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(regcache::logging::PacedWriter::new(std::io::stderr()));
    let filter = match std::env::var("REGCACHE_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new(default),
        Ok(v) => tracing_subscriber::EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!("regcache: REGCACHE_LOG={v:?} is not a log filter ({e}); logging at info (write e.g. REGCACHE_LOG=debug or REGCACHE_LOG=regcache=debug,info)");
            tracing_subscriber::EnvFilter::new("info")
        }),
    };
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
    guard
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // No --config and no REGCACHE_CONFIG: the system's config file, if there is one.
    use regcache::config::config_or_default as or_default;
    match &mut cli.command {
        Command::Serve(a) | Command::CheckConfig(a) => a.config = or_default(a.config.take()),
        Command::Status { cache: a, .. }
        | Command::Verify(a)
        | Command::Gc { cache: a, .. }
        | Command::Ls { cache: a, .. }
        | Command::Rm { cache: a, .. } => a.config = or_default(a.config.take()),
        Command::Prefetch(a) => a.config = or_default(a.config.take()),
        Command::GenCert { .. }
        | Command::Setup(_)
        | Command::Doctor(_)
        | Command::Certs(_)
        | Command::Completions { .. }
        | Command::Man => {}
    }
    if let Command::Serve(args) = cli.command {
        return serve(*args);
    }
    // On a terminal, prefetch draws a progress bar: info lines would tear it (REGCACHE_LOG
    // still shows them).
    let quiet = matches!(cli.command, Command::Prefetch(_))
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _flush_on_exit = init_logging(LogFormat::Text, if quiet { "warn" } else { "info" });
    match cli.command {
        Command::Serve(_) => unreachable!("served above"),
        Command::CheckConfig(args) => check_config(&args),
        Command::Rm { image, cache } => with_cache(&cache, |s| {
            // A serving mirror does it (its index and usage follow); else on the directory.
            let done = regcache::live::rm(&s.cache_dir, &image)
                .unwrap_or_else(|| regcache::admin::rm(s, &image, regcache::reference::DOCKER_HUB));
            let r = match done {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::NotFound
                    ) =>
                {
                    eprintln!("regcache rm: {e}");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e),
            };
            for t in &r.tags {
                say!("removed tag {t}");
            }
            say!(
                "removed {} objects ({}); kept {} shared with other cached tags",
                r.objects,
                regcache::admin::human(r.bytes),
                r.shared
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Ls {
            repository,
            cache,
            json,
        } => with_cache(&cache, |s| {
            let tags = regcache::admin::ls(s, repository.as_deref())?;
            if json {
                say!("{}", serde_json::to_string_pretty(&tags)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut last = None;
            for t in &tags {
                if last != Some(&t.repository) {
                    say!("{}", t.repository);
                    last = Some(&t.repository);
                }
                say!(
                    "  {:<20} {}  {:>10}  {}/{} blobs cached  confirmed {} ago",
                    t.tag,
                    t.digest,
                    regcache::admin::human(t.cached_bytes),
                    t.blobs.cached,
                    t.blobs.referred,
                    humantime::format_duration(std::time::Duration::from_secs(t.age_seconds))
                );
            }
            if tags.is_empty() {
                say!(
                    "no cached tags{}",
                    repository.map_or(String::new(), |r| format!(" matching {r:?}"))
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into memory first: a closed stdout (`| head`) must not panic.
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "regcache", &mut out);
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(&out);
            ExitCode::SUCCESS
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            let man = clap_mangen::Man::new(cmd.clone());
            let rendered = man.render(&mut out).and_then(|()| {
                // One section per subcommand after the main page.
                for sub in cmd.get_subcommands() {
                    let name: &'static str =
                        Box::leak(format!("regcache-{}", sub.get_name()).into_boxed_str());
                    clap_mangen::Man::new(sub.clone().name(name)).render(&mut out)?;
                }
                Ok(())
            });
            match rendered {
                Ok(()) => {
                    use std::io::Write as _;
                    let _ = std::io::stdout().write_all(&out);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("regcache man: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Prefetch(args) => prefetch(args),
        Command::Setup(args) => ExitCode::from(regcache::clients::setup::run(&args)),
        Command::Doctor(args) => ExitCode::from(regcache::clients::doctor::run_command(*args)),
        Command::Certs(c) => ExitCode::from(regcache::certs::run(c)),
        Command::GenCert {
            hostnames,
            out_dir,
            force,
            new_ca,
        } => ExitCode::from(regcache::certs::run(regcache::certs::CertsCommand::Init {
            hostnames,
            ips: Vec::new(),
            out: Some(out_dir),
            port: regcache::certs::DEFAULT_PORT,
            force,
            new_ca,
        })),
        Command::Status { cache, json } => with_cache(&cache, |s| {
            match regcache::live::fetch(&s.cache_dir) {
                Ok(live) if json => say!("{}", serde_json::to_string_pretty(&live)?),
                Ok(live) => {
                    say_raw!("{}", live.render());
                    // And what is on disk, as the offline report counts it.
                    say_raw!("{}", regcache::admin::status(s)?);
                }
                Err(e) => {
                    let socket = regcache::live::socket_path(&s.cache_dir);
                    let why = format!("no running mirror answers on {} ({e})", socket.display());
                    let (disk, report) = regcache::admin::status_report(s)?;
                    if json {
                        let v = serde_json::json!({
                            "running": false,
                            "why": why,
                            "disk": disk,
                        });
                        say!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        say!("{why}; the cache directory's offline report:");
                        say_raw!("{report}");
                    }
                }
            }
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
            // A serving mirror does it (its index follows), with the budget given here or its own.
            let given = (!s.budget.is_unbounded()).then_some(s.budget);
            let (r, lines) = match regcache::live::gc(&s.cache_dir, dry_run, given) {
                Some(answer) => {
                    let (r, lines, unbounded) = answer?;
                    if unbounded && given.is_none() {
                        say!("the serving mirror has no max_size or min_free: nothing to evict (use --max-size or --min-free)");
                        return Ok(ExitCode::SUCCESS);
                    }
                    (r, lines)
                }
                None if given.is_none() => {
                    say!("no max_size or min_free configured: nothing to evict (use --max-size or --min-free)");
                    return Ok(ExitCode::SUCCESS);
                }
                None => regcache::admin::gc(s, dry_run)?,
            };
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
                "prefetched {} images: {} manifests, {} referrers, {} blobs fetched ({}), {} blobs already cached",
                s.images,
                s.manifests,
                s.referrers,
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
            let dir = settings.cache_dir.display().to_string();
            match e.to_string().contains(&dir) {
                true => eprintln!("regcache: {e}"),
                false => eprintln!("regcache: {dir}: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn check_config(args: &ServeArgs) -> ExitCode {
    let source = args
        .config
        .as_ref()
        .map_or("flags and defaults (no --config)".to_owned(), |p| {
            p.display().to_string()
        });
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regcache check-config: {source}:\n{e}");
            return ExitCode::from(2);
        }
    };
    let problems = config.runtime_problems();
    if !problems.is_empty() {
        eprintln!("regcache check-config: {source}:");
        for p in &problems {
            eprintln!("{p}");
        }
        return ExitCode::from(2);
    }
    for w in config.warnings() {
        eprintln!("warning: {w}");
    }
    say!(
        "{source}: OK (listeners {}, cache_dir {}, registries {})",
        config
            .listeners
            .iter()
            .map(|l| l.label())
            .collect::<Vec<_>>()
            .join(", "),
        config.cache_dir.display(),
        config
            .registries
            .iter()
            .map(|r| format!("{} = {} ({})", r.registry, r.url, r.proxy.describe(&r.url)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    ExitCode::SUCCESS
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regcache: {e}");
            return ExitCode::from(2);
        }
    };
    // The same checks, and messages, as `regcache check-config`.
    let problems = config.runtime_problems();
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("regcache: {p}");
        }
        return ExitCode::from(2);
    }
    let _flush_on_exit = init_logging(config.log_format, "info");
    regcache::config::raise_open_file_limit();
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let code = rt.block_on(regcache::service::run(config, args));
    // Whatever still runs on the blocking pool (a password check for a client long gone) does
    // not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
