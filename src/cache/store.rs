//! The content-addressed store on disk: blob and manifest files, fills' temp files, the commit
//! protocol, and a small memory of verified manifests. The index lives in
//! [`crate::cache::index`], the directory walk in [`crate::cache::scan`], tags in
//! [`crate::cache::tags`].
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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use crate::cache::hash::Hasher;
use crate::cache::index::{unix_now, Entry, ObjectKey, SharedIndex};
use crate::cache::scan::{disk_bytes, load_index, ScanReport};
use crate::reference::Digest;
use lru::LruCache;

/// Longest media type stored with a manifest, in bytes.
const MAX_MEDIA_TYPE_LEN: usize = 255;
/// A hit updates the file's mtime only when the last update is older than this, in seconds.
pub const TOUCH_INTERVAL: u64 = 600;

/// A manifest read from the store: exact bytes and the media type upstream gave it.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// `Content-Type` to answer with, e.g. `application/vnd.oci.image.index.v1+json`.
    pub media_type: String,
    /// The exact bytes (they hash to the digest).
    pub bytes: Bytes,
}

/// Why a fill could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The bytes hash to another digest; nothing was stored.
    #[error("content hashes to {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
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

    /// Checks `actual` (the digest of everything written) against the fill's digest and the
    /// file's length on disk against the bytes written, syncs, renames into place and records
    /// the blob in the index.
    ///
    /// Errors: [`CommitError::DigestMismatch`] (temp file deleted, nothing stored), or an I/O
    /// error (also when the temp file was changed on disk: nothing stored).
    pub fn commit(self, actual: &Digest) -> Result<u64, CommitError> {
        if *actual != self.digest {
            return Err(CommitError::DigestMismatch {
                expected: self.digest,
                actual: actual.clone(),
            });
        }
        // What is committed is what is on disk: a temp file changed behind regcache's back
        // (shortened, so appended bytes moved) no longer has the length that was hashed.
        let on_disk = self.file.as_file().metadata()?.len();
        if on_disk != self.written {
            return Err(CommitError::Io(io::Error::other(format!(
                "the temp file holds {on_disk} bytes, not the {} written: it was changed behind regcache's back",
                self.written
            ))));
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
    /// Sizes and LRU order of committed objects.
    index: SharedIndex,
    /// Recently read manifests, verified (they never change for a digest).
    manifests: Mutex<ManifestMemory>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish()
    }
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
        let fresh = load_index(&self.inner.root, true, &mut report)?;
        self.inner.index.load(fresh);
        Ok(report)
    }

    fn empty(root: PathBuf) -> Store {
        Store {
            inner: Arc::new(StoreInner {
                root,
                index: SharedIndex::default(),
                manifests: Mutex::new(ManifestMemory::default()),
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
        let mut report = ScanReport::default();
        let fresh = load_index(&root, false, &mut report)?;
        let store = Store::empty(root);
        store.inner.index.load(fresh);
        Ok((store, report))
    }

    /// The index of committed objects (sizes, LRU order, reservations).
    pub fn index(&self) -> &SharedIndex {
        &self.inner.index
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

    fn index_insert(&self, key: ObjectKey, meta: &fs::Metadata, len: u64) {
        let entry = Entry {
            len,
            disk: disk_bytes(meta),
            used: unix_now(),
        };
        self.inner.index.insert(key, entry);
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
        let known = self.inner.index.touch(&key);
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
                self.inner.index.remove(&key);
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                // Unreadable (an operator's chmod, a broken mount): a miss, re-fetched and
                // committed over it, rather than an error for every pull.
                tracing::warn!(digest = %d, error = %e, "cached blob is unreadable; treating it as a miss");
                self.inner.index.remove(&key);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if meta.len() != len {
            tracing::warn!(digest = %d, expected = len, actual = meta.len(), "cached blob has the wrong size; removing it");
            self.inner.index.remove(&key);
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
            self.inner.index.set_used(key, now);
        }
    }

    /// [`Store::touch`] for an object not open yet: the file is opened only when a touch is due.
    /// The path is worked out only then (a hit remembered in memory builds none).
    fn touch_path(&self, key: &ObjectKey, e: Entry) {
        if unix_now().saturating_sub(e.used) < TOUCH_INTERVAL {
            return;
        }
        if let Ok(f) = File::open(self.object_path(key, &e)) {
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
        self.inner.index.contains(&ObjectKey::Blob(d.clone()))
    }

    /// Starts a fill of `digest`: a temp file in `tmp/`.
    pub fn begin_fill(&self, digest: &Digest) -> io::Result<FillFile> {
        // Appending: bytes land after what is on disk, so a file shortened behind our back
        // ends up shorter than what was written, which the commit refuses (never a hole).
        let file = self.temp_file("fill-", true)?;
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
        if let Some(m) = remembered {
            if let Some(e) = self.inner.index.touch(&key) {
                self.touch_path(&key, e);
                return Ok(Some(m));
            }
            // Gone from the index (evicted, or removed by an operator): check the disk again.
            self.inner
                .manifests
                .lock()
                .expect("manifest memory")
                .remove(d);
        }
        let path = self.content_path("manifests", d);
        let raw = match fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.inner.index.remove(&key);
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
            self.inner.index.remove(&key);
            remove_if_exists(&path)?;
            return Ok(None);
        };
        self.inner
            .manifests
            .lock()
            .expect("manifest memory")
            .put(d.clone(), m.clone());
        let known = self.inner.index.touch(&key);
        match known {
            Some(e) => self.touch_path(&key, e),
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

    /// Whether a fill could start now: creates (and removes) a temp file in `tmp/`.
    ///
    /// Errors: the I/O error, e.g. permission denied or a read-only filesystem.
    pub fn probe_writable(&self) -> io::Result<()> {
        self.temp_file(".ready-", false).map(drop)
    }

    /// A new temp file in `tmp/`, recreating `tmp/` when it was removed while the mirror runs
    /// (an operator emptying the cache directory must not stop caching until a restart).
    fn temp_file(&self, prefix: &str, append: bool) -> io::Result<tempfile::NamedTempFile> {
        let tmp = self.inner.root.join("tmp");
        let make = || {
            tempfile::Builder::new()
                .prefix(prefix)
                .append(append)
                .tempfile_in(&tmp)
        };
        match make() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(dir = %tmp.display(), "the cache's tmp/ directory is gone; recreating it");
                fs::create_dir_all(&tmp)?;
                make()
            }
            other => other,
        }
    }

    pub(super) fn write_atomic(&self, dest: &Path, content: &[u8]) -> io::Result<fs::Metadata> {
        let parent = dest.parent().expect("cache paths have a parent");
        fs::create_dir_all(parent)?;
        let mut tmp = self.temp_file("w-", false)?;
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

/// Media types are stored on one line: printable ASCII, no newline, at most 255 bytes.
pub fn is_storable_media_type(m: &str) -> bool {
    !m.is_empty() && m.len() <= MAX_MEDIA_TYPE_LEN && m.bytes().all(|b| (0x20..0x7f).contains(&b))
}

pub(super) fn remove_if_exists(p: &Path) -> io::Result<()> {
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
    use crate::cache::tags::TagEntry;
    use crate::reference::Algorithm;
    use std::time::Duration;

    fn open(dir: &Path) -> Store {
        Store::open(dir).unwrap().0
    }

    /// A store in a fresh temp directory.
    fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        (dir, store)
    }

    #[test]
    fn fill_commits_only_matching_bytes() {
        let (dir, store) = fresh();
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
        assert_eq!(store.index().usage().objects, 1);

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
        let (dir, store) = fresh();
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
        assert_eq!(store.index().usage().objects, 0);

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
        let (dir, store) = fresh();
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
        let popped = store.index().plan(1);
        assert_eq!(
            popped[0].0,
            ObjectKey::Blob(digests[0].0.clone()),
            "least recently used first"
        );
    }

    /// A temp file shortened behind regcache's back mid-fill is never committed (the bytes
    /// written after it land at the new end, so the length on disk no longer matches).
    #[test]
    fn a_temp_file_changed_under_a_fill_is_not_committed() {
        let (_dir, store) = fresh();
        let data = b"0123456789abcdefghij";
        let d = Hasher::digest_of(Algorithm::Sha256, data);
        let mut f = store.begin_fill(&d).unwrap();
        f.write(&data[..10]).unwrap();
        File::options()
            .write(true)
            .open(f.file.path())
            .unwrap()
            .set_len(5)
            .unwrap();
        f.write(&data[10..]).unwrap();
        assert!(matches!(f.commit(&d), Err(CommitError::Io(_))));
        assert!(!store.has_blob(&d));
        assert!(!store.blob_path(&d, data.len() as u64).exists());
    }

    /// The tmp/ directory removed while the mirror runs is recreated by the next fill.
    #[test]
    fn a_removed_tmp_directory_is_recreated() {
        let (dir, store) = fresh();
        fs::remove_dir_all(dir.path().join("tmp")).unwrap();
        let d = Hasher::digest_of(Algorithm::Sha256, b"x");
        let mut f = store.begin_fill(&d).unwrap();
        f.write(b"x").unwrap();
        assert!(f.commit(&d).is_ok());
        assert!(store.has_blob(&d));
    }

    #[test]
    fn startup_keeps_temp_files_of_live_fills() {
        let (dir, store) = fresh();
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
        let (_dir, store) = fresh();
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
