//! Signatures and attestations through the mirror: OCI 1.1 referrers (cached, filtered here by
//! artifactType, 404 kept for the tag-schema fallback), digest-shaped tags, tag list pages — and
//! all of it served from the cache while the upstream is down.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

const SIG: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SBOM: &str = "application/spdx+json";

fn referrers_asked(up: &FakeUpstream) -> Vec<String> {
    up.counters.referrers.lock().unwrap().clone()
}

/// Referrers are cached per subject: asked upstream once (unfiltered) within tag_ttl, filtered
/// here by artifactType with `OCI-Filters-Applied`; HEAD answers like GET; the artifacts they
/// list are fetched and cached like any manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_cached_and_filtered_here() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/app", "v1", 5_000, 1);
    let sig = up.add_referrer(
        "library/app",
        &img.manifest_digest,
        SIG,
        b"sig-bundle",
        None,
    );
    let sbom = up.add_referrer(
        "library/app",
        &img.manifest_digest,
        SBOM,
        b"{\"spdx\":1}",
        None,
    );
    let m = Mirror::start(&up, Duration::from_secs(300)).await;
    let url = m.url(&format!(
        "/v2/library/app/referrers/{}",
        img.manifest_digest
    ));
    let all = get(&url).await;
    assert_eq!(all.status, 200);
    assert_eq!(
        all.header("content-type"),
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(all.header("oci-filters-applied"), "");
    let list = all.json();
    let digests: Vec<&str> = list["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, [sig.as_str(), sbom.as_str()]);
    let filtered = get(&format!("{url}?artifactType={}", SBOM.replace('+', "%2B"))).await;
    assert_eq!(filtered.status, 200);
    assert_eq!(filtered.header("oci-filters-applied"), "artifactType");
    let f = filtered.json();
    assert_eq!(f["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(f["manifests"][0]["digest"], sbom.as_str());
    let head = request("HEAD", &url, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), all.bytes().len().to_string());
    assert_eq!(
        referrers_asked(&up),
        [""],
        "one upstream request, unfiltered"
    );
    // The artifacts: manifests by digest and their blobs, cached like any other.
    for d in [&sig, &sbom] {
        let r = get(&m.url(&format!("/v2/library/app/manifests/{d}"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(sha256(r.bytes()), *d);
    }
    // Another subject, another repository: their own entries.
    let other = up.add_image("library/other", "v1", 1_000, 2);
    let r = get(&m.url(&format!(
        "/v2/library/other/referrers/{}",
        other.manifest_digest
    )))
    .await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 0);
    let r = get(&m.url(&format!(
        "/v2/library/other/referrers/{}",
        img.manifest_digest
    )))
    .await;
    assert_eq!(
        r.json()["manifests"].as_array().unwrap().len(),
        0,
        "never another repository's"
    );
    // A warm pull that does not ask for referrers asks the upstream nothing about them.
    let before = referrers_asked(&up).len();
    let r = get(&m.url("/v2/library/app/manifests/v1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(referrers_asked(&up).len(), before);
}

/// An upstream without the referrers API: the mirror answers 404 (not an empty 200, which would
/// hide the tag-schema fallback), remembers it a while, and the tag schema's digest-shaped tags
/// round-trip exactly (HEAD = GET).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_referrers_api_the_tag_schema_works() {
    let up = FakeUpstream::start(300).await;
    up.set_faults(Faults {
        no_referrers_api: true,
        ..Default::default()
    });
    let img = up.add_image("library/app", "v1", 5_000, 3);
    let hex = img
        .manifest_digest
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let sig_tag = format!("sha256-{hex}.sig");
    let att_tag = format!("sha256-{hex}.att");
    let sig = up.add_referrer(
        "library/app",
        &img.manifest_digest,
        SIG,
        b"sig",
        Some(&sig_tag),
    );
    let att = up.add_referrer(
        "library/app",
        &img.manifest_digest,
        SBOM,
        b"att",
        Some(&att_tag),
    );
    let m = Mirror::start(&up, Duration::ZERO).await;
    let url = m.url(&format!(
        "/v2/library/app/referrers/{}",
        img.manifest_digest
    ));
    for _ in 0..2 {
        let r = get(&url).await;
        assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(r.bytes()));
        assert!(r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("tag schema"));
    }
    assert_eq!(referrers_asked(&up).len(), 1, "the 404 is remembered");
    for (tag, digest) in [(&sig_tag, &sig), (&att_tag, &att)] {
        let u = m.url(&format!("/v2/library/app/manifests/{tag}"));
        let g = get(&u).await;
        assert_eq!(g.status, 200);
        assert_eq!(sha256(g.bytes()), **digest, "{tag}: exact bytes");
        assert_eq!(g.header("docker-content-digest"), digest.as_str());
        assert_eq!(
            g.header("content-type"),
            "application/vnd.oci.image.manifest.v1+json"
        );
        let h = request("HEAD", &u, &[]).await;
        assert_eq!(h.status, 200);
        for k in ["docker-content-digest", "content-type", "content-length"] {
            assert_eq!(h.header(k), g.header(k), "{tag}: HEAD {k}");
        }
    }
}

/// The upstream down: a signed image's referrers, its signature manifest (by digest and by its
/// digest-shaped tag) and the tag list are served from the cache (stale), byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_from_the_cache_during_an_outage() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/app", "v1", 5_000, 4);
    let hex = img
        .manifest_digest
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let sig_tag = format!("sha256-{hex}.sig");
    let sig = up.add_referrer(
        "library/app",
        &img.manifest_digest,
        SIG,
        b"bundle",
        Some(&sig_tag),
    );
    let m = Mirror::start(&up, Duration::ZERO).await;
    let referrers = m.url(&format!(
        "/v2/library/app/referrers/{}",
        img.manifest_digest
    ));
    let sig_by_tag = m.url(&format!("/v2/library/app/manifests/{sig_tag}"));
    let sig_by_digest = m.url(&format!("/v2/library/app/manifests/{sig}"));
    let tags = m.url("/v2/library/app/tags/list");
    let warm: Vec<_> = [&referrers, &sig_by_tag, &sig_by_digest, &tags]
        .into_iter()
        .map(|u| (u.clone(), ()))
        .collect();
    let mut before = Vec::new();
    for (u, _) in &warm {
        let r = get(u).await;
        assert_eq!(r.status, 200, "{u}");
        before.push(r.bytes().clone());
    }
    // The layer of the signature, too (a verifier reads it).
    let layer = serde_json::from_slice::<serde_json::Value>(&before[2]).unwrap()["layers"][0]
        ["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = get(&m.url(&format!("/v2/library/app/blobs/{layer}"))).await;
    assert_eq!(bundle.bytes().as_ref(), b"bundle");
    up.set_faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    let asked = up.counters.total.load(Ordering::SeqCst);
    for ((u, _), old) in warm.iter().zip(&before) {
        let r = get(u).await;
        assert_eq!(r.status, 200, "{u} during the outage");
        assert_eq!(r.bytes(), old, "{u}: the cached bytes");
    }
    let r = get(&m.url(&format!("/v2/library/app/blobs/{layer}"))).await;
    assert_eq!(r.bytes().as_ref(), b"bundle");
    assert!(
        up.counters.total.load(Ordering::SeqCst) > asked,
        "it did ask (and was refused)"
    );
    let metrics = get(&m.url("/metrics")).await;
    let text = String::from_utf8_lossy(metrics.bytes()).into_owned();
    assert!(
        text.contains("regcache_stale_answers_total{cause=\"upstream_error\"}"),
        "{text}"
    );
}

/// Tag list pages: each page cached by its query, the Link header kept, revalidated after
/// tag_ttl, never another repository's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_list_pages_are_cached_with_their_links() {
    let up = FakeUpstream::start(300).await;
    for t in ["a", "b", "c", "d", "e"] {
        up.add_image("library/app", t, 100, 5);
    }
    up.add_image("library/other", "z", 100, 6);
    let m = Mirror::start(&up, Duration::from_secs(300)).await;
    let page1 = get(&m.url("/v2/library/app/tags/list?n=2")).await;
    assert_eq!(page1.json()["tags"], serde_json::json!(["a", "b"]));
    let link = page1.header("link").to_owned();
    assert_eq!(link, "</v2/library/app/tags/list?n=2&last=b>; rel=\"next\"");
    let page2 = get(&m.url("/v2/library/app/tags/list?n=2&last=b")).await;
    assert_eq!(page2.json()["tags"], serde_json::json!(["c", "d"]));
    let all = get(&m.url("/v2/library/app/tags/list")).await;
    assert_eq!(all.json()["tags"].as_array().unwrap().len(), 5);
    assert_eq!(all.header("link"), "");
    let other = get(&m.url("/v2/library/other/tags/list")).await;
    assert_eq!(other.json()["tags"], serde_json::json!(["z"]));
    let asked = up.counters.tags_list.load(Ordering::SeqCst);
    assert_eq!(asked, 4);
    // Within tag_ttl: from the cache, each page with its own Link.
    let again = get(&m.url("/v2/library/app/tags/list?n=2")).await;
    assert_eq!(
        (again.bytes(), again.header("link")),
        (page1.bytes(), link.as_str())
    );
    assert_eq!(
        get(&m.url("/v2/library/app/tags/list?n=2&last=b"))
            .await
            .bytes(),
        page2.bytes()
    );
    assert_eq!(up.counters.tags_list.load(Ordering::SeqCst), asked);
    // An unknown repository is the upstream's 404, not cached as a list.
    let r = get(&m.url("/v2/library/nope/tags/list")).await;
    assert_eq!(r.status, 404);
}

/// `regcache prefetch --with-referrers`: an image, its signature, the signature's own
/// attestation (a referrer of a referrer) and their blobs are cached, so an offline mirror
/// answers a verifier's requests without the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_with_referrers_serves_verification_offline() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/signed", "v1", 20_000, 7);
    let sig = up.add_referrer("library/signed", &img.manifest_digest, SIG, b"sig-7", None);
    let att = up.add_referrer("library/signed", &sig, SBOM, b"att-of-sig", None);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args([
            "prefetch",
            "--with-referrers",
            "signed:v1",
            "--upstream",
            &up.url(),
        ])
        .args(["--redirect-host", &up.cdn.to_string()])
        .arg("--cache-dir")
        .arg(&cache)
        .envs(regcache::upstream::proxy::PROXY_ENV.map(|k| (k, "")))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 manifests, 2 referrers"), "{stdout}");
    let before = up.counters.total.load(Ordering::SeqCst);
    let m = Mirror::start_args(regcache::config::ServeArgs {
        upstream: Some(up.url()),
        cache_dir: Some(cache),
        offline: true,
        ..Default::default()
    })
    .await;
    for (subject, listed) in [(&img.manifest_digest, &sig), (&sig, &att)] {
        let r = get(&m.url(&format!("/v2/library/signed/referrers/{subject}"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["manifests"][0]["digest"], listed.as_str());
        let a = get(&m.url(&format!("/v2/library/signed/manifests/{listed}"))).await;
        assert_eq!(sha256(a.bytes()), **listed);
        let layer = a.json()["layers"][0]["digest"].as_str().unwrap().to_owned();
        assert_eq!(
            get(&m.url(&format!("/v2/library/signed/blobs/{layer}")))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        up.counters.total.load(Ordering::SeqCst),
        before,
        "offline: nothing upstream"
    );
}
