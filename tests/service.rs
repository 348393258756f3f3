//! regcache as a systemd service, run as a child process the way systemd runs it: READY=1,
//! RELOADING=1 and STOPPING=1 on a notify socket the test creates, SIGHUP reloading rotated
//! certificates, htpasswd and password files during a transfer, graceful stops (and the
//! second signal), socket activation through systemd's own `systemd-socket-activate`,
//! `${CREDENTIALS_DIRECTORY}` paths.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::https::*;
use support::*;

/// A `regcache serve` child process, killed when dropped; its stderr goes to `log`.
struct Served {
    child: Child,
    log: PathBuf,
}

impl Served {
    /// `regcache serve --config <dir>/regcache.toml` (written from `toml`), cache in
    /// `<dir>/cache`, with `env`.
    fn start(dir: &Path, toml: &str, env: &[(&str, &str)]) -> Served {
        Self::start_with(
            Command::new(env!("CARGO_BIN_EXE_regcache")),
            dir,
            toml,
            env,
            &[],
        )
    }

    fn start_with(
        mut cmd: Command,
        dir: &Path,
        toml: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Served {
        let cfg = dir.join("regcache.toml");
        std::fs::write(&cfg, toml).unwrap();
        let log = dir.join("regcache.log");
        let child = cmd
            .args(extra)
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .env("REGCACHE_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .envs(regcache::upstream::proxy::PROXY_ENV.map(|k| (k, "")))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start regcache");
        Served { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `needle` (at most 20 s).
    async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, s: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), s).unwrap();
    }

    /// Waits for it to exit (at most `limit`); its exit code.
    async fn exit_code(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use rustix::process::Signal;

fn upstream_toml(up: &FakeUpstream) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\nredirect_hosts = {:?}\n",
        up.url(),
        up.redirect_hosts()
    )
}

/// The next notify datagram (at most 20 s).
async fn next_notice(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), sock.recv(&mut buf))
        .await
        .expect("a notify message within 20 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// READY=1 only once the listener accepts, with a STATUS= line; RELOADING=1 then READY=1 on
/// SIGHUP (the mirror lives on); STOPPING=1 on SIGTERM, then exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_of_ready_reload_and_stop() {
    let up = FakeUpstream::start(300).await;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&notify).unwrap();
    let port = support::proc::free_port();
    let mut m = Served::start(
        dir.path(),
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n{}",
            upstream_toml(&up)
        ),
        &[("NOTIFY_SOCKET", notify.to_str().unwrap())],
    );
    let ready = next_notice(&sock).await;
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        ready.contains(&format!(
            "STATUS=serving http://127.0.0.1:{port} for docker.io"
        )),
        "{ready}"
    );
    // Ready means accepting: no retry needed.
    assert_eq!(plain_get(port, "/v2/", &[]).await.status, 200);
    m.signal(Signal::HUP);
    let reloading = next_notice(&sock).await;
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    let again = next_notice(&sock).await;
    assert!(again.contains("READY=1"), "{again}");
    m.wait_log("reloaded").await;
    assert_eq!(
        plain_get(port, "/v2/", &[]).await.status,
        200,
        "alive after SIGHUP"
    );
    m.signal(Signal::TERM);
    let stopping = next_notice(&sock).await;
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert_eq!(m.exit_code(Duration::from_secs(15)).await, 0);
}

/// SIGHUP during a slow HTTPS transfer: the transfer completes; new connections get the new
/// certificate, the new htpasswd entry (the old password is refused) and the upstream gets
/// the new password; nothing secret is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_certificate_htpasswd_and_password_during_a_transfer() {
    let up = FakeUpstream::start(300).await;
    let (slow, slow_data) = up.add_random_blob(1_500_000, 21);
    let (later, later_data) = up.add_random_blob(50_000, 22);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("test CA");
    let first = ca.server(&["localhost"]);
    let (cert, key) = first.write(d, "server");
    std::fs::write(d.join("htpasswd"), htpasswd_line("alice", "old-pass-111")).unwrap();
    std::fs::write(d.join("hub-password"), "upstream-pass-AAA\n").unwrap();
    let port = support::proc::free_port();
    let m = Served::start(
        d,
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nhtpasswd = \"{}\"\n{}username = \"me\"\npassword_file = \"{}\"\n",
            cert.display(),
            key.display(),
            d.join("htpasswd").display(),
            upstream_toml(&up),
            d.join("hub-password").display()
        ),
        &[],
    );
    m.wait_log("regcache serving").await;
    let client = tls_client(&ca.pem(), None);
    let old = basic("alice", "old-pass-111");
    // ~3 s for the slow blob.
    up.set_faults(Faults {
        throttle: Some((50_000, Duration::from_millis(100))),
        ..Default::default()
    });
    let transfer = {
        let (client, old) = (client.clone(), old.clone());
        let path = format!("/v2/library/app/blobs/{slow}");
        tokio::spawn(async move {
            tls_get(port, "localhost", client, &path, &[("Authorization", &old)]).await
        })
    };
    eventually("the slow transfer is under way", || {
        up.counters.cdn_bytes.load(Ordering::SeqCst) > 100_000
    })
    .await;
    let second = ca.server(&["localhost"]);
    second.write(d, "server");
    std::fs::write(d.join("htpasswd"), htpasswd_line("alice", "new-pass-222")).unwrap();
    std::fs::write(d.join("hub-password"), "upstream-pass-BBB\n").unwrap();
    m.signal(Signal::HUP);
    m.wait_log("reloaded").await;
    let done = transfer.await.unwrap().unwrap();
    assert_eq!(done.status, 200);
    assert!(
        done.body == slow_data,
        "the transfer in flight completed intact"
    );
    up.set_faults(Faults::default());
    // New connections: the new certificate and the new password.
    let path = format!("/v2/library/app/blobs/{later}");
    let a = tls_get(
        port,
        "localhost",
        client.clone(),
        &path,
        &[("Authorization", &old)],
    )
    .await
    .unwrap();
    assert_eq!(
        a.status, 401,
        "the old password is refused after the reload"
    );
    use rustls_pki_types::pem::PemObject;
    let second_der = rustls_pki_types::CertificateDer::from_pem_slice(second.cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    assert_eq!(
        a.server_cert.as_deref(),
        Some(&second_der[..]),
        "new certificate"
    );
    let new = basic("alice", "new-pass-222");
    let a = tls_get(port, "localhost", client, &path, &[("Authorization", &new)])
        .await
        .unwrap();
    assert_eq!((a.status, a.body == later_data), (200, true));
    // The upstream saw the old password before the reload and the new one after.
    let token_auth = up.counters.token_auth.lock().unwrap().clone();
    let as_basic = |p: &str| Some(basic("me", p));
    assert_eq!(
        token_auth.first().cloned().flatten(),
        as_basic("upstream-pass-AAA")
    );
    assert_eq!(
        token_auth.last().cloned().flatten(),
        as_basic("upstream-pass-BBB")
    );
    m.wait_log("credentials_changed=docker.io").await;
    let log = m.log();
    for secret in [
        "old-pass-111",
        "new-pass-222",
        "upstream-pass-AAA",
        "upstream-pass-BBB",
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// A reload whose config no longer loads changes nothing (the mirror serves on); a changed
/// setting a reload cannot apply is named as needing a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_running_configuration() {
    let up = FakeUpstream::start(300).await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::proc::free_port();
    let toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n{}",
        upstream_toml(&up)
    );
    let m = Served::start(dir.path(), &toml, &[]);
    m.wait_log("regcache serving").await;
    let cfg = dir.path().join("regcache.toml");
    std::fs::write(&cfg, "tag_ttl = \"soon\"\n").unwrap();
    m.signal(Signal::HUP);
    m.wait_log("reload failed, the running configuration stays")
        .await;
    assert!(m.log().contains("tag_ttl"), "{}", m.log());
    assert_eq!(plain_get(port, "/v2/", &[]).await.status, 200);
    std::fs::write(&cfg, format!("idle_timeout = \"5m\"\n{toml}")).unwrap();
    m.signal(Signal::HUP);
    m.wait_log("needs_restart=idle_timeout").await;
    assert!(
        m.log()
            .contains("restart regcache to apply the other changes (idle_timeout)"),
        "{}",
        m.log()
    );
}

/// SIGHUP applies a changed freshness policy and rate-limit reserve without a restart: a tag
/// trusted for an hour is revalidated on every pull once `tag_ttl = "0s"` is reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_freshness_policy() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/fresh", "latest", 100, 7);
    let dir = tempfile::tempdir().unwrap();
    let port = support::proc::free_port();
    let listeners = format!("[[listeners]]\naddress = \"127.0.0.1:{port}\"\n");
    let m = Served::start(
        dir.path(),
        &format!("tag_ttl = \"1h\"\n{listeners}{}", upstream_toml(&up)),
        &[],
    );
    m.wait_log("regcache serving").await;
    let path = "/v2/library/fresh/manifests/latest";
    for _ in 0..3 {
        assert_eq!(plain_get(port, path, &[]).await.status, 200);
    }
    assert_eq!(n(&up.counters.manifest_head), 0, "trusted for 1h");
    std::fs::write(
        dir.path().join("regcache.toml"),
        format!(
            "tag_ttl = \"0s\"\nrate_limit_reserve = 3\n{listeners}{}",
            upstream_toml(&up)
        ),
    )
    .unwrap();
    m.signal(Signal::HUP);
    m.wait_log("freshness policy").await;
    assert!(!m.log().contains("needs_restart=registries"), "{}", m.log());
    assert!(!m.log().contains("needs_restart=tag_ttl"), "{}", m.log());
    for _ in 0..2 {
        assert_eq!(plain_get(port, path, &[]).await.status, 200);
    }
    assert_eq!(
        n(&up.counters.manifest_head),
        2,
        "revalidated on every pull now"
    );
    let metrics = plain_get(port, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("regcache_upstream_ratelimit_reserve{registry=\"docker.io\"} 3"),
        "{text}"
    );
}

/// The `regcache status --json` disk report of a stopped mirror's cache.
fn disk(cache: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["status", "--json", "--cache-dir"])
        .arg(cache)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["disk"].clone()
}

/// SIGTERM during a transfer: it completes (the blob is committed) and the mirror exits 0.
/// With a short shutdown_grace, it is cut instead: exit 0, and nothing half-written is
/// committed or left behind. A second SIGTERM cuts the wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_lets_transfers_finish_within_the_grace_period() {
    let up = FakeUpstream::start(300).await;
    let (blob, data) = up.add_random_blob(1_000_000, 31);
    up.set_faults(Faults {
        throttle: Some((50_000, Duration::from_millis(100))), // ~2 s
        ..Default::default()
    });
    for (grace, second_signal) in [("1m", false), ("1s", false), ("1m", true)] {
        let dir = tempfile::tempdir().unwrap();
        let port = support::proc::free_port();
        let mut m = Served::start(
            dir.path(),
            &format!(
                "shutdown_grace = \"{grace}\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\n{}",
                upstream_toml(&up)
            ),
            &[],
        );
        m.wait_log("regcache serving").await;
        let before = up.counters.cdn_bytes.load(Ordering::SeqCst);
        let path = format!("/v2/library/app/blobs/{blob}");
        let transfer = tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tcp.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut raw = Vec::new();
            let _ = tcp.read_to_end(&mut raw).await;
            raw
        });
        eventually("the transfer is under way", || {
            up.counters.cdn_bytes.load(Ordering::SeqCst) > before + 100_000
        })
        .await;
        let started = Instant::now();
        m.signal(Signal::TERM);
        if second_signal {
            m.wait_log("waiting for responses in progress").await;
            m.signal(Signal::TERM);
        }
        assert_eq!(m.exit_code(Duration::from_secs(20)).await, 0, "{}", m.log());
        let took = started.elapsed();
        let raw = transfer.await.unwrap();
        let complete = raw.ends_with(&data);
        let d = disk(&dir.path().join("cache"));
        match (grace, second_signal) {
            ("1m", false) => {
                assert!(complete, "the transfer finished during the grace period");
                assert_eq!(d["blobs"], 1, "and its fill was committed: {d}");
            }
            _ => {
                assert!(!complete, "cut");
                assert!(took < Duration::from_secs(5), "cut quickly: {took:?}");
                assert_eq!(d["blobs"], 0, "nothing half-written committed: {d}");
                assert!(
                    m.log().contains("fills in progress are discarded"),
                    "{}",
                    m.log()
                );
            }
        }
        assert_eq!(d["temp_files"], 0, "nothing left behind: {d}");
        assert_eq!(d["damaged"], 0, "{d}");
    }
}

/// Socket activation by systemd's own tool: the passed socket is matched to the listener by
/// its FileDescriptorName (here the config's address differs), served at once; a passed socket
/// that matches no listener is refused with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_on_the_passed_socket() {
    let Some(activate) = support::proc::which("systemd-socket-activate") else {
        eprintln!("SKIP socket_activation_serves_on_the_passed_socket: systemd-socket-activate not installed (Debian package systemd)");
        return;
    };
    let up = FakeUpstream::start(300).await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::proc::free_port();
    let unused = support::proc::free_port();
    let toml = format!(
        "[[listeners]]\nname = \"lan\"\naddress = \"127.0.0.1:{unused}\"\n{}",
        upstream_toml(&up)
    );
    let activated = |fdname: &str| {
        let mut c = Command::new(&activate);
        c.args(["-l", &format!("127.0.0.1:{port}"), "--fdname", fdname])
            .args(["-E", "REGCACHE_LOG=info"])
            .arg(env!("CARGO_BIN_EXE_regcache"));
        c
    };
    let m = Served::start_with(activated("lan"), dir.path(), &toml, &[], &[]);
    // systemd-socket-activate listens, and starts regcache on the first connection.
    eventually_async("systemd-socket-activate listens", || async {
        m.log().contains("Listening on")
    })
    .await;
    let a = plain_get(port, "/v2/", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    m.wait_log("socket from systemd").await;
    assert!(
        m.log().contains(&format!(
            "http://127.0.0.1:{port} (lan) [auth: none (loopback); socket from systemd]"
        )),
        "the log names the socket's own address: {}",
        m.log()
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", unused))
            .await
            .is_err(),
        "the config's own address is not bound"
    );
    drop(m);
    // A passed socket on the network, for a listener the config puts on loopback, while the
    // upstream has credentials: refused like address = "0.0.0.0:…" would be.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
    let with_credentials = format!(
        "{toml}username = \"me\"\npassword_file = \"{}\"\n",
        dir.path().join("pw").display()
    );
    let mut exposed = Command::new(&activate);
    exposed
        .args(["-l", &format!("0.0.0.0:{port}"), "--fdname", "lan"])
        .args(["-E", "REGCACHE_LOG=info"])
        .arg(env!("CARGO_BIN_EXE_regcache"));
    let mut m = Served::start_with(exposed, dir.path(), &with_credentials, &[], &[]);
    eventually_async("systemd-socket-activate listens", || async {
        m.log().contains("Listening on")
    })
    .await;
    let _ = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert_eq!(m.exit_code(Duration::from_secs(20)).await, 2, "{}", m.log());
    assert!(
        m.log().contains(&format!("listener http://0.0.0.0:{port} (lan) is reachable from the network without client auth"))
            && m.log().contains("as bound or passed by systemd"),
        "{}",
        m.log()
    );
    drop(m);
    let dir = tempfile::tempdir().unwrap();
    let mut m = Served::start_with(activated("other"), dir.path(), &toml, &[], &[]);
    eventually_async("systemd-socket-activate listens", || async {
        m.log().contains("Listening on")
    })
    .await;
    let _ = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert_eq!(m.exit_code(Duration::from_secs(20)).await, 1, "{}", m.log());
    let log = m.log();
    assert!(
        log.contains(&format!("passed a socket on 127.0.0.1:{port} (FileDescriptorName=other) that matches no listener"))
            && log.contains("name = \"other\""),
        "{log}"
    );
}

/// `${CREDENTIALS_DIRECTORY}` (systemd's LoadCredential=) in password_file and tls_key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_directory_paths() {
    let up = FakeUpstream::start(300).await;
    let (blob, data) = up.add_random_blob(10_000, 41);
    let dir = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let (cert, _) = ca.server(&["localhost"]).write(creds.path(), "server");
    std::fs::write(creds.path().join("hub-password"), "from-credentials\n").unwrap();
    let port = support::proc::free_port();
    let toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"${{CREDENTIALS_DIRECTORY}}/server.key\"\n{}username = \"me\"\npassword_file = \"${{CREDENTIALS_DIRECTORY}}/hub-password\"\n",
        cert.display(),
        upstream_toml(&up)
    );
    let m = Served::start(
        dir.path(),
        &toml,
        &[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())],
    );
    m.wait_log("regcache serving").await;
    let a = tls_get(
        port,
        "localhost",
        tls_client(&ca.pem(), None),
        &format!("/v2/library/app/blobs/{blob}"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!((a.status, a.body == data), (200, true));
    let auth = up.counters.token_auth.lock().unwrap().clone();
    assert_eq!(
        auth.last().cloned().flatten(),
        Some(basic("me", "from-credentials"))
    );
}

/// A client certificate the listener refuses (none, or another CA's) is logged at info with
/// the fix, so an operator sees why a client cannot pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_client_certificates_are_logged() {
    let up = FakeUpstream::start(300).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let (cert, key) = ca.server(&["localhost"]).write(dir.path(), "server");
    std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
    let port = support::proc::free_port();
    let m = Served::start(
        dir.path(),
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n{}",
            cert.display(),
            key.display(),
            dir.path().join("ca.crt").display(),
            upstream_toml(&up)
        ),
        &[],
    );
    m.wait_log("regcache serving").await;
    assert!(
        m.log().contains("[auth: client certificate; bound]"),
        "{}",
        m.log()
    );
    let other = TestCa::new("another CA").client("laptop");
    for client in [None, Some(&other)] {
        let r = tls_get(
            port,
            "localhost",
            tls_client(&ca.pem(), client),
            "/v2/",
            &[],
        )
        .await;
        assert!(r.is_err(), "{r:?}");
    }
    m.wait_log("TLS client certificate refused: the client needs a certificate signed by the listener's client_ca (regcache certs client)").await;
    let good = ca.client("docker-host-7");
    let a = tls_get(
        port,
        "localhost",
        tls_client(&ca.pem(), Some(&good)),
        "/v2/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    m.wait_log("user=\"docker-host-7\"").await;
}

/// A graceful stop while an HTTP/2 client (curl, reading at 1 MB/s) is still reading its last
/// response: it gets every byte, and the mirror exits 0. (The connection's close drains what the
/// client still sends — its WINDOW_UPDATEs — instead of closing with unread input, which makes
/// the kernel reset the connection and discard the bytes still in flight.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_their_whole_response_across_a_graceful_stop() {
    let Some(curl) = support::proc::which("curl") else {
        eprintln!("SKIP http2_clients_get_their_whole_response_across_a_graceful_stop: curl not installed");
        return;
    };
    let up = FakeUpstream::start(300).await;
    let (blob, data) = up.add_random_blob(20_000_000, 51);
    let dir = tempfile::tempdir().unwrap();
    let port = support::proc::free_port();
    let mut m = Served::start(
        dir.path(),
        &format!(
            "shutdown_grace = \"1m\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\n{}",
            upstream_toml(&up)
        ),
        &[],
    );
    m.wait_log("regcache serving").await;
    let url = format!("http://127.0.0.1:{port}/v2/library/app/blobs/{blob}");
    // Cached first: the stop then meets a response sent from disk as fast as the client takes it.
    assert_eq!(
        plain_get(port, &format!("/v2/library/app/blobs/{blob}"), &[])
            .await
            .body,
        data
    );
    let out = dir.path().join("blob");
    let mut c = tokio::process::Command::new(curl)
        .args(["-sS", "--http2-prior-knowledge", "--limit-rate", "1M", "-o"])
        .arg(&out)
        .arg(&url)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    m.signal(Signal::TERM);
    let status = tokio::time::timeout(Duration::from_secs(30), c.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "curl: {status}\n{}", m.log());
    assert!(std::fs::read(&out).unwrap() == data, "every byte");
    assert_eq!(m.exit_code(Duration::from_secs(20)).await, 0);
}
