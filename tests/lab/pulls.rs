//! Pulls with real clients, checked against the test images (digests everywhere), for the
//! `tests/e2e_*.rs` scenarios. Each returns how long the client took.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::images::{sha256_digest, TestImage};
use super::upstream::Traffic;
use super::Lab;

/// `docker pull NAME:TAG` (a docker.io name: dockerd asks its registry mirror); the digest
/// it reports and the one `docker images --digests` shows must be the image's.
pub fn docker_pull(lab: &Lab, img: &TestImage, timeout: Duration) -> Duration {
    let started = Instant::now();
    let out = lab.dockerd().try_pull(&img.short_ref(), timeout);
    let took = started.elapsed();
    assert!(
        out.ok(),
        "`docker pull {}` failed after {:.1}s ({}).\nNote: on a mirror error dockerd falls back to \
         registry-1.docker.io, so the message may be about that host; see the regcache log.\n\
         stdout:\n{}\nstderr:\n{}",
        img.short_ref(),
        took.as_secs_f64(),
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains(img.digest()),
        "docker pull {} did not report digest {}:\n{}",
        img.short_ref(),
        img.digest(),
        out.stdout
    );
    let name = img.repo.trim_start_matches("library/");
    let rows = lab.dockerd().images_digests();
    assert!(
        rows.iter()
            .any(|(r, t, d)| r == name && *t == img.tag && d == img.digest()),
        "`docker images --digests` lacks {} {} {}: {rows:?}",
        name,
        img.tag,
        img.digest()
    );
    took
}

/// `ctr images pull --hosts-dir DIR REF`: every platform wanted is unpacked and `ctr images
/// ls` shows the image's digest.
pub fn ctr_pull(
    lab: &Lab,
    hosts_dir: &Path,
    reference: &str,
    img: &TestImage,
    platform: Option<&str>,
    timeout: Duration,
) -> Duration {
    let ctrd = lab.containerd();
    let all = img.is_multi() && platform.is_none();
    let started = Instant::now();
    let out = ctrd.try_pull(hosts_dir, reference, all, platform, timeout);
    let took = started.elapsed();
    assert!(
        out.ok(),
        "`ctr images pull {reference}` failed after {:.1}s ({}):\nstdout:\n{}\nstderr:\n{}",
        took.as_secs_f64(),
        out.status,
        out.stdout,
        out.stderr
    );
    let want = if all { img.platforms.len() } else { 1 };
    assert_eq!(
        out.stdout.matches("unpacking ").count(),
        want,
        "ctr pull {reference} should unpack {want} platform(s):\n{}",
        out.stdout
    );
    assert_eq!(
        ctrd.image_digest(reference).as_deref(),
        Some(img.digest()),
        "`ctr images ls` digest of {reference}"
    );
    took
}

/// `skopeo copy docker://REF dir:OUT` into a fresh directory, every blob checked.
pub fn skopeo_copy(lab: &Lab, reference: &str, img: &TestImage, timeout: Duration) -> Duration {
    let out = lab.fresh_dir(&format!(
        "skopeo-{}",
        reference.replace(['/', ':', '@'], "-")
    ));
    let started = Instant::now();
    let res = lab.skopeo.try_copy_to_dir(reference, &out, timeout);
    let took = started.elapsed();
    assert!(
        res.ok(),
        "`skopeo copy docker://{reference}` failed after {:.1}s ({}):\nstdout:\n{}\nstderr:\n{}",
        took.as_secs_f64(),
        res.status,
        res.stdout,
        res.stderr
    );
    check_dir_copy(img, &out);
    took
}

/// A skopeo `dir:` copy holds the image's manifest and every blob, byte for byte.
pub fn check_dir_copy(img: &TestImage, out: &Path) {
    let manifest = std::fs::read(out.join("manifest.json"))
        .unwrap_or_else(|e| panic!("skopeo dir copy of {} has no manifest.json: {e}", img.repo));
    assert_eq!(
        sha256_digest(&manifest),
        img.digest(),
        "skopeo: manifest digest of {}",
        img.repo
    );
    for digest in img.blob_digests() {
        let hex = digest.trim_start_matches("sha256:");
        let bytes = std::fs::read(out.join(hex))
            .unwrap_or_else(|e| panic!("skopeo dir copy of {} lacks blob {digest}: {e}", img.repo));
        assert_eq!(
            sha256_digest(&bytes),
            digest,
            "skopeo: blob content of {}",
            img.repo
        );
    }
}

/// Successful blob GETs per digest at a registry (status < 400, i.e. 200 or the CDN 307) and
/// GETs per digest at its CDN.
pub fn blob_gets(t: &Traffic) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut reg = BTreeMap::new();
    for r in t
        .registry
        .iter()
        .filter(|r| r.method == "GET" && r.is_blob() && r.status < 400)
    {
        *reg.entry(r.blob_digest().unwrap_or_default()).or_default() += 1;
    }
    let mut cdn = BTreeMap::new();
    for r in t.cdn.iter().filter(|r| r.method == "GET") {
        *cdn.entry(r.blob_digest().unwrap_or_default()).or_default() += 1;
    }
    (reg, cdn)
}

/// Asserts that each of `digests` was fetched exactly once at the registry and once at its
/// CDN, and nothing else was.
pub fn assert_each_blob_fetched_once(what: &str, t: &Traffic, digests: &[String]) {
    let (reg, cdn) = blob_gets(t);
    let want: BTreeMap<String, usize> = digests.iter().map(|d| (d.clone(), 1)).collect();
    assert_eq!(
        reg,
        want,
        "{what}: successful registry blob GETs per digest (want exactly one each); requests:\n{}",
        t.listing()
    );
    assert_eq!(
        cdn,
        want,
        "{what}: CDN GETs per digest (want exactly one each); requests:\n{}",
        t.listing()
    );
}
