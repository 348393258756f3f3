//! End-to-end comparison: regcache vs distribution 2.8 in proxy mode vs nginx `proxy_cache`,
//! each started fresh against the same local upstream (Debian's `docker-registry`, plain HTTP,
//! no auth), on 127.0.0.1 only.
//!
//! Run it with `scripts/bench` (installs the Debian packages, builds regcache, runs this, and
//! writes `target/bench/compare.md` and `compare.json`). Directly:
//! `REGCACHE_BIN=target/release/regcache cargo bench --bench compare`.
//! Without `--bench` on its command line (that is, under `cargo test --benches`) it does nothing.
//!
//! Figures, per peer (see BENCHMARKS.md for how to read them):
//! - cold single: one GET of a cold `BENCH_BLOB_MIB` blob (median of `BENCH_COLD_SAMPLES`
//!   distinct cold blobs), and the same GET direct from the upstream as the floor;
//! - TTFB (paired): for each of `BENCH_TTFB_SAMPLES` small cold blobs (`BENCH_TTFB_BLOB_KIB`
//!   KiB), a discarded GET straight at the upstream (warms its page cache), a GET straight at the
//!   upstream and a GET through the peer, back to back; time to the first body byte (connect
//!   included) of the last two, and the median of their per-pair differences. The TTFB of the
//!   cold single GETs above is kept as a secondary figure (`cold_single_ttfb_*`);
//! - cold concurrent: `BENCH_COLD_CLIENTS` clients GET one cold blob at once: the slowest
//!   client's time and the blob GETs the upstream's access log shows; then the same clients GET
//!   the same blob again, now cached, and the cold slowest is divided by that warm slowest (what
//!   serving cached bytes to those clients costs here: issue 17 item 2's reference);
//! - hit: `BENCH_HIT_REPEATS` sequential warm GETs: median throughput, and the server's CPU
//!   (utime+stime of all its processes, /proc/<pid>/stat) per GiB served, and the client's (this
//!   process's) beside it: over loopback the kernel runs the receiver's TCP work on whichever
//!   side's CPU the packet meets, so server + client is the figure that does not move with
//!   timing;
//! - manifests: wrk, `BENCH_WRK_CONNS` connections, `BENCH_WRK_SECS` s, manifest by digest;
//! - memory: peak RSS (VmHWM, reset through /proc/<pid>/clear_refs before the phase, summed over
//!   the server's processes) during the cold concurrent phase and during `BENCH_WARM_CLIENTS`
//!   concurrent warm downloads (round-robin over the cached blobs); RssAnon/RssFile are sampled
//!   every 10 ms for the breakdown.
//!
//! Every request loop is bounded (counts and a per-request timeout); every daemon runs in its
//! own process group and is stopped (SIGTERM, then SIGKILL) when its phase ends or on panic.

/// What the end-to-end benchmarks share (daemons, /proc, the HTTP client, the upstream...).
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use common::proc::free_port;
use common::*;

// ------------------------------------------------------------------------------------------
// Sizes (each overridable by the environment variable named in `Settings::from_env`).

/// Size of each test blob, MiB (`BENCH_BLOB_MIB`).
const BLOB_MIB: u64 = 256;
/// Cold single GETs per peer, each of a distinct cold blob; the median is reported
/// (`BENCH_COLD_SAMPLES`).
const COLD_SAMPLES: usize = 5;
/// Paired TTFB samples per peer per round, each of a distinct small cold blob
/// (`BENCH_TTFB_SAMPLES`).
const TTFB_SAMPLES: usize = 30;
/// Size of each paired-TTFB blob, KiB (`BENCH_TTFB_BLOB_KIB`).
const TTFB_BLOB_KIB: u64 = 1024;
/// Clients in the cold concurrent figure (`BENCH_COLD_CLIENTS`).
const COLD_CLIENTS: usize = 10;
/// Clients in the warm concurrent (memory) figure (`BENCH_WARM_CLIENTS`).
const WARM_CLIENTS: usize = 100;
/// Sequential warm GETs in the hit figure (`BENCH_HIT_REPEATS`).
const HIT_REPEATS: usize = 8;
/// wrk connections (`BENCH_WRK_CONNS`).
const WRK_CONNS: usize = 32;
/// wrk threads (`BENCH_WRK_THREADS`).
const WRK_THREADS: usize = 2;
/// wrk duration, seconds (`BENCH_WRK_SECS`).
const WRK_SECS: u64 = 10;
/// Rounds (`BENCH_ROUNDS`): every peer (and the direct floor) is measured once per round, fresh,
/// in alternating order, so drift in the machine's speed during a run hits all peers alike.
/// Figures are medians over rounds (peaks: the highest round).
const ROUNDS: usize = 2;
/// Manifests pushed (one per blob is the minimum; a few more for a realistic repository).
const EXTRA_MANIFESTS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Peer {
    Regcache,
    Distribution,
    Nginx,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Regcache => "regcache",
            Peer::Distribution => "distribution",
            Peer::Nginx => "nginx",
        }
    }
}

struct Settings {
    blob_mib: u64,
    cold_samples: usize,
    ttfb_samples: usize,
    ttfb_blob_kib: u64,
    cold_clients: usize,
    warm_clients: usize,
    hit_repeats: usize,
    wrk_conns: usize,
    wrk_threads: usize,
    wrk_secs: u64,
    peers: Vec<Peer>,
    out_dir: PathBuf,
    regcache_bin: PathBuf,
    keep_work: bool,
    perf: bool,
    rounds: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let peers = std::env::var("BENCH_PEERS")
            .unwrap_or_else(|_| "regcache,distribution,nginx".into())
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| match s.trim() {
                "regcache" => Peer::Regcache,
                "distribution" => Peer::Distribution,
                "nginx" => Peer::Nginx,
                other => {
                    panic!("BENCH_PEERS: unknown peer {other:?} (regcache, distribution, nginx)")
                }
            })
            .collect();
        let s = Settings {
            blob_mib: env_or("BENCH_BLOB_MIB", BLOB_MIB),
            cold_samples: env_or("BENCH_COLD_SAMPLES", COLD_SAMPLES),
            ttfb_samples: env_or("BENCH_TTFB_SAMPLES", TTFB_SAMPLES),
            ttfb_blob_kib: env_or("BENCH_TTFB_BLOB_KIB", TTFB_BLOB_KIB),
            cold_clients: env_or("BENCH_COLD_CLIENTS", COLD_CLIENTS),
            warm_clients: env_or("BENCH_WARM_CLIENTS", WARM_CLIENTS),
            hit_repeats: env_or("BENCH_HIT_REPEATS", HIT_REPEATS),
            wrk_conns: env_or("BENCH_WRK_CONNS", WRK_CONNS),
            wrk_threads: env_or("BENCH_WRK_THREADS", WRK_THREADS),
            wrk_secs: env_or("BENCH_WRK_SECS", WRK_SECS),
            peers,
            out_dir: std::env::var_os("BENCH_OUT_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/bench")),
            regcache_bin: std::env::var_os("REGCACHE_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_regcache"))),
            keep_work: std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1"),
            perf: std::env::var("BENCH_PERF").is_ok_and(|v| v == "1"),
            rounds: env_or("BENCH_ROUNDS", ROUNDS),
        };
        assert!(s.blob_mib >= 1, "BENCH_BLOB_MIB must be at least 1");
        assert!(
            s.ttfb_blob_kib >= 1,
            "BENCH_TTFB_BLOB_KIB must be at least 1"
        );
        assert!(s.cold_samples >= 1 && s.cold_clients >= 1 && s.warm_clients >= 1);
        assert!(s.hit_repeats >= 1 && s.wrk_conns >= 1 && s.wrk_threads >= 1);
        assert!(s.rounds >= 1, "BENCH_ROUNDS must be at least 1");
        s
    }

    fn blob_len(&self) -> u64 {
        self.blob_mib << 20
    }

    fn ttfb_blob_len(&self) -> u64 {
        self.ttfb_blob_kib << 10
    }
}

struct Content {
    /// Blob digests; blobs[0..cold_samples] are the cold-single blobs, the last one the
    /// cold-concurrent blob.
    blobs: Vec<String>,
    /// Small blobs (`ttfb_blob_len` bytes each) of the paired TTFB phase; in no manifest.
    ttfb_blobs: Vec<String>,
    /// Manifest digests (manifests[0] is the one wrk asks for).
    manifests: Vec<String>,
}

async fn push_content(s: &Settings, upstream: SocketAddr) -> Result<Content, String> {
    let config = Bytes::from_static(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#,
    );
    let config_len = config.len();
    let config_digest = push_blob(upstream, config).await?;
    let mut blobs = Vec::new();
    for i in 0..s.cold_samples + 1 {
        let data = Bytes::from(random_blob(i as u64 + 1, s.blob_len()));
        let d = push_blob(upstream, data).await?;
        say(format!("pushed blob {i}: {d} ({} MiB)", s.blob_mib));
        blobs.push(d);
    }
    let mut ttfb_blobs = Vec::new();
    for i in 0..s.ttfb_samples {
        let data = Bytes::from(random_blob(1_000_000 + i as u64, s.ttfb_blob_len()));
        ttfb_blobs.push(push_blob(upstream, data).await?);
    }
    say(format!(
        "pushed {} TTFB blobs ({} KiB each)",
        ttfb_blobs.len(),
        s.ttfb_blob_kib
    ));
    let mut manifests = Vec::new();
    for i in 0..blobs.len() + EXTRA_MANIFESTS {
        let layer = &blobs[i % blobs.len()];
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_len,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer,
                "size": s.blob_len(),
            }],
            "annotations": {"org.example.bench.index": i.to_string()},
        });
        let body = Bytes::from(serde_json::to_vec(&m).map_err(|e| e.to_string())?);
        manifests.push(push_manifest(upstream, &format!("m{i}"), body).await?);
    }
    say(format!("pushed {} manifests", manifests.len()));
    Ok(Content {
        blobs,
        ttfb_blobs,
        manifests,
    })
}

fn start_peer(
    peer: Peer,
    t: &Tools,
    s: &Settings,
    work: &Path,
    upstream: SocketAddr,
    pgids: &Path,
) -> (Daemon, SocketAddr) {
    let dir = work.join(peer.name());
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("clean peer dir");
    }
    fs::create_dir_all(&dir).expect("create peer dir");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.join("server.log");
    let mut d = match peer {
        Peer::Regcache => {
            let mut cmd = Command::new(&s.regcache_bin);
            cmd.arg("serve")
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--cache-dir")
                .arg(dir.join("cache"))
                .arg("--upstream")
                .arg(format!("http://{upstream}"))
                .arg("--tag-ttl")
                .arg("0s")
                .env("REGCACHE_LOG", "info");
            Daemon::spawn("regcache", &mut cmd, &log, pgids)
        }
        Peer::Distribution => {
            let cfg = format!(
                r#"version: 0.1
log:
  level: info
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
  secret: regcache-bench-proxy
proxy:
  remoteurl: http://{upstream}
"#,
                root = dir.join("storage").display()
            );
            let cfg_path = dir.join("config.yml");
            fs::write(&cfg_path, cfg).expect("write distribution config");
            Daemon::spawn(
                "distribution (proxy)",
                Command::new(&t.registry).arg("serve").arg(&cfg_path),
                &log,
                pgids,
            )
        }
        Peer::Nginx => {
            let conf = nginx_cache_conf(&dir, upstream, &NginxSite::plain(addr));
            start_nginx(t, "nginx (proxy_cache)", &dir, &conf, &log, pgids)
        }
    };
    d.wait_ready(addr, "/v2/", |st| st == 200);
    say(format!(
        "{} on http://{addr} (pid {}, processes {:?})",
        peer.name(),
        d.pgid(),
        d.pids()
    ));
    (d, addr)
}

// ------------------------------------------------------------------------------------------
// wrk

#[derive(Clone, Debug, Default, Serialize)]
struct Wrk {
    rps: f64,
    avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: String,
    /// Server CPU per 1000 requests, ms (0 for the upstream column's own process).
    server_cpu_ms_per_k: Option<f64>,
}

fn ms(v: &str) -> f64 {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * scale
}

fn run_wrk(t: &Tools, s: &Settings, addr: SocketAddr, path: &str, log: &Path) -> Wrk {
    let out = Command::new(&t.wrk)
        .arg(format!("-t{}", s.wrk_threads))
        .arg(format!("-c{}", s.wrk_conns))
        .arg(format!("-d{}s", s.wrk_secs))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Accept: {MANIFEST_TYPE}"))
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let _ = fs::write(
        log,
        format!("{text}\n{}", String::from_utf8_lossy(&out.stderr)),
    );
    let mut w = Wrk::default();
    let mut in_dist = false;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Latency", "Distribution", ..] => in_dist = true,
            ["Latency", avg, ..] if !in_dist => w.avg_ms = ms(avg),
            ["50%", v] if in_dist => w.p50_ms = ms(v),
            ["99%", v] if in_dist => w.p99_ms = ms(v),
            [n, "requests", "in", ..] => w.requests = n.parse().unwrap_or(0),
            ["Requests/sec:", v] => w.rps = v.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => w.non_2xx = n.parse().unwrap_or(0),
            ["Socket", "errors:", ..] => w.socket_errors = line.trim().to_string(),
            _ => {}
        }
    }
    if !out.status.success() || w.rps == 0.0 {
        say(format!("wrk failed or measured nothing:\n{text}"));
    }
    w
}

// ------------------------------------------------------------------------------------------
// Figures

#[derive(Clone, Debug, Default, Serialize)]
struct Figures {
    cold_single_samples_s: Vec<f64>,
    cold_single_s: Option<f64>,
    /// TTFB of the cold single GETs (`BENCH_BLOB_MIB` blobs, unpaired), ms.
    cold_single_ttfb_samples_ms: Vec<f64>,
    cold_single_ttfb_ms: Option<f64>,
    /// Paired TTFB phase (small cold blobs), through this peer, ms. For the upstream-direct
    /// column: the upstream samples of all peers' pairs (`paired_upstream_ttfb_samples_ms`)
    /// pooled.
    paired_ttfb_samples_ms: Vec<f64>,
    paired_ttfb_ms: Option<f64>,
    /// Paired TTFB phase: the upstream GET of each pair (made just before the peer's), ms.
    paired_upstream_ttfb_samples_ms: Vec<f64>,
    paired_upstream_ttfb_ms: Option<f64>,
    /// Paired TTFB phase: peer − upstream per pair, ms (same order as the two lists above).
    paired_ttfb_diff_samples_ms: Vec<f64>,
    paired_ttfb_diff_ms: Option<f64>,
    cold_conc_slowest_s: Option<f64>,
    cold_conc_fastest_s: Option<f64>,
    cold_conc_upstream_gets: Option<u64>,
    cold_conc_upstream_heads: Option<u64>,
    cold_conc_mem: Option<MemPeak>,
    /// The same clients GET the same blob again, now cached (issue 17 item 2's reference: what
    /// serving cached bytes to those clients costs on this machine): the slowest client, s.
    warm_same_slowest_s: Option<f64>,
    /// `cold_conc_slowest_s ÷ warm_same_slowest_s` in the same round.
    cold_over_warm_same: Option<f64>,
    hit_samples_mib_s: Vec<f64>,
    hit_mib_s: Option<f64>,
    hit_cpu_s_per_gib: Option<f64>,
    /// The bench's own CPU (the client's side of the hits) per GiB, s: over loopback the
    /// kernel runs a receiver's TCP work on whichever side's CPU the packet meets, so the
    /// server's figure alone moves with timing; server + client is the machine's cost.
    hit_client_cpu_s_per_gib: Option<f64>,
    /// Server + client CPU per GiB of the hits, s (the machine's cost of serving them).
    hit_total_cpu_s_per_gib: Option<f64>,
    manifest: Option<Wrk>,
    warm_conc_mem: Option<MemPeak>,
    warm_conc_aggregate_mib_s: Option<f64>,
    warm_conc_cpu_s_per_gib: Option<f64>,
    upstream_blob_gets_total: Option<u64>,
    errors: Vec<String>,
}

/// The floor: the same GETs and the same wrk run straight at the upstream.
/// CPU ticks of the server (`pids`) and of the client (this process) at the start of a hit
/// phase's GETs.
struct HitCpu {
    pids: Vec<u32>,
    server: u64,
    client: u64,
}

impl HitCpu {
    fn start(pids: Vec<u32>) -> HitCpu {
        let server = cpu_ticks(&pids);
        let client = cpu_ticks(&[std::process::id()]);
        HitCpu {
            pids,
            server,
            client,
        }
    }

    /// Sets `f`'s hit CPU figures (s per GiB: server, client, both) for `served` bytes; none
    /// when nothing was served. `tck`: clock ticks per second.
    fn finish(self, f: &mut Figures, served: u64, tck: f64) {
        let server = cpu_ticks(&self.pids) - self.server;
        let client = cpu_ticks(&[std::process::id()]) - self.client;
        if served > 0 {
            let per_gib = |ticks: u64| ticks as f64 / tck / (served as f64 / GIB);
            f.hit_cpu_s_per_gib = Some(per_gib(server));
            f.hit_client_cpu_s_per_gib = Some(per_gib(client));
            f.hit_total_cpu_s_per_gib = Some(per_gib(server + client));
        }
    }
}

fn measure_direct(
    rt: &tokio::runtime::Runtime,
    t: &Tools,
    s: &Settings,
    up: &Upstream,
    c: &Content,
    work: &Path,
) -> Figures {
    let mut f = Figures::default();
    let len = s.blob_len();
    let tck = clock_ticks_per_sec();
    rt.block_on(async {
        // Same blobs as the peers' cold GETs (the upstream serves them from its page cache in
        // both cases).
        for d in &c.blobs[..s.cold_samples] {
            settle();
            pretouch(len);
            match get_exact(up.addr, &blob_path(d), len, &PLAIN).await {
                Ok(g) => {
                    f.cold_single_samples_s.push(g.total.as_secs_f64());
                    f.cold_single_ttfb_samples_ms
                        .push(g.ttfb.as_secs_f64() * 1000.0);
                }
                Err(e) => f.errors.push(e),
            }
        }
        let cpu = HitCpu::start(up.daemon.pids());
        let mut served = 0u64;
        for _ in 0..s.hit_repeats {
            match get_exact(up.addr, &blob_path(&c.blobs[0]), len, &PLAIN).await {
                Ok(g) => {
                    served += g.bytes;
                    f.hit_samples_mib_s
                        .push(g.bytes as f64 / MIB / g.total.as_secs_f64());
                }
                Err(e) => f.errors.push(e),
            }
        }
        cpu.finish(&mut f, served, tck);
    });
    f.cold_single_s = median(&f.cold_single_samples_s);
    f.cold_single_ttfb_ms = median(&f.cold_single_ttfb_samples_ms);
    f.hit_mib_s = median(&f.hit_samples_mib_s);
    let pids = up.daemon.pids();
    let c0 = cpu_ticks(&pids);
    let mut w = run_wrk(
        t,
        s,
        up.addr,
        &manifest_path(&c.manifests[0]),
        &work.join("wrk-upstream.txt"),
    );
    let c1 = cpu_ticks(&pids);
    if w.requests > 0 {
        w.server_cpu_ms_per_k =
            Some((c1 - c0) as f64 / tck * 1000.0 / (w.requests as f64 / 1000.0));
    }
    f.manifest = Some(w);
    f
}

/// One GET per path, all at once (one client each, released together by a barrier:
/// [`together`]), each checked for `len` bytes; the results in the order of `paths`.
fn gets_together(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    paths: Vec<String>,
    len: u64,
) -> Vec<Result<Got, String>> {
    let (results, _wall) = rt.block_on(together(paths.len(), |i| {
        let p = paths[i].clone();
        async move { get_exact(addr, &p, len, &PLAIN).await }
    }));
    results
}

/// `clients` GETs of `path` at once ([`gets_together`]): every client's total time, s, or the
/// errors of those that failed.
fn concurrent_gets(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    path: &str,
    len: u64,
    clients: usize,
) -> Result<Vec<f64>, String> {
    let results = gets_together(rt, addr, vec![path.to_string(); clients], len);
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !errors.is_empty() {
        return Err(format!("{} of {clients} failed: {errors:?}", errors.len()));
    }
    Ok(results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|g| g.total.as_secs_f64()))
        .collect())
}

#[allow(clippy::too_many_arguments)]
fn measure_peer(
    rt: &tokio::runtime::Runtime,
    peer: Peer,
    t: &Tools,
    s: &Settings,
    up: &Upstream,
    c: &Content,
    work: &Path,
    pgids: &Path,
) -> Figures {
    let mut f = Figures::default();
    let len = s.blob_len();
    let tck = clock_ticks_per_sec();
    let (daemon, addr) = start_peer(peer, t, s, work, up.addr, pgids);
    let mark_all = up.mark();

    // Cold single (and TTFB): one GET of each cold-single blob.
    let perf = PerfRecord::start(
        s.perf,
        &s.out_dir,
        &daemon,
        &format!("{}-cold", peer.name()),
    );
    rt.block_on(async {
        for d in &c.blobs[..s.cold_samples] {
            settle();
            pretouch(len);
            match get_exact(addr, &blob_path(d), len, &PLAIN).await {
                Ok(g) => {
                    f.cold_single_samples_s.push(g.total.as_secs_f64());
                    f.cold_single_ttfb_samples_ms
                        .push(g.ttfb.as_secs_f64() * 1000.0);
                }
                Err(e) => f.errors.push(format!("cold single: {e}")),
            }
        }
    });
    drop(perf);
    f.cold_single_s = median(&f.cold_single_samples_s);
    f.cold_single_ttfb_ms = median(&f.cold_single_ttfb_samples_ms);
    say(format!(
        "{}: cold single {:?} s, ttfb {:?} ms",
        peer.name(),
        f.cold_single_samples_s,
        f.cold_single_ttfb_samples_ms
    ));

    // Paired TTFB: per small cold blob, a discarded GET straight at the upstream (its page
    // cache and blob-descriptor cache warm for that blob), a measured GET straight at the
    // upstream, then the peer's GET (a miss: its cache is fresh). One `settle` first flushes the
    // cold single phase's writes; before each pair a bare `sync` (no pause; ~1 blob of dirty
    // pages, a few ms) flushes the previous pair's fill.
    let tlen = s.ttfb_blob_len();
    if !c.ttfb_blobs.is_empty() {
        settle();
    }
    let perf = PerfRecord::start(
        s.perf,
        &s.out_dir,
        &daemon,
        &format!("{}-ttfb", peer.name()),
    );
    let t0 = Instant::now();
    let mut synced = Duration::ZERO;
    rt.block_on(async {
        for d in &c.ttfb_blobs {
            let path = blob_path(d);
            synced += sync();
            let pair = async {
                get_exact(up.addr, &path, tlen, &PLAIN)
                    .await
                    .map_err(|e| format!("upstream warm-up: {e}"))?;
                let u = get_exact(up.addr, &path, tlen, &PLAIN)
                    .await
                    .map_err(|e| format!("upstream: {e}"))?;
                let p = get_exact(addr, &path, tlen, &PLAIN).await?;
                Ok::<_, String>((u.ttfb.as_secs_f64() * 1000.0, p.ttfb.as_secs_f64() * 1000.0))
            };
            match pair.await {
                Ok((u, p)) => {
                    f.paired_upstream_ttfb_samples_ms.push(u);
                    f.paired_ttfb_samples_ms.push(p);
                    f.paired_ttfb_diff_samples_ms.push(p - u);
                }
                Err(e) => f.errors.push(format!("paired TTFB: {e}")),
            }
        }
    });
    drop(perf);
    f.paired_ttfb_ms = median(&f.paired_ttfb_samples_ms);
    f.paired_upstream_ttfb_ms = median(&f.paired_upstream_ttfb_samples_ms);
    f.paired_ttfb_diff_ms = median(&f.paired_ttfb_diff_samples_ms);
    say(format!(
        "{}: paired ttfb {} pairs in {:.1} s (sync {:.2} s): peer {:?} ms, upstream {:?} ms, diff {:?} ms",
        peer.name(),
        f.paired_ttfb_diff_samples_ms.len(),
        t0.elapsed().as_secs_f64(),
        synced.as_secs_f64(),
        f.paired_ttfb_ms,
        f.paired_upstream_ttfb_ms,
        f.paired_ttfb_diff_ms
    ));

    // Cold concurrent.
    let conc_blob = c.blobs[s.cold_samples].clone();
    settle();
    pretouch(len);
    let perf = PerfRecord::start(
        s.perf,
        &s.out_dir,
        &daemon,
        &format!("{}-concurrent", peer.name()),
    );
    let mark = up.mark();
    let watch = MemWatch::start(&daemon);
    let times = concurrent_gets(rt, addr, &blob_path(&conc_blob), len, s.cold_clients);
    f.cold_conc_mem = Some(watch.finish());
    drop(perf);
    match times {
        Ok(times) => {
            f.cold_conc_slowest_s = times.iter().copied().reduce(f64::max);
            f.cold_conc_fastest_s = times.iter().copied().reduce(f64::min);
        }
        Err(e) => f.errors.push(format!("cold concurrent: {e}")),
    }
    f.cold_conc_upstream_gets = Some(up.count_since(mark, "GET", &blob_path(&conc_blob)));
    f.cold_conc_upstream_heads = Some(up.count_since(mark, "HEAD", &blob_path(&conc_blob)));
    say(format!(
        "{}: cold concurrent slowest {:?} s, upstream GETs {:?}, mem {:?}",
        peer.name(),
        f.cold_conc_slowest_s,
        f.cold_conc_upstream_gets,
        f.cold_conc_mem
    ));

    // The same clients, the same blob, now cached: the cold concurrent figure's reference.
    settle();
    match concurrent_gets(rt, addr, &blob_path(&conc_blob), len, s.cold_clients) {
        Ok(times) => f.warm_same_slowest_s = times.iter().copied().reduce(f64::max),
        Err(e) => f.errors.push(format!("warm concurrent, same blob: {e}")),
    }
    f.cold_over_warm_same = f
        .cold_conc_slowest_s
        .zip(f.warm_same_slowest_s)
        .map(|(c, w)| c / w);
    say(format!(
        "{}: the same {} clients, the same blob warm: slowest {:?} s (cold ÷ warm {:?})",
        peer.name(),
        s.cold_clients,
        f.warm_same_slowest_s,
        f.cold_over_warm_same
    ));

    // Hit: a verified warm-up GET, then sequential warm GETs with the server's CPU around them.
    let hit_path = blob_path(&c.blobs[0]);
    rt.block_on(async {
        std::thread::sleep(Duration::from_millis(300));
        let opts = GetOpts {
            accept: None,
            hash: true,
        };
        match get_exact(addr, &hit_path, len, &opts).await {
            Ok(g) => {
                if g.sha256.as_deref() != Some(c.blobs[0].as_str()) {
                    f.errors.push(format!(
                        "warm GET returned bytes hashing to {:?}, not {}",
                        g.sha256, c.blobs[0]
                    ));
                }
                if let Some(v) = g.headers.get("x-cache-status") {
                    if v != "HIT" {
                        f.errors
                            .push(format!("nginx warm GET was a cache {v:?}, not HIT"));
                    }
                }
            }
            Err(e) => f.errors.push(format!("warm-up: {e}")),
        }
        settle();
        let perf = PerfRecord::start(s.perf, &s.out_dir, &daemon, &format!("{}-hit", peer.name()));
        let cpu = HitCpu::start(daemon.pids());
        let mut served = 0u64;
        for _ in 0..s.hit_repeats {
            match get_exact(addr, &hit_path, len, &PLAIN).await {
                Ok(g) => {
                    served += g.bytes;
                    f.hit_samples_mib_s
                        .push(g.bytes as f64 / MIB / g.total.as_secs_f64());
                }
                Err(e) => f.errors.push(format!("hit: {e}")),
            }
        }
        cpu.finish(&mut f, served, tck);
        drop(perf);
    });
    f.hit_mib_s = median(&f.hit_samples_mib_s);
    say(format!(
        "{}: hit {:?} MiB/s, {:?} CPU s/GiB (client {:?})",
        peer.name(),
        f.hit_mib_s,
        f.hit_cpu_s_per_gib,
        f.hit_client_cpu_s_per_gib
    ));

    // Manifests by digest: fill once, check, then wrk.
    let mpath = manifest_path(&c.manifests[0]);
    let mopts = GetOpts {
        accept: Some(MANIFEST_TYPE),
        hash: true,
    };
    let ok = rt.block_on(async {
        for _ in 0..2 {
            match get(addr, &mpath, &mopts).await {
                Ok(g)
                    if g.status == 200 && g.sha256.as_deref() == Some(c.manifests[0].as_str()) => {}
                Ok(g) => {
                    f.errors.push(format!(
                        "manifest GET: status {} digest {:?}",
                        g.status, g.sha256
                    ));
                    return false;
                }
                Err(e) => {
                    f.errors.push(format!("manifest GET: {e}"));
                    return false;
                }
            }
        }
        true
    });
    if ok {
        let perf = PerfRecord::start(
            s.perf,
            &s.out_dir,
            &daemon,
            &format!("{}-manifest", peer.name()),
        );
        let pids = daemon.pids();
        let c0 = cpu_ticks(&pids);
        let mut w = run_wrk(
            t,
            s,
            addr,
            &mpath,
            &work.join(format!("wrk-{}.txt", peer.name())),
        );
        let c1 = cpu_ticks(&pids);
        drop(perf);
        if w.requests > 0 {
            w.server_cpu_ms_per_k =
                Some((c1 - c0) as f64 / tck * 1000.0 / (w.requests as f64 / 1000.0));
        }
        if w.non_2xx > 0 {
            f.errors.push(format!("wrk: {} non-2xx answers", w.non_2xx));
        }
        say(format!(
            "{}: manifests {:.0}/s p50 {:.2} ms p99 {:.2} ms",
            peer.name(),
            w.rps,
            w.p50_ms,
            w.p99_ms
        ));
        f.manifest = Some(w);
    }

    // Warm concurrent: memory (and aggregate throughput) with many clients on cached blobs.
    let warm: Vec<String> = c.blobs.clone();
    settle();
    let perf = PerfRecord::start(
        s.perf,
        &s.out_dir,
        &daemon,
        &format!("{}-warm", peer.name()),
    );
    let pids = daemon.pids();
    let c0 = cpu_ticks(&pids);
    let watch = MemWatch::start(&daemon);
    let t0 = Instant::now();
    let paths = (0..s.warm_clients)
        .map(|i| blob_path(&warm[i % warm.len()]))
        .collect();
    let results = gets_together(rt, addr, paths, len);
    let elapsed = t0.elapsed().as_secs_f64();
    f.warm_conc_mem = Some(watch.finish());
    let c1 = cpu_ticks(&pids);
    drop(perf);
    let served: u64 = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|g| g.bytes))
        .sum();
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        f.errors.push(format!("warm concurrent: {e}"));
    }
    f.warm_conc_aggregate_mib_s = Some(served as f64 / MIB / elapsed);
    if served > 0 {
        f.warm_conc_cpu_s_per_gib = Some((c1 - c0) as f64 / tck / (served as f64 / GIB));
    }
    say(format!(
        "{}: warm concurrent {:.0} MiB/s aggregate, mem {:?}",
        peer.name(),
        f.warm_conc_aggregate_mib_s.unwrap_or(0.0),
        f.warm_conc_mem
    ));
    let total_gets: u64 = c
        .blobs
        .iter()
        .map(|d| up.count_since(mark_all, "GET", &blob_path(d)))
        .sum();
    f.upstream_blob_gets_total = Some(total_gets);
    if let Some(first) = f.errors.first() {
        say(format!(
            "{}: {} error(s), first: {first}",
            peer.name(),
            f.errors.len()
        ));
    }
    drop(daemon);
    if !s.keep_work {
        let _ = fs::remove_dir_all(work.join(peer.name()));
    }
    f
}

// ------------------------------------------------------------------------------------------
// Report

/// Combines one peer's rounds: samples are pooled (medians over all of them), per-round figures
/// take the median over rounds, counts and memory peaks the worst round.
fn merge(rounds: &[Figures]) -> Figures {
    let pool = |g: fn(&Figures) -> &Vec<f64>| -> Vec<f64> {
        rounds.iter().flat_map(|f| g(f).iter().copied()).collect()
    };
    let med = |g: fn(&Figures) -> Option<f64>| -> Option<f64> {
        median(&rounds.iter().filter_map(g).collect::<Vec<_>>())
    };
    let worst = |g: fn(&Figures) -> Option<u64>| rounds.iter().filter_map(g).max();
    let mem = |g: fn(&Figures) -> Option<MemPeak>| -> Option<MemPeak> {
        rounds.iter().filter_map(g).reduce(|a, b| MemPeak {
            hwm_mib: a.hwm_mib.max(b.hwm_mib),
            anon_mib: a.anon_mib.max(b.anon_mib),
            file_mib: a.file_mib.max(b.file_mib),
            sampled_rss_mib: a.sampled_rss_mib.max(b.sampled_rss_mib),
        })
    };
    let wrks: Vec<&Wrk> = rounds.iter().filter_map(|f| f.manifest.as_ref()).collect();
    let wmed =
        |g: fn(&Wrk) -> f64| median(&wrks.iter().map(|w| g(w)).collect::<Vec<_>>()).unwrap_or(0.0);
    let manifest = (!wrks.is_empty()).then(|| Wrk {
        rps: wmed(|w| w.rps),
        avg_ms: wmed(|w| w.avg_ms),
        p50_ms: wmed(|w| w.p50_ms),
        p99_ms: wmed(|w| w.p99_ms),
        requests: wmed(|w| w.requests as f64) as u64,
        non_2xx: wrks.iter().map(|w| w.non_2xx).sum(),
        socket_errors: wrks
            .iter()
            .map(|w| w.socket_errors.clone())
            .filter(|e| !e.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        server_cpu_ms_per_k: median(
            &wrks
                .iter()
                .filter_map(|w| w.server_cpu_ms_per_k)
                .collect::<Vec<_>>(),
        ),
    });
    let cold = pool(|f| &f.cold_single_samples_s);
    let ttfb = pool(|f| &f.cold_single_ttfb_samples_ms);
    let pttfb = pool(|f| &f.paired_ttfb_samples_ms);
    let pup = pool(|f| &f.paired_upstream_ttfb_samples_ms);
    let pdiff = pool(|f| &f.paired_ttfb_diff_samples_ms);
    let hit = pool(|f| &f.hit_samples_mib_s);
    Figures {
        cold_single_s: median(&cold),
        cold_single_samples_s: cold,
        cold_single_ttfb_ms: median(&ttfb),
        cold_single_ttfb_samples_ms: ttfb,
        paired_ttfb_ms: median(&pttfb),
        paired_ttfb_samples_ms: pttfb,
        paired_upstream_ttfb_ms: median(&pup),
        paired_upstream_ttfb_samples_ms: pup,
        paired_ttfb_diff_ms: median(&pdiff),
        paired_ttfb_diff_samples_ms: pdiff,
        cold_conc_slowest_s: med(|f| f.cold_conc_slowest_s),
        cold_conc_fastest_s: med(|f| f.cold_conc_fastest_s),
        cold_conc_upstream_gets: worst(|f| f.cold_conc_upstream_gets),
        cold_conc_upstream_heads: worst(|f| f.cold_conc_upstream_heads),
        cold_conc_mem: mem(|f| f.cold_conc_mem),
        warm_same_slowest_s: med(|f| f.warm_same_slowest_s),
        cold_over_warm_same: med(|f| f.cold_over_warm_same),
        hit_mib_s: median(&hit),
        hit_samples_mib_s: hit,
        hit_cpu_s_per_gib: med(|f| f.hit_cpu_s_per_gib),
        hit_client_cpu_s_per_gib: med(|f| f.hit_client_cpu_s_per_gib),
        hit_total_cpu_s_per_gib: med(|f| f.hit_total_cpu_s_per_gib),
        manifest,
        warm_conc_mem: mem(|f| f.warm_conc_mem),
        warm_conc_aggregate_mib_s: med(|f| f.warm_conc_aggregate_mib_s),
        warm_conc_cpu_s_per_gib: med(|f| f.warm_conc_cpu_s_per_gib),
        upstream_blob_gets_total: worst(|f| f.upstream_blob_gets_total),
        errors: rounds
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                f.errors
                    .iter()
                    .map(move |e| format!("round {}: {e}", i + 1))
            })
            .collect(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Lower,
    Higher,
}

struct Row {
    label: &'static str,
    better: Better,
    decimals: usize,
    get: fn(&Figures) -> Option<f64>,
    /// Whether the upstream-direct column means anything for this row.
    direct: bool,
    /// Whether the "regcache ÷ X" columns mean anything (not for differences, which can be
    /// near zero or negative).
    ratios: bool,
}

fn rows() -> Vec<Row> {
    fn wrk(f: &Figures, g: fn(&Wrk) -> f64) -> Option<f64> {
        f.manifest.as_ref().filter(|w| w.requests > 0).map(g)
    }
    vec![
        Row {
            label: "cold single GET, s (median)",
            better: Better::Lower,
            decimals: 3,
            get: |f| f.cold_single_s,
            direct: true,
            ratios: true,
        },
        Row {
            label: "cold TTFB, ms (median)",
            better: Better::Lower,
            decimals: 2,
            get: |f| f.paired_ttfb_ms,
            direct: true,
            ratios: true,
        },
        Row {
            label: "cold TTFB − upstream's, ms (median of paired differences)",
            better: Better::Lower,
            decimals: 2,
            get: |f| f.paired_ttfb_diff_ms,
            direct: false,
            ratios: false,
        },
        Row {
            label: "cold concurrent: slowest client, s",
            better: Better::Lower,
            decimals: 3,
            get: |f| f.cold_conc_slowest_s,
            direct: false,
            ratios: true,
        },
        Row {
            label: "cold concurrent: slowest ÷ own cold single",
            better: Better::Lower,
            decimals: 2,
            get: |f| Some(f.cold_conc_slowest_s? / f.cold_single_s?),
            direct: false,
            ratios: true,
        },
        Row {
            label: "cold concurrent, same clients, blob warm: slowest client, s",
            better: Better::Lower,
            decimals: 3,
            get: |f| f.warm_same_slowest_s,
            direct: false,
            ratios: true,
        },
        Row {
            label: "cold concurrent: slowest ÷ slowest of the same GETs warm",
            better: Better::Lower,
            decimals: 2,
            get: |f| f.cold_over_warm_same,
            direct: false,
            ratios: true,
        },
        Row {
            label: "cold concurrent: upstream blob GETs",
            better: Better::Lower,
            decimals: 0,
            get: |f| f.cold_conc_upstream_gets.map(|v| v as f64),
            direct: false,
            ratios: true,
        },
        Row {
            label: "hit: warm GET throughput, MiB/s (median)",
            better: Better::Higher,
            decimals: 0,
            get: |f| f.hit_mib_s,
            direct: true,
            ratios: true,
        },
        Row {
            label: "hit: server CPU s per GiB served",
            better: Better::Lower,
            decimals: 3,
            get: |f| f.hit_cpu_s_per_gib,
            direct: true,
            ratios: true,
        },
        Row {
            label:
                "hit: server + client CPU s per GiB (loopback receive work lands on either side)",
            better: Better::Lower,
            decimals: 3,
            get: |f| f.hit_total_cpu_s_per_gib,
            direct: true,
            ratios: true,
        },
        Row {
            label: "manifest by digest: GETs/s (wrk)",
            better: Better::Higher,
            decimals: 0,
            get: |f| wrk(f, |w| w.rps),
            direct: true,
            ratios: true,
        },
        Row {
            label: "manifest by digest: latency p50, ms",
            better: Better::Lower,
            decimals: 3,
            get: |f| wrk(f, |w| w.p50_ms),
            direct: true,
            ratios: true,
        },
        Row {
            label: "manifest by digest: latency p99, ms",
            better: Better::Lower,
            decimals: 3,
            get: |f| wrk(f, |w| w.p99_ms),
            direct: true,
            ratios: true,
        },
        Row {
            label: "manifest by digest: server CPU ms per 1k GETs",
            better: Better::Lower,
            decimals: 1,
            get: |f| f.manifest.as_ref()?.server_cpu_ms_per_k,
            direct: true,
            ratios: true,
        },
        Row {
            label: "peak RSS, cold concurrent, MiB (VmHWM)",
            better: Better::Lower,
            decimals: 1,
            get: |f| f.cold_conc_mem.map(|m| m.hwm_mib),
            direct: false,
            ratios: true,
        },
        Row {
            label: "  of which anon (sampled peak), MiB",
            better: Better::Lower,
            decimals: 1,
            get: |f| f.cold_conc_mem.map(|m| m.anon_mib),
            direct: false,
            ratios: true,
        },
        Row {
            label: "peak RSS, warm concurrent, MiB (VmHWM)",
            better: Better::Lower,
            decimals: 1,
            get: |f| f.warm_conc_mem.map(|m| m.hwm_mib),
            direct: false,
            ratios: true,
        },
        Row {
            label: "  of which anon (sampled peak), MiB",
            better: Better::Lower,
            decimals: 1,
            get: |f| f.warm_conc_mem.map(|m| m.anon_mib),
            direct: false,
            ratios: true,
        },
        Row {
            label: "  file-backed mapped (sampled peak), MiB",
            better: Better::Lower,
            decimals: 1,
            get: |f| f.warm_conc_mem.map(|m| m.file_mib),
            direct: false,
            ratios: true,
        },
        Row {
            label: "warm concurrent: aggregate MiB/s",
            better: Better::Higher,
            decimals: 0,
            get: |f| f.warm_conc_aggregate_mib_s,
            direct: false,
            ratios: true,
        },
        Row {
            label: "warm concurrent: server CPU s per GiB",
            better: Better::Lower,
            decimals: 3,
            get: |f| f.warm_conc_cpu_s_per_gib,
            direct: false,
            ratios: true,
        },
    ]
}

struct Target {
    what: String,
    measured: String,
    met: Option<bool>,
}

fn targets(s: &Settings, direct: &Figures, res: &BTreeMap<Peer, Figures>) -> Vec<Target> {
    let rc = res.get(&Peer::Regcache);
    let ng = res.get(&Peer::Nginx);
    let di = res.get(&Peer::Distribution);
    let mut out = Vec::new();
    let mut push = |what: String, measured: String, met: Option<bool>| {
        out.push(Target {
            what,
            measured,
            met,
        })
    };
    let g = |f: Option<&Figures>, get: fn(&Figures) -> Option<f64>| f.and_then(get);

    let ups = g(rc, |f| f.cold_conc_upstream_gets.map(|v| v as f64));
    push(
        format!(
            "cold concurrent ({} clients): exactly 1 upstream GET",
            s.cold_clients
        ),
        fmt_num(ups, 0),
        ups.map(|v| v == 1.0),
    );
    let r = g(rc, |f| Some(f.cold_conc_slowest_s? / f.cold_single_s?));
    push(
        "cold concurrent: slowest client ≤ 1.2x cold single".into(),
        fmt_ratio(r),
        r.map(|v| v <= 1.2),
    );
    let r = g(rc, |f| f.cold_over_warm_same);
    push(
        format!(
            "cold concurrent: slowest ≤ 1.1x the slowest of the same {} GETs warm (issue 17 item 2)",
            s.cold_clients
        ),
        fmt_ratio(r),
        r.map(|v| v <= 1.1),
    );
    let (a, b) = (
        g(rc, |f| f.cold_conc_slowest_s),
        g(ng, |f| f.cold_conc_slowest_s),
    );
    push(
        "cold concurrent: slowest ≤ 0.8x nginx's slowest (issue 17 item 2)".into(),
        fmt_ratio(a.zip(b).map(|(a, b)| a / b)),
        a.zip(b).map(|(a, b)| a / b <= 0.8),
    );
    let (a, b) = (
        g(rc, |f| f.hit_cpu_s_per_gib),
        g(ng, |f| f.hit_cpu_s_per_gib),
    );
    push(
        "hit: CPU s/GiB ≤ nginx's".into(),
        format!(
            "{} vs {} s/GiB ({})",
            fmt_num(a, 3),
            fmt_num(b, 3),
            fmt_ratio(ratio(a, b))
        ),
        ratio(a, b).map(|r| r <= 1.0),
    );
    let (a, b) = (g(rc, |f| f.hit_mib_s), g(ng, |f| f.hit_mib_s));
    push(
        "hit: throughput ≥ 0.95x nginx's".into(),
        format!(
            "{} vs {} MiB/s ({})",
            fmt_num(a, 0),
            fmt_num(b, 0),
            fmt_ratio(ratio(a, b))
        ),
        ratio(a, b).map(|r| r >= 0.95),
    );
    let rps = |f: &Figures| {
        f.manifest
            .as_ref()
            .filter(|w| w.requests > 0)
            .map(|w| w.rps)
    };
    let (a, b) = (g(rc, rps), g(ng, rps));
    push(
        "manifest GETs/s ≥ nginx's".into(),
        format!(
            "{} vs {} ({})",
            fmt_num(a, 0),
            fmt_num(b, 0),
            fmt_ratio(ratio(a, b))
        ),
        ratio(a, b).map(|r| r >= 1.0),
    );
    let b = g(di, rps);
    push(
        "manifest GETs/s ≥ 20x distribution's".into(),
        format!(
            "{} vs {} ({})",
            fmt_num(a, 0),
            fmt_num(b, 0),
            fmt_ratio(ratio(a, b))
        ),
        ratio(a, b).map(|r| r >= 20.0),
    );
    let (a, b) = (g(rc, |f| f.cold_single_s), g(ng, |f| f.cold_single_s));
    push(
        "cold single ≤ 0.6x nginx's".into(),
        format!(
            "{} vs {} s ({})",
            fmt_num(a, 3),
            fmt_num(b, 3),
            fmt_ratio(ratio(a, b))
        ),
        ratio(a, b).map(|r| r <= 0.6),
    );
    let d = direct.cold_single_s;
    push(
        "cold single ≤ 2x direct".into(),
        format!(
            "{} vs {} s ({})",
            fmt_num(a, 3),
            fmt_num(d, 3),
            fmt_ratio(ratio(a, d))
        ),
        ratio(a, d).map(|r| r <= 2.0),
    );
    let (a, u, d) = (
        g(rc, |f| f.paired_ttfb_ms),
        g(rc, |f| f.paired_upstream_ttfb_ms),
        g(rc, |f| f.paired_ttfb_diff_ms),
    );
    push(
        "cold TTFB ≤ upstream's + 2 ms (median of paired differences)".into(),
        format!(
            "{} vs {} ms (medians); paired difference {}{} ms",
            fmt_num(a, 2),
            fmt_num(u, 2),
            if d.is_some_and(|d| d >= 0.0) { "+" } else { "" },
            fmt_num(d, 2)
        ),
        d.map(|d| d <= 2.0),
    );
    let m = g(rc, |f| f.cold_conc_mem.map(|m| m.hwm_mib));
    push(
        format!("peak RSS ≤ 32 MiB, {} cold concurrent", s.cold_clients),
        format!("{} MiB", fmt_num(m, 1)),
        m.map(|v| v <= 32.0),
    );
    let m = g(rc, |f| f.warm_conc_mem.map(|m| m.hwm_mib));
    push(
        format!("peak RSS ≤ 32 MiB, {} warm concurrent", s.warm_clients),
        format!("{} MiB", fmt_num(m, 1)),
        m.map(|v| v <= 32.0),
    );
    out
}

fn report(s: &Settings, t: &Tools, direct: &Figures, res: &BTreeMap<Peer, Figures>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "## regcache vs peers: end-to-end comparison\n");
    for (k, v) in machine(t) {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let _ = writeln!(
        o,
        "- settings: {} round(s), each peer fresh per round, order alternating; blob {} MiB; cold single: {} distinct cold blobs per round (median of all); cold TTFB: {} pairs per peer per round (upstream GET, then the peer's GET, of a distinct cold {} KiB blob; upstream-direct column: all peers' upstream samples); {} cold concurrent clients; {} hit GETs per round; {} warm concurrent clients (round-robin over {} cached blobs); wrk -t{} -c{} -d{}s. Figures are medians over rounds; upstream GETs and memory peaks are the worst round.\n",
        s.rounds,
        s.blob_mib,
        s.cold_samples,
        s.ttfb_samples,
        s.ttfb_blob_kib,
        s.cold_clients,
        s.hit_repeats,
        s.warm_clients,
        s.cold_samples + 1,
        s.wrk_threads,
        s.wrk_conns,
        s.wrk_secs
    );
    let peers: Vec<Peer> = res.keys().copied().collect();
    let others: Vec<Peer> = peers
        .iter()
        .copied()
        .filter(|p| *p != Peer::Regcache)
        .collect();
    let has_rc = res.contains_key(&Peer::Regcache);
    let mut head = String::from("| figure | better | upstream direct |");
    let mut sep = String::from("|---|---|---:|");
    for p in &peers {
        let _ = write!(head, " {} |", p.name());
        sep.push_str("---:|");
    }
    if has_rc {
        let _ = write!(head, " regcache ÷ direct |");
        sep.push_str("---:|");
        for p in &others {
            let _ = write!(head, " regcache ÷ {} |", p.name());
            sep.push_str("---:|");
        }
    }
    let _ = writeln!(o, "{head}\n{sep}");
    for r in rows() {
        let mut line = format!(
            "| {} | {} | {} |",
            r.label,
            if r.better == Better::Lower {
                "lower"
            } else {
                "higher"
            },
            if r.direct {
                fmt_num((r.get)(direct), r.decimals)
            } else {
                "–".into()
            }
        );
        for p in &peers {
            let _ = write!(line, " {} |", fmt_num((r.get)(&res[p]), r.decimals));
        }
        if has_rc && !r.ratios {
            for _ in 0..=others.len() {
                line.push_str(" – |");
            }
        } else if has_rc {
            let rc = (r.get)(&res[&Peer::Regcache]);
            let d = if r.direct {
                ratio(rc, (r.get)(direct))
            } else {
                None
            };
            let _ = write!(line, " {} |", fmt_ratio(d));
            for p in &others {
                let _ = write!(line, " {} |", fmt_ratio(ratio(rc, (r.get)(&res[p]))));
            }
        }
        let _ = writeln!(o, "{line}");
    }
    let _ = writeln!(
        o,
        "\n\"regcache ÷ X\" is regcache's figure divided by X's; read it with the \"better\" column.\n"
    );
    for p in &peers {
        let f = &res[p];
        let d = &f.paired_ttfb_diff_samples_ms;
        let _ = writeln!(
            o,
            "- {}: cold single samples {:?} s; cold single ({} MiB) TTFB samples {:?} ms; paired cold TTFB ({} pairs): peer {} ms, upstream {} ms, difference {} ms (medians), differences p10..p90 {}..{} ms; cold concurrent fastest {} s, upstream HEADs {}; upstream blob GETs over the whole run {}{}",
            p.name(),
            f.cold_single_samples_s.iter().map(|v| (v * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            s.blob_mib,
            f.cold_single_ttfb_samples_ms.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>(),
            d.len(),
            fmt_num(f.paired_ttfb_ms, 2),
            fmt_num(f.paired_upstream_ttfb_ms, 2),
            fmt_num(f.paired_ttfb_diff_ms, 2),
            fmt_num(quantile(d, 0.1), 2),
            fmt_num(quantile(d, 0.9), 2),
            fmt_num(f.cold_conc_fastest_s, 3),
            fmt_num(f.cold_conc_upstream_heads.map(|v| v as f64), 0),
            fmt_num(f.upstream_blob_gets_total.map(|v| v as f64), 0),
            if f.errors.is_empty() { String::new() } else { format!("; ERRORS: {}", f.errors.join(" | ")) }
        );
    }
    if has_rc {
        let _ = writeln!(
            o,
            "\n### Targets (regcache)\n\n| target | measured | met |\n|---|---|---|"
        );
        for t in targets(s, direct, res) {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(o, "| {} | {} | {met} |", t.what, t.measured);
        }
    }
    o
}

/// Key figures round by round, to show how much they move within one run.
fn rounds_table(direct: &[Figures], peers: &BTreeMap<Peer, Vec<Figures>>) -> String {
    let mut o = String::from(
        "\n### Round by round\n\n| peer | round | cold single s (median) | cold TTFB ms (median, paired) | TTFB − upstream's ms (median) | cold concurrent slowest s | hit MiB/s (median) | hit CPU s/GiB | manifest GETs/s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut line = |name: &str, i: usize, f: &Figures| {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            fmt_num(f.cold_single_s, 3),
            fmt_num(f.paired_ttfb_ms, 2),
            fmt_num(f.paired_ttfb_diff_ms, 2),
            fmt_num(f.cold_conc_slowest_s, 3),
            fmt_num(f.hit_mib_s, 0),
            fmt_num(f.hit_cpu_s_per_gib, 3),
            fmt_num(f.manifest.as_ref().map(|w| w.rps), 0),
        );
    };
    for (i, f) in direct.iter().enumerate() {
        line("upstream direct", i, f);
    }
    for (p, rounds) in peers {
        for (i, f) in rounds.iter().enumerate() {
            line(p.name(), i, f);
        }
    }
    o
}

// ------------------------------------------------------------------------------------------

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("compare: skipped (run scripts/bench, or cargo bench --bench compare)");
        return;
    }
    START.get_or_init(Instant::now);
    let s = Settings::from_env();
    let t = tools();
    assert!(
        s.regcache_bin.is_file(),
        "regcache binary {} not found (set REGCACHE_BIN)",
        s.regcache_bin.display()
    );
    fs::create_dir_all(&s.out_dir).expect("create output dir");
    let work = s.out_dir.join(format!("work-{}", std::process::id()));
    fs::create_dir_all(&work).expect("create work dir");
    let pgids = std::env::var_os("BENCH_PGID_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.join("pgids"));
    say(format!("work dir {}", work.display()));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let up = start_upstream(&t, &work, &pgids);
    let content = rt
        .block_on(push_content(&s, up.addr))
        .unwrap_or_else(|e| panic!("pushing test content upstream failed: {e}"));

    let mut direct_rounds = Vec::new();
    let mut peer_rounds: BTreeMap<Peer, Vec<Figures>> = BTreeMap::new();
    for round in 0..s.rounds {
        let mut order = s.peers.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        say(format!(
            "=== round {}/{}: direct, then {} ===",
            round + 1,
            s.rounds,
            order
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let d = measure_direct(&rt, &t, &s, &up, &content, &work);
        say(format!(
            "direct: cold {:?} s ttfb {:?} ms hit {:?} MiB/s",
            d.cold_single_s, d.cold_single_ttfb_ms, d.hit_mib_s
        ));
        direct_rounds.push(d);
        for &p in &order {
            say(format!("--- {} (round {}) ---", p.name(), round + 1));
            let f = measure_peer(&rt, p, &t, &s, &up, &content, &work, &pgids);
            peer_rounds.entry(p).or_default().push(f);
        }
    }
    drop(up);
    // The upstream-direct column of the paired TTFB figure: the upstream samples of every
    // peer's pairs in that round.
    for (r, d) in direct_rounds.iter_mut().enumerate() {
        d.paired_ttfb_samples_ms = peer_rounds
            .values()
            .filter_map(|rounds| rounds.get(r))
            .flat_map(|f| f.paired_upstream_ttfb_samples_ms.iter().copied())
            .collect();
        d.paired_ttfb_ms = median(&d.paired_ttfb_samples_ms);
    }
    let direct = merge(&direct_rounds);
    let res: BTreeMap<Peer, Figures> = peer_rounds.iter().map(|(p, r)| (*p, merge(r))).collect();

    let mut md = report(&s, &t, &direct, &res);
    if s.rounds > 1 {
        md.push_str(&rounds_table(&direct_rounds, &peer_rounds));
    }
    println!("\n{md}");
    let md_path = s.out_dir.join("compare.md");
    fs::write(&md_path, &md).expect("write compare.md");
    let json = serde_json::json!({
        "settings": {
            "blob_mib": s.blob_mib, "cold_samples": s.cold_samples, "cold_clients": s.cold_clients,
            "ttfb_samples": s.ttfb_samples, "ttfb_blob_kib": s.ttfb_blob_kib,
            "warm_clients": s.warm_clients, "hit_repeats": s.hit_repeats, "wrk_conns": s.wrk_conns,
            "wrk_threads": s.wrk_threads, "wrk_secs": s.wrk_secs, "rounds": s.rounds,
        },
        "rounds": s.rounds,
        "direct": direct,
        "peers": res.iter().map(|(p, f)| (p.name(), f)).collect::<BTreeMap<_, _>>(),
        "direct_rounds": direct_rounds,
        "peer_rounds": peer_rounds.iter().map(|(p, r)| (p.name(), r)).collect::<BTreeMap<_, _>>(),
    });
    fs::write(
        s.out_dir.join("compare.json"),
        serde_json::to_vec_pretty(&json).expect("json"),
    )
    .expect("write compare.json");
    say(format!("wrote {} and compare.json", md_path.display()));
    if !s.keep_work {
        let _ = fs::remove_dir_all(&work);
    }
}
