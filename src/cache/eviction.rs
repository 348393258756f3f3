//! Keeping the cache within its budget: `max_size` (bytes of cache on disk) and `min_free`
//! (free space to leave on the cache filesystem). When either is crossed, the evictor removes the
//! least recently used objects down to a low watermark, off the request path.
//!
//! Eviction only unlinks committed, immutable files: a client reading (or an mmap of) an evicted
//! blob keeps valid bytes until it is done. Tag entries whose manifest was evicted are dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::cache::store::{ObjectKey, Store};

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
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// Parses a size such as `"20GiB"`, `"500MB"`, `"1048576"` (bytesize syntax; IEC and SI units).
///
/// Errors: a message naming the value and the expected form.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size ({e}); write e.g. \"20GiB\", \"500MB\""))
}

/// Parses `min_free`: a size (`"5GiB"`) or a percentage of the filesystem (`"10%"`).
///
/// Errors: a message naming the value and the expected forms.
pub fn parse_min_free(s: &str) -> Result<MinFree, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a percentage; write e.g. \"10%\""))?;
        if !(0.0..100.0).contains(&v) {
            return Err(format!(
                "{s:?}: a percentage must be at least 0 and below 100"
            ));
        }
        return Ok(MinFree::Percent(v));
    }
    parse_size(t).map(MinFree::Bytes)
}

/// The cache's limits. Both unset means unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
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

/// Reads the cache filesystem's space figures (statvfs).
pub fn fs_space(store: &Store) -> Option<FsSpace> {
    let st = fs4::statvfs(store.root()).ok()?;
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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EvictReport {
    /// Objects removed (or, for a dry run, that would be).
    pub objects: usize,
    /// Bytes on disk freed.
    pub bytes: u64,
    /// Tag entries dropped because their manifest went.
    pub tags: usize,
}

/// Evicts least recently used objects until the budget's low watermarks hold. Blocking (file
/// system work): call from a blocking thread.
pub fn evict_once(store: &Store, budget: &Budget) -> EvictReport {
    if !store.is_indexed() {
        return EvictReport::default();
    }
    let usage = store.usage();
    let need = budget.excess(usage.total + usage.reserved, fs_space(store));
    if need == 0 {
        return EvictReport::default();
    }
    let victims = store.pop_lru(need);
    let mut report = EvictReport::default();
    let mut manifests = HashSet::new();
    for (key, entry) in &victims {
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
    store.record_evicted(report.objects as u64, report.bytes);
    tracing::info!(
        objects = report.objects,
        bytes = report.bytes,
        tags = report.tags,
        cache_bytes = store.usage().total,
        "eviction: removed least recently used content"
    );
    report
}

/// Starts the evictor task for `store` and wires commits to wake it when over budget. Does
/// nothing for an unbounded budget.
pub fn spawn(store: &Store, budget: Budget) {
    if budget.is_unbounded() {
        return;
    }
    let wake = Arc::new(Notify::new());
    {
        let wake = wake.clone();
        let s = store.clone();
        store.set_on_commit(move || {
            let u = s.usage();
            // Cheap check on every commit; the free-space check runs in the loop below.
            let over_size = budget.max_size.is_some_and(|m| u.total + u.reserved > m);
            if over_size || budget.min_free.is_some() {
                wake.notify_one();
            }
        });
    }
    let store = store.clone();
    wake.notify_one(); // a first pass at startup: the budget may have shrunk since the last run
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            let (s, b) = (store.clone(), budget);
            let _ = tokio::task::spawn_blocking(move || evict_once(&s, &b)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1 MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_min_free("10%").unwrap(), MinFree::Percent(10.0));
        assert_eq!(parse_min_free("5GiB").unwrap(), MinFree::Bytes(5 << 30));
        assert!(parse_min_free("150%").is_err());
    }

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
