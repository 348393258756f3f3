//! The content-addressed store on disk, and its in-memory index (sizes and LRU order).
//!
//! ```text
//! <cache_dir>/blobs/sha256/ab/<hex>.<len>        blob bytes exactly as upstream sent them; the
//!                                                 name carries the length, so a truncated file
//!                                                 is recognised without hashing it
//! <cache_dir>/manifests/sha256/ab/<hex>          "<media type>\n" then the manifest's exact bytes
//!                                                 (verified against the digest on every read)
//! <cache_dir>/tags/<registry>/<name>/_tags/<tag> JSON {digest, media_type, checked}
//! <cache_dir>/tmp/                                in-progress fills (removed at startup)
//! ```
//! Names and tags reach this module only after [`crate::reference`] validated them, and the
//! grammars exclude `..`, empty components and `/` in tags; `_tags` cannot collide with a name
//! component (components start with `[a-z0-9]`).
//!
//! Writes go to a temp file in `tmp/` (same filesystem), hashed while written, `sync_data`d,
//! renamed onto the content address, then the directory is fsynced. A committed file is never
//! modified; removal (eviction, healing) only unlinks, so open readers and mmaps stay valid.
//!
//! The index is rebuilt from the directory at every start (there is no state file that could
//! disagree with the disk): files are ordered by mtime, and hits touch the mtime (at most once
//! per [`TOUCH_INTERVAL`]) so recency survives restarts.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::reference::{Algorithm, Digest};

/// Longest media type stored with a manifest, in bytes.
const MAX_MEDIA_TYPE_LEN: usize = 255;
/// A hit updates the file's mtime only when the last update is older than this, in seconds.
pub const TOUCH_INTERVAL: u64 = 600;

/// A streaming hash over sha256 or sha512, matching a digest's algorithm.
#[derive(Clone)]
pub enum Hasher {
    /// For `sha256:` digests.
    Sha256(sha2::Sha256),
    /// For `sha512:` digests.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_raw(Algorithm::Sha256, &h.finalize()),
            Hasher::Sha512(h) => Digest::from_raw(Algorithm::Sha512, &h.finalize()),
        }
    }

    /// The digest of `data` under `algorithm`.
    pub fn digest_of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }
}

/// A manifest read from the store: exact bytes and the media type upstream gave it.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// `Content-Type` to answer with, e.g. `application/vnd.oci.image.index.v1+json`.
    pub media_type: String,
    /// The exact bytes (they hash to the digest).
    pub bytes: Bytes,
}

/// A tag's last known answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TagEntry {
    /// Digest the tag pointed to, `sha256:<64 hex>`.
    pub digest: String,
    /// Media type of that manifest.
    pub media_type: String,
    /// When upstream last confirmed it, seconds since the Unix epoch.
    pub checked: u64,
}

impl TagEntry {
    /// Time since upstream last confirmed this answer (zero if the clock went backwards).
    pub fn age(&self) -> Duration {
        Duration::from_secs(unix_now().saturating_sub(self.checked))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A cached object: a blob or a manifest, by digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    /// `blobs/<alg>/<hh>/<hex>.<len>`.
    Blob(Digest),
    /// `manifests/<alg>/<hh>/<hex>`.
    Manifest(Digest),
}

impl ObjectKey {
    /// The digest.
    pub fn digest(&self) -> &Digest {
        match self {
            ObjectKey::Blob(d) | ObjectKey::Manifest(d) => d,
        }
    }
}

/// What the index knows of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Content length in bytes (for a blob, also in its file name).
    pub len: u64,
    /// Space it takes on disk, in bytes (allocated blocks × 512).
    pub disk: u64,
    /// Last mtime written (seconds since the epoch): last use, coarsely.
    pub used: u64,
}

/// The LRU order and sizes of every committed object.
pub struct Index {
    /// Least recently used first. Unbounded: the budget is in bytes, enforced by eviction.
    lru: LruCache<ObjectKey, Entry>,
    /// Sum of `disk` over all entries, in bytes.
    total: u64,
    /// Bytes reserved by fills in progress (counted against the budget before they commit).
    reserved: u64,
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index {
            lru: LruCache::unbounded(),
            total: 0,
            reserved: 0,
        }
    }

    /// Adds (or replaces) an object as the most recently used.
    pub fn insert(&mut self, key: ObjectKey, e: Entry) {
        if let Some(old) = self.lru.put(key, e) {
            self.total -= old.disk;
        }
        self.total += e.disk;
    }

    /// Forgets an object.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Entry> {
        let e = self.lru.pop(key)?;
        self.total -= e.disk;
        Some(e)
    }

    /// A hit: the object's entry, now the most recently used.
    pub fn touch(&mut self, key: &ObjectKey) -> Option<Entry> {
        self.lru.get(key).copied()
    }

    /// Removes and returns the least recently used object.
    pub fn pop_lru(&mut self) -> Option<(ObjectKey, Entry)> {
        let (k, e) = self.lru.pop_lru()?;
        self.total -= e.disk;
        Some((k, e))
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Bytes on disk taken by all objects.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// A snapshot of the index's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes on disk taken by committed objects.
    pub total: u64,
    /// Bytes reserved by fills in progress.
    pub reserved: u64,
    /// Number of objects.
    pub objects: usize,
}

/// Why a fill could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The bytes hash to another digest; nothing was stored.
    #[error("content hashes to {actual}, not {expected}")]
    DigestMismatch { expected: String, actual: String },
    /// A disk error while syncing or renaming.
    #[error("cannot commit to the cache: {0}")]
    Io(#[from] io::Error),
}

/// A temp file receiving a fill. Dropping it without [`FillFile::commit`] deletes the temp
/// file: nothing is committed. Hashing is the caller's (it runs beside the writes).
pub struct FillFile {
    /// The temp file in `tmp/`, deleted on drop.
    file: tempfile::NamedTempFile,
    /// Bytes written so far.
    written: u64,
    /// The digest it must hash to.
    digest: Digest,
    /// The store it commits into.
    store: Store,
}

impl FillFile {
    /// Appends `data`. Errors: the write error (ENOSPC, EIO...); then `data` is not counted.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.as_file_mut().write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Reserves `len` bytes of disk for the file without changing its size (`fallocate(2)`
    /// with `FALLOC_FL_KEEP_SIZE`): fewer allocation stalls while writing, and a disk that
    /// cannot hold the blob says so before any byte is written.
    ///
    /// Errors: ENOSPC and other allocation errors; "not supported" counts as success.
    pub fn preallocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(
            self.file.as_file(),
            rustix::fs::FallocateFlags::KEEP_SIZE,
            0,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A second, read-only handle on the temp file, for clients following the fill. It stays
    /// valid after the rename (and after deletion, if the fill fails).
    pub fn reader(&self) -> io::Result<File> {
        File::open(self.file.path())
    }

    /// Gives up on caching: deletes the temp file and returns the count of bytes written.
    pub fn abandon(self) -> u64 {
        self.written
    }

    /// Checks `actual` (the digest of everything written) against the fill's digest, syncs,
    /// renames into place and records the blob in the index.
    ///
    /// Errors: [`CommitError::DigestMismatch`] (temp file deleted, nothing stored) or an I/O error.
    pub fn commit(self, actual: &Digest) -> Result<u64, CommitError> {
        if *actual != self.digest {
            return Err(CommitError::DigestMismatch {
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        self.file.as_file().sync_data()?;
        let dest = self.store.blob_path(&self.digest, self.written);
        let parent = dest.parent().expect("content paths have a parent");
        fs::create_dir_all(parent)?;
        let file = self.file.persist(&dest).map_err(|e| e.error)?;
        sync_dir(parent)?;
        let meta = file.metadata()?;
        self.store
            .index_insert(ObjectKey::Blob(self.digest), &meta, self.written);
        Ok(self.written)
    }
}

/// The on-disk cache rooted at `cache_dir`. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// The cache directory.
    root: PathBuf,
    /// Sizes and LRU order of committed objects. Held only for in-memory updates.
    index: Mutex<Index>,
    /// Whether the index has been loaded from disk.
    indexed: std::sync::atomic::AtomicBool,
    /// Recently read manifests, verified (they never change for a digest).
    manifests: Mutex<ManifestMemory>,
    /// Objects and bytes removed by eviction (for `/metrics`).
    evicted: (std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64),
    /// Called after each commit (wakes the evictor when over budget).
    on_commit: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish()
    }
}

/// What [`Store::open`] found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Objects indexed.
    pub objects: usize,
    /// Bytes on disk they take.
    pub bytes: u64,
    /// Damaged blobs found (size disagreeing with the name); removed by [`Store::open`].
    pub healed: usize,
    /// Leftover temp files removed.
    pub temp_removed: usize,
}

impl Store {
    /// Opens (creating if needed) the cache at `root`: removes leftover temp files from
    /// interrupted fills, removes blobs whose size disagrees with their name, and rebuilds the
    /// index ordered by mtime.
    ///
    /// Errors: the I/O error if the directories cannot be created or read.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<(Store, ScanReport)> {
        let (store, temp_removed) = Store::open_unindexed(root)?;
        let mut report = store.rebuild_index()?;
        report.temp_removed = temp_removed;
        Ok((store, report))
    }

    /// Prepares the cache directory (creating it, removing leftover temp files) and returns a
    /// store whose index is still empty, plus the number of temp files removed. Serving can
    /// start at once: a blob the index does not know yet is looked up on disk. Call
    /// [`Store::rebuild_index`] (off the request path) to load the index; eviction waits for it.
    ///
    /// Errors: the I/O error if the directories cannot be created or `tmp/` cleaned.
    pub fn open_unindexed(root: impl Into<PathBuf>) -> io::Result<(Store, usize)> {
        let root = root.into();
        for d in ["blobs", "manifests", "tags"] {
            fs::create_dir_all(root.join(d))?;
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        // Leftovers of interrupted fills go. A temp file still locked belongs to a live process
        // (a `regcache prefetch` working on this cache) and stays.
        let mut removed = 0;
        for ent in fs::read_dir(&tmp)? {
            let path = ent?.path();
            let unlocked = File::open(&path)
                .map(|f| f.try_lock().is_ok())
                .unwrap_or(true);
            if unlocked && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok((Store::empty(root), removed))
    }

    /// Scans the directory (removing blobs whose size disagrees with their name) and loads the
    /// index, ordered by mtime. Objects indexed meanwhile by requests stay, as the most recently
    /// used. Blocking: run it on a blocking thread.
    ///
    /// Errors: I/O errors reading the directory.
    pub fn rebuild_index(&self) -> io::Result<ScanReport> {
        let mut report = ScanReport::default();
        let mut found = scan_objects(&self.inner.root, true, &mut report)?;
        found.sort_by_key(|(mtime, _, _)| *mtime);
        let mut fresh = Index::new();
        for (_, key, entry) in found {
            fresh.insert(key, entry);
        }
        report.objects = fresh.lru.len();
        report.bytes = fresh.total;
        {
            let mut ix = self.inner.index.lock().expect("index lock");
            let live = std::mem::replace(&mut *ix, fresh);
            ix.reserved = live.reserved;
            for (k, e) in live.lru.iter().rev() {
                ix.insert(k.clone(), *e);
            }
        }
        self.inner
            .indexed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.committed();
        Ok(report)
    }

    /// Whether the index has been loaded (eviction waits for it).
    pub fn is_indexed(&self) -> bool {
        self.inner.indexed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn empty(root: PathBuf) -> Store {
        Store {
            inner: Arc::new(StoreInner {
                root,
                index: Mutex::new(Index::new()),
                indexed: std::sync::atomic::AtomicBool::new(false),
                manifests: Mutex::new(ManifestMemory::default()),
                evicted: Default::default(),
                on_commit: Mutex::new(None),
            }),
        }
    }

    /// Opens (creating if needed) a cache that a running mirror may be using too (for
    /// `regcache prefetch`): `tmp/` is left alone, the index is loaded at once.
    ///
    /// Errors: the I/O error if the directories cannot be created or read.
    pub fn open_shared(root: impl Into<PathBuf>) -> io::Result<(Store, ScanReport)> {
        let root = root.into();
        for d in ["blobs", "manifests", "tags", "tmp"] {
            fs::create_dir_all(root.join(d))?;
        }
        let store = Store::empty(root);
        let report = store.rebuild_index()?;
        Ok((store, report))
    }

    /// Opens an existing cache for operator commands, which may run beside a serving mirror:
    /// nothing is cleaned or healed (temp files may be fills in progress).
    ///
    /// Errors: `NotFound` when `root` holds no cache (`blobs/` missing); I/O errors reading it.
    pub fn attach(root: impl Into<PathBuf>) -> io::Result<(Store, ScanReport)> {
        let root = root.into();
        if !root.join("blobs").is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is not a regcache cache directory (no blobs/ in it)",
                    root.display()
                ),
            ));
        }
        Store::build(root, false, ScanReport::default())
    }

    fn build(root: PathBuf, heal: bool, mut report: ScanReport) -> io::Result<(Store, ScanReport)> {
        let mut found = scan_objects(&root, heal, &mut report)?;
        found.sort_by_key(|(mtime, _, _)| *mtime);
        let store = Store::empty(root);
        {
            let mut ix = store.inner.index.lock().expect("index lock");
            for (_, key, entry) in found {
                ix.insert(key, entry);
            }
            report.objects = ix.lru.len();
            report.bytes = ix.total;
        }
        store
            .inner
            .indexed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok((store, report))
    }

    /// Every indexed object, least recently used first.
    pub fn objects(&self) -> Vec<(ObjectKey, Entry)> {
        let ix = self.inner.index.lock().expect("index lock");
        ix.lru.iter().rev().map(|(k, e)| (k.clone(), *e)).collect()
    }

    /// The path of an indexed object's file.
    pub fn object_path(&self, key: &ObjectKey, entry: &Entry) -> PathBuf {
        match key {
            ObjectKey::Blob(d) => self.blob_path(d, entry.len),
            ObjectKey::Manifest(d) => self.content_path("manifests", d),
        }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Registers a callback run after every commit (the evictor's wake-up).
    pub fn set_on_commit(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.inner.on_commit.lock().expect("store lock") = Some(Box::new(f));
    }

    /// Current totals.
    pub fn usage(&self) -> Usage {
        let ix = self.inner.index.lock().expect("index lock");
        Usage {
            total: ix.total,
            reserved: ix.reserved,
            objects: ix.lru.len(),
        }
    }

    /// Records an eviction pass: objects removed and bytes freed.
    pub fn record_evicted(&self, objects: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.inner.evicted.0.fetch_add(objects, Relaxed);
        self.inner.evicted.1.fetch_add(bytes, Relaxed);
    }

    /// Objects removed and bytes freed by eviction since the start.
    pub fn evictions(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.evicted.0.load(Relaxed),
            self.inner.evicted.1.load(Relaxed),
        )
    }

    /// Counts `bytes` against the budget until [`Store::unreserve`] (a fill in progress).
    pub fn reserve(&self, bytes: u64) {
        self.inner.index.lock().expect("index lock").reserved += bytes;
        self.committed();
    }

    /// Releases a reservation.
    pub fn unreserve(&self, bytes: u64) {
        let mut ix = self.inner.index.lock().expect("index lock");
        ix.reserved = ix.reserved.saturating_sub(bytes);
    }

    fn committed(&self) {
        if let Some(f) = &*self.inner.on_commit.lock().expect("store lock") {
            f();
        }
    }

    fn index_insert(&self, key: ObjectKey, meta: &fs::Metadata, len: u64) {
        let entry = Entry {
            len,
            disk: disk_bytes(meta),
            used: unix_now(),
        };
        self.inner
            .index
            .lock()
            .expect("index lock")
            .insert(key, entry);
        self.committed();
    }

    /// The object's entry, now the most recently used.
    fn index_touch(&self, key: &ObjectKey) -> Option<Entry> {
        self.inner.index.lock().expect("index lock").touch(key)
    }

    fn index_remove(&self, key: &ObjectKey) {
        self.inner.index.lock().expect("index lock").remove(key);
    }

    /// Removes and returns least recently used objects until `bytes` of disk space are covered
    /// (or the index is empty). The files are not touched; the caller unlinks them.
    pub fn pop_lru(&self, bytes: u64) -> Vec<(ObjectKey, Entry)> {
        let mut ix = self.inner.index.lock().expect("index lock");
        let mut freed = 0;
        let mut out = Vec::new();
        while freed < bytes {
            let Some((k, e)) = ix.lru.pop_lru() else {
                break;
            };
            ix.total -= e.disk;
            freed += e.disk;
            out.push((k, e));
        }
        out
    }

    /// Unlinks an object's file (missing is fine). Open readers keep their bytes.
    pub fn unlink(&self, key: &ObjectKey, entry: &Entry) -> io::Result<()> {
        if let ObjectKey::Manifest(d) = key {
            self.inner
                .manifests
                .lock()
                .expect("manifest memory")
                .remove(d);
        }
        remove_if_exists(&self.object_path(key, entry))
    }

    fn content_path(&self, kind: &str, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.inner
            .root
            .join(kind)
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Path of a committed blob of `len` bytes.
    pub fn blob_path(&self, d: &Digest, len: u64) -> PathBuf {
        let mut p = self.content_path("blobs", d).into_os_string();
        p.push(format!(".{len}"));
        PathBuf::from(p)
    }

    /// Opens a committed blob: the file and its length in bytes, or `None` when not cached.
    /// A hit moves the blob to the front of the LRU order. A file that is missing or whose size
    /// disagrees with its name is dropped (healed) and reported as not cached.
    ///
    /// Errors: I/O errors other than "not found".
    pub fn open_blob(&self, d: &Digest) -> io::Result<Option<(File, u64)>> {
        let key = ObjectKey::Blob(d.clone());
        let known = self.index_touch(&key);
        let len = match known {
            Some(e) => e.len,
            // Not indexed: another process (prefetch) may have committed it.
            None => match self.probe_blob(d)? {
                Some(len) => len,
                None => return Ok(None),
            },
        };
        let path = self.blob_path(d, len);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index_remove(&key);
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                // Unreadable (an operator's chmod, a broken mount): a miss, re-fetched and
                // committed over it, rather than an error for every pull.
                tracing::warn!(digest = %d, error = %e, "cached blob is unreadable; treating it as a miss");
                self.index_remove(&key);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if meta.len() != len {
            tracing::warn!(digest = %d, expected = len, actual = meta.len(), "cached blob has the wrong size; removing it");
            self.index_remove(&key);
            remove_if_exists(&path)?;
            return Ok(None);
        }
        match known {
            None => self.index_insert(key, &meta, len),
            Some(e) => self.touch(&key, &file, e),
        }
        Ok(Some((file, len)))
    }

    /// Updates the mtime of a used object at most once per [`TOUCH_INTERVAL`].
    fn touch(&self, key: &ObjectKey, file: &File, e: Entry) {
        let now = unix_now();
        if now.saturating_sub(e.used) < TOUCH_INTERVAL {
            return;
        }
        if file.set_modified(SystemTime::now()).is_ok() {
            if let Some(x) = self
                .inner
                .index
                .lock()
                .expect("index lock")
                .lru
                .peek_mut(key)
            {
                x.used = now;
            }
        }
    }

    /// [`Store::touch`] for an object not open yet: the file is opened only when a touch is due.
    fn touch_path(&self, key: &ObjectKey, path: &Path, e: Entry) {
        if unix_now().saturating_sub(e.used) < TOUCH_INTERVAL {
            return;
        }
        if let Ok(f) = File::open(path) {
            self.touch(key, &f, e);
        }
    }

    /// Looks on disk for a blob the index does not know; returns its length.
    fn probe_blob(&self, d: &Digest) -> io::Result<Option<u64>> {
        let base = self.content_path("blobs", d);
        let dir = base.parent().expect("content paths have a parent");
        let prefix = format!("{}.", d.hex());
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        for ent in entries.flatten() {
            let name = ent.file_name();
            let Some(len) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|l| l.parse().ok())
            else {
                continue;
            };
            return Ok(Some(len));
        }
        Ok(None)
    }

    /// Whether a blob is committed (per the index; no disk access).
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.inner
            .index
            .lock()
            .expect("index lock")
            .lru
            .contains(&ObjectKey::Blob(d.clone()))
    }

    /// Starts a fill of `digest`: a temp file in `tmp/`.
    pub fn begin_fill(&self, digest: &Digest) -> io::Result<FillFile> {
        let file = tempfile::Builder::new()
            .prefix("fill-")
            .tempfile_in(self.inner.root.join("tmp"))?;
        // Held while the fill lives: a starting mirror leaves locked temp files alone.
        let _ = file.as_file().try_lock();
        Ok(FillFile {
            file,
            written: 0,
            digest: digest.clone(),
            store: self.clone(),
        })
    }

    /// Reads a manifest by digest, checking its bytes still hash to `d`; a damaged file is removed
    /// and reported as not cached. A hit moves it to the front of the LRU order.
    pub fn read_manifest(&self, d: &Digest) -> io::Result<Option<StoredManifest>> {
        let key = ObjectKey::Manifest(d.clone());
        let remembered = self.inner.manifests.lock().expect("manifest memory").get(d);
        let path = self.content_path("manifests", d);
        if let Some(m) = remembered {
            if let Some(e) = self.index_touch(&key) {
                self.touch_path(&key, &path, e);
                return Ok(Some(m));
            }
            // Gone from the index (evicted, or removed by an operator): check the disk again.
            self.inner
                .manifests
                .lock()
                .expect("manifest memory")
                .remove(d);
        }
        let raw = match fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index_remove(&key);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let parsed = raw.iter().position(|&b| b == b'\n').and_then(|nl| {
            let media_type = std::str::from_utf8(&raw[..nl]).ok()?.to_string();
            let bytes = Bytes::copy_from_slice(&raw[nl + 1..]);
            (Hasher::digest_of(d.algorithm(), &bytes) == *d)
                .then_some(StoredManifest { media_type, bytes })
        });
        let Some(m) = parsed else {
            tracing::warn!(digest = %d, "cached manifest is damaged; removing it");
            self.index_remove(&key);
            remove_if_exists(&path)?;
            return Ok(None);
        };
        self.inner
            .manifests
            .lock()
            .expect("manifest memory")
            .put(d.clone(), m.clone());
        let known = self.index_touch(&key);
        match known {
            Some(e) => self.touch_path(&key, &path, e),
            None => {
                if let Ok(meta) = fs::metadata(&path) {
                    self.index_insert(key, &meta, m.bytes.len() as u64);
                }
            }
        }
        Ok(Some(m))
    }

    /// Stores a manifest's exact bytes and media type under its digest.
    ///
    /// Errors: `InvalidData` if the bytes do not hash to `d` or the media type is unusable;
    /// otherwise the I/O error.
    pub fn write_manifest(&self, d: &Digest, media_type: &str, bytes: &[u8]) -> io::Result<()> {
        if !is_storable_media_type(media_type) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unusable media type",
            ));
        }
        if Hasher::digest_of(d.algorithm(), bytes) != *d {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "manifest does not match its digest",
            ));
        }
        let mut content = Vec::with_capacity(media_type.len() + 1 + bytes.len());
        content.extend_from_slice(media_type.as_bytes());
        content.push(b'\n');
        content.extend_from_slice(bytes);
        let path = self.content_path("manifests", d);
        let meta = self.write_atomic(&path, &content)?;
        self.index_insert(ObjectKey::Manifest(d.clone()), &meta, bytes.len() as u64);
        Ok(())
    }

    fn tag_path(&self, registry: &str, name: &str, tag: &str) -> PathBuf {
        self.inner
            .root
            .join("tags")
            .join(registry)
            .join(name)
            .join("_tags")
            .join(tag)
    }

    /// The last known answer for a tag, or `None` (also for an unreadable entry).
    pub fn read_tag(&self, registry: &str, name: &str, tag: &str) -> Option<TagEntry> {
        let raw = fs::read(self.tag_path(registry, name, tag)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Records a tag's answer.
    pub fn write_tag(
        &self,
        registry: &str,
        name: &str,
        tag: &str,
        entry: &TagEntry,
    ) -> io::Result<()> {
        let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
        self.write_atomic(&self.tag_path(registry, name, tag), &json)
            .map(|_| ())
    }

    /// Forgets a tag (upstream says it no longer exists).
    pub fn remove_tag(&self, registry: &str, name: &str, tag: &str) -> io::Result<()> {
        remove_if_exists(&self.tag_path(registry, name, tag))
    }

    /// Removes every tag entry pointing at one of `digests` (their manifests were evicted).
    /// Returns how many were removed.
    pub fn drop_tags_pointing_at(&self, digests: &std::collections::HashSet<String>) -> usize {
        let mut removed = 0;
        let mut stack = vec![self.inner.root.join("tags")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for ent in entries.flatten() {
                let p = ent.path();
                match ent.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(t) if t.is_file() => {
                        let hit = fs::read(&p)
                            .ok()
                            .and_then(|raw| serde_json::from_slice::<TagEntry>(&raw).ok())
                            .is_some_and(|e| digests.contains(&e.digest));
                        if hit && fs::remove_file(&p).is_ok() {
                            removed += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        removed
    }

    fn write_atomic(&self, dest: &Path, content: &[u8]) -> io::Result<fs::Metadata> {
        let parent = dest.parent().expect("cache paths have a parent");
        fs::create_dir_all(parent)?;
        let mut tmp = tempfile::Builder::new()
            .prefix("w-")
            .tempfile_in(self.inner.root.join("tmp"))?;
        let _ = tmp.as_file().try_lock();
        tmp.write_all(content)?;
        tmp.as_file().sync_data()?;
        let file = tmp.persist(dest).map_err(|e| e.error)?;
        sync_dir(parent)?;
        file.metadata()
    }
}

/// Bytes of manifests kept in memory.
pub const MANIFEST_MEMORY: usize = 8 << 20;

/// A small LRU of verified manifests, bounded by [`MANIFEST_MEMORY`] bytes.
struct ManifestMemory {
    /// Least recently used first.
    lru: LruCache<Digest, StoredManifest>,
    /// Sum of the manifests' lengths.
    bytes: usize,
}

impl Default for ManifestMemory {
    fn default() -> Self {
        ManifestMemory {
            lru: LruCache::unbounded(),
            bytes: 0,
        }
    }
}

impl ManifestMemory {
    fn get(&mut self, d: &Digest) -> Option<StoredManifest> {
        self.lru.get(d).cloned()
    }

    fn put(&mut self, d: Digest, m: StoredManifest) {
        let n = m.bytes.len();
        if n > MANIFEST_MEMORY / 8 {
            return;
        }
        if let Some(old) = self.lru.put(d, m) {
            self.bytes -= old.bytes.len();
        }
        self.bytes += n;
        while self.bytes > MANIFEST_MEMORY {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= old.bytes.len(),
                None => break,
            }
        }
    }

    fn remove(&mut self, d: &Digest) {
        if let Some(old) = self.lru.pop(d) {
            self.bytes -= old.bytes.len();
        }
    }
}

/// One object file found on disk.
pub struct FoundObject {
    /// Which object.
    pub key: ObjectKey,
    /// Its path.
    pub path: PathBuf,
    /// Content length (blobs: from the name).
    pub len: u64,
    /// Metadata of the file.
    pub meta: fs::Metadata,
}

/// Walks `blobs/` and `manifests/`, calling `f` for each well-named object file. Blobs whose size
/// disagrees with their name (`blobs/<alg>/<hh>/<hex>.<len>`) are added to `damaged` and, when
/// `heal` is set, removed; `f` does not see them.
pub fn walk_objects(
    root: &Path,
    heal: bool,
    damaged: &mut Vec<Digest>,
    mut f: impl FnMut(FoundObject),
) -> io::Result<()> {
    for (kind, alg) in [
        ("blobs", Algorithm::Sha256),
        ("blobs", Algorithm::Sha512),
        ("manifests", Algorithm::Sha256),
        ("manifests", Algorithm::Sha512),
    ] {
        let top = root.join(kind).join(alg.as_str());
        let Ok(shards) = fs::read_dir(&top) else {
            continue;
        };
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let Some(name) = name.to_str() else { continue };
                let (hex, len) = match kind {
                    "blobs" => match name.split_once('.') {
                        Some((h, l)) => match l.parse::<u64>() {
                            Ok(l) => (h, Some(l)),
                            Err(_) => continue,
                        },
                        None => continue,
                    },
                    _ => (name, None),
                };
                let Ok(digest) = format!("{}:{hex}", alg.as_str()).parse::<Digest>() else {
                    continue;
                };
                let Ok(meta) = file.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let path = file.path();
                let key = match len {
                    Some(l) if meta.len() != l => {
                        if heal {
                            tracing::warn!(%digest, expected = l, actual = meta.len(), "removing truncated or altered blob");
                            let _ = fs::remove_file(&path);
                        }
                        damaged.push(digest);
                        continue;
                    }
                    Some(_) => ObjectKey::Blob(digest),
                    None => ObjectKey::Manifest(digest),
                };
                let len = len.unwrap_or(meta.len());
                f(FoundObject {
                    key,
                    path,
                    len,
                    meta,
                });
            }
        }
    }
    Ok(())
}

fn scan_objects(
    root: &Path,
    heal: bool,
    report: &mut ScanReport,
) -> io::Result<Vec<(i64, ObjectKey, Entry)>> {
    let mut out = Vec::new();
    let mut damaged = Vec::new();
    walk_objects(root, heal, &mut damaged, |o| {
        let mtime = o.meta.mtime();
        let entry = Entry {
            len: o.len,
            disk: disk_bytes(&o.meta),
            used: u64::try_from(mtime).unwrap_or(0),
        };
        out.push((mtime, o.key, entry));
    })?;
    report.healed += damaged.len();
    Ok(out)
}

/// Bytes a file takes on disk (allocated 512-byte blocks), at least its length rounded up to
/// a block when the filesystem reports no blocks.
pub fn disk_bytes(meta: &fs::Metadata) -> u64 {
    let blocks = meta.blocks() * 512;
    if blocks == 0 {
        meta.len().div_ceil(512) * 512
    } else {
        blocks
    }
}

/// Media types are stored on one line: printable ASCII, no newline, at most 255 bytes.
pub fn is_storable_media_type(m: &str) -> bool {
    !m.is_empty() && m.len() <= MAX_MEDIA_TYPE_LEN && m.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Store {
        Store::open(dir).unwrap().0
    }

    #[test]
    fn fill_commits_only_matching_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let good = Hasher::digest_of(Algorithm::Sha256, b"hello");
        let mut f = store.begin_fill(&good).unwrap();
        f.write(b"hel").unwrap();
        f.write(b"lo").unwrap();
        assert_eq!(
            f.commit(&Hasher::digest_of(Algorithm::Sha256, b"hello"))
                .unwrap(),
            5
        );
        assert_eq!(fs::read(store.blob_path(&good, 5)).unwrap(), b"hello");
        assert!(store.has_blob(&good));
        assert_eq!(store.usage().objects, 1);

        let other = Hasher::digest_of(Algorithm::Sha512, b"x");
        let mut f = store.begin_fill(&other).unwrap();
        f.write(b"y").unwrap();
        let actual = Hasher::digest_of(Algorithm::Sha512, b"y");
        assert!(matches!(
            f.commit(&actual),
            Err(CommitError::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&other));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn manifests_and_tags_round_trip_and_heal() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let body = br#"{"schemaVersion":2}"#;
        let d = Hasher::digest_of(Algorithm::Sha256, body);
        store
            .write_manifest(&d, "application/vnd.oci.image.manifest.v1+json", body)
            .unwrap();
        let m = store.read_manifest(&d).unwrap().unwrap();
        assert_eq!(&m.bytes[..], body);
        assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
        assert!(store.write_manifest(&d, "x", b"other").is_err());

        // A damaged manifest is removed, not served (a fresh process has no memory copy).
        let p = store.content_path("manifests", &d);
        fs::write(&p, b"application/json\n{}").unwrap();
        assert_eq!(
            &store.read_manifest(&d).unwrap().unwrap().bytes[..],
            body,
            "memory copy is verified"
        );
        let store = open(dir.path());
        assert!(store.read_manifest(&d).unwrap().is_none());
        assert!(!p.exists());
        assert_eq!(store.usage().objects, 0);

        let e = TagEntry {
            digest: d.to_string(),
            media_type: "m".into(),
            checked: unix_now(),
        };
        store.write_tag("docker.io", "library/a", "v1", &e).unwrap();
        assert_eq!(store.read_tag("docker.io", "library/a", "v1"), Some(e));
        assert_eq!(store.read_tag("docker.io", "library/a/v1", "v1"), None);
        let set = [d.to_string()].into_iter().collect();
        assert_eq!(store.drop_tags_pointing_at(&set), 1);
        assert_eq!(store.read_tag("docker.io", "library/a", "v1"), None);
    }

    #[test]
    fn restart_rebuilds_index_in_mtime_order_and_heals() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut digests = Vec::new();
        for i in 0..3u8 {
            let data = vec![i; 1000 + i as usize];
            let d = Hasher::digest_of(Algorithm::Sha256, &data);
            let mut f = store.begin_fill(&d).unwrap();
            f.write(&data).unwrap();
            f.commit(&d).unwrap();
            // Oldest first: i=0 used longest ago.
            let t = SystemTime::now() - Duration::from_secs(1000 - i as u64 * 100);
            File::options()
                .append(true)
                .open(store.blob_path(&d, data.len() as u64))
                .unwrap()
                .set_modified(t)
                .unwrap();
            digests.push((d, data.len() as u64));
        }
        // Truncate the newest; leave a temp file behind.
        let (d2, l2) = &digests[2];
        File::options()
            .write(true)
            .open(store.blob_path(d2, *l2))
            .unwrap()
            .set_len(10)
            .unwrap();
        fs::write(dir.path().join("tmp/fill-x"), b"partial").unwrap();
        drop(store);
        let (store, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.healed, 1);
        assert_eq!(report.temp_removed, 1);
        assert_eq!(report.objects, 2);
        assert!(!store.has_blob(d2));
        let popped = store.pop_lru(1);
        assert_eq!(
            popped[0].0,
            ObjectKey::Blob(digests[0].0.clone()),
            "least recently used first"
        );
    }

    #[test]
    fn startup_keeps_temp_files_of_live_fills() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let d = Hasher::digest_of(Algorithm::Sha256, b"in progress");
        let mut live = store.begin_fill(&d).unwrap();
        live.write(b"in prog").unwrap();
        fs::write(dir.path().join("tmp/fill-crashed"), b"left by a crash").unwrap();
        let (_again, removed) = Store::open_unindexed(dir.path()).unwrap();
        assert_eq!(removed, 1, "only the unlocked leftover goes");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        live.write(b"ress").unwrap();
        assert!(live.commit(&d).is_ok(), "the live fill is intact");
    }

    #[test]
    fn size_mismatch_at_open_is_healed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let data = vec![7u8; 5000];
        let d = Hasher::digest_of(Algorithm::Sha256, &data);
        let mut f = store.begin_fill(&d).unwrap();
        f.write(&data).unwrap();
        f.commit(&d).unwrap();
        let p = store.blob_path(&d, 5000);
        // Cannot write a committed file in place (regcache never does); simulate damage.
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4000)
            .unwrap();
        assert!(store.open_blob(&d).unwrap().is_none());
        assert!(!p.exists());
        assert!(!store.has_blob(&d));
    }
}
