//! The config file: its shape ([`FileConfig`], [`RegistryFile`]), how its values are read
//! (a bare number where a unit is needed is an error naming the fix), parsing that reports
//! every problem with its line, and the line a resolved problem came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::values::{
    parse_duration, parse_listen, parse_min_free, parse_rate, parse_rate_floor, parse_size,
};
use super::{freshness, ConfigError, ListenerFile};
use crate::cache::eviction::MinFree;

/// The config file's shape. Unknown keys are errors (`deny_unknown_fields`).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `listen`: socket address, e.g. `"127.0.0.1:5000"` (or `"localhost:5000"`).
    #[serde(default, deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// `cache_dir`: directory holding the cache.
    pub cache_dir: Option<PathBuf>,
    /// `tag_ttl`: duration such as `"0s"`, `"5m"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub tag_ttl: Option<Duration>,
    /// `immutable_tags`: tag globs (every registry's, unless it sets its own) whose first
    /// answer is kept until evicted, never revalidated, e.g. `["v*.*.*", "sha256-*"]`.
    #[serde(default, deserialize_with = "freshness::de_patterns")]
    pub immutable_tags: Option<Vec<String>>,
    /// `max_stale`: the oldest cached tag (time since upstream last confirmed it) served stale
    /// while its upstream is unavailable or its rate-limit budget is at the reserve; older
    /// ones get the upstream's error, e.g. `"7d"` (default: unbounded).
    #[serde(default, deserialize_with = "de_duration")]
    pub max_stale: Option<Duration>,
    /// `rate_limit_reserve`: requests left of a registry's reported rate-limit budget
    /// (`ratelimit-remaining`) at which prefetch pauses and tag revalidation backs off, while
    /// cold pulls still go upstream (default 10).
    pub rate_limit_reserve: Option<u64>,
    /// `max_size`: most bytes the cache may take on disk, e.g. `"20GiB"`.
    #[serde(default, deserialize_with = "de_size")]
    pub max_size: Option<u64>,
    /// `min_free`: free space to leave on the cache filesystem, e.g. `"5GiB"` or `"10%"`.
    #[serde(default, deserialize_with = "de_min_free")]
    pub min_free: Option<MinFree>,
    /// `offline`: serve only from the cache; never contact an upstream.
    pub offline: Option<bool>,
    /// `revalidate_timeout`: how long an upstream may take to answer (headers) before regcache
    /// serves its cached answer or, for uncached content, a retryable error; a whole tag
    /// revalidation (token, HEAD, moved tag) gets twice this before the cached answer is
    /// served stale, e.g. `"5s"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub revalidate_timeout: Option<Duration>,
    /// `idle_timeout`: an upstream download that receives no bytes for this long is dropped and
    /// resumed (at most 5 times, then the fill is aborted), e.g. `"60s"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    /// `header_read_timeout`: a client connection must send its request head (HTTP/1) or its
    /// preface (HTTP/2), or finish the TLS handshake, within this, e.g. `"30s"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub header_read_timeout: Option<Duration>,
    /// `max_manifest_size`: the largest manifest (or index) accepted from upstream; a larger
    /// one is refused (502) and never cached, e.g. `"4MiB"`.
    #[serde(default, deserialize_with = "de_size")]
    pub max_manifest_size: Option<u64>,
    /// `client_idle_timeout`: a client connection with no request in progress for this long
    /// (HTTP/1.1 keep-alive, HTTP/2 answering only pings) is closed gracefully, e.g. `"2m"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub client_idle_timeout: Option<Duration>,
    /// `max_connections`: client connections served at once; more are answered 503 and closed
    /// (default: half the process's open-file limit, which regcache raises to its hard limit).
    pub max_connections: Option<usize>,
    /// `min_fill_rate`: a blob download receiving fewer bytes per second than this, measured over
    /// each `idle_timeout`, is dropped and resumed like a stalled one (`"0B/s"`: no floor),
    /// e.g. `"1KiB/s"`.
    #[serde(default, deserialize_with = "de_rate_floor")]
    pub min_fill_rate: Option<u64>,
    /// `outage_backoff`: after an upstream does not answer within `revalidate_timeout` (3
    /// times in a row), requests skip it for this long (cached answers are served, uncached
    /// ones fail fast with 503 and `Retry-After`), but for probes, e.g. `"10s"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub outage_backoff: Option<Duration>,
    /// `outage_probe_interval`: while an upstream is skipped, one request for uncached content
    /// goes through this often; its answer ends the outage at once, e.g. `"500ms"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub outage_probe_interval: Option<Duration>,
    /// `max_upstream_bandwidth`: cap on all fills together, e.g. `"2MiB/s"`.
    #[serde(default, deserialize_with = "de_rate")]
    pub max_upstream_bandwidth: Option<u64>,
    /// `tls_cert`: PEM certificate chain; with `tls_key`, the listener speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `[[listeners]]`: several listeners, each with its own TLS and client auth (instead of
    /// `listen`, `tls_cert`, `tls_key`).
    pub listeners: Option<Vec<ListenerFile>>,
    /// `shutdown_grace`: after SIGTERM/SIGINT, how long responses in progress (and fills) may
    /// take to finish before they are cut, e.g. `"5m"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub shutdown_grace: Option<Duration>,
    /// `default_registry`: the registry a request without `ns` or path prefix means.
    pub default_registry: Option<String>,
    /// `log_format`: `"text"` (default) or `"json"` (one JSON object per line).
    pub log_format: Option<LogFormat>,
    /// `node_name`: this mirror's name in a tier of several (1 to 63 characters of letters,
    /// digits, `.`, `_`, `-`): when set, every response carries `X-Regcache-Node: <name>` and
    /// every `/metrics` sample the label `node="<name>"`. Unset (the default): neither.
    pub node_name: Option<String>,
    /// `[upstream]`: shorthand for `[registries.<default_registry>]`.
    pub upstream: Option<RegistryFile>,
    /// `[registries."<name>"]`: every registry this mirror serves, keyed by the name clients use.
    pub registries: Option<BTreeMap<String, RegistryFile>>,
}

/// How log lines are written (`log_format`, `--log-format`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines: `<time> <level> <target>: <message> key=value ...`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (each field, e.g. the
    /// access line's `method`, `path`, `status`, `cache`, `bytes`, `ms`, `registry`, `counted`, `client`,
    /// `request_id`; and `message` for lines that have one — the access line has none).
    Json,
}

/// One `[registries."<name>"]` (or `[upstream]`) table.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// `url`: `https://host[:port]` (or `http://` for a registry on a trusted network).
    /// Default: `https://<name>` (`https://registry-1.docker.io` for docker.io).
    pub url: Option<String>,
    /// `username`: for Basic auth at the token realm (or at the registry).
    pub username: Option<String>,
    /// `password_file`: a file holding the password or access token (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// `ca_file`: PEM certificates trusted for this registry, in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// `redirect_hosts`: `host` or `host:port` entries this registry's redirects may lead to
    /// although they are loopback, link-local or private addresses (by default only public
    /// addresses and the registry's own host are followed).
    pub redirect_hosts: Option<Vec<String>>,
    /// `proxy`: `"http://[user:password@]host:port"`, the HTTP proxy (CONNECT) every connection
    /// of this registry goes through (redirects and token realm included, the environment
    /// ignored); `"none"`: direct, whatever the environment says. Unset: `HTTPS_PROXY` /
    /// `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` from the environment.
    pub proxy: Option<String>,
    /// `tag_ttl`: this registry's, over the top-level one.
    #[serde(default, deserialize_with = "de_duration")]
    pub tag_ttl: Option<Duration>,
    /// `immutable_tags`: this registry's (replacing the top-level list).
    #[serde(default, deserialize_with = "freshness::de_patterns")]
    pub immutable_tags: Option<Vec<String>>,
    /// `max_stale`: this registry's, over the top-level one.
    #[serde(default, deserialize_with = "de_duration")]
    pub max_stale: Option<Duration>,
    /// `rate_limit_reserve`: this registry's, over the top-level one.
    pub rate_limit_reserve: Option<u64>,
    /// `[[registries."<name>".policy]]`: per repository pattern, first match wins.
    pub policy: Option<Vec<freshness::PolicyFile>>,
    /// `client_cert`: PEM certificate chain this mirror presents when the registry asks for a
    /// TLS client certificate (with `client_key`), e.g. a sidecar whose upstream is a site
    /// tier with `client_ca`.
    pub client_cert: Option<PathBuf>,
    /// `client_key`: PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// `prefix`: a path alias (one lowercase component, e.g. `"internal"`) under which
    /// path-prefix clients (podman, skopeo, CRI-O) reach this registry:
    /// `MIRROR/internal/<name>` means `<registry>/<name>`. Needed for a registry whose name has
    /// a port, which containers/image refuses as a path component (`invalid reference
    /// format`). Hides Docker Hub repositories in a namespace of that name.
    pub prefix: Option<String>,
}

/// A string value, or an error naming the fix when the file gave a number or another type
/// (`tag_ttl = 300` → write `"300s"`): `unit` is what a bare number would need, `example` a
/// well-formed value.
fn text_value<'de, D: Deserializer<'de>>(
    d: D,
    unit: &str,
    example: &str,
) -> Result<String, D::Error> {
    use serde::de::Error;
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Err(D::Error::custom(format!(
            "{i} is a bare number; write a quoted value with its unit, e.g. \"{i}{unit}\""
        ))),
        toml::Value::Float(f) => Err(D::Error::custom(format!(
            "{f} is a bare number; write a quoted value with its unit, e.g. \"{f}{unit}\""
        ))),
        other => Err(D::Error::custom(format!(
            "expected a quoted value such as \"{example}\", found a {}",
            other.type_str()
        ))),
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    // A bare integer is a number of bytes.
    match toml::Value::deserialize(d)? {
        toml::Value::Integer(i) if i >= 0 => Ok(Some(i as u64)),
        toml::Value::String(s) => parse_size(&s).map(Some).map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected a size such as \"20GiB\" or a number of bytes, found {other}"
        ))),
    }
}

pub(super) fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = text_value(d, "", "127.0.0.1:5000")?;
    parse_listen(&s).map(Some).map_err(serde::de::Error::custom)
}

fn de_min_free<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MinFree>, D::Error> {
    let s = text_value(d, "%", "10%")?;
    parse_min_free(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s = text_value(d, "MiB/s", "2MiB/s")?;
    parse_rate(&s).map(Some).map_err(serde::de::Error::custom)
}

fn de_rate_floor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s = text_value(d, "KiB/s", "1KiB/s")?;
    parse_rate_floor(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = text_value(d, "s", "30s")?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `e` with "(<file> line N)" after each problem whose key is found in `text`: inside the
/// problem's `[registries."<name>"]` (or `[upstream]`) table when it names one.
pub(super) fn with_lines(e: ConfigError, path: &Path, text: &str) -> ConfigError {
    match e {
        ConfigError::Several(all) => {
            ConfigError::Several(all.into_iter().map(|e| with_lines(e, path, text)).collect())
        }
        ConfigError::Invalid { key, message } => {
            let field = key.rsplit('.').next().unwrap_or(key);
            let entry = message
                .strip_prefix("[[listeners]] #")
                .and_then(|m| m.split_once(':'))
                .and_then(|(n, _)| n.parse::<usize>().ok());
            let table = message
                .strip_prefix('[')
                .and_then(|m| m.split_once("]:"))
                .map(|(t, _)| t.to_owned());
            let line = match entry {
                Some(n) => listener_line_of(text, n, field),
                None => line_of(text, table.as_deref(), field),
            };
            match line {
                Some(n) => ConfigError::Invalid {
                    key,
                    message: format!("{message} ({} line {n})", path.display()),
                },
                None => ConfigError::Invalid { key, message },
            }
        }
        other => other,
    }
}

/// The 1-based line of `key = ...` in `text`, inside the table of registry `table` when given
/// (`[registries."<table>"]`, or `[upstream]` when nothing else matches).
fn line_of(text: &str, table: Option<&str>, key: &str) -> Option<usize> {
    let mut inside = table.is_none();
    let mut first_in_upstream = None;
    let mut in_upstream = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = match table {
                Some(name) => {
                    t == format!("[registries.\"{name}\"]") || t == format!("[registries.{name}]")
                }
                None => false,
            };
            in_upstream = t == "[upstream]";
            continue;
        }
        let is_key = t
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_key && inside {
            return Some(i + 1);
        }
        if is_key && in_upstream && first_in_upstream.is_none() {
            first_in_upstream = Some(i + 1);
        }
    }
    table.and(first_in_upstream)
}

/// The 1-based line of `key = ...` in the `n`-th `[[listeners]]` entry of `text`, else of
/// that entry's `[[listeners]]` line.
fn listener_line_of(text: &str, n: usize, key: &str) -> Option<usize> {
    let (mut seen, mut header) = (0, None);
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            if seen == n {
                break;
            }
            if t == "[[listeners]]" {
                seen += 1;
                if seen == n {
                    header = Some(i + 1);
                }
            }
            continue;
        }
        let is_key = t
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if seen == n && is_key {
            return Some(i + 1);
        }
    }
    header
}

/// Reads and parses the config file, if one is named (no file: all defaults).
///
/// Errors: [`ConfigError::Read`] or [`ConfigError::Parse`] naming the file.
pub fn read_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses the config file text.
///
/// Errors: every problem found (not just the first), one after another, each with toml's
/// message naming the line, column and key: after a problem its line is set aside and the
/// rest checked again (at most [`MAX_FILE_PROBLEMS`]).
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut problems = Vec::new();
    loop {
        let e = match toml::from_str::<FileConfig>(&lines.join("\n")) {
            Ok(f) if problems.is_empty() => return Ok(f),
            Ok(_) => break,
            Err(e) => e,
        };
        problems.push(suggest(e.to_string().trim_end()));
        // Set the offending line aside (a comment keeps the numbering) and look again.
        let line = e.span().map(|sp| {
            let text = lines.join("\n");
            text[..sp.start.min(text.len())].matches('\n').count()
        });
        match line {
            Some(l) if l < lines.len() && !lines[l].trim_start().starts_with('#') => {
                lines[l] = format!("# {}", lines[l]);
            }
            _ => break,
        }
        if problems.len() >= MAX_FILE_PROBLEMS {
            break;
        }
    }
    Err(problems.join("\n"))
}

/// serde's "unknown field `x`, expected one of `a`, `b`, ..." with "did you mean `a`?" when one
/// of the expected names is close to `x`.
fn suggest(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return message.to_owned();
    };
    let Some((typo, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::damerau_levenshtein(typo, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    match best {
        Some((_, k)) => format!("{message}\n(did you mean `{k}`?)"),
        None => message.to_owned(),
    }
}

/// Problems of one config file reported at most.
pub const MAX_FILE_PROBLEMS: usize = 20;
