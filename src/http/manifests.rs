//! `GET` / `HEAD /v2/<name>/manifests/<reference>` (OCI distribution spec, "Pulling
//! manifests"): the cache's answer, offered only in a media type the client's `Accept` admits,
//! with the exact bytes, `Content-Type` and `Docker-Content-Digest`.

use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderMap, Response};

use crate::body::{self, ResponseBody};
use crate::cache::{Cache, CacheResult, Origin};
use crate::error::{ApiError, Subject};
use crate::reference::Reference;

/// A manifest GET or HEAD (`head`: headers only).
pub(super) async fn get(
    cache: &Cache,
    from: Origin<'_>,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let a = cache
        .manifest(from, reference)
        .await
        .map_err(|e| ApiError::from_cache(&e, Subject::Manifest))?;
    let m = a.manifest;
    if !accepts(headers, &m.media_type) {
        return Err(ApiError::manifest_unknown(format!(
            "manifest {reference} of {} is a {}, which the request's Accept header does not list",
            from.name, m.media_type
        )));
    }
    let r = Response::builder()
        .header(CONTENT_TYPE, &m.media_type)
        .header(CONTENT_LENGTH, m.bytes.len())
        .header("Docker-Content-Digest", a.digest.to_string())
        .header(ETAG, format!("\"{}\"", a.digest))
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .body(if head {
            body::empty()
        } else {
            body::full(m.bytes)
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((r, a.result))
}

/// Whether the client's `Accept` headers (possibly several, each comma-separated) admit
/// `media_type`. No `Accept` at all, or `*/*`, admits anything.
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let base = |s: &str| {
        s.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let want = base(media_type);
    let mut any = false;
    for v in headers.get_all(ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let t = base(item);
            if t.is_empty() {
                continue;
            }
            any = true;
            if t == want || t == "*/*" {
                return true;
            }
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn accept_lists() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, "application/vnd.oci.image.index.v1+json"));
        h.append(
            ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"),
        );
        h.append(
            ACCEPT,
            HeaderValue::from_static(
                "application/vnd.oci.image.manifest.v1+json; q=0.5, text/plain",
            ),
        );
        assert!(accepts(&h, "application/vnd.oci.image.manifest.v1+json"));
        assert!(!accepts(&h, "application/vnd.oci.image.index.v1+json"));
        h.append(ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&h, "application/vnd.oci.image.index.v1+json"));
    }
}
