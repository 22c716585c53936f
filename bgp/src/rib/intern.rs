//! Hash-consed route attributes: every distinct attribute set (path
//! attributes + next hop) is stored once and shared by `Arc` across all the
//! prefixes and peers that carry it, which is what keeps a route near the
//! size of its key in the tables.
//!
//! An attribute set is stored compactly, because a table whose routes
//! each carry their own (a MED per route, say) holds a million of them:
//! the fields the decision process reads inline, the AS path as one boxed
//! slice of words, and everything else (communities, reflection,
//! aggregation, unknown attributes) in one boxed [`PathAttrs`] present only
//! when the route has any of it. [`RouteAttrs::attrs`] rebuilds the full
//! [`PathAttrs`] for export and display.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::memory::{Usage, heap};
use super::segmap::SegMap;
use crate::wire::attrs::{AsSegment, SegmentKind};
use crate::wire::{AsPath, NextHop, Origin, PathAttrs};

/// The attributes of a route as stored in the RIB. Made by
/// [`Interner::intern`], which hashes the content once and keeps the hash:
/// lookups, inserts and table growth never walk the attributes again.
#[derive(Clone, Debug)]
pub struct RouteAttrs {
    /// Hash of the content under the interner's seed.
    hash: u64,
    /// Next hop, whatever the family.
    pub next_hop: NextHop,
    origin: Option<Origin>,
    med: Option<u32>,
    local_pref: Option<u32>,
    /// Per segment: a word `kind << 24 | count`, then the `count` ASes.
    as_path: Option<Box<[u32]>>,
    /// Every other attribute, when the route has any (the fields above
    /// and NEXT_HOP are left empty in it).
    rest: Option<Box<PathAttrs>>,
}

impl PartialEq for RouteAttrs {
    fn eq(&self, o: &Self) -> bool {
        self.hash == o.hash
            && self.next_hop == o.next_hop
            && self.origin == o.origin
            && self.med == o.med
            && self.local_pref == o.local_pref
            && self.as_path == o.as_path
            && self.rest == o.rest
    }
}

impl Eq for RouteAttrs {}

impl Hash for RouteAttrs {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash);
    }
}

fn pack_path(p: &AsPath) -> Box<[u32]> {
    let mut w = Vec::with_capacity(p.segments.iter().map(|s| 1 + s.asns.len()).sum());
    for s in &p.segments {
        // Segments hold at most 255 ASes off the wire; the count field
        // takes 24 bits.
        w.push(u32::from(s.kind.to_u8()) << 24 | (s.asns.len() as u32 & 0x00ff_ffff));
        w.extend_from_slice(&s.asns);
    }
    w.into_boxed_slice()
}

/// The segments of a packed path: (kind, ASes).
fn segments(w: &[u32]) -> impl Iterator<Item = (Option<SegmentKind>, &[u32])> {
    let mut rest = w;
    std::iter::from_fn(move || {
        let (&head, tail) = rest.split_first()?;
        let n = ((head & 0x00ff_ffff) as usize).min(tail.len());
        let (asns, next) = tail.split_at(n);
        rest = next;
        Some((SegmentKind::from_u8((head >> 24) as u8), asns))
    })
}

impl RouteAttrs {
    fn new(a: &PathAttrs, next_hop: NextHop, hash: u64) -> Self {
        let rest = PathAttrs {
            atomic_aggregate: a.atomic_aggregate,
            aggregator: a.aggregator,
            communities: a.communities.clone(),
            large_communities: a.large_communities.clone(),
            ext_communities: a.ext_communities.clone(),
            originator_id: a.originator_id,
            cluster_list: a.cluster_list.clone(),
            unknown: a.unknown.clone(),
            partial: a.partial,
            ..PathAttrs::default()
        };
        RouteAttrs {
            hash,
            next_hop,
            origin: a.origin,
            med: a.med,
            local_pref: a.local_pref,
            as_path: a.as_path.as_ref().map(pack_path),
            rest: (rest != PathAttrs::default()).then(|| Box::new(rest)),
        }
    }

    /// The path attributes in full (NEXT_HOP empty: see `next_hop`).
    pub fn attrs(&self) -> PathAttrs {
        let mut a = self.rest.as_deref().cloned().unwrap_or_default();
        a.origin = self.origin;
        a.med = self.med;
        a.local_pref = self.local_pref;
        a.as_path = self.as_path.as_deref().map(|w| AsPath {
            segments: segments(w)
                .filter_map(|(kind, asns)| {
                    Some(AsSegment {
                        kind: kind?,
                        asns: asns.to_vec(),
                    })
                })
                .collect(),
        });
        a
    }

    /// ORIGIN.
    pub fn origin(&self) -> Option<Origin> {
        self.origin
    }

    /// MULTI_EXIT_DISC.
    pub fn med(&self) -> Option<u32> {
        self.med
    }

    /// LOCAL_PREF.
    pub fn local_pref(&self) -> Option<u32> {
        self.local_pref
    }

    /// Was there an AS_PATH at all?
    pub fn has_as_path(&self) -> bool {
        self.as_path.is_some()
    }

    /// AS path length for the decision process ([`AsPath::path_len`]).
    pub fn as_path_len(&self) -> usize {
        segments(self.as_path.as_deref().unwrap_or_default())
            .map(|(kind, asns)| match kind {
                Some(SegmentKind::Sequence) => asns.len(),
                Some(SegmentKind::Set) => 1,
                _ => 0,
            })
            .sum()
    }

    /// The neighbouring AS ([`AsPath::first_as`]).
    pub fn first_as(&self) -> Option<u32> {
        let (kind, asns) = segments(self.as_path.as_deref()?).next()?;
        if kind == Some(SegmentKind::Sequence) {
            asns.first().copied()
        } else {
            None
        }
    }

    /// Does the AS path hold `asn`?
    pub fn path_contains(&self, asn: u32) -> bool {
        segments(self.as_path.as_deref().unwrap_or_default()).any(|(_, a)| a.contains(&asn))
    }

    /// ORIGINATOR_ID (RFC 4456).
    pub fn originator_id(&self) -> Option<Ipv4Addr> {
        self.rest.as_ref().and_then(|r| r.originator_id)
    }

    /// CLUSTER_LIST (RFC 4456).
    pub fn cluster_list(&self) -> &[Ipv4Addr] {
        self.rest.as_ref().map_or(&[], |r| &r.cluster_list)
    }

    /// Standard communities (RFC 1997).
    pub fn communities(&self) -> &[u32] {
        self.rest.as_ref().map_or(&[], |r| &r.communities)
    }

    /// Bytes this attribute set owns on the heap (besides its own block).
    pub fn heap_bytes(&self) -> usize {
        let path = self.as_path.as_ref().map_or(0, |w| heap(w.len() * 4));
        path + self
            .rest
            .as_ref()
            .map_or(0, |r| heap(std::mem::size_of::<PathAttrs>()) + owned_by(r))
    }
}

/// Heap bytes owned by the vectors of `a` (AS path excepted).
fn owned_by(a: &PathAttrs) -> usize {
    let v = |cap: usize, size: usize| heap(cap * size);
    v(a.communities.capacity(), 4)
        + v(a.large_communities.capacity(), 12)
        + v(a.ext_communities.capacity(), 8)
        + v(a.cluster_list.capacity(), 4)
        + v(
            a.unknown.capacity(),
            std::mem::size_of::<crate::wire::attrs::RawAttr>(),
        )
        + a.unknown.iter().map(|u| heap(u.value.len())).sum::<usize>()
}

/// The interning table.
#[derive(Debug, Default)]
pub struct Interner {
    set: SegMap<Arc<RouteAttrs>, ()>,
    /// Seed of the content hash (the set's own hasher only folds it).
    content: FastState,
    since_gc: usize,
}

impl Interner {
    /// The shared copy of these attributes (their NEXT_HOP field is
    /// ignored: the next hop is `next_hop`).
    pub fn intern(&mut self, attrs: &PathAttrs, next_hop: NextHop) -> Arc<RouteAttrs> {
        let mut a = RouteAttrs::new(attrs, next_hop, 0);
        a.hash = self.content.hash_one((
            &a.next_hop,
            a.origin,
            a.med,
            a.local_pref,
            &a.as_path,
            &a.rest,
        ));
        if let Some((x, ())) = self.set.get_key_value(&a) {
            return x.clone();
        }
        let x = Arc::new(a);
        self.set.insert(x.clone(), ());
        self.since_gc += 1;
        if self.since_gc > 4096 && self.since_gc > self.set.len() {
            self.gc();
        }
        x
    }

    /// Drop attribute sets no route uses any more.
    pub fn gc(&mut self) {
        self.set.retain(|a, ()| Arc::strong_count(a) > 1);
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

    /// Memory of the table's slots, and of the attribute sets (with what
    /// they own on the heap).
    pub(super) fn memory(&self) -> (Usage, Usage) {
        let table = self.set.memory();
        let mut attrs = Usage {
            count: self.set.len(),
            ..Usage::default()
        };
        for (a, ()) in &self.set {
            // The Arc's block: two counters and the value.
            attrs.bytes += heap(16 + std::mem::size_of::<RouteAttrs>()) + a.heap_bytes();
        }
        (table, attrs)
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
