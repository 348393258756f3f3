//! End-to-end: many registries through one mirror (issue "Many registries through one
//! mirror"), with real clients. See `tests/lab/mod.rs` for the lab and its environment.
//!
//! The lab: the Hub-like registry (docker.io), a second, private registry standing in for
//! ghcr.io (its token server gives pull tokens only for Basic credentials, which regcache has
//! in its config file: `[registries."ghcr.io"] url, username, password_file`), and two
//! regcache tiers: the mirror every client uses (the edge) and a middle one between it and the
//! docker.io registry (the edge's default upstream is the middle; ghcr.io goes straight to
//! its registry).
//!
//! 1. anonymous pulls at the ghcr.io stand-in are refused (the credentials matter);
//! 2. containerd with only `_default/hosts.toml` pointing every registry at the edge pulls
//!    `docker.io/library/e2e-single:v1` and `ghcr.io/org/e2e-other:v1` (ctr sends
//!    `ns=docker.io` / `ns=ghcr.io`) with the right digests;
//! 3. skopeo pulls `ghcr.io/org/e2e-other:v1` through a path prefix
//!    (`docker://EDGE/ghcr.io/...`) and through a registries.conf mirror `EDGE/ghcr.io`;
//! 4. ghcr.io saw each blob once, and only the ghcr.io token server saw the ghcr.io
//!    credentials;
//! 5. `ns=evil.example`, `ns=127.0.0.1:<port of a listener this test owns>` and a path prefix
//!    naming that listener get 404 NAME_UNKNOWN (or 400) and no connection reaches it;
//! 6. two tiers: `docker pull` through the edge (dockerd's registry-mirrors) of a cold image,
//!    again after `docker rmi`, digests right; the middle saw one GET per blob from the edge;
//! 7. over the whole run the docker.io registry and its CDN saw exactly one GET per blob.

mod lab;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lab::http::{self, ACCEPT_MANIFESTS};
use lab::images::TestImage;
use lab::pulls;
use lab::{say, Findings, Lab, LabOptions, SECOND_PULLER, SECOND_REGISTRY};

const PULL_TIMEOUT: Duration = Duration::from_secs(120);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A listener the test owns, counting connections: the "evil" host an open proxy would dial.
struct Tripwire {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    fn start() -> Tripwire {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind tripwire listener");
        l.set_nonblocking(true).expect("nonblocking tripwire");
        let addr = l.local_addr().expect("tripwire addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepts, stop) = (accepts.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((conn, peer)) => {
                            accepts.fetch_add(1, Ordering::SeqCst);
                            say(format!("tripwire {addr}: connection from {peer}"));
                            drop(conn);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Tripwire {
            addr,
            accepts,
            stop,
            thread: Some(thread),
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The second registry refuses anonymous pulls: its token server grants nothing without
/// credentials, so the registry answers 401 to the anonymous token.
fn anonymous_pull_is_refused(lab: &Lab, other: &TestImage) {
    let second = lab.second();
    let scope = format!("repository:{}:pull", other.repo);
    let token_path = format!(
        "/token?service={}&scope={}",
        lab::SECOND_SERVICE,
        scope.replace(':', "%3A").replace('/', "%2F")
    );
    let t = http::must(second.tokens.addr, "GET", &token_path, &[], HTTP_TIMEOUT);
    assert_eq!(t.status, 200, "anonymous token request: {}", t.summary());
    let v: serde_json::Value = serde_json::from_slice(&t.body).expect("token JSON");
    let token = v["token"].as_str().expect("token field").to_owned();
    let auth = format!("Bearer {token}");
    let path = format!("/v2/{}/manifests/{}", other.repo, other.tag);
    let r = http::must(
        second.upstream.registry_addr,
        "GET",
        &path,
        &[("Authorization", &auth), ("Accept", ACCEPT_MANIFESTS)],
        HTTP_TIMEOUT,
    );
    assert_eq!(
        r.status,
        401,
        "the ghcr.io stand-in must refuse an anonymous token: {}",
        r.summary()
    );
}

/// ctr through `_default/hosts.toml` only: docker.io and ghcr.io images via the one mirror.
fn ctr_pulls_two_registries(lab: &Lab, hosts: &std::path::Path, imgs: &[(&TestImage, String)]) {
    for (img, reference) in imgs {
        let took = pulls::ctr_pull(lab, hosts, reference, img, None, PULL_TIMEOUT);
        say(format!(
            "    ctr pull {reference} = {} in {:.1}s",
            img.digest(),
            took.as_secs_f64()
        ));
    }
}

/// Only regcache's configured credentials got pull tokens at the ghcr.io token server (since
/// the first `skip` tokens, i.e. the lab's and this test's own), and the docker.io token
/// server never saw them.
fn credentials_go_only_to_their_registry(lab: &Lab, skip: usize) {
    let second = lab.second();
    let ghcr: Vec<_> = second.tokens.issued().into_iter().skip(skip).collect();
    assert!(
        !ghcr.is_empty(),
        "the ghcr.io token server issued no tokens to regcache"
    );
    let bad: Vec<_> = ghcr
        .iter()
        .filter(|t| t.subject != SECOND_PULLER || t.granted.iter().any(|g| !g.ends_with(":pull")))
        .collect();
    assert!(
        bad.is_empty(),
        "ghcr.io tokens not issued to {SECOND_PULLER} with pull access: {bad:#?}"
    );
    assert_eq!(
        second.tokens.rejected(),
        0,
        "the ghcr.io token server rejected credentials"
    );
    let hub: Vec<_> = lab
        .tokens()
        .issued()
        .into_iter()
        .filter(|t| t.subject != lab::token::PUSHER && !t.subject.is_empty())
        .collect();
    assert!(
        hub.is_empty(),
        "the docker.io token server saw credentials it must not: {hub:#?}"
    );
    assert_eq!(
        lab.tokens().rejected(),
        0,
        "the docker.io token server was sent credentials (rejected)"
    );
    say(format!(
        "    ghcr.io token server: {} tokens, all to {SECOND_PULLER}; docker.io token server: only anonymous pull tokens",
        ghcr.len()
    ));
}

/// Unknown registries by `ns` or path prefix: 404 NAME_UNKNOWN (400 for a prefix that is no
/// repository name), and no connection to the host named.
fn unknown_registries_are_not_dialled(lab: &Lab, single: &TestImage, uncached: &str) {
    let wire = Tripwire::start();
    let edge = lab.mirror_addr();
    let port = wire.addr.port();
    let manifest = format!("/v2/{}/manifests/{}", single.repo, single.tag);
    let blob = format!("/v2/{}/blobs/{uncached}", single.repo);
    let cases: Vec<(&str, String, bool)> = vec![
        ("GET", format!("{manifest}?ns=evil.example"), true),
        ("HEAD", format!("{manifest}?ns=evil.example"), true),
        ("GET", format!("{blob}?ns=evil.example"), true),
        ("GET", format!("{manifest}?ns=127.0.0.1%3A{port}"), true),
        ("HEAD", format!("{manifest}?ns=127.0.0.1%3A{port}"), true),
        ("GET", format!("{manifest}?ns=127.0.0.1:{port}"), true),
        ("GET", format!("{blob}?ns=127.0.0.1%3A{port}"), true),
        (
            "GET",
            format!("/v2/{}/tags/list?ns=127.0.0.1%3A{port}", single.repo),
            true,
        ),
        // A path prefix naming the listener: not a repository name (':'), or an unknown
        // registry; either way no dial.
        (
            "GET",
            format!("/v2/127.0.0.1:{port}/{}/manifests/v1", single.repo),
            false,
        ),
        (
            "GET",
            format!("/v2/127.0.0.1%3A{port}/{}/manifests/v1", single.repo),
            false,
        ),
    ];
    let mut problems = Vec::new();
    for (method, path, name_unknown) in &cases {
        let r = http::must(
            edge,
            method,
            path,
            &[("Accept", ACCEPT_MANIFESTS)],
            HTTP_TIMEOUT,
        );
        say(format!("    {method} {path} -> {}", r.summary()));
        let ok = if *name_unknown {
            r.status == 404
                && (*method == "HEAD" || r.error_code().as_deref() == Some("NAME_UNKNOWN"))
        } else {
            matches!(r.status, 400 | 404)
        };
        if !ok {
            problems.push(format!(
                "{method} {path}: want {}, got {}",
                if *name_unknown {
                    "404 NAME_UNKNOWN"
                } else {
                    "400 or 404"
                },
                r.summary()
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let accepts = wire.accepts();
    if accepts != 0 {
        problems.push(format!(
            "{accepts} connection(s) reached the listener {} named by ns / path prefix: regcache dialled a host it was only told about by a client",
            wire.addr
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    say(format!(
        "    {} requests naming unknown registries: all refused, 0 connections to {}",
        cases.len(),
        wire.addr
    ));
}

#[test]
fn many_registries_through_one_mirror() {
    let test = "e2e many_registries_through_one_mirror";
    let Some(tools) = lab::preflight_regcache(test) else {
        return;
    };
    let started = std::time::Instant::now();
    let mut lab = Lab::start_with(
        tools,
        LabOptions {
            second_registry: true,
            chain: true,
            // Every level, so the leak check below reads everything regcache can log.
            log_filter: Some("trace".into()),
            ..LabOptions::default()
        },
    );
    let mut f = Findings::new(test);
    let single = lab.image("library/e2e-single").clone();
    let conc = lab.image("library/e2e-concurrent").clone();
    let multi = lab.image("library/e2e-multi").clone();
    let other = lab.image(lab::images::OTHER_REPO).clone();
    let edge = lab.mirror_addr();
    let middle = lab.middle().addr;
    say(format!(
        "edge regcache {edge} (clients) -> middle regcache {middle} -> docker.io registry {}; ghcr.io -> {}",
        lab.upstream().registry_addr,
        lab.second().upstream.registry_addr
    ));
    let default_hosts = lab
        .containerd()
        .write_hosts_dir("certs-default", &[("_default", edge)]);
    let middle_mark = lab.middle().log_mark();

    f.check("the ghcr.io stand-in refuses anonymous pulls", || {
        anonymous_pull_is_refused(&lab, &other)
    });
    let ghcr_tokens_before = lab.second().tokens.issued().len();
    f.check(
        "ctr pull docker.io/library/e2e-single:v1 and ghcr.io/org/e2e-other:v1 via _default/hosts.toml -> one mirror",
        || {
            ctr_pulls_two_registries(
                &lab,
                &default_hosts,
                &[
                    (&single, single.docker_io_ref()),
                    (&other, other.reference_in(SECOND_REGISTRY)),
                ],
            )
        },
    );
    f.check(
        "skopeo copy docker://EDGE/ghcr.io/org/e2e-other:v1 (path prefix)",
        || {
            pulls::skopeo_copy(
                &lab,
                &other.reference_in(&format!("{edge}/{SECOND_REGISTRY}")),
                &other,
                PULL_TIMEOUT,
            )
        },
    );
    f.check(
        "skopeo copy docker://ghcr.io/org/e2e-other:v1 via registries.conf mirror EDGE/ghcr.io",
        || {
            let conf = lab
                .skopeo
                .write_registries_conf_for(SECOND_REGISTRY, &format!("{edge}/{SECOND_REGISTRY}"));
            let out = lab.fresh_dir("skopeo-conf-ghcr");
            lab.skopeo.copy_via_registries_conf(
                &conf,
                &other.reference_in(SECOND_REGISTRY),
                &out,
                false,
            );
            pulls::check_dir_copy(&other, &out);
        },
    );
    f.check(
        "ghcr.io: each blob fetched once; its credentials went only to its token server",
        || {
            let second = lab.second();
            let t = second.upstream.since(&second.after_push);
            say(format!("    ghcr.io upstream traffic: {}", t.summary()));
            pulls::assert_each_blob_fetched_once("ghcr.io", &t, &other.blob_digests());
            credentials_go_only_to_their_registry(&lab, ghcr_tokens_before);
        },
    );
    f.check(
        "ns=evil.example / ns=127.0.0.1:PORT / path prefix: 404 NAME_UNKNOWN, no outbound connection",
        || unknown_registries_are_not_dialled(&lab, &single, &multi.blob_digests()[0]),
    );
    f.check(
        "two tiers: docker pull through edge -> middle -> registry (cold, then again after rmi)",
        || {
            let took = pulls::docker_pull(&lab, &conc, PULL_TIMEOUT);
            say(format!("    docker pull {} (cold) in {:.1}s", conc.short_ref(), took.as_secs_f64()));
            lab.dockerd().remove_everything();
            let took = pulls::docker_pull(&lab, &conc, PULL_TIMEOUT);
            say(format!("    docker pull {} (warm) in {:.1}s", conc.short_ref(), took.as_secs_f64()));
            let took = pulls::docker_pull(&lab, &single, PULL_TIMEOUT);
            say(format!("    docker pull {} (cached at the edge by ctr) in {:.1}s", single.short_ref(), took.as_secs_f64()));
            // The middle tier saw each blob once from the edge, however often clients asked.
            let acc = lab.middle().access_since(middle_mark);
            let mut per_blob = std::collections::BTreeMap::<String, usize>::new();
            for a in acc.iter().filter(|a| a.method == "GET" && a.path.contains("/blobs/sha256:")) {
                let d = a.path.rsplit('/').next().unwrap_or_default().to_owned();
                *per_blob.entry(d).or_default() += 1;
            }
            let want: std::collections::BTreeMap<String, usize> = single
                .blob_digests()
                .into_iter()
                .chain(conc.blob_digests())
                .map(|d| (d, 1))
                .collect();
            assert_eq!(
                per_blob,
                want,
                "blob GETs the middle tier got from the edge (want one per blob); middle access log:\n{}",
                acc.iter().map(|a| a.short()).collect::<Vec<_>>().join("\n")
            );
        },
    );
    f.check(
        "skopeo copy straight from the middle tier (warm there)",
        || {
            pulls::skopeo_copy(
                &lab,
                &format!("{middle}/{}:{}", conc.repo, conc.tag),
                &conc,
                PULL_TIMEOUT,
            )
        },
    );
    f.check(
        "docker.io registry and CDN saw exactly one GET per blob over the whole run",
        || {
            let t = lab.upstream().since(&lab.after_push);
            say(format!("    docker.io upstream traffic: {}", t.summary()));
            let mut digests = single.blob_digests();
            digests.extend(conc.blob_digests());
            digests.sort();
            digests.dedup();
            pulls::assert_each_blob_fetched_once("docker.io", &t, &digests);
            let leaked = t
                .cdn
                .iter()
                .filter(|r| r.authorized || r.status == 400)
                .count();
            assert_eq!(
                leaked,
                0,
                "CDN requests carrying Authorization:\n{}",
                t.listing()
            );
        },
    );
    f.check(
        "no regcache log line, at any level, holds a password, a Basic credential or a token",
        || no_secrets_in_logs(&lab),
    );
    lab.assert_alive();
    say(format!("{test}: {:.1}s", started.elapsed().as_secs_f64()));
    f.finish();
}

/// Greps both regcaches' logs (written at `trace`) for the ghcr.io password, its Basic
/// encoding and every token either token server issued during the run.
fn no_secrets_in_logs(lab: &Lab) {
    use base64::Engine as _;
    let password = lab.second().puller_password.clone();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{SECOND_PULLER}:{password}"));
    let mut secrets = vec![
        ("the ghcr.io password", password),
        ("its Basic encoding", basic),
    ];
    for t in lab.tokens().issued() {
        secrets.push(("a docker.io token", t.token));
    }
    for t in lab.second().tokens.issued() {
        secrets.push(("a ghcr.io token", t.token));
    }
    let mut lines = 0;
    for mirror in [lab.mirror(), lab.middle()] {
        let log = mirror.log.as_ref().expect("regcache log");
        let text = std::fs::read_to_string(log).expect("read regcache log");
        lines += text.lines().count();
        for (what, s) in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{what} appears in {}",
                log.display()
            );
        }
    }
    assert!(
        lines > 100,
        "the logs hold {lines} lines: too few to mean anything"
    );
    say(format!(
        "    {} secrets checked against {lines} log lines (trace level)",
        secrets.len()
    ));
}
