//! Walking the cache directory: the startup scan that rebuilds the index (healing blobs whose
//! size disagrees with the length in their name) and the walk `regcache verify` re-hashes.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cache::index::{Entry, Index, IndexBuilder, ObjectKey};
use crate::reference::{Algorithm, Digest};

/// What [`crate::cache::store::Store::open`] found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Objects indexed.
    pub objects: usize,
    /// Bytes on disk they take.
    pub bytes: u64,
    /// Damaged blobs found (size disagreeing with the name); removed by [`crate::cache::store::Store::open`].
    pub healed: usize,
    /// Leftover temp files removed.
    pub temp_removed: usize,
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

/// Scans the objects under `root` into a fresh index ordered by mtime (oldest first), counting
/// them (and the damaged blobs found) in `report`.
pub(super) fn load_index(root: &Path, heal: bool, report: &mut ScanReport) -> io::Result<Index> {
    let mut found = IndexBuilder::default();
    let mut damaged = Vec::new();
    walk_objects(root, heal, &mut damaged, |o| {
        let mtime = o.meta.mtime();
        let entry = Entry {
            len: o.len,
            disk: disk_bytes(&o.meta),
            used: u64::try_from(mtime).unwrap_or(0),
        };
        found.push(mtime, &o.key, entry);
    })?;
    report.healed += damaged.len();
    let index = found.build();
    report.objects = index.len();
    report.bytes = index.total();
    Ok(index)
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
