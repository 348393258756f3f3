//! Hostile and broken clients and upstreams: garbage in never means a panic, a hang, a wrong
//! byte or a lost cache; each test here fails on a mirror without the guard it names.

mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use regcache::config::ServeArgs;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn args(up: &FakeUpstream) -> ServeArgs {
    ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        tag_ttl: Some(Duration::ZERO),
        revalidate_timeout: Some(Duration::from_millis(700)),
        ..Default::default()
    }
}

/// A fake upstream and a mirror on it, with `set` applied to the mirror's flags.
async fn mirror_with(set: impl FnOnce(&mut ServeArgs)) -> (FakeUpstream, Mirror) {
    let up = FakeUpstream::start(300).await;
    let mut a = args(&up);
    set(&mut a);
    let m = Mirror::start_args(a).await;
    (up, m)
}

/// Two `ns=` name two registries: refused, nothing goes upstream.
#[tokio::test]
async fn a_second_ns_is_refused() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/ns", "v1", 100, 1);
    let m = Mirror::start_args(args(&up)).await;
    let r = get(&m.url("/v2/library/ns/manifests/v1?ns=docker.io&ns=docker.io")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errors"][0]["code"], "NAME_INVALID");
    assert_eq!(n(&up.counters.total), 0, "nothing upstream");
}

/// An upstream whose response head no client would read is a bad gateway (502), not an
/// outage (503).
#[tokio::test]
async fn an_oversized_upstream_head_is_a_bad_gateway() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/big", "v1", 100, 2);
    up.set_faults(Faults {
        huge_headers: true,
        ..Default::default()
    });
    let m = Mirror::start_args(args(&up)).await;
    let r = get(&m.url("/v2/library/big/manifests/v1")).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
}

/// An upstream 404 on the referrers API is answered with an OCI error body of regcache's own,
/// not whatever page the upstream sent.
#[tokio::test]
async fn an_upstream_referrers_404_gets_an_oci_body() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/rf", "v1", 100, 3);
    up.set_faults(Faults {
        no_referrers_api: true,
        ..Default::default()
    });
    let m = Mirror::start_args(args(&up)).await;
    let r = get(&m.url(&format!("/v2/library/rf/referrers/{}", img.manifest_digest))).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json()["errors"][0]["code"], "UNSUPPORTED");
}

/// Emptying the cache directory while the mirror runs does not stop caching: tmp/ comes back.
#[tokio::test]
async fn caching_goes_on_after_the_cache_directory_is_emptied() {
    let up = FakeUpstream::start(300).await;
    let a = up.add_blob(random_bytes(50_000, 4));
    let b = up.add_blob(random_bytes(50_000, 5));
    let m = Mirror::start_args(args(&up)).await;
    m.fill_blobs("library/e", std::slice::from_ref(&a)).await;
    for e in std::fs::read_dir(m.store().root()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap(); // the admin socket
        }
    }
    m.fill_blobs("library/e", std::slice::from_ref(&b)).await;
}

/// `revalidate_timeout` bounds the whole revalidation of a cached tag, a token fetch whose
/// answer trickles included: the cached answer is served stale within it, not after the 60 s
/// body idle timeout.
#[tokio::test]
async fn a_trickling_token_endpoint_cannot_hold_a_cached_tag() {
    let up = FakeUpstream::start(1).await;
    let img = up.add_image("library/tt", "v1", 100, 6);
    let m = Mirror::start_args(args(&up)).await;
    let url = m.url("/v2/library/tt/manifests/v1");
    assert_eq!(get(&url).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await; // the 1 s token has expired
    up.set_faults(Faults {
        stall_token: true,
        ..Default::default()
    });
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), get(&url))
        .await
        .expect("answered within 10 s");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stale within the revalidation bound, took {:?}",
        t.elapsed()
    );
}

/// An upstream that sends a byte and cuts, every time, is given up on after a few resumes:
/// a byte of progress is not progress enough to start counting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cuts_after_every_byte_is_given_up_on() {
    let up = FakeUpstream::start(300).await;
    let d = up.add_blob(random_bytes(200_000, 7));
    up.set_faults(Faults {
        cut_every: Some(1),
        ..Default::default()
    });
    let m = Mirror::start_args(args(&up)).await;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        get(&m.url(&format!("/v2/library/cut/blobs/{d}"))),
    )
    .await
    .expect("the fill gives up instead of resuming for ever");
    assert!(r.body.is_err() || r.status != 200, "never a complete body");
    eventually("fill ended", || m.fills_idle()).await;
    assert!(!m.has_blob(&d));
}

/// A download trickling below `min_fill_rate` is treated as stalled (resumed, then given up),
/// so it cannot hold a digest that every later client would coalesce onto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_download_is_given_up_on() {
    let up = FakeUpstream::start(300).await;
    let d = up.add_blob(random_bytes(100_000, 8));
    up.set_faults(Faults {
        throttle: Some((100, Duration::from_millis(100))), // ~1 KB/s
        ..Default::default()
    });
    let m = Mirror::start_args(ServeArgs {
        idle_timeout: Some(Duration::from_millis(500)),
        min_fill_rate: Some(10 << 10),
        ..args(&up)
    })
    .await;
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        get(&m.url(&format!("/v2/library/tr/blobs/{d}"))),
    )
    .await
    .expect("the trickle is given up on well before it would end (100 s)");
    assert!(r.body.is_err(), "cut short, never complete");
    assert!(t.elapsed() < Duration::from_secs(20));
    eventually("fill ended", || m.fills_idle()).await;
}

/// A fill is counted against `max_size` as its bytes arrive, never for its whole
/// `Content-Length` up front: a download announcing 900 kB that sends 1 kB and stalls evicts
/// nothing from a 1 MB cache holding 500 kB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_that_never_comes_evicts_nothing() {
    let up = FakeUpstream::start(300).await;
    let small: Vec<String> = (0..5)
        .map(|i| up.add_blob(random_bytes(100_000, 20 + i)))
        .collect();
    let big = up.add_blob(random_bytes(900_000, 30));
    let m = Mirror::start_args(ServeArgs {
        max_size: Some(1_000_000),
        ..args(&up)
    })
    .await;
    m.fill_blobs("library/s", &small).await;
    up.set_faults(Faults {
        stall_after: Some(1000),
        ..Default::default()
    });
    let url = m.url(&format!("/v2/library/s/blobs/{big}"));
    let stalled = tokio::spawn(async move { get(&url).await });
    eventually("the big fill started", || !m.fills_idle()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for d in &small {
        assert!(m.has_blob(d), "evicted for bytes that never came: {d}");
    }
    stalled.abort();
}

/// After an outage the upstream is used again as soon as it answers: while it is down,
/// uncached requests fail fast and cached content is served at once, one probe per interval
/// goes through, and the first answer ends the outage (not a fixed back-off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncached_pull_works_within_a_second_of_the_upstream_coming_back() {
    let up = FakeUpstream::start(300).await;
    let warm = up.add_image("library/warm", "v1", 1000, 40);
    up.add_image("library/cold", "v1", 1000, 41);
    // A 2 s timeout: failing fast (and serving cached content) is told from waiting for the
    // timeout with a wide margin, even on a loaded machine.
    let m = Mirror::start_args(ServeArgs {
        revalidate_timeout: Some(Duration::from_secs(2)),
        outage_backoff: Some(Duration::from_secs(60)),
        outage_probe_interval: Some(Duration::from_millis(200)),
        ..args(&up)
    })
    .await;
    let tag = m.url("/v2/library/warm/manifests/v1");
    let blob = m.url(&format!("/v2/library/warm/blobs/{}", warm.layer_digest));
    let cold = m.url("/v2/library/cold/manifests/v1");
    assert_eq!(get(&tag).await.status, 200);
    assert_eq!(get(&blob).await.status, 200);
    up.set_faults(Faults {
        blackhole: true,
        ..Default::default()
    });
    // Timeouts in a row open the circuit; then uncached requests fail fast.
    for _ in 0..3 {
        assert_eq!(get(&cold).await.status, 503);
    }
    let t = std::time::Instant::now();
    let r = get(&cold).await;
    assert_eq!(r.status, 503);
    assert!(!r.header("retry-after").is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "fail fast: {:?}",
        t.elapsed()
    );
    // Cached content is never delayed by the outage (nor by probing).
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let r = get(&tag).await;
        assert_eq!(r.header("docker-content-digest"), warm.manifest_digest);
        assert_eq!(sha256(get(&blob).await.bytes()), warm.layer_digest);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "cached: {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    up.set_faults(Faults::default());
    let back = std::time::Instant::now();
    loop {
        if get(&cold).await.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "still failing 5 s after the upstream came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        back.elapsed() <= Duration::from_secs(1),
        "an uncached pull worked {:?} after the upstream came back (target ≤ 1 s)",
        back.elapsed()
    );
}

/// One slow repository does not back off the whole upstream: a single request timing out
/// leaves every other repository's cold pulls going upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_request_does_not_back_off_the_upstream() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/slow", "v1", 1000, 42);
    up.add_image("library/other", "v1", 1000, 43);
    let m = Mirror::start_args(ServeArgs {
        revalidate_timeout: Some(Duration::from_millis(300)),
        ..args(&up)
    })
    .await;
    up.set_faults(Faults {
        blackhole: true,
        ..Default::default()
    });
    assert_eq!(
        get(&m.url("/v2/library/slow/manifests/v1")).await.status,
        503
    );
    up.set_faults(Faults::default());
    assert_eq!(
        get(&m.url("/v2/library/other/manifests/v1")).await.status,
        200,
        "other repositories still go upstream after one timeout"
    );
}

/// A range of a blob being filled carries only verified bytes: from an upstream that corrupts
/// the blob, a range that ends before the last byte is refused, never a complete 206 of wrong
/// bytes (nor is the blob cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_a_fill_never_carries_unverified_bytes() {
    let up = FakeUpstream::start(300).await;
    let (d, data) = up.add_random_blob(200_000, 44);
    up.set_faults(Faults {
        corrupt: vec![d.clone()],
        corrupt_first: true,
        ..Default::default()
    });
    let m = Mirror::start_args(args(&up)).await;
    let url = m.url(&format!("/v2/library/rg/blobs/{d}"));
    let r = request("GET", &url, &[("range", "bytes=0-9")]).await;
    match (&r.body, r.status.as_u16()) {
        (Ok(b), 206) => panic!("a complete 206 from a blob that fails verification: {b:?}"),
        (Ok(b), 200) => panic!("a complete 200 of {} bytes", b.len()),
        _ => {}
    }
    assert_eq!(r.status, 502, "the digest mismatch is a bad gateway");
    assert!(!m.has_blob(&d));
    // The same range from an honest upstream: the exact bytes.
    up.set_faults(Faults::default());
    let r = request("GET", &url, &[("range", "bytes=0-9")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(&r.bytes()[..], &data[..10]);
}

/// A range of a blob too large to cache is asked of upstream as that range: three one-byte
/// ranges of a 3 MB blob cost a few hundred kB upstream, not 9 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_an_uncacheable_blob_goes_upstream_as_a_range() {
    let up = FakeUpstream::start(300).await;
    let (d, data) = up.add_random_blob(3_000_000, 45);
    up.set_faults(Faults {
        throttle: Some((64 << 10, Duration::from_millis(2))),
        ..Default::default()
    });
    let m = Mirror::start_args(ServeArgs {
        max_size: Some(1_000_000),
        ..args(&up)
    })
    .await;
    let url = m.url(&format!("/v2/library/big/blobs/{d}"));
    for _ in 0..3 {
        let r = request("GET", &url, &[("range", "bytes=-1")]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), "bytes 2999999-2999999/3000000");
        assert_eq!(&r.bytes()[..], &data[2_999_999..]);
    }
    eventually("fills ended", || m.fills_idle()).await;
    let sent = n(&up.counters.cdn_bytes);
    assert!(
        sent < 2_000_000,
        "{sent} bytes from upstream for 3 bytes served"
    );
    assert!(!m.has_blob(&d));
}

/// A listener on another loopback address standing in for an internal service; counts the
/// connections it gets (and answers them with a small JSON document, like a `_catalog`).
async fn internal_service() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n{\"repositories\":[\"secret\"]}",
                )
                .await;
        }
    });
    (addr, hits)
}

/// An upstream whose blob GETs redirect to `path` on an internal service; returns it, a blob's
/// digest and the service's connection counter.
async fn redirecting_to_internal(
    seed: u64,
    path: &str,
) -> (
    FakeUpstream,
    String,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let up = FakeUpstream::start(300).await;
    let d = up.add_blob(random_bytes(1000, seed));
    let (internal, hits) = internal_service().await;
    up.set_faults(Faults {
        redirect_to: Some(format!("http://{internal}{path}")),
        ..Default::default()
    });
    (up, d, hits)
}

/// A redirect into private or loopback space (another host than the registry's) is refused
/// before any connection: a hostile upstream cannot read internal services through the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_into_internal_space_is_refused() {
    let (up, d, hits) = redirecting_to_internal(46, "/v2/_catalog").await;
    let m = Mirror::start_args(args(&up)).await;
    let r = get(&m.url(&format!("/v2/library/ssrf/blobs/{d}"))).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    let msg = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("redirect") && msg.contains("redirect_hosts"),
        "{msg}"
    );
    assert!(!msg.contains("secret"));
    assert_eq!(n(&hits), 0, "no connection to the internal address");
}

/// `redirect_hosts` lets a registry's redirects reach a private host on purpose (a CDN or
/// object store on the site's network).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_hosts_allow_a_private_redirect_target() {
    let (up, d, hits) = redirecting_to_internal(47, "/blob").await;
    let m = Mirror::start_with_config(&format!(
        "revalidate_timeout = \"700ms\"\n[upstream]\nurl = \"{}\"\nredirect_hosts = [\"127.0.0.2\"]\n",
        up.url()
    ))
    .await;
    let _ = get(&m.url(&format!("/v2/library/ok/blobs/{d}"))).await;
    assert!(n(&hits) >= 1, "the allowed host was asked");
}

/// Stalled readers of uncached (pass-through) downloads hold no blocking-pool thread: with
/// six such downloads stalled on a runtime of 3 blocking threads, another cold blob still fills.
#[test]
fn stalled_pass_through_readers_hold_no_thread() {
    let rt = small_blocking_pool(3);
    rt.block_on(async {
        let up = FakeUpstream::start(300).await;
        let big = up.add_blob(random_bytes(32 << 20, 48));
        let small = up.add_blob(random_bytes(200_000, 49));
        let m = Mirror::start_args(ServeArgs {
            max_size: Some(4 << 20),
            ..args(&up)
        })
        .await;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        // Six clients of the uncached blob read a little, then stop reading.
        let mut stalled = Vec::new();
        for _ in 0..6 {
            let url = m.url(&format!("/v2/library/p/blobs/{big}"));
            let resp = client.get(url.parse().unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let _ = body.frame().await;
            stalled.push(body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            get(&m.url(&format!("/v2/library/p/blobs/{small}"))),
        )
        .await
        .expect("a cold fill goes on while uncached downloads are stalled");
        assert_eq!(sha256(r.bytes()), small);
        drop(stalled);
    });
}

/// A client that sends part of the HTTP/2 preface and stops is dropped after the header
/// timeout (protocol detection is bounded), like one that sends nothing.
#[tokio::test]
async fn a_partial_http2_preface_is_dropped_after_the_header_timeout() {
    let (_up, m) = mirror_with(|a| a.header_read_timeout = Some(Duration::from_millis(500))).await;
    for prefix in [&b"P"[..], b"PRI ", b"PRI * HTTP/2.0\r\n"] {
        let mut s = tokio::net::TcpStream::connect(m.addr).await.unwrap();
        s.write_all(prefix).await.unwrap();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "after {prefix:?} the connection must be closed, got {r:?}"
        );
    }
}

/// Past `max_connections` a connection gets a clear 503 and is closed, and the capacity comes
/// back as soon as a connection ends.
#[tokio::test]
async fn connections_past_the_cap_get_a_503() {
    let (_up, m) = mirror_with(|a| a.max_connections = Some(4)).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(m.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(&m.url("/v2/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["errors"][0]["code"], "UNAVAILABLE");
    assert_eq!(r.header("retry-after"), "1");
    idle.pop();
    eventually_async("a slot is free again", || async {
        get(&m.url("/v2/")).await.status == 200
    })
    .await;
}

/// A range to the end of a blob being filled (a client resuming with `bytes=N-`) follows the
/// fill: its headers come at once, not when the whole blob has arrived (its last byte is held
/// back until the digest verifies, as for a whole GET).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_range_of_a_fill_starts_at_once() {
    let up = FakeUpstream::start(300).await;
    let (d, data) = up.add_random_blob(2_000_000, 50);
    up.set_faults(Faults {
        throttle: Some((50_000, Duration::from_millis(100))), // ~4 s for the blob
        ..Default::default()
    });
    let m = Mirror::start_args(args(&up)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(m.url(&format!("/v2/library/rs/blobs/{d}")))
        .header("range", "bytes=1000-")
        .body(http_body_util::Empty::new())
        .unwrap();
    let t = std::time::Instant::now();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 206);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "headers after {:?}: the range waited for the whole fill",
        t.elapsed()
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], &data[1000..]);
}

/// A token realm in internal space is refused like a redirect there: no request (and no
/// credentials) goes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_in_internal_space_is_refused() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/realm", "v1", 100, 51);
    let (internal, hits) = internal_service().await;
    up.set_faults(Faults {
        realm: Some(format!("http://{internal}/token")),
        ..Default::default()
    });
    let m = Mirror::start_args(args(&up)).await;
    let r = get(&m.url("/v2/library/realm/manifests/v1")).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(n(&hits), 0, "nothing sent to the internal realm");
}

/// An idle keep-alive connection (no request in progress) is closed after
/// `client_idle_timeout`, over HTTP/1.1 and over HTTP/2 (where the client answering pings
/// would otherwise keep it for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed() {
    let (_up, m) = mirror_with(|a| a.client_idle_timeout = Some(Duration::from_millis(500))).await;
    // HTTP/1.1: one request, then nothing.
    let mut s = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "HTTP/1.1 idle connection kept: {r:?}"
    );
    // HTTP/2 (prior knowledge): one request, then only the connection's own pings.
    let tcp = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get(m.url("/v2/"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "HTTP/2 idle connection kept open");
}

/// A manifest larger than `max_manifest_size` is refused (502) and never cached.
#[tokio::test]
async fn a_manifest_over_the_size_limit_is_refused() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/huge", "v1", 100, 52);
    let m = Mirror::start_args(ServeArgs {
        max_manifest_size: Some(64),
        ..args(&up)
    })
    .await;
    let r = get(&m.url("/v2/library/huge/manifests/v1")).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(m.store().index().usage().objects, 0, "nothing cached");
}

/// A client that stops reading a response (or takes it a few bytes at a time) has its
/// connection closed after `client_idle_timeout`, instead of holding it (and its file) for
/// ever: the response ends (and is counted) on the server while the client still sits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped() {
    let up = FakeUpstream::start(300).await;
    let d = up.add_blob(random_bytes(32 << 20, 53));
    let m = Mirror::start_args(ServeArgs {
        client_idle_timeout: Some(Duration::from_secs(1)),
        ..args(&up)
    })
    .await;
    m.fill_blobs("library/slow", std::slice::from_ref(&d)).await;
    let hits = || m.app.figures().requests[0].0;
    assert_eq!(hits(), 0);
    let mut s = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    s.write_all(format!("GET /v2/library/slow/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let _ = s.read(&mut buf).await.unwrap();
    // Then a byte now and then.
    let t = std::time::Instant::now();
    while hits() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the stalled response is still being served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let _ = s.read(&mut buf[..1]).await;
    }
}

/// Shutdown does not wait for a connection that never sent a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_silent_connections() {
    let (_up, m) = mirror_with(|_| {}).await;
    let _silent = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    let _ = m.stop().await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        t.elapsed()
    );
}

/// An HTTP/2 client that grants no flow-control credit makes hyper stop asking responses for
/// bytes, so nothing ever reaches the socket: its connection is closed after
/// `client_idle_timeout`, both while a large response waits to be asked for more and after a
/// small one sits whole in the send buffer (where a graceful close would wait for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_granting_no_credit_are_dropped() {
    let up = FakeUpstream::start(300).await;
    let big = up.add_blob(random_bytes(4 << 20, 54));
    let small = up.add_blob(random_bytes(60_000, 55));
    let m = Mirror::start_args(ServeArgs {
        client_idle_timeout: Some(Duration::from_secs(1)),
        ..args(&up)
    })
    .await;
    m.fill_blobs("library/credit", &[big.clone(), small.clone()])
        .await;
    for d in [big, small] {
        let tcp = tokio::net::TcpStream::connect(m.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(0)
                .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(
                    tcp,
                ))
                .await
                .unwrap();
        let driver = tokio::spawn(conn);
        let url = m.url(&format!("/v2/library/credit/blobs/{d}"));
        let resp = send
            .send_request(http::Request::get(url).body(Default::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let ended = tokio::time::timeout(Duration::from_secs(8), driver).await;
        assert!(
            ended.is_ok(),
            "connection granting no credit kept open ({d})"
        );
        drop(resp);
    }
}

/// Another port of the upstream's own host is another service: a redirect there (here the
/// fake's CDN, on loopback) is refused unless `redirect_hosts` names it, so a hostile upstream
/// on a shared host cannot read or probe the mirror host's other ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_port_of_the_upstream_host_needs_redirect_hosts() {
    let up = FakeUpstream::start(300).await;
    let d = up.add_blob(random_bytes(1000, 56));
    let m = Mirror::start_args(ServeArgs {
        redirect_host: Vec::new(),
        ..args(&up)
    })
    .await;
    let r = get(&m.url(&format!("/v2/library/port/blobs/{d}"))).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    let msg = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&format!("redirect_hosts = [\"{}\"]", up.cdn)),
        "{msg}"
    );
    assert_eq!(
        n(&up.counters.cdn_get),
        0,
        "nothing asked of the other port"
    );
    // Named in redirect_hosts, it is followed.
    let m = Mirror::start_args(args(&up)).await;
    let r = get(&m.url(&format!("/v2/library/port/blobs/{d}"))).await;
    assert_eq!(r.status, 200);
}

/// Sends `raw` on a fresh connection and returns everything the mirror answers before it
/// closes (or goes quiet for a second).
async fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Request shapes a proxy in front of regcache might frame differently (a body on a GET, both
/// Content-Length and Transfer-Encoding, repeated lengths or Hosts, obfuscated encodings, bare
/// LF line ends) are answered with one 400 and the connection closed: the request hidden
/// behind them is never served. A plain pipelined pair still gets both answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_shapes_are_refused() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/smuggled", "v1", 100, 57);
    let m = Mirror::start_args(args(&up)).await;
    let second = "GET /v2/library/smuggled/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n";
    // Status lines (a body without a final newline runs into the next one).
    let statuses = |answer: &str| -> Vec<String> {
        answer
            .match_indices("HTTP/1.")
            .map(|(i, _)| answer[i..].chars().take(12).collect::<String>())
            .filter(|l| l.len() == 12 && l[9..].bytes().all(|b| b.is_ascii_digit()))
            .collect()
    };
    let pair = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n{second}");
    let answer = raw_exchange(m.addr, pair.as_bytes()).await;
    assert_eq!(statuses(&answer).len(), 2, "pipelining works: {answer}");
    let before = n(&up.counters.total);
    let shapes = [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        "Content-Length: 0\r\nContent-Length: 60\r\n\r\n",
        "Content-Length: 60\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        "X: a\r\n  folded\r\n\r\n",
        "Host: y\r\n\r\n",
    ];
    for shape in shapes {
        let raw = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{shape}{second}");
        let answer = raw_exchange(m.addr, raw.as_bytes()).await;
        let got = statuses(&answer);
        assert_eq!(got.len(), 1, "{shape:?}: {answer}");
        assert!(got[0].starts_with("HTTP/1.1 400"), "{shape:?}: {answer}");
    }
    for raw in [
        format!("GET /v2/ HTTP/1.1\nHost: x\nContent-Length: 60\n\n{second}"),
        format!("GET /v2/ HTTP/1.1\r\n\r\n{second}"),
        format!("GET /v2/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{second}"),
    ] {
        let answer = raw_exchange(m.addr, raw.as_bytes()).await;
        let got = statuses(&answer);
        assert_eq!(got.len(), 1, "{raw:?}: {answer}");
        assert!(got[0].ends_with(" 400"), "{raw:?}: {answer}");
    }
    assert_eq!(
        n(&up.counters.total),
        before,
        "the hidden request never went upstream"
    );
}

/// Path traversal in every encoding (percent-encoded dots and slashes in either case, double
/// encoding, backslashes, overlong UTF-8, NUL, literal dot segments, empty segments) in every
/// part of a path — repository, reference, digest, registry prefix, `ns=` — is refused with an
/// OCI error before the filesystem or the upstream is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_in_every_encoding_is_refused() {
    let up = FakeUpstream::start(300).await;
    let m = Mirror::start_args(args(&up)).await;
    let hex = "ab".repeat(32);
    let paths = [
        "/v2/library/%2e%2e/%2e%2e/blobs/sha256:HEX".to_owned(),
        "/v2/library/%2E%2E/manifests/v1".to_owned(),
        "/v2/library/..%2f..%2fetc/manifests/v1".to_owned(),
        "/v2/library/..%2F..%2Fetc/manifests/v1".to_owned(),
        "/v2/%2e%2e/manifests/v1".to_owned(),
        "/v2/library/%252e%252e/manifests/v1".to_owned(),
        "/v2/library/..%5c..%5cetc/manifests/v1".to_owned(),
        "/v2/library/..\\..\\etc/manifests/v1".to_owned(),
        "/v2/library/%c0%ae%c0%ae/manifests/v1".to_owned(),
        "/v2/library/a%00b/manifests/v1".to_owned(),
        "/v2/library/../a/manifests/v1".to_owned(),
        "/v2/library/./a/manifests/v1".to_owned(),
        "/v2/library//a/manifests/v1".to_owned(),
        "/v2/../../etc/passwd/manifests/v1".to_owned(),
        "/v2/library/a/manifests/..%2f..%2fetc%2fpasswd".to_owned(),
        "/v2/library/a/manifests/sha256:../../../../etc/passwd".to_owned(),
        "/v2/library/a/blobs/sha256:..%2f..%2fHEX".to_owned(),
        "/v2/library/a/blobs/sha256%3aHEX".to_owned(),
        "/v2/library/a/blobs/sha256:HEX%2f..".to_owned(),
        "/v2/library/a/referrers/..%2f..%2fetc".to_owned(),
        "/v2/..%2f..%2fetc/library/a/manifests/v1".to_owned(),
        "/v2/library/a/manifests/v1?ns=..%2f..%2fetc".to_owned(),
        "/v2/library/a/manifests/v1?ns=../..".to_owned(),
    ];
    for p in paths {
        let p = p.replace("HEX", &hex);
        let raw = format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(m.addr, raw.as_bytes()).await;
        let status = answer.split(' ').nth(1).unwrap_or("");
        assert!(
            matches!(status, "400" | "404"),
            "{p}: {}",
            answer.lines().next().unwrap_or("")
        );
        assert!(
            answer.contains("\"errors\""),
            "{p}: not an OCI error: {answer}"
        );
    }
    assert_eq!(n(&up.counters.total), 0, "nothing went upstream");
    assert_eq!(m.store().index().usage().objects, 0);
}

/// One raw HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A HEADERS block for `GET http://x/v2/` (HPACK: static-table names, literal values).
fn h2_get_v2() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, 4];
    b.extend_from_slice(b"/v2/");
    b.extend_from_slice(&[0x01, 1, b'x']);
    b
}

/// Reads frames until the connection closes (or `limit` passes); returns the frame types seen
/// and the server's SETTINGS (identifier, value) pairs.
async fn h2_read_until_closed(
    s: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (Vec<u8>, Vec<(u16, u32)>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    let (mut kinds, mut settings, mut at) = (Vec::new(), Vec::new(), 0);
    while at + 9 <= buf.len() {
        let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
        let (kind, flags) = (buf[at + 3], buf[at + 4]);
        let payload = &buf[at + 9..(at + 9 + len).min(buf.len())];
        if kind == 0x4 && flags & 1 == 0 {
            for p in payload.chunks_exact(6) {
                settings.push((
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                ));
            }
        }
        kinds.push(kind);
        at += 9 + len;
    }
    (kinds, settings, closed)
}

/// HTTP/2 limits hold against raw frames: the server advertises at most 128 concurrent
/// streams and a 16 KiB header list; a rapid-reset flood (HEADERS + RST_STREAM, 2,000 times)
/// and a CONTINUATION flood (10 MiB of header fragments) each end with the connection closed
/// within seconds; and the mirror goes on answering everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_are_cut_and_limits_advertised() {
    let (_up, m) = mirror_with(|_| {}).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // Rapid reset.
    let mut s = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    let mut out = preface.to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        out.extend(h2_frame(0x1, 0x5, id, &h2_get_v2()));
        out.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&out).await;
    let (kinds, settings, closed) = h2_read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "rapid reset: connection kept");
    assert!(kinds.contains(&0x7), "rapid reset: no GOAWAY: {kinds:?}");
    assert!(
        settings.contains(&(0x3, 128)),
        "max concurrent streams: {settings:?}"
    );
    assert!(
        settings.contains(&(0x6, 16384)),
        "max header list size: {settings:?}"
    );
    // CONTINUATION flood: one header block that never ends.
    let mut s = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    let mut out = preface.to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    out.extend(h2_frame(0x1, 0x1, 1, &h2_get_v2()));
    let _ = s.write_all(&out).await;
    let junk = {
        let mut b = Vec::new();
        for _ in 0..64 {
            b.extend_from_slice(&[0x40, 5]);
            b.extend_from_slice(b"x-aaa");
            b.extend_from_slice(&[8]);
            b.extend_from_slice(b"bbbbbbbb");
        }
        b
    };
    let flood = async {
        for _ in 0..10_000 {
            if s.write_all(&h2_frame(0x9, 0, 1, &junk)).await.is_err() {
                return true;
            }
        }
        false
    };
    let cut = tokio::time::timeout(Duration::from_secs(10), flood).await;
    if !matches!(cut, Ok(true)) {
        let (_, _, closed) = h2_read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "CONTINUATION flood: connection kept");
    }
    // Everyone else is still served.
    assert_eq!(get(&m.url("/v2/")).await.status, 200);
}
