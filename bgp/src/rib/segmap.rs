//! A hash map split into segments that grow one at a time.
//!
//! A single hash table doubles at once: while it moves its entries, the
//! old and the new slot arrays are both allocated — 1.5 times the table
//! for a moment, and at a million routes that moment sets the process's
//! peak RSS (a 52 MB destination table peaks at 78 MB). Here a key's hash
//! picks one of [`SEGMENTS`] tables, which fill evenly and each grow by
//! themselves, so the moment costs a segment's worth.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map;
use std::hash::{BuildHasher, Hash};

use super::intern::FastState;
use super::memory::{self, Usage};

/// Number of segments.
pub const SEGMENTS: usize = 64;

/// See the module docs.
#[derive(Debug)]
pub struct SegMap<K, V> {
    segs: Vec<HashMap<K, V, FastState>>,
    /// Picks the segment (its own seed: the tables hash with theirs).
    pick: FastState,
    len: usize,
}

impl<K, V> Default for SegMap<K, V> {
    fn default() -> Self {
        SegMap {
            segs: (0..SEGMENTS).map(|_| HashMap::default()).collect(),
            pick: FastState::default(),
            len: 0,
        }
    }
}

impl<K: Eq + Hash, V> SegMap<K, V> {
    fn seg<Q: Hash + ?Sized>(&self, k: &Q) -> usize {
        (self.pick.hash_one(k) >> 58) as usize % SEGMENTS
    }

    /// The value of `k`.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.segs[self.seg(k)].get(k)
    }

    /// The stored key and value of `k`.
    pub fn get_key_value<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
    {
        self.segs[self.seg(k)].get_key_value(k)
    }

    /// Is `k` in the map?
    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(k).is_some()
    }

    /// Insert, returning the old value.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let i = self.seg(&k);
        let old = self.segs[i].insert(k, v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Remove, returning the value.
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.seg(k);
        let old = self.segs[i].remove(k);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Keep only the entries for which `f` is true.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        for s in &mut self.segs {
            s.retain(&mut f);
        }
        self.len = self.segs.iter().map(HashMap::len).sum();
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.segs.iter().flat_map(HashMap::iter)
    }

    /// Every value.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.segs.iter().flat_map(HashMap::values)
    }

    /// Every value, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.segs.iter_mut().flat_map(HashMap::values_mut)
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No entry?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slots of all segments.
    pub fn memory(&self) -> Usage {
        let mut u = Usage::default();
        for s in &self.segs {
            let m = memory::map(s);
            u.count += m.count;
            u.slots += m.slots;
            u.bytes += m.bytes;
        }
        u
    }
}

impl<'a, K, V> IntoIterator for &'a SegMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::FlatMap<
        std::slice::Iter<'a, HashMap<K, V, FastState>>,
        hash_map::Iter<'a, K, V>,
        fn(&'a HashMap<K, V, FastState>) -> hash_map::Iter<'a, K, V>,
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.segs.iter().flat_map(HashMap::iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Behaves as one map: inserts, replaces, removes, counts, iterates.
    #[test]
    fn behaves_as_one_map() {
        let mut m: SegMap<u64, u64> = SegMap::default();
        let mut reference = std::collections::HashMap::new();
        for i in 0..20_000u64 {
            let k = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 5000;
            match i % 3 {
                0 | 1 => assert_eq!(m.insert(k, i), reference.insert(k, i)),
                _ => assert_eq!(m.remove(&k), reference.remove(&k)),
            }
            assert_eq!(m.len(), reference.len());
        }
        for (k, v) in &reference {
            assert_eq!(m.get(k), Some(v));
            assert!(m.contains_key(k));
        }
        let mut all: Vec<(u64, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort();
        let mut want: Vec<(u64, u64)> = reference.into_iter().collect();
        want.sort();
        assert_eq!(all, want);
        m.retain(|k, _| k % 2 == 0);
        assert!(m.iter().all(|(k, _)| k % 2 == 0));
        assert_eq!(m.len(), m.iter().count());
        // Spread: no segment holds more than twice its share.
        let most = m.segs.iter().map(HashMap::len).max().unwrap_or(0);
        assert!(most <= 2 * m.len() / SEGMENTS + 8, "{most} of {}", m.len());
    }
}
