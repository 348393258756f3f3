//! End-to-end tests with real clients: dockerd, containerd (ctr) and skopeo pull the test
//! images through the mirror from a Docker-Hub-like upstream (token auth, CDN redirects).
//! See `tests/lab/mod.rs` for the lab and its environment variables; `scripts/test-all`
//! installs the tools (as root) and runs everything with `REGCACHE_E2E=require`.

mod lab;

use std::collections::BTreeMap;
use std::path::Path;

use lab::images::{sha256_digest, TestImage};
use lab::upstream::Traffic;
use lab::{say, step, Lab};

/// Pulls every test image with dockerd (`docker pull NAME:TAG`, docker.io → mirror) and
/// checks `docker images --digests` against the upstream digests.
fn docker_pulls(lab: &Lab) {
    let docker = lab.dockerd();
    for img in &lab.images {
        let out = docker.pull(&img.short_ref());
        assert!(
            out.stdout.contains(img.digest()),
            "docker pull {} did not report digest {}:\n{}",
            img.short_ref(),
            img.digest(),
            out.stdout
        );
    }
    let rows = docker.images_digests();
    for img in &lab.images {
        let name = img.repo.trim_start_matches("library/");
        let row = rows
            .iter()
            .find(|(repo, tag, _)| repo == name && *tag == img.tag)
            .unwrap_or_else(|| {
                panic!("{} missing from `docker images`: {rows:?}", img.short_ref())
            });
        assert_eq!(
            row.2,
            img.digest(),
            "`docker images --digests` digest of {}",
            img.short_ref()
        );
    }
}

/// Pulls every test image with `ctr images pull --hosts-dir` (sends `?ns=docker.io` to the
/// mirror; all platforms for the index) and checks the resolved digests.
fn ctr_pulls(lab: &Lab) {
    let ctrd = lab.containerd();
    for img in &lab.images {
        let reference = img.docker_io_ref();
        let out = ctrd.pull(&reference, img.is_multi());
        let unpacked = out.stdout.matches("unpacking ").count();
        assert_eq!(
            unpacked,
            img.platforms.len(),
            "ctr pull {reference} should unpack every platform:\n{}",
            out.stdout
        );
        assert_eq!(
            ctrd.image_digest(&reference).as_deref(),
            Some(img.digest()),
            "`ctr images ls` digest of {reference}"
        );
    }
}

/// Copies every test image with `skopeo copy [--all] docker://MIRROR/... dir:OUT` into fresh
/// directories and checks the manifest digest and the blobs received.
fn skopeo_copies(lab: &Lab, phase: &str) {
    let mirror = lab.mirror_addr();
    for img in &lab.images {
        let out = lab.fresh_dir(&format!("skopeo-{phase}-{}", img.repo.replace('/', "-")));
        let reference = format!("{mirror}/{}:{}", img.repo, img.tag);
        lab.skopeo.copy_to_dir(&reference, &out, img.is_multi());
        check_dir_copy(img, &out);
    }
}

fn check_dir_copy(img: &TestImage, out: &Path) {
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

/// Runs the three clients, returning the upstream traffic each caused.
fn pull_with_all_clients(lab: &mut Lab, phase: &str) -> Vec<(&'static str, Traffic)> {
    let mut traffic = Vec::new();
    let steps: [(&'static str, fn(&Lab, &str)); 3] = [
        ("docker pull", |lab, _| docker_pulls(lab)),
        ("ctr images pull", |lab, _| ctr_pulls(lab)),
        ("skopeo copy", skopeo_copies),
    ];
    for (name, f) in steps {
        let mark = lab.upstream().mark();
        step(&format!("{name} ({phase})"), || f(lab, phase));
        lab.assert_alive();
        let t = lab.upstream().since(&mark);
        say(format!(
            "    upstream traffic during {name} ({phase}): {}",
            t.summary()
        ));
        traffic.push((name, t));
    }
    traffic
}

fn merged(parts: &[(&'static str, Traffic)]) -> Traffic {
    let mut all = Traffic::default();
    for (_, t) in parts {
        all.registry.extend(t.registry.iter().cloned());
        all.cdn.extend(t.cdn.iter().cloned());
    }
    all
}

fn remove_local_copies(lab: &Lab) {
    let docker_refs: Vec<String> = lab.images.iter().map(TestImage::short_ref).collect();
    lab.dockerd().rmi(&docker_refs);
    let ctr_refs: Vec<String> = lab.images.iter().map(TestImage::docker_io_ref).collect();
    lab.containerd().remove_all(&ctr_refs);
}

#[test]
fn real_clients_pull_through_mirror() {
    let Some(tools) = lab::preflight("e2e real_clients_pull_through_mirror") else {
        return;
    };
    let started = std::time::Instant::now();
    let mut lab = Lab::start(tools);
    let regcache = lab.mirror().is_regcache();
    let tokens_before = lab.tokens().issued().len();

    // Cold: nothing cached yet; the mirror fills from upstream.
    let cold = pull_with_all_clients(&mut lab, "cold");
    let cold_all = merged(&cold);

    step(
        "remove local copies (docker rmi, ctr images rm + content gc)",
        || remove_local_copies(&lab),
    );

    // Warm: the mirror has everything; clients have nothing.
    let warm = pull_with_all_clients(&mut lab, "warm");
    let warm_all = merged(&warm);
    let since_push = lab.upstream().since(&lab.after_push);
    let tokens = lab.tokens().issued();

    say(format!("cold total: {}", cold_all.summary()));
    say(format!("warm total: {}", warm_all.summary()));
    say(format!(
        "token server: {} tokens issued to pullers (TTL {}s), {} credential rejections",
        tokens.len() - tokens_before,
        lab::TOKEN_TTL_SECS,
        lab.tokens().rejected()
    ));

    // The CDN must never see an Authorization header (a leaked registry token).
    let leaked: Vec<_> = since_push
        .cdn
        .iter()
        .filter(|r| r.authorized || r.status == 400)
        .collect();
    assert!(
        leaked.is_empty(),
        "requests to the CDN host carried Authorization (nginx answered 400): {leaked:#?}"
    );

    if regcache {
        // Every blob is fetched from upstream at most once, however many clients ask.
        let mut per_blob: BTreeMap<String, usize> = BTreeMap::new();
        for r in since_push
            .registry
            .iter()
            .filter(|r| r.method == "GET" && r.is_blob() && r.status < 400)
        {
            *per_blob
                .entry(r.blob_digest().unwrap_or_default())
                .or_default() += 1;
        }
        let repeated: Vec<_> = per_blob.iter().filter(|(_, &n)| n > 1).collect();
        assert!(
            repeated.is_empty(),
            "regcache fetched these blobs from upstream more than once: {repeated:?}\nupstream requests:\n{}",
            since_push.listing()
        );
        // Warm pulls are served from the cache: no blob GET reaches the registry or the CDN.
        assert_eq!(
            (warm_all.registry_blob_gets(), warm_all.cdn_gets()),
            (0, 0),
            "warm pulls fetched blobs upstream (registry blob GETs, CDN GETs); requests:\n{}",
            warm_all.listing()
        );
    } else {
        say("direct mode: cache assertions (no upstream blob GETs when warm) skipped");
    }
    say(format!(
        "e2e passed in {:.1}s against {}",
        started.elapsed().as_secs_f64(),
        if regcache {
            "regcache"
        } else {
            "the upstream directly"
        }
    ));
}
