//! `regcache doctor`: for each client installed here, whether it really uses this mirror —
//! its config names the mirror in a form its version honours, the mirror answers at that
//! address with the scheme the client uses, TLS trust is in place, and, end to end, the client
//! resolves a small reference and the running mirror saw that request from that client (its
//! admin socket's `GET /-/clients`, matched by client kind and time).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use url::Url;

use super::setup::ClientPaths;
use super::ClientKind;

/// What `doctor` found for one client.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// `docker`, `containerd`, `podman`, `buildkit`.
    pub client: String,
    /// The client's version, as its binary reports it.
    pub version: Option<String>,
    /// Everything checked holds (`false`: see `reason` and `fix`).
    pub ok: bool,
    /// Not installed here: nothing was checked (not a failure).
    pub skipped: bool,
    /// What holds, or the first thing that does not.
    pub reason: String,
    /// The exact fix, when something does not hold.
    pub fix: Option<String>,
}

impl Verdict {
    /// A client found using the mirror.
    pub fn pass(client: &str, version: Option<String>, reason: String) -> Verdict {
        Verdict {
            client: client.into(),
            version,
            ok: true,
            skipped: false,
            reason,
            fix: None,
        }
    }

    /// A client that does not use the mirror: why, and the fix.
    pub fn fail(client: &str, version: Option<String>, reason: String, fix: String) -> Verdict {
        Verdict {
            client: client.into(),
            version,
            ok: false,
            skipped: false,
            reason,
            fix: Some(fix),
        }
    }

    /// A client not installed here.
    pub fn skip(client: &str, reason: String) -> Verdict {
        Verdict {
            client: client.into(),
            version: None,
            ok: true,
            skipped: true,
            reason,
            fix: None,
        }
    }

    /// The line `doctor` prints: `✔ docker 20.10.24: ...`, `✘ ... — fix: ...`, `- ...`.
    pub fn line(&self) -> String {
        let mark = match (self.skipped, self.ok) {
            (true, _) => "-",
            (false, true) => "✔",
            (false, false) => "✘",
        };
        let version = self
            .version
            .as_deref()
            .map_or(String::new(), |v| format!(" {v}"));
        let fix = self
            .fix
            .as_deref()
            .map_or(String::new(), |f| format!(" — fix: {f}"));
        format!("{mark} {}{version}: {}{fix}", self.client, self.reason)
    }
}

/// Flags of `regcache doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Which clients: docker, containerd, podman, buildkit, all (default: all installed).
    #[arg(value_name = "CLIENT", default_value = "all")]
    pub client: super::setup::Which,
    /// The mirror's config file (its listeners and cache directory) [default:
    /// $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists].
    #[arg(long, value_name = "FILE", env = "REGCACHE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The mirror's cache directory (where its admin socket is), instead of the config's.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The mirror's listen address, instead of its listeners (the running mirror's, else the
    /// config's).
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen)]
    pub listen: Option<SocketAddr>,
    /// The client config files to check.
    #[command(flatten)]
    pub paths: ClientPaths,
    /// The small image the clients resolve for the end-to-end proof (a docker.io name).
    #[arg(
        long,
        value_name = "IMAGE",
        default_value = "library/hello-world:latest"
    )]
    pub image: String,
    /// dockerd's socket [default: $DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long, value_name = "URL", env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// containerd's socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_address: PathBuf,
    /// Only check the configs and the mirror's address; no end-to-end pull.
    #[arg(long)]
    pub no_pull: bool,
    /// Print JSON: one object per client (`client`, `version`, `ok`, `skipped`, `reason`,
    /// `fix`).
    #[arg(long)]
    pub json: bool,
}

/// What every client's check needs: where this mirror listens and its admin socket.
pub struct Context {
    /// This mirror's listeners: (scheme, address).
    pub listeners: Vec<(String, SocketAddr)>,
    /// The cache directory whose admin socket answers for the running mirror.
    pub cache_dir: PathBuf,
    /// The doctor's flags.
    pub args: DoctorArgs,
}

/// How a URL a client names relates to this mirror.
#[derive(Debug, PartialEq)]
pub enum Named {
    /// One of its listeners.
    Yes,
    /// The host of a listener with another port: the listener's address.
    WrongPort(SocketAddr),
    /// Something else.
    No,
}

impl Context {
    /// Whether `url` (`scheme://host:port`) names one of this mirror's listeners.
    pub fn names(&self, url: &Url) -> Named {
        let Some(host) = url.host_str() else {
            return Named::No;
        };
        let port = url.port_or_known_default().unwrap_or(0);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ips: Vec<std::net::IpAddr> = (host, port)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default();
        let mut wrong = Named::No;
        for (_, l) in &self.listeners {
            let same_host = ips.iter().any(|ip| {
                *ip == l.ip()
                    || (l.ip().is_unspecified())
                    || (ip.is_loopback() && l.ip().is_loopback())
            });
            if same_host && port == l.port() {
                return Named::Yes;
            }
            if same_host && wrong == Named::No {
                wrong = Named::WrongPort(*l);
            }
        }
        wrong
    }

    /// The URL clients should name: `--mirror`-like, from the first listener (an unspecified
    /// address becomes 127.0.0.1).
    pub fn mirror_url(&self) -> String {
        match self.listeners.first() {
            Some((scheme, a)) => super::setup::url_of_listener(scheme, *a),
            None => "http://127.0.0.1:5000".into(),
        }
    }

    /// The mirror's answer to `GET /-/clients`: the first manifest request of `kind` that
    /// arrived at or after `since_ms` (else its first request then, e.g. the `/v2/` ping).
    ///
    /// Errors: no mirror answers on the admin socket (with the reason).
    pub fn saw(&self, kind: ClientKind, since_ms: u64) -> Result<Option<super::Seen>, String> {
        let recent = super::fetch_recent(&self.cache_dir).map_err(|e| e.to_string())?;
        let since: Vec<&super::Seen> = recent
            .get(kind.as_str())
            .map(|v| v.iter().filter(|s| s.at_unix_ms >= since_ms).collect())
            .unwrap_or_default();
        Ok(since
            .iter()
            .find(|s| s.path.contains("/manifests/"))
            .or(since.first())
            .map(|s| (*s).clone()))
    }

    /// Whether a mirror answers on the admin socket: `Err` with why not.
    pub fn running(&self) -> Result<(), String> {
        super::fetch_recent(&self.cache_dir)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `GET /v2/` at `url` with the scheme it names, trusting the system's roots and `ca_files`
/// for https: the status, or why no answer came (connection refused, a TLS error, a timeout).
pub fn probe_v2(url: &Url, ca_files: &[PathBuf]) -> Result<u16, String> {
    let host = url.host_str().ok_or("no host in the URL")?.to_owned();
    let port = url.port_or_known_default().ok_or("no port in the URL")?;
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let timeout = Duration::from_secs(5);
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("nothing answers at {addr} ({e})"))?;
    tcp.set_read_timeout(Some(timeout)).ok();
    tcp.set_write_timeout(Some(timeout)).ok();
    let request =
        format!("GET /v2/ HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: regcache-doctor\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    if url.scheme() == "https" {
        let config = tls_config(ca_files)?;
        let name = rustls_pki_types::ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| format!("{host}: {e}"))?;
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(request.as_bytes())
            .map_err(|e| format!("TLS: {e}"))?;
        if let Err(e) = tls.read_to_end(&mut buf) {
            if buf.is_empty() {
                return Err(format!("TLS: {e}"));
            }
        }
    } else {
        tcp.write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let _ = tcp.read_to_end(&mut buf);
    }
    let head = String::from_utf8_lossy(&buf);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            if url.scheme() == "http" && buf.first() == Some(&0x15) {
                "the mirror answers TLS there, not plain HTTP".to_owned()
            } else {
                format!("{addr} does not answer HTTP")
            }
        })
}

fn tls_config(ca_files: &[PathBuf]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    for f in ca_files {
        let pem = std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let c: rustls_pki_types::CertificateDer =
                c.map_err(|e| format!("{}: {e}", f.display()))?;
            roots.add(c).map_err(|e| format!("{}: {e}", f.display()))?;
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Whether `url`'s host is a loopback address (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// The common checks on one mirror URL a client names, in order: it names this mirror (else
/// `WrongPort`/`No`), it answers `/v2/` with that scheme (TLS with `ca_files`), a mirror runs
/// behind the admin socket. `Ok` with the `/v2/` status (200, or 401: credentials asked), or
/// `Err((reason, fix))` on the first that fails.
pub fn check_address(
    ctx: &Context,
    url: &Url,
    ca_files: &[PathBuf],
    setup_cmd: &str,
) -> Result<u16, (String, String)> {
    match ctx.names(url) {
        Named::Yes => {}
        Named::WrongPort(l) => {
            return Err((
                format!(
                    "names {url} but this mirror listens on port {} ({l})",
                    l.port()
                ),
                format!("{setup_cmd} (or write port {} there)", l.port()),
            ))
        }
        Named::No => {
            return Err((
                format!("names {url}, not this mirror ({})", listeners_text(ctx)),
                setup_cmd.to_owned(),
            ))
        }
    }
    let status =
        match probe_v2(url, ca_files) {
            Ok(s @ (200 | 401)) => s,
            Ok(s) => {
                return Err((
                    format!("GET {url}v2/ answered {s}, not 200 or 401"),
                    "check the mirror's log (journalctl -u regcache)".into(),
                ))
            }
            Err(e) if e.starts_with("TLS") => return Err((
                format!("{url}: {e}"),
                match ca_files.first() {
                    Some(c) => format!(
                        "put the mirror's CA (regcache certs init's ca.crt) at {}",
                        c.display()
                    ),
                    None => {
                        "trust the mirror's CA (regcache certs init's ca.crt) in the system store"
                            .into()
                    }
                },
            )),
            Err(e) => return Err((
                format!("the mirror does not answer at {url}: {e}"),
                "start it: systemctl start regcache.socket regcache.service (or regcache serve)"
                    .into(),
            )),
        };
    if let Err(e) = ctx.running() {
        return Err((
            format!("no regcache answers on its admin socket: {e}"),
            "start it (systemctl start regcache), or pass the mirror's --config / --cache-dir"
                .into(),
        ));
    }
    Ok(status)
}

/// `scheme://address, ...` of the mirror's listeners.
pub fn listeners_text(ctx: &Context) -> String {
    ctx.listeners
        .iter()
        .map(|(s, a)| format!("{s}://{a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The end-to-end proof: runs `cmd` (the client resolving `--image`), then asks the mirror
/// whether it saw a request of `kind` since just before. `Ok(seen)` or `Err((reason, fix))`.
pub fn prove(
    ctx: &Context,
    kind: ClientKind,
    what: &str,
    cmd: &mut std::process::Command,
    bypass_fix: &str,
) -> Result<super::Seen, (String, String)> {
    let since = super::now_unix_ms().saturating_sub(1000);
    let out = run(cmd, Duration::from_secs(120));
    let seen = ctx.saw(kind, since).map_err(|e| {
        (
            format!("no regcache answers on its admin socket: {e}"),
            "start it (systemctl start regcache)".to_owned(),
        )
    })?;
    match (seen, out) {
        (Some(s), _) => Ok(s),
        (None, Ok(_)) => Err((
            format!("`{what}` succeeded but the mirror saw no request from {} since: the client went around it", kind.as_str()),
            bypass_fix.to_owned(),
        )),
        (None, Err(e)) => Err((
            format!("`{what}` failed and the mirror saw no request from {}: {e}", kind.as_str()),
            bypass_fix.to_owned(),
        )),
    }
}

/// Runs `cmd` with a deadline: its stdout, or why it failed (exit status and the end of its
/// stderr, a timeout, not found).
pub fn run(cmd: &mut std::process::Command, timeout: Duration) -> Result<String, String> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {}s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(2).collect();
        Err(format!(
            "{}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    }
}

/// Runs the checks of the clients `args` selects; the verdicts, one per client.
pub fn run_all(ctx: &Context) -> Vec<Verdict> {
    let which = ctx.args.client;
    let mut v = Vec::new();
    if which.docker() {
        v.push(super::docker::doctor(ctx));
    }
    if which.containerd() {
        v.push(super::containerd::doctor(ctx));
    }
    if which.podman() {
        v.push(super::podman::doctor(ctx));
    }
    if which.buildkit() {
        v.push(super::buildkit::doctor(ctx));
    }
    v
}

/// `path`, or `<root>/default`.
pub fn or_under(path: &Option<PathBuf>, root: &Path, default: &str) -> PathBuf {
    path.clone()
        .unwrap_or_else(|| super::files::under(root, default))
}

/// `regcache doctor`: one line per client (or JSON); exit status 1 when any client fails, 2
/// when the mirror's config does not load.
pub fn run_command(args: DoctorArgs) -> u8 {
    let config = match super::setup::load_config(args.config.clone(), args.cache_dir.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regcache doctor: the mirror's config: {e}");
            return 2;
        }
    };
    // The running mirror's own listeners when it answers (its config may differ from the
    // file's), else the file's.
    let live: Vec<(String, SocketAddr)> = crate::live::fetch(&config.cache_dir)
        .map(|st| {
            st.listen
                .split(", ")
                .filter_map(|l| {
                    let (scheme, rest) = l.split_once("://")?;
                    let addr = rest.split(' ').next()?.parse().ok()?;
                    Some((scheme.to_owned(), addr))
                })
                .collect()
        })
        .unwrap_or_default();
    let listeners = match args.listen {
        Some(a) => {
            let scheme = live
                .iter()
                .find(|(_, l)| *l == a)
                .map_or("http", |(s, _)| s.as_str());
            vec![(scheme.to_owned(), a)]
        }
        None if !live.is_empty() => live,
        None => config
            .listeners
            .iter()
            .map(|l| {
                let s = if l.tls.is_some() { "https" } else { "http" };
                (s.to_owned(), l.address)
            })
            .collect(),
    };
    let ctx = Context {
        listeners,
        cache_dir: config.cache_dir.clone(),
        args,
    };
    let verdicts = run_all(&ctx);
    use std::io::Write as _;
    let mut out = std::io::stdout();
    if ctx.args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&verdicts).unwrap_or_default()
        );
    } else {
        for v in &verdicts {
            let _ = writeln!(out, "{}", v.line());
        }
    }
    u8::from(verdicts.iter().any(|v| !v.ok))
}
