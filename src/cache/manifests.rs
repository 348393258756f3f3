//! Manifest policy (OCI distribution spec, "Pull"; its "Registry Proxying" section).
//!
//! - By digest: immutable. Served from the cache forever; a miss is fetched once (concurrent
//!   requests wait on a per-digest lock), verified against the digest, stored.
//! - By tag: the tag's last answer is trusted for `tag_ttl`; after that it is revalidated with a
//!   HEAD (free of Docker Hub's rate limit) and, when the tag moved, the new manifest is fetched
//!   by digest. When the upstream is down (or rate-limiting) the cached answer is served stale;
//!   an upstream 404 forgets the tag. A cold tag costs one GET.
//! - Every answer is asked for with all four modern media types, so the first client's `Accept`
//!   never decides what is cached; the HTTP layer checks the client's `Accept` afterwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};

use crate::cache::hash::Hasher;
use crate::cache::index::unix_now;
use crate::cache::policy::{FreshnessPolicy, TagRules};
use crate::cache::store::{is_storable_media_type, Store, StoredManifest};
use crate::cache::tags::TagEntry;
use crate::cache::{CacheError, CacheOptions, CacheResult, Origin};
use crate::reference::{Algorithm, Digest, Reference, MANIFEST_TYPES};
use crate::upstream::{read_limited, Upstream, UpstreamError};

/// Default for the largest manifest accepted from upstream, in bytes (distribution's limit).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// A manifest answer: its digest, exact bytes and media type, and how it was answered.
#[derive(Debug, Clone)]
pub struct ManifestAnswer {
    /// `sha256:<64 hex>` (or sha512) of the bytes.
    pub digest: Digest,
    /// The exact bytes and the media type upstream gave them.
    pub manifest: StoredManifest,
    /// Hit, miss, coalesced or stale.
    pub result: CacheResult,
}

/// Manifests by digest and by tag over the store.
pub(super) struct Manifests {
    /// Where manifests and tags live.
    pub(super) store: Store,
    /// Tag TTLs, immutable tags and `max_stale`, by registry (replaced on reload).
    policies: std::sync::RwLock<Policies>,
    /// Never revalidate (serve what is cached).
    pub(super) offline: bool,
    /// Bound on a whole revalidation while a cached answer waits (zero: unbounded).
    pub(super) revalidate_timeout: Duration,
    /// Largest manifest accepted from upstream, in bytes.
    pub(super) max_manifest_size: usize,
    /// Per-key locks coalescing manifest fetches and tag revalidations.
    pub(super) locks: KeyedLocks,
    /// Bound on reading a listing's body (`idle_timeout`).
    pub(super) idle_timeout: Duration,
    /// Stale answers by [`STALE_CAUSES`].
    stale: [std::sync::atomic::AtomicU64; STALE_CAUSES.len()],
}

/// Why a cached tag was served stale, as `/metrics` labels it: `timeout` (the upstream, its
/// token endpoint or its answer took longer than `revalidate_timeout`), `unreachable` (no
/// connection), `backing_off` (its circuit is open after timeouts), `rate_limited` (a 429 and
/// its `Retry-After`), `upstream_error` (a 5xx or 429 answer), `rate_budget` (not revalidated:
/// the registry's reported rate-limit budget is down to `rate_limit_reserve`).
pub const STALE_CAUSES: [&str; 6] = [
    "timeout",
    "unreachable",
    "backing_off",
    "rate_limited",
    "upstream_error",
    "rate_budget",
];

/// The [`STALE_CAUSES`] index of `rate_budget`.
const STALE_RATE_BUDGET: usize = 5;

/// The [`STALE_CAUSES`] index of an outage error.
pub(super) fn stale_cause(e: &UpstreamError) -> usize {
    match e {
        UpstreamError::Timeout { .. } => 0,
        UpstreamError::Connect { .. } => 1,
        UpstreamError::BackingOff {
            rate_limited: false,
            ..
        } => 2,
        UpstreamError::BackingOff {
            rate_limited: true, ..
        } => 3,
        _ => 4,
    }
}

impl Manifests {
    pub(super) fn new(store: Store, opts: &CacheOptions) -> Manifests {
        Manifests {
            store,
            policies: std::sync::RwLock::new(Policies::new(opts.tag_ttl, opts.policies.clone())),
            offline: opts.offline,
            revalidate_timeout: opts.revalidate_timeout,
            max_manifest_size: match opts.max_manifest_size {
                0 => MAX_MANIFEST_SIZE,
                n => n,
            },
            stale: Default::default(),
            locks: KeyedLocks::default(),
            idle_timeout: match opts.idle_timeout {
                d if d.is_zero() => crate::upstream::BODY_IDLE_TIMEOUT,
                d => d,
            },
        }
    }

    pub(super) async fn get(
        &self,
        from: Origin<'_>,
        reference: &Reference,
    ) -> Result<ManifestAnswer, CacheError> {
        let (digest, manifest, result) = match reference {
            Reference::Digest(d) => self.by_digest(from, d).await?,
            Reference::Tag(t) => self.by_tag(from, t).await?,
        };
        Ok(ManifestAnswer {
            digest,
            manifest,
            result,
        })
    }

    /// A manifest by digest: cached, or fetched once (concurrent requests wait for the first).
    async fn by_digest(
        &self,
        from: Origin<'_>,
        d: &Digest,
    ) -> Result<(Digest, StoredManifest, CacheResult), CacheError> {
        if let Some(m) = self.store.read_manifest(d)? {
            return Ok((d.clone(), m, CacheResult::Hit));
        }
        let _guard = self.locks.lock(d.to_string()).await;
        if let Some(m) = self.store.read_manifest(d)? {
            return Ok((d.clone(), m, CacheResult::Coalesced));
        }
        let (digest, m) = self.fetch(from, &d.to_string(), Some(d), false).await?;
        Ok((digest, m, CacheResult::Miss))
    }

    /// The cached answer for a tag: its entry and the manifest it points to (if both are there).
    pub(super) fn cached_tag(
        &self,
        from: Origin<'_>,
        tag: &str,
    ) -> Result<Option<(TagEntry, Digest, StoredManifest)>, CacheError> {
        let Some(entry) = self
            .store
            .read_tag(from.upstream.registry(), from.name, tag)
        else {
            return Ok(None);
        };
        let Ok(d) = entry.digest.parse::<Digest>() else {
            return Ok(None);
        };
        Ok(self.store.read_manifest(&d)?.map(|m| (entry, d, m)))
    }

    /// A manifest by tag: fresh from the cache, revalidated, fetched cold, or stale.
    async fn by_tag(
        &self,
        from: Origin<'_>,
        tag: &str,
    ) -> Result<(Digest, StoredManifest, CacheResult), CacheError> {
        let rules = self.tag_rules(from, tag);
        if let Some((entry, d, m)) = self.cached_tag(from, tag)? {
            if rules.immutable || fresh(&entry, &rules) || self.offline {
                return Ok((d, m, CacheResult::Hit));
            }
            if let Some(b) = from.upstream.governor().at_reserve() {
                if within_max_stale(&entry, &rules) {
                    self.count_stale(STALE_RATE_BUDGET);
                    tracing::debug!(registry = %from.upstream.registry(), name = from.name, tag, remaining = b.remaining, "rate-limit budget at the reserve; serving cached tag without revalidation (stale)");
                    return Ok((d, m, CacheResult::Stale));
                }
            }
        }
        let registry = from.upstream.registry();
        let _guard = self
            .locks
            .lock(format!("{registry}/{}:{tag}", from.name))
            .await;
        let cached = self.cached_tag(from, tag)?;
        match cached {
            // Another request may have revalidated it (or fetched it, and an immutable tag's
            // first answer is kept) while this one waited for the lock.
            Some((entry, d, m)) if rules.immutable || fresh(&entry, &rules) => {
                Ok((d, m, CacheResult::Hit))
            }
            Some((entry, d, m)) if self.revalidate_timeout.is_zero() => {
                self.revalidate(from, tag, d, m, (&entry, &rules)).await
            }
            Some((entry, d, m)) => {
                // Twice the per-request bound: a request to an origin that does not answer
                // times out on its own first (and tells the upstream's circuit breaker), while
                // a trickling token or manifest body is cut here.
                let bounded = tokio::time::timeout(
                    self.revalidate_timeout * 2,
                    self.revalidate(from, tag, d.clone(), m.clone(), (&entry, &rules)),
                );
                match bounded.await {
                    Ok(answer) => answer,
                    Err(_) if !within_max_stale(&entry, &rules) => Err(too_stale(
                        from,
                        tag,
                        &entry,
                        UpstreamError::Timeout {
                            host: from.upstream.host(),
                            after: self.revalidate_timeout * 2,
                        },
                    )),
                    Err(_) => {
                        self.count_stale(0);
                        tracing::warn!(registry = %registry, name = from.name, tag, after = ?self.revalidate_timeout * 2, "revalidation took too long; serving cached tag (stale)");
                        Ok((d, m, CacheResult::Stale))
                    }
                }
            }
            None => {
                // Cold: one GET by tag (HEAD + GET would cost the same rate-limit unit and a
                // round trip).
                let (d, m) = self.fetch(from, tag, None, false).await?;
                self.record_tag(from, tag, &d, &m.media_type);
                Ok((d, m, CacheResult::Miss))
            }
        }
    }

    /// Asks upstream (HEAD, free of Docker Hub's rate limit) whether a cached tag still points at
    /// `cached`; fetches what it moved to; serves `cached` stale when the upstream is down.
    async fn revalidate(
        &self,
        from: Origin<'_>,
        tag: &str,
        cached: Digest,
        cached_m: StoredManifest,
        (entry, rules): (&TagEntry, &TagRules),
    ) -> Result<(Digest, StoredManifest, CacheResult), CacheError> {
        let (up, name) = (from.upstream, from.name);
        // The cached answer, stale, or the upstream's error when it is older than max_stale.
        let stale = |e: UpstreamError, cached: Digest, cached_m: StoredManifest| {
            if !within_max_stale(entry, rules) {
                return Err(too_stale(from, tag, entry, e));
            }
            self.count_stale(stale_cause(&e));
            tracing::warn!(registry = %up.registry(), name, tag, error = %e, "upstream unavailable; serving cached tag (stale)");
            Ok((cached, cached_m, CacheResult::Stale))
        };
        let path = format!("/v2/{name}/manifests/{tag}");
        let resp = match up
            .send_cached(Method::HEAD, name, &path, &accept_all())
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_outage() => return stale(e, cached, cached_m),
            Err(e) => return Err(e.into()),
        };
        if resp.status() != StatusCode::OK {
            let e = UpstreamError::from_status(&resp);
            if e.is_outage() {
                return stale(e, cached, cached_m);
            }
            if resp.status() == StatusCode::NOT_FOUND {
                let _ = self.store.remove_tag(up.registry(), name, tag);
            }
            return Err(e.into());
        }
        let upstream_digest = content_digest(resp.headers());
        drop(resp);
        if upstream_digest.as_ref() == Some(&cached) {
            self.record_tag(from, tag, &cached, &cached_m.media_type);
            return Ok((cached, cached_m, CacheResult::Hit));
        }
        if let Some(d) = &upstream_digest {
            if let Some(m) = self.store.read_manifest(d)? {
                self.record_tag(from, tag, d, &m.media_type);
                return Ok((d.clone(), m, CacheResult::Hit));
            }
        }
        // The tag moved to a manifest not cached (or upstream sent no digest): fetch it, by
        // digest when known (digests are immutable, so that answer can never be a surprise).
        let fetched = match &upstream_digest {
            Some(d) => self.fetch(from, &d.to_string(), Some(d), true).await,
            None => self.fetch(from, tag, None, true).await,
        };
        match fetched {
            Ok((d, m)) => {
                self.record_tag(from, tag, &d, &m.media_type);
                Ok((d, m, CacheResult::Miss))
            }
            Err(CacheError::Upstream(e)) if e.is_outage() => stale(e, cached, cached_m),
            Err(e) => Err(e),
        }
    }

    pub(super) fn count_stale(&self, cause: usize) {
        self.stale[cause].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stale answers so far, in [`STALE_CAUSES`] order.
    pub(super) fn stale_counts(&self) -> [u64; STALE_CAUSES.len()] {
        std::array::from_fn(|i| self.stale[i].load(std::sync::atomic::Ordering::Relaxed))
    }

    /// What the freshness policy of the request's registry says of `tag` of its repository
    /// (`""`: of the repository's listings), as it is now.
    pub(super) fn tag_rules(&self, from: Origin<'_>, tag: &str) -> TagRules {
        let p = self.policies.read().expect("policies lock");
        p.by_registry
            .get(from.upstream.registry())
            .unwrap_or(&p.default)
            .for_tag(from.name, tag)
    }

    /// Replaces the policies (a reload): requests from now on use them.
    pub(super) fn set_policies(
        &self,
        tag_ttl: Duration,
        by_registry: std::collections::BTreeMap<String, FreshnessPolicy>,
    ) {
        *self.policies.write().expect("policies lock") = Policies::new(tag_ttl, by_registry);
    }

    fn record_tag(&self, from: Origin<'_>, tag: &str, d: &Digest, media_type: &str) {
        let entry = TagEntry {
            digest: d.to_string(),
            media_type: media_type.to_string(),
            checked: unix_now(),
        };
        if let Err(e) = self
            .store
            .write_tag(from.upstream.registry(), from.name, tag, &entry)
        {
            tracing::warn!(name = from.name, tag, error = %e, "cannot record tag in the cache");
        }
    }

    /// GETs a manifest (`reference` = tag or digest string), verifies it against `expected`
    /// (or upstream's `Docker-Content-Digest`, or just hashes it for a tag), and stores it.
    /// `cached_waiting`: a cached answer is served if this fails (never a probe of a down
    /// upstream).
    ///
    /// Errors: the upstream's failure or error status; [`UpstreamError::Protocol`] for a
    /// manifest that does not hash to its digest, is not a JSON object or has no usable media
    /// type (never cached).
    async fn fetch(
        &self,
        from: Origin<'_>,
        reference: &str,
        expected: Option<&Digest>,
        cached_waiting: bool,
    ) -> Result<(Digest, StoredManifest), CacheError> {
        let name = from.name;
        let (bytes, header_digest, content_type) = download(
            from.upstream,
            name,
            reference,
            cached_waiting,
            self.max_manifest_size,
        )
        .await?;
        let bad = |m: String| CacheError::Upstream(UpstreamError::Protocol(m));
        let digest = match (expected, &header_digest) {
            (Some(e), _) => e.clone(),
            (None, Some(h)) => h.clone(),
            (None, None) => Hasher::digest_of(Algorithm::Sha256, &bytes),
        };
        let actual = Hasher::digest_of(digest.algorithm(), &bytes);
        if actual != digest {
            return Err(bad(format!(
                "manifest {name}:{reference} hashes to {actual}, not {digest}"
            )));
        }
        if let Some(h) = &header_digest {
            if h.algorithm() == digest.algorithm() && *h != digest {
                return Err(bad(format!(
                    "upstream says manifest {name}:{reference} is {h}, but its bytes hash to {digest}"
                )));
            }
        }
        let media_type = media_type_of(&bytes, content_type)
            .map_err(|why| bad(format!("manifest {name}:{reference} {why}")))?;
        if let Err(e) = self.store.write_manifest(&digest, &media_type, &bytes) {
            tracing::warn!(%digest, error = %e, "cannot store manifest; serving it uncached");
        }
        Ok((digest, StoredManifest { media_type, bytes }))
    }
}

/// Every registry's freshness policy, and the one for a registry without its own.
struct Policies {
    by_registry: std::collections::BTreeMap<String, FreshnessPolicy>,
    default: FreshnessPolicy,
}

impl Policies {
    fn new(
        tag_ttl: Duration,
        by_registry: std::collections::BTreeMap<String, FreshnessPolicy>,
    ) -> Policies {
        Policies {
            by_registry,
            default: FreshnessPolicy {
                global: crate::cache::policy::Freshness {
                    tag_ttl: Some(tag_ttl),
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }
}

/// Whether a tag's cached answer may be used without asking upstream (`tag_ttl` 0: never).
fn fresh(entry: &TagEntry, rules: &TagRules) -> bool {
    !rules.tag_ttl.is_zero() && entry.age() < rules.tag_ttl
}

/// Whether a cached tag is young enough to be served stale (`max_stale`, unbounded by default).
pub(super) fn within_max_stale(entry: &TagEntry, rules: &TagRules) -> bool {
    rules.max_stale.is_none_or(|m| entry.age() <= m)
}

/// The error for a tag that cannot be revalidated and is older than `max_stale`.
fn too_stale(from: Origin<'_>, tag: &str, entry: &TagEntry, e: UpstreamError) -> CacheError {
    tracing::warn!(registry = %from.upstream.registry(), name = from.name, tag, age_s = entry.age().as_secs(), error = %e, "upstream unavailable and the cached tag is older than max_stale; not serving it");
    CacheError::Upstream(e)
}

/// GETs a manifest: its bytes (at most `limit`), upstream's `Docker-Content-Digest` and
/// `Content-Type`.
async fn download(
    up: &Upstream,
    name: &str,
    reference: &str,
    cached_waiting: bool,
    limit: usize,
) -> Result<(bytes::Bytes, Option<Digest>, Option<String>), UpstreamError> {
    let path = format!("/v2/{name}/manifests/{reference}");
    let resp = if cached_waiting {
        up.send_cached(Method::GET, name, &path, &accept_all())
            .await?
    } else {
        up.send(Method::GET, name, &path, &accept_all()).await?
    };
    if resp.status() != StatusCode::OK {
        return Err(UpstreamError::from_status(&resp));
    }
    let header_digest = content_digest(resp.headers());
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = read_limited(resp.into_body(), limit).await.map_err(|e| {
        UpstreamError::Protocol(format!("reading manifest {name}:{reference}: {e}"))
    })?;
    Ok((bytes, header_digest, content_type))
}

/// Upstream's `Docker-Content-Digest`, when it is a valid digest.
fn content_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok())
}

/// The media type to store a manifest under: upstream's `Content-Type` when it is a manifest
/// type, else the JSON's `mediaType`.
///
/// Errors: why the bytes are no manifest: not JSON, not a JSON object (a captive portal's HTML,
/// a proxy's error page: an upstream fault, never cached), or no usable media type.
pub(crate) fn media_type_of(
    bytes: &[u8],
    content_type: Option<String>,
) -> Result<String, &'static str> {
    let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| "is not JSON")?;
    if !json.is_object() {
        return Err("is not a JSON object");
    }
    match content_type {
        Some(ct) if is_manifest_content_type(&ct) => Ok(ct),
        _ => json["mediaType"]
            .as_str()
            .filter(|t| is_storable_media_type(t) && is_manifest_content_type(t))
            .map(str::to_string)
            .ok_or("has no usable media type"),
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

/// Whether `ct` can be a manifest's media type: storable on one line, and a JSON type
/// (`application/…+json` or `application/json`), never `text/html` or `application/octet-stream`.
fn is_manifest_content_type(ct: &str) -> bool {
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    is_storable_media_type(ct)
        && base.starts_with("application/")
        && (base.ends_with("+json") || base == "application/json")
}

/// Async locks by key, removed when nobody holds or waits for them.
#[derive(Default)]
pub(super) struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub(super) struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub(super) async fn lock(&self, key: String) -> KeyedGuard<'_> {
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
