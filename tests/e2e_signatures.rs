//! End-to-end: signatures and attestations through the mirror, online and during an outage
//! (issue 14, "Shown by"). See `tests/lab/mod.rs` for the lab and its environment.
//!
//! No signing tool (cosign, notation, oras) installs offline here, so the artifacts are built
//! by this test, as cosign lays them out, and pushed to the real upstream (distribution 2.8) with
//! skopeo (`--preserve-digests`: the registry stores the bytes built here) and, for the one
//! index skopeo 1.9 will not copy unchanged, with the registry API (`PUT` with a push token):
//! - `sha256-<hex>.sig`: a cosign signature (OCI manifest, one
//!   `application/vnd.dev.cosign.simplesigning.v1+json` layer holding the simple-signing
//!   payload that names the image digest, with the `dev.cosignproject.cosign/signature`
//!   annotation holding a base64 string);
//! - `sha256-<hex>.att`: a cosign attestation (one `application/vnd.dsse.envelope.v1+json`
//!   layer, an in-toto statement about the image in a DSSE envelope);
//! - an OCI 1.1 signature manifest (`artifactType`, empty config, `subject` = the image),
//!   pushed by digest (skopeo to `@sha256:...`), and `sha256-<hex>`, the OCI 1.1 referrers tag
//!   schema's fallback index listing it (what an OCI 1.1 client pushes to a registry without
//!   the referrers API).
//!
//! where `<hex>` is the hex of the signed image's manifest digest (`library/e2e-single:v1`).
//!
//! Checks, each reported with its evidence:
//! 1. The upstream as found: it stores the `subject` manifest byte for byte, and has no
//!    referrers API (`GET /v2/<name>/referrers/<digest>`, with a pull token: 404).
//! 2. The mirror answers the referrers request 404 too (never an empty 200), with and without
//!    `artifactType`, and asks the upstream once: the second request, within the minute the
//!    404 is remembered, makes no upstream request.
//! 3. skopeo (`inspect --raw`, `copy` to a `dir:`) through the mirror: the `.sig`, `.att` and
//!    fallback-index tags, the OCI 1.1 manifest and the image by digest, bytes = digests pushed,
//!    the signature's layer = the payload built; the tag list names every tag.
//! 4. Outage (both fault proxies blackholed; `--tag-ttl 0s`, `--revalidate-timeout 2s`): the
//!    `.sig` manifest by tag and by digest, its layer, the `.att`, the tag list and the
//!    referrers 404 are still served from the cache (stale where they revalidate), and skopeo
//!    still copies the `.sig`: what a verifier needs offline.
//! 5. `regcache prefetch --with-referrers` against the real upstream: succeeds, reports
//!    "0 referrers" (the 404 path), and prefetches the `.sig` tag when named.

mod lab;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use lab::faults::Mode;
use lab::http::{self, ACCEPT_MANIFESTS};
use lab::images::{sha256_digest, TestImage, OCI_INDEX, OCI_MANIFEST};
use lab::mirror::regcache_bin;
use lab::{proc, say, Findings, Lab, LabOptions};

const IMAGE: &str = "library/e2e-single";
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an answer may take while the upstream is blackholed (revalidation gives up at 2 s).
const BOUND: Duration = Duration::from_secs(15);
const REVALIDATE_TIMEOUT: &str = "2s";

const COSIGN_SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const COSIGN_OCI11_SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A blob (or manifest) built here: media type, bytes, digest.
#[derive(Clone, Debug)]
struct Obj {
    media_type: String,
    bytes: Vec<u8>,
    digest: String,
}

impl Obj {
    fn new(media_type: &str, bytes: Vec<u8>) -> Obj {
        Obj {
            media_type: media_type.to_owned(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    fn json(media_type: &str, v: &serde_json::Value) -> Obj {
        Obj::new(media_type, serde_json::to_vec(v).expect("serialize"))
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// What is pushed for the image: the tagged manifests and every blob under them.
struct Artifacts {
    hex: String,
    sig: Obj,
    sig_payload: Obj,
    sig_config: Obj,
    att: Obj,
    att_envelope: Obj,
    /// The OCI 1.1 signature manifest (with `subject`).
    oci11: Obj,
    /// The referrers tag schema's fallback index (tag `sha256-<hex>`), listing `oci11`.
    fallback: Obj,
    /// Layout directories: (tag, dir, is an index).
    layouts: Vec<(String, PathBuf, bool)>,
}

impl Artifacts {
    fn sig_tag(&self) -> String {
        format!("sha256-{}.sig", self.hex)
    }
    fn att_tag(&self) -> String {
        format!("sha256-{}.att", self.hex)
    }
    fn fallback_tag(&self) -> String {
        format!("sha256-{}", self.hex)
    }
}

fn write_layout(dir: &Path, objs: &[&Obj], top: &Obj, tag: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("create layout");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    for o in objs.iter().copied().chain(std::iter::once(top)) {
        std::fs::write(blobs.join(o.digest.trim_start_matches("sha256:")), &o.bytes)
            .expect("write blob");
    }
    let mut d = top.descriptor();
    d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("serialize"),
    )
    .expect("write index.json");
}

/// Builds the cosign-style artifacts for `img` as OCI layouts under `root`.
fn build_artifacts(root: &Path, img: &TestImage) -> Artifacts {
    let b64 = base64::engine::general_purpose::STANDARD;
    let digest = img.digest().to_owned();
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let subject = img.platforms[0].manifest.clone();
    let docker_ref = format!("docker.io/{IMAGE}");
    // A base64 string the size of an ECDSA P-256 signature (not a real one: nothing signs
    // offline here; the mirror must keep it byte for byte all the same).
    let fake_sig = b64.encode(sha256_digest(digest.as_bytes()).as_bytes());

    // --- .sig: cosign's tag-schema signature
    let sig_payload = Obj::json(
        COSIGN_SIMPLESIGNING,
        &json!({
            "critical": {
                "identity": {"docker-reference": docker_ref},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature"
            },
            "optional": {"creator": "regcache e2e"}
        }),
    );
    let sig_config = Obj::json(
        OCI_CONFIG,
        &json!({
            "architecture": "", "os": "", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sig_payload.digest]}
        }),
    );
    let mut layer = sig_payload.descriptor();
    layer["annotations"] = json!({ COSIGN_SIGNATURE_ANNOTATION: fake_sig });
    let sig = Obj::json(
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": sig_config.descriptor(), "layers": [layer]
        }),
    );

    // --- .att: a cosign attestation (in-toto statement in a DSSE envelope)
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": docker_ref, "digest": {"sha256": hex}}],
        "predicate": {"builder": {"id": "regcache-e2e"}}
    });
    let att_envelope = Obj::json(
        DSSE,
        &json!({
            "payloadType": "application/vnd.in-toto+json",
            "payload": b64.encode(serde_json::to_vec(&statement).expect("serialize")),
            "signatures": [{"keyid": "", "sig": fake_sig}]
        }),
    );
    let att_config = Obj::json(
        OCI_CONFIG,
        &json!({
            "architecture": "", "os": "", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [att_envelope.digest]}
        }),
    );
    let mut layer = att_envelope.descriptor();
    layer["annotations"] = json!({
        COSIGN_SIGNATURE_ANNOTATION: "",
        "predicateType": "https://slsa.dev/provenance/v0.2"
    });
    let att = Obj::json(
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": att_config.descriptor(), "layers": [layer]
        }),
    );

    // --- OCI 1.1: a signature manifest with `subject`, and the tag schema's fallback index
    let empty = Obj::new(OCI_EMPTY, b"{}".to_vec());
    let mut layer = sig_payload.descriptor();
    layer["annotations"] = json!({ COSIGN_SIGNATURE_ANNOTATION: fake_sig });
    let oci11 = Obj::json(
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": COSIGN_OCI11_SIG,
            "config": empty.descriptor(), "layers": [layer],
            "subject": subject.descriptor(),
            "annotations": {"org.opencontainers.image.created": "2026-12-01T00:00:00Z"}
        }),
    );
    let mut entry = oci11.descriptor();
    entry["artifactType"] = json!(COSIGN_OCI11_SIG);
    entry["annotations"] = json!({"org.opencontainers.image.created": "2026-12-01T00:00:00Z"});
    let fallback = Obj::json(
        OCI_INDEX,
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}),
    );

    let a = Artifacts {
        hex,
        sig,
        sig_payload,
        sig_config,
        att,
        att_envelope,
        oci11,
        fallback,
        layouts: Vec::new(),
    };
    let mut layouts = Vec::new();
    let dir = root.join("oci-sig");
    write_layout(&dir, &[&a.sig_payload, &a.sig_config], &a.sig, &a.sig_tag());
    layouts.push((a.sig_tag(), dir, false));
    let dir = root.join("oci-att");
    write_layout(&dir, &[&a.att_envelope, &att_config], &a.att, &a.att_tag());
    layouts.push((a.att_tag(), dir, false));
    // The OCI 1.1 manifest is pushed by digest (`@sha256:...` destination); the fallback
    // index with the registry API (skopeo 1.9 refuses to copy an index of artifacts with
    // --preserve-digests: "Manifest list must be converted to type ...").
    let dir = root.join("oci-oci11");
    write_layout(&dir, &[&a.sig_payload, &empty], &a.oci11, "oci11");
    layouts.push(("oci11".to_owned(), dir, false));
    Artifacts { layouts, ..a }
}

/// Pushes the artifacts to the upstream registry with skopeo, and checks each tag's bytes there.
fn push(lab: &Lab, a: &Artifacts) {
    let registry = lab.upstream().registry_addr;
    for (tag, dir, is_index) in &a.layouts {
        let dest = if tag == "oci11" {
            format!("{registry}/{IMAGE}@{}", a.oci11.digest)
        } else {
            format!("{registry}/{IMAGE}:{tag}")
        };
        lab.skopeo
            .push_layout(dir, tag, &dest, &lab.push_creds, *is_index);
        say(format!("pushed {dest}"));
    }
    put_manifest(lab, &a.fallback_tag(), &a.fallback);
    say(format!(
        "pushed {registry}/{IMAGE}:{} (PUT, the fallback index)",
        a.fallback_tag()
    ));
    for (tag, want) in [
        (a.sig_tag(), &a.sig),
        (a.att_tag(), &a.att),
        (a.fallback_tag(), &a.fallback),
    ] {
        let raw = lab.skopeo.inspect_raw(&format!("{registry}/{IMAGE}:{tag}"));
        assert_eq!(
            sha256_digest(&raw),
            want.digest,
            "upstream {tag}: not the bytes built"
        );
    }
}

/// `PUT /v2/<IMAGE>/manifests/<reference>` on the upstream registry with a push token.
fn put_manifest(lab: &Lab, reference: &str, m: &Obj) {
    use std::io::{Read, Write};
    let tokens = lab.tokens();
    let basic = base64::engine::general_purpose::STANDARD.encode(&lab.push_creds);
    let path = format!(
        "/token?service={}&scope=repository:{IMAGE}:pull,push",
        tokens.service
    );
    let auth = format!("Basic {basic}");
    let r = http::must(
        tokens.addr,
        "GET",
        &path,
        &[("Authorization", &auth)],
        HTTP_TIMEOUT,
    );
    assert_eq!(r.status, 200, "push token: {}", r.summary());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("token JSON");
    let token = v["token"].as_str().expect("token").to_owned();
    let registry = lab.upstream().registry_addr;
    let mut s = std::net::TcpStream::connect(registry).expect("connect to the registry");
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    let head = format!(
        "PUT /v2/{IMAGE}/manifests/{reference} HTTP/1.1\r\nHost: {registry}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        m.media_type,
        m.bytes.len()
    );
    s.write_all(head.as_bytes()).expect("write PUT");
    s.write_all(&m.bytes).expect("write PUT body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read PUT answer");
    let (status, head, _) = proc::split_response(&buf).expect("PUT answer");
    assert_eq!(status, 201, "PUT manifest {reference}: {head}");
    assert!(
        head.contains(&m.digest),
        "PUT manifest {reference}: the registry's digest differs: {head}"
    );
}

/// Upstream (registry log) requests since `mark` whose path contains `needle`, as lines.
fn upstream_requests(lab: &Lab, mark: &lab::upstream::Mark, needle: &str) -> Vec<String> {
    lab.upstream()
        .since(mark)
        .registry
        .iter()
        .filter(|r| r.path.contains(needle))
        .map(|r| format!("{} {} -> {} ({})", r.method, r.path, r.status, r.user_agent))
        .collect()
}

fn show(r: &http::Response) -> String {
    let body = String::from_utf8_lossy(&r.body[..r.body.len().min(400)]).into_owned();
    format!("{}\n{}", r.head.trim_end(), body.trim_end())
}

/// Check 1: the upstream stores `subject` manifests and has no referrers API.
fn upstream_as_found(lab: &Lab, a: &Artifacts, img: &TestImage) {
    let registry = lab.upstream().registry_addr;
    let raw = lab
        .skopeo
        .inspect_raw(&format!("{registry}/{IMAGE}@{}", a.oci11.digest));
    assert!(
        raw == a.oci11.bytes,
        "upstream {IMAGE}@{}: not the manifest built",
        a.oci11.digest
    );
    let v: serde_json::Value = serde_json::from_slice(&raw).expect("manifest JSON");
    assert_eq!(v["subject"]["digest"], json!(img.digest()));
    say(format!(
        "    distribution accepted and stores the OCI 1.1 manifest with subject {} and artifactType {} byte for byte ({})",
        img.digest(),
        v["artifactType"],
        a.oci11.digest
    ));
    let token = format!("Bearer {}", lab.tokens().mint_pull_token(IMAGE, 30));
    let path = format!("/v2/{IMAGE}/referrers/{}", img.digest());
    for (what, headers) in [
        ("anonymous", vec![("Accept", OCI_INDEX)]),
        (
            "with a pull token",
            vec![("Accept", OCI_INDEX), ("Authorization", token.as_str())],
        ),
    ] {
        let r = http::must(registry, "GET", &path, &headers, HTTP_TIMEOUT);
        say(format!(
            "    upstream GET {path} ({what}):\n{}",
            show(&r)
                .lines()
                .map(|l| format!("      {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
        assert_eq!(
            r.status,
            404,
            "upstream referrers ({what}): {}",
            r.summary()
        );
    }
}

/// Check 2: the mirror's referrers answer is a 404, asked upstream once.
fn mirror_referrers_404(lab: &Lab, img: &TestImage) {
    let mirror = lab.mirror_addr();
    let base = format!("/v2/{IMAGE}/referrers/{}", img.digest());
    let filtered =
        format!("{base}?artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson");
    let mut problems = Vec::new();
    for (i, path) in [&base, &base, &filtered].into_iter().enumerate() {
        let mark = lab.upstream().mark();
        let log = lab.mirror().log_mark();
        let r = http::must(mirror, "GET", path, &[("Accept", OCI_INDEX)], HTTP_TIMEOUT);
        let up = upstream_requests(lab, &mark, "/referrers/");
        let access: Vec<String> = lab
            .mirror()
            .access_since(log)
            .iter()
            .map(|a| a.short())
            .collect();
        say(format!(
            "    request {}: mirror GET {path} -> {} code {:?}; access log: {access:?}; upstream referrers requests: {up:?}",
            i + 1,
            r.status,
            r.error_code()
        ));
        if r.status != 404 {
            problems.push(format!(
                "request {}: expected 404 (as the upstream), got:\n{}",
                i + 1,
                show(&r)
            ));
        }
        if i > 0 && !access.iter().any(|l| l.contains("cache=hit")) {
            problems.push(format!(
                "request {}: answered from the remembered 404 (no upstream request), but the access log does not say cache=hit: {access:?}",
                i + 1
            ));
        }
        let want_upstream = usize::from(i == 0);
        if up.len() != want_upstream {
            problems.push(format!(
                "request {}: {} upstream referrers requests (expected {want_upstream}): {up:?}",
                i + 1,
                up.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Check 3: skopeo through the mirror gets the exact bytes; the tag list names every tag.
fn skopeo_through_mirror(lab: &Lab, a: &Artifacts, img: &TestImage) {
    let mirror = lab.mirror_addr();
    for (reference, want) in [
        (format!("{IMAGE}:{}", a.sig_tag()), &a.sig.digest),
        (format!("{IMAGE}:{}", a.att_tag()), &a.att.digest),
        (format!("{IMAGE}:{}", a.fallback_tag()), &a.fallback.digest),
        (format!("{IMAGE}@{}", a.oci11.digest), &a.oci11.digest),
        (
            format!("{IMAGE}@{}", img.digest()),
            &img.digest().to_owned(),
        ),
    ] {
        let raw = lab.skopeo.inspect_raw(&format!("{mirror}/{reference}"));
        let got = sha256_digest(&raw);
        assert_eq!(&got, want, "skopeo inspect --raw {mirror}/{reference}");
        say(format!(
            "    skopeo inspect --raw docker://{mirror}/{reference}: {} bytes, {got}",
            raw.len()
        ));
    }
    copy_sig(lab, a, "skopeo-sig");
    let r = http::must(
        mirror,
        "GET",
        &format!("/v2/{IMAGE}/tags/list"),
        &[],
        HTTP_TIMEOUT,
    );
    assert_eq!(r.status, 200, "tags/list: {}", show(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("tags/list JSON");
    let tags: Vec<&str> = v["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .collect();
    for t in [img.tag.clone(), a.sig_tag(), a.att_tag(), a.fallback_tag()] {
        assert!(tags.contains(&t.as_str()), "tags/list lacks {t}: {tags:?}");
    }
    say(format!("    mirror tags/list: {tags:?}"));
}

/// `skopeo copy docker://<mirror>/<image>:<sig tag> dir:` and checks every file.
fn copy_sig(lab: &Lab, a: &Artifacts, name: &str) {
    let out_dir = lab.fresh_dir(name);
    let reference = format!("{}/{IMAGE}:{}", lab.mirror_addr(), a.sig_tag());
    let started = Instant::now();
    lab.skopeo.copy_to_dir(&reference, &out_dir, false);
    let manifest = std::fs::read(out_dir.join("manifest.json")).expect("dir: manifest.json");
    assert_eq!(
        sha256_digest(&manifest),
        a.sig.digest,
        "skopeo copy {reference}: manifest"
    );
    for o in [&a.sig_payload, &a.sig_config] {
        let b = std::fs::read(out_dir.join(o.digest.trim_start_matches("sha256:")))
            .unwrap_or_else(|e| panic!("skopeo copy {reference}: blob {}: {e}", o.digest));
        assert!(
            b == o.bytes,
            "skopeo copy {reference}: blob {} differs",
            o.digest
        );
    }
    say(format!(
        "    skopeo copy docker://{reference} dir:{}: manifest {} and its 2 blobs match, {:.1}s",
        out_dir.display(),
        a.sig.digest,
        started.elapsed().as_secs_f64()
    ));
}

/// Check 4: with the upstream blackholed, everything a verifier needs is served.
fn outage(lab: &Lab, a: &Artifacts, img: &TestImage) {
    let mirror = lab.mirror_addr();
    for p in lab.upstream().fronts() {
        p.set_mode(Mode::Blackhole);
    }
    let marks: Vec<_> = lab.upstream().fronts().iter().map(|p| p.mark()).collect();
    let log = lab.mirror().log_mark();
    let mut problems = Vec::new();
    let cases: Vec<(String, String, Vec<u8>, u16)> = vec![
        (
            ".sig manifest by tag".into(),
            format!("/v2/{IMAGE}/manifests/{}", a.sig_tag()),
            a.sig.bytes.clone(),
            200,
        ),
        (
            ".sig manifest by digest".into(),
            format!("/v2/{IMAGE}/manifests/{}", a.sig.digest),
            a.sig.bytes.clone(),
            200,
        ),
        (
            ".sig layer (simple-signing payload)".into(),
            format!("/v2/{IMAGE}/blobs/{}", a.sig_payload.digest),
            a.sig_payload.bytes.clone(),
            200,
        ),
        (
            ".att manifest by tag".into(),
            format!("/v2/{IMAGE}/manifests/{}", a.att_tag()),
            a.att.bytes.clone(),
            200,
        ),
        (
            "fallback index by tag".into(),
            format!("/v2/{IMAGE}/manifests/{}", a.fallback_tag()),
            a.fallback.bytes.clone(),
            200,
        ),
        (
            "image manifest by digest".into(),
            format!("/v2/{IMAGE}/manifests/{}", img.digest()),
            img.platforms[0].manifest.bytes.clone(),
            200,
        ),
        (
            "tags/list".into(),
            format!("/v2/{IMAGE}/tags/list"),
            Vec::new(),
            200,
        ),
        (
            "referrers (remembered 404)".into(),
            format!("/v2/{IMAGE}/referrers/{}", img.digest()),
            Vec::new(),
            404,
        ),
    ];
    for (what, path, want, status) in cases {
        let r = http::request(
            mirror,
            "GET",
            &path,
            &[("Accept", ACCEPT_MANIFESTS)],
            HTTP_TIMEOUT,
        );
        match r {
            Err(e) => problems.push(format!("{what}: GET {path}: {e}")),
            Ok(r) => {
                say(format!("    outage: {what}: GET {path} -> {}", r.summary()));
                if r.status != status {
                    problems.push(format!(
                        "{what}: GET {path}: expected {status}, got:\n{}",
                        show(&r)
                    ));
                } else if !want.is_empty() && r.body != want {
                    problems.push(format!(
                        "{what}: GET {path}: body differs ({} bytes, {})",
                        r.body.len(),
                        sha256_digest(&r.body)
                    ));
                } else if what == "tags/list"
                    && !String::from_utf8_lossy(&r.body).contains(&a.sig_tag())
                {
                    problems.push(format!("tags/list lacks the .sig tag: {}", show(&r)));
                }
                if r.elapsed > BOUND {
                    problems.push(format!(
                        "{what}: took {:.1}s (bound {BOUND:?})",
                        r.elapsed.as_secs_f64()
                    ));
                }
            }
        }
    }
    // A real client, offline: skopeo copies the signature.
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        copy_sig(lab, a, "skopeo-sig-outage")
    })) {
        problems.push(format!(
            "skopeo copy during the outage: {}",
            lab::panic_message(&*e)
        ));
    }
    let caches: Vec<String> = lab
        .mirror()
        .access_since(log)
        .iter()
        .map(|a| format!("      {}", a.short()))
        .collect();
    say(format!(
        "    mirror access log during the outage:\n{}",
        caches.join("\n")
    ));
    for (p, m) in lab.upstream().fronts().iter().zip(&marks) {
        let recs = p.since(m);
        say(format!(
            "    {} proxy during the outage: {} requests (blackholed, none answered): {}",
            p.name,
            recs.len(),
            recs.iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for p in lab.upstream().fronts() {
        p.reset();
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Runs `regcache prefetch --with-referrers IMAGES...` into `dir`.
fn run_prefetch(lab: &Lab, images: &[String], dir: &Path) -> proc::Output {
    let mut c = Command::new(regcache_bin());
    c.arg("prefetch")
        .arg("--with-referrers")
        .args(images)
        .arg("--cache-dir")
        .arg(dir)
        .arg("--upstream")
        .arg(lab.upstream().mirror_url());
    for h in &lab.upstream().redirect_hosts {
        c.arg("--redirect-host").arg(h);
    }
    let started = Instant::now();
    let out = proc::run(&mut c, Duration::from_secs(120));
    say(format!(
        "    `{}` exited {} in {:.1}s\n    stdout: {}\n    stderr: {}",
        proc::describe(&c),
        out.status,
        started.elapsed().as_secs_f64(),
        out.stdout.trim(),
        out.stderr.trim()
    ));
    out
}

/// Check 5: prefetch --with-referrers against distribution (no referrers API).
fn prefetch_with_referrers(lab: &Lab, a: &Artifacts, img: &TestImage) {
    let dir = lab.fresh_dir("prefetch-cache");
    let mark = lab.upstream().mark();
    let out = run_prefetch(lab, &[format!("{IMAGE}:{}", img.tag)], &dir);
    let up = upstream_requests(lab, &mark, "/referrers/");
    say(format!("    upstream referrers requests: {up:?}"));
    assert!(out.ok(), "prefetch --with-referrers failed: {}", out.stderr);
    assert!(
        out.stdout.contains("0 referrers"),
        "prefetch did not report 0 referrers: {}",
        out.stdout
    );
    assert!(
        up.iter().any(|l| l.contains(" -> 404")),
        "prefetch did not ask the upstream for referrers (or not answered 404): {up:?}"
    );
    // The tag-schema signature is an ordinary tag: named, it is prefetched too.
    let out = run_prefetch(lab, &[format!("{IMAGE}:{}", a.sig_tag())], &dir);
    assert!(
        out.ok(),
        "prefetch --with-referrers of the .sig tag failed: {}",
        out.stderr
    );
}

#[test]
fn e2e_signatures_through_the_mirror() {
    let test = "e2e_signatures_through_the_mirror";
    let Some(tools) = lab::preflight_regcache(test) else {
        return;
    };
    let started = Instant::now();
    let lab = Lab::start_with(
        tools,
        LabOptions {
            fault_proxies: true,
            mirror_args: vec![
                "--revalidate-timeout".to_owned(),
                REVALIDATE_TIMEOUT.to_owned(),
            ],
            ..LabOptions::default()
        },
    );
    let img = lab.image(IMAGE).clone();
    let mut f = Findings::new(test);
    let artifacts = f.check(
        "push the cosign .sig, .att and an OCI 1.1 subject manifest (fallback index) upstream with skopeo",
        || {
            let a = build_artifacts(lab.root(), &img);
            say(format!(
                "    image {IMAGE}:{} = {}\n    .sig {}\n    .att {}\n    OCI 1.1 manifest {}\n    fallback index {}",
                img.tag, img.digest(), a.sig.digest, a.att.digest, a.oci11.digest, a.fallback.digest
            ));
            push(&lab, &a);
            a
        },
    );
    let Some(a) = artifacts else {
        f.finish();
        return;
    };
    f.check(
        "upstream (distribution 2.8) stores the subject manifest and 404s referrers",
        || upstream_as_found(&lab, &a, &img),
    );
    f.check(
        "mirror: referrers 404 (never an empty 200), the second within a minute not asked upstream",
        || mirror_referrers_404(&lab, &img),
    );
    f.check(
        "skopeo through the mirror: .sig/.att/fallback tags, OCI 1.1 manifest and image by digest, exact bytes; tag list",
        || skopeo_through_mirror(&lab, &a, &img),
    );
    f.check(
        "upstream blackholed: .sig by tag and digest, its layer, .att, tags/list, referrers 404 from the cache; skopeo copies the .sig",
        || outage(&lab, &a, &img),
    );
    f.check(
        "regcache prefetch --with-referrers against distribution: 0 referrers, no failure",
        || prefetch_with_referrers(&lab, &a, &img),
    );
    say(format!(
        "{test}: {:.1}s in all",
        started.elapsed().as_secs_f64()
    ));
    drop(lab);
    f.finish();
}
