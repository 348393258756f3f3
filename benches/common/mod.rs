//! What the end-to-end benchmarks share (`benches/compare.rs`, `benches/paths.rs`): daemons in
//! their own process groups (recorded in the pgid file `scripts/bench` cleans up), CPU and
//! memory of a daemon's processes from /proc, a hyper HTTP/1.1 client with one connection per
//! request, seeded random blobs pushed with the registry API, the local `docker-registry`
//! upstream, the nginx `proxy_cache` configuration, medians and table formatting, and the
//! machine's description.

/// The lab's process, port and HTTP helpers (one copy, shared with the e2e tests).
#[path = "../../tests/lab/proc.rs"]
pub mod proc;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use regcache::cache::hash::Hasher;
use regcache::reference::Algorithm;
use serde::Serialize;

use proc::{free_port, http_status, tail, which};

// ------------------------------------------------------------------------------------------
// Sizes and names both benchmarks use.

/// Longest any single benchmark GET may take before the run fails.
pub const GET_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a daemon gets to answer its first request.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// RSS sampling period.
pub const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Repository pushed upstream (has a `/`, so no `library/` aliasing anywhere).
pub const REPO: &str = "bench/big";
/// Media type of the pushed manifests (and the Accept every manifest GET sends).
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

pub const MIB: f64 = 1024.0 * 1024.0;
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid number")),
        _ => default,
    }
}

// ------------------------------------------------------------------------------------------
// Logging

pub static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub fn say(msg: impl AsRef<str>) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[bench {t:7.1}s] {}", msg.as_ref());
}

// ------------------------------------------------------------------------------------------
// Processes: daemons in their own process groups, CPU and memory from /proc.

pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` in a new process group, stdout and stderr to `log`, and records the group
    /// in `pgids` so `scripts/bench` can stop it if this program is killed.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path, pgids: &Path) -> Daemon {
        let out = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log fd");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(pgids) {
            let _ = writeln!(f, "{}", child.id());
        }
        Daemon {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pgid(&self) -> u32 {
        self.child.id()
    }

    /// Every live process of the daemon (its process group).
    pub fn pids(&self) -> Vec<u32> {
        group_pids(self.pgid())
    }

    /// Waits until `GET path` answers with a status `ok` accepts.
    pub fn wait_ready(&mut self, addr: SocketAddr, path: &str, ok: impl Fn(u16) -> bool) {
        self.wait_until(&format!("GET {path} on {addr}"), || {
            http_status(addr, path).is_some_and(&ok)
        });
    }

    /// Waits until `probe` returns true (`what` names it in the failure message); panics with
    /// the log's tail if the daemon exits first or `READY_TIMEOUT` passes.
    pub fn wait_until(&mut self, what: &str, mut probe: impl FnMut() -> bool) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "{} exited ({st}) before answering; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            if probe() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer {what} within {READY_TIMEOUT:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal_group(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, "--", &format!("-{}", self.pgid())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            // The leader is gone; stop any stragglers of its group (nginx workers).
            if !self.pids().is_empty() {
                self.signal_group("KILL");
            }
            return;
        }
        self.signal_group("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) && self.pids().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group("KILL");
        let _ = self.child.wait();
    }
}

/// Flushes dirty pages (earlier pushes and fills) so each cold measurement starts from the same
/// writeback state.
pub fn settle() {
    sync();
    std::thread::sleep(Duration::from_millis(200));
}

/// Makes `bytes` (plus 64 MiB) of guest memory backed before a phase that writes that much
/// new page cache: touches one byte per 4 KiB page of a fresh allocation, then frees it. On this
/// VM kind the balloon's free page reporting hands freed guest pages back to the host, and the
/// first write to such a page costs ~6.6 µs (a fill of 256 MiB into them: ~0.43 s more), so
/// without this a cold figure depends on which peer happened to find recently freed pages
/// (BENCHMARKS.md, 2026-12-02). The kernel hands out the just-freed, unreported pages first.
/// `BENCH_PRETOUCH=0` turns it off.
pub fn pretouch(bytes: u64) {
    if std::env::var("BENCH_PRETOUCH").is_ok_and(|v| v == "0") {
        return;
    }
    let n = (bytes + (64 << 20)) as usize;
    let mut v: Vec<u8> = vec![0; n];
    for i in (0..n).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
}

/// `sync(1)`; returns how long it took.
pub fn sync() -> Duration {
    let t0 = Instant::now();
    let _ = Command::new("sync").status();
    t0.elapsed()
}

/// Fields of /proc/<pid>/stat after the command name: [0] = state (field 3), [2] = pgrp
/// (field 5), [11] = utime (field 14), [12] = stime (field 15).
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

pub fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    let mut out: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                f.len() > 12 && f[2] == pgid.to_string() && f[0] != "Z" && f[0] != "X"
            })
        })
        .collect();
    out.sort_unstable();
    out
}

/// utime + stime of `pids`, in clock ticks.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| stat_fields(p))
        .map(|f| f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0))
        .sum()
}

pub fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `key:  N kB` fields of /proc/<pid>/status, in KiB.
pub fn status_kib(pid: u32, keys: &[&str]) -> Vec<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    keys.iter()
        .map(|k| {
            s.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Peak memory of a daemon over a phase.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct MemPeak {
    /// Sum over the processes of VmHWM (kernel-tracked peak RSS since the reset), MiB.
    pub hwm_mib: f64,
    /// Highest sampled sum of RssAnon, MiB.
    pub anon_mib: f64,
    /// Highest sampled sum of RssFile (mapped file pages), MiB.
    pub file_mib: f64,
    /// Highest sampled sum of VmRSS, MiB.
    pub sampled_rss_mib: f64,
}

pub struct MemWatch {
    pub stop: Arc<AtomicBool>,
    pub handle: std::thread::JoinHandle<(u64, u64, u64)>,
    pub pids: Vec<u32>,
}

impl MemWatch {
    /// Resets the peak-RSS counters of the daemon's processes and starts sampling.
    pub fn start(d: &Daemon) -> MemWatch {
        let pids = d.pids();
        for p in &pids {
            // "5" resets VmHWM to the current RSS (Linux >= 4.0).
            let _ = fs::write(format!("/proc/{p}/clear_refs"), "5");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (s, ps) = (stop.clone(), pids.clone());
        let handle = std::thread::spawn(move || {
            let (mut rss, mut anon, mut file) = (0u64, 0u64, 0u64);
            while !s.load(Ordering::Relaxed) {
                let mut t = [0u64; 3];
                for &p in &ps {
                    let v = status_kib(p, &["VmRSS", "RssAnon", "RssFile"]);
                    for i in 0..3 {
                        t[i] += v[i];
                    }
                }
                rss = rss.max(t[0]);
                anon = anon.max(t[1]);
                file = file.max(t[2]);
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
            (rss, anon, file)
        });
        MemWatch { stop, handle, pids }
    }

    pub fn finish(self) -> MemPeak {
        let hwm: u64 = self
            .pids
            .iter()
            .map(|&p| status_kib(p, &["VmHWM"])[0])
            .sum();
        self.stop.store(true, Ordering::Relaxed);
        let (rss, anon, file) = self.handle.join().expect("sampler thread");
        MemPeak {
            hwm_mib: hwm as f64 / 1024.0,
            anon_mib: anon as f64 / 1024.0,
            file_mib: file as f64 / 1024.0,
            sampled_rss_mib: rss as f64 / 1024.0,
        }
    }
}

// ------------------------------------------------------------------------------------------
// HTTP client (hyper, one connection per request so every client has its own socket).

#[derive(Debug, Clone)]
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub bytes: u64,
    /// Time to the first body byte (to the end for an empty body).
    pub ttfb: Duration,
    pub total: Duration,
    pub sha256: Option<String>,
}

pub struct GetOpts<'a> {
    pub accept: Option<&'a str>,
    pub hash: bool,
}

pub const PLAIN: GetOpts<'static> = GetOpts {
    accept: None,
    hash: false,
};

pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(http::HeaderName, String)],
    body: Bytes,
    opts: &GetOpts<'_>,
    t0: Instant,
) -> Result<Got, String> {
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut b = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, addr.to_string())
            .header(USER_AGENT, "regcache-bench/1");
        if let Some(a) = opts.accept {
            b = b.header(ACCEPT, a);
        }
        for (k, v) in headers {
            b = b.header(k, v);
        }
        if !body.is_empty() || method == Method::PUT || method == Method::POST {
            b = b.header(CONTENT_LENGTH, body.len());
        }
        let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        read_response(resp, opts.hash, t0, &format!("{method} {path}")).await
    };
    match tokio::time::timeout(GET_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("{method} {path}: no answer within {GET_TIMEOUT:?}")),
    }
}

/// Reads a response to its end: status, headers, body length, time from `t0` to the first body
/// byte and to the end, and (with `hash`) the body's sha256. `what` ("GET <path>") names the
/// request in errors.
pub async fn read_response(
    resp: http::Response<hyper::body::Incoming>,
    hash: bool,
    t0: Instant,
    what: &str,
) -> Result<Got, String> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut hasher = hash.then(|| Hasher::new(Algorithm::Sha256));
    let mut ttfb = None;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("{what}: body: {e}"))?;
        if let Ok(d) = frame.into_data() {
            if d.is_empty() {
                continue;
            }
            if ttfb.is_none() {
                ttfb = Some(t0.elapsed());
            }
            n += d.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&d);
            }
        }
    }
    let total = t0.elapsed();
    Ok(Got {
        status,
        headers,
        bytes: n,
        ttfb: ttfb.unwrap_or(total),
        total,
        sha256: hasher.map(|h| h.finish().to_string()),
    })
}

pub async fn get(addr: SocketAddr, path: &str, opts: &GetOpts<'_>) -> Result<Got, String> {
    request(
        addr,
        Method::GET,
        path,
        &[],
        Bytes::new(),
        opts,
        Instant::now(),
    )
    .await
}

/// A GET that must answer 200 with exactly `len` bytes.
pub async fn get_exact(
    addr: SocketAddr,
    path: &str,
    len: u64,
    opts: &GetOpts<'_>,
) -> Result<Got, String> {
    let g = get(addr, path, opts).await?;
    if g.status != 200 || g.bytes != len {
        return Err(format!(
            "GET {path} via {addr}: status {} with {} bytes (want 200 with {len})",
            g.status, g.bytes
        ));
    }
    Ok(g)
}

// ------------------------------------------------------------------------------------------
// Test content: seeded random blobs and OCI manifests, pushed with the registry API.

pub fn random_blob(seed: u64, len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize + 8);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
    while (v.len() as u64) < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        v.extend_from_slice(&z.to_le_bytes());
    }
    v.truncate(len as usize);
    v
}

/// Monolithic upload: POST /v2/<repo>/blobs/uploads/, then PUT <location>?digest=.
pub async fn push_blob(upstream: SocketAddr, data: Bytes) -> Result<String, String> {
    let digest = Hasher::digest_of(Algorithm::Sha256, &data).to_string();
    let t0 = Instant::now();
    let post = request(
        upstream,
        Method::POST,
        &format!("/v2/{REPO}/blobs/uploads/"),
        &[],
        Bytes::new(),
        &PLAIN,
        t0,
    )
    .await?;
    if post.status != 202 {
        return Err(format!("upload POST answered {}", post.status));
    }
    let loc = post
        .headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("upload POST without Location")?
        .to_string();
    // The Location may be absolute; keep path and query.
    let path = match loc.find("://") {
        Some(i) => {
            let after = &loc[i + 3..];
            after[after.find('/').unwrap_or(after.len())..].to_string()
        }
        None => loc,
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let put = request(
        upstream,
        Method::PUT,
        &format!("{path}{sep}digest={digest}"),
        &[(CONTENT_TYPE, "application/octet-stream".into())],
        data,
        &PLAIN,
        t0,
    )
    .await?;
    if put.status != 201 {
        return Err(format!("upload PUT answered {}", put.status));
    }
    Ok(digest)
}

pub async fn push_manifest(upstream: SocketAddr, tag: &str, body: Bytes) -> Result<String, String> {
    let digest = Hasher::digest_of(Algorithm::Sha256, &body).to_string();
    let put = request(
        upstream,
        Method::PUT,
        &format!("/v2/{REPO}/manifests/{tag}"),
        &[(CONTENT_TYPE, MANIFEST_TYPE.into())],
        body,
        &PLAIN,
        Instant::now(),
    )
    .await?;
    if put.status != 201 {
        return Err(format!("manifest PUT {tag} answered {}", put.status));
    }
    Ok(digest)
}

pub fn blob_path(d: &str) -> String {
    format!("/v2/{REPO}/blobs/{d}")
}

pub fn manifest_path(d: &str) -> String {
    format!("/v2/{REPO}/manifests/{d}")
}

// ------------------------------------------------------------------------------------------
// The upstream and the peers.

pub struct Tools {
    pub registry: PathBuf,
    pub nginx: PathBuf,
    pub wrk: PathBuf,
}

pub fn tools() -> Tools {
    let need = |n: &str| {
        which(n).unwrap_or_else(|| {
            panic!("{n} not found: run scripts/bench (it installs docker-registry, nginx-light and wrk)")
        })
    };
    Tools {
        registry: need("docker-registry"),
        nginx: need("nginx"),
        wrk: need("wrk"),
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub daemon: Daemon,
}

pub fn start_upstream(t: &Tools, work: &Path, pgids: &Path) -> Upstream {
    let dir = work.join("upstream");
    fs::create_dir_all(dir.join("storage")).expect("create upstream dir");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = format!(
        r#"version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: regcache-bench-upstream
"#,
        root = dir.join("storage").display()
    );
    let cfg_path = dir.join("config.yml");
    fs::write(&cfg_path, cfg).expect("write upstream config");
    let log = dir.join("registry.log");
    let mut daemon = Daemon::spawn(
        "docker-registry (upstream)",
        Command::new(&t.registry).arg("serve").arg(&cfg_path),
        &log,
        pgids,
    );
    daemon.wait_ready(addr, "/v2/", |s| s == 200);
    say(format!("upstream docker-registry on http://{addr}"));
    Upstream { addr, log, daemon }
}

impl Upstream {
    pub fn mark(&self) -> usize {
        fs::read_to_string(&self.log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Access-log lines `"METHOD <path> HTTP/..."` since `mark`.
    pub fn count_since(&self, mark: usize, method: &str, path: &str) -> u64 {
        // Access log lines are written when a response ends; let the last ones land.
        std::thread::sleep(Duration::from_millis(300));
        let needle = format!("\"{method} {path} HTTP/");
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .skip(mark)
            .filter(|l| l.contains(&needle))
            .count() as u64
    }
}

// ------------------------------------------------------------------------------------------
// nginx

/// How an nginx `proxy_cache` instance listens and reaches its upstream: [`NginxSite::plain`]
/// is the peer of `benches/compare.rs`; `benches/paths.rs` adds TLS on either side.
pub struct NginxSite {
    /// What follows `listen`: `127.0.0.1:P`, or `127.0.0.1:P ssl http2`.
    pub listen: String,
    /// Lines for the `server` block after `listen` (`ssl_certificate ...;`).
    pub server_extra: Vec<String>,
    /// `http` or `https` (the scheme of `proxy_pass`).
    pub scheme: &'static str,
    /// The `upstream` block's name (`proxy_pass <scheme>://<name>`).
    pub upstream_name: &'static str,
    /// Lines for the `location` block after `proxy_pass` (`proxy_ssl_verify on;`).
    pub location_extra: Vec<String>,
}

impl NginxSite {
    /// Plain HTTP on `addr`, plain HTTP to the upstream.
    pub fn plain(addr: SocketAddr) -> NginxSite {
        NginxSite {
            listen: addr.to_string(),
            server_extra: vec![],
            scheme: "http",
            upstream_name: "registry",
            location_extra: vec![],
        }
    }
}

/// nginx.conf of the `proxy_cache` peer in `dir` (cache and temp directories under it, created
/// here) in front of `upstream`: `worker_processes 2`, `sendfile on`, `proxy_cache_lock on`,
/// `proxy_buffering on`, `proxy_cache_key $uri$http_accept`, upstream keepalive.
pub fn nginx_cache_conf(dir: &Path, upstream: SocketAddr, site: &NginxSite) -> String {
    for sub in ["cache", "tmp"] {
        fs::create_dir_all(dir.join(sub)).expect("create nginx dirs");
    }
    let d = dir.display();
    let lines = |v: &[String], indent: &str| -> String {
        v.iter().map(|l| format!("{indent}{l}\n")).collect()
    };
    let listen = &site.listen;
    let server_extra = lines(&site.server_extra, "    ");
    let location_extra = lines(&site.location_extra, "      ");
    let (scheme, up_name) = (site.scheme, site.upstream_name);
    format!(
        r#"daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {d}/access.log;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {d}/tmp/client;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  proxy_cache_path {d}/cache levels=1:2 keys_zone=mirror:16m max_size=50g inactive=7d use_temp_path=off;
  upstream {up_name} {{
    server {upstream};
    keepalive 32;
  }}
  server {{
    listen {listen};
{server_extra}    location / {{
      proxy_pass {scheme}://{up_name};
{location_extra}      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_cache mirror;
      proxy_cache_key $uri$http_accept;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10m;
      proxy_cache_lock_age 10m;
      proxy_cache_valid 200 7d;
      proxy_buffering on;
      proxy_read_timeout 600s;
      add_header X-Cache-Status $upstream_cache_status;
    }}
  }}
}}
"#
    )
}

/// Writes `conf` to `dir/nginx.conf` and starts nginx on it (`-p dir`, error log in `dir`).
pub fn start_nginx(
    t: &Tools,
    name: &str,
    dir: &Path,
    conf: &str,
    log: &Path,
    pgids: &Path,
) -> Daemon {
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf).expect("write nginx.conf");
    Daemon::spawn(
        name,
        Command::new(&t.nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log")),
        log,
        pgids,
    )
}

/// The `q` quantile (0..=1) of `v`, by linear interpolation between closest ranks.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

pub fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "–".into(),
    }
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        (Some(a), Some(b)) if a == 0.0 && b == 0.0 => Some(1.0),
        _ => None,
    }
}

pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(x) if x.is_finite() => format!("{x:.2}x"),
        _ => "–".into(),
    }
}

pub fn cmd_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}

pub fn machine(t: &Tools) -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem = status_like("/proc/meminfo", "MemTotal");
    let os = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default();
    let root = env!("CARGO_MANIFEST_DIR");
    let rev = cmd_line("git", &["-C", root, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args([
            "-C",
            root,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "src",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    vec![
        (
            "date (UTC)".into(),
            cmd_line("date", &["-u", "+%Y-%m-%d %H:%M"]),
        ),
        (
            "cpu".into(),
            format!(
                "{model}, {} cores (nproc)",
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(0)
            ),
        ),
        (
            "memory".into(),
            format!("{:.1} GiB", mem as f64 / 1024.0 / 1024.0),
        ),
        (
            "os / kernel".into(),
            format!(
                "{os}, Linux {}",
                fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap_or_default()
                    .trim()
            ),
        ),
        (
            "regcache".into(),
            format!(
                "git {rev}{} (release profile)",
                if dirty {
                    " + uncommitted src/ changes"
                } else {
                    ""
                }
            ),
        ),
        ("rustc".into(), cmd_line("rustc", &["-V"])),
        (
            "docker-registry".into(),
            cmd_line(
                t.registry.to_str().unwrap_or("docker-registry"),
                &["--version"],
            ),
        ),
        (
            "nginx".into(),
            cmd_line(t.nginx.to_str().unwrap_or("nginx"), &["-v"]),
        ),
        (
            "wrk".into(),
            cmd_line(t.wrk.to_str().unwrap_or("wrk"), &["-v"]),
        ),
    ]
}

pub fn status_like(path: &str, key: &str) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `perf record` of a daemon's processes during one phase (`BENCH_PERF=1`), written to
/// `<out_dir>/perf/<name>.data` (`name` with every character but ASCII letters, digits and `-`
/// made `_`; cpu-clock at 499 Hz, DWARF call graphs). Figures of such a run
/// carry perf's overhead. Stops perf (SIGINT) when dropped.
pub struct PerfRecord(Option<Child>);

impl PerfRecord {
    /// Starts recording `d`'s processes when `enabled`; a no-op otherwise, or when perf cannot
    /// start (said on stderr).
    pub fn start(enabled: bool, out_dir: &Path, d: &Daemon, name: &str) -> PerfRecord {
        if !enabled {
            return PerfRecord(None);
        }
        let dir = out_dir.join("perf");
        let _ = fs::create_dir_all(&dir);
        let pids: Vec<String> = d.pids().iter().map(|p| p.to_string()).collect();
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "--call-graph",
                "dwarf",
                "-p",
            ])
            .arg(pids.join(","))
            .arg("-o")
            .arg(dir.join(format!(
                "{}.data",
                name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
            )))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| eprintln!("perf record: {e}"))
            .ok();
        // perf needs a moment to attach before the phase starts.
        std::thread::sleep(Duration::from_millis(500));
        PerfRecord(child)
    }
}

impl Drop for PerfRecord {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-s", "INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

/// What `n` clients released together got: per client the result, and the time from the
/// release (the first client past the barrier) to its end.
pub async fn together<F, Fut>(n: usize, one: F) -> (Vec<Result<Got, String>>, Option<f64>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Got, String>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let b = barrier.clone();
            let fut = one(i);
            tokio::spawn(async move {
                b.wait().await;
                let start = Instant::now();
                let r = fut.await;
                (start, Instant::now(), r)
            })
        })
        .collect();
    let mut out = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for t in tasks {
        match t.await {
            Ok((s, e, r)) => {
                first = Some(first.map_or(s, |f| f.min(s)));
                last = Some(last.map_or(e, |l| l.max(e)));
                out.push(r);
            }
            Err(e) => out.push(Err(e.to_string())),
        }
    }
    let wall = match (first, last) {
        (Some(f), Some(l)) => Some(l.duration_since(f).as_secs_f64()),
        _ => None,
    };
    (out, wall)
}
