//! Hermetic tests of the core pull path against an in-process fake upstream shaped like Docker
//! Hub: bearer tokens, blob GETs redirected (307) to a CDN host that rejects Authorization.

mod support;

use std::time::Duration;

use support::*;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn base_endpoint_and_read_only() {
    let up = FakeUpstream::start(300).await;
    let m = Mirror::start(&up, HOUR).await;
    let r = get(&m.url("/v2/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
    assert_eq!(&r.bytes()[..], b"{}");
    for method in ["PUT", "POST", "PATCH", "DELETE"] {
        let r = request(method, &m.url("/v2/library/a/manifests/v1"), &[]).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.json()["errors"][0]["code"], "UNSUPPORTED");
    }
    assert_eq!(n(&up.counters.total), 0, "nothing should reach upstream");
}

#[tokio::test]
async fn pull_then_second_pull_is_served_from_disk() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/alpine", "3.19", 300_000, 1);
    let m = Mirror::start(&up, HOUR).await;

    let accept = [("accept", OCI_MANIFEST), ("accept", OCI_INDEX)];
    let r = request("GET", &m.url("/v2/library/alpine/manifests/3.19"), &accept).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), OCI_MANIFEST);
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    assert_eq!(&r.bytes()[..], &img.manifest[..]);

    for d in [&img.config_digest, &img.layer_digest] {
        let r = get(&m.url(&format!("/v2/library/alpine/blobs/{d}"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(sha256(r.bytes()), *d);
        assert_eq!(r.header("docker-content-digest"), *d);
        assert_eq!(r.header("content-length"), r.bytes().len().to_string());
    }
    assert_eq!(n(&up.counters.blob_get), 2);
    assert_eq!(n(&up.counters.cdn_get), 2);
    assert_eq!(
        n(&up.counters.cdn_auth_leaks),
        0,
        "Authorization must not follow the redirect"
    );
    eventually("committed", || m.has_blob(&img.layer_digest)).await;
    assert_eq!(m.temp_files(), 0);

    // Second pull: manifest by tag within tag_ttl and both blobs: nothing upstream at all.
    let before = n(&up.counters.total);
    let r = request("GET", &m.url("/v2/library/alpine/manifests/3.19"), &accept).await;
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    for d in [&img.config_digest, &img.layer_digest] {
        let r = get(&m.url(&format!("/v2/library/alpine/blobs/{d}"))).await;
        assert_eq!(sha256(r.bytes()), *d);
    }
    assert_eq!(
        n(&up.counters.total),
        before,
        "second pull must not contact upstream"
    );
    assert_eq!(n(&up.counters.blob_get), 2);
    assert_eq!(n(&up.counters.cdn_get), 2);

    // A bare name is the same cache entry as library/<name> on docker.io.
    let r = request("GET", &m.url("/v2/alpine/manifests/3.19"), &accept).await;
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    assert_eq!(n(&up.counters.total), before);
}

#[tokio::test]
async fn head_returns_exactly_get_headers() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/h", "v1", 1000, 2);
    let m = Mirror::start(&up, HOUR).await;
    let blob = m.url(&format!("/v2/library/h/blobs/{}", img.layer_digest));
    let manifest = m.url("/v2/library/h/manifests/v1");
    // HEAD of an uncached blob answers from upstream without filling.
    let h = request("HEAD", &blob, &[]).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), "1000");
    assert_eq!(n(&up.counters.cdn_get), 0);
    for url in [&blob, &manifest] {
        let g = get(url).await;
        let h = request("HEAD", url, &[]).await;
        assert_eq!(g.status, h.status);
        assert!(h.bytes().is_empty());
        let per_request = |k: &http::HeaderName| *k != "date" && *k != "x-request-id";
        let mut gh: Vec<_> = g.headers.iter().filter(|(k, _)| per_request(k)).collect();
        let mut hh: Vec<_> = h.headers.iter().filter(|(k, _)| per_request(k)).collect();
        gh.sort_by_key(|(k, _)| k.as_str().to_string());
        hh.sort_by_key(|(k, _)| k.as_str().to_string());
        assert_eq!(gh, hh, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_gets_make_one_upstream_fetch() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(2_000_000, 3);
    let d = up.add_blob(data.clone());
    // Slow CDN so all ten requests arrive while the fill runs.
    up.set_faults(Faults {
        throttle: Some((100_000, Duration::from_millis(20))),
        ..Default::default()
    });
    let m = Mirror::start(&up, HOUR).await;
    let url = m.url(&format!("/v2/library/big/blobs/{d}"));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.bytes().len(), data.len());
        assert_eq!(sha256(r.bytes()), d);
    }
    assert_eq!(
        n(&up.counters.blob_get),
        1,
        "one upstream GET for ten clients"
    );
    assert_eq!(n(&up.counters.cdn_get), 1);
    eventually("committed", || m.has_blob(&d)).await;
}

#[tokio::test]
async fn corrupted_upstream_blob_is_never_cached_and_stream_is_cut() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(500_000, 4);
    let d = up.add_blob(data.clone());
    up.set_faults(Faults {
        corrupt: vec![d.clone()],
        ..Default::default()
    });
    let m = Mirror::start(&up, HOUR).await;
    let url = m.url(&format!("/v2/library/c/blobs/{d}"));
    let r = get(&url).await;
    assert_eq!(
        r.status, 200,
        "headers go out before the digest can be checked"
    );
    match &r.body {
        Err(_) => {}
        Ok(b) => panic!(
            "client must see a broken stream, got {} complete bytes",
            b.len()
        ),
    }
    eventually("fill cleaned up", || m.fills_idle()).await;
    assert!(!m.has_blob(&d));
    assert_eq!(m.temp_files(), 0);
    // Nothing cached: the next request goes upstream again (and now succeeds).
    up.set_faults(Faults::default());
    let r = get(&url).await;
    assert_eq!(sha256(r.bytes()), d);
    assert_eq!(n(&up.counters.cdn_get), 2);
}

#[tokio::test]
async fn tag_moves_upstream_after_ttl() {
    let up = FakeUpstream::start(300).await;
    let a = up.add_image("library/t", "latest", 100, 5);
    // tag_ttl 0: every tag request revalidates with a HEAD (never a GET when unchanged).
    let m = Mirror::start(&up, Duration::ZERO).await;
    let url = m.url("/v2/library/t/manifests/latest");
    assert_eq!(
        get(&url).await.header("docker-content-digest"),
        a.manifest_digest
    );
    let gets = n(&up.counters.manifest_get);
    assert_eq!(
        get(&url).await.header("docker-content-digest"),
        a.manifest_digest
    );
    assert_eq!(
        n(&up.counters.manifest_get),
        gets,
        "unchanged tag: HEAD only"
    );
    assert!(n(&up.counters.manifest_head) >= 1);
    let b = up.add_image("library/t", "latest", 100, 6);
    assert_ne!(a.manifest_digest, b.manifest_digest);
    let r = get(&url).await;
    assert_eq!(r.header("docker-content-digest"), b.manifest_digest);
    assert_eq!(&r.bytes()[..], &b.manifest[..]);

    // With a long tag_ttl the cached answer is used without asking upstream.
    let m2 = Mirror::start(&up, HOUR).await;
    let url2 = m2.url("/v2/library/t/manifests/latest");
    assert_eq!(
        get(&url2).await.header("docker-content-digest"),
        b.manifest_digest
    );
    up.add_image("library/t", "latest", 100, 7);
    let before = n(&up.counters.total);
    assert_eq!(
        get(&url2).await.header("docker-content-digest"),
        b.manifest_digest
    );
    assert_eq!(n(&up.counters.total), before);
}

#[tokio::test]
async fn digests_are_never_revalidated() {
    let up = FakeUpstream::start(300).await;
    let a = up.add_image("library/d", "v1", 100, 8);
    let m = Mirror::start(&up, Duration::ZERO).await;
    let url = m.url(&format!("/v2/library/d/manifests/{}", a.manifest_digest));
    assert_eq!(get(&url).await.status, 200);
    let before = n(&up.counters.total);
    let r = get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.bytes()[..], &a.manifest[..]);
    assert_eq!(n(&up.counters.total), before);
}

#[tokio::test]
async fn bad_names_and_digests_are_rejected_without_upstream_requests() {
    let up = FakeUpstream::start(300).await;
    let m = Mirror::start(&up, HOUR).await;
    let cases = [
        ("/v2/Library/alpine/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/a..b/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/a/%2e%2e/blobs/sha256:00", 400, "NAME_INVALID"),
        ("/v2/a/blobs/sha256:1234", 400, "DIGEST_INVALID"),
        (
            "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/a/manifests/sha256:XYZ", 400, "DIGEST_INVALID"),
        ("/v2/a/manifests/-bad", 400, "TAG_INVALID"),
        ("/v2/a/blobs/uploads/", 404, "NOT_FOUND"),
        ("/etc/passwd", 404, "NOT_FOUND"),
    ];
    for (path, status, code) in cases {
        let r = get(&m.url(path)).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("content-type"), "application/json", "{path}");
        assert_eq!(r.json()["errors"][0]["code"], code, "{path}");
    }
    // ns naming a registry that is not configured: no outbound connection at all.
    let r = get(&m.url("/v2/library/a/manifests/v1?ns=evil.example")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errors"][0]["code"], "NAME_UNKNOWN");
    assert_eq!(n(&up.counters.total), 0);
    assert_eq!(n(&up.counters.cdn_get), 0);
}

#[tokio::test]
async fn ns_for_the_default_registry_is_accepted_and_not_forwarded() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/ns", "v1", 100, 9);
    let m = Mirror::start(&up, HOUR).await;
    let r = get(&m.url("/v2/library/ns/manifests/v1?ns=docker.io")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
}

#[tokio::test]
async fn accept_excluding_the_stored_type_gets_manifest_unknown() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/acc", "v1", 100, 10);
    let m = Mirror::start(&up, HOUR).await;
    let url = m.url("/v2/library/acc/manifests/v1");
    // The first client's narrow Accept does not decide what is cached.
    let r = request("GET", &url, &[("accept", DOCKER_MANIFEST)]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let r = get(&url).await;
    assert_eq!(r.status, 200, "no Accept at all gets the stored manifest");
    assert_eq!(r.header("content-type"), OCI_MANIFEST);
    let r = request(
        "GET",
        &url,
        &[("accept", &format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"))],
    )
    .await;
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    let r = request("GET", &url, &[("accept", "*/*")]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn stale_tag_is_served_when_upstream_fails() {
    let mut up = FakeUpstream::start(300).await;
    let img = up.add_image("library/s", "v1", 100, 11);
    up.add_image("library/cold", "v1", 100, 12);
    let m = Mirror::start(&up, Duration::ZERO).await;
    let url = m.url("/v2/library/s/manifests/v1");
    assert_eq!(get(&url).await.status, 200);
    // (429 and its back-off are covered in tests/outages.rs.)
    for status in [503, 502, 500] {
        up.set_faults(Faults {
            status: Some(status),
            ..Default::default()
        });
        let r = get(&url).await;
        assert_eq!(r.status, 200, "upstream {status}: serve stale");
        assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    }
    // Uncached while upstream fails: a retryable 503.
    let r = get(&m.url("/v2/library/cold/manifests/v1")).await;
    assert_eq!(r.status, 503);
    up.set_faults(Faults::default());
    // Upstream gone entirely (connection refused).
    up.shut_down();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    let r = get(&m.url("/v2/library/cold/manifests/v1")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["errors"][0]["code"], "UNAVAILABLE");
}

#[tokio::test]
async fn tokens_are_cached_refreshed_and_refetched_after_revocation() {
    let up = FakeUpstream::start(1).await;
    let img = up.add_image("library/tok", "v1", 100, 13);
    let m = Mirror::start(&up, Duration::ZERO).await;
    let url = m.url("/v2/library/tok/manifests/v1");
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(n(&up.counters.token_get), 1);
    // Within its lifetime the token is reused (tag_ttl 0 means a HEAD each time).
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(n(&up.counters.token_get), 1);
    // After expiry a fresh token is fetched before the request, not after a failure.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unauthorized = n(&up.counters.unauthorized);
    let r = get(&m.url(&format!("/v2/library/tok/blobs/{}", img.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    assert_eq!(n(&up.counters.token_get), 2);
    assert_eq!(
        n(&up.counters.unauthorized),
        unauthorized,
        "token refreshed ahead of expiry"
    );
    // A token the upstream no longer accepts is dropped and replaced transparently.
    up.revoke_tokens();
    let r = get(&m.url(&format!("/v2/library/tok/blobs/{}", img.config_digest))).await;
    assert_eq!(sha256(r.bytes()), img.config_digest);
    assert_eq!(n(&up.counters.token_get), 3);
}

#[tokio::test]
async fn ranges_on_hits_and_on_fills() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(100_000, 14);
    let d = up.add_blob(data.clone());
    let m = Mirror::start(&up, HOUR).await;
    let url = m.url(&format!("/v2/library/r/blobs/{d}"));
    // Cold: a Range request starts the one fill and is answered from it.
    let r = request("GET", &url, &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(&r.bytes()[..], &data[10..20]);
    assert_eq!(r.header("content-range"), "bytes 10-19/100000");
    eventually("fill committed", || m.has_blob(&d)).await;
    // Hits.
    let r = request("GET", &url, &[("range", "bytes=99990-")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(&r.bytes()[..], &data[99_990..]);
    let r = request("GET", &url, &[("range", "bytes=-5")]).await;
    assert_eq!(&r.bytes()[..], &data[99_995..]);
    let r = request("GET", &url, &[("range", "bytes=100000-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), "bytes */100000");
    assert_eq!(n(&up.counters.cdn_get), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_does_not_cancel_the_fill() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(1_000_000, 15);
    let d = up.add_blob(data);
    up.set_faults(Faults {
        throttle: Some((50_000, Duration::from_millis(10))),
        ..Default::default()
    });
    let m = Mirror::start(&up, HOUR).await;
    let url = m.url(&format!("/v2/library/dc/blobs/{d}"));
    // Read only the headers, then drop the connection.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    drop(client);
    eventually("fill completes without any client", || m.has_blob(&d)).await;
    let r = get(&url).await;
    assert_eq!(sha256(r.bytes()), d);
    assert_eq!(n(&up.counters.cdn_get), 1);
}

#[tokio::test]
async fn tags_list_is_passed_through() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/tl", "b", 10, 16);
    up.add_image("library/tl", "a", 10, 17);
    let m = Mirror::start(&up, HOUR).await;
    let r = get(&m.url("/v2/library/tl/tags/list")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(n(&up.counters.tags_list), 1);
}

#[tokio::test]
async fn restart_keeps_the_cache_and_removes_partial_fills() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/rs", "v1", 1000, 18);
    let m = Mirror::start(&up, HOUR).await;
    assert_eq!(
        get(&m.url(&format!("/v2/library/rs/blobs/{}", img.layer_digest)))
            .await
            .status,
        200
    );
    assert_eq!(get(&m.url("/v2/library/rs/manifests/v1")).await.status, 200);
    eventually("committed", || m.has_blob(&img.layer_digest)).await;
    let dir = m.stop().await;
    std::fs::write(dir.path().join("tmp/fill-leftover"), b"partial").unwrap();
    let m = Mirror::start_in(&up, HOUR, dir).await;
    assert_eq!(m.temp_files(), 0);
    let before = n(&up.counters.total);
    let r = get(&m.url(&format!("/v2/library/rs/blobs/{}", img.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    assert_eq!(
        get(&m.url("/v2/library/rs/manifests/v1"))
            .await
            .header("docker-content-digest"),
        img.manifest_digest
    );
    assert_eq!(n(&up.counters.total), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_bytes_go_out_with_sendfile_not_through_user_space() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(3_000_000, 30);
    let d = up.add_blob(data.clone());
    let m = Mirror::start(&up, HOUR).await;
    let url = m.url(&format!("/v2/library/zc/blobs/{d}"));
    // Miss: followers map the fill's temp file.
    let before = regcache::body::zero_copy::sendfile_bytes();
    assert_eq!(sha256(get(&url).await.bytes()), d);
    let miss = regcache::body::zero_copy::sendfile_bytes() - before;
    // Hit: mapped windows of the committed file.
    let before = regcache::body::zero_copy::sendfile_bytes();
    assert_eq!(sha256(get(&url).await.bytes()), d);
    let hit = regcache::body::zero_copy::sendfile_bytes() - before;
    assert!(hit >= 3_000_000, "hit: only {hit} bytes via sendfile");
    assert!(miss >= 2_000_000, "miss: only {miss} bytes via sendfile");
    // Ranges are exact.
    let r = request("GET", &url, &[("range", "bytes=4095-4200")]).await;
    assert_eq!(&r.bytes()[..], &data[4095..=4200]);
}

#[tokio::test]
async fn metrics_count_hits_misses_and_upstream_requests() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/met", "v1", 10_000, 40);
    let m = Mirror::start(&up, HOUR).await;
    let blob = m.url(&format!("/v2/library/met/blobs/{}", img.layer_digest));
    assert_eq!(get(&blob).await.status, 200);
    eventually("committed", || m.has_blob(&img.layer_digest)).await;
    assert_eq!(get(&blob).await.status, 200);
    let r = get(&m.url("/metrics")).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(r.bytes().to_vec()).unwrap();
    let value = |line: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("regcache_requests_total{cache=\"hit\"}"), 1.0);
    assert_eq!(value("regcache_requests_total{cache=\"miss\"}"), 1.0);
    assert_eq!(
        value("regcache_served_bytes_total{cache=\"hit\"}"),
        10_000.0
    );
    assert_eq!(value("regcache_fills_committed_total"), 1.0);
    assert_eq!(value("regcache_cache_objects"), 1.0);
    assert!(value("regcache_upstream_requests_total{registry=\"docker.io\"}") >= 2.0);
    assert!(text.ends_with("# EOF\n"));
    // OpenMetrics: each family is described once.
    let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let n = types.len();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), n, "a metric family is declared twice:\n{text}");
}

/// Slow fills don't tie up the blocking pool: on a runtime with only 3 blocking threads, six
/// throttled fills all write to disk at the same time (with a thread per writer and hasher for
/// a fill's whole life, fills 2..6 would wait for fill 1 to end before writing a byte).
#[test]
fn slow_fills_share_a_small_blocking_pool() {
    let rt = small_blocking_pool(3);
    rt.block_on(async {
        let up = FakeUpstream::start(300).await;
        let blobs: Vec<(String, usize)> = (0..6)
            .map(|i| {
                let data = random_bytes(1_500_000, 40 + i);
                (up.add_blob(data.clone()), data.len())
            })
            .collect();
        // ~1 s per blob: 60 KB every 40 ms.
        up.set_faults(Faults {
            throttle: Some((60_000, Duration::from_millis(40))),
            ..Default::default()
        });
        let m = Mirror::start(&up, HOUR).await;
        let tasks: Vec<_> = blobs
            .iter()
            .map(|(d, _)| {
                let url = m.url(&format!("/v2/library/pool/blobs/{d}"));
                tokio::spawn(async move { get(&url).await })
            })
            .collect();
        // While all six fills are running, every temp file gets bytes.
        let tmp = m.store().root().join("tmp");
        let sizes = || -> Vec<u64> {
            std::fs::read_dir(&tmp)
                .map(|d| {
                    d.filter_map(|e| e.ok()?.metadata().ok())
                        .map(|md| md.len())
                        .collect()
                })
                .unwrap_or_default()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = sizes();
            if s.len() == 6 && s.iter().all(|&n| n > 0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "six fills never all wrote at once (temp file sizes {s:?})"
            );
            assert!(
                blobs.iter().all(|(d, _)| !m.has_blob(d)),
                "a fill finished before the others all wrote a byte (temp file sizes {s:?})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (t, (d, len)) in tasks.into_iter().zip(&blobs) {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.bytes().len(), *len);
            assert_eq!(&sha256(r.bytes()), d);
        }
    });
}
