//! A tiny blocking HTTP/1.1 client for the lab's direct requests to the mirror: one request
//! per connection (`Connection: close`), an overall deadline, the answer's headers, body and
//! timing. Also the pull a registry client makes (manifest by tag, then every blob), with the
//! bytes checked against the test image.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::images::{self, TestImage};

/// Every manifest media type a modern client accepts (what containerd sends, minus `*/*`).
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Status line and header lines, as received.
    pub head: String,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

impl Response {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// `errors[0].code` of a registry error body.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_owned)
    }

    /// One line for reports: status, error code/message, time.
    pub fn summary(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        let retry = self
            .header("retry-after")
            .map(|r| format!(" Retry-After: {r}"))
            .unwrap_or_default();
        if self.status >= 400 {
            format!(
                "{}{retry} in {:.2}s: {}",
                self.status,
                self.elapsed.as_secs_f64(),
                body.trim()
            )
        } else {
            format!(
                "{}{retry} in {:.2}s ({} bytes)",
                self.status,
                self.elapsed.as_secs_f64(),
                self.body.len()
            )
        }
    }
}

/// Sends one request and reads the whole answer, failing after `timeout` overall.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<Response> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))?;
    super::proc::write_request(&mut s, addr, method, path, headers)?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{method} {path}: no complete answer within {timeout:?} ({} bytes so far)",
                    buf.len()
                ),
            ));
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
    let (status, head, body) = super::proc::split_response(&buf)
        .map_err(|e| std::io::Error::other(format!("{method} {path}: {e}")))?;
    Ok(Response {
        status,
        head,
        body: buf[body..].to_vec(),
        elapsed: started.elapsed(),
    })
}

/// `request`, panicking on a transport error.
pub fn must(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Response {
    request(addr, method, path, headers, timeout)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// What a registry client does for a single-platform image, over plain HTTP: GET the
/// manifest by tag, then every blob it names; every byte is compared with the test image.
/// `prefix` is put before the repository (e.g. `ghcr.io/` for path-prefix routing), `query`
/// after each path (e.g. `?ns=ghcr.io`). Returns the number of bytes received.
pub fn pull_single(
    mirror: SocketAddr,
    img: &TestImage,
    prefix: &str,
    query: &str,
    timeout: Duration,
) -> u64 {
    assert!(!img.is_multi(), "pull_single: {} is an index", img.repo);
    let p = &img.platforms[0];
    let path = format!("/v2/{prefix}{}/manifests/{}{query}", img.repo, img.tag);
    let r = must(
        mirror,
        "GET",
        &path,
        &[("Accept", ACCEPT_MANIFESTS)],
        timeout,
    );
    assert_eq!(r.status, 200, "GET {path}: {}", r.summary());
    assert_eq!(
        images::sha256_digest(&r.body),
        p.manifest.digest,
        "GET {path}: manifest digest"
    );
    let mut bytes = r.body.len() as u64;
    for blob in std::iter::once(&p.config).chain(p.layers.iter()) {
        let path = format!("/v2/{prefix}{}/blobs/{}{query}", img.repo, blob.digest);
        let r = must(mirror, "GET", &path, &[], timeout);
        assert_eq!(r.status, 200, "GET {path}: {}", r.summary());
        assert!(
            r.body == blob.bytes,
            "GET {path}: {} bytes received differ from the blob's {} bytes",
            r.body.len(),
            blob.bytes.len()
        );
        bytes += r.body.len() as u64;
    }
    bytes
}
