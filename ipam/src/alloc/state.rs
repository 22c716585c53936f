//! The allocator's in-memory view, owned by its worker task: pools, a cache
//! of blocks, the handle index and an interval map of occupied CIDRs. All of
//! it is rebuilt from a store listing; none of it is authoritative (every
//! write is a CAS against the store).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use tracing::warn;

use crate::cidr::{Cidr, Family, ip_to_u128};
use crate::model::{
    Allocation, AllowedUse, IpPool, IpamBlockSpec, IpamConfig, block_name, host_affinity,
};
use crate::store::{BlockObject, PoolObject};

use super::{Assigned, NodeInfo};

/// Where a handle's address lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Slot {
    pub block: String,
    pub ordinal: u32,
}

/// What the cache keeps of a block this node may not write to (another
/// node's block holding none of this node's allocations): enough to claim
/// around it, to choose it for a borrow or a reclaim, to order its watch
/// events, for the pool figures, and for the leak GC to know whether it
/// holds allocations of a node that is gone. Before a write, the whole
/// block is read from the store ([`View::pinned`]). At 5,000 nodes this
/// is a few hundred bytes per block instead of every allocation's handle
/// and attributes and the free list (tens of MB per agent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    pub resource_version: Box<str>,
    pub cidr: Cidr,
    pub affinity: Option<Box<str>>,
    pub sequence: u64,
    pub created_at: u64,
    /// Number of allocations.
    pub allocated: u32,
    /// Some free ordinal was never used (usable at once).
    pub fresh_free: bool,
    /// Earliest and latest release time among the free ordinals that were
    /// released (for the cool-down).
    pub released: Option<(u64, u64)>,
    /// The nodes that made its allocations (sorted, once each); an
    /// allocation naming no node keeps the block whole (it is indexed).
    pub makers: Box<[Box<str>]>,
}

impl Summary {
    pub fn of(o: &BlockObject) -> Summary {
        let s = &o.spec;
        let mut released: Option<(u64, u64)> = None;
        let mut fresh_free = false;
        for f in &s.free {
            match f.released_at {
                None => fresh_free = true,
                Some(t) => {
                    released = Some(released.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
                }
            }
        }
        let mut makers: Vec<&str> = s
            .allocations
            .iter()
            .filter_map(|a| a.attrs.node.as_deref())
            .collect();
        makers.sort_unstable();
        makers.dedup();
        Summary {
            resource_version: o.resource_version.as_str().into(),
            cidr: s.cidr,
            affinity: s.affinity.as_deref().map(Into::into),
            sequence: s.sequence,
            created_at: s.created_at,
            allocated: u32::try_from(s.allocations.len()).unwrap_or(u32::MAX),
            fresh_free,
            released,
            makers: makers.into_iter().map(Into::into).collect(),
        }
    }

    /// [`IpamBlockSpec::usable_count`] `> 0`.
    pub fn has_usable(&self, now_ms: u64, cooldown_ms: u64) -> bool {
        self.fresh_free
            || self
                .released
                .is_some_and(|(first, _)| first.saturating_add(cooldown_ms) <= now_ms)
    }

    /// [`IpamBlockSpec::has_cooling`].
    pub fn has_cooling(&self, now_ms: u64, cooldown_ms: u64) -> bool {
        self.released
            .is_some_and(|(_, last)| last.saturating_add(cooldown_ms) > now_ms)
    }
}

pub(crate) struct View {
    pub node: NodeInfo,
    pub affinity: String,
    pub config: IpamConfig,
    pub pools: Vec<IpPool>,
    pub pool_errors: Vec<String>,
    /// The blocks kept whole: those affine to this node, those holding an
    /// allocation of the handle index ([`View::indexed`]), and pinned ones.
    /// Every slot of the index is in one of these.
    pub blocks: BTreeMap<String, BlockObject>,
    /// Every other valid block, summarised (a name is in `blocks` or here,
    /// never both).
    pub summaries: BTreeMap<String, Summary>,
    /// Blocks kept whole whatever they hold: read from the store for a
    /// write this node plans (a borrow, a reclaim, a release of another
    /// node's allocation). The worker unpins them when no pending op needs
    /// them (its `pins`).
    pub pinned: HashSet<String>,
    /// handle → slots, rebuilt from the cached blocks: the allocations this
    /// node may look up by handle (see [`View::indexed`]), not every
    /// allocation of the cluster (150k handles at 5,000 nodes, ~35 MB).
    pub index: HashMap<String, Vec<Slot>>,
    /// (family, first address) → (last address, block name), for every
    /// cached block including invalid ones: CIDRs that must not be claimed.
    pub occupied: BTreeMap<(Family, u128), (u128, String)>,
    /// Blocks that failed validation: never written, never allocated from.
    pub invalid: BTreeMap<String, String>,
    /// Synced and the last store call succeeded.
    pub ready: bool,
    /// Last store error, if the last call failed.
    pub last_error: Option<String>,
}

pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn range_of(c: &Cidr) -> (u128, u128) {
    let start = ip_to_u128(c.network());
    (start, start.saturating_add(c.size().saturating_sub(1)))
}

impl View {
    pub fn new(node: NodeInfo, config: IpamConfig) -> Self {
        View {
            affinity: host_affinity(&node.name),
            node,
            config,
            pools: Vec::new(),
            pool_errors: Vec::new(),
            blocks: BTreeMap::new(),
            summaries: BTreeMap::new(),
            pinned: HashSet::new(),
            index: HashMap::new(),
            occupied: BTreeMap::new(),
            invalid: BTreeMap::new(),
            ready: false,
            last_error: None,
        }
    }

    /// Replaces the pools; invalid or overlapping pools are dropped and
    /// reported in `pool_errors`. Of two overlapping pools the one earlier in
    /// `objs` is kept: callers pass them oldest first (the agent sorts by
    /// creation time) so that every node keeps the same one.
    pub fn set_pools(&mut self, objs: Vec<PoolObject>) {
        self.pools.clear();
        self.pool_errors.clear();
        for o in objs {
            match IpPool::from_params(&o.name, o.spec) {
                Ok(p) => {
                    if let Some(q) = self.pools.iter().find(|q| {
                        q.spec.cidr.contains_cidr(&p.spec.cidr)
                            || p.spec.cidr.contains_cidr(&q.spec.cidr)
                    }) {
                        let msg = format!(
                            "IPPool {} ({}) overlaps IPPool {} ({}), which came first: {} is ignored",
                            p.name, p.spec.cidr, q.name, q.spec.cidr, p.name
                        );
                        warn!(%msg);
                        self.pool_errors.push(msg);
                    } else {
                        self.pools.push(p);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "ignoring invalid pool");
                    self.pool_errors.push(e.to_string());
                }
            }
        }
    }

    /// Replaces every cached block.
    /// Takes a snapshot from the block watch (a relist). It may have been
    /// listed before writes this allocator has made since, so it never rolls
    /// a block back: a block is replaced only by an equal or higher sequence
    /// (every write increments it), and a cached block missing from the
    /// snapshot is kept — if it was really deleted, the next write to it
    /// fails with NotFound and the block is re-read.
    pub fn merge_all_blocks(&mut self, objs: Vec<BlockObject>) {
        for o in objs {
            let newer = self
                .cached_version(&o.name)
                .is_none_or(|(_, seq)| o.spec.sequence >= seq);
            if newer {
                self.put_block(o);
            }
        }
    }

    pub fn set_all_blocks(&mut self, objs: Vec<BlockObject>) {
        self.blocks.clear();
        self.summaries.clear();
        self.index.clear();
        self.occupied.clear();
        self.invalid.clear();
        for o in objs {
            self.put_block(o);
        }
    }

    /// The cached block's resourceVersion and sequence, whole or summarised.
    pub fn cached_version(&self, name: &str) -> Option<(&str, u64)> {
        match self.blocks.get(name) {
            Some(b) => Some((b.resource_version.as_str(), b.spec.sequence)),
            None => self
                .summaries
                .get(name)
                .map(|s| (&*s.resource_version, s.sequence)),
        }
    }

    /// A cached block's affinity, whole or summarised.
    pub fn affinity_of(&self, name: &str) -> Option<&str> {
        match self.blocks.get(name) {
            Some(b) => b.spec.affinity.as_deref(),
            None => self.summaries.get(name)?.affinity.as_deref(),
        }
    }

    /// Whether a block must be kept whole: this node may write to it.
    fn keep_whole(&self, o: &BlockObject) -> bool {
        o.spec.affinity.as_deref() == Some(self.affinity.as_str())
            || self.pinned.contains(&o.name)
            || o.spec.allocations.iter().any(|a| self.indexed(a))
    }

    /// Summarises a whole block again once nothing needs it whole.
    pub fn unpin(&mut self, name: &str) {
        if !self.pinned.remove(name) {
            return;
        }
        if let Some(b) = self.blocks.get(name)
            && !self.keep_whole(b)
            && let Some(b) = self.blocks.remove(name)
        {
            self.summaries.insert(b.name.clone(), Summary::of(&b));
        }
    }

    fn unindex(&mut self, name: &str) {
        if let Some(old) = self.summaries.remove(name) {
            let (s, _) = range_of(&old.cidr);
            self.occupied.remove(&(old.cidr.family(), s));
        }
        if let Some(old) = self.blocks.remove(name) {
            for a in &old.spec.allocations {
                if let Some(v) = self.index.get_mut(&a.handle) {
                    v.retain(|s| !(s.block == name && s.ordinal == a.ordinal));
                    if v.is_empty() {
                        self.index.remove(&a.handle);
                    }
                }
            }
            let (s, _) = range_of(&old.spec.cidr);
            self.occupied.remove(&(old.spec.cidr.family(), s));
        }
        if let Some(cidr) = self.invalid.remove(name)
            && let Ok(c) = cidr.parse::<Cidr>()
        {
            self.occupied.remove(&(c.family(), range_of(&c).0));
        }
    }

    /// Inserts or replaces one cached block, keeping the index in step.
    pub fn put_block(&mut self, o: BlockObject) {
        self.unindex(&o.name);
        let cidr = o.spec.cidr;
        let (s, e) = range_of(&cidr);
        self.occupied
            .insert((cidr.family(), s), (e, o.name.clone()));
        let problem = if block_name(&cidr) != o.name {
            Some(format!("name does not match cidr {cidr}"))
        } else {
            o.spec.validate().err().map(|e| e.to_string())
        };
        if let Some(p) = problem {
            warn!(block = %o.name, problem = %p, "ignoring invalid block");
            self.invalid.insert(o.name, cidr.to_string());
            return;
        }
        if !self.keep_whole(&o) {
            self.summaries.insert(o.name.clone(), Summary::of(&o));
            return;
        }
        let affine = o.spec.affinity.as_deref() == Some(self.affinity.as_str());
        for a in &o.spec.allocations {
            if !affine && !self.indexed(a) {
                continue;
            }
            self.index.entry(a.handle.clone()).or_default().push(Slot {
                block: o.name.clone(),
                ordinal: a.ordinal,
            });
        }
        self.blocks.insert(o.name.clone(), o);
    }

    /// Whether an allocation in another node's block is in the handle
    /// index: this node's (a borrowed address) or one that names no node.
    /// Handles are looked up by this node's own work only (its pods'
    /// releases and re-ADDs, its reserve and tunnel addresses); another
    /// node's allocations are judged by block and ordinal (the leak GC's
    /// release targets), never by handle. Every allocation of a block
    /// affine to this node is indexed whatever its node.
    pub fn indexed(&self, a: &Allocation) -> bool {
        a.attrs.node.as_deref().is_none_or(|n| n == self.node.name)
    }

    /// Forgets a block (deleted from the store).
    pub fn remove_block(&mut self, name: &str) {
        self.unindex(name);
    }

    /// Whether `c` overlaps any cached block.
    pub fn overlaps(&self, c: &Cidr) -> bool {
        let (s, e) = range_of(c);
        let f = c.family();
        if self.occupied.range((f, s)..=(f, e)).next().is_some() {
            return true;
        }
        self.occupied
            .range(..(f, s))
            .next_back()
            .is_some_and(|(&(pf, _), &(pe, _))| pf == f && pe >= s)
    }

    /// The cached block containing `ip`, if any (valid or not).
    pub fn block_containing(&self, ip: IpAddr) -> Option<&str> {
        let f = Family::of(ip);
        let v = ip_to_u128(ip);
        self.occupied
            .range(..=(f, v))
            .next_back()
            .filter(|((pf, _), (e, _))| *pf == f && *e >= v)
            .map(|(_, (_, n))| n.as_str())
    }

    /// The pool containing a CIDR.
    pub fn pool_of(&self, c: &Cidr) -> Option<&IpPool> {
        self.pools.iter().find(|p| p.spec.cidr.contains_cidr(c))
    }

    /// Pools this node may allocate from, for `family`, honouring hints
    /// (pool names or CIDRs; empty = any).
    pub fn eligible_pools(&self, family: Family, hints: &[String], use_: AllowedUse) -> Vec<usize> {
        self.pools
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.spec.cidr.family() == family
                    && !p.spec.disabled
                    && p.spec.allowed_uses.contains(&use_)
                    && p.spec.node_selector.matches(&self.node.labels)
                    && (hints.is_empty()
                        || hints
                            .iter()
                            .any(|h| *h == p.name || *h == p.spec.cidr.to_string()))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// What a slot holds, as returned to callers.
    pub fn assigned(&self, block: &IpamBlockSpec, ordinal: u32) -> Option<Assigned> {
        Some(Assigned {
            ip: block.ip_of(ordinal)?,
            block: block.cidr,
            pool: self
                .pool_of(&block.cidr)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            borrowed: block.affinity.as_deref() != Some(self.affinity.as_str()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Versioned;

    fn view_with(blocks: &[&str]) -> View {
        let mut v = View::new(
            NodeInfo {
                name: "n1".into(),
                labels: Default::default(),
            },
            IpamConfig::default(),
        );
        for b in blocks {
            let c: Cidr = b.parse().unwrap();
            v.put_block(Versioned {
                name: block_name(&c),
                resource_version: "1".into(),
                spec: IpamBlockSpec::new(c, None, 0),
            });
        }
        v
    }

    #[test]
    fn overlap_and_containment_across_sizes() {
        let v = view_with(&["198.19.0.64/26", "198.19.1.0/27"]);
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        assert!(v.overlaps(&c("198.19.0.64/26")));
        assert!(v.overlaps(&c("198.19.0.0/24")));
        assert!(v.overlaps(&c("198.19.0.96/27")));
        assert!(v.overlaps(&c("198.19.1.0/26")));
        assert!(!v.overlaps(&c("198.19.0.0/26")));
        assert!(!v.overlaps(&c("198.19.1.32/27")));
        assert!(!v.overlaps(&c("2001:db8::/122")));
        assert_eq!(
            v.block_containing("198.19.0.70".parse().unwrap()),
            Some("198-19-0-64-26")
        );
        assert_eq!(v.block_containing("198.19.0.63".parse().unwrap()), None);
    }

    #[test]
    fn invalid_blocks_are_occupied_but_unusable() {
        let mut v = view_with(&[]);
        let c: Cidr = "198.19.0.0/26".parse().unwrap();
        let mut spec = IpamBlockSpec::new(c, None, 0);
        spec.free.pop();
        v.put_block(Versioned {
            name: block_name(&c),
            resource_version: "1".into(),
            spec,
        });
        assert!(v.blocks.is_empty());
        assert!(v.overlaps(&c));
        v.remove_block(&block_name(&c));
        assert!(!v.overlaps(&c));
    }
}
