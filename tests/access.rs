//! Client access control: htpasswd (Basic) and client-certificate listeners, the refusal of a
//! network listener without client auth while a registry has credentials, plain HTTP sent to
//! an HTTPS port.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::https::*;
use support::*;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// `check-config` (or `serve`) on `toml`: exit code and stderr.
fn run(cmd: &str, toml: &str, extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "regcache.toml", toml);
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"));
    c.args([cmd, "--config", &cfg, "--cache-dir"])
        .arg(dir.path().join("cache"))
        .args(extra)
        .envs(regcache::upstream::proxy::PROXY_ENV.map(|k| (k, "")))
        .env("REGCACHE_LOG", "warn");
    // `serve` that does start is stopped by the test.
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let _ = s;
            return (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if std::time::Instant::now() > deadline {
            // Still serving: stop it and report what it said.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::TERM,
            );
            let out = child.wait_with_output().unwrap();
            return (
                1000 + out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A network listener with no client auth while a registry has credentials: check-config and
/// serve refuse it, naming the key and the fixes; `allow_anonymous` (or client auth, or
/// loopback) lets it start.
#[test]
fn a_network_listener_serving_credentials_needs_client_auth() {
    let secrets = tempfile::tempdir().unwrap();
    let pw = write(secrets.path(), "hub-password", "s3cret\n");
    let port = support::proc::free_port();
    let base = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\nusername = \"me\"\npassword_file = \"{pw}\"\n"
    );
    let exposed = format!("[[listeners]]\naddress = \"0.0.0.0:{port}\"\n{base}");
    for cmd in ["check-config", "serve"] {
        let (code, err) = run(cmd, &exposed, &[]);
        assert_eq!(code, 2, "{cmd} refuses: {err}");
        for needle in [
            "allow_anonymous",
            &format!("http://0.0.0.0:{port}"),
            "docker.io has credentials",
            "htpasswd = FILE",
            "client_ca = FILE",
            "127.0.0.1",
            "line 2",
        ] {
            assert!(err.contains(needle), "{cmd}: {needle:?} in {err}");
        }
        assert!(!err.contains("s3cret"), "{err}");
    }
    // The same through the flags.
    let (code, err) = run(
        "check-config",
        &base,
        &["--listen", &format!("0.0.0.0:{port}")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--allow-anonymous"), "{err}");
    // The escape: it starts, and says what it does.
    let allowed =
        format!("[[listeners]]\naddress = \"0.0.0.0:{port}\"\nallow_anonymous = true\n{base}");
    let (code, err) = run("check-config", &allowed, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("allow_anonymous = true: anyone who can reach it")
            && err.contains("plain HTTP off loopback"),
        "warnings: {err}"
    );
    let (code, err) = run("serve", &allowed, &[]);
    assert_eq!(code, 1000, "serve ran until stopped: {err}");
    // Client auth makes it acceptable too; loopback needs nothing.
    let htpasswd = write(secrets.path(), "htpasswd", &htpasswd_line("alice", "pw"));
    let guarded =
        format!("[[listeners]]\naddress = \"0.0.0.0:{port}\"\nhtpasswd = \"{htpasswd}\"\n{base}");
    assert_eq!(run("check-config", &guarded, &[]).0, 0);
    let local = format!("[[listeners]]\naddress = \"127.0.0.1:{port}\"\n{base}");
    let (code, err) = run("check-config", &local, &[]);
    assert_eq!((code, err.as_str()), (0, ""));
    // Without credentials anywhere, an open network listener is only warned about.
    let (code, err) = run(
        "check-config",
        &format!("[[listeners]]\naddress = \"0.0.0.0:{port}\"\n"),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Docker uses a plain-HTTP mirror only on 127.0.0.1"),
        "{err}"
    );
}

/// Listener problems each name the key and the fix.
#[test]
fn listener_config_problems_name_the_key_and_fix() {
    let two = "[[listeners]]\naddress = \"127.0.0.1:5001\"\n[[listeners]]\naddress = \"127.0.0.1:5002\"\n";
    let (code, err) = run("check-config", two, &["--htpasswd", "/h"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("make one listener, but the config file has 2 [[listeners]]"),
        "flags never drop listeners silently: {err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let md5 = write(dir.path(), "md5", "alice:$apr1$abc$def\n");
    let empty = write(dir.path(), "empty", "# nobody\n");
    for (toml, needles) in [
        (
            "listen = \"127.0.0.1:5000\"\n[[listeners]]\naddress = \"127.0.0.1:5001\"\n".to_owned(),
            vec!["both given", "move them into a [[listeners]] entry"],
        ),
        (
            "listeners = []\n".to_owned(),
            vec!["listeners: is empty", "add a [[listeners]] entry"],
        ),
        (
            "[[listeners]]\nname = \"lan\"\n[[listeners]]\naddress = \"127.0.0.1:5001\"\n".into(),
            vec!["#1: address is missing", "address = \"0.0.0.0:5443\"", "line 1"],
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:5001\"\nclient_ca = \"/ca.crt\"\n".into(),
            vec!["client_ca", "need HTTPS", "regcache certs init", "line 3"],
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:5001\"\ntls_cert = \"/c\"\n".into(),
            vec!["tls_cert and tls_key must be given together"],
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:5001\"\n[[listeners]]\naddress = \"127.0.0.1:5001\"\n".into(),
            vec!["127.0.0.1:5001 is given to two listeners"],
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:5001\"\nname = \"a b\"\n".into(),
            vec!["\"a b\" is not a listener name", "FileDescriptorName"],
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:5001\"\nhtpasswd = \"/nonexistent/htpasswd\"\n"
                .into(),
            vec!["htpasswd /nonexistent/htpasswd: cannot read it", "LoadCredential"],
        ),
        (
            format!("[[listeners]]\naddress = \"127.0.0.1:5001\"\nhtpasswd = \"{md5}\"\n"),
            vec!["has an MD5 ($apr1$) hash", "htpasswd -B"],
        ),
        (
            format!("[[listeners]]\naddress = \"127.0.0.1:5001\"\nhtpasswd = \"{empty}\"\n"),
            vec!["no entries"],
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:5001\"\nhtpasswd = \"/x/${CREDENTIALS_DIRECTORY}/h\"\n".into(),
            vec!["may only start a path"],
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:5001\"\nhtpasswd = \"${CREDENTIALS_DIRECTORY}/h\"\n".into(),
            vec!["CREDENTIALS_DIRECTORY is not set", "LoadCredential="],
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:5001\"\nallow_anonimous = true\n".into(),
            vec!["allow_anonymous"],
        ),
        (
            "shutdown_grace = \"0s\"\n".into(),
            vec!["shutdown_grace"],
        ),
    ] {
        let (code, err) = run("check-config", &toml, &[]);
        assert_eq!(code, 2, "{toml}: {err}");
        for n in needles {
            assert!(err.contains(n), "{toml}: {n:?} in {err}");
        }
    }
}

const PRIVATE: &str = "private/app";

/// An htpasswd listener: no or wrong credentials get a 401 with a Basic challenge and an OCI
/// body, and nothing is asked upstream; the right ones pull; health probes need none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_listener_challenges_and_never_asks_upstream_for_strangers() {
    let up = FakeUpstream::start(300).await;
    let (d, data) = up.add_random_blob(200_000, 7);
    let secrets = tempfile::tempdir().unwrap();
    let htpasswd = write(
        secrets.path(),
        "htpasswd",
        &(htpasswd_line("alice", "correct horse") + &htpasswd_line("bob", "x")),
    );
    let m = Mirror::start_with_config(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nhtpasswd = \"{htpasswd}\"\n[upstream]\nurl = \"{}\"\nredirect_hosts = {:?}\n",
        up.url(),
        up.redirect_hosts()
    ))
    .await;
    let port = m.addr.port();
    let blob = format!("/v2/{PRIVATE}/blobs/{d}");
    let wrong = basic("alice", "wrong");
    let unknown = basic("mallory", "correct horse");
    for (path, headers) in [
        ("/v2/", vec![]),
        (blob.as_str(), vec![]),
        (blob.as_str(), vec![("Authorization", wrong.as_str())]),
        (blob.as_str(), vec![("Authorization", unknown.as_str())]),
        (blob.as_str(), vec![("Authorization", "Bearer abc")]),
        ("/metrics", vec![]),
    ] {
        let a = plain_get(port, path, &headers).await;
        assert_eq!(a.status, 401, "{path} {headers:?}: {a:?}");
        assert_eq!(
            a.header("www-authenticate").as_deref(),
            Some("Basic realm=\"regcache\", charset=\"UTF-8\"")
        );
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{v}");
    }
    let empty = plain_get(port, &blob, &[("Authorization", &basic("", ""))]).await;
    assert_eq!(empty.status, 401);
    assert!(
        empty.text().contains("empty Basic credentials"),
        "{}",
        empty.text()
    );
    let wrong = plain_get(port, &blob, &[("Authorization", &wrong)]).await;
    assert!(
        wrong.text().contains("wrong user name or password"),
        "{}",
        wrong.text()
    );
    assert_eq!(
        up.counters.total.load(Ordering::SeqCst),
        0,
        "nothing upstream"
    );
    assert_eq!(up.counters.cdn_get.load(Ordering::SeqCst), 0);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(plain_get(port, probe, &[]).await.status, 200, "{probe}");
    }
    // Strangers get readiness alone: no upstream hosts, errors or disk figures.
    let bad = basic("alice", "wrong");
    for headers in [vec![], vec![("Authorization", bad.as_str())]] {
        let r = plain_get(port, "/readyz", &headers).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, r#"{"status":"ready"}"#)
        );
    }
    let full = plain_get(
        port,
        "/readyz",
        &[("Authorization", &basic("alice", "correct horse"))],
    )
    .await;
    assert!(full.text().contains("\"registries\""), "{}", full.text());
    let right = basic("alice", "correct horse");
    let a = plain_get(port, &blob, &[("Authorization", &right)]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, data);
    let a = plain_get(port, "/v2/", &[("Authorization", &basic("bob", "x"))]).await;
    assert_eq!(a.status, 200, "{a:?}");
}

/// A client-certificate listener: no certificate or one from another CA fails the handshake;
/// one from `client_ca` pulls. With htpasswd too, either one is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_listeners() {
    let up = FakeUpstream::start(300).await;
    let (d, data) = up.add_random_blob(100_000, 8);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let (cert, key) = ca
        .server(&["localhost", "127.0.0.1"])
        .write(dir.path(), "server");
    let ca_file = write(dir.path(), "ca.crt", &ca.pem());
    let other = TestCa::new("someone else's CA");
    let good = ca.client("docker-host-1");
    let stranger = other.client("docker-host-1");
    let htpasswd = write(dir.path(), "htpasswd", &htpasswd_line("ci", "token"));
    let blob = format!("/v2/{PRIVATE}/blobs/{d}");
    for with_htpasswd in [false, true] {
        let extra = if with_htpasswd {
            format!("htpasswd = \"{htpasswd}\"\n")
        } else {
            String::new()
        };
        let m = Mirror::start_with_config(&format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{ca_file}\"\n{extra}[upstream]\nurl = \"{}\"\nredirect_hosts = {:?}\n",
            cert.display(),
            key.display(),
            up.url(),
            up.redirect_hosts()
        ))
        .await;
        let port = m.addr.port();
        let a = tls_get(
            port,
            "localhost",
            tls_client(&ca.pem(), Some(&good)),
            &blob,
            &[],
        )
        .await
        .unwrap();
        assert_eq!((a.status, a.body == data), (200, true), "{with_htpasswd}");
        let refused = tls_get(
            port,
            "localhost",
            tls_client(&ca.pem(), Some(&stranger)),
            &blob,
            &[],
        )
        .await;
        assert!(refused.is_err(), "another CA's certificate: {refused:?}");
        let none = tls_get(port, "localhost", tls_client(&ca.pem(), None), &blob, &[]).await;
        if with_htpasswd {
            let a = none.unwrap();
            assert_eq!(a.status, 401, "no certificate, no credentials: {a:?}");
            let a = tls_get(
                port,
                "127.0.0.1",
                tls_client(&ca.pem(), None),
                &blob,
                &[("Authorization", &basic("ci", "token"))],
            )
            .await
            .unwrap();
            assert_eq!(a.status, 200, "credentials instead of a certificate: {a:?}");
        } else {
            assert!(none.is_err(), "no certificate: {none:?}");
        }
    }
}

/// Plain HTTP sent to an HTTPS listener gets a 400 saying to use https, not TLS garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_an_https_port_gets_a_clear_400() {
    let up = FakeUpstream::start(300).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let (cert, key) = ca.server(&["localhost"]).write(dir.path(), "server");
    let m = Mirror::start_with_config(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[upstream]\nurl = \"{}\"\n",
        cert.display(),
        key.display(),
        up.url()
    ))
    .await;
    let a = plain_get(m.addr.port(), "/v2/", &[]).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(
        a.text().contains(&format!(
            "this port speaks HTTPS: use https://<host>:{}",
            m.addr.port()
        )),
        "{}",
        a.text()
    );
    // HTTPS still works on it.
    let a = tls_get(
        m.addr.port(),
        "localhost",
        tls_client(&ca.pem(), None),
        "/v2/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
}
