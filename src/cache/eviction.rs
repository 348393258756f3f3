//! Keeping the cache within its budget: `max_size` (bytes of cache on disk) and `min_free`
//! (free space to leave on the cache filesystem). When either is crossed, the evictor removes the
//! least recently used objects down to a low watermark, off the request path.
//!
//! Eviction only unlinks committed, immutable files: a client reading (or an mmap of) an evicted
//! blob keeps valid bytes until it is done. Tag entries whose manifest was evicted are dropped.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::index::{Entry, ObjectKey, SharedIndex};
use crate::cache::store::Store;

/// After crossing `max_size`, evict down to this fraction of it.
pub const LOW_WATERMARK: f64 = 0.9;
/// After crossing `min_free`, evict until free space is this much above it (fraction of min_free,
/// at least [`MIN_FREE_SLACK_BYTES`]).
pub const MIN_FREE_SLACK: f64 = 0.1;
/// Smallest extra margin above `min_free`, in bytes.
pub const MIN_FREE_SLACK_BYTES: u64 = 16 << 20;
/// How often free space is checked even without commits (other programs fill disks too).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Free space to leave on the cache filesystem.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum MinFree {
    /// An absolute number of bytes (`"5GiB"`).
    Bytes(u64),
    /// A percentage of the filesystem's size (`"10%"`), 0–100.
    Percent(f64),
}

impl MinFree {
    /// The threshold in bytes on a filesystem of `fs_total` bytes.
    pub fn bytes(&self, fs_total: u64) -> u64 {
        match *self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => (fs_total as f64 * p / 100.0) as u64,
        }
    }
}

/// The cache's limits. Both unset means unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Budget {
    /// Most bytes the cache may take on disk.
    pub max_size: Option<u64>,
    /// Free space to leave on the cache filesystem.
    pub min_free: Option<MinFree>,
}

/// Space figures of the cache filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Size of the filesystem.
    pub total: u64,
    /// Space available to regcache.
    pub available: u64,
}

/// Reads the space figures (statvfs) of the filesystem holding `dir` (the cache directory).
pub fn fs_space(dir: &Path) -> Option<FsSpace> {
    let st = fs4::statvfs(dir).ok()?;
    Some(FsSpace {
        total: st.total_space(),
        available: st.available_space(),
    })
}

impl Budget {
    /// Whether no limit is set.
    pub fn is_unbounded(&self) -> bool {
        self.max_size.is_none() && self.min_free.is_none()
    }

    /// Bytes to evict now: enough to get back to the low watermark of whichever limit is crossed
    /// (`used` = committed + reserved bytes), or 0.
    pub fn excess(&self, used: u64, fs: Option<FsSpace>) -> u64 {
        let mut need = 0;
        if let Some(max) = self.max_size {
            if used > max {
                need = used - (max as f64 * LOW_WATERMARK) as u64;
            }
        }
        if let (Some(mf), Some(fs)) = (self.min_free, fs) {
            let want = mf.bytes(fs.total);
            if fs.available < want {
                let slack = ((want as f64 * MIN_FREE_SLACK) as u64).max(MIN_FREE_SLACK_BYTES);
                need = need.max(want + slack - fs.available);
            }
        }
        need
    }

    /// Whether an object of `len` bytes can be cached at all (it is not larger than `max_size`).
    pub fn admits(&self, len: u64) -> bool {
        self.max_size.is_none_or(|m| len <= m)
    }
}

/// What one eviction pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvictReport {
    /// Objects removed (or, for a dry run, that would be).
    pub objects: usize,
    /// Bytes on disk freed.
    pub bytes: u64,
    /// Tag entries dropped because their manifest went.
    pub tags: usize,
}

/// The objects to evict now, least recently used first: enough to bring the cache back to the
/// low watermark of whichever limit is crossed (committed + reserved bytes against `max_size`,
/// free space `fs` against `min_free`), or none. Removes nothing: [`evict_once`] acts on it and
/// `regcache gc --dry-run` lists it.
pub fn plan(index: &SharedIndex, budget: &Budget, fs: Option<FsSpace>) -> Vec<(ObjectKey, Entry)> {
    let usage = index.usage();
    // Space held by regcache's own abandoned temp files (fills that hit a full disk and still
    // stream to their clients) comes back when those fills end: never evict for it.
    let fs = fs.map(|f| FsSpace {
        available: f.available.saturating_add(usage.held),
        ..f
    });
    match budget.excess(usage.total + usage.reserved, fs) {
        0 => Vec::new(),
        need => index.plan(need),
    }
}

/// Evicts least recently used objects until the budget's low watermarks hold ([`plan`]), then
/// drops the tag entries that pointed at evicted manifests. Does nothing until the index is
/// loaded. Blocking (file system work): call from a blocking thread.
pub fn evict_once(store: &Store, budget: &Budget) -> EvictReport {
    let index = store.index();
    if !index.is_indexed() {
        return EvictReport::default();
    }
    let victims = plan(index, budget, fs_space(store.root()));
    if victims.is_empty() {
        return EvictReport::default();
    }
    let mut report = EvictReport::default();
    let mut manifests = HashSet::new();
    for (key, entry) in &victims {
        if index.remove(key).is_none() {
            continue; // removed meanwhile (healed, or another pass)
        }
        match store.unlink(key, entry) {
            Ok(()) => {
                report.objects += 1;
                report.bytes += entry.disk;
                if let ObjectKey::Manifest(d) = key {
                    manifests.insert(d.to_string());
                }
            }
            Err(e) => {
                tracing::warn!(digest = %key.digest(), error = %e, "eviction: cannot remove file")
            }
        }
    }
    if !manifests.is_empty() {
        report.tags = store.drop_tags_pointing_at(&manifests);
    }
    tracing::info!(
        objects = report.objects,
        bytes = report.bytes,
        tags = report.tags,
        cache_bytes = index.usage().total,
        "eviction: removed least recently used content"
    );
    report
}

/// Objects and bytes removed by an evictor since it started (for `/metrics`).
#[derive(Debug, Default)]
struct Evicted {
    objects: AtomicU64,
    bytes: AtomicU64,
}

/// The evictor task of a running cache: woken by the index whenever it grows (and every
/// [`CHECK_INTERVAL`], since other programs fill disks too), it evicts off the request path.
/// Dropping it stops the task.
pub struct Evictor {
    /// The task; aborted on drop.
    task: tokio::task::JoinHandle<()>,
    /// What it removed.
    evicted: Arc<Evicted>,
}

impl Evictor {
    /// Starts the evictor for `store` within `budget`, with a first pass at once (the budget
    /// may have shrunk since the last run). `None` for an unbounded budget.
    pub fn spawn(store: &Store, budget: Budget) -> Option<Evictor> {
        if budget.is_unbounded() {
            return None;
        }
        let evicted = Arc::new(Evicted::default());
        let counts = evicted.clone();
        let store = store.clone();
        let task = tokio::spawn(async move {
            let mut first = true;
            loop {
                if !first {
                    tokio::select! {
                        _ = store.index().changed().notified() => {}
                        _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                    }
                }
                first = false;
                let u = store.index().usage();
                // Cheap check on every change; the free-space check needs the pass itself.
                let over_size = budget.max_size.is_some_and(|m| u.total + u.reserved > m);
                if !over_size && budget.min_free.is_none() {
                    continue;
                }
                let s = store.clone();
                if let Ok(r) = tokio::task::spawn_blocking(move || evict_once(&s, &budget)).await {
                    counts
                        .objects
                        .fetch_add(r.objects as u64, Ordering::Relaxed);
                    counts.bytes.fetch_add(r.bytes, Ordering::Relaxed);
                }
            }
        });
        Some(Evictor { task, evicted })
    }

    /// Objects removed and bytes freed since the start.
    pub fn evicted(&self) -> (u64, u64) {
        (
            self.evicted.objects.load(Ordering::Relaxed),
            self.evicted.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Evictor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excess_uses_low_watermarks() {
        let b = Budget {
            max_size: Some(1000),
            min_free: None,
        };
        assert_eq!(b.excess(1000, None), 0);
        assert_eq!(b.excess(1100, None), 200);
        let b = Budget {
            max_size: None,
            min_free: Some(MinFree::Percent(10.0)),
        };
        let fs = |available| {
            Some(FsSpace {
                total: 10 << 30,
                available,
            })
        };
        assert_eq!(b.excess(0, fs(2 << 30)), 0);
        let want = (10u64 << 30) / 10;
        let slack = (want as f64 * MIN_FREE_SLACK) as u64;
        assert_eq!(b.excess(0, fs(want - 100)), 100 + slack);
        assert!(b.admits(u64::MAX));
        assert!(!Budget {
            max_size: Some(10),
            min_free: None
        }
        .admits(11));
    }
}
