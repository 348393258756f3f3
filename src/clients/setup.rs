//! `regcache setup`: writes or merges each client's configuration so that it uses this mirror,
//! prints what changed (a diff with `--dry-run`, which writes nothing) and which service to
//! restart; it never restarts one itself.

use std::net::SocketAddr;
use std::path::PathBuf;

use url::Url;

use super::files::Change;

/// Which clients a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// dockerd: `/etc/docker/daemon.json` `registry-mirrors` (Docker Hub only).
    Docker,
    /// containerd: `certs.d/<registry>/hosts.toml` and the CRI `config_path` in config.toml.
    Containerd,
    /// podman, skopeo, buildah, CRI-O: a `registries.conf.d` drop-in.
    Podman,
    /// BuildKit's buildkitd: `buildkitd.toml` `[registry."docker.io"] mirrors`.
    Buildkit,
    /// Every client above (`doctor`: those installed).
    All,
}

impl Which {
    /// Includes dockerd.
    pub fn docker(self) -> bool {
        matches!(self, Which::Docker | Which::All)
    }
    /// Includes containerd.
    pub fn containerd(self) -> bool {
        matches!(self, Which::Containerd | Which::All)
    }
    /// Includes podman.
    pub fn podman(self) -> bool {
        matches!(self, Which::Podman | Which::All)
    }
    /// Includes BuildKit.
    pub fn buildkit(self) -> bool {
        matches!(self, Which::Buildkit | Which::All)
    }
}

/// Where the clients' config files are: `--root` prefixes every default path (a scratch
/// directory in tests, a chroot), and each file has its own flag.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientPaths {
    /// Prefix of every default client path below, and of the paths the clients' configs name
    /// (containerd's config_path): for scratch directories in tests; configs then name the
    /// prefixed paths.
    #[arg(
        long,
        value_name = "DIR",
        env = "REGCACHE_CLIENT_ROOT",
        default_value = "/"
    )]
    pub root: PathBuf,
    /// dockerd's config file [default: <root>/etc/docker/daemon.json].
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// containerd's config file [default: <root>/etc/containerd/config.toml].
    #[arg(long, value_name = "FILE")]
    pub containerd_config: Option<PathBuf>,
    /// containerd's hosts directory [default: <root>/etc/containerd/certs.d].
    #[arg(long, value_name = "DIR")]
    pub containerd_hosts_dir: Option<PathBuf>,
    /// containers/image's drop-in directory [default: <root>/etc/containers/registries.conf.d].
    #[arg(long, value_name = "DIR")]
    pub registries_conf_d: Option<PathBuf>,
    /// buildkitd's config file [default: <root>/etc/buildkit/buildkitd.toml].
    #[arg(long, value_name = "FILE")]
    pub buildkitd_config: Option<PathBuf>,
}

/// Flags of `regcache setup`.
#[derive(Debug, Clone, clap::Args)]
pub struct SetupArgs {
    /// Which client to configure.
    #[arg(value_name = "CLIENT")]
    pub client: Which,
    /// The mirror's URL as the clients reach it [default: the config's first listener,
    /// 0.0.0.0 as 127.0.0.1].
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Print the changes as a diff; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The mirror's config file (listeners, registries) [default: $REGCACHE_CONFIG, else
    /// /etc/regcache/regcache.toml if it exists].
    #[arg(long, value_name = "FILE", env = "REGCACHE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The CA certificate (PEM) the clients are to trust for an https mirror (`regcache certs
    /// init`'s ca.crt): copied to /etc/docker/certs.d/HOST:PORT/ca.crt and
    /// /etc/containers/certs.d/HOST:PORT/ca.crt, named by containerd's hosts.toml `ca` and
    /// buildkitd.toml `ca`.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// containerd: also write `_default/hosts.toml` (every registry without its own
    /// directory goes to the mirror; it names no server, so each falls back to itself).
    #[arg(long)]
    pub default_host: bool,
    /// The client config files to write.
    #[command(flatten)]
    pub paths: ClientPaths,
}

/// What setup has to know about the mirror.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL clients name (`http://127.0.0.1:5000`), no path.
    pub mirror: Url,
    /// The configured registries: (name clients use, its upstream URL, its `prefix` alias).
    pub registries: Vec<(String, Url, Option<String>)>,
    /// `--ca`: the CA's path (absolute) and its PEM text.
    pub ca: Option<(PathBuf, String)>,
}

impl Target {
    /// The note for an https mirror without `--ca`: where `client` looks for the CA.
    pub fn trust_note(&self, client: &str, place: &str) -> Option<String> {
        (self.mirror.scheme() == "https" && self.ca.is_none()).then(|| {
            format!("{client} must trust the mirror's certificate: a public CA, the system store, or {place} (pass --ca FILE to have setup write it)")
        })
    }
}

/// Whether `bin` is a file in a `PATH` directory.
pub fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// The plan for a client `setup all` leaves alone: none of `bins` is installed.
fn not_installed(client: &'static str, bins: &[&str]) -> Plan {
    Plan {
        client,
        version: None,
        changes: Vec::new(),
        restart: String::new(),
        notes: vec![format!(
            "not installed ({} not on PATH): skipped; `regcache setup {client}` writes it anyway",
            bins.join(", ")
        )],
    }
}

/// `scheme://address` of a listener (0.0.0.0 / :: as the loopback address).
pub fn url_of_listener(scheme: &str, a: SocketAddr) -> String {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(v) => format!("[{v}]"),
        std::net::IpAddr::V4(v) => v.to_string(),
    };
    format!("{scheme}://{ip}:{}", a.port())
}

/// The mirror's URL: `--mirror`, checked (http or https, a host, no path), or the config's.
///
/// Errors: a malformed URL, naming the fix.
pub fn parse_mirror(s: &str) -> Result<Url, String> {
    let u = Url::parse(s).map_err(|e| {
        format!("--mirror {s:?} is not a URL ({e}); write e.g. http://127.0.0.1:5000")
    })?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!(
            "--mirror {s:?}: write http://HOST:PORT or https://HOST:PORT"
        ));
    }
    if u.path() != "/" || u.query().is_some() {
        return Err(format!(
            "--mirror {s:?} has a path; the clients add /v2/ themselves: write {}://{}",
            u.scheme(),
            host_port(&u)
        ));
    }
    Ok(u)
}

/// `host:port` of a URL (the port always written).
pub fn host_port(u: &Url) -> String {
    let host = u.host_str().unwrap_or("");
    match u.port_or_known_default() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// `scheme://host:port` (no trailing slash), as the client configs spell a mirror.
pub fn origin(u: &Url) -> String {
    format!("{}://{}", u.scheme(), host_port(u))
}

/// One client's planned changes and what to do afterwards.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `docker`, `containerd`, ...
    pub client: &'static str,
    /// Its version, as detected.
    pub version: Option<String>,
    /// The files to write.
    pub changes: Vec<Change>,
    /// What to run afterwards (e.g. `systemctl restart containerd`); regcache never does.
    pub restart: String,
    /// Notes worth printing (what the version needs, what the client cannot do).
    pub notes: Vec<String>,
}

/// The plans for the clients `args` selects, or the first error (naming the fix).
pub fn plan(args: &SetupArgs, target: &Target) -> Result<Vec<Plan>, String> {
    let mut plans = Vec::new();
    let w = args.client;
    // `all`: the clients installed here; a client named: written even if not installed.
    let skip = |bins: &[&str]| w == Which::All && !bins.iter().any(|b| on_path(b));
    const DOCKER: &[&str] = &["dockerd"];
    const CONTAINERD: &[&str] = &["containerd"];
    const PODMAN: &[&str] = &["podman", "skopeo", "buildah", "crio"];
    const BUILDKIT: &[&str] = &["buildkitd"];
    if w.docker() {
        plans.push(match skip(DOCKER) {
            true => not_installed("docker", DOCKER),
            false => super::docker::plan(&args.paths, target)?,
        });
    }
    if w.containerd() {
        plans.push(match skip(CONTAINERD) {
            true => not_installed("containerd", CONTAINERD),
            false => super::containerd::plan(&args.paths, target, args.default_host)?,
        });
    }
    if w.podman() {
        plans.push(match skip(PODMAN) {
            true => not_installed("podman", PODMAN),
            false => super::podman::plan(&args.paths, target)?,
        });
    }
    if w.buildkit() {
        plans.push(match skip(BUILDKIT) {
            true => not_installed("buildkit", BUILDKIT),
            false => super::buildkit::plan(&args.paths, target)?,
        });
    }
    Ok(plans)
}

/// Prints (or applies) the plans: the diff with `dry_run`, else each file written and its
/// backup; then the restart to do. Returns the text to print.
///
/// Errors: a file that cannot be written (nothing after it is written).
pub fn apply(plans: &[Plan], dry_run: bool) -> std::io::Result<String> {
    let mut out = String::new();
    for p in plans {
        let v = p.version.as_deref().unwrap_or("version unknown");
        out.push_str(&format!("{} ({v}):\n", p.client));
        for n in &p.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        let mut changed = false;
        for c in &p.changes {
            if c.is_noop() {
                out.push_str(&format!("  {}: already set, unchanged\n", c.path.display()));
                continue;
            }
            changed = true;
            if dry_run {
                out.push_str(&c.diff());
            } else {
                let backup = c.apply()?;
                match backup {
                    Some(b) => out.push_str(&format!(
                        "  wrote {} (the old one is in {})\n",
                        c.path.display(),
                        b.display()
                    )),
                    None => out.push_str(&format!("  wrote {} (new)\n", c.path.display())),
                }
            }
        }
        if changed && !p.restart.is_empty() {
            let verb = if dry_run {
                "after writing, run"
            } else {
                "now run"
            };
            out.push_str(&format!(
                "  {verb}: {} (regcache restarts nothing)\n",
                p.restart
            ));
        }
    }
    if dry_run {
        out.push_str("dry run: nothing written\n");
    }
    Ok(out)
}

/// `--ca FILE`: its absolute path and text, checked to hold PEM certificates.
///
/// Errors: unreadable, or no `CERTIFICATE` block in it (the message says what to pass).
fn read_ca(p: &std::path::Path) -> Result<(PathBuf, String), String> {
    let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
    use rustls_pki_types::pem::PemObject as _;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM ({e})"))?;
    if certs.is_empty() {
        return Err("holds no certificate: pass the CA's ca.crt (regcache certs init writes /etc/regcache/certs/ca.crt)".into());
    }
    let abs = std::path::absolute(p).map_err(|e| e.to_string())?;
    Ok((abs, text))
}

/// A client's version, from `<bin> <args>` (e.g. `containerd --version`): the first
/// `MAJOR.MINOR[.PATCH]` in its output, as numbers, and the text it printed.
///
/// Errors: the binary is not on PATH or fails, or prints no version (the message names it).
pub fn detect_version(bin: &str, args: &[&str]) -> Result<((u64, u64, u64), String), String> {
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{bin} {}` ({e})", args.join(" ")))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_version(&text)
        .map(|v| (v, format!("{}.{}.{}", v.0, v.1, v.2)))
        .ok_or_else(|| {
            format!(
                "`{bin} {}` printed no version ({:?})",
                args.join(" "),
                text.trim().chars().take(120).collect::<String>()
            )
        })
}

/// The first `MAJOR.MINOR[.PATCH]` token in `text` (a leading `v` allowed).
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|tok| {
            let t = tok.trim_start_matches('v');
            let mut nums = t
                .split(|c: char| !c.is_ascii_digit())
                .take_while(|s| !s.is_empty());
            let first = t.chars().next()?;
            if !first.is_ascii_digit() || !t.contains('.') {
                return None;
            }
            let major = nums.next()?.parse().ok()?;
            let minor = nums.next()?.parse().ok()?;
            let patch = nums.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            Some((major, minor, patch))
        })
}

/// The mirror's configuration for setup and doctor: its config file (or the defaults), with
/// `cache_dir` overriding the file's.
///
/// Errors: the config does not load (the message names the key and fix).
pub fn load_config(
    config: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
) -> Result<crate::config::Config, String> {
    let args = crate::config::ServeArgs {
        config: crate::config::config_or_default(config),
        cache_dir,
        ..Default::default()
    };
    crate::config::Config::load(&args).map_err(|e| e.to_string())
}

/// `regcache setup`: plans, prints (or writes) and says what to restart. Exit status: 0, 1 when
/// a file could not be written, 2 on a problem found before writing anything.
pub fn run(args: &SetupArgs) -> u8 {
    let config = match load_config(args.config.clone(), None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regcache setup: the mirror's config: {e}");
            return 2;
        }
    };
    let mirror = match &args.mirror {
        Some(m) => parse_mirror(m),
        None => {
            let l = &config.listeners[0];
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            parse_mirror(&url_of_listener(scheme, l.address))
        }
    };
    let mirror = match mirror {
        Ok(m) => m,
        Err(e) => {
            eprintln!("regcache setup: {e}");
            return 2;
        }
    };
    let ca = match &args.ca {
        None => None,
        Some(p) => match read_ca(p) {
            Ok(ca) => Some(ca),
            Err(e) => {
                eprintln!("regcache setup: --ca {}: {e}", p.display());
                return 2;
            }
        },
    };
    let target = Target {
        ca,
        mirror,
        registries: config
            .registries
            .iter()
            .map(|r| (r.registry.clone(), r.url.clone(), r.prefix.clone()))
            .collect(),
    };
    let plans = match plan(args, &target) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("regcache setup: {e}");
            return 2;
        }
    };
    match apply(&plans, args.dry_run) {
        Ok(text) => {
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(text.as_bytes());
            0
        }
        Err(e) => {
            eprintln!(
                "regcache setup: {e} (files before it were written; their backups are beside them)"
            );
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_real_outputs() {
        assert_eq!(
            parse_version(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
            ),
            Some((1, 6, 20))
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd/v2 v2.1.3 abc"),
            Some((2, 1, 3))
        );
        assert_eq!(
            parse_version("Docker version 20.10.24+dfsg1, build 5d6db84"),
            Some((20, 10, 24))
        );
        assert_eq!(parse_version("podman version 4.3.1"), Some((4, 3, 1)));
        assert_eq!(
            parse_version("buildkitd github.com/moby/buildkit v0.12.5 bf1"),
            Some((0, 12, 5))
        );
        assert_eq!(parse_version("nothing here"), None);
    }

    #[test]
    fn mirror_urls() {
        assert!(parse_mirror("http://127.0.0.1:5000").is_ok());
        assert!(parse_mirror("http://127.0.0.1:5000/v2")
            .unwrap_err()
            .contains("path"));
        assert!(parse_mirror("127.0.0.1:5000").is_err());
    }
}
