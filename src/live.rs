//! The live status of a running mirror — what it has saved, what it is doing now — served on
//! its admin socket (`<cache_dir>/regcache.sock`, a unix socket only local users with access to
//! the cache directory can reach) and shown by `regcache status`.
//!
//! `GET /-/status` on the socket answers [`LiveStatus`] as JSON.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admin::human;
use crate::mirror::Mirror;

/// The admin socket's file name inside the cache directory.
pub const SOCKET_NAME: &str = "regcache.sock";

/// The admin socket of the mirror serving `cache_dir`.
pub fn socket_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(SOCKET_NAME)
}

/// Requests answered and body bytes sent, for one cache result.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Count {
    /// Requests answered.
    pub requests: u64,
    /// Response body bytes sent.
    pub bytes: u64,
}

/// One registry as the live status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryStatus {
    /// `host[:port]` of its upstream.
    pub upstream: String,
    /// `reachable`, `failing`, `backing_off`, `rate_limited`, `offline` or `untried` (see
    /// [`crate::upstream::UpstreamHealth`]).
    pub state: String,
    /// Seconds until requests go again, while backing off or rate limited.
    pub retry_after_seconds: Option<u64>,
    /// Its last failure, and how many seconds ago.
    pub last_error: Option<String>,
    /// Seconds since that failure.
    pub last_error_seconds_ago: Option<u64>,
    /// Requests sent to it (token fetches and redirects included).
    pub requests_sent: u64,
    /// Docker Hub's last `ratelimit-remaining` and `ratelimit-limit`, e.g. `76;w=21600`.
    pub ratelimit_remaining: Option<String>,
    /// Docker Hub's last `ratelimit-limit`, e.g. `100;w=21600`.
    pub ratelimit_limit: Option<String>,
    /// Seconds until that budget is whole again at the latest (one window after the report).
    #[serde(default)]
    pub ratelimit_refill_seconds: Option<u64>,
    /// `rate_limit_reserve`.
    #[serde(default)]
    pub ratelimit_reserve: u64,
    /// Whether the budget is at the reserve: prefetch pauses, cached tags are not revalidated.
    #[serde(default)]
    pub ratelimit_at_reserve: bool,
    /// Manifest GETs the registry answered (Docker Hub counts these against its rate limit).
    #[serde(default)]
    pub manifest_gets: u64,
    /// Manifest HEADs the registry answered (not counted).
    #[serde(default)]
    pub manifest_heads: u64,
}

/// What a running mirror reports about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveStatus {
    /// regcache's version.
    pub version: String,
    /// The serving process.
    pub pid: u32,
    /// The listen address.
    pub listen: String,
    /// Seconds since the mirror started.
    pub uptime_seconds: u64,
    /// Requests and bytes by cache result: `hit`, `miss`, `coalesced`, `stale`, `pass`, `none`.
    pub requests: BTreeMap<String, Count>,
    /// Pull requests answered without an upstream fetch of their own (hits, coalesced onto
    /// another request's fill, stale answers) among all pull requests (`none` — errors,
    /// `/v2/`, metrics — left out), 0–1.
    pub hit_ratio_requests: f64,
    /// The same, by body bytes served, 0–1.
    pub hit_ratio_bytes: f64,
    /// Body bytes served to clients.
    pub served_bytes: u64,
    /// Blob bytes fetched from upstreams by fills.
    pub fetched_upstream_bytes: u64,
    /// `served_bytes - fetched_upstream_bytes`: what the cache saved the upstream link.
    pub saved_bytes: u64,
    /// Bytes the cache takes on disk.
    pub cache_bytes: u64,
    /// Blobs and manifests cached.
    pub cache_objects: u64,
    /// `max_size`, in bytes.
    pub max_size: Option<u64>,
    /// Free bytes on the cache's filesystem.
    pub free_bytes: Option<u64>,
    /// `min_free`, in bytes.
    pub min_free_bytes: Option<u64>,
    /// Fills in progress, oldest first.
    pub fills: Vec<crate::cache::FillProgress>,
    /// Fills committed, passed through uncached, failed, resumed since the start.
    pub fills_committed: u64,
    /// Fills passed through uncached.
    pub fills_uncached: u64,
    /// Fills that failed.
    pub fills_failed: u64,
    /// By registry name (`docker.io`).
    pub registries: BTreeMap<String, RegistryStatus>,
}

impl LiveStatus {
    /// The running mirror's status now (touches the disk once, a `statvfs` for free space).
    pub fn of(mirror: &Mirror) -> LiveStatus {
        let f = mirror.figures();
        let requests: BTreeMap<String, Count> = crate::metrics::RESULTS
            .iter()
            .zip(f.requests)
            .map(|(r, (requests, bytes))| (r.as_str().to_owned(), Count { requests, bytes }))
            .collect();
        // Requests and bytes of the named results together.
        let total = |names: &[&str]| {
            names
                .iter()
                .filter_map(|n| requests.get(*n))
                .fold((0, 0), |(r, b), c| (r + c.requests, b + c.bytes))
        };
        let (all_req, all_bytes) = total(&["hit", "miss", "coalesced", "stale", "pass"]);
        let cached = total(&["hit", "coalesced", "stale"]);
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (free_bytes, min_free_bytes) = mirror.cache().space();
        let registries = mirror
            .registries()
            .names()
            .filter_map(|name| {
                let up = mirror.registries().get(name)?;
                let h = up.health();
                let rl = up.rate_limit();
                let budget = up.governor().budget();
                let (gets, heads) = up.manifest_requests();
                Some((
                    name.to_owned(),
                    RegistryStatus {
                        upstream: h.upstream,
                        state: h.state.to_owned(),
                        retry_after_seconds: h.retry_after_seconds,
                        last_error: h.last_error,
                        last_error_seconds_ago: h.last_error_seconds_ago,
                        requests_sent: up.requests_sent(),
                        ratelimit_limit: rl.as_ref().map(|(l, _)| l.clone()),
                        ratelimit_remaining: rl.map(|(_, r)| r),
                        ratelimit_refill_seconds: budget.map(|b| b.refills_in().as_secs()),
                        ratelimit_reserve: up.governor().reserve(),
                        ratelimit_at_reserve: up.governor().at_reserve().is_some(),
                        manifest_gets: gets,
                        manifest_heads: heads,
                    },
                ))
            })
            .collect();
        LiveStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            listen: mirror
                .config()
                .listeners
                .iter()
                .map(|l| l.label())
                .collect::<Vec<_>>()
                .join(", "),
            uptime_seconds: mirror.uptime().as_secs(),
            hit_ratio_requests: ratio(cached.0, all_req),
            hit_ratio_bytes: ratio(cached.1, all_bytes),
            served_bytes: all_bytes,
            fetched_upstream_bytes: f.fills.bytes,
            saved_bytes: all_bytes.saturating_sub(f.fills.bytes),
            requests,
            cache_bytes: f.cache_bytes,
            cache_objects: f.cache_objects,
            max_size: f.max_size,
            free_bytes,
            min_free_bytes,
            fills: mirror.cache().fill_progress(),
            fills_committed: f.fills.committed,
            fills_uncached: f.fills.uncached,
            fills_failed: f.fills.failed,
            registries,
        }
    }

    /// The status as `regcache status` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12}{v}\n"));
        line(
            "serving:",
            format!(
                "{} (pid {}, regcache {}, up {})",
                self.listen,
                self.pid,
                self.version,
                humantime::format_duration(Duration::from_secs(self.uptime_seconds))
            ),
        );
        let c = |n: &str| self.requests.get(n).copied().unwrap_or_default().requests;
        line(
            "requests:",
            format!(
                "hit {}, miss {}, coalesced {}, stale {}, pass {}, none {} (not a pull: errors, /v2/, health, metrics)",
                c("hit"),
                c("miss"),
                c("coalesced"),
                c("stale"),
                c("pass"),
                c("none")
            ),
        );
        line(
            "hit ratio:",
            format!(
                "{:.1}% of requests, {:.1}% of bytes",
                self.hit_ratio_requests * 100.0,
                self.hit_ratio_bytes * 100.0
            ),
        );
        line(
            "saved:",
            format!(
                "{} (served {}, fetched upstream {})",
                human(self.saved_bytes),
                human(self.served_bytes),
                human(self.fetched_upstream_bytes)
            ),
        );
        let budget = match self.max_size {
            Some(m) => format!(
                "{} of {} ({:.0}%)",
                human(self.cache_bytes),
                human(m),
                self.cache_bytes as f64 * 100.0 / m.max(1) as f64
            ),
            None => format!("{} (no max_size)", human(self.cache_bytes)),
        };
        line(
            "cache:",
            format!("{budget}, {} objects", self.cache_objects),
        );
        if let Some(free) = self.free_bytes {
            let min = self
                .min_free_bytes
                .map_or(String::new(), |m| format!(" (min_free {})", human(m)));
            line("free disk:", format!("{}{min}", human(free)));
        }
        line(
            "fills:",
            format!(
                "{} in progress; {} committed, {} passed through, {} failed since the start",
                self.fills.len(),
                self.fills_committed,
                self.fills_uncached,
                self.fills_failed
            ),
        );
        for f in &self.fills {
            let of = f.length.map_or(String::new(), |l| {
                format!(
                    " of {} ({:.0}%)",
                    human(l),
                    f.received as f64 * 100.0 / l.max(1) as f64
                )
            });
            out.push_str(&format!(
                "  {} {}{of}, {}/s, {:.1}s\n",
                f.digest,
                human(f.received),
                human(f.bytes_per_second),
                f.seconds
            ));
        }
        out.push_str("registries:\n");
        for (name, r) in &self.registries {
            let mut s = format!("  {name} → {}: {}", r.upstream, r.state);
            if let Some(t) = r.retry_after_seconds {
                s.push_str(&format!(" (for another {t}s)"));
            }
            s.push_str(&format!(
                ", {} request{} sent",
                r.requests_sent,
                if r.requests_sent == 1 { "" } else { "s" }
            ));
            s.push_str(&format!(
                " ({} manifest GET{} counted by rate limits, {} HEAD{})",
                r.manifest_gets,
                if r.manifest_gets == 1 { "" } else { "s" },
                r.manifest_heads,
                if r.manifest_heads == 1 { "" } else { "s" },
            ));
            if let Some(rem) = &r.ratelimit_remaining {
                // `76;w=21600` → `76`: the window is said by "whole again within".
                let number = |v: &str| v.split(';').next().unwrap_or(v).trim().to_owned();
                let limit = r.ratelimit_limit.as_deref().map_or("?".into(), number);
                s.push_str(&format!(", rate limit {} left of {limit}", number(rem)));
                if let Some(t) = r.ratelimit_refill_seconds.filter(|t| *t > 0) {
                    s.push_str(&format!(
                        ", whole again within {}",
                        humantime::format_duration(std::time::Duration::from_secs(t))
                    ));
                }
                if r.ratelimit_at_reserve {
                    s.push_str(&format!(
                        "; AT THE RESERVE ({}): prefetch paused, cached tags served without revalidation",
                        r.ratelimit_reserve
                    ));
                }
            }
            if let (Some(e), Some(ago)) = (&r.last_error, r.last_error_seconds_ago) {
                s.push_str(&format!("; last error {ago}s ago: {e}"));
            }
            out.push_str(&s);
            out.push('\n');
        }
        out
    }
}

/// Asks the mirror serving `cache_dir` for its status over its admin socket.
///
/// Errors: no socket (no mirror serves that directory), nobody listening (a stale socket),
/// no answer within 5 s, or an answer that is not a status.
pub fn fetch(cache_dir: &Path) -> std::io::Result<LiveStatus> {
    let (status, body) = call(cache_dir, "GET", "/-/status", "", Duration::from_secs(5))?;
    let bad =
        |why: String| std::io::Error::other(format!("{}: {why}", socket_path(cache_dir).display()));
    if status != 200 {
        return Err(bad(format!("the mirror answered {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| bad(format!("not a status: {e}")))
}

/// `regcache rm` done by the mirror serving `cache_dir` (so its index follows). `None`: no
/// mirror answers there (do it on the directory).
///
/// Errors: the mirror's answer — a malformed reference (`InvalidInput`), nothing cached
/// (`NotFound`), a disk error.
pub fn rm(cache_dir: &Path, image: &str) -> Option<std::io::Result<crate::admin::Removed>> {
    let (status, body) = call(cache_dir, "POST", "/-/rm", image, Duration::from_secs(120)).ok()?;
    Some(answer(status, &body))
}

/// What `regcache gc` done by the serving mirror (with its own budget) reported: the report,
/// the dry run's lines, and whether the mirror has no budget at all. `None`: no mirror answers.
pub type GcAnswer = (crate::cache::eviction::EvictReport, Vec<String>, bool);

/// `regcache gc` done by the mirror serving `cache_dir`, with `budget` (`None`: the mirror's
/// own). `None`: no mirror answers there.
///
/// Errors: the mirror's answer (a disk error).
pub fn gc(
    cache_dir: &Path,
    dry_run: bool,
    budget: Option<crate::cache::eviction::Budget>,
) -> Option<std::io::Result<GcAnswer>> {
    let ask = serde_json::json!({ "dry_run": dry_run, "budget": budget }).to_string();
    let (status, body) = call(cache_dir, "POST", "/-/gc", &ask, Duration::from_secs(120)).ok()?;
    #[derive(Deserialize)]
    struct Gc {
        report: crate::cache::eviction::EvictReport,
        lines: Vec<String>,
        unbounded: bool,
    }
    Some(answer::<Gc>(status, &body).map(|g| (g.report, g.lines, g.unbounded)))
}

/// `GET path` on the admin socket of `cache_dir`, its JSON answer.
///
/// Errors: no mirror answers (no socket, a stale one, 5 s without an answer), a status other
/// than 200, or an answer that is not the JSON expected.
pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
    cache_dir: &Path,
    path: &str,
) -> std::io::Result<T> {
    let (status, body) = call(cache_dir, "GET", path, "", Duration::from_secs(5))?;
    answer(status, &body).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{} {path}: {e}", socket_path(cache_dir).display()),
        )
    })
}

/// A JSON answer of the admin socket, or its `{"error": ...}` as an error of the right kind.
fn answer<T: serde::de::DeserializeOwned>(status: u16, body: &[u8]) -> std::io::Result<T> {
    if status == 200 {
        return serde_json::from_slice(body).map_err(std::io::Error::other);
    }
    let why = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("the mirror answered {status}"));
    let kind = match status {
        400 => std::io::ErrorKind::InvalidInput,
        404 => std::io::ErrorKind::NotFound,
        _ => std::io::ErrorKind::Other,
    };
    Err(std::io::Error::new(kind, why))
}

/// One HTTP/1.1 request on the admin socket of `cache_dir`: (status, body).
///
/// Errors: no socket or nobody listening (no mirror), a timeout, an answer that is not HTTP.
fn call(
    cache_dir: &Path,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let socket = socket_path(cache_dir);
    let mut s = std::os::unix::net::UnixStream::connect(&socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: regcache\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let bad = || std::io::Error::other(format!("{}: not an HTTP answer", socket.display()));
    let at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let status = std::str::from_utf8(&buf[..at])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, buf[at + 4..].to_vec()))
}
