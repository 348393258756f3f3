//! Configuration: the TOML file, the command-line flags that override it, and the embedded
//! defaults. Parsing is pure (no environment access but `${CREDENTIALS_DIRECTORY}` in paths) so
//! it can be tested; [`Config::load`] does the I/O (reading the file, the password files and
//! the proxy variables).
//!
//! Here: [`Config`] and how it is resolved from the file and the flags. Beside it: `file` (the
//! file's shape, [`parse_file`] reporting every problem with its line), `values` (the value
//! syntaxes: sizes, rates, durations, listen addresses, paths), [`listeners`], [`freshness`]
//! and `reload` ([`needs_restart`]).
//!
//! ```toml
//! listen = "127.0.0.1:5000"
//! cache_dir = "/var/cache/regcache"
//! tag_ttl = "0s"            # how long a tag->digest answer is trusted before revalidation
//! max_size = "20GiB"        # optional: most bytes the cache may take on disk
//! min_free = "10%"          # optional: free space to leave on the filesystem ("5GiB" or "10%")
//! offline = false           # true: serve only from the cache, never contact upstream
//! revalidate_timeout = "5s" # wait this long for upstream, then serve cached (or fail fast)
//! idle_timeout = "60s"      # drop and resume a download that receives nothing this long
//! outage_backoff = "10s"    # after an upstream stops answering, skip it this long...
//! outage_probe_interval = "500ms"   # ...but for one probe this often (its return is seen at once)
//! min_fill_rate = "1KiB/s"  # a download slower than this over idle_timeout is resumed
//! header_read_timeout = "30s"  # a client must send its request head (or HTTP/2 preface) this fast
//! max_connections = 4096    # client connections at once (default: half the open-file limit)
//! client_idle_timeout = "2m"   # close a client connection with no request in progress this long
//! max_manifest_size = "4MiB"   # larger manifests from upstream are refused
//! max_upstream_bandwidth = "2MiB/s"   # optional cap for all fills together
//! tls_cert = "/etc/regcache/regcache.crt"  # optional: serve HTTPS (with tls_key)
//! tls_key = "/etc/regcache/regcache.key"
//! shutdown_grace = "5m"     # on SIGTERM, what is in progress gets this long to finish
//! default_registry = "docker.io"   # used when a request names no registry
//! [upstream]                # shorthand for [registries."<default_registry>"]
//! url = "https://registry-1.docker.io"
//! username = "someone"        # optional
//! password_file = "/etc/regcache/upstream.secret"   # optional
//! [registries."ghcr.io"]    # more registries, selected by ?ns= or a /v2/<registry>/ prefix
//! url = "https://ghcr.io"
//! [registries."registry.internal:5443"]
//! ca_file = "/etc/regcache/internal-ca.pem"
//! redirect_hosts = ["minio.internal:9000"]   # private redirect targets allowed for this one
//! proxy = "none"            # direct, whatever HTTPS_PROXY says (or "http://[user:pass@]host:port")
//! [[registries."docker.io".policy]]   # freshness per repository pattern (see `freshness`)
//! repositories = "library/*"
//! tag_ttl = "1h"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::cache::eviction::{Budget, MinFree};
use crate::reference::is_registry_name;

mod file;
pub mod freshness;
pub mod listeners;
mod reload;
mod values;
use file::{de_duration, de_listen, with_lines};
pub use file::{parse_file, read_file, FileConfig, LogFormat, RegistryFile, MAX_FILE_PROBLEMS};
pub use listeners::{ListenerConfig, ListenerFile, ListenerTls};
pub use reload::needs_restart;
pub use values::{
    expand_path, parse_duration, parse_listen, parse_min_free, parse_node_name, parse_rate,
    parse_rate_floor, parse_size,
};
use values::{parse_pem_certs, parse_upstream_url};

/// Default listen address: loopback only (security by default).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
/// Default upstream: Docker Hub's API host.
pub const DEFAULT_UPSTREAM_URL: &str = "https://registry-1.docker.io";
/// Registry name of the default upstream, as clients spell it (`?ns=docker.io`).
pub const DEFAULT_REGISTRY: &str = crate::reference::DOCKER_HUB;

/// Why the configuration cannot be used. Every message names the key (or flag) and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown/mistyped key (message has the line).
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is present but unusable.
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    /// More than one problem, one per line.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

/// Command-line flags of `regcache serve`; each overrides the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML config file [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it
    /// exists].
    #[arg(long, value_name = "FILE", env = "REGCACHE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, ip:port or hostname:port [default: 127.0.0.1:5000].
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Cache directory [default: /var/cache/regcache as root, else $XDG_CACHE_HOME/regcache].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// URL of the default registry's upstream [default: https://registry-1.docker.io].
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// A private host (`host` or `host:port`) the default registry's redirects and token realm
    /// may lead to, besides public addresses and the upstream's own host and port; repeatable
    /// (like `redirect_hosts` in the file).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub redirect_host: Vec<String>,
    /// How long a tag's answer is trusted before revalidation, e.g. 0s, 5m [default: 0s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub tag_ttl: Option<Duration>,
    /// Most bytes the cache may take on disk, e.g. 20GiB [default: unbounded].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Free space to leave on the cache filesystem, e.g. 5GiB or 10% [default: none].
    #[arg(long, value_name = "SIZE|PERCENT", value_parser = parse_min_free)]
    pub min_free: Option<MinFree>,
    /// Serve only from the cache; never contact an upstream.
    #[arg(long)]
    pub offline: bool,
    /// How long an upstream may take to answer before the cached answer (or a retryable error)
    /// is served, e.g. 5s [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub revalidate_timeout: Option<Duration>,
    /// Drop (and resume, at most 5 times) an upstream download that receives no bytes for this
    /// long, e.g. 60s [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// A client must send its request head (or HTTP/2 preface) within this, e.g. 30s
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Largest manifest accepted from upstream, e.g. 4MiB [default: 4MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_manifest_size: Option<u64>,
    /// Close a client connection idle (no request in progress) this long, e.g. 2m [default: 2m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub client_idle_timeout: Option<Duration>,
    /// Client connections served at once; more get a 503 [default: half the open-file limit].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Resume a download slower than this over an idle_timeout window, e.g. 1KiB/s; 0B/s turns
    /// the floor off [default: 1KiB/s].
    #[arg(long, value_name = "RATE", value_parser = parse_rate_floor)]
    pub min_fill_rate: Option<u64>,
    /// After an upstream timeout, skip that upstream this long (cached answers are served,
    /// uncached ones fail fast), e.g. 10s [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub outage_backoff: Option<Duration>,
    /// While an upstream is skipped, let one request probe it this often, e.g. 500ms
    /// [default: 500ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub outage_probe_interval: Option<Duration>,
    /// Cap on the upstream bandwidth of all fills together, e.g. 2MiB/s [default: none].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_upstream_bandwidth: Option<u64>,
    /// Log lines as text or as JSON objects [default: text].
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// This node's name in a tier: sent as X-Regcache-Node and as the node label of /metrics
    /// [default: none, neither is sent].
    #[arg(long, value_name = "NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// htpasswd file (bcrypt entries, `htpasswd -B`): clients must send matching Basic
    /// credentials.
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// PEM CA certificates: clients must present a TLS certificate signed by one (with
    /// --tls-cert).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Serve clients that authenticate in no way on a non-loopback address although a
    /// registry has credentials (otherwise serve refuses to start).
    #[arg(long)]
    pub allow_anonymous: bool,
    /// After SIGTERM/SIGINT, how long responses in progress may take to finish, e.g. 5m
    /// [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
}

/// Default for `shutdown_grace`: a large layer on a slow link finishes (systemd's unit
/// allows a little more, `TimeoutStopSec=`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

/// The config file the commands read when neither `--config` nor `REGCACHE_CONFIG` names one,
/// if it exists (applied by the command line, never by [`Config::load`] itself).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/regcache/regcache.toml";

/// `config`, or [`DEFAULT_CONFIG_FILE`] when that is unset and the file exists.
pub fn config_or_default(config: Option<PathBuf>) -> Option<PathBuf> {
    config.or_else(|| {
        let p = Path::new(DEFAULT_CONFIG_FILE);
        p.exists().then(|| p.to_path_buf())
    })
}

/// Default for `revalidate_timeout`.
pub const DEFAULT_REVALIDATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for `client_idle_timeout`.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default for `header_read_timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `min_fill_rate`, in bytes per second.
pub const DEFAULT_MIN_FILL_RATE: u64 = 1024;
/// Default for `outage_probe_interval`.
pub const DEFAULT_OUTAGE_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Default for `outage_backoff`.
pub const DEFAULT_OUTAGE_BACKOFF: Duration = Duration::from_secs(10);
/// Default for `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags of the operator commands (`status`, `verify`, `gc`): where the cache is and its budget.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct CacheArgs {
    /// TOML config file; only cache_dir, max_size and min_free are read from it [default:
    /// $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists].
    #[arg(long, value_name = "FILE", env = "REGCACHE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Cache directory [default: /var/cache/regcache as root, else $XDG_CACHE_HOME/regcache].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the cache may take on disk, e.g. 20GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Free space to leave on the cache filesystem, e.g. 5GiB or 10%.
    #[arg(long, value_name = "SIZE|PERCENT", value_parser = parse_min_free)]
    pub min_free: Option<MinFree>,
}

/// Where the cache is and its budget, for the operator commands.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// Disk budget.
    pub budget: Budget,
}

impl CacheSettings {
    /// Reads the config file (if any) and applies the flags; no secrets are read.
    ///
    /// Errors: [`ConfigError`] for an unreadable or invalid file.
    pub fn load(args: &CacheArgs) -> Result<CacheSettings, ConfigError> {
        let file = read_file(args.config.as_deref())?;
        Ok(CacheSettings {
            cache_dir: args
                .cache_dir
                .clone()
                .or(file.cache_dir)
                .unwrap_or_else(default_cache_dir),
            budget: Budget {
                max_size: args.max_size.or(file.max_size),
                min_free: args.min_free.or(file.min_free),
            },
        })
    }
}

/// Credentials for an upstream. `Debug` never prints the password.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token, read from `password_file`.
    pub password: String,
    /// Where the password was read from (named in errors, never the password itself).
    pub password_file: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// One upstream registry.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Registry name clients use (`docker.io`, `ghcr.io`, `host:port`); the key for `?ns=`,
    /// path prefixes and the tag cache.
    pub registry: String,
    /// Base URL, scheme http or https, no path.
    pub url: Url,
    /// Optional credentials.
    pub credentials: Option<Credentials>,
    /// Extra trusted CA certificates (DER), from `ca_file`.
    pub extra_roots: Vec<Vec<u8>>,
    /// Non-public redirect targets allowed (`host` or `host:port`), from `redirect_hosts`.
    pub redirect_hosts: Vec<String>,
    /// How connections leave (direct or through a proxy, per destination host), from `proxy`
    /// or the environment.
    pub proxy: crate::upstream::proxy::ProxyPlan,
    /// Tag TTLs, immutable tags and `max_stale`, per repository.
    pub freshness: crate::cache::policy::FreshnessPolicy,
    /// `ratelimit-remaining` at which prefetch pauses and revalidation backs off.
    pub rate_limit_reserve: u64,
    /// The TLS client certificate presented to the registry, from `client_cert` and
    /// `client_key`.
    pub client_identity: Option<ClientIdentity>,
    /// The path alias path-prefix clients use (`prefix`), if any.
    pub prefix: Option<String>,
}

/// A TLS client certificate and its key (`client_cert`, `client_key`), read at start. `Debug`
/// never prints the key.
#[derive(Clone, PartialEq)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// The private key, as its PEM text (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
    /// Where the certificate was read from, for messages.
    pub cert_file: PathBuf,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_file", &self.cert_file)
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it listens, and who may use each listener (at least one).
    pub listeners: Vec<ListenerConfig>,
    /// After SIGTERM/SIGINT, how long responses in progress may take to finish.
    pub shutdown_grace: Duration,
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// How long a tag->digest answer is trusted before an upstream HEAD revalidates it.
    pub tag_ttl: Duration,
    /// Disk budget (`max_size`, `min_free`).
    pub budget: Budget,
    /// Serve only from the cache.
    pub offline: bool,
    /// Bound on waiting for an upstream's answer (headers), for revalidations and fills.
    pub revalidate_timeout: Duration,
    /// A fill receiving nothing for this long is aborted.
    pub idle_timeout: Duration,
    /// After an upstream stops answering, how long requests skip that upstream.
    pub outage_backoff: Duration,
    /// While an upstream is skipped, how often one request probes it.
    pub outage_probe_interval: Duration,
    /// Slowest fill, in bytes per second, before it is resumed (0: no floor).
    pub min_fill_rate: u64,
    /// Time a client has to send its request head, HTTP/2 preface or TLS handshake.
    pub header_read_timeout: Duration,
    /// A client connection with no request in progress this long is closed.
    pub client_idle_timeout: Duration,
    /// Largest manifest accepted from upstream, in bytes.
    pub max_manifest_size: usize,
    /// Client connections served at once (`None`: half the open-file limit, decided by the
    /// server when it starts).
    pub max_connections: Option<usize>,
    /// Cap on upstream bytes per second, all fills together.
    pub max_upstream_bandwidth: Option<u64>,
    /// Registry used when a request names none.
    pub default_registry: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Every mirrored registry, the default among them.
    pub registries: Vec<UpstreamConfig>,
    /// This node's name in a tier (`node_name`): the `X-Regcache-Node` header and the `node`
    /// label of `/metrics`; `None`: neither.
    pub node_name: Option<String>,
}

impl Config {
    /// Reads the file named by `--config` (if any), applies the flags, reads password and CA
    /// files.
    ///
    /// Errors: [`ConfigError`] naming the file, key and problem.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        Config::load_with_env(args, &|k| std::env::var(k).ok())
    }

    /// [`Config::load`] reading the proxy variables (`HTTPS_PROXY`, `NO_PROXY`, ...; see
    /// [`crate::upstream::proxy::PROXY_ENV`]) through `env` instead of the process environment.
    ///
    /// Errors: as [`Config::load`]; a malformed proxy variable is named as the key.
    pub fn load_with_env(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = read_file(args.config.as_deref())?;
        Config::resolve_with_env(
            file,
            args,
            &default_cache_dir(),
            |p| std::fs::read_to_string(p),
            env,
        )
        .map_err(|e| match &args.config {
            // Where in the file: the line of the key the problem names.
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => with_lines(e, path, &text),
                Err(_) => e,
            },
            None => e,
        })
    }

    /// Merges file and flags over the defaults. `read_file` reads password and CA files
    /// (injected so tests need no files). No environment is read: registries without a
    /// `proxy` key connect directly (see [`Config::resolve_with_env`]).
    pub fn resolve(
        file: FileConfig,
        args: &ServeArgs,
        default_cache_dir: &Path,
        read_file: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Config, ConfigError> {
        Config::resolve_with_env(file, args, default_cache_dir, read_file, &|_| None)
    }

    /// [`Config::resolve`], with the proxy variables of the environment read through `env`
    /// (for registries without a `proxy` key).
    pub fn resolve_with_env(
        file: FileConfig,
        args: &ServeArgs,
        default_cache_dir: &Path,
        read_file: impl Fn(&Path) -> std::io::Result<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let default_registry = file
            .default_registry
            .unwrap_or_else(|| DEFAULT_REGISTRY.to_string());
        if !is_registry_name(&default_registry) {
            return Err(invalid(
                "default_registry",
                format!(
                    "{default_registry:?} is not a registry name (host[:port], e.g. docker.io)"
                ),
            ));
        }
        let mut tables = file.registries.unwrap_or_default();
        if let Some(up) = file.upstream {
            if tables.contains_key(&default_registry) {
                return Err(invalid(
                    "upstream",
                    format!("both [upstream] and [registries.\"{default_registry}\"] configure the default registry; keep one"),
                ));
            }
            tables.insert(default_registry.clone(), up);
        }
        tables.entry(default_registry.clone()).or_default();
        let default_table = tables.get_mut(&default_registry).expect("inserted above");
        if let Some(u) = &args.upstream {
            default_table.url = Some(u.clone());
        }
        if !args.redirect_host.is_empty() {
            default_table
                .redirect_hosts
                .get_or_insert_with(Vec::new)
                .extend(args.redirect_host.iter().cloned());
        }
        let mut registries = Vec::new();
        // Every registry is checked, and every registry's problem reported.
        let mut problems = Vec::new();
        let tag_ttl = args.tag_ttl.or(file.tag_ttl).unwrap_or(Duration::ZERO);
        let global_freshness =
            freshness::global(tag_ttl, file.immutable_tags.as_ref(), file.max_stale)
                .unwrap_or_else(|e| {
                    problems.push(e);
                    Default::default()
                });
        let reserve = file
            .rate_limit_reserve
            .unwrap_or(freshness::DEFAULT_RATE_LIMIT_RESERVE);
        // A bad proxy variable is reported once, whichever registries would use it.
        let mut env_problems: Vec<(&'static str, String)> = Vec::new();
        for (name, t) in tables {
            let one = || -> Result<UpstreamConfig, ConfigError> {
                if !is_registry_name(&name) {
                    return Err(invalid(
                        "registries",
                        format!("{name:?} is not a registry name (host[:port], e.g. ghcr.io)"),
                    ));
                }
                let url_str = t.url.clone().unwrap_or_else(|| default_url(&name));
                let key = if name == default_registry && args.upstream.is_some() {
                    "--upstream"
                } else {
                    "registries.<name>.url"
                };
                let url = parse_upstream_url(&url_str)
                    .map_err(|m| invalid(key, format!("[{name}]: {m}")))?;
                let freshness = freshness::registry(&name, &t, &global_freshness)?;
                let rate_limit_reserve = t.rate_limit_reserve.unwrap_or(reserve);
                let credentials = match (t.username, t.password_file) {
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(invalid(
                            "username",
                            format!("[{name}]: username and password_file must be given together"),
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(invalid(
                            "password_file",
                            format!("[{name}]: username and password_file must be given together"),
                        ))
                    }
                    (Some(username), Some(pf)) => {
                        let pf = expand_path(&pf)
                            .map_err(|m| invalid("password_file", format!("[{name}]: {m}")))?;
                        let password = read_file(&pf).map_err(|e| {
                            invalid(
                                "password_file",
                                format!("[{name}]: cannot read {}: {e}", pf.display()),
                            )
                        })?;
                        let password = password.trim_end_matches(['\r', '\n']).to_string();
                        if password.is_empty() {
                            return Err(invalid(
                                "password_file",
                                format!("[{name}]: {} is empty", pf.display()),
                            ));
                        }
                        Some(Credentials {
                            username,
                            password,
                            password_file: pf,
                        })
                    }
                };
                let extra_roots = match &t.ca_file {
                    None => Vec::new(),
                    Some(p) => {
                        let p = &expand_path(p)
                            .map_err(|m| invalid("ca_file", format!("[{name}]: {m}")))?;
                        let pem = read_file(p).map_err(|e| {
                            invalid(
                                "ca_file",
                                format!("[{name}]: cannot read {}: {e}", p.display()),
                            )
                        })?;
                        parse_pem_certs(&pem).map_err(|m| {
                            invalid("ca_file", format!("[{name}]: {}: {m}", p.display()))
                        })?
                    }
                };
                let redirect_hosts = t.redirect_hosts.clone().unwrap_or_default();
                if let Some(bad) = redirect_hosts.iter().find(|h| !is_registry_name(h)) {
                    let key = match args.redirect_host.contains(bad) {
                        true => "--redirect-host",
                        false => "redirect_hosts",
                    };
                    return Err(invalid(
                        key,
                        format!("[{name}]: {bad:?} is not host or host:port"),
                    ));
                }
                use crate::upstream::proxy::ProxyPlan;
                let proxy = match &t.proxy {
                    Some(v) => ProxyPlan::from_key(v).map_err(|m| {
                        invalid("registries.<name>.proxy", format!("[{name}]: {m}"))
                    })?,
                    // An https registry never redirects down to http: only its side is read.
                    None => ProxyPlan::from_env(env, (url.scheme() == "http", true))
                        .unwrap_or_else(|e| {
                            if !env_problems.contains(&e) {
                                env_problems.push(e);
                            }
                            ProxyPlan::default()
                        }),
                };
                let client_identity = match (&t.client_cert, &t.client_key) {
                    (None, None) => None,
                    (Some(_), None) | (None, Some(_)) => {
                        let key = if t.client_cert.is_none() {
                            "client_cert"
                        } else {
                            "client_key"
                        };
                        return Err(invalid(
                            key,
                            format!("[{name}]: client_cert and client_key must be given together"),
                        ));
                    }
                    (Some(c), Some(k)) => Some(
                        read_client_identity(c, k, &read_file)
                            .map_err(|(key, m)| invalid(key, format!("[{name}]: {m}")))?,
                    ),
                };
                if client_identity.is_some() && url.scheme() != "https" {
                    return Err(invalid(
                        "client_cert",
                        format!("[{name}]: a client certificate needs an https:// url (this one is {url})"),
                    ));
                }
                if let Some(p) = &t.prefix {
                    let ok = !p.is_empty()
                        && p.len() <= 64
                        && p.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)
                        })
                        && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
                    if !ok {
                        return Err(invalid(
                            "prefix",
                            format!("[{name}]: {p:?} is not one path component; write lowercase letters, digits, . _ -, e.g. prefix = \"internal-reg\""),
                        ));
                    }
                    if p == "library" {
                        return Err(invalid(
                            "prefix",
                            format!("[{name}]: \"library\" is Docker Hub's namespace of official images (alpine is library/alpine): this alias would take every official image's pulls; pick another, e.g. prefix = \"internal-reg\""),
                        ));
                    }
                }
                Ok(UpstreamConfig {
                    prefix: t.prefix.clone(),
                    registry: name.clone(),
                    url,
                    credentials,
                    extra_roots,
                    redirect_hosts,
                    proxy,
                    freshness,
                    rate_limit_reserve,
                    client_identity,
                })
            };
            match one() {
                Ok(u) => registries.push(u),
                Err(e) => problems.push(e),
            }
        }
        for r in &registries {
            let Some(p) = &r.prefix else { continue };
            let clash = registries.iter().find(|o| {
                o.registry != r.registry && (&o.registry == p || o.prefix.as_ref() == Some(p))
            });
            if let Some(o) = clash {
                problems.push(invalid(
                    "prefix",
                    format!("[{}]: prefix {p:?} is also [{}]'s name or prefix; give each registry its own", r.registry, o.registry),
                ));
            }
        }
        for (var, m) in env_problems {
            problems.push(invalid(
                var,
                format!("environment variable: {m} (fix or unset it, or set proxy = \"http://host:port\" or \"none\" per registry)"),
            ));
        }
        // Every value is checked, and every problem reported (a placeholder stands in for a
        // bad value until then).
        if let Some(0) = args.max_size.or(file.max_size) {
            problems.push(invalid(
                "max_size",
                "0 bytes: the cache could hold nothing; write e.g. \"20GiB\", or leave it out for no limit".into(),
            ));
        }
        let cache_dir_given = args.cache_dir.clone().or(file.cache_dir.clone());
        if cache_dir_given
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            problems.push(invalid(
                "cache_dir",
                "is empty; write a directory, e.g. \"/var/cache/regcache\"".into(),
            ));
        }
        let (listeners, from_array) = listeners::resolve(
            file.listen,
            file.tls_cert,
            file.tls_key,
            file.listeners,
            args,
            &mut problems,
        );
        let config = Config {
            listeners,
            shutdown_grace: ok(
                &mut problems,
                nonzero(
                    "shutdown_grace",
                    args.shutdown_grace
                        .or(file.shutdown_grace)
                        .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
                ),
            ),
            cache_dir: args
                .cache_dir
                .clone()
                .or(file.cache_dir)
                .unwrap_or_else(|| default_cache_dir.to_path_buf()),
            tag_ttl,
            budget: Budget {
                max_size: args.max_size.or(file.max_size),
                min_free: args.min_free.or(file.min_free),
            },
            offline: args.offline || file.offline.unwrap_or(false),
            revalidate_timeout: ok(
                &mut problems,
                nonzero(
                    "revalidate_timeout",
                    args.revalidate_timeout
                        .or(file.revalidate_timeout)
                        .unwrap_or(DEFAULT_REVALIDATE_TIMEOUT),
                ),
            ),
            idle_timeout: ok(
                &mut problems,
                nonzero(
                    "idle_timeout",
                    args.idle_timeout
                        .or(file.idle_timeout)
                        .unwrap_or(DEFAULT_IDLE_TIMEOUT),
                ),
            ),
            header_read_timeout: ok(
                &mut problems,
                nonzero(
                    "header_read_timeout",
                    args.header_read_timeout
                        .or(file.header_read_timeout)
                        .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
                ),
            ),
            max_manifest_size: match args.max_manifest_size.or(file.max_manifest_size) {
                None => crate::cache::DEFAULT_MAX_MANIFEST_SIZE,
                Some(n) if n == 0 || n > 64 << 20 => {
                    problems.push(ConfigError::Invalid {
                        key: "max_manifest_size",
                        message: format!("{n} bytes: must be between 1 B and 64 MiB"),
                    });
                    crate::cache::DEFAULT_MAX_MANIFEST_SIZE
                }
                Some(n) => n as usize,
            },
            client_idle_timeout: ok(
                &mut problems,
                nonzero(
                    "client_idle_timeout",
                    args.client_idle_timeout
                        .or(file.client_idle_timeout)
                        .unwrap_or(DEFAULT_CLIENT_IDLE_TIMEOUT),
                ),
            ),
            max_connections: match args.max_connections.or(file.max_connections) {
                Some(0) => {
                    problems.push(ConfigError::Invalid {
                        key: "max_connections",
                        message: "must be at least 1".into(),
                    });
                    None
                }
                n => n,
            },
            min_fill_rate: args
                .min_fill_rate
                .or(file.min_fill_rate)
                .unwrap_or(DEFAULT_MIN_FILL_RATE),
            outage_probe_interval: ok(
                &mut problems,
                nonzero(
                    "outage_probe_interval",
                    args.outage_probe_interval
                        .or(file.outage_probe_interval)
                        .unwrap_or(DEFAULT_OUTAGE_PROBE_INTERVAL),
                ),
            ),
            outage_backoff: ok(
                &mut problems,
                nonzero(
                    "outage_backoff",
                    args.outage_backoff
                        .or(file.outage_backoff)
                        .unwrap_or(DEFAULT_OUTAGE_BACKOFF),
                ),
            ),
            max_upstream_bandwidth: args.max_upstream_bandwidth.or(file.max_upstream_bandwidth),
            default_registry,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            registries,
            node_name: match args.node_name.clone().or(file.node_name) {
                None => None,
                Some(n) => match parse_node_name(&n) {
                    Ok(n) => Some(n),
                    Err(m) => {
                        problems.push(invalid("node_name", m));
                        None
                    }
                },
            },
        };
        problems.extend(listeners::exposure_problems(
            &config.listeners,
            from_array,
            &config.registries_with_credentials(),
        ));
        match problems.len() {
            0 => Ok(config),
            1 => Err(problems.remove(0)),
            _ => Err(ConfigError::Several(problems)),
        }
    }

    /// What `serve` runs with but warns about (plain HTTP off loopback, `allow_anonymous` in
    /// effect), one message each with the fix.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = listeners::warnings(&self.listeners, &self.registries_with_credentials());
        w.extend(self.prefix_warnings());
        w.extend(self.policy_warnings());
        w
    }

    /// `repositories` patterns that can match nothing because they are not canonical names:
    /// a registry host in front (`docker.io/library/*`), or a Docker Hub name without its
    /// namespace (`alpine` for `library/alpine`).
    fn policy_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.registries {
            for (i, p) in r.freshness.repositories.iter().enumerate() {
                for pat in p.repositories.written() {
                    let at = format!("[[registries.\"{}\".policy]] #{}", r.registry, i + 1);
                    let first = pat.split('/').next().unwrap_or("");
                    if pat.contains('/') && (first.contains('.') || first.contains(':')) {
                        out.push(format!("{at}: repositories {pat:?} names a registry; patterns match repository names within [registries.\"{}\"], so drop {first:?}, e.g. {:?}", r.registry, pat.split_once('/').map_or("", |(_, rest)| rest)));
                    } else if r.registry == crate::reference::DOCKER_HUB
                        && !pat.contains('/')
                        && !pat.starts_with('*')
                    {
                        out.push(format!("{at}: repositories {pat:?} matches no Docker Hub repository (their names are canonical: alpine is library/alpine); did you mean \"library/{pat}\"?"));
                    }
                }
            }
        }
        out
    }

    /// A `prefix` that Docker Hub could have as a namespace (only lowercase letters and
    /// digits, as Docker IDs are) hides that namespace from path-prefix clients (docker,
    /// podman: no `?ns=`) when the default registry is Docker Hub.
    fn prefix_warnings(&self) -> Vec<String> {
        if self.default_registry != crate::reference::DOCKER_HUB {
            return Vec::new();
        }
        self.registries
            .iter()
            .filter_map(|r| {
                let p = r.prefix.as_deref()?;
                p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    .then(|| format!(
                        "[registries.\"{}\"] prefix = {p:?} can also be a Docker Hub namespace: a pull of docker.io/{p}/<name> by a client that sends no ?ns= (docker, podman) goes to {} instead (containerd's ?ns= is not affected). A prefix with a '-' or '.' (e.g. \"{p}-reg\") cannot be a Docker Hub namespace.",
                        r.registry, r.registry
                    ))
            })
            .collect()
    }

    /// The refusals of [`Config::resolve`]'s exposure rule for `listeners` as actually bound
    /// (a socket systemd passed may sit on another address than the config says): one message
    /// per listener reachable from the network without client auth while a registry has
    /// credentials.
    pub fn exposure_problems(&self, listeners: &[ListenerConfig]) -> Vec<String> {
        listeners::exposure_problems(listeners, false, &self.registries_with_credentials())
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// Names of the registries that have credentials.
    pub fn registries_with_credentials(&self) -> Vec<&str> {
        self.registries
            .iter()
            .filter(|r| r.credentials.is_some())
            .map(|r| r.registry.as_str())
            .collect()
    }

    /// The default registry's upstream.
    pub fn default_upstream(&self) -> &UpstreamConfig {
        self.registries
            .iter()
            .find(|r| r.registry == self.default_registry)
            .expect("resolve always configures the default registry")
    }

    /// What `serve` would still refuse after the config parsed (for `regcache check-config`):
    /// a certificate and key that do not load or match, a cache directory that cannot be
    /// created or written. Each message names the key, the path and the fix; the same messages
    /// `serve` gives.
    pub fn runtime_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for l in &self.listeners {
            if let Some(t) = &l.tls {
                if let Err(e) = crate::tls::listener_config(t, l.htpasswd.is_some()) {
                    problems.push(format!("listener {}: {e}", l.label()));
                }
            }
            if let Some(h) = &l.htpasswd {
                if let Err(e) = crate::access::Htpasswd::load(h) {
                    problems.push(format!("listener {}: {e}", l.label()));
                }
            }
        }
        // The nearest existing ancestor must let us create the cache directory and write in it.
        let dir = &self.cache_dir;
        let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(dir);
        match tempfile::tempfile_in(existing) {
            Err(e) if existing.is_dir() => problems.push(format!(
                "cache_dir {}: cannot write in {} ({e}); make it writable by this user or pick another cache_dir",
                dir.display(),
                existing.display()
            )),
            Err(_) => problems.push(format!(
                "cache_dir {}: {} is not a directory; pick another cache_dir",
                dir.display(),
                existing.display()
            )),
            Ok(_) => {}
        }
        problems
    }
}

/// `r`'s value, or (its problem recorded in `problems`) a placeholder: one second.
fn ok(problems: &mut Vec<ConfigError>, r: Result<Duration, ConfigError>) -> Duration {
    r.unwrap_or_else(|e| {
        problems.push(e);
        Duration::from_secs(1)
    })
}

fn nonzero(key: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            key,
            message: "must be longer than 0s".into(),
        });
    }
    Ok(d)
}

/// `https://registry-1.docker.io` for docker.io, else `https://<name>`.
fn default_url(name: &str) -> String {
    if name == DEFAULT_REGISTRY {
        DEFAULT_UPSTREAM_URL.to_string()
    } else {
        format!("https://{name}")
    }
}

/// Raises the open-file soft limit to the hard limit (what a server with many clients wants;
/// the default soft limit of 1024 is for interactive shells). Errors are ignored: the limit
/// stays as it was.
pub fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// Reads `client_cert` (PEM chain) and `client_key` (PEM key) through `read_file`, with
/// `${CREDENTIALS_DIRECTORY}` expanded.
///
/// Errors: the key to blame and a message (unreadable file, no PEM certificate or key in it).
fn read_client_identity(
    cert: &Path,
    key: &Path,
    read_file: &impl Fn(&Path) -> std::io::Result<String>,
) -> Result<ClientIdentity, (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    let cert = expand_path(cert).map_err(|m| ("client_cert", m))?;
    let key = expand_path(key).map_err(|m| ("client_key", m))?;
    let cert_pem = read_file(&cert).map_err(|e| {
        (
            "client_cert",
            format!("cannot read {}: {e}", cert.display()),
        )
    })?;
    let chain = parse_pem_certs(&cert_pem)
        .map_err(|m| ("client_cert", format!("{}: {m}", cert.display())))?;
    let key_pem = read_file(&key)
        .map_err(|e| ("client_key", format!("cannot read {}: {e}", key.display())))?;
    let Ok(der) = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) else {
        return Err((
            "client_key",
            format!(
                "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                key.display()
            ),
        ));
    };
    // The same check rustls makes when the upstream client is built, said here, with the files.
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| ("client_key", format!("{}: {e}", key.display())))?;
    let leaf = chain
        .first()
        .map(|c| rustls_pki_types::CertificateDer::from(c.clone()));
    let certified = rustls::sign::CertifiedKey::new(leaf.into_iter().collect(), signer);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err((
            "client_key",
            format!(
                "{} is not the private key of client_cert {}; give the key made with that certificate (regcache certs client writes NAME.cert and NAME.key together)",
                key.display(),
                cert.display()
            ),
        ));
    }
    Ok(ClientIdentity {
        chain,
        key_pem,
        cert_file: cert,
    })
}

/// `$CACHE_DIRECTORY` when set (systemd's `CacheDirectory=`), else `/var/cache/regcache` for root, else `$XDG_CACHE_HOME/regcache` (or `~/.cache/regcache`).
pub fn default_cache_dir() -> PathBuf {
    // systemd may list several, separated by ':'; the first is this service's.
    if let Some(dir) = std::env::var("CACHE_DIRECTORY")
        .ok()
        .and_then(|d| d.split(':').next().map(str::to_owned))
        .filter(|d| !d.is_empty())
    {
        return PathBuf::from(dir);
    }
    // SAFETY-free check for root: the effective uid is readable via /proc without libc.
    let is_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if is_root {
        return PathBuf::from("/var/cache/regcache");
    }
    match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x).join("regcache"),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache/regcache"),
            None => PathBuf::from("regcache-cache"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_file(_: &Path) -> std::io::Result<String> {
        Err(std::io::Error::other("no file"))
    }

    fn resolve(text: &str, args: &ServeArgs) -> Result<Config, ConfigError> {
        Config::resolve(
            parse_file(text).unwrap(),
            args,
            Path::new("/c"),
            |p| match p.to_str() {
                Some("/s") => Ok("pw\n".into()),
                _ => no_file(p),
            },
        )
    }

    #[test]
    fn defaults() {
        let c = resolve("", &ServeArgs::default()).unwrap();
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:5000");
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert_eq!(c.tag_ttl, Duration::ZERO);
        assert_eq!(c.default_registry, "docker.io");
        assert_eq!(c.registries.len(), 1);
        assert_eq!(
            c.default_upstream().url.as_str(),
            "https://registry-1.docker.io/"
        );
        assert!(c.default_upstream().credentials.is_none());
    }

    #[test]
    fn upstream_shorthand_and_flags() {
        let text = "listen = \"127.0.0.1:6000\"\ncache_dir = \"/x\"\ntag_ttl = \"5m\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\nusername = \"u\"\npassword_file = \"/s\"\n";
        let args = ServeArgs {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        };
        let c = resolve(text, &args).unwrap();
        assert_eq!(c.listeners[0].address.port(), 7000);
        assert_eq!(c.cache_dir, PathBuf::from("/x"));
        assert_eq!(c.tag_ttl, Duration::from_secs(300));
        assert!(c.budget.is_unbounded());
        let up = c.default_upstream();
        assert_eq!(up.url.as_str(), "http://127.0.0.1:9/");
        let creds = up.credentials.clone().unwrap();
        assert_eq!(creds.password, "pw");
        assert!(!format!("{creds:?}").contains("pw\""));
        let args = ServeArgs {
            upstream: Some("http://127.0.0.1:8".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(text, &args).unwrap().default_upstream().url.port(),
            Some(8)
        );
    }

    #[test]
    fn registries_table() {
        let text = "default_registry = \"ghcr.io\"\n[registries.\"docker.io\"]\n[registries.\"ghcr.io\"]\nusername = \"bot\"\npassword_file = \"/s\"\n[registries.\"registry.internal:5443\"]\nurl = \"https://registry.internal:5443\"\n";
        let c = resolve(text, &ServeArgs::default()).unwrap();
        let names: Vec<_> = c.registries.iter().map(|r| r.registry.as_str()).collect();
        assert_eq!(names, ["docker.io", "ghcr.io", "registry.internal:5443"]);
        assert_eq!(c.default_upstream().registry, "ghcr.io");
        assert_eq!(c.default_upstream().url.as_str(), "https://ghcr.io/");
        assert_eq!(
            c.registries[0].url.as_str(),
            "https://registry-1.docker.io/"
        );
        assert!(c.registries[0].credentials.is_none());
        let e = resolve(
            "[upstream]\n[registries.\"docker.io\"]\n",
            &ServeArgs::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("keep one"), "{e}");
        let e = resolve("[registries.\"a/b\"]\n", &ServeArgs::default()).unwrap_err();
        assert!(e.to_string().contains("a/b"), "{e}");
        let e = resolve(
            "[registries.\"x.io\"]\nca_file = \"/none\"\n",
            &ServeArgs::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("ca_file") && e.to_string().contains("x.io"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = parse_file("listen = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let e = parse_file("tag_ttl = \"soon\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("duration"), "{e}");
        let e = parse_file("[upstream]\nurl = 5\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_file("[registries.\"ghcr.io\"]\nusr = \"x\"\n").unwrap_err();
        assert!(e.contains("usr") && e.contains("line 2"), "{e}");
        let args = ServeArgs {
            upstream: Some("ftp://x".into()),
            ..Default::default()
        };
        let e = resolve("", &args).unwrap_err();
        assert!(e.to_string().starts_with("--upstream"), "{e}");
        let e = resolve(
            "[upstream]\nusername = \"u\"\npassword_file = \"/nope\"\n",
            &ServeArgs::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("password_file"), "{e}");
    }

    #[test]
    fn budget_keys() {
        let c = resolve(
            "max_size = \"2GiB\"\nmin_free = \"10%\"\n",
            &ServeArgs::default(),
        )
        .unwrap();
        assert_eq!(c.budget.max_size, Some(2 << 30));
        assert_eq!(c.budget.min_free, Some(MinFree::Percent(10.0)));
        let e = parse_file("max_size = \"big\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("size"), "{e}");
    }

    #[test]
    fn outage_keys() {
        let c = resolve("offline = true\nrevalidate_timeout = \"2s\"\nidle_timeout = \"30s\"\nmax_upstream_bandwidth = \"2MiB/s\"\n", &ServeArgs::default()).unwrap();
        assert!(c.offline);
        assert_eq!(c.revalidate_timeout, Duration::from_secs(2));
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.max_upstream_bandwidth, Some(2 << 20));
        let c = resolve("", &ServeArgs::default()).unwrap();
        assert!(!c.offline);
        assert_eq!(c.revalidate_timeout, DEFAULT_REVALIDATE_TIMEOUT);
        assert!(resolve("idle_timeout = \"0s\"\n", &ServeArgs::default()).is_err());
        assert!(parse_file("max_upstream_bandwidth = \"fast\"\n")
            .unwrap_err()
            .contains("bandwidth"));
        assert_eq!(parse_rate("500KB").unwrap(), 500_000);
    }

    #[test]
    fn registry_names() {
        for ok in [
            "docker.io",
            "ghcr.io",
            "registry.internal:5443",
            "localhost",
        ] {
            assert!(is_registry_name(ok), "{ok}");
        }
        for bad in ["", "a/b", "..", "a:b", "a:123456", "-x", "x y"] {
            assert!(!is_registry_name(bad), "{bad}");
        }
    }
}
