//! HTTPS for the listener (an edge box serving a site: Docker trusts plain http only on
//! loopback): loading a PEM certificate chain and key into rustls, with errors that say what a
//! wrong file holds. Making certificates (a local CA, `regcache certs`, `gen-cert`) is
//! [`crate::certs`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`)
/// from a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
///
/// Errors: a message naming the file, what it holds and the fix, e.g. `tls_key /x: holds a
/// CERTIFICATE, not a private key: pass the key file (regcache.key)`, or that the key does not
/// match the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    build(cert, key, None)
}

/// The rustls server configuration of a listener: [`server_config`], and with `client_ca`,
/// TLS client certificates verified against those CA certificates (RFC 5280 path validation
/// by webpki). `client_cert_optional`: a client without a certificate may still connect (the
/// listener also accepts Basic credentials); otherwise the handshake requires one.
///
/// Errors: a message naming the file (`tls_cert`, `tls_key`, `client_ca`) and the problem.
pub fn listener_config(
    tls: &crate::config::ListenerTls,
    client_cert_optional: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let verifier = match &tls.client_ca {
        None => None,
        Some(ca) => Some(client_verifier(ca, client_cert_optional)?),
    };
    build(&tls.cert, &tls.key, verifier)
}

/// A verifier of client certificates chaining to the CA certificates in `ca` (PEM).
fn client_verifier(
    ca: &Path,
    optional: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let certs = read_certs("client_ca", ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("client_ca {}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| format!("client_ca {}: {e}", ca.display()))
}

fn build(
    cert: &Path,
    key: &Path,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certs("tls_cert", cert)?;
    let key_der = read_key("tls_key", key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| pair_error(cert, key, e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A certificate's subject for logs: its common name, else the whole subject, else
/// `"(unparsable certificate)"`.
pub fn subject_name(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, c)) => c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| c.subject().to_string()),
        Err(_) => "(unparsable certificate)".into(),
    }
}

/// The message for a certificate and key rustls refuses together.
fn pair_error(cert: &Path, key: &Path, e: rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
            "tls_key {} does not match tls_cert {} (it is the key of another certificate): pass \
             the key written with this certificate, or issue a new pair (regcache certs init \
             --force --hostname NAME)",
            key.display(),
            cert.display()
        ),
        e => format!(
            "tls_cert {} / tls_key {} do not make a usable pair: {e}",
            cert.display(),
            key.display()
        ),
    }
}

/// The certificates of a PEM file, in file order. `label` names the setting in messages
/// (`tls_cert`, `client_ca`, a file given to `certs show`).
///
/// Errors: the file cannot be read, is empty, is not PEM, or holds no `CERTIFICATE` (the
/// message says what it holds instead and which file to pass).
pub fn read_certs(label: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(label, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{label} {}: {e}", path.display()))?;
    if certs.is_empty() {
        let what = match holds(&bytes).as_deref() {
            Some(l) if l.contains("PRIVATE KEY") => format!(
                "holds {}, not a certificate: pass the certificate file (regcache.crt) here, and this file as the key (tls_key)",
                a(l)
            ),
            Some(l) => format!(
                "holds {}, not a certificate: pass a PEM certificate (regcache.crt)",
                a(l)
            ),
            None => not_pem(&bytes, "certificate", "regcache.crt"),
        };
        return Err(format!("{label} {}: {what}", path.display()));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1). `label` names the setting.
///
/// Errors: the file cannot be read, is empty, is not PEM, holds a certificate or public key
/// instead, or an encrypted key (regcache cannot ask for a passphrase).
pub fn read_key(label: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(label, path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => Ok(k),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            let p = path.display();
            let what = match holds(&bytes).as_deref() {
                Some("ENCRYPTED PRIVATE KEY") => format!(
                    "holds an ENCRYPTED PRIVATE KEY: regcache cannot ask for its passphrase; write it decrypted (openssl pkey -in {p} -out {p}.plain; chmod 600 {p}.plain) and pass that"
                ),
                Some(l) if l.contains("PRIVATE KEY") => format!(
                    "holds {}, which regcache cannot read: write it as a PEM PKCS#8 (BEGIN PRIVATE KEY), PKCS#1 (BEGIN RSA PRIVATE KEY) or SEC1 (BEGIN EC PRIVATE KEY) key and pass that",
                    a(l)
                ),
                Some(l) => format!(
                    "holds {}, not a private key: pass the key file (regcache.key)",
                    a(l)
                ),
                None => not_pem(&bytes, "private key", "regcache.key"),
            };
            Err(format!("{label} {p}: {what}"))
        }
        Err(e) => Err(format!("{label} {}: {e}", path.display())),
    }
}

fn read(label: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::IsADirectory => format!(
            "{label} {}: is a directory: pass the file in it (regcache.crt or regcache.key)",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "{label} {}: {e}: make it readable by the user regcache runs as; under the systemd unit (a dynamic user) hand it over with LoadCredential=NAME:{} and write \"${{CREDENTIALS_DIRECTORY}}/NAME\" here",
            path.display(),
            path.display()
        ),
        _ => format!("{label} {}: {e}", path.display()),
    })
}

/// What a file without the expected PEM section is.
fn not_pem(bytes: &[u8], want: &str, example: &str) -> String {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        format!("is empty: pass the PEM {want} file ({example})")
    } else if bytes.first() == Some(&0x30) {
        format!(
            "holds DER (binary), not PEM: convert it (openssl {} -inform der -in FILE -out FILE.pem) and pass that",
            if want == "certificate" { "x509" } else { "pkey" }
        )
    } else {
        format!("is not PEM (no -----BEGIN line): pass the PEM {want} file ({example})")
    }
}

/// `label` with its article: "a CERTIFICATE", "an EC PRIVATE KEY".
fn a(label: &str) -> String {
    let first = label.split(' ').next().unwrap_or_default();
    let vowel = matches!(first, "EC" | "RSA" | "X509" | "SSH2")
        || first.starts_with(['A', 'E', 'I', 'O', 'U']);
    format!("{} {label}", if vowel { "an" } else { "a" })
}

/// The label of the first PEM section (`CERTIFICATE`, `PRIVATE KEY`, ...) in `bytes`, if any.
pub(crate) fn holds(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("-----BEGIN ")
            .and_then(|r| r.strip_suffix("-----"))
            .map(str::to_owned)
    })
}

/// Writes a local CA and a server certificate for `hostnames` (DNS names or IP addresses) into
/// `dir` as [`crate::certs::init`] does (`ca.crt`, `ca.key`, `regcache.crt`, `regcache.key`;
/// keys mode 0600), refusing to overwrite any of them. Returns the server certificate's and
/// key's paths. `regcache.crt` holds the server certificate and then the CA's, so a client that
/// trusts that file (as older instructions said) trusts the CA.
///
/// Errors: a message naming what failed (bad name, files already there, directory not
/// writable).
pub fn generate(hostnames: &[String], dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let done = crate::certs::init(&crate::certs::InitOptions {
        hostnames: hostnames.to_vec(),
        out: dir.to_path_buf(),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    Ok((done.cert, done.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = generate(&["mirror.example".into(), "127.0.0.1".into()], dir.path()).unwrap();
        assert!(server_config(&c, &k).is_ok());
        assert!(server_config(Path::new("/nonexistent.crt"), &k)
            .unwrap_err()
            .contains("/nonexistent.crt"));
    }

    #[test]
    fn swapped_files_say_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = generate(&["mirror.example".into()], dir.path()).unwrap();
        let e = server_config(&k, &c).unwrap_err();
        assert!(
            e.contains("tls_cert") && e.contains("holds a PRIVATE KEY, not a certificate"),
            "{e}"
        );
        let e = server_config(&c, &c).unwrap_err();
        assert_eq!(
            e,
            format!(
                "tls_key {}: holds a CERTIFICATE, not a private key: pass the key file (regcache.key)",
                c.display()
            )
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(server_config(&c, &empty).unwrap_err().contains("is empty"));
        let der = dir.path().join("der");
        std::fs::write(&der, [0x30, 0x82, 1, 2]).unwrap();
        assert!(server_config(&der, &k).unwrap_err().contains("holds DER"));
        let enc = dir.path().join("enc");
        std::fs::write(
            &enc,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(server_config(&c, &enc).unwrap_err().contains("passphrase"));
        let ssh = dir.path().join("ssh");
        std::fs::write(
            &ssh,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = server_config(&c, &ssh).unwrap_err();
        assert!(
            e.contains("holds an OPENSSH PRIVATE KEY, which regcache cannot read"),
            "{e}"
        );
    }

    #[test]
    fn a_key_of_another_pair_is_named_as_such() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (c, _) = generate(&["a.example".into()], a.path()).unwrap();
        let (_, k) = generate(&["b.example".into()], b.path()).unwrap();
        let e = server_config(&c, &k).unwrap_err();
        assert!(
            e.contains("does not match tls_cert") && e.contains("--force"),
            "{e}"
        );
    }
}
