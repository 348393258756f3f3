//! `GET /v2/<name>/tags/list[?n=&last=]` and `GET /v2/<name>/referrers/<digest>[?artifactType=]`
//! (distribution-spec 1.1), over the cache's listings ([`crate::cache::listings`]): the cached
//! answer with its `Content-Type` and `Link`; referrers filtered here by `artifactType` (with
//! `OCI-Filters-Applied: artifactType`), and a 404 when the upstream has no referrers API.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::{Response, StatusCode};

use crate::body::ResponseBody;
use crate::cache::listings::{filter_referrers, ListingKind};
use crate::cache::{Cache, CacheResult, Origin};
use crate::error::{ApiError, Subject};

/// The media type of a referrers answer (an OCI image index).
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Answers a tag list page or a referrers request; `artifact_type`: the client's filter.
pub(super) async fn get(
    cache: &Cache,
    from: Origin<'_>,
    kind: ListingKind,
    artifact_type: Option<&str>,
    head: bool,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let referrers = matches!(kind, ListingKind::Referrers { .. });
    let l = cache
        .listing(from, &kind)
        .await
        .map_err(|e| ApiError::from_cache(&e, Subject::Name))?;
    if l.stored.status == 404 {
        // Answered (from the cache, or just asked): the result is logged like any other.
        let e = ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "the upstream has no referrers API for this repository; clients fall back to the tag schema (sha256-<hex> tags)",
        );
        return Ok((e.into_response(head), l.result));
    }
    let (body, filtered) = match artifact_type.filter(|_| referrers) {
        Some(t) => (filter_referrers(&l.stored.body, t), true),
        None => (l.stored.body.clone(), false),
    };
    let content_type = match (&l.stored.content_type, referrers) {
        (Some(ct), _) => ct.clone(),
        (None, true) => INDEX_TYPE.to_owned(),
        (None, false) => "application/json".to_owned(),
    };
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .header(CONTENT_TYPE, content_type)
        .header(CONTENT_LENGTH, body.len());
    if let Some(link) = &l.stored.link {
        b = b.header(LINK, link);
    }
    if filtered {
        b = b.header("OCI-Filters-Applied", "artifactType");
    }
    let body = if head {
        crate::body::empty()
    } else {
        crate::body::full(body)
    };
    let r = b
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((r, l.result))
}
