//! The LRU list of the index without an allocation per object: nodes in one `Vec` (60 bytes
//! each, linked by `u32` slot numbers, freed slots reused), and a hash table of `u32` slots
//! keyed by the node's digest bytes (hashed with a per-process random key, so chosen digests
//! cannot flood one bucket). About 70 bytes per object for a million objects, against ~127 with
//! a boxed node per object.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// "No slot".
const NIL: u32 = u32::MAX;
/// The `kind` of a free slot.
const FREE: u8 = u8::MAX;

/// A key: a kind (the caller's: blob, manifest, ...) and 32 bytes (a sha256 digest, or a hash
/// of a longer key the caller keeps elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct SlotKey {
    pub(super) kind: u8,
    pub(super) bytes: [u8; 32],
}

/// What a node holds besides its key (see `Packed` in the parent module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Value {
    pub(super) len: u64,
    pub(super) disk: u32,
    pub(super) used: u32,
}

/// One object: 4-byte aligned, 60 bytes.
#[derive(Clone, Copy)]
struct Node {
    bytes: [u8; 32],
    /// `len` split so the node needs no 8-byte alignment.
    len: [u32; 2],
    disk: u32,
    used: u32,
    /// Towards the most recently used (NIL at the head).
    prev: u32,
    /// Towards the least recently used (NIL at the tail); the next free slot when free.
    next: u32,
    kind: u8,
}

impl Node {
    fn key(&self) -> SlotKey {
        SlotKey {
            kind: self.kind,
            bytes: self.bytes,
        }
    }

    fn value(&self) -> Value {
        Value {
            len: u64::from(self.len[0]) | (u64::from(self.len[1]) << 32),
            disk: self.disk,
            used: self.used,
        }
    }

    fn set_value(&mut self, v: Value) {
        self.len = [v.len as u32, (v.len >> 32) as u32];
        self.disk = v.disk;
        self.used = v.used;
    }
}

/// An unbounded LRU map from [`SlotKey`] to [`Value`].
pub(super) struct Slab {
    nodes: Vec<Node>,
    /// First free slot (a chain through `next`).
    free: u32,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    table: HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
    len: usize,
}

impl Default for Slab {
    fn default() -> Slab {
        Slab {
            nodes: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            table: HashTable::new(),
            hasher: Default::default(),
            len: 0,
        }
    }
}

impl Slab {
    fn hash(hasher: &std::collections::hash_map::RandomState, k: &SlotKey) -> u64 {
        hasher.hash_one(k)
    }

    fn find(&self, k: &SlotKey) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(Self::hash(&self.hasher, k), |&i| {
                let n = &nodes[i as usize];
                n.kind == k.kind && n.bytes == k.bytes
            })
            .copied()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.nodes[o as usize].prev = i,
        }
        self.head = i;
    }

    /// Inserts or replaces `k` as the most recently used; the replaced value.
    pub(super) fn put(&mut self, k: SlotKey, v: Value) -> Option<Value> {
        debug_assert_ne!(k.kind, FREE);
        if let Some(i) = self.find(&k) {
            let old = self.nodes[i as usize].value();
            self.nodes[i as usize].set_value(v);
            self.unlink(i);
            self.push_front(i);
            return Some(old);
        }
        let mut node = Node {
            bytes: k.bytes,
            len: [0, 0],
            disk: 0,
            used: 0,
            prev: NIL,
            next: NIL,
            kind: k.kind,
        };
        node.set_value(v);
        let i = match self.free {
            NIL => {
                let i = u32::try_from(self.nodes.len()).expect("fewer than 4 billion objects");
                assert!(i != NIL, "fewer than 4 billion objects");
                self.nodes.push(node);
                i
            }
            f => {
                self.free = self.nodes[f as usize].next;
                self.nodes[f as usize] = node;
                f
            }
        };
        self.push_front(i);
        let (nodes, hasher) = (&self.nodes, &self.hasher);
        self.table.insert_unique(Self::hash(hasher, &k), i, |&j| {
            Self::hash(hasher, &nodes[j as usize].key())
        });
        self.len += 1;
        None
    }

    /// The value of `k`, now the most recently used.
    pub(super) fn get(&mut self, k: &SlotKey) -> Option<Value> {
        let i = self.find(k)?;
        self.unlink(i);
        self.push_front(i);
        Some(self.nodes[i as usize].value())
    }

    /// Sets `used` of `k` without changing the order.
    pub(super) fn set_used(&mut self, k: &SlotKey, used: u32) {
        if let Some(i) = self.find(k) {
            self.nodes[i as usize].used = used;
        }
    }

    /// Whether `k` is in.
    pub(super) fn contains(&self, k: &SlotKey) -> bool {
        self.find(k).is_some()
    }

    /// Removes `k`.
    pub(super) fn pop(&mut self, k: &SlotKey) -> Option<Value> {
        let nodes = &self.nodes;
        let entry = self
            .table
            .find_entry(Self::hash(&self.hasher, k), |&i| {
                let n = &nodes[i as usize];
                n.kind == k.kind && n.bytes == k.bytes
            })
            .ok()?;
        let (i, _) = entry.remove();
        self.release(i)
    }

    fn release(&mut self, i: u32) -> Option<Value> {
        let v = self.nodes[i as usize].value();
        self.unlink(i);
        let n = &mut self.nodes[i as usize];
        n.kind = FREE;
        n.next = self.free;
        self.free = i;
        self.len -= 1;
        Some(v)
    }

    /// Removes and returns the least recently used.
    pub(super) fn pop_lru(&mut self) -> Option<(SlotKey, Value)> {
        let k = self.nodes.get(self.tail as usize)?.key();
        let v = self.pop(&k)?;
        Some((k, v))
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Entries from the least to the most recently used.
    pub(super) fn iter_lru_first(&self) -> impl Iterator<Item = (SlotKey, Value)> + '_ {
        let mut at = self.tail;
        std::iter::from_fn(move || {
            let n = self.nodes.get(at as usize)?;
            at = n.prev;
            Some((n.key(), n.value()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u32) -> SlotKey {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        SlotKey {
            kind: (i % 2) as u8,
            bytes,
        }
    }

    fn v(i: u64) -> Value {
        Value {
            len: i << 33 | 7,
            disk: i as u32,
            used: 0,
        }
    }

    fn order(s: &Slab) -> Vec<SlotKey> {
        s.iter_lru_first().map(|(k, _)| k).collect()
    }

    #[test]
    fn nodes_are_small() {
        assert_eq!(std::mem::size_of::<Node>(), 60);
    }

    #[test]
    fn behaves_as_an_lru_map() {
        let mut s = Slab::default();
        for i in 0..5 {
            assert_eq!(s.put(k(i), v(i as u64)), None);
        }
        assert_eq!(order(&s), (0..5).map(k).collect::<Vec<_>>());
        assert_eq!(
            s.get(&k(1)),
            Some(v(1)),
            "values round-trip, len above 4 GiB too"
        );
        assert_eq!(order(&s), [0, 2, 3, 4, 1].map(k).to_vec());
        assert_eq!(s.put(k(2), v(20)), Some(v(2)));
        assert_eq!(order(&s), [0, 3, 4, 1, 2].map(k).to_vec());
        assert_eq!(s.pop(&k(4)), Some(v(4)));
        assert_eq!(s.pop(&k(4)), None);
        assert!(!s.contains(&k(4)));
        assert_eq!(s.pop_lru(), Some((k(0), v(0))));
        assert_eq!(s.len(), 3);
        // Freed slots are reused.
        let slots = s.nodes.len();
        s.put(k(10), v(10));
        s.put(k(11), v(11));
        assert_eq!(s.nodes.len(), slots);
        s.set_used(&k(3), 99);
        assert_eq!(s.get(&k(3)).unwrap().used, 99);
        assert_eq!(order(&s), [1, 2, 10, 11, 3].map(k).to_vec());
        while s.pop_lru().is_some() {}
        assert_eq!(s.len(), 0);
        assert_eq!(order(&s), vec![]);
        s.put(k(5), v(5));
        assert_eq!(order(&s), vec![k(5)]);
    }

    #[test]
    fn matches_a_reference_model_under_random_operations() {
        // A deterministic pseudo-random sequence against a Vec-based model.
        let mut s = Slab::default();
        let mut model: Vec<(SlotKey, Value)> = Vec::new(); // LRU first
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = k((x % 300) as u32);
            match x % 5 {
                0 | 1 => {
                    let val = v(step);
                    let old = model
                        .iter()
                        .position(|(mk, _)| *mk == key)
                        .map(|p| model.remove(p).1);
                    model.push((key, val));
                    assert_eq!(s.put(key, val), old);
                }
                2 => {
                    let got = model.iter().position(|(mk, _)| *mk == key).map(|p| {
                        let e = model.remove(p);
                        model.push(e);
                        e.1
                    });
                    assert_eq!(s.get(&key), got);
                }
                3 => {
                    let got = model
                        .iter()
                        .position(|(mk, _)| *mk == key)
                        .map(|p| model.remove(p).1);
                    assert_eq!(s.pop(&key), got);
                }
                _ => {
                    let got = (!model.is_empty()).then(|| model.remove(0));
                    assert_eq!(s.pop_lru(), got);
                }
            }
            assert_eq!(s.len(), model.len());
        }
        assert_eq!(s.iter_lru_first().collect::<Vec<_>>(), model);
    }
}
