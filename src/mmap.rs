//! Zero-copy hits: a committed, immutable cache file mapped into memory and handed to hyper as
//! `Bytes`, so blob bytes go from the page cache to the socket without a user-space copy.
//!
//! This is the only module with `unsafe`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use bytes::Bytes;

/// Maps `len` bytes of `file` read-only and returns them as `Bytes` (which keeps the mapping alive
/// for as long as any slice of it lives). An empty file gives an empty `Bytes` (no mapping).
///
/// Errors: the `mmap(2)` error.
pub fn map_file(file: &File, len: u64) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
    // SAFETY: regcache maps only committed cache files. A committed file is never written again:
    // fills write to a temp file and rename it into place, and eviction or healing only unlinks
    // (open mappings keep the old inode). The one way the bytes could change under us is another
    // process writing into the cache directory by hand, which the operator docs forbid; the
    // length was checked against the digest-verified size before mapping.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Bytes::from_owner(map))
}
