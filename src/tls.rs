//! HTTPS for the listener (an edge box serving a site: Docker trusts plain http only on
//! loopback), and `regcache gen-cert` for a self-signed certificate when no PKI is at hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`)
/// from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
///
/// Errors: a message naming the file and what is wrong with it.
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
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("client_ca {}: {e}", ca.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("client_ca {}: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "client_ca {}: no PEM certificate in it; give the CA certificate clients' certificates are signed by (ca.crt from regcache certs init)",
            ca.display()
        ));
    }
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
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_cert/tls_key do not make a usable pair: {e}"))?;
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

/// Writes a self-signed certificate for `hostnames` (DNS names or IP addresses) and its key into
/// `dir` as `regcache.crt` and `regcache.key` (mode 0600). Returns their paths.
///
/// Errors: a message naming what failed (bad name, directory not writable).
pub fn generate(hostnames: &[String], dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let ck = rcgen::generate_simple_self_signed(hostnames.to_vec())
        .map_err(|e| format!("cannot make a certificate for {hostnames:?}: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert = dir.join("regcache.crt");
    let key = dir.join("regcache.key");
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    write_private(&key, ck.key_pair.serialize_pem().as_bytes())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a new file: an existing key file is tightened too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = generate(&["mirror.example".into(), "127.0.0.1".into()], dir.path()).unwrap();
        assert!(server_config(&c, &k).is_ok());
        let e = server_config(&k, &c).unwrap_err();
        assert!(e.contains("tls_cert"), "{e}");
        assert!(server_config(Path::new("/nonexistent.crt"), &k)
            .unwrap_err()
            .contains("/nonexistent.crt"));
    }
}
