//! End-to-end: real clients pulling through protected HTTPS listeners (issue 12, "Shown by").
//! See `tests/lab/mod.rs` for the lab and its environment, `tests/lab/protected.rs` for the
//! listeners and their files.
//!
//! The mirror has its plain loopback listener (the lab's own checks) and, from `[[listeners]]`
//! in its config file, HTTPS listeners with a certificate from `regcache certs init`:
//! `tls-client` (`client_ca`: a client certificate from `regcache certs client` is required),
//! `basic` (`htpasswd`: Basic credentials required), `either` (both: either one suffices), all
//! on 127.0.0.1, and `lan-tls-client` / `lan-basic` on the host's non-loopback address, for
//! dockerd (see below).
//!
//! 1. Refused first, while nothing is cached: skopeo without a client certificate (handshake
//!    error) and without or with wrong credentials (401); ctr with only `ca` in hosts.toml at
//!    both; dockerd without a client certificate, and without credentials; dockerd at a
//!    loopback mirror even *with* `certs.d/127.0.0.1:<port>/client.cert`. No request reaches
//!    the upstream registry or its CDN meanwhile, and every access-log entry is a 401.
//! 2. skopeo copies `e2e-multi:v1` (`--all`, every blob checked) with `--src-cert-dir DIR`
//!    (`ca.crt`, `client.cert`, `client.key`) from `tls-client`, with `--src-creds` (and a
//!    `--src-cert-dir` holding only `ca.crt`) from `basic`, and with either from `either`.
//! 3. ctr pulls `docker.io/library/e2e-multi:v1` (linux/amd64, unpacked, digest checked)
//!    through hosts.toml `ca` + `client = [[cert, key]]` from `tls-client`, `ca` +
//!    `[host."https://…".header] Authorization = ["Basic …"]` from `basic`, and `ca` +
//!    `ctr --user` (containerd answers the Basic challenge) from `basic`.
//! 4. dockerd (`registry-mirrors: ["https://<lan ip>:<port>"]`, reloaded by SIGHUP) pulls
//!    `e2e-multi:v1` with `/etc/docker/certs.d/<lan ip>:<port>/{ca.crt,client.cert,client.key}`
//!    (installed for the test, removed after), digest checked.
//! 5. dockerd and Basic credentials at a mirror, as found below.
//!
//! The access log's `user` field names who pulled each time (the certificate's subject, here
//! `e2e-client`, or the Basic user).
//!
//! What each client supports, as found here (Docker 20.10.24, containerd 1.6.20, skopeo
//! 1.9.3); the checks assert it, so a change in a client shows up as a failure:
//! - **dockerd, client certificates: yes, but not on a loopback mirror.** With
//!   `certs.d/<host:port>/{ca.crt,client.cert,client.key}` it verifies the mirror and presents
//!   the certificate. dockerd always counts 127.0.0.0/8 as an insecure registry, and for an
//!   insecure mirror it skips certificate checks and does not read `certs.d` at all (its debug
//!   log has no `hostDir:` line), so at `https://127.0.0.1:<port>` it sends no certificate:
//!   regcache logs "TLS client certificate refused ... peer sent no certificates", dockerd logs
//!   "Attempting next endpoint for pull after error: ... tls: certificate required" and falls
//!   back to registry-1.docker.io. Such a mirror must be reached at a non-loopback address or
//!   a name resolving to one (moby `registry/config.go`, `registry/service_v2.go`).
//! - **dockerd, Basic credentials: only docker.io's.** dockerd answers the mirror's Basic
//!   challenge with the credentials the CLI sends for the image's registry, docker.io (the
//!   config.json entry `https://index.docker.io/v1/`): with those the pull is served to that
//!   user. `docker login <mirror>` succeeds, but its entry is not used for docker.io pulls:
//!   dockerd gets the 401 on `/v2/`, logs "no basic auth credentials" and falls back to the
//!   Hub (the mirror sees no Authorization header). `docker login` for docker.io goes to the
//!   Hub, never the mirror. So Basic works for Docker only if the htpasswd entry is the user's
//!   Docker Hub login (which then reaches the mirror), or when the mirror is addressed as a
//!   registry (`docker pull <mirror>/library/NAME`, with `docker login <mirror>`), not as a
//!   registry mirror. Client certificates are the method for Docker.
//! - **containerd (ctr), both:** hosts.toml `ca` + `client = [["cert", "key"]]`; or
//!   `[host."https://…".header] Authorization = ["Basic …"]` (sent with every request, no
//!   401 first); or `ctr --user user:pass` (answers the Basic challenge after a 401).
//! - **skopeo, both:** `--src-cert-dir DIR` (`*.crt` CAs, a `*.cert` + `*.key` pair) and
//!   `--src-creds user:pass`, addressing the mirror as the registry
//!   (`docker://<mirror>/library/NAME:TAG`). With `--src-no-creds` skopeo still answers the
//!   Basic challenge, with an empty user and password (regcache logs "client credentials
//!   refused" with `user=`).
//! - Refused clients never cause an upstream request.

mod lab;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lab::images::TestImage;
use lab::mirror::Access;
use lab::protected::{Protected, CLIENT_NAME, USER};
use lab::{proc, pulls, say, Findings, Lab, LabOptions};

const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// A refused pull must fail within this (dockerd then tries registry-1.docker.io, which
/// does not resolve here).
const FAIL_TIMEOUT: Duration = Duration::from_secs(60);
const IMAGE: &str = "library/e2e-multi";

/// Access-log entries counted by (user, status).
fn users(entries: &[Access]) -> BTreeMap<(String, u16), usize> {
    let mut m = BTreeMap::new();
    for a in entries {
        *m.entry((a.user.clone(), a.status)).or_default() += 1;
    }
    m
}

fn listing(entries: &[Access]) -> String {
    entries
        .iter()
        .map(|a| format!("  {}\n", a.short()))
        .collect()
}

/// Asserts that the mirror answered 200s since `mark`, each to `user` (a Basic user or a
/// client certificate's subject), and returns the entries.
fn served_to(lab: &Lab, mark: usize, user: &str) -> Vec<Access> {
    let entries = lab.mirror().access_since(mark);
    let ok: Vec<&Access> = entries.iter().filter(|a| a.status == 200).collect();
    assert!(
        !ok.is_empty(),
        "no 200 in the access log; entries:\n{}",
        listing(&entries)
    );
    assert!(
        ok.iter().all(|a| a.user == user),
        "every 200 must name user {user:?}; entries:\n{}",
        listing(&entries)
    );
    say(format!("access log (user, status): {:?}", users(&entries)));
    entries
}

/// Log lines of regcache since `mark` with `needle`.
fn mirror_lines(lab: &Lab, mark: usize, needle: &str) -> Vec<String> {
    lab.mirror()
        .other_lines_since(mark)
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

fn stderr_line(out: &proc::Output) -> String {
    out.stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned()
}

// ---------------------------------------------------------------- skopeo

fn skopeo_try(
    lab: &Lab,
    name: &str,
    flags: &[String],
    addr: std::net::SocketAddr,
    img: &TestImage,
) -> (proc::Output, std::path::PathBuf) {
    let out = lab.fresh_dir(&format!("skopeo-{name}"));
    let res = lab.skopeo.try_copy_with(
        flags,
        &img.reference_in(&addr.to_string()),
        &out,
        true,
        PULL_TIMEOUT,
    );
    (res, out)
}

fn skopeo_ok(lab: &Lab, name: &str, flags: &[String], addr: std::net::SocketAddr, user: &str) {
    let img = lab.image(IMAGE);
    let mark = lab.mirror().log_mark();
    let (res, out) = skopeo_try(lab, name, flags, addr, img);
    assert!(
        res.ok(),
        "skopeo copy {flags:?} from {addr} failed ({}):\n{}\nregcache log:\n{}",
        res.status,
        res.stderr,
        lab.mirror().log_tail(20)
    );
    pulls::check_dir_copy(img, &out);
    served_to(lab, mark, user);
}

fn skopeo_refused(
    lab: &Lab,
    name: &str,
    flags: &[String],
    addr: std::net::SocketAddr,
    expect: &[&str],
) {
    let img = lab.image(IMAGE);
    let (res, _) = skopeo_try(lab, name, flags, addr, img);
    assert!(
        !res.ok(),
        "skopeo copy {flags:?} from {addr} must fail, it succeeded"
    );
    let err = res.stderr.to_lowercase();
    assert!(
        expect.iter().any(|e| err.contains(e)),
        "skopeo's error should mention one of {expect:?}:\n{}",
        res.stderr
    );
    say(format!("skopeo refused as expected: {}", stderr_line(&res)));
}

// ---------------------------------------------------------------- ctr

/// hosts.toml for docker.io at `https://addr` with `ca` and `extra` lines in the host table
/// (and its `header` table after it, when given).
fn hosts_toml(p: &Protected, addr: std::net::SocketAddr, extra: &str, header: &str) -> String {
    let mut s = format!(
        "server = \"https://registry-1.docker.io\"\n\n[host.\"https://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n{extra}",
        p.ca.display()
    );
    if !header.is_empty() {
        s.push_str(&format!("\n[host.\"https://{addr}\".header]\n{header}"));
    }
    s
}

fn ctr_try(lab: &Lab, hosts: &Path, extra_args: &[String], timeout: Duration) -> proc::Output {
    let img = lab.image(IMAGE);
    let mut c = lab.containerd().ctr();
    c.args(["images", "pull", "--hosts-dir"])
        .arg(hosts)
        .args(["--platform", "linux/amd64"])
        .args(extra_args)
        .arg(img.docker_io_ref());
    proc::run(&mut c, timeout)
}

fn ctr_ok(lab: &Lab, hosts: &Path, extra_args: &[String], user: &str) {
    let img = lab.image(IMAGE);
    let ctrd = lab.containerd();
    ctrd.remove_everything();
    let mark = lab.mirror().log_mark();
    let out = ctr_try(lab, hosts, extra_args, PULL_TIMEOUT);
    assert!(
        out.ok(),
        "ctr pull failed ({}):\n{}\n{}\nhosts.toml:\n{}\nregcache log:\n{}",
        out.status,
        out.stdout,
        out.stderr,
        std::fs::read_to_string(hosts.join("docker.io/hosts.toml")).unwrap_or_default(),
        lab.mirror().log_tail(20)
    );
    assert_eq!(
        out.stdout.matches("unpacking ").count(),
        1,
        "ctr should unpack linux/amd64:\n{}",
        out.stdout
    );
    assert_eq!(
        ctrd.image_digest(&img.docker_io_ref()).as_deref(),
        Some(img.digest()),
        "`ctr images ls` digest"
    );
    served_to(lab, mark, user);
    ctrd.remove_everything();
}

fn ctr_refused(lab: &Lab, hosts: &Path) {
    lab.containerd().remove_everything();
    let out = ctr_try(lab, hosts, &[], FAIL_TIMEOUT);
    assert!(
        !out.ok(),
        "ctr pull must fail, it succeeded:\n{}",
        out.stdout
    );
    say(format!("ctr refused as expected: {}", stderr_line(&out)));
}

// ---------------------------------------------------------------- docker

fn dockerd_log_mark(lab: &Lab) -> usize {
    proc::line_count(&lab.dockerd().daemon.log)
}

/// dockerd's log lines since `mark` that mention `needle`.
fn dockerd_lines(lab: &Lab, mark: usize, needle: &str) -> Vec<String> {
    proc::lines_after(&lab.dockerd().daemon.log, mark)
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

fn set_mirror(lab: &mut Lab, addr: std::net::SocketAddr) {
    lab.dockerd
        .as_mut()
        .expect("dockerd running")
        .set_registry_mirrors(&[format!("https://{addr}")]);
}

/// `docker pull` must fail (dockerd tries the mirror, then registry-1.docker.io, which does
/// not resolve here); returns dockerd's log lines about the mirror.
fn docker_refused(lab: &Lab, addr: std::net::SocketAddr) -> Vec<String> {
    let img = lab.image(IMAGE);
    lab.dockerd().remove_everything();
    let mark = dockerd_log_mark(lab);
    let out = lab.dockerd().try_pull(&img.short_ref(), FAIL_TIMEOUT);
    assert!(
        !out.ok(),
        "docker pull through {addr} must fail, it succeeded:\n{}",
        out.stdout
    );
    let lines = dockerd_lines(lab, mark, &addr.to_string());
    say(format!(
        "docker pull refused as expected: {}\ndockerd about {addr}:\n{}",
        stderr_line(&out),
        lines.join("\n")
    ));
    lines
}

/// What `docker pull` did with Basic credentials at the `lan-basic` mirror, one way of
/// giving them: whether it succeeded, and the (user, status) counts of the access log.
struct BasicProbe {
    pulled: bool,
    users: BTreeMap<(String, u16), usize>,
    /// dockerd's log lines about the mirror.
    dockerd: Vec<String>,
    detail: String,
}

fn docker_basic_probe(lab: &Lab, what: &str) -> BasicProbe {
    let img = lab.image(IMAGE);
    lab.dockerd().remove_everything();
    let mark = lab.mirror().log_mark();
    let dmark = dockerd_log_mark(lab);
    let started = Instant::now();
    let out = lab.dockerd().try_pull(&img.short_ref(), PULL_TIMEOUT);
    let entries = lab.mirror().access_since(mark);
    let refused = mirror_lines(lab, mark, "client credentials refused");
    let p = lab.protected();
    let mirror = p.lan_basic.expect("lan listener").to_string();
    let dockerd = dockerd_lines(lab, dmark, &mirror);
    let detail = format!(
        "{what}: docker pull {} after {:.1}s: {}\naccess log:\n{}credentials refused: {refused:?}\ndockerd about the mirror:\n{}",
        if out.ok() { "succeeded" } else { "FAILED" },
        started.elapsed().as_secs_f64(),
        if out.ok() { out.stdout.lines().last().unwrap_or("").to_owned() } else { stderr_line(&out) },
        listing(&entries),
        dockerd.join("\n"),
    );
    say(&detail);
    if out.ok() {
        pulls::docker_pull(lab, img, PULL_TIMEOUT);
    }
    BasicProbe {
        pulled: out.ok(),
        users: users(&entries),
        dockerd,
        detail,
    }
}

/// Writes the docker CLI's config.json with `auths` for `servers` (what `docker login` stores,
/// without its check against the server: docker.io's login would need the real Hub).
fn write_docker_auths(lab: &Lab, servers: &[&str]) {
    use base64::Engine as _;
    let p = lab.protected();
    let auth = base64::engine::general_purpose::STANDARD.encode(p.creds());
    let auths: serde_json::Map<String, serde_json::Value> = servers
        .iter()
        .map(|s| ((*s).to_owned(), serde_json::json!({ "auth": auth })))
        .collect();
    std::fs::write(
        lab.dockerd().cli_config.join("config.json"),
        serde_json::to_vec_pretty(&serde_json::json!({ "auths": auths })).expect("json"),
    )
    .expect("write docker config.json");
}

#[test]
fn real_clients_through_protected_listeners() {
    let test = "real_clients_through_protected_listeners";
    let Some(tools) = lab::preflight_regcache(test) else {
        return;
    };
    let started = Instant::now();
    let mut lab = Lab::start_with(
        tools,
        LabOptions {
            protected_listeners: true,
            ..Default::default()
        },
    );
    let p = lab.protected().clone();
    let lan = p.lan_tls_client.zip(p.lan_basic);
    if lan.is_none() {
        let msg = "this host has no non-loopback IPv4 address: dockerd presents client certificates only to non-loopback mirrors, so the dockerd checks cannot run";
        if std::env::var("REGCACHE_E2E").as_deref() == Ok("require") {
            panic!("{test}: {msg} (REGCACHE_E2E=require)");
        }
        say(format!("SKIP part of {test}: {msg}"));
    }
    let mut f = Findings::new(test);
    let ca_only = p.cert_dir("ca-only", false);
    let with_client = p.cert_dir("with-client", true);
    let cert_dir = |d: &Path| vec!["--src-cert-dir".to_owned(), d.display().to_string()];
    let subject = CLIENT_NAME;
    // The `either` listener with creds: the ca-only dir plus credentials.
    let creds_flags = {
        let mut v = cert_dir(&ca_only);
        v.extend(["--src-creds".to_owned(), p.creds()]);
        v
    };

    // 1. Everything refused, nothing asked upstream.
    let up = lab.upstream().mark();
    let log = lab.mirror().log_mark();
    f.check(
        "skopeo without a client certificate: handshake refused",
        || {
            let mut flags = cert_dir(&ca_only);
            flags.push("--src-no-creds".into());
            skopeo_refused(
                &lab,
                "no-cert",
                &flags,
                p.tls_client,
                &["certificate", "tls", "handshake"],
            );
        },
    );
    f.check("skopeo without credentials: 401", || {
        let mark = lab.mirror().log_mark();
        let mut flags = cert_dir(&ca_only);
        flags.push("--src-no-creds".into());
        skopeo_refused(&lab, "no-creds", &flags, p.basic, &["401", "unauthorized"]);
        // skopeo answers the Basic challenge even so, with empty credentials: refused (401).
        let e = lab.mirror().access_since(mark);
        assert!(
            !e.is_empty() && e.iter().all(|a| a.status == 401),
            "expected skopeo's empty credentials to be refused; log:\n{}",
            lab.mirror().log_tail(10)
        );
    });
    f.check("skopeo with a wrong password: 401, logged", || {
        let mark = lab.mirror().log_mark();
        let mut flags = cert_dir(&ca_only);
        flags.extend(["--src-creds".into(), format!("{USER}:wrong")]);
        skopeo_refused(&lab, "wrong", &flags, p.basic, &["401", "unauthorized"]);
        let refused = mirror_lines(&lab, mark, "client credentials refused");
        assert!(
            refused.iter().any(|l| l.contains(USER)),
            "regcache should log the refused user; log:\n{}",
            lab.mirror().log_tail(10)
        );
    });
    f.check("skopeo at `either` with neither: 401", || {
        let mut flags = cert_dir(&ca_only);
        flags.push("--src-no-creds".into());
        skopeo_refused(
            &lab,
            "either-none",
            &flags,
            p.either,
            &["401", "unauthorized"],
        );
    });
    let ctr_ca_only_tls = lab.containerd().write_hosts_toml(
        "hosts-ca-only-tls",
        "docker.io",
        &hosts_toml(&p, p.tls_client, "", ""),
    );
    let ctr_ca_only_basic = lab.containerd().write_hosts_toml(
        "hosts-ca-only-basic",
        "docker.io",
        &hosts_toml(&p, p.basic, "", ""),
    );
    f.check("ctr with only `ca` at tls-client: refused", || {
        ctr_refused(&lab, &ctr_ca_only_tls)
    });
    f.check("ctr with only `ca` at basic: refused", || {
        ctr_refused(&lab, &ctr_ca_only_basic)
    });
    // dockerd at a loopback mirror: certs.d is there, complete, and not used.
    let loopback_certs = p.install_docker_certs(&p.tls_client.to_string(), true);
    f.check(
        "docker at a loopback mirror with certs.d client.cert: no certificate sent",
        || {
            set_mirror(&mut lab, p.tls_client);
            let mark = lab.mirror().log_mark();
            let lines = docker_refused(&lab, p.tls_client);
            assert!(
                !lines.iter().any(|l| l.contains("hostDir")),
                "dockerd read certs.d for a loopback mirror after all:\n{}",
                lines.join("\n")
            );
            assert!(
                lines.iter().any(|l| l.contains("certificate required")),
                "dockerd should report the refused handshake:\n{}",
                lines.join("\n")
            );
            let failed = mirror_lines(&lab, mark, "TLS client certificate refused");
            assert!(
                !failed.is_empty(),
                "regcache should log a failed handshake; log:\n{}",
                lab.mirror().log_tail(20)
            );
            say(format!("regcache: {}", failed[0]));
        },
    );
    drop(loopback_certs);
    let lan_certs = lan.map(|(tls_client, basic)| {
        (
            p.install_docker_certs(&tls_client.to_string(), false),
            p.install_docker_certs(&basic.to_string(), false),
        )
    });
    if let Some((tls_client, basic)) = lan {
        f.check("docker without a client certificate: refused", || {
            set_mirror(&mut lab, tls_client);
            let mark = lab.mirror().log_mark();
            let lines = docker_refused(&lab, tls_client);
            assert!(
                lines.iter().any(|l| l.contains("hostDir")),
                "dockerd should read certs.d for a non-loopback mirror:\n{}",
                lines.join("\n")
            );
            assert!(
                !mirror_lines(&lab, mark, "TLS client certificate refused").is_empty(),
                "regcache should log a failed handshake; log:\n{}",
                lab.mirror().log_tail(20)
            );
        });
        f.check("docker without credentials: refused (401)", || {
            set_mirror(&mut lab, basic);
            let mark = lab.mirror().log_mark();
            docker_refused(&lab, basic);
            let e = lab.mirror().access_since(mark);
            assert!(
                !e.is_empty() && e.iter().all(|a| a.status == 401),
                "dockerd's requests should get 401s:\n{}",
                listing(&e)
            );
        });
    }
    f.check("nothing refused reached the upstream", || {
        let t = lab.upstream().since(&up);
        assert!(
            t.registry.is_empty() && t.cdn.is_empty(),
            "refused clients caused upstream requests: {}\n{}",
            t.summary(),
            t.listing()
        );
        let e = lab.mirror().access_since(log);
        assert!(
            e.iter().all(|a| a.status == 401),
            "while refusing, the mirror answered something other than 401:\n{}",
            listing(&e)
        );
        say(format!(
            "refusals: {} access-log 401s, {} failed handshakes, 0 upstream requests",
            e.len(),
            mirror_lines(&lab, log, "TLS client certificate refused").len()
        ));
    });

    // 2. skopeo.
    f.check(
        "skopeo --src-cert-dir (client certificate) at tls-client",
        || skopeo_ok(&lab, "cert", &cert_dir(&with_client), p.tls_client, subject),
    );
    f.check("skopeo --src-creds at basic", || {
        skopeo_ok(&lab, "creds", &creds_flags, p.basic, USER)
    });
    f.check("skopeo at either: a client certificate", || {
        let mut flags = cert_dir(&with_client);
        flags.push("--src-no-creds".into());
        skopeo_ok(&lab, "either-cert", &flags, p.either, subject)
    });
    f.check("skopeo at either: credentials", || {
        skopeo_ok(&lab, "either-creds", &creds_flags, p.either, USER)
    });

    // 3. ctr.
    let client_line = format!(
        "  client = [[\"{}\", \"{}\"]]\n",
        p.client_cert.display(),
        p.client_key.display()
    );
    let ctr_client = lab.containerd().write_hosts_toml(
        "hosts-client",
        "docker.io",
        &hosts_toml(&p, p.tls_client, &client_line, ""),
    );
    let ctr_header = lab.containerd().write_hosts_toml(
        "hosts-header",
        "docker.io",
        &hosts_toml(
            &p,
            p.basic,
            "",
            &format!("  Authorization = [\"{}\"]\n", p.basic_header()),
        ),
    );
    f.check("ctr: hosts.toml ca + client at tls-client", || {
        ctr_ok(&lab, &ctr_client, &[], subject)
    });
    f.check("ctr: hosts.toml header Authorization at basic", || {
        ctr_ok(&lab, &ctr_header, &[], USER)
    });
    f.check("ctr --user at basic", || {
        ctr_ok(
            &lab,
            &ctr_ca_only_basic,
            &["--user".into(), p.creds()],
            USER,
        )
    });

    // 4, 5. dockerd.
    if let Some((tls_client, basic)) = lan {
        // Now with the client pair for lan-tls-client (only ca.crt was there for the refusal).
        drop(lan_certs);
        let _client_certs = p.install_docker_certs(&tls_client.to_string(), true);
        let _basic_certs = p.install_docker_certs(&basic.to_string(), false);
        f.check(
            "docker: certs.d client.cert + client.key at lan-tls-client",
            || {
                set_mirror(&mut lab, tls_client);
                lab.dockerd().remove_everything();
                let mark = lab.mirror().log_mark();
                pulls::docker_pull(&lab, lab.image(IMAGE), PULL_TIMEOUT);
                served_to(&lab, mark, subject);
                lab.dockerd().remove_everything();
            },
        );
        f.check(
            "docker and Basic credentials: `docker login` to docker.io goes to the Hub",
            || {
                set_mirror(&mut lab, basic);
                let mark = lab.mirror().log_mark();
                let login = proc::run(
                    lab.dockerd()
                        .docker()
                        .args(["login", "-u", USER, "-p", &p.password]),
                    FAIL_TIMEOUT,
                );
                say(format!("docker login (docker.io): {}", stderr_line(&login)));
                assert!(!login.ok(), "docker login to docker.io cannot work offline");
                let e = lab.mirror().access_since(mark);
                assert!(
                    e.is_empty(),
                    "docker login (docker.io) should not ask the mirror:\n{}",
                    listing(&e)
                );
            },
        );
        f.check(
            "docker and Basic credentials: `docker login <mirror>` is not used for mirror pulls",
            || {
                let mark = lab.mirror().log_mark();
                let login = proc::run(
                    lab.dockerd()
                        .docker()
                        .args(["login", "-u", USER, "-p", &p.password])
                        .arg(basic.to_string()),
                    FAIL_TIMEOUT,
                );
                assert!(
                    login.ok(),
                    "docker login {basic} failed:\n{}\n{}",
                    login.stdout,
                    login.stderr
                );
                served_to(&lab, mark, USER);
                let probe = docker_basic_probe(&lab, "after `docker login <mirror>`");
                assert!(!probe.pulled, "{}", probe.detail);
                assert_eq!(
                    probe.users.keys().collect::<Vec<_>>(),
                    [&("-".to_owned(), 401)],
                    "dockerd should send no credentials to the mirror: {}",
                    probe.detail
                );
                assert!(
                    probe
                        .dockerd
                        .iter()
                        .any(|l| l.contains("no basic auth credentials")),
                    "{}",
                    probe.detail
                );
            },
        );
        f.check(
            "docker and Basic credentials: the mirror as a registry (`docker pull <mirror>/NAME`)",
            || {
                let img = lab.image(IMAGE);
                let reference = img.reference_in(&basic.to_string());
                lab.dockerd().remove_everything();
                let mark = lab.mirror().log_mark();
                let out = lab.dockerd().try_pull(&reference, PULL_TIMEOUT);
                assert!(
                    out.ok() && out.stdout.contains(img.digest()),
                    "docker pull {reference} ({}):\n{}\n{}",
                    out.status,
                    out.stdout,
                    out.stderr
                );
                let name = reference.rsplit_once(':').expect("tag").0;
                assert!(
                    lab.dockerd()
                        .images_digests()
                        .iter()
                        .any(|(r, t, d)| r == name && *t == img.tag && d == img.digest()),
                    "`docker images --digests` lacks {reference} {}",
                    img.digest()
                );
                served_to(&lab, mark, USER);
                lab.dockerd().remove_everything();
            },
        );
        f.check(
            "docker and Basic credentials: docker.io's credentials go to the mirror",
            || {
                write_docker_auths(&lab, &["https://index.docker.io/v1/"]);
                let probe = docker_basic_probe(&lab, "with docker.io credentials");
                assert!(probe.pulled, "{}", probe.detail);
                assert!(
                    probe.users.contains_key(&(USER.to_owned(), 200)),
                    "{}",
                    probe.detail
                );
                lab.dockerd().remove_everything();
                std::fs::remove_file(lab.dockerd().cli_config.join("config.json"))
                    .expect("remove docker config.json");
            },
        );
    }
    lab.assert_alive();
    say(format!(
        "{test}: {:.1}s in all",
        started.elapsed().as_secs_f64()
    ));
    f.finish();
}
