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
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_cert/tls_key do not make a usable pair: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
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
