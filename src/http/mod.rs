//! The HTTP layer: the pull API's endpoints (OCI distribution spec, "Pull"), each answered from
//! one call into the cache.
//!
//! A request goes down once: [`handle`] checks the method, selects the registry (`?ns=`, a
//! `/v2/<registry>/` prefix, or the default) among the mirror's configured ones, parses the route
//! by the spec grammars, and hands it to one endpoint module. Errors of every layer become one
//! OCI error response ([`crate::error`]).
//!
//! # Layout
//! - [`server`]: the listener, HTTP/1.1 + HTTP/2, TLS, graceful shutdown.
//! - `access_log`: each response's access-log line, written when its body ends or is dropped.
//! - `gauge`: counts of connections and requests in progress (shutdown drain, idle timeout).
//! - `guard`: a client that stops reading (or trickles) has its connection closed.
//! - `blobs`: blob GET / HEAD (hit, miss, coalesced; ranges).
//! - `manifests`: manifest GET / HEAD (content negotiation against `Accept`).
//! - `passthrough`: `tags/list` and `referrers`, not cached.
//! - [`range`]: the `Range` header (RFC 9110).
//! - `streams`: HTTP/2 streams polled in their connection's task (no cross-thread wake-ups).
//! - `cork`: a TLS connection's socket writes gathered over one poll of that task.

mod access_log;
pub mod admin_socket;
mod blobs;
mod cork;
mod gauge;
mod guard;
pub mod health;
pub mod listener;
mod listings;
mod manifests;
pub mod range;
pub mod server;
mod streams;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};

pub use manifests::accepts;
pub use range::{parse_range, resolve_range};

use crate::body::budget::CopyBudget;
use crate::body::zero_copy::{Delivery, ZeroCopyConnection};
use crate::body::{self, ResponseBody};
use crate::cache::listings::ListingKind;
use crate::cache::{CacheResult, Origin};
use crate::error::ApiError;
use crate::mirror::Mirror;
use crate::reference::{canonical_name, Route};

/// One request's answer, with what the access log says of it.
pub struct Handled {
    /// The response (an OCI error response when the request failed).
    pub response: Response<ResponseBody>,
    /// hit / miss / coalesced / stale / pass, or none.
    pub cache: CacheResult,
    /// The registry the request was routed to (`docker.io`), once known.
    pub registry: Option<String>,
    /// Whether answering it sent a manifest GET upstream (the kind Docker Hub counts against
    /// its pull rate limit): a manifest miss.
    pub counted: bool,
}

/// Answers one request. Never fails: errors become OCI error responses.
pub async fn handle<B>(mirror: &Mirror, req: &Request<B>) -> Handled {
    let head = req.method() == Method::HEAD;
    let (mut registry, mut counted) = (None, false);
    let (response, cache) = match route(mirror, req, &mut registry, &mut counted).await {
        Ok(r) => r,
        Err(e) => {
            // regcache's own failures (the cache directory's, mostly) are the operator's to fix:
            // said with the directory (the client's answer does not name paths).
            if e.status.is_server_error() && e.code == "UNKNOWN" {
                tracing::error!(
                    cache_dir = %mirror.cache().store().root().display(),
                    path = %req.uri().path(),
                    error = %e.message,
                    "request failed inside regcache"
                );
            }
            (e.into_response(head), CacheResult::None)
        }
    };
    Handled {
        response,
        cache,
        registry,
        counted,
    }
}

/// Routes `req`; sets `registry` as soon as the request's registry is known, and `counted` when
/// answering it sent a manifest GET upstream.
async fn route<B>(
    mirror: &Mirror,
    req: &Request<B>,
    registry: &mut Option<String>,
    counted: &mut bool,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::unsupported_method(method));
    }
    check_framing(req)?;
    let head = method == Method::HEAD;
    match req.uri().path() {
        "/metrics" => return Ok((metrics_response(mirror, head)?, CacheResult::None)),
        "/healthz" => return Ok((health::healthz(head), CacheResult::None)),
        "/readyz" => return Ok((health::readyz(mirror, head), CacheResult::None)),
        _ => {}
    }
    let query = Query::parse(req.uri().query())?;
    let (up, path) = mirror
        .registries()
        .select(req.uri().path(), query.ns.as_deref())
        .map_err(|e| ApiError::from_select(&e))?;
    *registry = Some(up.registry().to_owned());
    let cache = mirror.cache();
    match Route::parse(&path)? {
        Route::Base => Ok((base_response(head), CacheResult::None)),
        Route::Manifest { name, reference } => {
            let name = canonical_name(up.registry(), name);
            let from = Origin {
                upstream: up,
                name: &name,
            };
            let answer = manifests::get(cache, from, &reference, req.headers(), head).await;
            // A manifest miss is the one answer that GETs a manifest upstream (a cold tag, a
            // moved tag, a digest not cached); a hit, a HEAD-confirmed tag or a stale answer
            // costs no counted request.
            *counted = matches!(answer, Ok((_, CacheResult::Miss)));
            answer
        }
        Route::Blob { name, digest } => {
            let name = canonical_name(up.registry(), name);
            let from = Origin {
                upstream: up,
                name: &name,
            };
            if head {
                return blobs::head(cache, from, &digest, req.headers()).await;
            }
            blobs::get(cache, from, &digest, req.headers(), delivery(req)).await
        }
        Route::TagsList { name } => {
            let name = canonical_name(up.registry(), name);
            let from = Origin {
                upstream: up,
                name: &name,
            };
            let kind = ListingKind::Tags {
                n: query.n,
                last: query.last,
            };
            listings::get(cache, from, kind, None, head).await
        }
        Route::Referrers { name, digest } => {
            let name = canonical_name(up.registry(), name);
            let from = Origin {
                upstream: up,
                name: &name,
            };
            let kind = ListingKind::Referrers {
                subject: digest,
                n: query.n,
                last: query.last,
            };
            let artifact_type = query.artifact_type.as_deref();
            listings::get(cache, from, kind, artifact_type, head).await
        }
    }
}

/// Refuses HTTP/1 requests whose framing a proxy in front of regcache might read differently
/// (request smuggling, RFC 9112 §6.3 and §3.2): a body on a GET or HEAD (any
/// `Transfer-Encoding`, a `Content-Length` other than one `0`), and a missing or repeated
/// `Host` on HTTP/1.1. Answered 400 `UNSUPPORTED`, and the connection is closed after it.
/// HTTP/2 frames its messages itself and is left to hyper.
pub(super) fn check_framing<B>(req: &Request<B>) -> Result<(), ApiError> {
    if req.version() >= http::Version::HTTP_2 {
        return Ok(());
    }
    let h = req.headers();
    let refuse = |why: &str| {
        Err(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            format!("{why}; the connection is closed"),
        )
        .with_header(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        ))
    };
    if h.contains_key(http::header::TRANSFER_ENCODING) {
        return refuse("a GET or HEAD request takes no body (Transfer-Encoding refused)");
    }
    let lengths: Vec<_> = h.get_all(http::header::CONTENT_LENGTH).iter().collect();
    if lengths.len() > 1 || lengths.iter().any(|v| v.as_bytes() != b"0") {
        return refuse("a GET or HEAD request takes no body (Content-Length other than 0 refused)");
    }
    let hosts = h.get_all(http::header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == http::Version::HTTP_11) {
        return refuse("an HTTP/1.1 request needs exactly one Host header");
    }
    Ok(())
}

/// Mapped bytes are sent with sendfile only on plain-TCP HTTP/1 connections; anywhere they would
/// be copied in user space they are read instead (a file truncated under us must fail one
/// response, not fault the process).
fn delivery<B>(req: &Request<B>) -> Delivery {
    let zero_copy = req.extensions().get::<ZeroCopyConnection>().is_some()
        && req.version() <= http::Version::HTTP_11;
    if zero_copy {
        return Delivery::Sendfile;
    }
    // Copies count against the connection's share of the copy budget (set by the server).
    match req.extensions().get::<CopyBudget>() {
        Some(b) => Delivery::Copy(b.clone()),
        None => Delivery::copy(),
    }
}

/// The query parameters regcache reads; everything else is ignored.
#[derive(Default)]
struct Query {
    /// `ns`: the registry the client means (containerd); never forwarded upstream.
    ns: Option<String>,
    /// `n`: tags/list page size.
    n: Option<String>,
    /// `last`: tags/list pagination marker.
    last: Option<String>,
    /// `artifactType`: the referrers filter (distribution-spec 1.1).
    artifact_type: Option<String>,
}

impl Query {
    /// Errors: 400 NAME_INVALID for a second `ns=` (which registry would be meant?).
    fn parse(q: Option<&str>) -> Result<Query, ApiError> {
        let mut out = Query::default();
        for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            match &*k {
                "ns" if out.ns.is_some() => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "NAME_INVALID",
                        "the query names ns= twice; name one registry",
                    ))
                }
                "ns" => out.ns = Some(v.into_owned()),
                "n" => out.n = Some(v.into_owned()),
                "last" => out.last = Some(v.into_owned()),
                "artifactType" => out.artifact_type = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// `GET /metrics`: the mirror's figures in the OpenMetrics text format.
fn metrics_response(mirror: &Mirror, head: bool) -> Result<Response<ResponseBody>, ApiError> {
    let text = crate::metrics::render(&mirror.figures());
    Response::builder()
        .header(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .header(CONTENT_LENGTH, text.len())
        .body(if head {
            body::empty()
        } else {
            body::full(text)
        })
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `GET /v2/`: the API version check.
fn base_response(head: bool) -> Response<ResponseBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, 2)
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .body(if head {
            body::empty()
        } else {
            body::full(&b"{}"[..])
        })
        .expect("static response")
}
