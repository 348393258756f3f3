//! The in-process fake upstream registry, shaped like Docker Hub: token auth, blob GETs
//! answered with a 307 to a separate "CDN" host that rejects `Authorization`, request counters
//! and fault switches (one handler per host).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::data::*;

type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the fake upstream saw.
#[derive(Default)]
pub struct Counters {
    /// GET /v2/<name>/manifests/<ref> at the registry.
    pub manifest_get: AtomicU64,
    /// HEAD /v2/<name>/manifests/<ref>.
    pub manifest_head: AtomicU64,
    /// GET /v2/<name>/blobs/<digest> at the registry (answered 307).
    pub blob_get: AtomicU64,
    /// HEAD /v2/<name>/blobs/<digest>.
    pub blob_head: AtomicU64,
    /// GETs at the CDN host.
    pub cdn_get: AtomicU64,
    /// CDN requests that carried Authorization (rejected with 400).
    pub cdn_auth_leaks: AtomicU64,
    /// Token endpoint GETs.
    pub token_get: AtomicU64,
    /// Requests of any kind at the registry host (token endpoint included).
    pub total: AtomicU64,
    /// Requests at the registry that carried no valid token (answered 401).
    pub unauthorized: AtomicU64,
    /// tags/list GETs.
    pub tags_list: AtomicU64,
    /// Body bytes the CDN sent.
    pub cdn_bytes: AtomicU64,
    /// Range requests the CDN received.
    pub cdn_ranges: AtomicU64,
    /// The Authorization header of each token request (None when absent).
    pub token_auth: Mutex<Vec<Option<String>>>,
    /// referrers GETs, with their query (`""` when none).
    pub referrers: Mutex<Vec<String>>,
}

/// Fault switches.
#[derive(Default, Clone)]
pub struct Faults {
    /// Answer every registry request with this status (e.g. 503, 429).
    pub status: Option<u16>,
    /// Serve these blobs with one byte flipped (same length): the last one.
    pub corrupt: Vec<String>,
    /// With `corrupt`: flip the first byte instead of the last.
    pub corrupt_first: bool,
    /// CDN: pause this long after each chunk of `chunk` bytes.
    pub throttle: Option<(usize, Duration)>,
    /// CDN: send blobs chunked, without Content-Length.
    pub no_length: bool,
    /// Registry: accept connections but never answer.
    pub blackhole: bool,
    /// Token endpoint: answer with this status instead of a token.
    pub token_status: Option<u16>,
    /// CDN: on the first GET of this digest, cut the connection after this many bytes.
    pub cut_once: Option<(String, usize)>,
    /// CDN: cut every answer after this many bytes of it (resumes included).
    pub cut_every: Option<usize>,
    /// CDN: ignore Range requests (answer 200 with the whole blob).
    pub no_range: bool,
    /// CDN: send this many bytes, then stall (no more bytes, connection kept open).
    pub stall_after: Option<usize>,
    /// CDN: like `stall_after`, on the first GET of this digest only.
    pub stall_once: Option<(String, usize)>,
    /// Registry: add Docker Hub's ratelimit headers to manifest answers.
    pub ratelimit_headers: bool,
    /// Registry: send these `ratelimit-limit` / `ratelimit-remaining` values (raw bytes, any
    /// form) on manifest answers.
    pub ratelimit_values: Option<(Vec<u8>, Vec<u8>)>,
    /// Registry: a Docker-Hub-like pull budget of (limit, window in seconds): every manifest
    /// GET in the last window counts, manifest answers (HEADs included) report
    /// `ratelimit-limit` / `ratelimit-remaining`, and a GET with nothing left is answered 429.
    pub rate_budget: Option<(u64, u64)>,
    /// Registry: the realm its 401 challenges name (default: its own /token).
    pub realm: Option<String>,
    /// Token endpoint: the `expires_in` it answers (default: the upstream's token lifetime).
    pub token_expires_in: Option<i128>,
    /// Registry: answer manifest GETs and HEADs with a 200 HTML page (a captive portal).
    pub html_manifests: bool,
    /// Registry: answers 404 to referrers requests (no referrers API, as before OCI 1.1).
    pub no_referrers_api: bool,
    /// Registry: tags/list sends a few bytes, then stalls with the connection open.
    pub stall_tags: bool,
    /// Registry: every answer carries a 1 MiB header (more than any client reads).
    pub huge_headers: bool,
    /// Token endpoint: sends a few bytes of its answer, then stalls with the connection open.
    pub stall_token: bool,
    /// Registry: blob GETs redirect here instead of to the CDN (a hostile upstream).
    pub redirect_to: Option<String>,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Bytes>,
    /// digest -> (media type, bytes)
    manifests: HashMap<String, (String, Bytes)>,
    /// (name, tag) -> digest
    tags: HashMap<(String, String), String>,
    /// token -> expiry
    tokens: HashMap<String, Instant>,
    faults: Faults,
    token_lifetime: u64,
    /// Artifact manifests by the subject digest they refer to: (digest, artifactType, media
    /// type, size), in push order.
    referrers: HashMap<(String, String), Vec<Referrer>>,
    /// Manifest GETs counted by `rate_budget`, oldest first.
    pulls: Vec<Instant>,
}

/// A referrer as the fake lists it: (digest, artifactType, media type, size).
type Referrer = (String, String, String, usize);

/// The fake registry + CDN + token server.
pub struct FakeUpstream {
    pub registry: SocketAddr,
    pub cdn: SocketAddr,
    pub counters: Arc<Counters>,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeUpstream {
    /// Starts the registry and CDN on free loopback ports. Tokens live `token_lifetime` seconds.
    pub async fn start(token_lifetime: u64) -> FakeUpstream {
        let state = Arc::new(Mutex::new(State {
            token_lifetime,
            ..Default::default()
        }));
        let counters = Arc::new(Counters::default());
        let reg_l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind registry");
        let cdn_l = TcpListener::bind("127.0.0.1:0").await.expect("bind cdn");
        let registry = reg_l.local_addr().expect("addr");
        let cdn = cdn_l.local_addr().expect("addr");
        let (s1, c1) = (state.clone(), counters.clone());
        let t1 = tokio::spawn(serve_loop(reg_l, move |req| {
            registry_handler(req, s1.clone(), c1.clone(), registry, cdn)
        }));
        let (s2, c2) = (state.clone(), counters.clone());
        let t2 = tokio::spawn(serve_loop(cdn_l, move |req| {
            cdn_handler(req, s2.clone(), c2.clone())
        }));
        FakeUpstream {
            registry,
            cdn,
            counters,
            state,
            tasks: vec![t1, t2],
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.registry)
    }

    /// The `--redirect-host` list a mirror of this upstream needs: its CDN (another port on
    /// loopback, so not a public address).
    pub fn redirect_hosts(&self) -> Vec<String> {
        vec![self.cdn.to_string()]
    }

    /// Stores `len` seeded random bytes as a blob; returns its digest and the bytes.
    pub fn add_random_blob(&self, len: usize, seed: u64) -> (String, Vec<u8>) {
        let data = random_bytes(len, seed);
        (self.add_blob(data.clone()), data)
    }

    /// Stores a blob; returns its digest.
    pub fn add_blob(&self, data: Vec<u8>) -> String {
        let d = sha256(&data);
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(d.clone(), Bytes::from(data));
        d
    }

    /// Stores a manifest and points `name:tag` at it; returns its digest.
    pub fn put_manifest(&self, name: &str, tag: &str, media_type: &str, bytes: Vec<u8>) -> String {
        let d = sha256(&bytes);
        let mut st = self.state.lock().unwrap();
        st.manifests
            .insert(d.clone(), (media_type.into(), Bytes::from(bytes)));
        st.tags.insert((name.into(), tag.into()), d.clone());
        d
    }

    /// Pushes an OCI artifact manifest (`artifact_type`, one layer `payload`) whose `subject` is
    /// `subject` (a manifest digest of `name`), as cosign v3 and notation do; it is listed by
    /// the referrers API and tagged `tag` (e.g. the tag schema's `sha256-<hex>.sig`) when
    /// given. Returns its digest.
    pub fn add_referrer(
        &self,
        name: &str,
        subject: &str,
        artifact_type: &str,
        payload: &[u8],
        tag: Option<&str>,
    ) -> String {
        let layer = self.add_blob(payload.to_vec());
        let config = self.add_blob(b"{}".to_vec());
        let subject_size = self.state.lock().unwrap().manifests[subject].1.len();
        let mt = "application/vnd.oci.image.manifest.v1+json";
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": layer, "size": payload.len()}],
            "subject": {"mediaType": mt, "digest": subject, "size": subject_size},
        });
        let bytes = serde_json::to_vec(&m).unwrap();
        let len = bytes.len();
        let d = sha256(&bytes);
        let mut st = self.state.lock().unwrap();
        st.manifests
            .insert(d.clone(), (mt.into(), Bytes::from(bytes)));
        if let Some(t) = tag {
            st.tags.insert((name.into(), t.into()), d.clone());
        }
        st.referrers
            .entry((name.to_owned(), subject.to_owned()))
            .or_default()
            .push((d.clone(), artifact_type.into(), mt.into(), len));
        d
    }

    /// An image with one layer of `layer_len` random bytes; returns (manifest digest, layer
    /// digest, config digest, manifest bytes).
    pub fn add_image(&self, name: &str, tag: &str, layer_len: usize, seed: u64) -> Image {
        let layer = random_bytes(layer_len, seed);
        let layer_digest = self.add_blob(layer.clone());
        let config =
            format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes();
        let config_digest = self.add_blob(config.clone());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = self.put_manifest(name, tag, OCI_MANIFEST, manifest.clone());
        Image {
            manifest_digest,
            manifest,
            layer_digest,
            layer,
            config_digest,
        }
    }

    pub fn set_faults(&self, f: Faults) {
        self.state.lock().unwrap().faults = f;
    }

    /// Invalidates every issued token (the next request with one gets 401).
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// Stops answering: both listeners close, so connections are refused.
    pub fn shut_down(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

pub struct Image {
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub layer_digest: String,
    pub layer: Vec<u8>,
    pub config_digest: String,
}

async fn serve_loop<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let h = handler.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()).map_err(|e| match e {}).boxed())
        .unwrap()
}

/// A 200 that sends `prefix`, then nothing more, with the connection kept open.
fn stalled(prefix: &'static [u8]) -> Response<BoxBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(1);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(prefix)))).await;
        tx.closed().await;
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    Response::builder().status(200).body(body).unwrap()
}

fn oci_error(status: u16, code: &str) -> Response<BoxBody> {
    let mut r = full(
        status,
        format!("{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"fake\"}}]}}"),
    );
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

async fn registry_handler(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    c: Arc<Counters>,
    me: SocketAddr,
    cdn: SocketAddr,
) -> Response<BoxBody> {
    c.total.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let faults = state.lock().unwrap().faults.clone();
    if faults.blackhole {
        std::future::pending::<()>().await;
    }
    if faults.huge_headers {
        let mut r = full(200, "{}");
        r.headers_mut()
            .insert("x-junk", "j".repeat(1 << 20).parse().unwrap());
        return r;
    }
    if path == "/token" {
        if let Some(s) = faults.token_status {
            c.token_get.fetch_add(1, Ordering::SeqCst);
            return full(s, "token service trouble");
        }
        if faults.stall_token {
            c.token_get.fetch_add(1, Ordering::SeqCst);
            return stalled(b"{\"token\":");
        }
        c.token_get.fetch_add(1, Ordering::SeqCst);
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        c.token_auth.lock().unwrap().push(auth);
        let n = n(&c.token_get);
        let tok = format!("tok-{n}");
        let mut st = state.lock().unwrap();
        let life = st.token_lifetime;
        st.tokens
            .insert(tok.clone(), Instant::now() + Duration::from_secs(life));
        let answered = faults.token_expires_in.unwrap_or(life as i128);
        return full(
            200,
            format!("{{\"token\":\"{tok}\",\"expires_in\":{answered}}}"),
        );
    }
    if let Some(s) = faults.status {
        let mut r = oci_error(s, "UNAVAILABLE");
        if s == 429 {
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
        }
        return r;
    }
    // Bearer auth on everything else.
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| {
            state
                .lock()
                .unwrap()
                .tokens
                .get(t)
                .is_some_and(|exp| Instant::now() < *exp)
        });
    if !authorized {
        c.unauthorized.fetch_add(1, Ordering::SeqCst);
        let mut r = oci_error(401, "UNAUTHORIZED");
        r.headers_mut().insert(
            "www-authenticate",
            format!(
                "Bearer realm=\"{}\",service=\"fake\",scope=\"repository:x:pull\"",
                faults
                    .realm
                    .clone()
                    .unwrap_or_else(|| format!("http://{me}/token"))
            )
            .parse()
            .unwrap(),
        );
        return r;
    }
    if path == "/v2/" {
        return full(200, "{}");
    }
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    let head = req.method() == Method::HEAD;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        c.tags_list.fetch_add(1, Ordering::SeqCst);
        if faults.stall_tags {
            return stalled(b"{\"name\":");
        }
        let st = state.lock().unwrap();
        let mut tags: Vec<&String> = st
            .tags
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, t)| t)
            .collect();
        tags.sort();
        if tags.is_empty() {
            return full(
                404,
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
            );
        }
        // Pagination (distribution-spec "Listing Tags"): `last` then at most `n`, with a
        // `Link` to the next page.
        let q: HashMap<String, String> =
            url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        if let Some(last) = q.get("last") {
            tags.retain(|t| t.as_str() > last.as_str());
        }
        let mut link = None;
        if let Some(n) = q.get("n").and_then(|n| n.parse::<usize>().ok()) {
            if tags.len() > n {
                tags.truncate(n);
                link = Some(format!(
                    "</v2/{name}/tags/list?n={n}&last={}>; rel=\"next\"",
                    tags[n - 1]
                ));
            }
        }
        let mut r = full(
            200,
            serde_json::json!({"name": name, "tags": tags}).to_string(),
        );
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        if let Some(l) = link {
            r.headers_mut().insert("link", l.parse().unwrap());
        }
        return r;
    }
    if let Some((name, subject)) = rest.split_once("/referrers/") {
        let query = req.uri().query().unwrap_or("").to_owned();
        c.referrers.lock().unwrap().push(query.clone());
        if faults.no_referrers_api {
            return full(
                404,
                r#"{"errors":[{"code":"NOT_FOUND","message":"no such route"}]}"#,
            );
        }
        let wanted: Option<String> = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "artifactType")
            .map(|(_, v)| v.into_owned());
        let st = state.lock().unwrap();
        let list: Vec<serde_json::Value> = st
            .referrers
            .get(&(name.to_owned(), subject.to_owned()))
            .into_iter()
            .flatten()
            .filter(|(_, at, _, _)| wanted.as_deref().is_none_or(|w| w == at))
            .map(|(d, at, mt, len)| {
                serde_json::json!({"mediaType": mt, "digest": d, "size": len, "artifactType": at})
            })
            .collect();
        let mut r = full(
            200,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": list,
            })
            .to_string(),
        );
        r.headers_mut().insert(
            "content-type",
            "application/vnd.oci.image.index.v1+json".parse().unwrap(),
        );
        if wanted.is_some() {
            r.headers_mut()
                .insert("oci-filters-applied", "artifactType".parse().unwrap());
        }
        return r;
    }
    if let Some((name, reference)) = rest.split_once("/manifests/") {
        if head {
            c.manifest_head.fetch_add(1, Ordering::SeqCst);
        } else {
            c.manifest_get.fetch_add(1, Ordering::SeqCst);
        }
        let budget = faults.rate_budget.map(|(limit, window)| {
            let mut st = state.lock().unwrap();
            let w = Duration::from_secs(window);
            st.pulls.retain(|t| t.elapsed() < w);
            let spent = !head && st.pulls.len() as u64 >= limit;
            if !head && !spent {
                st.pulls.push(Instant::now());
            }
            (
                limit,
                limit.saturating_sub(st.pulls.len() as u64),
                window,
                spent,
            )
        });
        let with_budget = |mut r: Response<BoxBody>| {
            if let Some((limit, left, w, _)) = budget {
                let h = r.headers_mut();
                h.insert("ratelimit-limit", format!("{limit};w={w}").parse().unwrap());
                h.insert(
                    "ratelimit-remaining",
                    format!("{left};w={w}").parse().unwrap(),
                );
            }
            r
        };
        if let Some((_, _, w, true)) = budget {
            let mut r = oci_error(429, "TOOMANYREQUESTS");
            r.headers_mut().insert("retry-after", w.into());
            return with_budget(r);
        }
        if faults.html_manifests {
            let mut r = full(
                200,
                "<html><body>Please log in to the guest network</body></html>",
            );
            r.headers_mut()
                .insert("content-type", "text/html".parse().unwrap());
            return r;
        }
        let st = state.lock().unwrap();
        let digest = if reference.contains(':') {
            reference.to_string()
        } else {
            match st.tags.get(&(name.to_string(), reference.to_string())) {
                Some(d) => d.clone(),
                None => return oci_error(404, "MANIFEST_UNKNOWN"),
            }
        };
        let Some((mt, bytes)) = st.manifests.get(&digest).cloned() else {
            return oci_error(404, "MANIFEST_UNKNOWN");
        };
        let accept: Vec<String> = req
            .headers()
            .get_all("accept")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .collect();
        if !accept.contains(&mt) {
            return oci_error(404, "MANIFEST_UNKNOWN");
        }
        let len = bytes.len();
        let mut r = full(200, if head { Bytes::new() } else { bytes });
        let h = r.headers_mut();
        h.insert("content-type", mt.parse().unwrap());
        h.insert("docker-content-digest", digest.parse().unwrap());
        h.insert("content-length", len.into());
        if faults.ratelimit_headers {
            h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
            h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        }
        if let Some((l, rem)) = &faults.ratelimit_values {
            h.insert("ratelimit-limit", http::HeaderValue::from_bytes(l).unwrap());
            h.insert(
                "ratelimit-remaining",
                http::HeaderValue::from_bytes(rem).unwrap(),
            );
        }
        return with_budget(r);
    }
    if let Some((_name, digest)) = rest.split_once("/blobs/") {
        let st = state.lock().unwrap();
        let Some(b) = st.blobs.get(digest) else {
            return oci_error(404, "BLOB_UNKNOWN");
        };
        if head {
            c.blob_head.fetch_add(1, Ordering::SeqCst);
            let mut r = full(200, Bytes::new());
            r.headers_mut().insert("content-length", b.len().into());
            r.headers_mut()
                .insert("docker-content-digest", digest.parse().unwrap());
            return r;
        }
        c.blob_get.fetch_add(1, Ordering::SeqCst);
        let mut r = full(307, Bytes::new());
        let location = faults
            .redirect_to
            .clone()
            .unwrap_or_else(|| format!("http://{cdn}/cdn/{digest}?signature=secret-signed-url"));
        r.headers_mut()
            .insert("location", location.parse().unwrap());
        return r;
    }
    oci_error(404, "NOT_FOUND")
}

async fn cdn_handler(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    c: Arc<Counters>,
) -> Response<BoxBody> {
    c.cdn_get.fetch_add(1, Ordering::SeqCst);
    if req.headers().contains_key("authorization") {
        c.cdn_auth_leaks.fetch_add(1, Ordering::SeqCst);
        return full(400, "Only one auth mechanism allowed");
    }
    let digest = req.uri().path().trim_start_matches("/cdn/").to_string();
    let (blob, faults) = {
        let st = state.lock().unwrap();
        (st.blobs.get(&digest).cloned(), st.faults.clone())
    };
    let Some(mut blob) = blob else {
        return full(404, "no such object");
    };
    if faults.corrupt.contains(&digest) && !blob.is_empty() {
        let mut v = blob.to_vec();
        let at = if faults.corrupt_first { 0 } else { v.len() - 1 };
        v[at] ^= 0xff;
        blob = Bytes::from(v);
    }
    let total = blob.len();
    // Range: bytes=N- (what regcache sends to resume) or bytes=A-B.
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let a = a.parse::<usize>().ok()?;
            let b = if b.is_empty() {
                None
            } else {
                Some(b.parse::<usize>().ok()?)
            };
            Some((a, b))
        });
    if range.is_some() {
        c.cdn_ranges.fetch_add(1, Ordering::SeqCst);
    }
    let (status, start, end) = match range {
        Some((a, b)) if !faults.no_range && a < total => {
            (206, a, b.map_or(total, |b| (b + 1).min(total)))
        }
        _ => (200, 0, total),
    };
    blob = blob.slice(start..end);
    let len = blob.len();
    let cut = {
        let mut st = state.lock().unwrap();
        match &st.faults.cut_once {
            Some((d, n)) if *d == digest => {
                let n = *n;
                st.faults.cut_once = None;
                Some(n)
            }
            _ => None,
        }
    };
    let stall_once = {
        let mut st = state.lock().unwrap();
        match &st.faults.stall_once {
            Some((d, n)) if *d == digest => {
                let n = *n;
                st.faults.stall_once = None;
                Some(n)
            }
            _ => None,
        }
    };
    let stall_at = stall_once.or(faults.stall_after);
    let cut = cut.or(faults.cut_every);
    let limit = cut.or(stall_at).map(|n| n.min(len));
    let stall = cut.is_none() && stall_at.is_some();
    let throttle = match (faults.throttle, faults.no_length || limit.is_some()) {
        (None, true) => Some((64 * 1024, Duration::ZERO)),
        (t, _) => t,
    };
    let counters = c.clone();
    let body: BoxBody = match throttle {
        None => {
            counters.cdn_bytes.fetch_add(len as u64, Ordering::SeqCst);
            Full::new(blob).map_err(|e| match e {}).boxed()
        }
        Some((chunk, pause)) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<
                Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
            >(1);
            tokio::spawn(async move {
                let stop = limit.unwrap_or(blob.len());
                let mut pos = 0;
                while pos < stop {
                    let end = (pos + chunk).min(stop);
                    if tx
                        .send(Ok(Frame::data(blob.slice(pos..end))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    counters
                        .cdn_bytes
                        .fetch_add((end - pos) as u64, Ordering::SeqCst);
                    pos = end;
                    tokio::time::sleep(pause).await;
                }
                if limit.is_some() {
                    if stall {
                        // Keep the connection open, send nothing more.
                        tx.closed().await;
                    } else {
                        let _ = tx.send(Err("cut".into())).await;
                    }
                }
            });
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
        }
    };
    let mut r = Response::builder().status(status).body(body).unwrap();
    if !faults.no_length {
        r.headers_mut().insert("content-length", len.into());
    }
    if status == 206 {
        r.headers_mut().insert(
            "content-range",
            format!("bytes {start}-{}/{total}", end - 1)
                .parse()
                .unwrap(),
        );
    }
    r
}
