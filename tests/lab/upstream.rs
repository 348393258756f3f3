//! The Hub-like upstream: distribution 2.8 (`docker-registry`) with token auth and blob
//! redirects to an nginx "CDN", plus access-log accounting for both. Optionally with fault
//! proxies ([`super::faults`]) in front of both: regcache is then given the registry's proxy
//! as its upstream, and the registry redirects blob GETs to the CDN's proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::faults::FaultProxy;
use super::proc::{self, Daemon};
use super::token::{self, TokenServer};

/// Per-request bandwidth of the CDN stand-in (nginx `limit_rate`): 20 MiB take ~6 s.
pub const CDN_RATE_LIMIT: &str = "3500k";

pub struct Upstream {
    pub registry_addr: SocketAddr,
    pub cdn_addr: SocketAddr,
    pub storage_root: PathBuf,
    pub registry_log: PathBuf,
    pub cdn_access_log: PathBuf,
    pub cdn_error_log: PathBuf,
    /// Fault proxy in front of the registry (what regcache is pointed at), if any.
    pub registry_front: Option<FaultProxy>,
    /// Fault proxy in front of the CDN (the registry's redirect target), if any.
    pub cdn_front: Option<FaultProxy>,
    /// What a mirror of this registry must allow as redirect and realm targets (`host:port`):
    /// the CDN (or its proxy) and the token server, on loopback like the registry.
    pub redirect_hosts: Vec<String>,
    // Field order = drop order: the proxies, then the CDN, then the registry.
    pub cdn: Daemon,
    pub registry: Daemon,
}

/// Positions in the upstream logs, to count traffic after a point in time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mark {
    registry_lines: usize,
    cdn_lines: usize,
}

/// One HTTP request seen by the registry or the CDN.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Whether the request carried an Authorization header (CDN log only).
    pub authorized: bool,
    pub user_agent: String,
}

impl Request {
    pub fn is_blob(&self) -> bool {
        self.path.contains("/blobs/sha256:") && !self.path.contains("/blobs/uploads/")
    }

    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }

    /// The digest of a blob request (registry path `/v2/N/blobs/sha256:H` or CDN storage
    /// path `/docker/registry/v2/blobs/sha256/hh/H/data`).
    pub fn blob_digest(&self) -> Option<String> {
        if let Some(i) = self.path.find("/blobs/sha256:") {
            let rest = &self.path[i + "/blobs/".len()..];
            return Some(rest.split(['?', '/']).next().unwrap_or(rest).to_owned());
        }
        let mut parts = self.path.split('/');
        if parts.any(|p| p == "sha256") {
            let _prefix = parts.next()?;
            return parts.next().map(|h| format!("sha256:{h}"));
        }
        None
    }
}

/// Upstream traffic between a mark and now.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    pub registry: Vec<Request>,
    pub cdn: Vec<Request>,
}

impl Traffic {
    pub fn registry_count(&self, method: &str, pred: impl Fn(&Request) -> bool) -> usize {
        self.registry
            .iter()
            .filter(|r| r.method == method && pred(r))
            .count()
    }

    /// Blob GETs the registry answered (any status).
    pub fn registry_blob_gets(&self) -> usize {
        self.registry_count("GET", Request::is_blob)
    }

    pub fn cdn_gets(&self) -> usize {
        self.cdn.iter().filter(|r| r.method == "GET").count()
    }

    pub fn cdn_status(&self, status: u16) -> usize {
        self.cdn.iter().filter(|r| r.status == status).count()
    }

    pub fn summary(&self) -> String {
        let c = |m: &str, f: fn(&Request) -> bool| self.registry_count(m, f);
        format!(
            "registry: {} requests (manifest GET {}, manifest HEAD {}, blob GET {}, blob HEAD {}, 401s {}); cdn: {} requests (GET {}, HEAD {}, 400s {})",
            self.registry.len(),
            c("GET", Request::is_manifest),
            c("HEAD", Request::is_manifest),
            c("GET", Request::is_blob),
            c("HEAD", Request::is_blob),
            self.registry.iter().filter(|r| r.status == 401).count(),
            self.cdn.len(),
            self.cdn_gets(),
            self.cdn.iter().filter(|r| r.method == "HEAD").count(),
            self.cdn_status(400),
        )
    }

    /// One line per request, for failure messages.
    pub fn listing(&self) -> String {
        let mut s = String::new();
        for r in &self.registry {
            s.push_str(&format!(
                "  registry {} {} -> {} ({})\n",
                r.method, r.path, r.status, r.user_agent
            ));
        }
        for r in &self.cdn {
            s.push_str(&format!(
                "  cdn      {} {} -> {} auth={} ({})\n",
                r.method, r.path, r.status, r.authorized, r.user_agent
            ));
        }
        s
    }
}

/// Parses a combined-log-format line written by distribution's access log:
/// `IP - - [date] "GET /v2/... HTTP/1.1" 307 0 "referer" "user-agent"`.
/// Other lines (logrus output on the same stream) yield None.
fn parse_combined(line: &str) -> Option<Request> {
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut req = rest[..end].split(' ');
    let method = req.next()?.to_owned();
    let path = req.next()?.to_owned();
    if !req.next()?.starts_with("HTTP/") {
        return None;
    }
    let after = rest[end + 1..].trim_start();
    let status = after.split(' ').next()?.parse().ok()?;
    let user_agent = after
        .rsplit('"')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_default();
    Some(Request {
        method,
        path,
        status,
        authorized: false,
        user_agent,
    })
}

/// Parses our nginx log format: `METHOD URI STATUS AUTH "user-agent"`.
fn parse_cdn(line: &str) -> Option<Request> {
    let mut it = line.splitn(5, ' ');
    let method = it.next()?.to_owned();
    let path = it.next()?.to_owned();
    let status = it.next()?.parse().ok()?;
    let authorized = it.next()? == "auth=yes";
    let user_agent = it.next().unwrap_or("").trim_matches('"').to_owned();
    Some(Request {
        method,
        path,
        status,
        authorized,
        user_agent,
    })
}

impl Upstream {
    pub fn start(dir: &Path, registry_bin: &Path, nginx_bin: &Path, tokens: &TokenServer) -> Self {
        Self::start_with(dir, registry_bin, nginx_bin, tokens, false)
    }

    /// Like [`Upstream::start`]; with `fault_proxies`, a [`FaultProxy`] goes in front of the
    /// registry and one in front of the CDN (the registry's redirect `baseurl`).
    pub fn start_with(
        dir: &Path,
        registry_bin: &Path,
        nginx_bin: &Path,
        tokens: &TokenServer,
        fault_proxies: bool,
    ) -> Self {
        std::fs::create_dir_all(dir).expect("create upstream dir");
        let storage_root = dir.join("storage");
        std::fs::create_dir_all(&storage_root).expect("create registry storage root");
        let registry_port = proc::free_port();
        let cdn_port = proc::free_port();
        let registry_addr: SocketAddr = format!("127.0.0.1:{registry_port}")
            .parse()
            .expect("registry addr");
        let cdn_addr: SocketAddr = format!("127.0.0.1:{cdn_port}").parse().expect("cdn addr");

        // --- nginx, the CDN stand-in serving the registry's storage root ---
        let ngx = dir.join("nginx");
        std::fs::create_dir_all(ngx.join("tmp")).expect("create nginx dirs");
        let cdn_access_log = ngx.join("access.log");
        let cdn_error_log = ngx.join("error.log");
        let conf = format!(
            r#"# regcache e2e CDN stand-in
daemon off;
master_process on;
worker_processes 1;
user root;
pid {ngx}/nginx.pid;
error_log {err} info;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {ngx}/tmp/body;
    proxy_temp_path {ngx}/tmp/proxy;
    fastcgi_temp_path {ngx}/tmp/fastcgi;
    uwsgi_temp_path {ngx}/tmp/uwsgi;
    scgi_temp_path {ngx}/tmp/scgi;
    map $http_authorization $e2e_auth {{ default "auth=yes"; "" "auth=no"; }}
    log_format e2e '$request_method $uri $status $e2e_auth "$http_user_agent"';
    access_log {acc} e2e;
    sendfile on;
    default_type application/octet-stream;
    server {{
        listen {cdn_addr};
        root {root};
        location / {{
            # S3-style CDNs reject a second auth mechanism: a leaked registry token is a bug.
            if ($http_authorization) {{ return 400; }}
            # Slow enough that the ~20 MiB layer takes longer than a token lives.
            limit_rate {rate};
        }}
    }}
}}
"#,
            ngx = ngx.display(),
            err = cdn_error_log.display(),
            acc = cdn_access_log.display(),
            root = storage_root.display(),
            rate = CDN_RATE_LIMIT,
        );
        let conf_path = ngx.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut cdn = Daemon::spawn(
            "nginx (CDN)",
            Command::new(nginx_bin)
                .arg("-p")
                .arg(&ngx)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(&cdn_error_log),
            &ngx.join("nginx.stdout.log"),
            Duration::from_secs(5),
        );
        cdn.wait_ready(Duration::from_secs(15), || {
            proc::http_status(cdn_addr, "/").is_some()
        });
        // The leak detector works: a request with Authorization is refused (and logged).
        let probe = proc::http_request(cdn_addr, "GET", "/", &[("Authorization", "Bearer probe")])
            .expect("probe the CDN with an Authorization header")
            .0;
        assert_eq!(
            probe, 400,
            "nginx CDN must answer 400 to requests carrying Authorization"
        );
        let cdn_front = fault_proxies.then(|| FaultProxy::start("cdn", cdn_addr, dir));
        let cdn_public = cdn_front.as_ref().map_or(cdn_addr, |p| p.addr);

        // --- distribution 2.8 with token auth and redirecting storage ---
        let reg = dir.join("registry");
        std::fs::create_dir_all(&reg).expect("create registry dir");
        let registry_log = reg.join("registry.log");
        let config = format!(
            r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {registry_addr}
  secret: e2e-{secret:x}
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
middleware:
  storage:
    - name: redirect
      options:
        baseurl: http://{cdn_public}/
"#,
            root = storage_root.display(),
            secret = std::process::id(),
            realm = tokens.realm(),
            service = tokens.service,
            issuer = token::ISSUER,
            bundle = tokens.cert_pem_path.display(),
        );
        let config_path = reg.join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config.yml");
        let mut registry = Daemon::spawn(
            "docker-registry (upstream)",
            Command::new(registry_bin).arg("serve").arg(&config_path),
            &registry_log,
            Duration::from_secs(5),
        );
        registry.wait_ready(Duration::from_secs(20), || {
            proc::http_status(registry_addr, "/v2/") == Some(401)
        });
        proc::say(format!(
            "upstream registry http://{registry_addr} (token auth, realm {}), CDN http://{cdn_addr}",
            tokens.realm()
        ));
        let registry_front =
            fault_proxies.then(|| FaultProxy::start("registry", registry_addr, dir));
        Upstream {
            registry_addr,
            cdn_addr,
            storage_root,
            registry_log,
            cdn_access_log,
            cdn_error_log,
            registry_front,
            cdn_front,
            redirect_hosts: vec![cdn_public.to_string(), tokens.addr.to_string()],
            cdn,
            registry,
        }
    }

    /// The URL regcache should use: the registry's fault proxy, if any, else the registry.
    pub fn mirror_url(&self) -> String {
        let addr = self
            .registry_front
            .as_ref()
            .map_or(self.registry_addr, |p| p.addr);
        format!("http://{addr}")
    }

    pub fn registry_front(&self) -> &FaultProxy {
        self.registry_front
            .as_ref()
            .expect("lab started with fault proxies")
    }

    pub fn cdn_front(&self) -> &FaultProxy {
        self.cdn_front
            .as_ref()
            .expect("lab started with fault proxies")
    }

    /// Both fault proxies (registry first).
    pub fn fronts(&self) -> [&FaultProxy; 2] {
        [self.registry_front(), self.cdn_front()]
    }

    pub fn mark(&self) -> Mark {
        Mark {
            registry_lines: proc::line_count(&self.registry_log),
            cdn_lines: proc::line_count(&self.cdn_access_log),
        }
    }

    /// Requests seen upstream since `mark`.
    pub fn since(&self, mark: &Mark) -> Traffic {
        // Access log lines are written after the response; give them a moment to land.
        std::thread::sleep(Duration::from_millis(300));
        Traffic {
            registry: proc::lines_after(&self.registry_log, mark.registry_lines)
                .iter()
                .filter_map(|l| parse_combined(l))
                .collect(),
            cdn: proc::lines_after(&self.cdn_access_log, mark.cdn_lines)
                .iter()
                .filter_map(|l| parse_cdn(l))
                .collect(),
        }
    }

    pub fn assert_alive(&mut self) {
        self.registry.assert_alive();
        self.cdn.assert_alive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_logs() {
        let l = r#"127.0.0.1 - - [07/May/2026:10:00:00 +0000] "GET /v2/library/x/blobs/sha256:abcd HTTP/1.1" 307 0 "" "docker/20.10.24 go/go1.19""#;
        let r = parse_combined(l).expect("parse combined line");
        assert_eq!(
            (r.method.as_str(), r.status, r.is_blob()),
            ("GET", 307, true)
        );
        assert_eq!(r.blob_digest().as_deref(), Some("sha256:abcd"));
        assert_eq!(r.user_agent, "docker/20.10.24 go/go1.19");
        assert!(parse_combined("time=\"x\" level=info msg=\"response completed\"").is_none());
        let c = parse_cdn(
            r#"GET /docker/registry/v2/blobs/sha256/ab/abcd/data 200 auth=no "Go-http-client/1.1""#,
        )
        .expect("parse cdn line");
        assert_eq!(c.blob_digest().as_deref(), Some("sha256:abcd"));
        assert!(!c.authorized);
    }
}
