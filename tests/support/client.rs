//! A tiny HTTP client for the hermetic tests: one fresh connection per request.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A response as the test client saw it. `body` is `Err` when the stream broke off.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn bytes(&self) -> &Bytes {
        self.body.as_ref().expect("complete body")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("json body")
    }
}

/// Sends one request (fresh connection each time, so a cut stream cannot poison the next).
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client
        .request(b.body(Empty::new()).unwrap())
        .await
        .expect("request to regcache");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("{e:?}"));
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Got {
    request("GET", url, &[]).await
}
