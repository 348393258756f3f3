//! Load: `scripts/load` (or `cargo bench --bench load`). A release `regcache serve` process
//! against the in-process Hub-shaped fake upstream (tests/support), all on 127.0.0.1, and
//! LOAD_CONNS (500) client connections for LOAD_SECS (60) seconds — half HTTP/1.1, half HTTP/2
//! (prior knowledge, one stream per connection at a time) — mixing warm hits, Range requests
//! on hits, cold misses of distinct blobs and coalesced fills (several clients asking for one
//! cold blob at once). Every body is hashed against the bytes it must be. Reported: requests and
//! bytes by kind, wrong bytes, 5xx, regcache's RSS and open fds over time (after warm-up they
//! must stay flat), and upstream blob GETs against the distinct blobs fetched (every fill once).
//! Bounded in count and time, loopback only; stops by itself.

#[allow(unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Digest as _;

use support::{random_bytes, FakeUpstream};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the clients counted.
#[derive(Default)]
struct Tally {
    requests: [AtomicU64; 4],
    bytes: [AtomicU64; 4],
    wrong: AtomicU64,
    server_errors: AtomicU64,
    other_errors: AtomicU64,
}

const KINDS: [&str; 4] = ["hit", "range on hit", "cold miss", "coalesced fill"];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("load bench: skipped (run it with scripts/load)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let conns = env_or("LOAD_CONNS", 500) as usize;
    let secs = env_or("LOAD_SECS", 60);
    let bin = std::env::var("REGCACHE_BIN").unwrap_or_else(|_| "target/release/regcache".into());
    let up = FakeUpstream::start(300).await;
    // Warm set (cached before the clock starts), and enough cold blobs for the whole run.
    let warm: Vec<(String, Bytes)> = (0..20)
        .map(|i| {
            let data = random_bytes(256 << 10, 1000 + i);
            (up.add_blob(data.clone()), Bytes::from(data))
        })
        .collect();
    let cold_count = env_or("LOAD_COLD_BLOBS", 4000) as usize;
    let cold: Arc<Vec<(String, Bytes)>> = Arc::new(
        (0..cold_count)
            .map(|i| {
                let data = random_bytes(64 << 10, 100_000 + i as u64);
                (up.add_blob(data.clone()), Bytes::from(data))
            })
            .collect(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(&bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--upstream",
            &up.url(),
            "--redirect-host",
            &up.cdn.to_string(),
        ])
        .arg("--cache-dir")
        .arg(dir.path())
        .args(["--max-connections", &(conns * 2).to_string()])
        .env("REGCACHE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (build it: cargo build --release)"));
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let h1: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..100 {
        if h1.get(format!("{base}/v2/").parse().unwrap()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (d, data) in &warm {
        let b = get(&h1, &format!("{base}/v2/library/load/blobs/{d}"), None).await;
        assert_eq!(b.map(|(_, b)| b).as_ref(), Ok(data), "warm-up of {d}");
    }
    let tally = Arc::new(Tally::default());
    let next_cold = Arc::new(AtomicU64::new(0));
    let warm = Arc::new(warm);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        let client: Client<_, Empty<Bytes>> = if i % 2 == 0 {
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http()
        } else {
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http()
        };
        let (base, tally, warm, cold, next_cold) = (
            base.clone(),
            tally.clone(),
            warm.clone(),
            cold.clone(),
            next_cold.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = i as u64;
            while Instant::now() < deadline {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let pick = (n >> 33) % 100;
                let (kind, digest, data, range) = match pick {
                    0..=49 => {
                        let (d, b) = &warm[(n >> 40) as usize % warm.len()];
                        (0, d.clone(), b.clone(), None)
                    }
                    50..=69 => {
                        let (d, b) = &warm[(n >> 40) as usize % warm.len()];
                        let a = (n >> 20) as usize % (b.len() - 1);
                        let z = (a + 1 + (n >> 10) as usize % 100_000).min(b.len());
                        (1, d.clone(), b.slice(a..z), Some((a, z - 1)))
                    }
                    70..=84 => {
                        let k = next_cold.fetch_add(1, Ordering::Relaxed) as usize;
                        let (d, b) = &cold[k % cold.len()];
                        (2, d.clone(), b.clone(), None)
                    }
                    _ => {
                        // Everyone on the same second asks for the same cold blob.
                        let k = cold.len()
                            - 1
                            - (started.elapsed().as_secs() as usize % (cold.len() / 2));
                        let (d, b) = &cold[k];
                        (3, d.clone(), b.clone(), None)
                    }
                };
                let url = format!("{base}/v2/library/load/blobs/{digest}");
                match get(&client, &url, range).await {
                    Ok((status, body)) => {
                        tally.requests[kind].fetch_add(1, Ordering::Relaxed);
                        tally.bytes[kind].fetch_add(body.len() as u64, Ordering::Relaxed);
                        if status >= 500 {
                            tally.server_errors.fetch_add(1, Ordering::Relaxed);
                        } else if sha2::Sha256::digest(&body) != sha2::Sha256::digest(&data) {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        tally.other_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push((started.elapsed().as_secs(), rss_kib(pid), fds(pid)));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hold = hold_h2_streams(
        port,
        &warm,
        env_or("LOAD_H2_HOLD_STREAMS", 4096) as usize,
        pid,
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let distinct = warm.len() as u64
        + (next_cold.load(Ordering::Relaxed).min(cold.len() as u64))
        + (secs.min(cold.len() as u64 / 2));
    report(
        conns,
        secs,
        elapsed,
        &tally,
        &samples,
        support::n(&up.counters.cdn_get),
        distinct,
    );
    println!("{hold}");
    let _ = std::fs::write("target/bench/load-h2-hold.md", &hold);
}

/// HTTP/2 clients that grant no flow-control credit: `streams` GETs of warm blobs over
/// connections of 128 streams each, with a stream window of 0 bytes, held for 5 s. Returns a
/// report of regcache's RSS before, while held, and after they close.
async fn hold_h2_streams(port: u16, warm: &[(String, Bytes)], streams: usize, pid: u32) -> String {
    let before = rss_kib(pid);
    let mut conns = Vec::new();
    let mut pending = Vec::new();
    for c in 0..streams.div_ceil(128) {
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            break;
        };
        let Ok((send, conn)) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(0)
            .initial_connection_window_size(65_535)
            .handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
        else {
            break;
        };
        conns.push(tokio::spawn(conn));
        for s in 0..128.min(streams - c * 128) {
            let (d, _) = &warm[s % warm.len()];
            let uri = format!("http://127.0.0.1:{port}/v2/library/load/blobs/{d}");
            let req = http::Request::get(uri).body(Empty::new()).unwrap();
            let mut send = send.clone();
            pending.push(tokio::spawn(async move {
                let _ = send.ready().await;
                // Headers come back; the body never can (no credit): hold the response.
                let resp = send.send_request(req).await;
                tokio::time::sleep(Duration::from_secs(8)).await;
                drop(resp);
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = rss_kib(pid);
    for p in pending {
        p.abort();
    }
    for c in conns {
        c.abort();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    format!(
        "### HTTP/2 clients granting no credit\n\n{streams} streams (128 per connection, stream window 0) of 256 KiB hits, held 5 s: regcache RSS {:.1} MiB before, {:.1} MiB while held, {:.1} MiB after they closed.\n",
        before as f64 / 1024.0,
        held as f64 / 1024.0,
        after as f64 / 1024.0
    )
}

/// GET `url` (with an inclusive byte range): status and whole body.
async fn get(
    c: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
    range: Option<(usize, usize)>,
) -> Result<(u16, Bytes), String> {
    let mut req = http::Request::get(url);
    if let Some((a, b)) = range {
        req = req.header("range", format!("bytes={a}-{b}"));
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        c.request(req.body(Empty::new()).unwrap()),
    )
    .await
    .map_err(|_| "no answer in 30 s".to_string())?
    .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
        .await
        .map_err(|_| "body took over 60 s".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn report(
    conns: usize,
    secs: u64,
    elapsed: f64,
    t: &Tally,
    samples: &[(u64, u64, u64)],
    upstream_gets: u64,
    distinct: u64,
) {
    let mut out = format!(
        "## Load: {conns} connections (half HTTP/1.1, half HTTP/2) for {secs} s\n\n| kind | requests | req/s | MiB |\n|---|---:|---:|---:|\n"
    );
    let mut total = 0;
    for (i, k) in KINDS.iter().enumerate() {
        let r = t.requests[i].load(Ordering::Relaxed);
        total += r;
        out += &format!(
            "| {k} | {r} | {:.0} | {:.0} |\n",
            r as f64 / elapsed,
            t.bytes[i].load(Ordering::Relaxed) as f64 / 1048576.0
        );
    }
    out += &format!(
        "\n- requests: {total}; wrong bodies: {}; 5xx: {}; transport errors: {}\n",
        t.wrong.load(Ordering::Relaxed),
        t.server_errors.load(Ordering::Relaxed),
        t.other_errors.load(Ordering::Relaxed)
    );
    out += &format!(
        "- upstream blob GETs: {upstream_gets} for at most {distinct} distinct blobs fetched\n"
    );
    out += "- regcache over time (s: RSS MiB, open fds): ";
    out += &samples
        .iter()
        .map(|(s, r, f)| format!("{s}: {:.1}, {f}", *r as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join("; ");
    out += "\n";
    println!("{out}");
    let dir = std::path::Path::new("target/bench");
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join("load.md"), &out);
}
