//! `regcache certs init|client|show` and `gen-cert` as an operator runs them (the binary), and
//! what they issue in real TLS handshakes: a client trusting only `ca.crt` reaches a server
//! using `regcache.crt`/`regcache.key` by name and by IP address; a client certificate is
//! accepted by a rustls `WebPkiClientVerifier` built from `ca.crt`, one from another CA is not.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Runs `regcache ARGS...`; returns (exit code, stdout, stderr).
fn regcache(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .env_remove("REGCACHE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `certs init --hostname localhost --ip 127.0.0.1 --out DIR`, which must succeed.
fn init(dir: &Path) -> String {
    let (code, out, err) = regcache(&[
        "certs",
        "init",
        "--hostname",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--out",
        s(dir),
    ]);
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn init_writes_a_ca_and_a_server_pair_and_says_what_each_client_needs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("certs");
    let out = init(&dir);
    assert_eq!(mode(&dir), 0o755);
    for (f, m) in [
        ("ca.crt", 0o644),
        ("ca.key", 0o600),
        ("regcache.crt", 0o644),
        ("regcache.key", 0o600),
    ] {
        assert_eq!(mode(&dir.join(f)), m, "{f}");
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        4,
        "no temp files left"
    );
    let d = dir.canonicalize().unwrap().display().to_string();
    for want in [
        "address = \"0.0.0.0:5000\"".to_owned(),
        format!("tls_cert = \"{d}/regcache.crt\""),
        format!("tls_key = \"{d}/regcache.key\""),
        "cp ca.crt /etc/docker/certs.d/localhost:5000/ca.crt".into(),
        "\"registry-mirrors\": [\"https://localhost:5000\"]".into(),
        "[host.\"https://localhost:5000\"]".into(),
        "capabilities = [\"pull\", \"resolve\"]".into(),
        "ca = \"/etc/containerd/certs.d/docker.io/regcache-ca.crt\"".into(),
        "/etc/containers/certs.d/localhost:5000/ca.crt".into(),
        "[[registry.mirror]]".into(),
        "DNS:localhost, IP:127.0.0.1".into(),
    ] {
        assert!(out.contains(&want), "{want} not in:\n{out}");
    }
    // --port goes into every instruction.
    let (code, out, _) = regcache(&[
        "certs",
        "init",
        "--hostname",
        "m.lan",
        "--port",
        "5443",
        "--out",
        s(&t.path().join("p")),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("/etc/docker/certs.d/m.lan:5443/ca.crt"),
        "{out}"
    );
    assert!(out.contains("0.0.0.0:5443"), "{out}");
}

#[test]
fn init_never_overwrites_without_force_and_force_keeps_the_ca() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    init(dir);
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let (ca, ca_key, crt, key) = (
        read("ca.crt"),
        read("ca.key"),
        read("regcache.crt"),
        read("regcache.key"),
    );
    let (code, out, err) = regcache(&["certs", "init", "--hostname", "localhost", "--out", s(dir)]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("ca.crt, ca.key, regcache.crt, regcache.key already there")
            && err.contains("--force")
            && err.contains("nothing written"),
        "{err}"
    );
    assert_eq!(read("regcache.crt"), crt);
    // A server certificate alone in the way is refused too.
    let lone = tempfile::tempdir().unwrap();
    std::fs::write(lone.path().join("regcache.key"), "x").unwrap();
    let (code, _, err) = regcache(&["certs", "init", "--hostname", "a", "--out", s(lone.path())]);
    assert_eq!(code, 2);
    assert!(err.contains("regcache.key already there"), "{err}");

    // --force: a new server pair, signed by the same CA (its files untouched).
    let (code, out, err) = regcache(&[
        "certs",
        "init",
        "--hostname",
        "localhost",
        "--out",
        s(dir),
        "--force",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kept"), "{out}");
    assert_eq!(read("ca.crt"), ca);
    assert_eq!(read("ca.key"), ca_key);
    assert_ne!(read("regcache.crt"), crt);
    assert_ne!(read("regcache.key"), key);
    assert_eq!(mode(&dir.join("regcache.key")), 0o600);
    // The reissued certificate is trusted by a client that only has the old ca.crt.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = server_config(dir, None);
        handshake(server, client_config(&ca, None), "localhost")
            .await
            .unwrap();
    });

    // --new-ca needs --force; with it, the CA is replaced.
    let (code, _, err) = regcache(&[
        "certs",
        "init",
        "--hostname",
        "localhost",
        "--out",
        s(dir),
        "--new-ca",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = regcache(&[
        "certs",
        "init",
        "--hostname",
        "localhost",
        "--out",
        s(dir),
        "--force",
        "--new-ca",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(read("ca.crt"), ca);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);

    // A CA without its key cannot be kept: say so, name the way out.
    std::fs::remove_file(dir.join("ca.key")).unwrap();
    let (code, _, err) = regcache(&[
        "certs",
        "init",
        "--hostname",
        "localhost",
        "--out",
        s(dir),
        "--force",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("ca.crt is there without ca.key") && err.contains("--new-ca"),
        "{err}"
    );
}

#[test]
fn bad_input_gets_the_problem_and_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o");
    for (args, says) in [
        (vec!["--hostname", "https://mirror.lan"], "without a scheme"),
        (vec!["--hostname", "mirror.lan:5000"], "the port is --port"),
        (
            vec!["--hostname", "m.lan", "--ip", "mirror.lan"],
            "--ip \"mirror.lan\": not an IP address",
        ),
    ] {
        let mut a = vec!["certs", "init", "--out", s(&out)];
        a.extend(args);
        let (code, _, err) = regcache(&a);
        assert_eq!(code, 2, "{a:?}: {err}");
        assert!(err.contains(says), "{a:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!out.exists(), "nothing written for bad input");
    // A directory that cannot be made.
    let file = t.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (code, _, err) = regcache(&[
        "certs",
        "init",
        "--hostname",
        "m.lan",
        "--out",
        s(&file.join("sub")),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--out DIR"), "{err}");
    // A client certificate needs a CA.
    let (code, _, err) = regcache(&[
        "certs",
        "client",
        "--name",
        "ci",
        "--ca-dir",
        s(&t.path().join("none")),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no CA to sign with") && err.contains("certs init"),
        "{err}"
    );
    let (code, _, err) = regcache(&["certs", "client", "--name", "../x", "--ca-dir", s(t.path())]);
    assert_eq!(code, 2);
    assert!(err.contains("a client name is"), "{err}");
    // Not a name that would land on the CA's key.
    let (code, _, err) = regcache(&["certs", "client", "--name", "ca", "--force"]);
    assert_eq!(code, 2);
    assert!(err.contains("pick another name"), "{err}");
}

#[test]
fn gen_cert_is_certs_init_and_no_longer_overwrites() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (code, out, err) = regcache(&["gen-cert", "--hostname", "mirror.lan", "--out-dir", s(dir)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("/etc/docker/certs.d/mirror.lan:5000/ca.crt"),
        "{out}"
    );
    let (code, show, _) = regcache(&["certs", "show", s(&dir.join("regcache.crt"))]);
    assert_eq!(code, 0, "{show}");
    assert!(!show.contains("rcgen self signed cert"), "{show}");
    assert!(show.contains("subject:    CN=mirror.lan"), "{show}");
    assert!(!show.contains("4096"), "{show}");
    let (code, _, err) = regcache(&["gen-cert", "--hostname", "mirror.lan", "--out-dir", s(dir)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("already there") && err.contains("--force"),
        "{err}"
    );
}

/// A certificate signed by `ca` (a fresh rcgen CA) valid from `from` to `until` (Unix seconds).
fn dated_cert(dir: &Path, name: &str, from: i64, until: i64) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut cap = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    cap.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    cap.distinguished_name = rcgen::DistinguishedName::new();
    cap.distinguished_name
        .push(rcgen::DnType::CommonName, "Test CA");
    let ca = cap.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![format!("{name}.lan")]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
    let c = p.signed_by(&key, &ca, &ca_key).unwrap();
    let path = dir.join(format!("{name}.crt"));
    std::fs::write(&path, c.pem()).unwrap();
    path
}

#[test]
fn show_prints_names_issuer_and_validity_and_warns_before_expiry() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    init(dir);
    let (code, out, err) = regcache(&["certs", "show", s(&dir.join("regcache.crt"))]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "2 certificates",
        "subject:    CN=localhost",
        "issuer:     CN=regcache local CA (localhost)",
        "SANs:       DNS:localhost, IP:127.0.0.1",
        "729 days left",
        "CA:         yes (path length 0)",
        "key usage:  digitalSignature; extended: serverAuth",
        "key usage:  keyCertSign, cRLSign",
    ] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
    assert!(err.is_empty(), "{err}");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = 86400;
    let soon = dated_cert(dir, "soon", now - 300 * day, now + 10 * day + 3600);
    let (code, out, err) = regcache(&["certs", "show", s(&soon)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("(10 days left)"), "{out}");
    assert!(
        err.contains("warning:") && err.contains("expires in 10 days") && err.contains("renew"),
        "{err}"
    );
    let gone = dated_cert(dir, "gone", now - 300 * day, now - 2 * day - 3600);
    let (code, out, err) = regcache(&["certs", "show", s(&gone)]);
    assert_eq!(code, 1);
    assert!(out.contains("EXPIRED 2 days ago"), "{out}");
    assert!(
        err.contains("EXPIRED on") && err.contains("clients refuse it"),
        "{err}"
    );
    let early = dated_cert(dir, "early", now + 2 * day, now + 300 * day);
    let (code, _, err) = regcache(&["certs", "show", s(&early)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not valid until") && err.contains("clock"),
        "{err}"
    );

    // Not a certificate: exit 2, saying what it is.
    let junk = dir.join("junk.txt");
    std::fs::write(&junk, "hello").unwrap();
    let (code, _, err) = regcache(&["certs", "show", s(&junk), s(&dir.join("ca.key"))]);
    assert_eq!(code, 2);
    assert!(err.contains("is not PEM (no -----BEGIN line)"), "{err}");
    assert!(
        err.contains("holds a PRIVATE KEY, not a certificate"),
        "{err}"
    );
}

#[test]
fn show_reads_the_config_and_checks_the_key() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    init(dir);
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    init(&other);
    let conf = |key: &Path| {
        let c = dir.join("regcache.toml");
        std::fs::write(
            &c,
            format!(
                "cache_dir = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
                s(&dir.join("cache")),
                s(&dir.join("regcache.crt")),
                s(key)
            ),
        )
        .unwrap();
        c
    };
    let c = conf(&dir.join("regcache.key"));
    let (code, out, err) = regcache(&["certs", "show", "--config", s(&c)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("listener https://127.0.0.1:5000: tls_cert "),
        "{out}"
    );
    assert!(out.contains("matches the first certificate"), "{out}");
    let c = conf(&other.join("regcache.key"));
    let (code, out, err) = regcache(&["certs", "show", "--config", s(&c)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("DOES NOT MATCH"), "{out}");
    assert!(err.contains("does not match its certificate"), "{err}");
    // No tls_cert in the config: nothing to show, and how to name files.
    let bare = dir.join("bare.toml");
    std::fs::write(&bare, "").unwrap();
    let (code, _, err) = regcache(&["certs", "show", "--config", s(&bare)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no tls_cert") && err.contains("certs show FILE"),
        "{err}"
    );
}

#[test]
fn swapped_and_mismatched_files_are_named_by_check_config() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    init(&a);
    init(&b);
    let check = |cert: &Path, key: &Path| {
        regcache(&[
            "check-config",
            "--cache-dir",
            s(&t.path().join("cache")),
            "--tls-cert",
            s(cert),
            "--tls-key",
            s(key),
        ])
    };
    let (code, _, err) = check(&a.join("regcache.crt"), &a.join("regcache.crt"));
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "tls_key {}: holds a CERTIFICATE, not a private key: pass the key file (regcache.key)",
            a.join("regcache.crt").display()
        )),
        "{err}"
    );
    let (code, _, err) = check(&a.join("regcache.key"), &a.join("regcache.crt"));
    assert_eq!(code, 2);
    assert!(
        err.contains("holds a PRIVATE KEY, not a certificate"),
        "{err}"
    );
    let (code, _, err) = check(&a.join("regcache.crt"), &b.join("regcache.key"));
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "tls_key {} does not match tls_cert {}",
            b.join("regcache.key").display(),
            a.join("regcache.crt").display()
        )),
        "{err}"
    );
}

// ---- handshakes ----

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs_of(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

fn roots(ca_pem: &[u8]) -> Arc<rustls::RootCertStore> {
    let mut r = rustls::RootCertStore::empty();
    for c in certs_of(ca_pem) {
        r.add(c).unwrap();
    }
    Arc::new(r)
}

/// The server side: `dir`'s regcache.crt/key as the mirror loads them; with `client_ca`,
/// client certificates are required and verified against it.
fn server_config(dir: &Path, client_ca: Option<&Path>) -> Arc<rustls::ServerConfig> {
    let Some(ca) = client_ca else {
        return regcache::tls::server_config(&dir.join("regcache.crt"), &dir.join("regcache.key"))
            .unwrap();
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(&std::fs::read(ca).unwrap()),
        provider(),
    )
    .build()
    .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_of(&std::fs::read(dir.join("regcache.crt")).unwrap()),
            PrivateKeyDer::from_pem_file(dir.join("regcache.key")).unwrap(),
        )
        .unwrap();
    Arc::new(cfg)
}

/// A client trusting only `ca_pem`, presenting `identity` (cert file, key file) if given.
fn client_config(ca_pem: &[u8], identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca_pem));
    Arc::new(match identity {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                certs_of(&std::fs::read(c).unwrap()),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
    })
}

/// A TLS handshake over an in-memory pipe, then one byte each way (a refused client
/// certificate shows on the server side, and on the client's first read in TLS 1.3).
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let srv = async move {
        let mut t = tokio_rustls::TlsAcceptor::from(server)
            .accept(a)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let mut buf = [0u8; 1];
        t.read_exact(&mut buf)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        t.write_all(b"y")
            .await
            .map_err(|e| format!("server write: {e}"))?;
        t.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let cli = async move {
        let mut t = tokio_rustls::TlsConnector::from(client)
            .connect(name, b)
            .await
            .map_err(|e| format!("client: {e}"))?;
        t.write_all(b"x")
            .await
            .map_err(|e| format!("client write: {e}"))?;
        t.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1];
        t.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        Ok::<_, String>(())
    };
    match tokio::join!(srv, cli) {
        (Ok(()), Ok(())) => Ok(()),
        (s, c) => Err(format!("{:?} / {:?}", s.err(), c.err())),
    }
}

#[tokio::test]
async fn a_client_trusting_ca_crt_reaches_the_server_by_name_and_address() {
    let t = tempfile::tempdir().unwrap();
    init(t.path());
    let ca = std::fs::read(t.path().join("ca.crt")).unwrap();
    let server = server_config(t.path(), None);
    for name in ["localhost", "127.0.0.1"] {
        handshake(server.clone(), client_config(&ca, None), name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let e = handshake(server.clone(), client_config(&ca, None), "other.lan")
        .await
        .unwrap_err();
    assert!(
        e.contains("NotValidForName") || e.contains("not valid for"),
        "{e}"
    );
    // A client trusting another regcache CA does not trust this server, nor one trusting a CA
    // of another name.
    let o = tempfile::tempdir().unwrap();
    init(o.path());
    let n = tempfile::tempdir().unwrap();
    let (code, _, err) = regcache(&[
        "certs",
        "init",
        "--hostname",
        "elsewhere",
        "--out",
        s(n.path()),
    ]);
    assert_eq!(code, 0, "{err}");
    let e = handshake(
        server.clone(),
        client_config(&std::fs::read(n.path().join("ca.crt")).unwrap(), None),
        "localhost",
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("client: invalid peer certificate: UnknownIssuer"),
        "{e}"
    );
    let other_ca = std::fs::read(o.path().join("ca.crt")).unwrap();
    let e = handshake(server, client_config(&other_ca, None), "localhost")
        .await
        .unwrap_err();
    // That CA has the same name (regcache local CA (localhost)): its signature is what fails.
    assert!(
        e.contains("client: invalid peer certificate: BadSignature"),
        "{e}"
    );
}

#[tokio::test]
async fn client_certificates_are_verified_against_ca_crt() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    init(dir);
    let (code, out, err) =
        regcache(&["certs", "client", "--name", "builder-1", "--ca-dir", s(dir)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode(&dir.join("builder-1.key")), 0o600);
    assert!(
        out.contains("/etc/docker/certs.d/localhost:5000/client.cert")
            && out.contains("client = [[\"/etc/containerd/certs.d/docker.io/builder-1.cert\"")
            && out.contains(&format!(
                "client_ca = \"{}\"",
                dir.canonicalize().unwrap().join("ca.crt").display()
            )),
        "{out}"
    );
    let (code, _, err) = regcache(&["certs", "client", "--name", "builder-1", "--ca-dir", s(dir)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("builder-1.cert, builder-1.key already there") && err.contains("--force"),
        "{err}"
    );

    let ca_path = dir.join("ca.crt");
    let ca = std::fs::read(&ca_path).unwrap();
    let server = server_config(dir, Some(&ca_path));
    let me = (dir.join("builder-1.cert"), dir.join("builder-1.key"));
    handshake(
        server.clone(),
        client_config(&ca, Some((&me.0, &me.1))),
        "localhost",
    )
    .await
    .unwrap();
    // No certificate, or one from another CA: refused.
    let e = handshake(server.clone(), client_config(&ca, None), "localhost")
        .await
        .unwrap_err();
    assert!(e.contains("server:"), "{e}");
    let o = tempfile::tempdir().unwrap();
    init(o.path());
    let (code, _, err) = regcache(&[
        "certs",
        "client",
        "--name",
        "intruder",
        "--ca-dir",
        s(o.path()),
    ]);
    assert_eq!(code, 0, "{err}");
    let e = handshake(
        server,
        client_config(
            &ca,
            Some((
                &o.path().join("intruder.cert"),
                &o.path().join("intruder.key"),
            )),
        ),
        "localhost",
    )
    .await
    .unwrap_err();
    // That CA has the same name (regcache local CA (localhost)): its signature is what fails.
    assert!(
        e.contains("server: invalid peer certificate: BadSignature"),
        "{e}"
    );
    // A server certificate is not a client certificate (serverAuth only).
    let e = handshake(
        server_config(dir, Some(&ca_path)),
        client_config(
            &ca,
            Some((&dir.join("regcache.crt"), &dir.join("regcache.key"))),
        ),
        "localhost",
    )
    .await
    .unwrap_err();
    assert!(e.contains("server:"), "{e}");
}
