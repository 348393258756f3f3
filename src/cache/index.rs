//! The in-memory index of the cache: the LRU order and sizes of committed objects, and the
//! reservations of fills in progress.
//!
//! The index signals a [`tokio::sync::Notify`] whenever it grows (an insert or a reservation):
//! the evictor waits on it. Nothing here knows eviction exists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

mod slab;
use slab::{Slab, SlotKey, Value};
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

/// How the index holds an [`ObjectKey`]: kind 0 (blob) or 1 (manifest) with the sha256
/// digest's 32 bytes, no allocation of its own (a cache holds a million of them); anything else
/// (sha512) kind 2 or 3 with the SHA-256 of its digest string, the key itself kept aside.
fn slot_key(k: &ObjectKey) -> SlotKey {
    let d = k.digest();
    let manifest = matches!(k, ObjectKey::Manifest(_)) as u8;
    let mut bytes = [0u8; 32];
    if d.algorithm() == Algorithm::Sha256 && hex::decode_to_slice(d.hex(), &mut bytes).is_ok() {
        return SlotKey {
            kind: manifest,
            bytes,
        };
    }
    use sha2::Digest as _;
    SlotKey {
        kind: 2 + manifest,
        bytes: sha2::Sha256::digest(d.to_string().as_bytes()).into(),
    }
}

/// An [`Entry`] as a node holds it: disk in 512-byte units (rounded up, at most 2 TiB), last
/// use as u32 seconds.
fn value_of(e: Entry) -> Value {
    Value {
        len: e.len,
        disk: u32::try_from(e.disk.div_ceil(512)).unwrap_or(u32::MAX),
        used: u32::try_from(e.used).unwrap_or(u32::MAX),
    }
}

fn entry_of(v: Value) -> Entry {
    Entry {
        len: v.len,
        disk: u64::from(v.disk) * 512,
        used: u64::from(v.used),
    }
}

/// The LRU order and sizes of every committed object.
pub struct Index {
    /// The LRU list. Unbounded: the budget is in bytes, enforced by eviction.
    lru: Slab,
    /// The keys that are not sha256 (kinds 2 and 3 of [`slot_key`]), by slot key.
    others: std::collections::HashMap<SlotKey, ObjectKey>,
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
            lru: Slab::default(),
            others: Default::default(),
            total: 0,
            reserved: 0,
            held: 0,
        }
    }

    /// Adds (or replaces) an object as the most recently used.
    pub fn insert(&mut self, key: ObjectKey, e: Entry) {
        let k = slot_key(&key);
        if k.kind >= 2 {
            self.others.insert(k, key);
        }
        self.put(k, value_of(e));
    }

    fn put(&mut self, key: SlotKey, v: Value) {
        if let Some(old) = self.lru.put(key, v) {
            self.total -= entry_of(old).disk;
        }
        self.total += entry_of(v).disk;
    }

    /// The [`ObjectKey`] of a slot key.
    fn object(&self, k: &SlotKey) -> ObjectKey {
        match k.kind {
            0 => ObjectKey::Blob(Digest::from_raw(Algorithm::Sha256, &k.bytes)),
            1 => ObjectKey::Manifest(Digest::from_raw(Algorithm::Sha256, &k.bytes)),
            _ => self.others[k].clone(),
        }
    }

    /// Forgets an object.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Entry> {
        let k = slot_key(key);
        let e = entry_of(self.lru.pop(&k)?);
        if k.kind >= 2 {
            self.others.remove(&k);
        }
        self.total -= e.disk;
        Some(e)
    }

    /// A hit: the object's entry, now the most recently used.
    pub fn touch(&mut self, key: &ObjectKey) -> Option<Entry> {
        self.lru.get(&slot_key(key)).map(entry_of)
    }

    /// Removes and returns the least recently used object.
    pub fn pop_lru(&mut self) -> Option<(ObjectKey, Entry)> {
        let (k, v) = self.lru.pop_lru()?;
        let e = entry_of(v);
        self.total -= e.disk;
        let key = match k.kind {
            0 | 1 => self.object(&k),
            _ => self.others.remove(&k).expect("kept aside"),
        };
        Some((key, e))
    }

    /// Every object, least recently used first.
    fn iter_lru_first(&self) -> impl Iterator<Item = (ObjectKey, Entry)> + '_ {
        self.lru
            .iter_lru_first()
            .map(|(k, v)| (self.object(&k), entry_of(v)))
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.lru.len() == 0
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
    found: Vec<(i64, ObjectKeyOrSlot, Value)>,
}

/// A found object's key: compact when sha256, else the key itself (rare).
enum ObjectKeyOrSlot {
    Slot(SlotKey),
    Key(ObjectKey),
}

impl IndexBuilder {
    /// Adds an object last modified at `mtime` (seconds since the epoch).
    pub fn push(&mut self, mtime: i64, key: &ObjectKey, e: Entry) {
        let k = slot_key(key);
        let k = match k.kind {
            0 | 1 => ObjectKeyOrSlot::Slot(k),
            _ => ObjectKeyOrSlot::Key(key.clone()),
        };
        self.found.push((mtime, k, value_of(e)));
    }

    /// The index, oldest mtime least recently used.
    pub fn build(mut self) -> Index {
        self.found.sort_by_key(|(mtime, _, _)| *mtime);
        let mut index = Index::new();
        for (_, key, v) in self.found {
            match key {
                ObjectKeyOrSlot::Slot(k) => index.put(k, v),
                ObjectKeyOrSlot::Key(k) => index.insert(k, entry_of(v)),
            }
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
        self.lock()
            .lru
            .set_used(&slot_key(key), u32::try_from(used).unwrap_or(u32::MAX));
    }

    /// Forgets an object.
    pub fn remove(&self, key: &ObjectKey) -> Option<Entry> {
        self.lock().remove(key)
    }

    /// Whether an object is indexed.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.lock().lru.contains(&slot_key(key))
    }

    /// Every indexed object, least recently used first.
    pub fn objects(&self) -> Vec<(ObjectKey, Entry)> {
        self.lock().iter_lru_first().collect()
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
        for (k, e) in ix.iter_lru_first() {
            if freed >= bytes {
                break;
            }
            freed += e.disk;
            out.push((k, e));
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
            for (k, e) in live.iter_lru_first() {
                ix.insert(k, e);
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
            let mut ix = Index::new();
            let e = Entry {
                len: 1,
                disk: 512,
                used: 2,
            };
            ix.insert(k.clone(), e);
            assert_eq!(
                ix.iter_lru_first().collect::<Vec<_>>(),
                vec![(k.clone(), e)]
            );
            assert_eq!(ix.pop_lru(), Some((k, e)));
            assert!(ix.others.is_empty());
        }
        assert_eq!(
            slot_key(&ObjectKey::Blob(digest("sha512", 128, 'f'))).kind,
            2
        );
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
