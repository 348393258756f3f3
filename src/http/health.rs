//! `/healthz` and `/readyz`, for load balancers, systemd and probes: cheap enough to poll every
//! second, logged at debug (not in the access log at info).
//!
//! - `GET /healthz`: 200 `{"status":"ok"}` while the process answers.
//! - `GET /readyz`: 200 when the mirror can serve from its cache and fill it (the listener is
//!   bound, the index is loaded, a temp file can be written in the cache's `tmp/`, free space
//!   is not below `min_free`), else 503; the JSON body names each check and, for information,
//!   each registry's upstream state. Readiness never depends on an upstream: a mirror with the
//!   Hub down still serves what it has. On a listener with client auth, a client that has not
//!   authenticated gets the status alone ([`readyz_brief`]): upstream hosts, their errors and
//!   the free space are for those who may pull.

use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::{self, ResponseBody};
use crate::mirror::Mirror;

/// Paths answered here (kept out of the access log at info).
pub const PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// `GET /healthz`.
pub fn healthz(head: bool) -> Response<ResponseBody> {
    json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned(), head)
}

/// `GET /readyz`.
///
/// The cache checks touch the disk (a temp file created and removed, a `statvfs`): microseconds
/// on a local disk, so they run inline.
pub fn readyz(mirror: &Mirror, head: bool) -> Response<ResponseBody> {
    let cache = mirror.cache().health();
    let registries: serde_json::Map<String, serde_json::Value> = mirror
        .registries()
        .names()
        .filter_map(|name| {
            let up = mirror.registries().get(name)?;
            Some((name.to_owned(), serde_json::to_value(up.health()).ok()?))
        })
        .collect();
    let ready = cache.ready();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "cache": cache,
        "registries": registries,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, body.to_string(), head)
}

/// `GET /readyz` for a client that has not authenticated on a listener with client auth: the
/// same status code, and `{"status":"ready"}` (or `"not ready"`) alone.
pub fn readyz_brief(mirror: &Mirror, head: bool) -> Response<ResponseBody> {
    let (status, text) = match mirror.cache().health().ready() {
        true => (StatusCode::OK, r#"{"status":"ready"}"#),
        false => (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#),
    };
    json(status, text.to_owned(), head)
}

fn json(status: StatusCode, text: String, head: bool) -> Response<ResponseBody> {
    let mut r = Response::new(if head {
        body::empty()
    } else {
        body::full(text.clone())
    });
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    h.insert(CONTENT_LENGTH, text.len().into());
    r
}
