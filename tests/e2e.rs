//! End-to-end tests with real clients: dockerd, containerd (ctr) and skopeo pull the test
//! images through the mirror from a Docker-Hub-like upstream (token auth, CDN redirects).
//! See `tests/lab/mod.rs` for the lab and its environment variables; `scripts/test-all`
//! installs the tools (as root) and runs everything with `REGCACHE_E2E=require`.
//!
//! One test runs the scenarios in sequence so that they share the (expensive) lab:
//! 1. cold: docker pull, ctr pull (`?ns=docker.io`, all platforms), skopeo copy (`--all`;
//!    once addressing the mirror, once `docker.io/...` through a registries.conf mirror with
//!    the `/docker.io` path prefix) of `e2e-single:v1` and the two-platform `e2e-multi:v1`;
//!    digests checked everywhere;
//! 2. the clients' local copies are removed;
//! 3. warm: the same pulls again: no blob GET may reach the registry or the CDN;
//! 4. concurrent: docker, ctr and skopeo pull the cold `e2e-concurrent:v1` at the same time;
//!
//! and over the whole run: each blob is fetched from upstream at most once, and the CDN never
//! sees an Authorization header.

mod lab;

use std::collections::BTreeMap;

use lab::images::TestImage;
use lab::upstream::Traffic;
use lab::{say, step, Lab};

/// The repositories of the sequential (cold/warm) scenarios and of the concurrent one.
const SEQUENTIAL: [&str; 2] = ["library/e2e-single", "library/e2e-multi"];
const CONCURRENT: &str = "library/e2e-concurrent";

/// `docker pull NAME:TAG` (a docker.io name, so dockerd asks its registry mirror).
fn docker_pull(lab: &Lab, img: &TestImage) {
    lab::pulls::docker_pull(lab, img, lab::clients::PULL_TIMEOUT);
}

/// `docker images --digests` shows the upstream manifest (or index) digest of each image.
fn check_docker_digests(lab: &Lab, imgs: &[&TestImage]) {
    let rows = lab.dockerd().images_digests();
    for img in imgs {
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

/// `ctr images pull --hosts-dir DIR docker.io/library/NAME:TAG` (sends `?ns=docker.io` to
/// the mirror; all platforms for an index, every one unpacked) and its resolved digest.
fn ctr_pull(lab: &Lab, img: &TestImage) {
    let ctrd = lab.containerd();
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

/// `skopeo copy [--all] docker://MIRROR/library/NAME:TAG dir:OUT` into a fresh directory,
/// then the manifest digest and every blob received are checked.
fn skopeo_copy(lab: &Lab, img: &TestImage, phase: &str) {
    let out = lab.fresh_dir(&format!("skopeo-{phase}-{}", img.repo.replace('/', "-")));
    let reference = format!("{}/{}:{}", lab.mirror_addr(), img.repo, img.tag);
    lab.skopeo.copy_to_dir(&reference, &out, img.is_multi());
    lab::pulls::check_dir_copy(img, &out);
}

/// `skopeo copy docker://docker.io/library/NAME:TAG dir:OUT` with a registries.conf that
/// mirrors docker.io to `MIRROR/docker.io` (path-prefix routing; the upstream registry itself
/// in direct mode).
fn skopeo_copy_via_registries_conf(lab: &Lab, img: &TestImage, phase: &str) {
    let location = if lab.mirror().is_regcache() {
        format!("{}/docker.io", lab.mirror_addr())
    } else {
        lab.mirror_addr().to_string()
    };
    let conf = lab.skopeo.write_registries_conf(&location);
    let out = lab.fresh_dir(&format!(
        "skopeo-conf-{phase}-{}",
        img.repo.replace('/', "-")
    ));
    lab.skopeo
        .copy_via_registries_conf(&conf, &img.docker_io_ref(), &out, img.is_multi());
    lab::pulls::check_dir_copy(img, &out);
}

/// A client scenario: (name, run(lab, images, phase)).
type ClientStep = (&'static str, fn(&Lab, &[&TestImage], &str));

/// Runs the clients one after the other, returning the upstream traffic each caused.
fn pull_with_all_clients(
    lab: &mut Lab,
    imgs: &[&TestImage],
    phase: &str,
) -> Vec<(&'static str, Traffic)> {
    let steps: [ClientStep; 4] = [
        ("docker pull", |lab, imgs, _| {
            imgs.iter().for_each(|i| docker_pull(lab, i));
            check_docker_digests(lab, imgs);
        }),
        ("ctr images pull", |lab, imgs, _| {
            imgs.iter().for_each(|i| ctr_pull(lab, i))
        }),
        ("skopeo copy", |lab, imgs, phase| {
            imgs.iter().for_each(|i| skopeo_copy(lab, i, phase))
        }),
        (
            "skopeo copy via registries.conf mirror",
            |lab, imgs, phase| {
                imgs.iter()
                    .for_each(|i| skopeo_copy_via_registries_conf(lab, i, phase))
            },
        ),
    ];
    let mut traffic = Vec::new();
    for (name, f) in steps {
        let mark = lab.upstream().mark();
        step(&format!("{name} ({phase})"), || f(lab, imgs, phase));
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

/// docker, ctr and skopeo pull the same cold image at the same time.
fn pull_concurrently(lab: &Lab, img: &TestImage) {
    std::thread::scope(|s| {
        let handles = [
            s.spawn(|| docker_pull(lab, img)),
            s.spawn(|| ctr_pull(lab, img)),
            s.spawn(|| skopeo_copy(lab, img, "concurrent")),
        ];
        let failures: Vec<String> = handles
            .into_iter()
            .filter_map(|h| h.join().err())
            .map(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "non-string panic".to_owned())
            })
            .collect();
        assert!(
            failures.is_empty(),
            "concurrent pulls of {} failed:\n{}",
            img.short_ref(),
            failures.join("\n---\n")
        );
    });
    check_docker_digests(lab, &[img]);
}

fn merged<'a>(parts: impl IntoIterator<Item = &'a Traffic>) -> Traffic {
    let mut all = Traffic::default();
    for t in parts {
        all.registry.extend(t.registry.iter().cloned());
        all.cdn.extend(t.cdn.iter().cloned());
    }
    all
}

fn remove_local_copies(lab: &Lab, imgs: &[&TestImage]) {
    let docker_refs: Vec<String> = imgs.iter().map(|i| i.short_ref()).collect();
    lab.dockerd().rmi(&docker_refs);
    let ctr_refs: Vec<String> = imgs.iter().map(|i| i.docker_io_ref()).collect();
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
    let sequential: Vec<TestImage> = SEQUENTIAL.iter().map(|r| lab.image(r).clone()).collect();
    let sequential: Vec<&TestImage> = sequential.iter().collect();
    let concurrent = lab.image(CONCURRENT).clone();

    // 1. Cold: nothing cached yet; the mirror fills from upstream.
    let cold = pull_with_all_clients(&mut lab, &sequential, "cold");
    let cold_all = merged(cold.iter().map(|(_, t)| t));

    // 2. The clients forget everything.
    step(
        "remove local copies (docker rmi, ctr images rm --sync + content check)",
        || remove_local_copies(&lab, &sequential),
    );

    // 3. Warm: the mirror has everything; clients have nothing.
    let warm = pull_with_all_clients(&mut lab, &sequential, "warm");
    let warm_all = merged(warm.iter().map(|(_, t)| t));

    // 4. Three clients at once on a cold image.
    let mark = lab.upstream().mark();
    step(
        "docker + ctr + skopeo pull e2e-concurrent at once (cold)",
        || pull_concurrently(&lab, &concurrent),
    );
    lab.assert_alive();
    let conc = lab.upstream().since(&mark);

    let since_push = lab.upstream().since(&lab.after_push);
    let tokens = lab.tokens().issued();
    say(format!("cold total: {}", cold_all.summary()));
    say(format!("warm total: {}", warm_all.summary()));
    say(format!("concurrent: {}", conc.summary()));
    say(format!(
        "token server: {} tokens issued to pullers (expires_in {}s), {} credential rejections",
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
        // Every blob the clients needed did come from upstream once (the counting works).
        let expected: usize = sequential
            .iter()
            .flat_map(|i| i.blob_digests())
            .chain(concurrent.blob_digests())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert_eq!(
            per_blob.len(),
            expected,
            "distinct blobs fetched upstream; requests:\n{}",
            since_push.listing()
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
