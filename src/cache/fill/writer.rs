//! A fill's two [`Serial`] steps beside the network reads: the writer (the temp file, or the
//! pass-through window once the blob cannot be cached) publishing progress to followers, and
//! the hasher.

use std::sync::Arc;

use bytes::Bytes;

use super::{Fill, FillError, FillState, Fills};
use crate::cache::hash::Hasher;
use crate::cache::serial::Step;
use crate::cache::store::{FillFile, Store};

/// Where the writer puts bytes.
pub(super) enum Sink {
    /// Into the cache's temp file.
    Disk(FillFile),
    /// Through the in-memory window only (not cached).
    Mem { written: u64 },
}

/// Hashes a fill's bytes (a [`Serial`] step).
pub(super) struct Hashing(pub(super) Hasher);

impl Step for Hashing {
    fn step(&mut self, chunk: Bytes) -> bool {
        self.0.update(&chunk);
        true
    }
}

/// Writes a fill's bytes and publishes its progress (a [`Serial`] step). On a disk write error
/// it deletes the temp file and switches to pass-through for the rest of the blob.
pub(super) struct Writer {
    pub(super) sink: Sink,
    /// The blob's length from upstream's `Content-Length`, preallocated on disk step by step.
    pub(super) len: Option<u64>,
    /// Bytes preallocated so far (the first step waits for the first bytes: off the time to
    /// first byte).
    pub(super) preallocated: u64,
    /// The bytes written so far, counted against the budget until the fill ends.
    pub(super) reservation: Reservation,
    pub(super) max_size: Option<u64>,
    pub(super) fill: Arc<Fill>,
    pub(super) fills: Arc<Fills>,
    /// Why the fill must stop (set when a step returns `false`).
    pub(super) error: Option<FillError>,
}

/// Publishes that the fill has `w` bytes written (or passed through).
fn publish(fill: &Fill, w: u64) {
    fill.state.send_modify(|s| {
        if let FillState::Streaming { written, head, .. } = s {
            *written = w;
            // On disk now: the file serves it (and the memory goes).
            if head.as_ref().is_some_and(|h| h.len() as u64 <= w) {
                *head = None;
            }
        }
    })
}

/// Most bytes preallocated ahead of what is written: disk space is taken for bytes about to
/// come, never for a whole (possibly lying) `Content-Length` at once.
pub(super) const PREALLOCATE_STEP: u64 = 16 << 20;

/// The preallocation target once `written` bytes of a `len`-byte blob are on disk and
/// `preallocated` are allocated, when one more step is due.
fn preallocation_due(len: Option<u64>, preallocated: &mut u64, written: u64) -> Option<u64> {
    let len = len?;
    if *preallocated >= len || written + PREALLOCATE_STEP / 2 < *preallocated {
        return None;
    }
    *preallocated = len.min(written + PREALLOCATE_STEP);
    Some(*preallocated)
}

/// A growing reservation wakes the evictor once per this many bytes.
const RESERVATION_STEP: u64 = 4 << 20;

/// Bytes of a fill counted against the disk budget (the index's reservations, which the
/// evictor sees), released when the fill ends however it ends.
pub(super) struct Reservation {
    /// Whose index holds the reservation.
    pub(super) store: Store,
    /// Bytes reserved.
    pub(super) bytes: u64,
    /// Bytes of the abandoned temp file (still open for followers) counted as held.
    pub(super) held: u64,
}

impl Reservation {
    /// Reserves `n` more bytes (waking the evictor each [`RESERVATION_STEP`]).
    fn grow(&mut self, n: u64) {
        let wake = self.bytes / RESERVATION_STEP != (self.bytes + n) / RESERVATION_STEP;
        self.store.index().reserve(n, wake || self.bytes == 0);
        self.bytes += n;
    }

    /// The fill stopped caching: its reservation goes, and the `written` bytes of its temp
    /// file (deleted, but open until the fill ends) are counted as held, not as a reason to
    /// evict.
    fn abandoned(&mut self, written: u64) {
        self.store
            .index()
            .unreserve(std::mem::take(&mut self.bytes));
        self.store.index().hold(written);
        self.held += written;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.store
            .index()
            .unreserve(std::mem::take(&mut self.bytes));
        self.store.index().unhold(std::mem::take(&mut self.held));
    }
}

impl Step for Writer {
    fn step(&mut self, chunk: Bytes) -> bool {
        let (fill, fills) = (&self.fill, &self.fills);
        if let Sink::Disk(f) = &mut self.sink {
            match f.write(&chunk) {
                Ok(()) if self.max_size.is_some_and(|m| f.written() > m) => {
                    // No Content-Length, and it has outgrown the budget: stop caching.
                    let e = std::io::Error::other("blob is larger than max_size");
                    let w = f.written();
                    to_pass_through(&mut self.sink, fill, fills, &mut self.reservation, &e);
                    // The chunk is on disk already; followers read it from the file.
                    publish(fill, w);
                    return true;
                }
                Ok(()) => {
                    // Counted against the budget as the bytes arrive, never before: a lying
                    // Content-Length cannot make the evictor empty the cache. (A blob of
                    // unknown length is counted when it commits: it may yet outgrow max_size,
                    // and nothing should be evicted for a blob that will not be cached.)
                    if self.len.is_some() {
                        self.reservation.grow(chunk.len() as u64);
                    }
                    // Wake followers after every chunk (they may be waiting for the first bytes).
                    publish(fill, f.written());
                    let due = preallocation_due(self.len, &mut self.preallocated, f.written());
                    if let Some(target) = due {
                        if let Err(e) = f.preallocate(target) {
                            to_pass_through(&mut self.sink, fill, fills, &mut self.reservation, &e);
                        }
                    }
                    return true;
                }
                // This chunk goes below.
                Err(e) => to_pass_through(&mut self.sink, fill, fills, &mut self.reservation, &e),
            }
        }
        if let Sink::Mem { written } = &mut self.sink {
            if !fill.has_readers() {
                // Uncached and nobody reading: nothing to gain from the rest of the download.
                self.error = Some(FillError::Body {
                    written: *written,
                    reason: "every client left an uncached (pass-through) download".into(),
                });
                return false;
            }
            let at = *written;
            *written += chunk.len() as u64;
            let w = *written;
            fill.push_mem(at, chunk);
            publish(fill, w);
        }
        true
    }
}

/// A disk error: delete the temp file and pass the rest of the blob through uncached.
fn to_pass_through(
    sink: &mut Sink,
    fill: &Arc<Fill>,
    fills: &Fills,
    reservation: &mut Reservation,
    e: &std::io::Error,
) {
    let Sink::Disk(f) = std::mem::replace(sink, Sink::Mem { written: 0 }) else {
        return;
    };
    let written = f.abandon();
    reservation.abandoned(written);
    tracing::warn!(digest = %fill.digest, reason = %e, written,
        "not caching this blob; passing the rest of it through uncached");
    fills.detach(fill);
    fill.state.send_modify(|s| {
        if let FillState::Streaming { mem_start, .. } = s {
            *mem_start = Some(written);
        }
    });
    *sink = Sink::Mem { written };
}
