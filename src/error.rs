//! The one error response shape: `{"errors":[{"code","message","detail"}]}` with the status
//! distribution maps each code to (OCI distribution spec, "Error Codes").

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::{self, ResponseBody};
use crate::reference::RouteError;

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
