//! The content-addressed store on disk.
//!
//! ```text
//! <cache_dir>/blobs/sha256/ab/abcdef...          blob bytes, exactly as upstream sent them
//! <cache_dir>/manifests/sha256/ab/abcdef...      "<media type>\n" then the manifest's exact bytes
//! <cache_dir>/tags/<registry>/<name>/_tags/<tag> JSON {digest, media_type, checked}
//! <cache_dir>/tmp/                                in-progress fills (removed at startup)
//! ```
//! Names and tags reach this module only after [`crate::reference`] validated them, and the
//! grammars exclude `..`, empty components and `/` in tags; `_tags` cannot collide with a name
//! component (components start with `[a-z0-9]`).
//!
//! Writes go to a temp file in `tmp/` (same filesystem), hashed while written, `sync_data`d,
//! renamed onto the content address, then the directory is fsynced. A committed file is never
//! modified; removal only unlinks (open readers and mmaps stay valid).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::reference::{Algorithm, Digest};

/// Longest media type stored with a manifest, in bytes.
const MAX_MEDIA_TYPE_LEN: usize = 255;

/// The on-disk cache rooted at `cache_dir`.
#[derive(Debug, Clone)]
pub struct Store {
    /// The cache directory.
    root: PathBuf,
}

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
        let now = unix_now();
        Duration::from_secs(now.saturating_sub(self.checked))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

/// A temp file receiving a fill, hashed as it is written. Dropping it without
/// [`FillFile::commit`] deletes the temp file: nothing is committed.
pub struct FillFile {
    /// The temp file in `tmp/`, deleted on drop.
    file: tempfile::NamedTempFile,
    /// Running hash of everything written.
    hasher: Hasher,
    /// Bytes written so far.
    written: u64,
    /// Where the file goes once verified.
    dest: PathBuf,
    /// The digest it must hash to.
    digest: Digest,
}

impl FillFile {
    /// Appends `data` and hashes it. Errors: the write error (ENOSPC, EIO...).
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.as_file_mut().write_all(data)?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A second, read-only handle on the temp file, for clients following the fill. It stays
    /// valid after the rename (and after deletion, if the fill fails).
    pub fn reader(&self) -> io::Result<File> {
        File::open(self.file.path())
    }

    /// Verifies the digest, syncs, and renames into place.
    ///
    /// Errors: [`CommitError::DigestMismatch`] (temp file deleted, nothing stored) or an I/O error.
    pub fn commit(self) -> Result<u64, CommitError> {
        let actual = self.hasher.finish();
        if actual != self.digest {
            return Err(CommitError::DigestMismatch {
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        self.file.as_file().sync_data()?;
        let parent = self.dest.parent().expect("content paths have a parent");
        fs::create_dir_all(parent)?;
        self.file.persist(&self.dest).map_err(|e| e.error)?;
        sync_dir(parent)?;
        Ok(self.written)
    }
}

impl Store {
    /// Opens (creating if needed) the cache at `root` and removes leftover temp files from
    /// interrupted fills.
    ///
    /// Errors: the I/O error if the directories cannot be created or `tmp/` cannot be cleaned.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Store> {
        let root = root.into();
        for d in ["blobs", "manifests", "tags"] {
            fs::create_dir_all(root.join(d))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(Store { root })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn content_path(&self, kind: &str, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join(kind)
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Path of a committed blob.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.content_path("blobs", d)
    }

    /// Opens a committed blob: the file and its length in bytes, or `None` when not cached.
    pub fn open_blob(&self, d: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.blob_path(d)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether a blob is committed.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Removes a committed blob (healing a bad file). Missing is not an error.
    pub fn remove_blob(&self, d: &Digest) -> io::Result<()> {
        remove_if_exists(&self.blob_path(d))
    }

    /// Starts a fill of `digest`: a temp file in `tmp/`.
    pub fn begin_fill(&self, digest: &Digest) -> io::Result<FillFile> {
        let file = tempfile::Builder::new()
            .prefix("fill-")
            .tempfile_in(self.root.join("tmp"))?;
        Ok(FillFile {
            file,
            hasher: Hasher::new(digest.algorithm()),
            written: 0,
            dest: self.blob_path(digest),
            digest: digest.clone(),
        })
    }

    /// Reads a manifest by digest, checking its bytes still hash to `d`; a damaged file is removed
    /// and reported as not cached.
    pub fn read_manifest(&self, d: &Digest) -> io::Result<Option<StoredManifest>> {
        let path = self.content_path("manifests", d);
        let raw = match fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let parsed = raw.iter().position(|&b| b == b'\n').and_then(|nl| {
            let media_type = std::str::from_utf8(&raw[..nl]).ok()?.to_string();
            let bytes = Bytes::from(raw[nl + 1..].to_vec());
            (Hasher::digest_of(d.algorithm(), &bytes) == *d)
                .then_some(StoredManifest { media_type, bytes })
        });
        if parsed.is_none() {
            tracing::warn!(digest = %d, "cached manifest is damaged; removing it");
            remove_if_exists(&path)?;
        }
        Ok(parsed)
    }

    /// Whether a manifest is stored (without verifying it).
    pub fn has_manifest(&self, d: &Digest) -> bool {
        self.content_path("manifests", d).is_file()
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
        self.write_atomic(&self.content_path("manifests", d), &content)
    }

    fn tag_path(&self, registry: &str, name: &str, tag: &str) -> PathBuf {
        self.root
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
    }

    /// Forgets a tag (upstream says it no longer exists).
    pub fn remove_tag(&self, registry: &str, name: &str, tag: &str) -> io::Result<()> {
        remove_if_exists(&self.tag_path(registry, name, tag))
    }

    fn write_atomic(&self, dest: &Path, content: &[u8]) -> io::Result<()> {
        let parent = dest.parent().expect("cache paths have a parent");
        fs::create_dir_all(parent)?;
        let mut tmp = tempfile::Builder::new()
            .prefix("w-")
            .tempfile_in(self.root.join("tmp"))?;
        tmp.write_all(content)?;
        tmp.as_file().sync_data()?;
        tmp.persist(dest).map_err(|e| e.error)?;
        sync_dir(parent)
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

    #[test]
    fn fill_commits_only_matching_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = Hasher::digest_of(Algorithm::Sha256, b"hello");
        let mut f = store.begin_fill(&good).unwrap();
        f.write(b"hel").unwrap();
        f.write(b"lo").unwrap();
        assert_eq!(f.commit().unwrap(), 5);
        assert_eq!(fs::read(store.blob_path(&good)).unwrap(), b"hello");

        let other = Hasher::digest_of(Algorithm::Sha512, b"x");
        let mut f = store.begin_fill(&other).unwrap();
        f.write(b"y").unwrap();
        assert!(matches!(
            f.commit(),
            Err(CommitError::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&other));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn manifests_and_tags_round_trip_and_heal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body = br#"{"schemaVersion":2}"#;
        let d = Hasher::digest_of(Algorithm::Sha256, body);
        store
            .write_manifest(&d, "application/vnd.oci.image.manifest.v1+json", body)
            .unwrap();
        let m = store.read_manifest(&d).unwrap().unwrap();
        assert_eq!(&m.bytes[..], body);
        assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
        assert!(store.write_manifest(&d, "x", b"other").is_err());

        // A damaged manifest is removed, not served.
        let p = store.content_path("manifests", &d);
        fs::write(&p, b"application/json\n{}").unwrap();
        assert!(store.read_manifest(&d).unwrap().is_none());
        assert!(!p.exists());

        let e = TagEntry {
            digest: d.to_string(),
            media_type: "m".into(),
            checked: unix_now(),
        };
        store.write_tag("docker.io", "library/a", "v1", &e).unwrap();
        assert_eq!(store.read_tag("docker.io", "library/a", "v1"), Some(e));
        // Name "library/a/_tags"-style collisions are impossible; "library/a/v1" is a different repo.
        assert_eq!(store.read_tag("docker.io", "library/a/v1", "v1"), None);
    }

    #[test]
    fn open_removes_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap();
        fs::write(dir.path().join("tmp/fill-leftover"), b"partial").unwrap();
        Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
