//! The mirror under test: the regcache binary (or, with `REGCACHE_E2E_MIRROR=direct`, no
//! mirror at all: clients talk to the upstream registry directly, which proves the lab).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::proc::{self, Daemon};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorKind {
    Regcache,
    Direct,
}

impl MirrorKind {
    pub fn from_env() -> MirrorKind {
        match std::env::var("REGCACHE_E2E_MIRROR").as_deref() {
            Ok("direct") => MirrorKind::Direct,
            Ok("") | Ok("regcache") | Err(_) => MirrorKind::Regcache,
            Ok(other) => panic!("REGCACHE_E2E_MIRROR={other:?}: expected `regcache` or `direct`"),
        }
    }
}

/// How to run one `regcache serve`.
#[derive(Clone, Debug)]
pub struct RegcacheSpec {
    /// Name in the lab's messages, e.g. "regcache (mirror)".
    pub name: String,
    pub addr: SocketAddr,
    pub cache_dir: PathBuf,
    /// `--upstream URL`.
    pub upstream: Option<String>,
    /// `--redirect-host HOST:PORT` each.
    pub redirect_hosts: Vec<String>,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// The config file's `[[listeners]]` list `addr` (plain HTTP, first) and more: no
    /// `--listen` flag, which would replace them all with one.
    pub listen_in_config: bool,
    /// `--tag-ttl`.
    pub tag_ttl: String,
    /// More flags, e.g. `--revalidate-timeout 2s`.
    pub extra_args: Vec<String>,
    /// stdout+stderr (appended to across restarts).
    pub log: PathBuf,
    /// `REGCACHE_LOG` (the log filter), e.g. `trace` [default: info].
    pub log_filter: Option<String>,
}

impl RegcacheSpec {
    /// A spec on a free port with its cache in `dir/<cache>` and its log at `dir/<log>`.
    pub fn new(name: &str, dir: &Path, cache: &str, log: &str) -> RegcacheSpec {
        RegcacheSpec {
            name: name.to_owned(),
            addr: format!("127.0.0.1:{}", proc::free_port())
                .parse()
                .expect("mirror addr"),
            cache_dir: dir.join(cache),
            upstream: None,
            redirect_hosts: Vec::new(),
            config: None,
            listen_in_config: false,
            tag_ttl: "0s".to_owned(),
            extra_args: Vec::new(),
            log: dir.join(log),
            log_filter: None,
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["serve".to_owned()];
        if !self.listen_in_config {
            a.push("--listen".to_owned());
            a.push(self.addr.to_string());
        }
        a.extend([
            "--cache-dir".to_owned(),
            self.cache_dir.display().to_string(),
            "--tag-ttl".to_owned(),
            self.tag_ttl.clone(),
        ]);
        if let Some(u) = &self.upstream {
            a.push("--upstream".to_owned());
            a.push(u.clone());
        }
        for h in &self.redirect_hosts {
            a.push("--redirect-host".to_owned());
            a.push(h.clone());
        }
        if let Some(c) = &self.config {
            a.push("--config".to_owned());
            a.push(c.display().to_string());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// The regcache binary under test.
pub fn regcache_bin() -> &'static str {
    env!("CARGO_BIN_EXE_regcache")
}

/// Whether `regcache <subcommand> --help` mentions `needle` (a flag or subcommand name), to
/// tell "not implemented yet" apart from "broken" in reports.
pub fn regcache_help_mentions(subcommand: Option<&str>, needle: &str) -> bool {
    let mut c = Command::new(regcache_bin());
    if let Some(s) = subcommand {
        c.arg(s);
    }
    c.arg("--help");
    let out = proc::run(&mut c, Duration::from_secs(10));
    out.stdout.contains(needle)
}

pub struct Mirror {
    pub kind: MirrorKind,
    pub addr: SocketAddr,
    pub cache_dir: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub daemon: Option<Daemon>,
    pub spec: Option<RegcacheSpec>,
}

impl Mirror {
    pub fn start(kind: MirrorKind, dir: &Path, upstream: SocketAddr) -> Mirror {
        match kind {
            MirrorKind::Direct => {
                proc::say(format!(
                    "REGCACHE_E2E_MIRROR=direct: clients talk to the upstream registry {upstream} directly"
                ));
                Mirror {
                    kind,
                    addr: upstream,
                    cache_dir: None,
                    log: None,
                    daemon: None,
                    spec: None,
                }
            }
            MirrorKind::Regcache => {
                let mut spec =
                    RegcacheSpec::new("regcache (mirror)", dir, "regcache-cache", "regcache.log");
                spec.upstream = Some(format!("http://{upstream}"));
                Mirror::start_regcache(spec)
            }
        }
    }

    /// Starts `regcache serve` as the spec says and waits until `/v2/` answers 200.
    pub fn start_regcache(spec: RegcacheSpec) -> Mirror {
        std::fs::create_dir_all(&spec.cache_dir).expect("create regcache cache dir");
        let mut daemon = Daemon::spawn(
            &spec.name,
            Command::new(regcache_bin()).args(spec.args()).env(
                "REGCACHE_LOG",
                spec.log_filter.clone().unwrap_or_else(|| {
                    std::env::var("REGCACHE_LOG").unwrap_or_else(|_| "info".into())
                }),
            ),
            &spec.log,
            Duration::from_secs(10),
        );
        let addr = spec.addr;
        daemon.wait_ready(Duration::from_secs(30), || {
            proc::http_status(addr, "/v2/") == Some(200)
        });
        Mirror {
            kind: MirrorKind::Regcache,
            addr,
            cache_dir: Some(spec.cache_dir.clone()),
            log: Some(spec.log.clone()),
            daemon: Some(daemon),
            spec: Some(spec),
        }
    }

    /// Stops regcache and starts it again on the same address with a changed spec.
    pub fn restart(&mut self, change: impl FnOnce(&mut RegcacheSpec)) {
        let mut spec = self.spec.clone().expect("restart needs a regcache mirror");
        change(&mut spec);
        spec.addr = self.addr;
        self.stop();
        let started = Mirror::start_regcache(spec);
        *self = started;
    }

    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    pub fn is_regcache(&self) -> bool {
        self.kind == MirrorKind::Regcache
    }

    pub fn assert_alive(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            d.assert_alive();
        }
    }

    /// Last lines of the regcache log (empty in direct mode).
    pub fn log_tail(&self, n: usize) -> String {
        self.log
            .as_deref()
            .map(|l| proc::tail(l, n))
            .unwrap_or_default()
    }

    /// Position in the log, for [`Mirror::access_since`].
    pub fn log_mark(&self) -> usize {
        self.log.as_deref().map(proc::line_count).unwrap_or(0)
    }

    /// Access-log entries (target `regcache::access`) written since `mark`.
    pub fn access_since(&self, mark: usize) -> Vec<Access> {
        // Entries are written when a response body is dropped; give them a moment.
        std::thread::sleep(Duration::from_millis(200));
        self.log
            .as_deref()
            .map(|l| {
                proc::lines_after(l, mark)
                    .iter()
                    .filter_map(|l| Access::parse(l))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Log lines since `mark` that are not access entries (warnings, errors), for reports.
    pub fn other_lines_since(&self, mark: usize) -> Vec<String> {
        self.log
            .as_deref()
            .map(|l| {
                proc::lines_after(l, mark)
                    .into_iter()
                    .filter(|l| !l.contains("regcache::access"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One line of regcache's access log:
/// `... INFO regcache::access: method=GET path=/v2/... status=200 cache="hit" bytes=N complete=true ms=1.2`.
#[derive(Clone, Debug)]
pub struct Access {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub cache: String,
    pub bytes: u64,
    pub complete: bool,
    pub ms: f64,
    /// The client's address.
    pub client: String,
    /// Who the client authenticated as: the Basic user, or the subject of its TLS client
    /// certificate (`-`: nobody).
    pub user: String,
    pub line: String,
}

impl Access {
    pub fn parse(line: &str) -> Option<Access> {
        let rest = &line[line.find("regcache::access:")? + "regcache::access:".len()..];
        let field = |key: &str| -> Option<String> {
            let pat = format!(" {key}=");
            let i = rest.find(&pat)? + pat.len();
            let v = &rest[i..];
            Some(if let Some(q) = v.strip_prefix('"') {
                q[..q.find('"').unwrap_or(q.len())].to_owned()
            } else {
                v.split(' ').next().unwrap_or("").to_owned()
            })
        };
        Some(Access {
            method: field("method")?,
            path: field("path")?,
            status: field("status")?.parse().ok()?,
            cache: field("cache").unwrap_or_default(),
            bytes: field("bytes").and_then(|b| b.parse().ok()).unwrap_or(0),
            complete: field("complete").as_deref() == Some("true"),
            ms: field("ms").and_then(|b| b.parse().ok()).unwrap_or(0.0),
            client: field("client").unwrap_or_default(),
            user: field("user").unwrap_or_default(),
            line: line.to_owned(),
        })
    }

    pub fn short(&self) -> String {
        format!(
            "{} {} -> {} cache={} bytes={} complete={} {:.0}ms user={}",
            self.method,
            self.path,
            self.status,
            self.cache,
            self.bytes,
            self.complete,
            self.ms,
            self.user
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_lines() {
        let a = Access::parse(r#"2026-11-29T18:29:49.553324Z  INFO regcache::access: method=GET path=/v2/library/x/manifests/v1 status=404 cache="-" bytes=133 complete=true ms=0.205966"#).expect("parse");
        assert_eq!(
            (
                a.method.as_str(),
                a.path.as_str(),
                a.status,
                a.cache.as_str(),
                a.bytes,
                a.complete
            ),
            ("GET", "/v2/library/x/manifests/v1", 404, "-", 133, true)
        );
        let a = Access::parse(r#"2026-12-01T16:42:09.2Z  INFO regcache::access: method=GET path=/v2/ status=200 cache="none" bytes=2 complete=true ms=0.1 registry="-" client=192.0.2.2:40628 user="e2e-client" request_id=5f3a9c01000000a2"#).expect("parse");
        assert_eq!(
            (a.client.as_str(), a.user.as_str()),
            ("192.0.2.2:40628", "e2e-client")
        );
        assert!(Access::parse("2026 INFO regcache: regcache serving").is_none());
    }
}
