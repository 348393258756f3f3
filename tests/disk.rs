//! Bounded disk: LRU-by-size eviction, fills larger than the budget, restarts that heal,
//! full disks (root only: a small tmpfs), and the operator commands.

mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use regcache::config::ServeArgs;
use support::*;

const HOUR: Duration = Duration::from_secs(3600);

/// Bytes the files under `dir` take on disk (like `du`).
fn du(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn budget_args(up: &FakeUpstream, max_size: u64) -> ServeArgs {
    ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        tag_ttl: Some(HOUR),
        max_size: Some(max_size),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_larger_than_the_budget_all_succeed_and_disk_stays_bounded() {
    let up = FakeUpstream::start(300).await;
    let max = 3_000_000;
    let m = Mirror::start_args(budget_args(&up, max)).await;
    let objects = m.store().root().to_path_buf();
    let mut images = Vec::new();
    for i in 0..8 {
        let name = format!("library/img{i}");
        let img = up.add_image(&name, "v1", 700_000, 100 + i);
        let r = get(&m.url(&format!("/v2/{name}/manifests/v1"))).await;
        assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
        for d in [&img.config_digest, &img.layer_digest] {
            let r = get(&m.url(&format!("/v2/{name}/blobs/{d}"))).await;
            assert_eq!(sha256(r.bytes()), *d, "image {i}");
        }
        eventually("eviction brings the cache under max_size", || {
            m.store().index().usage().total <= max
        })
        .await;
        let on_disk = du(&objects.join("blobs")) + du(&objects.join("manifests"));
        assert!(on_disk <= max, "image {i}: {on_disk} bytes on disk > {max}");
        images.push((name, img));
    }
    // The oldest images were evicted; their tags went with their manifests.
    let (name0, img0) = &images[0];
    assert!(!m.has_blob(&img0.layer_digest));
    assert!(m.store().read_tag("docker.io", name0, "v1").is_none());
    // The newest is still cached: pulling it again sends nothing upstream.
    let (name7, img7) = &images[7];
    let before = n(&up.counters.total);
    let r = get(&m.url(&format!("/v2/{name7}/blobs/{}", img7.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img7.layer_digest);
    assert_eq!(n(&up.counters.total), before);
    // An evicted image is simply pulled again.
    let r = get(&m.url(&format!("/v2/{name0}/blobs/{}", img0.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img0.layer_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_an_evicted_blob_finishes_with_correct_bytes() {
    let up = FakeUpstream::start(300).await;
    let max = 5_000_000;
    let big = random_bytes(4_000_000, 1);
    let d = up.add_blob(big.clone());
    let m = Mirror::start_args(budget_args(&up, max)).await;
    let url = m.url(&format!("/v2/library/e/blobs/{d}"));
    assert_eq!(sha256(get(&url).await.bytes()), d);
    // Start a hit and read only its first frame.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .to_vec();
    // Push it out of the cache with newer blobs.
    for i in 0..3 {
        let other = up.add_blob(random_bytes(2_000_000, 10 + i));
        let r = get(&m.url(&format!("/v2/library/e/blobs/{other}"))).await;
        assert_eq!(sha256(r.bytes()), other);
    }
    eventually("the blob is evicted", || !m.has_blob(&d)).await;
    while let Some(f) = body.frame().await {
        got.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    assert_eq!(got.len(), big.len());
    assert_eq!(sha256(&got), d);
}

#[tokio::test]
async fn a_fill_bigger_than_the_budget_passes_through_uncached() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(3_000_000, 2);
    let d = up.add_blob(data);
    let m = Mirror::start_args(budget_args(&up, 1_000_000)).await;
    let url = m.url(&format!("/v2/library/big/blobs/{d}"));
    for round in 1..=2 {
        let r = get(&url).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), "3000000");
        assert_eq!(sha256(r.bytes()), d);
        assert!(!m.has_blob(&d));
        assert_eq!(m.temp_files(), 0);
        assert_eq!(
            n(&up.counters.cdn_get),
            round,
            "not cached: every pull goes upstream"
        );
    }
    // A corrupted pass-through is still cut short.
    up.set_faults(Faults {
        corrupt: vec![d.clone()],
        ..Default::default()
    });
    assert!(get(&url).await.body.is_err());
}

#[tokio::test]
async fn restart_heals_a_truncated_blob() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/t", "v1", 50_000, 3);
    let m = Mirror::start(&up, HOUR).await;
    let url = m.url(&format!("/v2/library/t/blobs/{}", img.layer_digest));
    assert_eq!(sha256(get(&url).await.bytes()), img.layer_digest);
    eventually("committed", || m.has_blob(&img.layer_digest)).await;
    let root = m.store().root().to_path_buf();
    let dir = m.stop().await;
    // Truncate the committed file behind regcache's back, and leave a partial fill.
    let hex = img.layer_digest.trim_start_matches("sha256:");
    let path = root.join(format!("blobs/sha256/{}/{hex}.50000", &hex[..2]));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    std::fs::write(root.join("tmp/fill-partial"), b"partial").unwrap();
    let m = Mirror::start_in(&up, HOUR, dir).await;
    assert_eq!(m.temp_files(), 0);
    assert!(!path.exists(), "the truncated blob was removed at startup");
    let r = get(&m.url(&format!("/v2/library/t/blobs/{}", img.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    assert_eq!(n(&up.counters.cdn_get), 2, "re-fetched");
}

#[tokio::test]
async fn a_blob_damaged_while_serving_is_refetched_not_served() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(40_000, 4);
    let d = up.add_blob(data);
    let m = Mirror::start(&up, HOUR).await;
    let url = m.url(&format!("/v2/library/h/blobs/{d}"));
    assert_eq!(sha256(get(&url).await.bytes()), d);
    eventually("committed", || m.has_blob(&d)).await;
    let hex = d.trim_start_matches("sha256:");
    let path = m
        .store()
        .root()
        .join(format!("blobs/sha256/{}/{hex}.40000", &hex[..2]));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(39_999)
        .unwrap();
    assert_eq!(sha256(get(&url).await.bytes()), d);
    assert_eq!(n(&up.counters.cdn_get), 2);
    eventually("re-committed", || path.exists() && m.fills_idle()).await;
    std::fs::remove_file(
        m.store()
            .root()
            .join(format!("blobs/sha256/{}/{hex}.40000", &hex[..2])),
    )
    .unwrap();
    assert_eq!(sha256(get(&url).await.bytes()), d);
    assert_eq!(n(&up.counters.cdn_get), 3);
}

/// Mounts a small tmpfs; unmounts on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(path: &std::path::Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| SmallFs(path.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_a_fill_still_delivers_the_whole_blob() {
    if !proc::is_root() {
        println!("SKIP a_full_disk_during_a_fill_still_delivers_the_whole_blob: needs root to mount a small tmpfs (run `scripts/test-all` as root)");
        return;
    }
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(&dir.path().join("cache"), "2m") else {
        if std::env::var("REGCACHE_E2E").as_deref() == Ok("require") {
            panic!("cannot mount tmpfs although REGCACHE_E2E=require");
        }
        println!(
            "SKIP a_full_disk_during_a_fill_still_delivers_the_whole_blob: mount -t tmpfs failed"
        );
        return;
    };
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(5_000_000, 5);
    let d = up.add_blob(data);
    // No Content-Length: regcache cannot know in advance that the blob will not fit.
    up.set_faults(Faults {
        no_length: true,
        ..Default::default()
    });
    let m = Mirror::start_args(ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        cache_dir: Some(fs.0.clone()),
        ..Default::default()
    })
    .await;
    let url = m.url(&format!("/v2/library/full/blobs/{d}"));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            sha256(r.bytes()),
            d,
            "complete, correct stream despite ENOSPC"
        );
    }
    assert!(!m.has_blob(&d));
    eventually("temp file deleted", || m.temp_files() == 0).await;
    // The server keeps serving; with room again (a smaller blob), caching works.
    up.set_faults(Faults::default());
    let small = up.add_blob(random_bytes(100_000, 6));
    let r = get(&m.url(&format!("/v2/library/full/blobs/{small}"))).await;
    assert_eq!(sha256(r.bytes()), small);
    eventually("committed", || m.has_blob(&small)).await;
    drop(m);
}

// Multi-threaded: the commands run as child processes that ask this in-process mirror over its
// admin socket, which must go on answering while the test thread waits for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_status_verify_gc() {
    let up = FakeUpstream::start(300).await;
    let a = up.add_image("library/a", "v1", 300_000, 7);
    let b = up.add_image("library/b", "v1", 300_000, 8);
    let m = Mirror::start(&up, HOUR).await;
    for (name, img) in [("library/a", &a), ("library/b", &b)] {
        get(&m.url(&format!("/v2/{name}/manifests/v1"))).await;
        for d in [&img.config_digest, &img.layer_digest] {
            get(&m.url(&format!("/v2/{name}/blobs/{d}"))).await;
            eventually("committed", || m.has_blob(d)).await;
        }
    }
    let root = m.store().root().to_path_buf();
    let bin = env!("CARGO_BIN_EXE_regcache");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--cache-dir")
            .arg(&root)
            .output()
            .expect("run regcache");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = run(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 (4 blobs, 2 manifests), 2 tags"), "{out}");
    assert!(
        out.contains("oldest use:") && out.contains("free disk:"),
        "{out}"
    );

    // Flip a byte of a blob (same size): only a re-hash finds it.
    let hex = a.layer_digest.trim_start_matches("sha256:");
    let path = root.join(format!("blobs/sha256/{}/{hex}.300000", &hex[..2]));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 1;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let (code, out) = run(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("removed {}", a.layer_digest)) && out.contains("1 removed"),
        "{out}"
    );
    assert!(!path.exists());
    // The mirror re-fetches it rather than serving damage.
    let r = get(&m.url(&format!("/v2/library/a/blobs/{}", a.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), a.layer_digest);
    let (code, out) = run(&["verify"]);
    assert_eq!(code, 0, "{out}");
    // A truncated blob is named too, with why.
    let hex = b.layer_digest.trim_start_matches("sha256:");
    let path = root.join(format!("blobs/sha256/{}/{hex}.300000", &hex[..2]));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(1000).unwrap();
    drop(f);
    let (code, out) = run(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "removed {}: its size does not match the length in its file name",
            b.layer_digest
        )),
        "{out}"
    );
    assert!(!path.exists());
    let r = get(&m.url(&format!("/v2/library/b/blobs/{}", b.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), b.layer_digest);
    eventually("re-fetched", || path.exists() && m.fills_idle()).await;

    let (_, out) = run(&["gc", "--max-size", "400KB", "--dry-run"]);
    assert!(out.contains("would remove"), "{out}");
    let (_, status_before) = run(&["status"]);
    assert!(
        status_before.contains("6 ("),
        "dry run removed nothing: {status_before}"
    );
    let (code, out) = run(&["gc", "--max-size", "400KB"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("removed"), "{out}");
    assert!(du(&root.join("blobs")) + du(&root.join("manifests")) <= 400_000);
    let (_, out) = run(&["gc"]);
    assert!(out.contains("nothing to evict"), "{out}");
    // Pulls still work after the operator removed files under the running mirror.
    let r = get(&m.url(&format!("/v2/library/b/blobs/{}", b.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), b.layer_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_fill_then_restart_and_pull() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(3_000_000, 9);
    let d = up.add_blob(data);
    up.set_faults(Faults {
        throttle: Some((100_000, Duration::from_millis(50))),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let spawn = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                &up.url(),
                "--redirect-host",
                &up.cdn.to_string(),
            ])
            .arg("--cache-dir")
            .arg(&cache)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start regcache");
        (child, format!("http://127.0.0.1:{port}"))
    };
    async fn ready(base: &str) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("regcache did not start");
    }
    let (mut child, base) = spawn();
    ready(&base).await;
    let url = format!("{base}/v2/library/k/blobs/{d}");
    let pending = tokio::spawn(async move { get(&url).await });
    let tmp = cache.join("tmp");
    eventually("the fill has written part of the blob", || {
        std::fs::read_dir(&tmp)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.metadata().map(|m| m.len() > 200_000).unwrap_or(false))
            })
            .unwrap_or(false)
    })
    .await;
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let r = pending.await.unwrap();
    assert!(r.body.is_err(), "the client saw the stream break");
    // Nothing partial is committed under the digest.
    let hex = d.trim_start_matches("sha256:");
    let shard = cache.join(format!("blobs/sha256/{}", &hex[..2]));
    assert!(std::fs::read_dir(&shard)
        .map(|rd| rd.count() == 0)
        .unwrap_or(true));
    assert!(
        std::fs::read_dir(&tmp).unwrap().count() > 0,
        "the partial temp file is left behind"
    );

    up.set_faults(Faults::default());
    let (mut child, base) = spawn();
    ready(&base).await;
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temp space reclaimed at restart"
    );
    let r = get(&format!("{base}/v2/library/k/blobs/{d}")).await;
    assert_eq!(sha256(r.bytes()), d);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_blob_without_length_that_outgrows_the_budget_is_not_cached() {
    let up = FakeUpstream::start(300).await;
    let small = up.add_blob(random_bytes(100_000, 70));
    let big = up.add_blob(random_bytes(3_000_000, 71));
    up.set_faults(Faults {
        no_length: true,
        ..Default::default()
    });
    let m = Mirror::start_args(budget_args(&up, 1_000_000)).await;
    let r = get(&m.url(&format!("/v2/library/nl/blobs/{small}"))).await;
    assert_eq!(sha256(r.bytes()), small);
    eventually("small committed", || m.has_blob(&small)).await;
    let r = get(&m.url(&format!("/v2/library/nl/blobs/{big}"))).await;
    assert_eq!(sha256(r.bytes()), big, "the whole blob, passed through");
    eventually("fill ended", || m.fills_idle()).await;
    assert!(!m.has_blob(&big));
    assert!(
        m.has_blob(&small),
        "the budget was never blown by the big one"
    );
    eventually("temp space released", || m.temp_files() == 0).await;
}

/// A fill that fills the disk goes on uncached, and the space its deleted temp file still
/// holds (until the fill ends) is no reason for `min_free` eviction: the cache is not emptied
/// to make room that comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_a_fill_does_not_empty_the_cache() {
    use http_body_util::BodyExt;
    if !proc::is_root() {
        println!("SKIP a_full_disk_during_a_fill_does_not_empty_the_cache: needs root to mount a tmpfs (run `scripts/test-all` as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(&dir.path().join("cache"), "64m") else {
        if std::env::var("REGCACHE_E2E").as_deref() == Ok("require") {
            panic!("cannot mount tmpfs although REGCACHE_E2E=require");
        }
        println!("SKIP a_full_disk_during_a_fill_does_not_empty_the_cache: mount -t tmpfs failed");
        return;
    };
    let up = FakeUpstream::start(300).await;
    let small: Vec<String> = (0..10)
        .map(|i| up.add_blob(random_bytes(500_000, 80 + i)))
        .collect();
    let big = up.add_blob(random_bytes(80 << 20, 90));
    let m = Mirror::start_args(ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        cache_dir: Some(fs.0.clone()),
        min_free: Some(regcache::cache::eviction::MinFree::Bytes(8 << 20)),
        ..Default::default()
    })
    .await;
    m.fill_blobs("library/f", &small).await;
    // No Content-Length: regcache learns the blob does not fit only when the disk is full.
    up.set_faults(Faults {
        no_length: true,
        ..Default::default()
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client
        .get(
            m.url(&format!("/v2/library/f/blobs/{big}"))
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    // Read until the fill has gone pass-through (the temp file is gone from tmp/), then stall.
    let mut got = 0usize;
    while m.temp_files() > 0 || got < 60 << 20 {
        match body.frame().await {
            Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
        if m.temp_files() == 0 && got > 1 << 20 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for d in &small {
        assert!(
            m.has_blob(d),
            "evicted for space regcache's own fill holds: {d}"
        );
    }
    drop(body);
}
