//! `GET` / `HEAD /v2/<name>/blobs/<digest>` (OCI distribution spec, "Pulling blobs"): look the
//! blob up, learn its length, answer the range (200 / 206 / 416), send the headers, then the body
//! the cache hands over.

use std::ops::Range;

use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG};
use http::{HeaderMap, Response, StatusCode};

use super::range::{range_of, resolve_range, RangeAnswer};
use crate::body::{self, zero_copy::Delivery, ResponseBody};
use crate::cache::{BlobLookup, Cache, CacheResult, Origin};
use crate::error::{ApiError, Subject};
use crate::reference::Digest;

/// A blob GET: a hit from the committed file, or a miss / coalesced answer following the fill.
pub(super) async fn get(
    cache: &Cache,
    from: Origin<'_>,
    digest: &Digest,
    headers: &HeaderMap,
    delivery: Delivery,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let lookup = cache
        .blob(digest, from)
        .map_err(|e| ApiError::from_cache(&e.into(), Subject::Blob))?;
    let (len, result) = match &lookup {
        BlobLookup::Hit(c) => (Some(c.len()), CacheResult::Hit),
        BlobLookup::Filling(f) => (
            f.len().await.map_err(|e| ApiError::from_fill(&e, digest))?,
            f.outcome(),
        ),
    };
    // A fill of unknown length (no Content-Length) is answered whole: 200.
    let range = match len {
        Some(total) => answer_range(headers, total)?,
        None => None,
    };
    if let (BlobLookup::Filling(f), Some(r), Some(total)) = (&lookup, &range, len) {
        // A range that ends before the last byte would go out unverified: it waits for the
        // whole blob to verify. A range to the end (a client resuming with `bytes=N-`) follows
        // the fill: its last byte is held back until the digest verifies anyway.
        if !f.is_pass_through() && r.end < total {
            f.verified()
                .await
                .map_err(|e| ApiError::from_fill(&e, digest))?;
        }
        if f.is_pass_through() {
            // Not cached (too large, or the disk filled meanwhile): ask upstream for the range
            // itself rather than the whole blob; this request stops following the fill first.
            let r = r.clone();
            drop(lookup);
            return uncached_range(cache, from, digest, r, total).await;
        }
    }
    let (status, body_len) = match (&range, len) {
        (Some(r), _) => (StatusCode::PARTIAL_CONTENT, Some(r.end - r.start)),
        (None, l) => (StatusCode::OK, l),
    };
    let mut b = blob_headers(Response::builder().status(status), digest);
    if let Some(n) = body_len {
        b = b.header(CONTENT_LENGTH, n);
    }
    if let (Some(r), Some(total)) = (&range, len) {
        b = b.header(
            CONTENT_RANGE,
            format!("bytes {}-{}/{total}", r.start, r.end - 1),
        );
    }
    let body = match lookup {
        BlobLookup::Hit(c) => {
            let all = 0..c.len();
            c.body(range.unwrap_or(all), delivery)
        }
        BlobLookup::Filling(f) => f.body(range, delivery),
    };
    let resp = b
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((resp, result))
}

/// A range of a blob regcache is not caching, from upstream.
async fn uncached_range(
    cache: &Cache,
    from: Origin<'_>,
    digest: &Digest,
    r: Range<u64>,
    total: u64,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let body = cache
        .uncached_range(digest, from, r.clone(), total)
        .await
        .map_err(|e| ApiError::from_cache(&e, Subject::Blob))?;
    let resp = blob_headers(
        Response::builder().status(StatusCode::PARTIAL_CONTENT),
        digest,
    )
    .header(CONTENT_LENGTH, r.end - r.start)
    .header(
        CONTENT_RANGE,
        format!("bytes {}-{}/{total}", r.start, r.end - 1),
    )
    .body(body)
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((resp, CacheResult::Pass))
}

/// A blob HEAD: the headers a GET would send, with no body and no fill started.
pub(super) async fn head(
    cache: &Cache,
    from: Origin<'_>,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let h = cache
        .head_blob(digest, from)
        .await
        .map_err(|e| ApiError::from_cache(&e, Subject::Blob))?;
    let mut b = Response::builder();
    let mut len = h.len;
    if let (CacheResult::Hit, Some(total)) = (h.result, h.len) {
        if let Some(r) = answer_range(headers, total)? {
            b = b.status(StatusCode::PARTIAL_CONTENT).header(
                CONTENT_RANGE,
                format!("bytes {}-{}/{total}", r.start, r.end - 1),
            );
            len = Some(r.end - r.start);
        }
    }
    let mut b = blob_headers(b, digest);
    if let Some(n) = len {
        b = b.header(CONTENT_LENGTH, n);
    }
    let r = b
        .body(body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((r, h.result))
}

/// The byte range to send of a blob of `total` bytes: `None` for the whole blob (no `Range`,
/// or one to ignore), else `start..end`.
///
/// Errors: 416 for an unsatisfiable range.
fn answer_range(headers: &HeaderMap, total: u64) -> Result<Option<Range<u64>>, ApiError> {
    match range_of(headers).map(|s| resolve_range(&s, total)) {
        None | Some(RangeAnswer::Full) => Ok(None),
        Some(RangeAnswer::Partial(a, b)) => Ok(Some(a..b + 1)),
        Some(RangeAnswer::Unsatisfiable) => Err(ApiError::range_not_satisfiable(total)),
    }
}

fn blob_headers(b: http::response::Builder, digest: &Digest) -> http::response::Builder {
    b.header(CONTENT_TYPE, "application/octet-stream")
        .header("Docker-Content-Digest", digest.to_string())
        .header(ACCEPT_RANGES, "bytes")
        .header(ETAG, format!("\"{digest}\""))
        .header("Docker-Distribution-API-Version", "registry/2.0")
}
