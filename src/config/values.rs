//! The config's value syntaxes, shared by the file and the flags (and so by `regcache
//! check-config`): listen addresses, sizes, rates, durations, `min_free`, node names, upstream
//! URLs, PEM certificates and `${CREDENTIALS_DIRECTORY}` paths. Each parser's error names the
//! value and the form to write.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::cache::eviction::MinFree;

/// Parses a listen address: `ip:port` (`127.0.0.1:5000`, `[::1]:5000`, `0.0.0.0:5000`) or
/// `hostname:port` (`localhost:5000`, resolved once, at start).
///
/// Errors: a message with the forms to write, e.g. for `":5000"` (no address: regcache does not
/// guess between "this host" and "every interface").
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    let forms = "write \"127.0.0.1:5000\" (this host only), \"0.0.0.0:5000\" (every interface) or \"localhost:5000\"";
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err(format!("{s:?} has no port; {forms}"));
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no address; {forms}"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("{s:?}: {port:?} is not a port (0-65535); {forms}"));
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(t)
        .map_err(|e| format!("{s:?}: cannot resolve {host:?} ({e}); {forms}"))?
        .collect();
    // Prefer IPv4 (what `localhost` means to most clients), else the first address.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?}: {host:?} has no address; {forms}"))
}

/// Parses a bandwidth such as `"2MiB/s"` or `"500KB/s"` into bytes per second (the `/s` is
/// optional).
///
/// Errors: a message naming the value and the expected form; zero is refused.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let v = parse_size(t)
        .map_err(|_| format!("{s:?} is not a bandwidth; write e.g. \"2MiB/s\", \"500KB/s\""))?;
    if v == 0 || v > u32::MAX as u64 {
        return Err(format!(
            "{s:?}: a bandwidth must be between 1 B/s and 4 GiB/s"
        ));
    }
    Ok(v)
}

/// Parses a rate floor such as `"1KiB/s"`, where `"0B/s"` (or `"0"`) turns the floor off.
///
/// Errors: as [`parse_rate`].
pub fn parse_rate_floor(s: &str) -> Result<u64, String> {
    let t = s.trim();
    match parse_size(t.strip_suffix("/s").unwrap_or(t)) {
        Ok(0) => Ok(0),
        _ => parse_rate(s),
    }
}

/// Parses a size such as `"20GiB"`, `"500MB"`, `"1048576"` (bytesize syntax; IEC and SI units).
///
/// Errors: a message naming the value and the expected form.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size ({e}); write e.g. \"20GiB\", \"500MB\""))
}

/// Parses `min_free`: a size (`"5GiB"`) or a percentage of the filesystem (`"10%"`).
///
/// Errors: a message naming the value and the expected forms.
pub fn parse_min_free(s: &str) -> Result<MinFree, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a percentage; write e.g. \"10%\""))?;
        if !(0.0..100.0).contains(&v) {
            return Err(format!(
                "{s:?}: a percentage must be at least 0 and below 100"
            ));
        }
        return Ok(MinFree::Percent(v));
    }
    parse_size(t).map(MinFree::Bytes)
}

/// Parses a duration like `0s`, `90s`, `5m`, `1h 30m` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. \"0s\", \"30s\", \"5m\""))
}

/// DER certificates from PEM text. Errors: no certificate, or a malformed one.
pub(super) fn parse_pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

pub(super) fn parse_upstream_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| {
        format!("{s:?} is not a URL ({e}); write e.g. https://registry-1.docker.io")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{s:?} must be an http:// or https:// URL with a host"
        ));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{s:?} must be just scheme://host[:port] (no path, query or credentials; put credentials in username/password_file)"
        ));
    }
    Ok(url)
}

/// Parses a `node_name`: 1 to 63 ASCII letters, digits, `.`, `_` or `-` (a DNS label or host
/// name fits; so does the value of an HTTP header and of a Prometheus label).
///
/// Errors: a message naming the value and the characters allowed.
pub fn parse_node_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a node name: write 1 to 63 letters, digits, '.', '_' or '-', e.g. \"site-mirror-1\""
        ))
    }
}

/// `path` with a leading `${CREDENTIALS_DIRECTORY}` replaced by that environment variable
/// (set by systemd for `LoadCredential=`); other paths unchanged.
///
/// Errors: the variable is used but not set (not running under such a unit), or used
/// elsewhere than at the start.
pub fn expand_path(path: &Path) -> Result<PathBuf, String> {
    const VAR: &str = "${CREDENTIALS_DIRECTORY}";
    let text = path.to_string_lossy();
    let Some(rest) = text
        .strip_prefix(VAR)
        .or_else(|| text.strip_prefix("$CREDENTIALS_DIRECTORY"))
    else {
        if text.contains("CREDENTIALS_DIRECTORY") {
            return Err(format!(
                "{}: {VAR} may only start a path (\"{VAR}/name\")",
                path.display()
            ));
        }
        return Ok(path.to_path_buf());
    };
    match std::env::var_os("CREDENTIALS_DIRECTORY").filter(|v| !v.is_empty()) {
        Some(dir) => Ok(PathBuf::from(format!("{}{rest}", Path::new(&dir).display()))),
        None => Err(format!(
            "{}: CREDENTIALS_DIRECTORY is not set; systemd sets it for a unit with LoadCredential= (run it as that service, or write the file's own path)",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_min_free() {
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1 MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_min_free("10%").unwrap(), MinFree::Percent(10.0));
        assert_eq!(parse_min_free("5GiB").unwrap(), MinFree::Bytes(5 << 30));
        assert!(parse_min_free("150%").is_err());
    }

    #[test]
    fn pem_parsing() {
        assert!(parse_pem_certs("nothing here").is_err());
        let cert = rcgen::generate_simple_self_signed(vec!["registry.internal".into()]).unwrap();
        let certs = parse_pem_certs(&cert.cert.pem()).unwrap();
        assert_eq!(certs.len(), 1);
    }
}
