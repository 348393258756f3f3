//! Edge links and outages: stale-if-error within a bound, fail-fast for uncached content,
//! offline mode, resume of broken downloads, Range during fills, idle limits, rate-limit hygiene
//! and the bandwidth cap.

mod support;

use std::time::{Duration, Instant};

use regcache::config::ServeArgs;
use support::*;

fn args(up: &FakeUpstream, ttl: Duration) -> ServeArgs {
    ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        tag_ttl: Some(ttl),
        revalidate_timeout: Some(Duration::from_millis(700)),
        ..Default::default()
    }
}

/// Fails the test if a request hangs (the behaviour under test is "never a hang").
async fn bounded(url: &str) -> Got {
    tokio::time::timeout(Duration::from_secs(10), get(url))
        .await
        .unwrap_or_else(|_| panic!("request hung: {url}"))
}

/// An upstream with `name:v1` and `library/cold:v1` (1000-byte layers, seeds `seed` and
/// `seed + 1`), and a mirror revalidating every tag against it.
async fn cached_and_cold(name: &str, seed: u64) -> (FakeUpstream, Image, Mirror) {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image(name, "v1", 1000, seed);
    up.add_image("library/cold", "v1", 1000, seed + 1);
    let m = Mirror::start_args(args(&up, Duration::ZERO)).await;
    (up, img, m)
}

#[tokio::test]
async fn blackholed_upstream_serves_cached_tags_and_fails_fast_for_the_rest() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/bh", "v1", 10_000, 1);
    up.add_image("library/cold", "v1", 10_000, 2);
    // A short back-off after the timeout keeps the recovery check below quick.
    let backoff = Duration::from_millis(500);
    let m = Mirror::start_args(ServeArgs {
        outage_backoff: Some(backoff),
        ..args(&up, Duration::ZERO)
    })
    .await;
    let url = m.url("/v2/library/bh/manifests/v1");
    assert_eq!(bounded(&url).await.status, 200);
    assert_eq!(
        bounded(&m.url(&format!("/v2/library/bh/blobs/{}", img.layer_digest)))
            .await
            .status,
        200
    );
    up.set_faults(Faults {
        blackhole: true,
        ..Default::default()
    });
    let t = Instant::now();
    let r = bounded(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stale answer within the revalidation bound"
    );
    // Blobs are immutable: served without asking anyone.
    let r = bounded(&m.url(&format!("/v2/library/bh/blobs/{}", img.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    // Uncached: a retryable error, not a hang and not a 500.
    let r = bounded(&m.url("/v2/library/cold/manifests/v1")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["errors"][0]["code"], "UNAVAILABLE");
    assert!(!r.header("retry-after").is_empty());
    // Recovery needs no restart (the back-off after a timeout is short).
    up.set_faults(Faults::default());
    tokio::time::sleep(backoff).await;
    assert_eq!(
        bounded(&m.url("/v2/library/cold/manifests/v1"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn rate_limited_upstream_is_left_alone_until_retry_after() {
    let (up, img, m) = cached_and_cold("library/rl", 3).await;
    let url = m.url("/v2/library/rl/manifests/v1");
    assert_eq!(get(&url).await.status, 200);
    up.set_faults(Faults {
        status: Some(429),
        ..Default::default()
    });
    let r = get(&url).await;
    assert_eq!(
        (r.status.as_u16(), r.header("docker-content-digest")),
        (200, img.manifest_digest.as_str())
    );
    let seen = n(&up.counters.total);
    for _ in 0..5 {
        assert_eq!(
            get(&url).await.status,
            200,
            "served from cache during the back-off"
        );
    }
    let r = get(&m.url("/v2/library/cold/manifests/v1")).await;
    assert_eq!(r.status, 429);
    let ra: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=7).contains(&ra), "Retry-After passed on: {ra}");
    assert_eq!(
        n(&up.counters.total),
        seen,
        "nothing sent upstream while Retry-After runs"
    );
}

#[tokio::test]
async fn token_service_failure_serves_cached_tags() {
    let up = FakeUpstream::start(1).await;
    let img = up.add_image("library/auth", "v1", 1000, 5);
    let m = Mirror::start_args(args(&up, Duration::ZERO)).await;
    let url = m.url("/v2/library/auth/manifests/v1");
    assert_eq!(get(&url).await.status, 200);
    up.set_faults(Faults {
        token_status: Some(500),
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_millis(1100)).await; // the 1 s token has expired
    let r = get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
}

#[tokio::test]
async fn offline_mode_never_contacts_upstream() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/off", "v1", 5000, 6);
    up.add_image("library/cold", "v1", 5000, 7);
    let online = Mirror::start(&up, Duration::ZERO).await;
    assert_eq!(
        get(&online.url("/v2/library/off/manifests/v1"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&online.url(&format!("/v2/library/off/blobs/{}", img.layer_digest)))
            .await
            .status,
        200
    );
    let dir = online.stop().await;
    let before = n(&up.counters.total);
    let mut a = args(&up, Duration::ZERO);
    a.offline = true;
    a.cache_dir = Some(dir.path().to_path_buf());
    let m = Mirror::start_args(a).await;
    let r = get(&m.url("/v2/library/off/manifests/v1")).await;
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    let r = get(&m.url(&format!("/v2/library/off/blobs/{}", img.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    let r = get(&m.url("/v2/library/cold/manifests/v1")).await;
    assert_eq!(r.status, 503);
    assert!(r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("offline"));
    let absent = sha256(b"not cached anywhere");
    assert_eq!(
        get(&m.url(&format!("/v2/library/cold/blobs/{absent}")))
            .await
            .status,
        503
    );
    assert_eq!(
        n(&up.counters.total),
        before,
        "offline: zero upstream requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_download_is_resumed_with_range() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(2_000_000, 8);
    let d = up.add_blob(data.clone());
    up.set_faults(Faults {
        cut_once: Some((d.clone(), 1_000_000)),
        ..Default::default()
    });
    let m = Mirror::start(&up, Duration::ZERO).await;
    let r = get(&m.url(&format!("/v2/library/res/blobs/{d}"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), d, "one uninterrupted, correct stream");
    eventually("committed", || m.has_blob(&d)).await;
    assert_eq!(n(&up.counters.cdn_ranges), 1);
    let sent = n(&up.counters.cdn_bytes);
    assert!(
        sent < 2_200_000,
        "upstream bytes {sent} should stay under 1.1x the blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_resume_is_impossible_streams_end_short_and_nothing_is_cached() {
    let up = FakeUpstream::start(300).await;
    let d = up.add_blob(random_bytes(1_000_000, 9));
    up.set_faults(Faults {
        cut_once: Some((d.clone(), 300_000)),
        no_range: true,
        ..Default::default()
    });
    let m = Mirror::start(&up, Duration::ZERO).await;
    let r = get(&m.url(&format!("/v2/library/nr/blobs/{d}"))).await;
    assert!(r.body.is_err(), "client sees a short stream");
    eventually("fill ended", || m.fills_idle()).await;
    assert!(!m.has_blob(&d));
    assert_eq!(m.temp_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_range_requests_during_a_fill_get_the_right_bytes() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(2_000_000, 10);
    let d = up.add_blob(data.clone());
    up.set_faults(Faults {
        throttle: Some((100_000, Duration::from_millis(20))),
        ..Default::default()
    });
    let m = Mirror::start(&up, Duration::ZERO).await;
    let url = m.url(&format!("/v2/library/rg/blobs/{d}"));
    let ranges = [
        (0usize, 99usize),
        (500_000, 1_499_999),
        (1_999_000, 1_999_999),
        (1_234_567, 1_234_567),
    ];
    let tasks: Vec<_> = ranges
        .iter()
        .map(|&(a, b)| {
            let url = url.clone();
            tokio::spawn(async move {
                (
                    a,
                    b,
                    request("GET", &url, &[("range", &format!("bytes={a}-{b}"))]).await,
                )
            })
        })
        .collect();
    let full = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    for t in tasks {
        let (a, b, r) = t.await.unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(&r.bytes()[..], &data[a..=b], "range {a}-{b}");
    }
    assert_eq!(sha256(full.await.unwrap().bytes()), d);
    assert_eq!(
        n(&up.counters.cdn_get),
        1,
        "one upstream download for all of them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_is_resumed_and_a_dead_one_aborted() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(1_000_000, 11);
    let d = up.add_blob(data);
    let mut a = args(&up, Duration::ZERO);
    a.idle_timeout = Some(Duration::from_millis(300));
    let m = Mirror::start_args(a).await;
    // Stalls once: the stalled connection is dropped after idle_timeout and the rest fetched
    // with Range; the client sees one uninterrupted stream.
    up.set_faults(Faults {
        stall_once: Some((d.clone(), 200_000)),
        ..Default::default()
    });
    let r = bounded(&m.url(&format!("/v2/library/st/blobs/{d}"))).await;
    assert_eq!(sha256(r.bytes()), d);
    assert_eq!(n(&up.counters.cdn_ranges), 1);
    assert!(n(&up.counters.cdn_bytes) < 1_100_000);
    // Stalls after 200 kB, then every resume stalls at once: after the bounded attempts
    // without progress the fill is aborted cleanly.
    let d2 = up.add_blob(random_bytes(1_000_000, 12));
    up.set_faults(Faults {
        stall_once: Some((d2.clone(), 200_000)),
        stall_after: Some(0),
        ..Default::default()
    });
    let r = bounded(&m.url(&format!("/v2/library/st/blobs/{d2}"))).await;
    assert!(r.body.is_err(), "the dead download's stream is cut");
    eventually("fill aborted", || m.fills_idle()).await;
    assert!(!m.has_blob(&d2));
    assert_eq!(m.temp_files(), 0);
}

#[tokio::test]
async fn warm_pulls_send_no_manifest_gets() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/warm", "v1", 1000, 12);
    up.set_faults(Faults {
        ratelimit_headers: true,
        ..Default::default()
    });
    let pull = |m: &Mirror| {
        let urls = [
            m.url("/v2/library/warm/manifests/v1"),
            m.url(&format!("/v2/library/warm/blobs/{}", img.config_digest)),
            m.url(&format!("/v2/library/warm/blobs/{}", img.layer_digest)),
        ];
        async move {
            for u in urls {
                assert_eq!(get(&u).await.status, 200);
            }
        }
    };
    let m = Mirror::start(&up, Duration::ZERO).await;
    pull(&m).await;
    let gets = n(&up.counters.manifest_get);
    let tokens = n(&up.counters.token_get);
    for _ in 0..50 {
        pull(&m).await;
    }
    assert_eq!(n(&up.counters.manifest_get), gets, "tag_ttl 0: HEAD only");
    assert_eq!(n(&up.counters.manifest_head), 50);
    assert_eq!(n(&up.counters.token_get), tokens, "tokens reused");
    let rl = m.app.registries().default_upstream().rate_limit();
    assert_eq!(
        rl,
        Some(("100;w=21600".into(), "76;w=21600".into())),
        "Docker Hub rate-limit headers recorded"
    );
    let m2 = Mirror::start(&up, Duration::from_secs(3600)).await;
    pull(&m2).await;
    let total = n(&up.counters.total);
    for _ in 0..50 {
        pull(&m2).await;
    }
    assert_eq!(
        n(&up.counters.total),
        total,
        "within tag_ttl: nothing upstream at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_cap_is_shared_by_all_fills() {
    let up = FakeUpstream::start(300).await;
    let a = up.add_blob(random_bytes(600_000, 13));
    let b = up.add_blob(random_bytes(600_000, 14));
    let mut s = args(&up, Duration::ZERO);
    s.max_upstream_bandwidth = Some(400_000);
    let m = Mirror::start_args(s).await;
    let t = Instant::now();
    let (ua, ub) = (
        m.url(&format!("/v2/library/bw/blobs/{a}")),
        m.url(&format!("/v2/library/bw/blobs/{b}")),
    );
    let (ra, rb) = tokio::join!(get(&ua), get(&ub));
    assert_eq!(sha256(ra.bytes()), a);
    assert_eq!(sha256(rb.bytes()), b);
    // 1.2 MB at 400 kB/s (burst 100 kB): at least ~2.7 s whatever the machine's speed.
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_then_offline_pull() {
    let up = FakeUpstream::start(300).await;
    let amd = up.add_image("library/multi", "amd64-only", 200_000, 20);
    let arm = up.add_image("library/multi", "arm64-only", 200_000, 21);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.manifest_digest, "size": amd.manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.manifest_digest, "size": arm.manifest.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ]
    })
    .to_string()
    .into_bytes();
    let index_digest = up.put_manifest("library/multi", "v1", OCI_INDEX, index);
    let single = up.add_image("library/single", "v2", 100_000, 22);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args([
            "prefetch",
            "multi:v1",
            "docker.io/library/single:v2",
            "--platform",
            "linux/arm64",
            "--upstream",
            &up.url(),
            "--redirect-host",
            &up.cdn.to_string(),
        ])
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("prefetched 2 images: 3 manifests, 0 referrers, 4 blobs fetched"),
        "{stdout}"
    );

    let before = n(&up.counters.total);
    let m = Mirror::start_args(ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        cache_dir: Some(cache.clone()),
        offline: true,
        ..Default::default()
    })
    .await;
    let r = get(&m.url("/v2/library/multi/manifests/v1")).await;
    assert_eq!(r.header("docker-content-digest"), index_digest);
    for (name, img) in [("multi", &arm), ("single", &single)] {
        let r = get(&m.url(&format!(
            "/v2/library/{name}/manifests/{}",
            img.manifest_digest
        )))
        .await;
        assert_eq!(r.status, 200, "{name}");
        for d in [&img.config_digest, &img.layer_digest] {
            assert_eq!(
                sha256(
                    get(&m.url(&format!("/v2/library/{name}/blobs/{d}")))
                        .await
                        .bytes()
                ),
                *d
            );
        }
    }
    // Only the requested platform was fetched.
    assert!(!m.has_blob(&amd.layer_digest));
    assert_eq!(
        n(&up.counters.total),
        before,
        "offline pull sent nothing upstream"
    );

    // A second prefetch finds everything cached.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args([
            "prefetch",
            "multi:v1",
            "--platform",
            "linux/arm64/v8",
            "--upstream",
            &up.url(),
            "--redirect-host",
            &up.cdn.to_string(),
        ])
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("0 blobs fetched (0 B), 2 blobs already cached"));
    // A platform the index lacks is a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args([
            "prefetch",
            "multi:v1",
            "--platform",
            "windows/amd64",
            "--upstream",
            &up.url(),
            "--redirect-host",
            &up.cdn.to_string(),
        ])
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no manifest for platform windows/amd64"));
}

#[tokio::test]
async fn one_bad_challenge_does_not_block_the_upstream() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/a", "v1", 1000, 60);
    let b = up.add_image("library/b", "v1", 1000, 61);
    let m = Mirror::start_args(args(&up, Duration::ZERO)).await;
    // The upstream briefly names a realm that leads nowhere.
    up.set_faults(Faults {
        realm: Some("file:///etc/passwd".into()),
        ..Default::default()
    });
    let r = get(&m.url("/v2/library/a/manifests/v1")).await;
    assert_eq!(r.status, 503, "uncached, auth impossible: retryable error");
    up.set_faults(Faults::default());
    // Another repository, no restart: works again.
    let r = get(&m.url("/v2/library/b/manifests/v1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), b.manifest_digest);
}

#[tokio::test]
async fn absurd_token_lifetimes_are_bounded() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/exp", "v1", 1000, 62);
    up.set_faults(Faults {
        token_expires_in: Some(u64::MAX as i128),
        ..Default::default()
    });
    let m = Mirror::start_args(args(&up, Duration::ZERO)).await;
    let r = get(&m.url(&format!("/v2/library/exp/blobs/{}", img.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    assert_eq!(
        get(&m.url("/v2/library/exp/manifests/v1")).await.status,
        200
    );
}

/// A token answered with a negative `expires_in` is used as expired-now: the pull works, and
/// the next request fetches a fresh token.
#[tokio::test]
async fn a_negative_token_lifetime_means_expired_now() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/neg", "v1", 1000, 66);
    up.set_faults(Faults {
        token_expires_in: Some(-5),
        ..Default::default()
    });
    let m = Mirror::start_args(args(&up, Duration::ZERO)).await;
    let r = get(&m.url(&format!("/v2/library/neg/blobs/{}", img.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    let tokens = n(&up.counters.token_get);
    let r = get(&m.url("/v2/library/neg/manifests/v1")).await;
    assert_eq!(r.status, 200);
    assert!(
        n(&up.counters.token_get) > tokens,
        "an expired-now token is not reused"
    );
}

#[tokio::test]
async fn html_from_a_captive_portal_is_never_cached_as_a_manifest() {
    let (up, img, m) = cached_and_cold("library/cp", 63).await;
    assert_eq!(get(&m.url("/v2/library/cp/manifests/v1")).await.status, 200);
    up.set_faults(Faults {
        html_manifests: true,
        ..Default::default()
    });
    let r = get(&m.url("/v2/library/cp/manifests/v1")).await;
    assert_eq!(r.status, 200, "the cached answer is served");
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    let r = get(&m.url("/v2/library/cold/manifests/v1")).await;
    assert!(r.status == 502 || r.status == 503, "got {}", r.status);
    up.set_faults(Faults::default());
    let r = get(&m.url("/v2/library/cp/manifests/v1")).await;
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
}

#[tokio::test]
async fn a_stalled_tag_list_is_cut_after_the_idle_timeout() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/tl", "v1", 100, 65);
    up.set_faults(Faults {
        stall_tags: true,
        ..Default::default()
    });
    let mut a = args(&up, Duration::ZERO);
    a.idle_timeout = Some(Duration::from_millis(500));
    let m = Mirror::start_args(a).await;
    let started = Instant::now();
    let r = bounded(&m.url("/v2/library/tl/tags/list")).await;
    assert_eq!(r.status, 502, "an upstream failure, not a hang");
    assert!(started.elapsed() < Duration::from_secs(3));
}
