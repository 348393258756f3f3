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

use crate::reference::{Algorithm, Digest};

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
    /// Space it takes on disk, in bytes (allocated blocks × 512; the index keeps it in 512-byte
    /// units, rounding up, at most 2 TiB).
    pub disk: u64,
    /// Last mtime written (seconds since the epoch): last use, coarsely (kept until 2106).
    pub used: u64,
}

/// How the index holds an [`ObjectKey`]: a sha256 digest as its 32 bytes, with no allocation of
/// its own (a cache holds a million of them); anything else boxed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// A sha256 blob.
    Blob([u8; 32]),
    /// A sha256 manifest.
    Manifest([u8; 32]),
    /// sha512 (rare).
    Other(Box<ObjectKey>),
}

impl Key {
    fn of(k: &ObjectKey) -> Key {
        let d = k.digest();
        let mut raw = [0u8; 32];
        if d.algorithm() != Algorithm::Sha256 || hex::decode_to_slice(d.hex(), &mut raw).is_err() {
            return Key::Other(Box::new(k.clone()));
        }
        match k {
            ObjectKey::Blob(_) => Key::Blob(raw),
            ObjectKey::Manifest(_) => Key::Manifest(raw),
        }
    }

    fn object(&self) -> ObjectKey {
        match self {
            Key::Blob(raw) => ObjectKey::Blob(Digest::from_raw(Algorithm::Sha256, raw)),
            Key::Manifest(raw) => ObjectKey::Manifest(Digest::from_raw(Algorithm::Sha256, raw)),
            Key::Other(k) => (**k).clone(),
        }
    }
}

/// An [`Entry`] in 16 bytes: with its 40-byte key and the LRU's two links, one index node is
/// one 80-byte allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed {
    len: u64,
    /// 512-byte units.
    disk: u32,
    /// Seconds since the epoch.
    used: u32,
}

impl Packed {
    fn of(e: Entry) -> Packed {
        Packed {
            len: e.len,
            disk: u32::try_from(e.disk.div_ceil(512)).unwrap_or(u32::MAX),
            used: u32::try_from(e.used).unwrap_or(u32::MAX),
        }
    }

    fn entry(self) -> Entry {
        Entry {
            len: self.len,
            disk: u64::from(self.disk) * 512,
            used: u64::from(self.used),
        }
    }
}

/// The LRU order and sizes of every committed object.
pub struct Index {
    /// Least recently used first. Unbounded: the budget is in bytes, enforced by eviction.
    lru: LruCache<Key, Packed>,
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
        self.put(Key::of(&key), Packed::of(e));
    }

    fn put(&mut self, key: Key, p: Packed) {
        if let Some(old) = self.lru.put(key, p) {
            self.total -= old.entry().disk;
        }
        self.total += p.entry().disk;
    }

    /// Forgets an object.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Entry> {
        let e = self.lru.pop(&Key::of(key))?.entry();
        self.total -= e.disk;
        Some(e)
    }

    /// A hit: the object's entry, now the most recently used.
    pub fn touch(&mut self, key: &ObjectKey) -> Option<Entry> {
        self.lru.get(&Key::of(key)).map(|p| p.entry())
    }

    /// Removes and returns the least recently used object.
    pub fn pop_lru(&mut self) -> Option<(ObjectKey, Entry)> {
        let (k, p) = self.lru.pop_lru()?;
        let e = p.entry();
        self.total -= e.disk;
        Some((k.object(), e))
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

/// Builds an [`Index`] from objects found in any order, ordered by their mtime (oldest = least
/// recently used). Holds each object compactly meanwhile (no allocation per object), so a
/// scan of a million objects does not leave its transient keys scattered between the index's
/// nodes.
#[derive(Default)]
pub struct IndexBuilder {
    found: Vec<(i64, Key, Packed)>,
}

impl IndexBuilder {
    /// Adds an object last modified at `mtime` (seconds since the epoch).
    pub fn push(&mut self, mtime: i64, key: &ObjectKey, e: Entry) {
        self.found.push((mtime, Key::of(key), Packed::of(e)));
    }

    /// The index, oldest mtime least recently used.
    pub fn build(mut self) -> Index {
        self.found.sort_by_key(|(mtime, _, _)| *mtime);
        let mut index = Index::new();
        for (_, key, p) in self.found {
            index.put(key, p);
        }
        index
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
        if let Some(x) = self.lock().lru.peek_mut(&Key::of(key)) {
            x.used = u32::try_from(used).unwrap_or(u32::MAX);
        }
    }

    /// Forgets an object.
    pub fn remove(&self, key: &ObjectKey) -> Option<Entry> {
        self.lock().remove(key)
    }

    /// Whether an object is indexed.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.lock().lru.contains(&Key::of(key))
    }

    /// Every indexed object, least recently used first.
    pub fn objects(&self) -> Vec<(ObjectKey, Entry)> {
        let ix = self.lock();
        ix.lru
            .iter()
            .rev()
            .map(|(k, p)| (k.object(), p.entry()))
            .collect()
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
        for (k, p) in ix.lru.iter().rev() {
            if freed >= bytes {
                break;
            }
            let e = p.entry();
            freed += e.disk;
            out.push((k.object(), e));
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
            for (k, p) in live.lru.iter().rev() {
                ix.put(k.clone(), *p);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(alg: &str, hex_len: usize, fill: char) -> Digest {
        format!("{alg}:{}", fill.to_string().repeat(hex_len))
            .parse()
            .unwrap()
    }

    #[test]
    fn keys_round_trip_and_stay_small() {
        for k in [
            ObjectKey::Blob(digest("sha256", 64, 'a')),
            ObjectKey::Manifest(digest("sha256", 64, '0')),
            ObjectKey::Blob(digest("sha512", 128, 'f')),
        ] {
            assert_eq!(Key::of(&k).object(), k);
        }
        assert!(matches!(
            Key::of(&ObjectKey::Blob(digest("sha512", 128, 'f'))),
            Key::Other(_)
        ));
        // One LRU node: key, entry and two links in one 80-byte allocation.
        assert_eq!(std::mem::size_of::<Key>(), 40);
        assert_eq!(std::mem::size_of::<Packed>(), 16);
    }

    #[test]
    fn entries_keep_their_figures_in_512_byte_units() {
        let mut ix = Index::new();
        let k = ObjectKey::Blob(digest("sha256", 64, 'b'));
        let e = Entry {
            len: 5000,
            disk: 8192,
            used: 1_800_000_000,
        };
        ix.insert(k.clone(), e);
        assert_eq!(ix.total(), 8192);
        assert_eq!(ix.touch(&k), Some(e));
        // An odd size rounds up, and the total stays consistent when it is removed.
        let k2 = ObjectKey::Manifest(digest("sha256", 64, 'c'));
        ix.insert(
            k2.clone(),
            Entry {
                len: 700,
                disk: 700,
                used: 0,
            },
        );
        assert_eq!(ix.total(), 8192 + 1024);
        assert_eq!(ix.remove(&k2).map(|e| e.disk), Some(1024));
        assert_eq!(ix.pop_lru(), Some((k, e)));
        assert_eq!(ix.total(), 0);
    }
}
