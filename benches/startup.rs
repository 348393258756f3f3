//! Startup with a large cache: builds a cache directory holding N objects (default 100,000;
//! `BENCH_OBJECTS` overrides) and measures (a) `Store::open` — the index rebuild from the
//! directory — and (b) the time from spawning `regcache serve` to its first answered `GET /v2/`.
//! Run: `cargo bench --bench startup` (as root it also measures with the page cache dropped).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn main() {
    // `cargo test --all-targets` runs bench mains too; only `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("startup bench: skipped (run it with `cargo bench --bench startup`)");
        return;
    }
    let n: usize = std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("cache");
    let t = Instant::now();
    populate(&root, n);
    eprintln!("created {n} objects in {:.1} s", t.elapsed().as_secs_f64());

    let mut opens = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (_store, report) = regcache::cache::store::Store::open(&root).expect("open");
        opens.push(t.elapsed());
        assert_eq!(report.objects, n);
    }
    let bin = release_binary();
    let warm = ready_time(&bin, &root);
    let cold = if drop_caches() {
        Some((ready_time(&bin, &root), {
            drop_caches();
            let t = Instant::now();
            regcache::cache::store::Store::open(&root).expect("open");
            t.elapsed()
        }))
    } else {
        None
    };

    println!("| figure ({n} objects) | time |");
    println!("|---|---|");
    println!(
        "| Store::open (index rebuild), warm page cache, best of 3 | {:.0} ms |",
        ms(*opens.iter().min().unwrap())
    );
    println!(
        "| `regcache serve` spawn → first `GET /v2/` answered, warm | {:.0} ms |",
        ms(warm)
    );
    if let Some((ready, open)) = cold {
        println!(
            "| `regcache serve` spawn → first `GET /v2/` answered, page cache dropped | {:.0} ms |",
            ms(ready)
        );
        println!("| Store::open, page cache dropped | {:.0} ms |", ms(open));
    } else {
        println!("| (cold-cache figures need root to drop the page cache) | - |");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes `n` blob files with valid names (`blobs/sha256/<hh>/<hex>.<len>`), 1 KiB each, plus
/// a manifest per 10 blobs, with spread-out mtimes.
fn populate(root: &std::path::Path, n: usize) {
    use sha2::Digest as _;
    for i in 0..n {
        let data = format!("object {i}").into_bytes();
        let hex = hex::encode(sha2::Sha256::digest(&data));
        let (kind, name, content) = if i % 10 == 9 {
            let mut c = b"application/vnd.oci.image.manifest.v1+json\n".to_vec();
            c.extend_from_slice(&data);
            ("manifests", hex.clone(), c)
        } else {
            ("blobs", format!("{hex}.{}", data.len()), data)
        };
        let d = root.join(kind).join("sha256").join(&hex[..2]);
        std::fs::create_dir_all(&d).unwrap();
        let mut f = std::fs::File::create(d.join(name)).unwrap();
        f.write_all(&content).unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs((n - i) as u64);
        f.set_modified(t).unwrap();
    }
}

fn release_binary() -> std::path::PathBuf {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--bin", "regcache"])
        .status()
        .expect("cargo build");
    assert!(status.success());
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    std::path::PathBuf::from(target).join("release/regcache")
}

fn ready_time(bin: &std::path::Path, root: &std::path::Path) -> Duration {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let mut child = std::process::Command::new(bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            "http://127.0.0.1:9",
        ])
        .arg("--cache-dir")
        .arg(root)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn regcache");
    let elapsed = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            if buf.starts_with(b"HTTP/1.1 200") {
                break t.elapsed();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "regcache did not become ready"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = child.kill();
    let _ = child.wait();
    elapsed
}

fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}
