//! Zero-copy hits: committed, immutable cache files mapped into memory window by window and
//! handed to hyper as `Bytes`, so blob bytes go from the page cache to the socket without a copy
//! through a user-space buffer. Each window is unmapped as soon as hyper has written it, which
//! keeps the resident set small however large the blob and however many clients.
//!
//! This is the only module with `unsafe`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::body::BoxError;

/// Bytes mapped per window (a multiple of every page size in use).
pub const WINDOW: u64 = 1 << 20;

/// Maps bytes `[start, end)` of `file` read-only and returns them as `Bytes` (which keeps the
/// mapping alive while any slice of it lives). An empty range gives an empty `Bytes`.
///
/// Errors: the `mmap(2)` error.
pub fn map_range(file: &File, start: u64, end: u64) -> io::Result<Bytes> {
    if end <= start {
        return Ok(Bytes::new());
    }
    // mmap offsets must be page-aligned; WINDOW-aligning is stricter and cheap.
    let aligned = start - start % 4096;
    let len =
        usize::try_from(end - aligned).map_err(|_| io::Error::other("range too large to map"))?;
    // SAFETY: regcache maps only committed cache files. A committed file is never written again:
    // fills write to a temp file and rename it into place, and eviction or healing only unlinks
    // (open mappings keep the old inode). The one way the bytes could change under us is another
    // process writing into the cache directory by hand, which the operator docs forbid; the
    // file's length was checked against its name (and so its digest-verified size) before mapping.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(aligned)
            .len(len)
            .map(file)?
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    let _ = map.advise(memmap2::Advice::WillNeed);
    let skip = (start - aligned) as usize;
    Ok(Bytes::from_owner(map).slice(skip..))
}

/// A response body over bytes `[start, end)` of a committed file, mapped [`WINDOW`] bytes at a
/// time.
pub struct MmapBody {
    /// The committed file.
    file: Arc<File>,
    /// Next byte to send.
    pos: u64,
    /// One past the last byte to send.
    end: u64,
}

impl MmapBody {
    /// A body of bytes `[start, end)` of `file`.
    pub fn new(file: Arc<File>, start: u64, end: u64) -> MmapBody {
        MmapBody {
            file,
            pos: start,
            end,
        }
    }
}

impl Body for MmapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.pos >= self.end {
            return Poll::Ready(None);
        }
        let next = ((self.pos / WINDOW) + 1) * WINDOW;
        let stop = next.min(self.end);
        match map_range(&self.file, self.pos, stop) {
            Ok(b) => {
                self.pos = stop;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Err(e) => {
                self.pos = self.end;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.pos)
    }
}
