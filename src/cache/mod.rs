//! The cache: where a miss becomes a hit.
//!
//! The HTTP layer asks [`Cache`] once per request and gets one answer:
//! - [`Cache::blob`]: a blob by digest is either [`BlobLookup::Hit`] (committed, immutable, on
//!   disk) or [`BlobLookup::Filling`]: this request follows the one fill of that digest (and
//!   started it, if it is the leader). The race "committed while I was joining" is a loop in here.
//!   Either handle gives the response body with `.body(range, delivery)`.
//! - [`Cache::head_blob`]: a HEAD never fills: the cached length, a running fill's, or upstream's.
//! - [`Cache::manifest`]: a manifest by digest (immutable, fetched once) or by tag (trusted for
//!   `tag_ttl`, then revalidated with a HEAD, served stale when the upstream is down).
//!
//! The data path of a cold blob GET: `http::blobs` → [`Cache::blob`] → [`fill::Fills::join`]
//! (one fill per digest) → `fill::download` (upstream GET, resume) → `fill::writer` (temp file in
//! [`store`], hashed by [`hash`], committed by rename) — and back up only as the response body
//! (`fill::follow` streams the temp file, then the committed file, to each follower).
//!
//! # Layout
//! - [`store`]: the files (blobs, manifests, temp files, the commit protocol).
//! - [`index`]: the LRU index of committed objects (its own slab: ~100 bytes an object),
//!   reservations.
//! - [`scan`]: walking the directory (the startup index, `regcache verify`).
//! - [`tags`]: each tag's last known answer.
//! - [`manifests`]: manifest policy: by digest, by tag (TTL, HEAD revalidation, stale, the
//!   rate-limit reserve).
//! - [`policy`]: the freshness policy per registry and repository pattern (`tag_ttl`,
//!   `immutable_tags`, `max_stale`).
//! - [`hash`]: sha256 / sha512 streaming digests.
//! - [`eviction`]: the budget, the eviction plan, the evictor task.
//! - [`fill`]: fills and the streaming tee.
//! - [`serial`]: in-order chunk queues on the blocking pool (a fill's writer and hasher).

pub mod eviction;
mod fill;
pub mod hash;
pub mod index;
pub mod listings;
pub(crate) mod manifests;
pub mod policy;
pub(crate) mod scan;
mod serial;
pub mod store;
pub mod tags;

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::body::zero_copy::{Delivery, MmapBody};
use crate::body::{ChannelBody, ResponseBody};
use crate::reference::{Digest, Reference};
use crate::upstream::bandwidth::Bandwidth;
use crate::upstream::{Upstream, UpstreamError};

pub use fill::FILL_FAILURE_REASONS;
pub use fill::{FillError, FillProgress, FillStats};
pub use manifests::{ManifestAnswer, MAX_MANIFEST_SIZE as DEFAULT_MAX_MANIFEST_SIZE, STALE_CAUSES};

/// How a request was answered, for the access log and `/metrics`.
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
            CacheResult::None => "none",
        }
    }
}

/// Why the cache could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Nothing usable is cached and the upstream failed or answered an error status.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Reading regcache's own cache failed.
    #[error("reading the cache: {0}")]
    Disk(#[from] io::Error),
}

/// Where a miss is filled from: the registry's upstream, and the repository the request named
/// (a blob is the same bytes in every repository; upstream wants a repository to authorize).
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    /// The upstream of the registry the request selected.
    pub upstream: &'a Arc<Upstream>,
    /// The repository name, canonical (`library/alpine`), validated.
    pub name: &'a str,
}

/// How the cache behaves (from the configuration).
#[derive(Clone, Default)]
pub struct CacheOptions {
    /// The disk budget (which blobs are too large to cache; eviction).
    pub budget: eviction::Budget,
    /// A fill receiving nothing for this long is dropped and resumed (default 60 s when zero).
    pub idle_timeout: Duration,
    /// Shared cap on upstream bytes per second, all fills together.
    pub bandwidth: Option<u64>,
    /// A fill slower than this many bytes per second over an `idle_timeout` window is resumed
    /// (0: no floor).
    pub min_fill_rate: u64,
    /// How long a tag's answer is trusted before it is revalidated (zero: always revalidate),
    /// for a registry without a policy in `policies`.
    pub tag_ttl: Duration,
    /// Each registry's freshness policy (tag TTLs, immutable tags, `max_stale`), by name.
    pub policies: std::collections::BTreeMap<String, policy::FreshnessPolicy>,
    /// Serve only what is cached; never revalidate.
    pub offline: bool,
    /// Largest manifest accepted from upstream, in bytes (0: 4 MiB, distribution's limit).
    pub max_manifest_size: usize,
    /// Bound on each upstream request; a whole tag revalidation (token fetch, HEAD, fetch of a
    /// moved tag) while a cached answer waits gets twice this, then the cached answer is
    /// served stale.
    pub revalidate_timeout: Duration,
}

/// The cache of a mirror: the store, the fills in progress, the manifest policy and, when
/// serving, the background index rebuild and the evictor (both stopped when it is dropped).
pub struct Cache {
    /// The files and their index.
    store: store::Store,
    /// Blob fills in progress, one per digest (shared by all registries: same digest, same bytes).
    fills: Arc<fill::Fills>,
    /// Manifests by digest and by tag.
    manifests: manifests::Manifests,
    /// Keeps the cache within its budget; `None` when unbounded or not serving.
    evictor: Option<eviction::Evictor>,
    /// The startup scan that loads the index (serving starts before it ends).
    rebuild: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Cache {
    fn drop(&mut self) {
        if let Some(t) = &self.rebuild {
            t.abort();
        }
    }
}

/// What [`Cache::blob`] found.
pub enum BlobLookup {
    /// Committed and immutable.
    Hit(Committed),
    /// Not committed yet: this request follows the one fill of the digest (started by this
    /// request if it is the leader).
    Filling(Follower),
}

/// A committed blob, open for reading (it stays readable if evicted meanwhile).
pub struct Committed {
    /// The committed file.
    file: Arc<File>,
    /// Its length in bytes.
    len: u64,
}

impl Committed {
    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A body of bytes `range` (within `0..len`) of the blob.
    pub fn body(self, range: Range<u64>, delivery: Delivery) -> ResponseBody {
        MmapBody::new(self.file, range.start, range.end, delivery).boxed_unsync()
    }
}

/// One client's place in a fill.
pub struct Follower {
    /// The fill.
    fill: Arc<fill::Fill>,
    /// This follower's registration (lets a pass-through fill wait for it).
    reader: fill::Reader,
    /// Whether this request started the fill.
    leader: bool,
}

impl Follower {
    /// [`CacheResult::Miss`] for the leader, [`CacheResult::Coalesced`] for the others.
    pub fn outcome(&self) -> CacheResult {
        if self.leader {
            CacheResult::Miss
        } else {
            CacheResult::Coalesced
        }
    }

    /// Waits for upstream's response headers: the blob's length in bytes, when upstream gave a
    /// `Content-Length` (`None` otherwise).
    ///
    /// Errors: the fill failed before sending anything (upstream error status, unreachable...).
    pub async fn len(&self) -> Result<Option<u64>, Arc<fill::FillError>> {
        self.fill.len().await
    }

    /// Waits until the whole blob has arrived and verified against its digest, without holding
    /// the fill back meanwhile: a range of an in-progress fill is answered only with verified
    /// bytes (a range that ends before the last byte would otherwise go out unverified).
    ///
    /// Errors: the fill failed (the bytes did not verify, the download broke off...).
    pub async fn verified(&self) -> Result<(), Arc<fill::FillError>> {
        self.reader.advance(u64::MAX);
        self.fill.verified().await
    }

    /// Whether the blob is not being cached (too large, disk full): its bytes pass through a
    /// window that only keeps up with readers that read now.
    pub fn is_pass_through(&self) -> bool {
        self.fill.is_pass_through()
    }

    /// The body: bytes `range` of the blob (`None`: all of it, length possibly unknown),
    /// following the fill at its pace. A fill that fails ends the body short (an error frame).
    pub fn body(self, range: Option<Range<u64>>, delivery: Delivery) -> ResponseBody {
        let (start, end) = match &range {
            Some(r) => (r.start, Some(r.end)),
            None => (0, None),
        };
        let len = match end {
            Some(e) => Some(e - start),
            None => self.fill.known_len(),
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(fill::follow::follow(
            self.fill,
            self.reader,
            start,
            end,
            delivery,
            tx,
        ));
        ChannelBody::new(rx, len).boxed_unsync()
    }
}

/// What the cache's readiness checks found (`/readyz`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheHealth {
    /// The index has been loaded from disk (eviction and usage figures are complete).
    pub index_loaded: bool,
    /// Why a fill could not write now (naming the cache's `tmp/` directory), or `None`.
    pub write_error: Option<String>,
    /// Bytes available on the cache's filesystem, when known.
    pub free_bytes: Option<u64>,
    /// `min_free` in bytes, when configured.
    pub min_free_bytes: Option<u64>,
    /// Why the cache is not ready, one sentence each (empty when ready).
    pub problems: Vec<String>,
}

impl CacheHealth {
    /// Index loaded, writable, and free space not below `min_free`.
    pub fn ready(&self) -> bool {
        let space = match (self.free_bytes, self.min_free_bytes) {
            (Some(free), Some(min)) => free >= min,
            _ => true,
        };
        self.index_loaded && self.write_error.is_none() && space
    }
}

/// What [`Cache::head_blob`] found.
pub struct BlobHead {
    /// The blob's length in bytes, when known.
    pub len: Option<u64>,
    /// Hit (committed), coalesced (a fill runs) or pass (asked upstream).
    pub result: CacheResult,
}

impl Cache {
    /// Opens the cache at `dir` for serving: prepares the directory (removing leftover temp
    /// files), loads the index in the background (serving starts at once) and starts the
    /// evictor. Must be called inside a tokio runtime.
    ///
    /// Errors: the I/O error if the cache directory cannot be prepared.
    pub fn open(dir: &Path, opts: CacheOptions) -> io::Result<Cache> {
        let (store, temp_removed) = store::Store::open_unindexed(dir)?;
        if temp_removed > 0 {
            tracing::info!(
                temp_removed,
                "removed leftover temp files of interrupted fills"
            );
        }
        let s = store.clone();
        let rebuild = tokio::task::spawn_blocking(move || match s.rebuild_index() {
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
        let mut cache = Cache::new(store, opts);
        cache.evictor = eviction::Evictor::spawn(&cache.store, cache.fills.budget());
        cache.rebuild = Some(rebuild);
        Ok(cache)
    }

    /// Bytes available on the cache's filesystem, and `min_free` in bytes, when known
    /// (blocking: one `statvfs`).
    pub fn space(&self) -> (Option<u64>, Option<u64>) {
        let fs = eviction::fs_space(self.store.root());
        let min_free = self.fills.budget().min_free.zip(fs);
        (
            fs.map(|f| f.available),
            min_free.map(|(m, f)| m.bytes(f.total)),
        )
    }

    /// Checks what serving needs of the cache (blocking: writes and removes a temp file, reads
    /// the filesystem's free space).
    pub fn health(&self) -> CacheHealth {
        let root = self.store.root();
        let (free_bytes, min_free_bytes) = self.space();
        let write_error = self
            .store
            .probe_writable()
            .err()
            .map(|e| format!("cannot write in {}: {e}", root.join("tmp").display()));
        let mut h = CacheHealth {
            index_loaded: self.store.index().is_indexed(),
            write_error,
            free_bytes,
            min_free_bytes,
            problems: Vec::new(),
        };
        if !h.index_loaded {
            h.problems
                .push("the cache index is still being read from disk".to_owned());
        }
        if let Some(e) = &h.write_error {
            h.problems.push(e.clone());
        }
        if let (Some(free), Some(min)) = (h.free_bytes, h.min_free_bytes) {
            if free < min {
                h.problems.push(format!(
                    "free space {} is below min_free {}: the evictor removes cached content to make room, and gives up only when the cache is empty",
                    crate::admin::human(free),
                    crate::admin::human(min)
                ));
            }
        }
        h
    }

    /// Opens a cache that a running mirror may be using too (`regcache prefetch`): `tmp/` is
    /// left alone, the index is loaded at once, no evictor runs.
    ///
    /// Errors: the I/O error if the directories cannot be created or read.
    pub fn open_shared(dir: &Path, opts: CacheOptions) -> io::Result<Cache> {
        let (store, _) = store::Store::open_shared(dir)?;
        Ok(Cache::new(store, opts))
    }

    /// A cache over an opened store, with no background tasks.
    fn new(store: store::Store, opts: CacheOptions) -> Cache {
        let fills = fill::Fills::new(fill::FillSettings {
            budget: opts.budget,
            idle_timeout: opts.idle_timeout,
            bandwidth: opts.bandwidth.map(|b| Arc::new(Bandwidth::new(b))),
            min_rate: opts.min_fill_rate,
        });
        Cache {
            manifests: manifests::Manifests::new(store.clone(), &opts),
            store,
            fills: Arc::new(fills),
            evictor: None,
            rebuild: None,
        }
    }

    /// The store (files and index).
    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// A blob by digest: committed, or followed while its one fill runs (started here if none
    /// does). A blob committed while this call joined is answered as a hit.
    ///
    /// Errors: I/O errors reading the cache (not "not found").
    pub fn blob(&self, digest: &Digest, from: Origin<'_>) -> io::Result<BlobLookup> {
        loop {
            if let Some(c) = self.cached_blob(digest)? {
                return Ok(BlobLookup::Hit(c));
            }
            match self
                .fills
                .join(&self.store, from.upstream, from.name, digest)
            {
                fill::Joined::Fill {
                    fill,
                    reader,
                    leader,
                } => {
                    return Ok(BlobLookup::Filling(Follower {
                        fill,
                        reader,
                        leader,
                    }))
                }
                // Committed between the lookup and the join: look it up again.
                fill::Joined::Hit => continue,
            }
        }
    }

    /// A committed blob, or `None` (never fills). A hit moves it to the front of the LRU order.
    ///
    /// Errors: I/O errors reading the cache (not "not found").
    pub fn cached_blob(&self, digest: &Digest) -> io::Result<Option<Committed>> {
        Ok(self.store.open_blob(digest)?.map(|(file, len)| Committed {
            file: Arc::new(file),
            len,
        }))
    }

    /// A HEAD of a blob: the cached length, a running fill's, or upstream's answer to a HEAD.
    /// No fill is started.
    ///
    /// Errors: upstream's failure or error status; cache read errors.
    pub async fn head_blob(
        &self,
        digest: &Digest,
        from: Origin<'_>,
    ) -> Result<BlobHead, CacheError> {
        if let Some(c) = self.cached_blob(digest)? {
            return Ok(BlobHead {
                len: Some(c.len()),
                result: CacheResult::Hit,
            });
        }
        if let Some(len) = self.fills.get(digest).and_then(|f| f.known_len()) {
            return Ok(BlobHead {
                len: Some(len),
                result: CacheResult::Coalesced,
            });
        }
        let path = format!("/v2/{}/blobs/{digest}", from.name);
        let resp = from
            .upstream
            .send(
                http::Method::HEAD,
                from.name,
                &path,
                &http::HeaderMap::new(),
            )
            .await?;
        if resp.status() != http::StatusCode::OK {
            return Err(UpstreamError::from_status(&resp).into());
        }
        let len = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(BlobHead {
            len,
            result: CacheResult::Pass,
        })
    }

    /// Bytes `range` (within `0..total`) of a blob regcache is not caching (larger than
    /// `max_size`, disk full), asked of upstream as a range: fetching it whole to answer a range
    /// would cost the whole blob per request. These bytes cannot be verified (a digest covers
    /// the whole blob).
    ///
    /// Errors: upstream's failure or error status; [`UpstreamError::Protocol`] when its answer
    /// is not that range (no 206, another `Content-Range`).
    pub async fn uncached_range(
        &self,
        digest: &Digest,
        from: Origin<'_>,
        range: Range<u64>,
        total: u64,
    ) -> Result<ResponseBody, CacheError> {
        let path = format!("/v2/{}/blobs/{digest}", from.name);
        let mut h = http::HeaderMap::new();
        let want = format!("bytes {}-{}/{total}", range.start, range.end - 1);
        h.insert(
            http::header::RANGE,
            http::HeaderValue::from_str(&format!("bytes={}-{}", range.start, range.end - 1))
                .expect("ascii"),
        );
        let resp = from
            .upstream
            .send(http::Method::GET, from.name, &path, &h)
            .await?;
        if resp.status() != http::StatusCode::PARTIAL_CONTENT {
            if resp.status().is_success() {
                return Err(UpstreamError::Protocol(format!(
                    "upstream answered {} to a Range request for {digest}",
                    resp.status()
                ))
                .into());
            }
            return Err(UpstreamError::from_status(&resp).into());
        }
        let got = resp
            .headers()
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if got.trim() != want {
            return Err(UpstreamError::Protocol(format!(
                "upstream answered Content-Range {got:?} for {digest}, not {want:?}"
            ))
            .into());
        }
        let idle = self.fills.idle_timeout();
        Ok(crate::body::IdleTimeout::new(resp.into_body(), idle).boxed_unsync())
    }

    /// A manifest by digest or tag, with how it was answered. See [`manifests`].
    ///
    /// Errors: nothing usable is cached and upstream failed, or a cache read error.
    pub async fn manifest(
        &self,
        from: Origin<'_>,
        reference: &Reference,
    ) -> Result<ManifestAnswer, CacheError> {
        self.manifests.get(from, reference).await
    }

    /// Replaces the freshness policies (`tag_ttl` for a registry without one, and each
    /// registry's): a reload. Requests from now on use them.
    pub fn set_policies(
        &self,
        tag_ttl: Duration,
        by_registry: std::collections::BTreeMap<String, policy::FreshnessPolicy>,
    ) {
        self.manifests.set_policies(tag_ttl, by_registry)
    }

    /// Whether `reference` can be answered from the cache without spending a counted upstream
    /// request: a manifest by digest that is stored, or a tag whose last answer is stored
    /// (fresh, immutable, or servable stale). Reads the tag entry; never asks upstream.
    pub fn has_manifest(&self, from: Origin<'_>, reference: &Reference) -> bool {
        match reference {
            Reference::Digest(d) => matches!(self.store.read_manifest(d), Ok(Some(_))),
            Reference::Tag(t) => matches!(self.manifests.cached_tag(from, t), Ok(Some(_))),
        }
    }

    /// A tag list page or a referrers answer (see [`listings`]): cached, revalidated after
    /// `tag_ttl`, served stale while the upstream is down.
    ///
    /// Errors: nothing usable cached and the upstream failed or answered an error status.
    pub async fn listing(
        &self,
        from: Origin<'_>,
        kind: &listings::ListingKind,
    ) -> Result<listings::Listing, CacheError> {
        self.manifests.listing(from, kind).await
    }

    /// Waits until no fill is in progress (draining at shutdown, so fills that have sent their
    /// bytes also get committed).
    pub async fn wait_idle(&self) {
        self.fills.wait_idle().await
    }

    /// Number of blob fills in progress (pass-through fills excluded).
    pub fn fills_in_progress(&self) -> usize {
        self.fills.len()
    }

    /// The fills in progress, oldest first (for `regcache status`).
    pub fn fill_progress(&self) -> Vec<FillProgress> {
        self.fills.progress()
    }

    /// Cached tags served stale so far, in [`STALE_CAUSES`] order.
    pub fn stale_counts(&self) -> [u64; STALE_CAUSES.len()] {
        self.manifests.stale_counts()
    }

    /// The fill counters.
    pub fn fill_stats(&self) -> fill::FillStats {
        self.fills.stats()
    }

    /// Objects removed and bytes freed by eviction since the start.
    pub fn evicted(&self) -> (u64, u64) {
        self.evictor.as_ref().map_or((0, 0), |e| e.evicted())
    }
}
