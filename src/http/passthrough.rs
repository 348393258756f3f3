//! Answers regcache does not cache: `tags/list` (with `n` / `last` pagination and the `Link`
//! header) and `referrers`, passed through from the upstream with an idle bound on the body.

use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;

use crate::body::{IdleTimeout, ResponseBody};
use crate::cache::CacheResult;
use crate::error::{ApiError, Subject};
use crate::upstream::{Upstream, UpstreamError};

/// `GET /v2/<name>/tags/list[?n=&last=]`: only `n` and `last` are forwarded (never `ns`).
pub(super) async fn tags_list(
    idle: Duration,
    up: &Arc<Upstream>,
    name: &str,
    n: Option<&str>,
    last: Option<&str>,
    head: bool,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let mut path = format!("/v2/{name}/tags/list");
    let mut sep = '?';
    for (k, v) in [("n", n), ("last", last)] {
        if let Some(v) = v {
            path.push(sep);
            path.push_str(k);
            path.push('=');
            path.push_str(&url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>());
            sep = '&';
        }
    }
    pass_through(idle, up, name, &path, head).await
}

/// GETs (or HEADs) `path` upstream and streams the answer: a 200 passes on with its
/// `Content-Type`, `Content-Length` and `Link`; other statuses (a 404 too) become OCI errors.
pub(super) async fn pass_through(
    idle: Duration,
    up: &Arc<Upstream>,
    name: &str,
    path: &str,
    head: bool,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let method = if head { Method::HEAD } else { Method::GET };
    let resp = up
        .send(method, name, path, &HeaderMap::new())
        .await
        .map_err(|e| ApiError::from_upstream(&e, Subject::Name))?;
    // A 404 is answered with regcache's own OCI error body (an upstream's 404 page may be
    // anything); other failures map as everywhere.
    if resp.status() != StatusCode::OK {
        return Err(ApiError::from_upstream(
            &UpstreamError::from_status(&resp),
            Subject::Name,
        ));
    }
    let status = resp.status();
    let mut b = Response::builder()
        .status(status)
        .header("Docker-Distribution-API-Version", "registry/2.0");
    for h in [CONTENT_TYPE, CONTENT_LENGTH, LINK] {
        if let Some(v) = resp.headers().get(&h) {
            b = b.header(h, v);
        }
    }
    let body = IdleTimeout::new(resp.into_body(), idle).boxed_unsync();
    let r = b
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((r, CacheResult::Pass))
}
