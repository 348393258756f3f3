//! The pull API: one handler per endpoint, deciding hit / miss / coalesced / stale.
//!
//! Endpoints and semantics follow the OCI distribution spec ("Pull"), with the mirror behaviour
//! described in its "Registry Proxying" section: blobs and manifests by digest are immutable and
//! served from the cache forever; tags are revalidated upstream with a HEAD once `tag_ttl` has
//! passed and served stale when the upstream is down.

pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{
    HeaderValue, ACCEPT, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LINK,
    RANGE, RETRY_AFTER,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::body::{self, ChannelBody, ResponseBody};
use crate::cache::fill::{self, FillError, FillState, Fills, Joined};
use crate::cache::store::{Hasher, Store, StoredManifest, TagEntry};
use crate::config::Config;
use crate::error::ApiError;
use crate::reference::{Digest, Reference, Route};
use crate::upstream::{read_limited, Upstream, UpstreamError};

/// The four modern manifest media types, asked of upstream on every manifest request
/// (OCI image spec; Docker image manifest v2 schema 2).
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Largest manifest accepted from upstream, in bytes (distribution's default limit is 4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// How a request was answered, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache without asking upstream (or after a HEAD confirmed a tag).
    Hit,
    /// Fetched from upstream (and cached).
    Miss,
    /// Joined a fill another request started.
    Coalesced,
    /// Upstream was unavailable; served the cached answer.
    Stale,
    /// Passed through without caching (tags/list, referrers, HEAD of an uncached blob).
    Pass,
    /// No cache involvement (`/v2/`, errors).
    None,
}

impl CacheResult {
    /// Lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Stale => "stale",
            CacheResult::Pass => "pass",
            CacheResult::None => "-",
        }
    }
}

/// Shared state of a running mirror.
pub struct App {
    /// Effective configuration.
    pub config: Config,
    /// The on-disk cache.
    pub store: Store,
    /// Blob fills in progress (shared by all registries: same digest, same bytes).
    pub fills: Arc<Fills>,
    /// One upstream per configured registry, by the registry name clients use.
    pub registries: BTreeMap<String, Arc<Upstream>>,
    /// Per-key locks coalescing manifest fetches and tag revalidations.
    manifest_locks: KeyedLocks,
    /// Requests and bytes by cache result (for `/metrics`).
    pub counters: crate::metrics::RequestCounters,
}

impl App {
    /// Builds the mirror's state: opens the store (cleaning leftover temp files) and one client
    /// per registry.
    ///
    /// Errors: the I/O error if the cache directory cannot be prepared, or a TLS setup error.
    pub fn new(config: Config) -> std::io::Result<App> {
        let (store, temp_removed) = Store::open_unindexed(&config.cache_dir)?;
        if temp_removed > 0 {
            tracing::info!(
                temp_removed,
                "removed leftover temp files of interrupted fills"
            );
        }
        // Serving starts at once; the index loads in the background (eviction waits for it).
        let s = store.clone();
        tokio::task::spawn_blocking(move || match s.rebuild_index() {
            Ok(scan) => tracing::info!(
                objects = scan.objects,
                bytes = scan.bytes,
                healed = scan.healed,
                "cache index rebuilt from disk"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the cache directory; eviction is off")
            }
        });
        crate::cache::eviction::spawn(&store, config.budget);
        App::with_store(config, store)
    }

    /// Builds the mirror's state over an already opened store (no evictor is started).
    ///
    /// Errors: a TLS setup error for a registry.
    pub fn with_store(config: Config, store: Store) -> std::io::Result<App> {
        let mut registries = BTreeMap::new();
        for r in &config.registries {
            let opts = crate::upstream::UpstreamOptions {
                timeout: config.revalidate_timeout,
                offline: config.offline,
            };
            registries.insert(r.registry.clone(), Arc::new(Upstream::new(r, opts)?));
        }
        Ok(App {
            fills: Arc::new(Fills::new(crate::cache::fill::FillSettings {
                budget: config.budget,
                idle_timeout: config.idle_timeout,
                bandwidth: config
                    .max_upstream_bandwidth
                    .map(|b| Arc::new(crate::cache::fill::Bandwidth::new(b))),
            })),
            config,
            store,
            registries,
            manifest_locks: KeyedLocks::default(),
            counters: Default::default(),
        })
    }

    /// The default registry's upstream.
    pub fn default_upstream(&self) -> &Arc<Upstream> {
        &self.registries[&self.config.default_registry]
    }

    /// Splits a `/v2/<registry>/<rest>` path whose first component is a configured registry
    /// name (podman/CRI-O mirrors with a path) into that name and `/v2/<rest>`.
    fn strip_registry_prefix<'p>(
        &self,
        path: &'p str,
    ) -> (Option<&str>, std::borrow::Cow<'p, str>) {
        if let Some(rest) = path.strip_prefix("/v2/") {
            let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some((key, _)) = self.registries.get_key_value(first) {
                return (Some(key.as_str()), format!("/v2/{tail}").into());
            }
        }
        (None, path.into())
    }
}

/// Answers one request. Never fails: errors become OCI error responses.
pub async fn handle<B>(app: &App, req: &Request<B>) -> (Response<ResponseBody>, CacheResult) {
    let head = req.method() == Method::HEAD;
    match route(app, req).await {
        Ok(r) => r,
        Err(e) => (e.into_response(head), CacheResult::None),
    }
}

async fn route<B>(
    app: &App,
    req: &Request<B>,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::unsupported_method(method));
    }
    let head = method == Method::HEAD;
    if req.uri().path() == "/metrics" {
        let text = crate::metrics::render(app);
        let r = Response::builder()
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
            .map_err(|e| ApiError::internal(e.to_string()))?;
        return Ok((r, CacheResult::None));
    }
    let query = Query::parse(req.uri().query());
    let (prefix, path) = app.strip_registry_prefix(req.uri().path());
    if prefix.is_none() {
        if let Some(host) = hostlike_prefix(&path) {
            // Docker Hub repository names never start with a host name: this is a path-prefix
            // request for a registry that is not configured. Nothing goes upstream.
            if app.config.default_registry == crate::config::DEFAULT_REGISTRY {
                return Err(not_mirrored(app, host));
            }
        }
    }
    let registry = match (prefix, &query.ns) {
        (Some(p), Some(ns)) if p != ns => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                format!("the path names registry {p:?} but ns= names {ns:?}; use one"),
            ))
        }
        (Some(p), _) => p,
        (None, Some(ns)) => ns.as_str(),
        (None, None) => app.config.default_registry.as_str(),
    };
    // `ns` and path prefixes are keys into the configured registries, never hosts to dial.
    let Some(up) = app.registries.get(registry) else {
        return Err(not_mirrored(app, registry));
    };
    let route = Route::parse(&path)?;
    match route {
        Route::Base => Ok((base_response(head), CacheResult::None)),
        Route::Manifest { name, reference } => {
            let name = canonical_name(up.registry(), name);
            manifest(app, up, &name, &reference, req.headers(), head).await
        }
        Route::Blob { name, digest } => {
            let name = canonical_name(up.registry(), name);
            // Mapped bytes are sent with sendfile only on plain-TCP HTTP/1 connections; anywhere
            // they would be copied in user space they are read instead (a file truncated under
            // us must fail one response, not fault the process).
            let zero_copy = req
                .extensions()
                .get::<crate::body::zero_copy::ZeroCopyConnection>()
                .is_some()
                && req.version() <= http::Version::HTTP_11;
            blob(app, up, &name, &digest, req.headers(), head, zero_copy).await
        }
        Route::TagsList { name } => {
            let name = canonical_name(up.registry(), name);
            let mut path = format!("/v2/{name}/tags/list");
            let mut sep = '?';
            for (k, v) in [("n", &query.n), ("last", &query.last)] {
                if let Some(v) = v {
                    path.push(sep);
                    path.push_str(k);
                    path.push('=');
                    path.push_str(
                        &url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>(),
                    );
                    sep = '&';
                }
            }
            pass_through(app.config.idle_timeout, up, &name, &path, head).await
        }
        Route::Referrers { name, digest } => {
            let name = canonical_name(up.registry(), name);
            pass_through(
                app.config.idle_timeout,
                up,
                &name,
                &format!("/v2/{name}/referrers/{digest}"),
                head,
            )
            .await
        }
    }
}

/// 404 NAME_UNKNOWN for a registry (from `ns=` or a path prefix) that is not configured.
fn not_mirrored(app: &App, registry: &str) -> ApiError {
    let configured: Vec<&str> = app.registries.keys().map(String::as_str).collect();
    ApiError::name_unknown(format!(
        "registry {:?} is not mirrored here (configured: {})",
        registry.chars().take(100).collect::<String>(),
        configured.join(", ")
    ))
}

/// The first path component after `/v2/` when it looks like a registry host (has a `.` or a
/// `:`, or is `localhost`) and more path follows.
fn hostlike_prefix(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let (first, tail) = rest.split_once('/')?;
    let hostlike = first.contains('.') || first.contains(':') || first == "localhost";
    (!tail.is_empty() && hostlike && crate::config::is_registry_name(first)).then_some(first)
}

/// Docker Hub spells official images `library/<name>`; a bare name gets the prefix so all
/// spellings share one cache entry (the Hub itself does not alias them).
fn canonical_name(registry: &str, name: String) -> String {
    if registry == "docker.io" && !name.contains('/') {
        format!("library/{name}")
    } else {
        name
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
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Query::default();
        for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            match &*k {
                "ns" => out.ns = Some(v.into_owned()),
                "n" => out.n = Some(v.into_owned()),
                "last" => out.last = Some(v.into_owned()),
                _ => {}
            }
        }
        out
    }
}

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

// ---------------------------------------------------------------------------------------------
// Blobs

async fn blob(
    app: &App,
    up: &Arc<Upstream>,
    name: &str,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
    zero_copy: bool,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    if let Some(r) = blob_hit(app, digest, headers, head, zero_copy)? {
        return Ok((r, CacheResult::Hit));
    }
    if head {
        return blob_head_miss(app, up, name, digest).await;
    }
    let (fill, reader, leader) = match app.fills.join(&app.store, up, name, digest) {
        Joined::Hit => {
            return blob_hit(app, digest, headers, head, zero_copy)?
                .map(|r| (r, CacheResult::Hit))
                .ok_or_else(|| ApiError::internal("blob vanished from the cache"));
        }
        Joined::Fill {
            fill,
            reader,
            leader,
        } => (fill, reader, leader),
    };
    let result = if leader {
        CacheResult::Miss
    } else {
        CacheResult::Coalesced
    };
    let len = match fill.started().await {
        FillState::Failed(e) => return Err(fill_error(&e, digest)),
        FillState::Streaming { len, .. } => len,
        FillState::Done { len, .. } => Some(len),
        FillState::Connecting => None,
    };
    let (status, start, end, content_range) = match (len, range_of(headers)) {
        (Some(total), Some(spec)) => match resolve_range(&spec, total) {
            RangeAnswer::Full => (StatusCode::OK, 0, None, None),
            RangeAnswer::Partial(a, b) => (
                StatusCode::PARTIAL_CONTENT,
                a,
                Some(b + 1),
                Some(format!("bytes {a}-{b}/{total}")),
            ),
            RangeAnswer::Unsatisfiable => return Err(range_not_satisfiable(total)),
        },
        _ => (StatusCode::OK, 0, None, None),
    };
    let body_len = match (end, len) {
        (Some(e), _) => Some(e - start),
        (None, l) => l,
    };
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(fill::follow(fill, reader, start, end, zero_copy, tx));
    let mut b = blob_headers(Response::builder().status(status), digest);
    if let Some(n) = body_len {
        b = b.header(CONTENT_LENGTH, n);
    }
    if let Some(cr) = content_range {
        b = b.header(CONTENT_RANGE, cr);
    }
    let resp = b
        .body(ChannelBody::new(rx, body_len).boxed_unsync())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((resp, result))
}

fn blob_headers(b: http::response::Builder, digest: &Digest) -> http::response::Builder {
    b.header(CONTENT_TYPE, "application/octet-stream")
        .header("Docker-Content-Digest", digest.to_string())
        .header(ACCEPT_RANGES, "bytes")
        .header(ETAG, format!("\"{digest}\""))
        .header("Docker-Distribution-API-Version", "registry/2.0")
}

/// Serves a committed blob from an mmap (no copy through user space), honouring `Range`.
fn blob_hit(
    app: &App,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
    zero_copy: bool,
) -> Result<Option<Response<ResponseBody>>, ApiError> {
    let Some((file, len)) = app
        .store
        .open_blob(digest)
        .map_err(|e| ApiError::internal(format!("reading the cache: {e}")))?
    else {
        return Ok(None);
    };
    let (status, a, b) = match range_of(headers).map(|s| resolve_range(&s, len)) {
        None | Some(RangeAnswer::Full) => (StatusCode::OK, 0, len),
        Some(RangeAnswer::Partial(a, b)) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Some(RangeAnswer::Unsatisfiable) => return Err(range_not_satisfiable(len)),
    };
    let mut builder =
        blob_headers(Response::builder().status(status), digest).header(CONTENT_LENGTH, b - a);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(CONTENT_RANGE, format!("bytes {a}-{}/{len}", b - 1));
    }
    let body = if head {
        body::empty()
    } else {
        crate::body::zero_copy::MmapBody::new(Arc::new(file), a, b, zero_copy).boxed_unsync()
    };
    builder
        .body(body)
        .map(Some)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// HEAD of a blob that is not cached: answer from a running fill, or ask upstream (no fill is
/// started for a HEAD).
async fn blob_head_miss(
    app: &App,
    up: &Arc<Upstream>,
    name: &str,
    digest: &Digest,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    if let Some(len) = app.fills.get(digest).and_then(|f| f.known_len()) {
        let r = blob_headers(Response::builder(), digest)
            .header(CONTENT_LENGTH, len)
            .body(body::empty())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        return Ok((r, CacheResult::Coalesced));
    }
    let path = format!("/v2/{name}/blobs/{digest}");
    let resp = up
        .send(Method::HEAD, name, &path, &HeaderMap::new())
        .await
        .map_err(|e| upstream_error(&e, Kind::Blob))?;
    if resp.status() != StatusCode::OK {
        return Err(upstream_error(&status_error(&resp), Kind::Blob));
    }
    let mut b = blob_headers(Response::builder(), digest);
    if let Some(l) = resp.headers().get(CONTENT_LENGTH) {
        b = b.header(CONTENT_LENGTH, l);
    }
    let r = b
        .body(body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((r, CacheResult::Pass))
}

/// A single byte range from the `Range` header (RFC 9110 §14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` (b inclusive) or `bytes=a-` (b = None).
    FromTo(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// What a range means for an object of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Serve the whole object (200).
    Full,
    /// Serve bytes a..=b (206).
    Partial(u64, u64),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Parses a `Range` value. Returns `None` for anything but one well-formed `bytes` range
/// (RFC 9110 lets a server ignore such headers and answer 200 with the whole object).
pub fn parse_range(v: &str) -> Option<RangeSpec> {
    let spec = v.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok())?
    };
    if a.trim().is_empty() {
        return num(b).map(RangeSpec::Suffix);
    }
    let a = num(a)?;
    if b.trim().is_empty() {
        return Some(RangeSpec::FromTo(a, None));
    }
    let b = num(b)?;
    (b >= a).then_some(RangeSpec::FromTo(a, Some(b)))
}

/// Resolves a range against an object of `len` bytes (RFC 9110 §14.1.2, §15.5.17).
pub fn resolve_range(spec: &RangeSpec, len: u64) -> RangeAnswer {
    match *spec {
        RangeSpec::FromTo(a, _) if a >= len => RangeAnswer::Unsatisfiable,
        RangeSpec::FromTo(a, b) => RangeAnswer::Partial(a, b.unwrap_or(u64::MAX).min(len - 1)),
        RangeSpec::Suffix(0) => RangeAnswer::Unsatisfiable,
        RangeSpec::Suffix(_) if len == 0 => RangeAnswer::Unsatisfiable,
        RangeSpec::Suffix(n) => RangeAnswer::Partial(len.saturating_sub(n), len - 1),
    }
}

fn range_of(headers: &HeaderMap) -> Option<RangeSpec> {
    headers
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range)
}

fn range_not_satisfiable(len: u64) -> ApiError {
    ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "RANGE_INVALID",
        format!("requested range is outside the blob's {len} bytes"),
    )
    .with_header(
        CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
    )
}

// ---------------------------------------------------------------------------------------------
// Manifests

async fn manifest(
    app: &App,
    up: &Arc<Upstream>,
    name: &str,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<(Response<ResponseBody>, CacheResult), ApiError> {
    let (digest, m, result) = match reference {
        Reference::Digest(d) => manifest_by_digest(app, up, name, d).await?,
        Reference::Tag(t) => manifest_by_tag(app, up, name, t).await?,
    };
    if !accepts(headers, &m.media_type) {
        return Err(ApiError::manifest_unknown(format!(
            "manifest {reference} of {name} is a {}, which the request's Accept header does not list",
            m.media_type
        )));
    }
    let r = Response::builder()
        .header(CONTENT_TYPE, &m.media_type)
        .header(CONTENT_LENGTH, m.bytes.len())
        .header("Docker-Content-Digest", digest.to_string())
        .header(ETAG, format!("\"{digest}\""))
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .body(if head {
            body::empty()
        } else {
            body::full(m.bytes)
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((r, result))
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

async fn manifest_by_digest(
    app: &App,
    up: &Arc<Upstream>,
    name: &str,
    d: &Digest,
) -> Result<(Digest, StoredManifest, CacheResult), ApiError> {
    if let Some(m) = read_manifest(app, d)? {
        return Ok((d.clone(), m, CacheResult::Hit));
    }
    let _guard = app.manifest_locks.lock(d.to_string()).await;
    if let Some(m) = read_manifest(app, d)? {
        return Ok((d.clone(), m, CacheResult::Coalesced));
    }
    let (digest, m) = fetch_manifest(app, up, name, &d.to_string(), Some(d))
        .await
        .map_err(|e| upstream_error(&e, Kind::Manifest))?;
    Ok((digest, m, CacheResult::Miss))
}

fn read_manifest(app: &App, d: &Digest) -> Result<Option<StoredManifest>, ApiError> {
    app.store
        .read_manifest(d)
        .map_err(|e| ApiError::internal(format!("reading the cache: {e}")))
}

/// The cached answer for a tag: its entry and the manifest it points to (if both are there).
fn cached_tag(
    app: &App,
    up: &Arc<Upstream>,
    name: &str,
    tag: &str,
) -> Result<Option<(TagEntry, Digest, StoredManifest)>, ApiError> {
    let registry = up.registry();
    let Some(entry) = app.store.read_tag(registry, name, tag) else {
        return Ok(None);
    };
    let Ok(d) = entry.digest.parse::<Digest>() else {
        return Ok(None);
    };
    Ok(read_manifest(app, &d)?.map(|m| (entry, d, m)))
}

async fn manifest_by_tag(
    app: &App,
    up: &Arc<Upstream>,
    name: &str,
    tag: &str,
) -> Result<(Digest, StoredManifest, CacheResult), ApiError> {
    let ttl = app.config.tag_ttl;
    if let Some((entry, d, m)) = cached_tag(app, up, name, tag)? {
        if fresh(&entry, ttl) || app.config.offline {
            return Ok((d, m, CacheResult::Hit));
        }
    }
    let registry = up.registry().to_string();
    let _guard = app
        .manifest_locks
        .lock(format!("{registry}/{name}:{tag}"))
        .await;
    let cached = cached_tag(app, up, name, tag)?;
    if let Some((entry, d, m)) = &cached {
        // Another request may have revalidated it while this one waited for the lock.
        if fresh(entry, ttl) {
            return Ok((d.clone(), m.clone(), CacheResult::Hit));
        }
    }
    let path = format!("/v2/{name}/manifests/{tag}");
    let Some((_, cached_digest, cached_m)) = cached else {
        // Cold: one GET by tag (HEAD + GET would cost the same rate-limit unit and a round trip).
        let (d, m) = fetch_manifest(app, up, name, tag, None)
            .await
            .map_err(|e| upstream_error(&e, Kind::Manifest))?;
        record_tag(app, up, name, tag, &d, &m.media_type);
        return Ok((d, m, CacheResult::Miss));
    };
    // Revalidate with a HEAD (free of Docker Hub's rate limit).
    let head = up.send(Method::HEAD, name, &path, &accept_all()).await;
    let stale = |e: &UpstreamError| {
        tracing::warn!(registry = %registry, name, tag, error = %e, "upstream unavailable; serving cached tag (stale)");
    };
    let resp = match head {
        Ok(r) => r,
        Err(e) if e.is_outage() => {
            stale(&e);
            return Ok((cached_digest, cached_m, CacheResult::Stale));
        }
        Err(e) => return Err(upstream_error(&e, Kind::Manifest)),
    };
    if resp.status() != StatusCode::OK {
        let e = status_error(&resp);
        if e.is_outage() {
            stale(&e);
            return Ok((cached_digest, cached_m, CacheResult::Stale));
        }
        if resp.status() == StatusCode::NOT_FOUND {
            let _ = app.store.remove_tag(&registry, name, tag);
        }
        return Err(upstream_error(&e, Kind::Manifest));
    }
    let upstream_digest = resp
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    drop(resp);
    if upstream_digest.as_ref() == Some(&cached_digest) {
        record_tag(app, up, name, tag, &cached_digest, &cached_m.media_type);
        return Ok((cached_digest, cached_m, CacheResult::Hit));
    }
    if let Some(d) = &upstream_digest {
        if let Some(m) = read_manifest(app, d)? {
            record_tag(app, up, name, tag, d, &m.media_type);
            return Ok((d.clone(), m, CacheResult::Hit));
        }
    }
    // The tag moved to a manifest not cached (or upstream sent no digest): fetch it, by digest
    // when known (digests are immutable, so that answer can never be a surprise).
    let fetched = match &upstream_digest {
        Some(d) => fetch_manifest(app, up, name, &d.to_string(), Some(d)).await,
        None => fetch_manifest(app, up, name, tag, None).await,
    };
    match fetched {
        Ok((d, m)) => {
            record_tag(app, up, name, tag, &d, &m.media_type);
            Ok((d, m, CacheResult::Miss))
        }
        Err(e) if e.is_outage() => {
            stale(&e);
            Ok((cached_digest, cached_m, CacheResult::Stale))
        }
        Err(e) => Err(upstream_error(&e, Kind::Manifest)),
    }
}

/// Whether a tag's cached answer may be used without asking upstream (`tag_ttl` 0: never).
fn fresh(entry: &TagEntry, ttl: Duration) -> bool {
    !ttl.is_zero() && entry.age() < ttl
}

fn record_tag(app: &App, up: &Arc<Upstream>, name: &str, tag: &str, d: &Digest, media_type: &str) {
    let entry = TagEntry {
        digest: d.to_string(),
        media_type: media_type.to_string(),
        checked: crate::cache::store::unix_now(),
    };
    if let Err(e) = app.store.write_tag(up.registry(), name, tag, &entry) {
        tracing::warn!(name, tag, error = %e, "cannot record tag in the cache");
    }
}

/// `Accept` with the four modern manifest types, as sent upstream every time.
fn accept_all() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT, HeaderValue::from_static(
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json",
    ));
    debug_assert!(MANIFEST_TYPES
        .iter()
        .all(|t| h[ACCEPT].to_str().unwrap_or("").contains(t)));
    h
}

/// GETs a manifest (`reference` = tag or digest string), verifies it against `expected` (or
/// upstream's `Docker-Content-Digest`, or just hashes it for a tag), and stores it.
async fn fetch_manifest(
    app: &App,
    up: &Arc<Upstream>,
    name: &str,
    reference: &str,
    expected: Option<&Digest>,
) -> Result<(Digest, StoredManifest), UpstreamError> {
    let path = format!("/v2/{name}/manifests/{reference}");
    let resp = up.send(Method::GET, name, &path, &accept_all()).await?;
    if resp.status() != StatusCode::OK {
        return Err(status_error(&resp));
    }
    let header_digest = resp
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = read_limited(resp.into_body(), MAX_MANIFEST_SIZE)
        .await
        .map_err(|e| {
            UpstreamError::Protocol(format!("reading manifest {name}:{reference}: {e}"))
        })?;
    let digest = match (expected, &header_digest) {
        (Some(e), _) => e.clone(),
        (None, Some(h)) => h.clone(),
        (None, None) => Hasher::digest_of(crate::reference::Algorithm::Sha256, &bytes),
    };
    let actual = Hasher::digest_of(digest.algorithm(), &bytes);
    if actual != digest {
        return Err(UpstreamError::Protocol(format!(
            "manifest {name}:{reference} hashes to {actual}, not {digest}"
        )));
    }
    if let Some(h) = &header_digest {
        if h.algorithm() == digest.algorithm() && *h != digest {
            return Err(UpstreamError::Protocol(format!(
                "upstream says manifest {name}:{reference} is {h}, but its bytes hash to {digest}"
            )));
        }
    }
    // A manifest is a JSON object; anything else (a captive portal's HTML, a proxy's error
    // page) is an upstream fault — never cached, and a cached answer is served instead.
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| UpstreamError::Protocol(format!("manifest {name}:{reference} is not JSON")))?;
    if !json.is_object() {
        return Err(UpstreamError::Protocol(format!(
            "manifest {name}:{reference} is not a JSON object"
        )));
    }
    let media_type = match content_type {
        Some(ct) if is_manifest_content_type(&ct) => ct,
        _ => json["mediaType"]
            .as_str()
            .filter(|t| {
                crate::cache::store::is_storable_media_type(t) && is_manifest_content_type(t)
            })
            .map(str::to_string)
            .ok_or_else(|| {
                UpstreamError::Protocol(format!(
                    "manifest {name}:{reference} has no usable media type"
                ))
            })?,
    };
    if let Err(e) = app.store.write_manifest(&digest, &media_type, &bytes) {
        tracing::warn!(%digest, error = %e, "cannot store manifest; serving it uncached");
    }
    Ok((digest, StoredManifest { media_type, bytes }))
}

/// Whether `ct` can be a manifest's media type: storable on one line, and a JSON type
/// (`application/…+json` or `application/json`), never `text/html` or `application/octet-stream`.
fn is_manifest_content_type(ct: &str) -> bool {
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    crate::cache::store::is_storable_media_type(ct)
        && base.starts_with("application/")
        && (base.ends_with("+json") || base == "application/json")
}

// ---------------------------------------------------------------------------------------------
// Pass-through (tags/list, referrers)

async fn pass_through(
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
        .map_err(|e| upstream_error(&e, Kind::Name))?;
    let status = resp.status();
    if status != StatusCode::OK && status != StatusCode::NOT_FOUND {
        return Err(upstream_error(&status_error(&resp), Kind::Name));
    }
    let mut b = Response::builder()
        .status(status)
        .header("Docker-Distribution-API-Version", "registry/2.0");
    for h in [CONTENT_TYPE, CONTENT_LENGTH, LINK] {
        if let Some(v) = resp.headers().get(&h) {
            b = b.header(h, v);
        }
    }
    let body = crate::body::IdleTimeout::new(resp.into_body(), idle).boxed_unsync();
    let r = b
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((r, CacheResult::Pass))
}

// ---------------------------------------------------------------------------------------------
// Error mapping

/// What a request was about, to pick the OCI error code for an upstream 404.
#[derive(Clone, Copy)]
enum Kind {
    Blob,
    Manifest,
    Name,
}

fn status_error<B>(resp: &Response<B>) -> UpstreamError {
    UpstreamError::Status {
        status: resp.status(),
        retry_after: resp.headers().get(RETRY_AFTER).cloned(),
    }
}

/// Maps an upstream failure to the client's answer: 404s pass on, rate limits pass on with
/// `Retry-After`, outages become 503 UNAVAILABLE (retryable), never a 500.
fn upstream_error(e: &UpstreamError, kind: Kind) -> ApiError {
    match e {
        UpstreamError::Status {
            status,
            retry_after,
        } => {
            let mut err = match *status {
                StatusCode::NOT_FOUND => match kind {
                    Kind::Blob => ApiError::blob_unknown("blob unknown to upstream"),
                    Kind::Manifest => ApiError::manifest_unknown("manifest unknown to upstream"),
                    Kind::Name => ApiError::name_unknown("repository unknown to upstream"),
                },
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::name_unknown(format!(
                    "upstream answered {status}: the repository does not exist or needs credentials regcache does not have"
                )),
                StatusCode::TOO_MANY_REQUESTS => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOOMANYREQUESTS",
                    "upstream rate limit reached; retry later",
                ),
                s if s.is_server_error() => ApiError::unavailable(format!("upstream answered {s}; retry later")),
                s => ApiError::new(StatusCode::BAD_GATEWAY, "UNKNOWN", format!("upstream answered {s}")),
            };
            // Pass Retry-After on only as sane delta-seconds (≤ 1 h); otherwise say 60.
            if retry_after.is_some() || *status == StatusCode::TOO_MANY_REQUESTS {
                let secs = retry_after
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|s| *s <= 3600)
                    .unwrap_or(60);
                err = err.with_header(RETRY_AFTER, HeaderValue::from(secs));
            }
            err
        }
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
        UpstreamError::Protocol(m) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            format!("bad answer from upstream: {m}"),
        ),
        other => ApiError::unavailable(format!("{other}; retry later")),
    }
}

fn fill_error(e: &FillError, digest: &Digest) -> ApiError {
    match e {
        FillError::Upstream(u) => upstream_error(u, Kind::Blob),
        FillError::Body { .. } => ApiError::unavailable(format!(
            "download of {digest} from upstream broke off; retry"
        )),
        FillError::Verify(m) => ApiError::new(StatusCode::BAD_GATEWAY, "UNKNOWN", m.clone()),
        FillError::Disk(m) => ApiError::internal(format!("cache error filling {digest}: {m}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Keyed locks

/// Async locks by key, removed when nobody holds or waits for them.
#[derive(Default)]
struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    async fn lock(&self, key: String) -> KeyedGuard<'_> {
        let lock = self
            .map
            .lock()
            .expect("locks")
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        KeyedGuard {
            locks: self,
            key,
            lock: Some(lock),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map.lock().expect("locks");
        if let Some(lock) = self.lock.take() {
            // Two references left: the map's and ours. Nobody else holds or waits.
            if Arc::strong_count(&lock) == 2 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-9"),
            Some(RangeSpec::FromTo(0, Some(9)))
        );
        assert_eq!(parse_range("bytes=5-"), Some(RangeSpec::FromTo(5, None)));
        assert_eq!(parse_range("bytes=-3"), Some(RangeSpec::Suffix(3)));
        for bad in [
            "bytes=9-5",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
        assert_eq!(
            resolve_range(&RangeSpec::FromTo(0, Some(99)), 10),
            RangeAnswer::Partial(0, 9)
        );
        assert_eq!(
            resolve_range(&RangeSpec::FromTo(10, None), 10),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(
            resolve_range(&RangeSpec::Suffix(3), 10),
            RangeAnswer::Partial(7, 9)
        );
        assert_eq!(
            resolve_range(&RangeSpec::Suffix(30), 10),
            RangeAnswer::Partial(0, 9)
        );
        assert_eq!(
            resolve_range(&RangeSpec::Suffix(0), 10),
            RangeAnswer::Unsatisfiable
        );
    }

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
