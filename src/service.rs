//! The mirror as a Linux service: takes its listening sockets from systemd (socket activation,
//! `LISTEN_FDS`/`LISTEN_FDNAMES`) or binds them, tells systemd when it is ready
//! (`sd_notify`: `READY=1`, `STATUS=`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`), re-reads
//! rotated secrets on SIGHUP, and stops gracefully on SIGTERM/SIGINT (a second one cuts the
//! wait).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::{Config, ListenerConfig, ServeArgs};
use crate::http::listener::Listener;
use crate::http::server::Stop;
use crate::mirror::Mirror;

/// Runs the mirror for `config` (loaded from `args`, which a reload reads again) until it is
/// stopped. Every message an operator needs is printed or logged here; the exit code is 0
/// after a stop by signal, 1 when it cannot start.
pub async fn run(config: Config, args: ServeArgs) -> ExitCode {
    // Signals are caught from the start: SIGHUP's default action would kill the mirror.
    let signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("regcache: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every listener's files are loaded (and checked) before anything is announced.
    let mut settings = Vec::new();
    for l in &config.listeners {
        match Listener::load(l) {
            Ok(s) => settings.push(s),
            Err(e) => {
                eprintln!("regcache: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let cache_dir = config.cache_dir.clone();
    let mirror = match Mirror::new(config) {
        Ok(m) => Arc::new(m),
        // An upstream's TLS setup (ca_file, client_cert) fails with ErrorKind::Other; the cache
        // directory with the file system's own kinds.
        Err(e) if e.kind() == std::io::ErrorKind::Other => {
            eprintln!("regcache: cannot set up an upstream: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!(
                "regcache: cannot open cache directory {}: {e} (create it, writable by this user, or pick another with --cache-dir)",
                cache_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let health = mirror.cache().health();
    if let (Some(free), Some(min)) = (health.free_bytes, health.min_free_bytes) {
        if free < min {
            tracing::warn!(
                free = %crate::admin::human(free),
                min_free = %crate::admin::human(min),
                "free space is already below min_free: eviction will remove cached content (all of it, if other files keep the disk this full); lower min_free or free the disk"
            );
        }
    }
    // A cache that cannot be written would make a silent non-caching proxy.
    if let Some(why) = health.write_error {
        eprintln!("regcache: {why} (make the cache directory writable by this user, or pick another with --cache-dir)");
        return ExitCode::FAILURE;
    }
    let bound = match bind(&mirror.config().listeners).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("regcache: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What is actually listening: a socket systemd passed may sit elsewhere than the config
    // says (and port 0 is a real port now). The exposure rule holds for those addresses too.
    let effective: Vec<ListenerConfig> = mirror
        .config()
        .listeners
        .iter()
        .zip(&bound)
        .map(|(l, (socket, _))| ListenerConfig {
            address: socket.local_addr().unwrap_or(l.address),
            ..l.clone()
        })
        .collect();
    let refused = mirror.config().exposure_problems(&effective);
    if !refused.is_empty() {
        for p in refused {
            eprintln!("regcache: {p} (the socket's own address, as bound or passed by systemd)");
        }
        return ExitCode::from(2);
    }
    for (l, e) in mirror.config().listeners.iter().zip(&effective) {
        if l.address != e.address && l.address.port() != 0 {
            tracing::warn!(configured = %l.address, actual = %e.address, "listener {}: the socket systemd passed is on another address than the config's; the config's address is not used", l.label());
        }
    }
    announce(&mirror, &effective, &bound);
    let listeners: Vec<_> = bound
        .into_iter()
        .zip(settings.iter().cloned())
        .map(|((l, _), s)| (l, s))
        .collect();
    let summary = status_line(&mirror, &effective);
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&summary),
    ]);
    let watchdog = tokio::spawn(watchdog());
    let phase = signals.phase.clone();
    let reloads = tokio::spawn(reload_on_sighup(
        signals.hangup,
        args,
        mirror.clone(),
        settings,
        effective,
    ));
    let grace = mirror.config().shutdown_grace;
    let mut first = phase.clone();
    let mut second = phase;
    let open = crate::http::server::serve_listeners(
        listeners,
        mirror,
        Stop {
            shutdown: async move {
                let _ = first.wait_for(|p| *p >= 1).await;
                tracing::info!("shutting down: no new connections; responses in progress get shutdown_grace to finish");
                notify(&[
                    sd_notify::NotifyState::Stopping,
                    sd_notify::NotifyState::Status("stopping: finishing responses in progress"),
                ]);
            },
            hurry: async move {
                let _ = second.wait_for(|p| *p >= 2).await;
            },
            grace,
        },
    )
    .await;
    reloads.abort();
    watchdog.abort();
    drop(signals.task);
    tracing::info!(cut = open, "stopped");
    ExitCode::SUCCESS
}

/// The signal handlers, installed before anything else.
struct Signals {
    /// 0 running, 1 after SIGTERM/SIGINT, 2 after the second.
    phase: watch::Receiver<u8>,
    /// SIGHUP.
    hangup: tokio::signal::unix::Signal,
    /// Counts SIGTERM/SIGINT into `phase`.
    task: tokio::task::JoinHandle<()>,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let hangup = signal(SignalKind::hangup())?;
        let (tx, rx) = watch::channel(0u8);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tx.send_modify(|p| *p = (*p + 1).min(2));
            }
        });
        Ok(Signals {
            phase: rx,
            hangup,
            task,
        })
    }
}

/// A message to systemd's notification socket, when there is one (`NOTIFY_SOCKET`); nothing
/// otherwise.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `WATCHDOG=1` at half the interval systemd asks for (`WatchdogSec=`), while the runtime
/// schedules tasks.
async fn watchdog() {
    let Some(every) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tick.tick().await;
        notify(&[sd_notify::NotifyState::Watchdog]);
    }
}

/// One line for systemd's `STATUS=` and the logs: where it listens and what it mirrors.
fn status_line(mirror: &Mirror, listeners: &[ListenerConfig]) -> String {
    format!(
        "serving {} for {}",
        listeners
            .iter()
            .map(ListenerConfig::label)
            .collect::<Vec<_>>()
            .join(", "),
        mirror.registries().names().collect::<Vec<_>>().join(", ")
    )
}

/// The startup log line.
fn announce(
    mirror: &Mirror,
    effective: &[ListenerConfig],
    bound: &[(tokio::net::TcpListener, Origin)],
) {
    let c = mirror.config();
    let listeners: Vec<String> = effective
        .iter()
        .zip(bound)
        .map(|(l, (_, origin))| {
            let auth = match (l.htpasswd.is_some(), l.verifies_client_certificates()) {
                (true, true) => "htpasswd or client certificate",
                (true, false) => "htpasswd",
                (false, true) => "client certificate",
                (false, false) if l.is_loopback() => "none (loopback)",
                (false, false) => "none (allow_anonymous)",
            };
            format!("{} [auth: {auth}; {}]", l.label(), origin.as_str())
        })
        .collect();
    tracing::info!(
        listeners = %listeners.join(", "),
        default_registry = %c.default_registry,
        upstream = %mirror.registries().default_upstream().host(),
        registries = %mirror.registries().names().collect::<Vec<_>>().join(","),
        credentials_for = %c.registries_with_credentials().join(","),
        offline = c.offline,
        cache_dir = %mirror.cache().store().root().display(),
        max_size = %c.budget.max_size.map_or("unbounded".to_owned(), crate::admin::human),
        min_free = %c.budget.min_free.map_or("none".to_owned(), |m| match m {
            crate::cache::eviction::MinFree::Bytes(b) => crate::admin::human(b),
            crate::cache::eviction::MinFree::Percent(p) => format!("{p}%"),
        }),
        tag_ttl = %humantime::format_duration(c.tag_ttl),
        shutdown_grace = %humantime::format_duration(c.shutdown_grace),
        "regcache serving"
    );
}

/// Where a listening socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Passed by systemd (socket activation).
    Activated,
    /// Bound by regcache.
    Bound,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Activated => "socket from systemd",
            Origin::Bound => "bound",
        }
    }
}

/// The listening sockets, in the order of `listeners`: those systemd passed (matched to a
/// listener by `name` = `FileDescriptorName=`, else by address), the rest bound here.
///
/// Errors: a passed socket that is not a listening TCP socket or matches no listener, or an
/// address that cannot be bound; each message names the fix.
async fn bind(
    listeners: &[ListenerConfig],
) -> Result<Vec<(tokio::net::TcpListener, Origin)>, String> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut passed: Vec<Option<std::net::TcpListener>> =
        (0..listeners.len()).map(|_| None).collect();
    for i in 0..fds.len() {
        let socket = fds
            .take_tcp_listener(i)
            .map_err(|e| format!("socket activation: passed socket #{} is not a listening TCP socket ({e}); make the socket unit's entries ListenStream= addresses", i + 1))?
            .ok_or_else(|| format!("socket activation: passed socket #{} is not a listening TCP socket", i + 1))?;
        let addr = socket
            .local_addr()
            .map_err(|e| format!("socket activation: passed socket #{}: {e}", i + 1))?;
        let name = names.get(i).map(String::as_str);
        let by_name =
            name.and_then(|n| listeners.iter().position(|l| l.name.as_deref() == Some(n)));
        let by_addr = || listeners.iter().position(|l| same_address(l.address, addr));
        let Some(at) = by_name.or_else(by_addr) else {
            return Err(format!(
                "socket activation: systemd passed a socket on {addr}{} that matches no listener; add a [[listeners]] entry with address = \"{addr}\"{}, or remove it from the socket unit",
                name.map(|n| format!(" (FileDescriptorName={n})")).unwrap_or_default(),
                name.map(|n| format!(" or name = \"{n}\"")).unwrap_or_default(),
            ));
        };
        if passed[at].is_some() {
            return Err(format!(
                "socket activation: two passed sockets match listener {}; give each ListenStream= its own FileDescriptorName= and [[listeners]] name",
                listeners[at].label()
            ));
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("socket activation: {addr}: {e}"))?;
        passed[at] = Some(socket);
    }
    let mut out = Vec::new();
    for (l, socket) in listeners.iter().zip(passed) {
        out.push(match socket {
            Some(s) => (
                tokio::net::TcpListener::from_std(s)
                    .map_err(|e| format!("socket activation: {}: {e}", l.label()))?,
                Origin::Activated,
            ),
            None => (
                tokio::net::TcpListener::bind(l.address).await.map_err(|e| {
                    format!(
                        "cannot listen on {}: {e} (pick another address with --listen or the listener's address)",
                        l.address
                    )
                })?,
                Origin::Bound,
            ),
        });
    }
    Ok(out)
}

/// Whether a passed socket's address is a listener's: equal, or the listener names port 0.
fn same_address(configured: SocketAddr, actual: SocketAddr) -> bool {
    configured == actual || (configured.ip() == actual.ip() && configured.port() == 0)
}

/// On each SIGHUP: reads the configuration again and applies what can change without a
/// restart: listener certificates, client CAs and htpasswd files, upstream credentials
/// (password files). Everything else that changed is reported as needing a restart. A
/// configuration that no longer loads changes nothing.
async fn reload_on_sighup(
    mut hangup: tokio::signal::unix::Signal,
    args: ServeArgs,
    mirror: Arc<Mirror>,
    listeners: Vec<Arc<Listener>>,
    effective: Vec<ListenerConfig>,
) {
    while hangup.recv().await.is_some() {
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
            Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
        }
        let outcome = reload(&args, &mirror, &listeners);
        let summary = match &outcome {
            Ok(r) => {
                for p in &r.failed {
                    tracing::error!("reload: {p}");
                }
                if !r.failed.is_empty() {
                    tracing::warn!(
                        failed = r.failed.len(),
                        "reload incomplete: the listeners named above keep their old files"
                    );
                }
                tracing::info!(
                    listeners = r.listeners,
                    credentials_changed = %r.credentials.join(","),
                    needs_restart = %r.restart.join(","),
                    failed = r.failed.len(),
                    "reloaded: certificates, client CAs, htpasswd and password files read again, freshness policy (tag_ttl, immutable_tags, max_stale, policies) and rate_limit_reserve applied{}",
                    if r.restart.is_empty() { String::new() } else { format!("; restart regcache to apply the other changes ({})", r.restart.join(", ")) }
                );
                status_line(&mirror, &effective)
            }
            Err(e) => {
                tracing::error!("reload failed, the running configuration stays: {e}");
                format!("{}; last reload failed", status_line(&mirror, &effective))
            }
        };
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&summary),
        ]);
    }
}

/// What a reload did.
#[derive(Debug, Default)]
struct Reloaded {
    /// Listeners whose files were read again.
    listeners: usize,
    /// Registries whose credentials changed.
    credentials: Vec<String>,
    /// Settings that changed but need a restart.
    restart: Vec<String>,
    /// Listeners (or registries) whose new files did not load (they keep the old ones).
    failed: Vec<String>,
}

fn reload(
    args: &ServeArgs,
    mirror: &Mirror,
    listeners: &[Arc<Listener>],
) -> Result<Reloaded, String> {
    let new = Config::load(args).map_err(|e| e.to_string())?;
    let old = mirror.config();
    let mut r = Reloaded {
        restart: crate::config::needs_restart(old, &new)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        ..Default::default()
    };
    for l in listeners {
        let Some(n) = new
            .listeners
            .iter()
            .find(|n| n.address == l.config().address)
        else {
            continue;
        };
        match l.reload(n) {
            Ok(()) => r.listeners += 1,
            Err(e) => r.failed.push(e),
        }
    }
    for n in &new.registries {
        if let Some(up) = mirror.registries().get(&n.registry) {
            if up.set_credentials(n.credentials.clone()) {
                r.credentials.push(n.registry.clone());
            }
            up.governor().set_reserve(n.rate_limit_reserve);
        }
    }
    mirror.cache().set_policies(
        new.tag_ttl,
        new.registries
            .iter()
            .map(|n| (n.registry.clone(), n.freshness.clone()))
            .collect(),
    );
    Ok(r)
}
