//! The in-memory index of the cache: the LRU order and sizes of committed objects, and the
//! reservations of fills in progress.
//!
//! The index signals a [`tokio::sync::Notify`] whenever it grows (an insert or a reservation):
//! the evictor waits on it. Nothing here knows eviction exists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use lru::LruCache;
use tokio::sync::Notify;

use crate::reference::Digest;

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
    /// Disk bytes held by temp files of fills that stopped caching (disk full) but still stream
    /// to their clients: freed when those fills end, so not a reason to evict.
    held: u64,
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
            held: 0,
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
    /// Disk bytes held by abandoned temp files of fills still streaming (freed when they end).
    pub held: u64,
    /// Number of objects.
    pub objects: usize,
}

/// The index as the cache shares it: the LRU under a lock held only for in-memory updates,
/// whether it has been loaded from disk, and the `changed` signal the evictor waits on.
#[derive(Default)]
pub struct SharedIndex {
    /// Sizes and LRU order of committed objects, and reservations.
    lru: Mutex<Index>,
    /// Whether the index has been loaded from disk (eviction waits for it).
    indexed: AtomicBool,
    /// Signalled on every insert and reservation (the evictor's wake-up).
    changed: Notify,
}

impl SharedIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.lru.lock().expect("index lock")
    }

    /// Signalled whenever the index grows (an object inserted, bytes reserved).
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    /// Adds (or replaces) an object as the most recently used.
    pub fn insert(&self, key: ObjectKey, e: Entry) {
        self.lock().insert(key, e);
        self.changed.notify_one();
    }

    /// A hit: the object's entry, now the most recently used.
    pub fn touch(&self, key: &ObjectKey) -> Option<Entry> {
        self.lock().touch(key)
    }

    /// Records that an object's mtime was set to `used` (seconds since the epoch).
    pub fn set_used(&self, key: &ObjectKey, used: u64) {
        if let Some(x) = self.lock().lru.peek_mut(key) {
            x.used = used;
        }
    }

    /// Forgets an object.
    pub fn remove(&self, key: &ObjectKey) -> Option<Entry> {
        self.lock().remove(key)
    }

    /// Whether an object is indexed.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.lock().lru.contains(key)
    }

    /// Every indexed object, least recently used first.
    pub fn objects(&self) -> Vec<(ObjectKey, Entry)> {
        let ix = self.lock();
        ix.lru.iter().rev().map(|(k, e)| (k.clone(), *e)).collect()
    }

    /// Current totals.
    pub fn usage(&self) -> Usage {
        let ix = self.lock();
        Usage {
            total: ix.total,
            reserved: ix.reserved,
            held: ix.held,
            objects: ix.lru.len(),
        }
    }

    /// Counts `bytes` against the budget until [`SharedIndex::unreserve`] (a fill in progress),
    /// waking the evictor when `wake` (a fill reserving chunk by chunk wakes it once per step,
    /// not once per chunk).
    pub fn reserve(&self, bytes: u64, wake: bool) {
        self.lock().reserved += bytes;
        if wake {
            self.changed.notify_one();
        }
    }

    /// Counts `bytes` of an abandoned temp file that stays open until its fill ends.
    pub fn hold(&self, bytes: u64) {
        self.lock().held += bytes;
        // A disk just turned full: the evictor looks at once (and finds this held space).
        self.changed.notify_one();
    }

    /// The fill of an abandoned temp file ended: its bytes are free again.
    pub fn unhold(&self, bytes: u64) {
        let mut ix = self.lock();
        ix.held = ix.held.saturating_sub(bytes);
    }

    /// Releases a reservation.
    pub fn unreserve(&self, bytes: u64) {
        let mut ix = self.lock();
        ix.reserved = ix.reserved.saturating_sub(bytes);
    }

    /// The least recently used objects whose disk bytes add up to at least `bytes` (or all of
    /// them), least recently used first. Nothing is removed.
    pub fn plan(&self, bytes: u64) -> Vec<(ObjectKey, Entry)> {
        let ix = self.lock();
        let mut freed = 0;
        let mut out = Vec::new();
        for (k, e) in ix.lru.iter().rev() {
            if freed >= bytes {
                break;
            }
            freed += e.disk;
            out.push((k.clone(), *e));
        }
        out
    }

    /// Replaces the index with `fresh` (loaded from disk); objects indexed meanwhile stay, as
    /// the most recently used, and reservations are kept. Marks the index loaded.
    pub fn load(&self, mut fresh: Index) {
        {
            let mut ix = self.lock();
            fresh.reserved = ix.reserved;
            fresh.held = ix.held;
            let live = std::mem::replace(&mut *ix, fresh);
            for (k, e) in live.lru.iter().rev() {
                ix.insert(k.clone(), *e);
            }
        }
        self.indexed.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Whether the index has been loaded (eviction waits for it).
    pub fn is_indexed(&self) -> bool {
        self.indexed.load(Ordering::SeqCst)
    }
}
