//! The one error response shape: `{"errors":[{"code","message","detail"}]}` with the status
//! distribution maps each code to (OCI distribution spec, "Error Codes"), and the one place every
//! internal error (route, registry selection, upstream, cache, fill, range) becomes it.

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::{self, ResponseBody};
use crate::cache::{CacheError, FillError};
use crate::mirror::SelectError;
use crate::reference::{Digest, RouteError};
use crate::upstream::UpstreamError;

/// An error answered to a client as an OCI error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status (400, 404, 405, 416, 429, 502, 503...).
    pub status: StatusCode,
    /// OCI error code, e.g. `NAME_INVALID`, `MANIFEST_UNKNOWN`, `UNAVAILABLE`.
    pub code: &'static str,
    /// Human-readable message naming the problem (and the fix where there is one).
    pub message: String,
    /// Extra response headers (`Retry-After`, `Allow`, `Content-Range`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with the given status, code and message and no extra headers.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// 404 MANIFEST_UNKNOWN.
    pub fn manifest_unknown(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message)
    }

    /// 404 BLOB_UNKNOWN.
    pub fn blob_unknown(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", message)
    }

    /// 404 NAME_UNKNOWN.
    pub fn name_unknown(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", message)
    }

    /// 405 UNSUPPORTED: a mirror is read-only.
    pub fn unsupported_method(method: &http::Method) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{method} is not supported: regcache is a read-only pull-through cache (GET and HEAD only)"),
        )
        .with_header(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"))
    }

    /// 503 UNAVAILABLE: the upstream could not be used and nothing is cached to fall back on.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
    }

    /// 500 for regcache's own failures (disk errors and the like).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
    }

    /// The JSON body for this error.
    pub fn body_json(&self) -> String {
        serde_json::json!({
            "errors": [{"code": self.code, "message": self.message, "detail": null}]
        })
        .to_string()
    }

    /// The full response. `head` leaves the body out (keeping `Content-Length`).
    pub fn into_response(self, head: bool) -> Response<ResponseBody> {
        let json = self.body_json();
        let mut b = Response::builder()
            .status(self.status)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, json.len())
            .header("Docker-Distribution-API-Version", "registry/2.0");
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        let body = if head {
            body::empty()
        } else {
            body::full(json)
        };
        b.body(body)
            .unwrap_or_else(|_| Response::new(body::empty()))
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> ApiError {
        let (status, code) = match &e {
            RouteError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            RouteError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            RouteError::TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            RouteError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// What a request was about, to pick the OCI error code for an upstream 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A blob: 404 BLOB_UNKNOWN.
    Blob,
    /// A manifest: 404 MANIFEST_UNKNOWN.
    Manifest,
    /// A repository (tags/list, referrers): 404 NAME_UNKNOWN.
    Name,
}

impl ApiError {
    /// Maps an upstream failure to the client's answer: 404s pass on, rate limits pass on with
    /// `Retry-After`, outages become 503 UNAVAILABLE (retryable), a broken answer 502, never a 500.
    pub fn from_upstream(e: &UpstreamError, subject: Subject) -> ApiError {
        match e {
            UpstreamError::Status {
                status,
                retry_after,
            } => from_upstream_status(*status, retry_after.as_ref(), subject),
            UpstreamError::Offline => {
                ApiError::unavailable("offline mode: this content is not in the cache")
            }
            UpstreamError::BackingOff {
                retry_after,
                rate_limited,
                ..
            } => {
                let secs = HeaderValue::from(retry_after.as_secs().max(1));
                let e = if *rate_limited {
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "TOOMANYREQUESTS",
                        format!("{e}; not cached here; retry later"),
                    )
                } else {
                    ApiError::unavailable(format!("{e}; not cached here; retry later"))
                };
                e.with_header(RETRY_AFTER, secs)
            }
            // The mirror's own configuration is wrong: not retryable, and not the client's
            // credentials (DENIED names the mirror's user and password file, never a secret).
            UpstreamError::CredentialsRejected { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "DENIED", e.to_string())
            }
            UpstreamError::Protocol(m) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("bad answer from upstream: {m}"),
            ),
            // Unreachable, not answering, token trouble: retryable soon (the upstream's
            // circuit probes for its return every second or so).
            other => ApiError::unavailable(format!("{other}; retry later"))
                .with_header(RETRY_AFTER, HeaderValue::from_static("1")),
        }
    }

    /// Maps a cache failure: upstream's (see [`ApiError::from_upstream`]) or the disk's (500).
    pub fn from_cache(e: &CacheError, subject: Subject) -> ApiError {
        match e {
            CacheError::Upstream(u) => ApiError::from_upstream(u, subject),
            CacheError::Disk(_) => ApiError::internal(e.to_string()),
        }
    }

    /// Maps a failed fill of blob `digest`: before any byte (upstream's answer), the body broke
    /// off (503, retryable), the bytes did not verify (502), regcache's own disk (500).
    pub fn from_fill(e: &FillError, digest: &Digest) -> ApiError {
        match e {
            FillError::Upstream(u) => ApiError::from_upstream(u, Subject::Blob),
            FillError::Body { .. } => ApiError::unavailable(format!(
                "download of {digest} from upstream broke off; retry"
            )),
            FillError::Verify(m) => ApiError::new(StatusCode::BAD_GATEWAY, "UNKNOWN", m.clone()),
            FillError::Disk(m) => ApiError::internal(format!("cache error filling {digest}: {m}")),
        }
    }

    /// Maps a registry selection that failed: two registries named (400 NAME_INVALID) or one
    /// that is not configured (404 NAME_UNKNOWN, listing the configured ones).
    pub fn from_select(e: &SelectError) -> ApiError {
        match e {
            SelectError::Conflict { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string())
            }
            SelectError::NotMirrored { .. } => ApiError::name_unknown(e.to_string()),
        }
    }

    /// 416 RANGE_INVALID with `Content-Range: bytes */<len>` (RFC 9110 §15.5.17).
    pub fn range_not_satisfiable(len: u64) -> ApiError {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
            format!("requested range is outside the blob's {len} bytes"),
        )
        .with_header(
            http::header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
        )
    }
}

/// An upstream error status, as distribution maps them; `Retry-After` passed on only as sane
/// delta-seconds (≤ 1 h), otherwise 60.
fn from_upstream_status(
    status: StatusCode,
    retry_after: Option<&HeaderValue>,
    subject: Subject,
) -> ApiError {
    let mut err = match status {
        StatusCode::NOT_FOUND => match subject {
            Subject::Blob => ApiError::blob_unknown("blob unknown to upstream"),
            Subject::Manifest => ApiError::manifest_unknown("manifest unknown to upstream"),
            Subject::Name => ApiError::name_unknown("repository unknown to upstream"),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::name_unknown(format!(
            "upstream answered {status}: the repository does not exist or needs credentials regcache does not have"
        )),
        StatusCode::TOO_MANY_REQUESTS => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "upstream rate limit reached; retry later",
        ),
        s if s.is_server_error() => {
            ApiError::unavailable(format!("upstream answered {s}; retry later"))
        }
        s => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            format!("upstream answered {s}"),
        ),
    };
    if retry_after.is_some() || status == StatusCode::TOO_MANY_REQUESTS {
        let secs = retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s <= 3600)
            .unwrap_or(60);
        err = err.with_header(RETRY_AFTER, HeaderValue::from(secs));
    }
    err
}
