//! Hash-consed route attributes: every distinct attribute set (path
//! attributes + next hop) is stored once and shared by `Arc` across all the
//! prefixes and peers that carry it, which is what keeps a route near the
//! size of its key in the tables.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use crate::wire::{NextHop, PathAttrs};

/// The attributes of a route as stored in the RIB. Made by
/// [`Interner::intern`], which hashes the content once and keeps the hash:
/// lookups, inserts and table growth never walk the attributes again.
#[derive(Clone, Debug)]
pub struct RouteAttrs {
    /// Path attributes (NEXT_HOP field cleared: the next hop is below).
    pub attrs: PathAttrs,
    /// Next hop, whatever the family.
    pub next_hop: NextHop,
    /// Hash of `attrs` and `next_hop` under the interner's seed.
    hash: u64,
}

impl PartialEq for RouteAttrs {
    fn eq(&self, o: &Self) -> bool {
        self.hash == o.hash && self.next_hop == o.next_hop && self.attrs == o.attrs
    }
}

impl Eq for RouteAttrs {}

impl Hash for RouteAttrs {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash);
    }
}

/// The interning table.
#[derive(Debug, Default)]
pub struct Interner {
    set: HashSet<Arc<RouteAttrs>, FastState>,
    /// Seed of the content hash (the set's own hasher only folds it).
    content: FastState,
    since_gc: usize,
}

impl Interner {
    /// The shared copy of these attributes.
    pub fn intern(&mut self, attrs: PathAttrs, next_hop: NextHop) -> Arc<RouteAttrs> {
        let hash = self.content.hash_one((&attrs, &next_hop));
        let a = RouteAttrs {
            attrs,
            next_hop,
            hash,
        };
        if let Some(x) = self.set.get(&a) {
            return x.clone();
        }
        let x = Arc::new(a);
        self.set.insert(x.clone());
        self.since_gc += 1;
        if self.since_gc > 4096 && self.since_gc > self.set.len() {
            self.gc();
        }
        x
    }

    /// Drop attribute sets no route uses any more.
    pub fn gc(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.since_gc = 0;
    }

    /// Distinct attribute sets held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// No attribute set held?
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// A fast keyed hasher for the RIB's tables (prefixes, attribute sets): a
/// folded 64×64→128 multiply with a per-process random seed, so a peer
/// cannot pick colliding keys without knowing the seed.
#[derive(Clone, Copy, Debug)]
pub struct FastState {
    seed: u64,
}

impl Default for FastState {
    fn default() -> Self {
        // RandomState is randomly keyed per process; hash a constant with it
        // to draw our seed.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x6d61_7267_6179);
        FastState {
            seed: h.finish() | 1,
        }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher { h: self.seed }
    }
}

/// See [`FastState`].
#[derive(Clone, Copy, Debug)]
pub struct FastHasher {
    h: u64,
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w) ^ (rest.len() as u64) << 56);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.h = fold(self.h ^ i, K);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        fold(self.h, K ^ 0x2545_f491_4f6c_dd1d)
    }
}

/// Hash one value with a state (used by tests and the RIB).
pub fn hash_one<T: Hash>(s: &FastState, v: &T) -> u64 {
    s.hash_one(v)
}
