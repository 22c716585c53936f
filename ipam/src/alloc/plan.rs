//! Planning: choosing addresses for requests against working copies of
//! blocks. Nothing here does I/O; the worker writes the working copies.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::cidr::Family;
use crate::error::IpamError;
use crate::model::{
    Allocation, AllocationAttrs, AllowedUse, FreeOrdinal, IpamBlockSpec, block_name,
};
use crate::store::{BlockObject, Versioned};

use super::state::{View, fnv1a};

/// A working copy of one block for the current round.
pub(crate) struct Work {
    pub obj: BlockObject,
    /// Claim: write with `create` instead of `update`.
    pub create: bool,
    /// Ops (round indices) with tentative changes in this block.
    pub members: Vec<usize>,
}

pub(crate) type WorkSet = BTreeMap<String, Work>;

/// One tentative change, undone if the op fails to plan and committed if the
/// block's write succeeds.
#[derive(Clone, Debug)]
pub(crate) struct Tent {
    pub block: String,
    pub ordinal: u32,
    /// For undo of a take: queue position and entry.
    pub taken: Option<(usize, FreeOrdinal)>,
}

pub(crate) struct Planner<'a> {
    pub view: &'a View,
    pub work: &'a mut WorkSet,
    pub now: u64,
    /// Names of blocks affine to this node (cache + claims of this round).
    pub affine: &'a mut Vec<String>,
    /// A block the plan must write but the cache holds only summarised:
    /// the op is planned again once it has been read whole.
    pub fetch: Option<String>,
}

impl Planner<'_> {
    fn cooldown(&self) -> u64 {
        self.view.config.reuse_cooldown_ms
    }

    /// The working copy of a cached block (cloned on first use). A block
    /// cached only summarised has none: it is noted in `fetch`.
    pub fn entry(&mut self, name: &str) -> Option<&mut Work> {
        if !self.work.contains_key(name) {
            let Some(obj) = self.view.blocks.get(name) else {
                if self.view.summaries.contains_key(name) {
                    self.fetch.get_or_insert_with(|| name.to_string());
                }
                return None;
            };
            let obj = obj.clone();
            self.work.insert(
                name.to_string(),
                Work {
                    obj,
                    create: false,
                    members: Vec::new(),
                },
            );
        }
        self.work.get_mut(name)
    }

    /// Notes that block `name` must be read whole before this op can be
    /// planned; the error is never returned to a caller.
    fn need(&mut self, name: &str) -> IpamError {
        self.fetch.get_or_insert_with(|| name.to_string());
        IpamError::Unavailable {
            reason: format!("block {name} is to be read from the store"),
            source: None,
        }
    }

    /// Whether the cache holds block `name` only summarised (and this
    /// round has no working copy of it).
    pub fn summarised(&self, name: &str) -> bool {
        !self.work.contains_key(name) && self.view.summaries.contains_key(name)
    }

    /// The current state of a block: working copy if any, else cache.
    fn current(&self, name: &str) -> Option<&IpamBlockSpec> {
        self.work
            .get(name)
            .map(|w| &w.obj.spec)
            .or_else(|| self.view.blocks.get(name).map(|b| &b.spec))
    }

    fn take(
        &mut self,
        name: &str,
        op: usize,
        handle: &str,
        attrs: &AllocationAttrs,
        specific: Option<u32>,
    ) -> Option<Tent> {
        let (now, cd) = (self.now, self.cooldown());
        let w = self.entry(name)?;
        let (pos, entry) = match specific {
            Some(o) => w.obj.spec.take_specific(o)?,
            None => w.obj.spec.take_free(now, cd)?,
        };
        w.obj.spec.insert_allocation(Allocation {
            ordinal: entry.ordinal,
            handle: handle.to_string(),
            attrs: attrs.clone(),
            sequence: w.obj.spec.sequence + 1,
        });
        if !w.members.contains(&op) {
            w.members.push(op);
        }
        Some(Tent {
            block: name.to_string(),
            ordinal: entry.ordinal,
            taken: Some((pos, entry)),
        })
    }

    /// Undoes tentative changes of op `op` (in reverse order).
    pub fn undo(&mut self, op: usize, tents: &[Tent]) {
        for t in tents.iter().rev() {
            if let (Some(w), Some((pos, entry))) = (self.work.get_mut(&t.block), t.taken) {
                w.obj.spec.remove_allocation(t.ordinal);
                w.obj.spec.untake(pos, entry);
            }
        }
        for t in tents {
            if let Some(w) = self.work.get_mut(&t.block) {
                w.members.retain(|&m| m != op);
            }
        }
    }

    /// Plans one specific address. `Ok(None)`: the handle already holds it.
    pub fn specific(
        &mut self,
        op: usize,
        ip: IpAddr,
        handle: &str,
        attrs: &AllocationAttrs,
        use_: AllowedUse,
    ) -> Result<Option<Tent>, IpamError> {
        let family = Family::of(ip);
        let pool = self
            .view
            .pools
            .iter()
            .find(|p| p.spec.cidr.contains(ip))
            .ok_or_else(|| IpamError::NoPool {
                family,
                reason: format!("requested address {ip} is in no pool"),
            })?;
        if pool.spec.disabled || !pool.spec.allowed_uses.contains(&use_) {
            return Err(IpamError::NoPool {
                family,
                reason: format!("pool {} of {ip} is disabled or not for {use_:?}", pool.name),
            });
        }
        let bp = pool.spec.block_prefix();
        let Some((_, cidr)) = pool.spec.cidr.subnet_containing(bp, ip) else {
            return Err(IpamError::InvalidArgument {
                reason: format!("cannot place {ip} in pool {}", pool.name),
            });
        };
        let natural = block_name(&cidr);
        let name = if self.work.contains_key(&natural) {
            natural
        } else if let Some(n) = self.view.block_containing(ip) {
            if self.view.invalid.contains_key(n) {
                return Err(IpamError::Unavailable {
                    reason: format!("block {n} holding {ip} is malformed"),
                    source: None,
                });
            }
            n.to_string()
        } else {
            let spec = IpamBlockSpec::new(cidr, Some(self.view.affinity.clone()), self.now);
            self.new_block(natural.clone(), spec);
            natural
        };
        if self.summarised(&name) {
            return Err(self.need(&name));
        }
        let Some(block) = self.current(&name) else {
            return Err(IpamError::Unavailable {
                reason: format!("block {name} vanished from the cache"),
                source: None,
            });
        };
        if self.view.config.strict_affinity
            && block.affinity.is_some()
            && block.affinity.as_deref() != Some(self.view.affinity.as_str())
        {
            return Err(IpamError::NoPool {
                family,
                reason: format!(
                    "strict affinity: {ip} is in block {} of {}",
                    block.cidr,
                    block.affinity.as_deref().unwrap_or("")
                ),
            });
        }
        let ordinal = block
            .ordinal_of(ip)
            .ok_or_else(|| IpamError::InvalidArgument {
                reason: format!("{ip} outside block {name}"),
            })?;
        if let Some(a) = block.allocation(ordinal) {
            if a.handle == handle {
                return Ok(None);
            }
            return Err(IpamError::InUse {
                ip,
                holder: a.handle.clone(),
            });
        }
        self.take(&name, op, handle, attrs, Some(ordinal))
            .map(Some)
            .ok_or_else(|| IpamError::InUse {
                ip,
                holder: String::from("(free queue inconsistent)"),
            })
    }

    fn new_block(&mut self, name: String, spec: IpamBlockSpec) {
        self.affine.push(name.clone());
        self.work.insert(
            name.clone(),
            Work {
                obj: Versioned {
                    name,
                    resource_version: String::new(),
                    spec,
                },
                create: true,
                members: Vec::new(),
            },
        );
    }

    fn in_pools(&self, cidr: &crate::cidr::Cidr, pools: &[usize]) -> Option<usize> {
        pools
            .iter()
            .copied()
            .find(|&i| self.view.pools[i].spec.cidr.contains_cidr(cidr))
    }

    /// Plans one address of `family` from the eligible pools: affine blocks,
    /// then a new or reclaimed block, then borrowing.
    pub fn auto(
        &mut self,
        op: usize,
        family: Family,
        hints: &[String],
        use_: AllowedUse,
        handle: &str,
        attrs: &AllocationAttrs,
    ) -> Result<Tent, IpamError> {
        let pools = self.view.eligible_pools(family, hints, use_);
        if pools.is_empty() {
            return Err(IpamError::NoPool {
                family,
                reason: if hints.is_empty() {
                    format!(
                        "no enabled {family} pool selects node {}",
                        self.view.node.name
                    )
                } else {
                    format!("no enabled {family} pool matches hints {hints:?}")
                },
            });
        }
        let (now, cd) = (self.now, self.cooldown());
        // 1. The fullest affine block with a usable address.
        let mut best: Option<(usize, &str)> = None;
        for name in self.affine.iter() {
            let Some(b) = self.current(name) else {
                continue;
            };
            if b.affine_node() != Some(self.view.node.name.as_str())
                || self.in_pools(&b.cidr, &pools).is_none()
            {
                continue;
            }
            let n = b.usable_count(now, cd);
            if n > 0 && best.is_none_or(|(m, _)| n < m) {
                best = Some((n, name));
            }
        }
        if let Some((_, name)) = best {
            let name = name.to_string();
            if let Some(t) = self.take(&name, op, handle, attrs, None) {
                return Ok(t);
            }
        }
        // 2. Claim a block.
        if self.view.config.auto_allocate_blocks {
            for &pi in &pools {
                if let Some(name) = self.claim(pi)
                    && let Some(t) = self.take(&name, op, handle, attrs, None)
                {
                    return Ok(t);
                }
                if let Some(name) = self.fetch.clone() {
                    return Err(self.need(&name));
                }
            }
        }
        // 3. Borrow.
        if !self.view.config.strict_affinity {
            let mine = Some(self.view.affinity.as_str());
            let mut cands: Vec<String> = Vec::new();
            let names = self.view.blocks.keys().chain(
                self.work
                    .keys()
                    .filter(|k| !self.view.blocks.contains_key(*k)),
            );
            for name in names {
                let Some(b) = self.current(name) else {
                    continue;
                };
                if b.affinity.as_deref() != mine
                    && self.in_pools(&b.cidr, &pools).is_some()
                    && b.usable_count(now, cd) > 0
                {
                    cands.push(name.clone());
                }
            }
            // Summarised blocks: chosen by their summary, read whole
            // before the take (in the same order as whole ones).
            for (name, b) in &self.view.summaries {
                if !self.work.contains_key(name)
                    && b.affinity.as_deref() != mine
                    && self.in_pools(&b.cidr, &pools).is_some()
                    && b.has_usable(now, cd)
                {
                    cands.push(name.clone());
                }
            }
            cands.sort_unstable();
            if !cands.is_empty() {
                let start = (fnv1a(&[&self.view.node.name]) % cands.len() as u64) as usize;
                for i in 0..cands.len() {
                    let name = cands[(start + i) % cands.len()].clone();
                    if self.summarised(&name) {
                        return Err(self.need(&name));
                    }
                    if let Some(t) = self.take(&name, op, handle, attrs, None) {
                        return Ok(t);
                    }
                }
            }
        }
        let c = &self.view.config;
        let mut limits = Vec::new();
        if !c.auto_allocate_blocks {
            limits.push("autoAllocateBlocks is off, so no new block is claimed".to_string());
        } else if c.max_blocks_per_host > 0 {
            limits.push(format!(
                "no free block to claim, or the node holds maxBlocksPerHost ({}) blocks per pool",
                c.max_blocks_per_host
            ));
        } else {
            limits.push("no free block left to claim".to_string());
        }
        limits.push(if c.strict_affinity {
            "strictAffinity forbids borrowing from other nodes' blocks".to_string()
        } else {
            "no other node's block has a free address".to_string()
        });
        Err(IpamError::Exhausted {
            family,
            node: self.view.node.name.clone(),
            reason: format!(
                "its blocks are full; {} (IPAMConfiguration default)",
                limits.join("; ")
            ),
        })
    }

    /// Finds a block for this node in pool `pi`: a free CIDR (scan starting
    /// at a per-node offset so nodes spread out) or, failing that, an empty
    /// block of another node older than the minimum reclaim age.
    fn claim(&mut self, pi: usize) -> Option<String> {
        let pool = &self.view.pools[pi];
        let max = self.view.config.max_blocks_per_host;
        if max > 0 {
            let mine = self
                .affine
                .iter()
                .filter_map(|n| self.current(n))
                .filter(|b| {
                    b.affine_node() == Some(self.view.node.name.as_str())
                        && pool.spec.cidr.contains_cidr(&b.cidr)
                })
                .count();
            if mine >= max as usize {
                return None;
            }
        }
        let bp = pool.spec.block_prefix();
        let n = pool.block_count();
        if n > 0 {
            // Each node walks the pool in its own order: a per-node start
            // and a per-node odd stride (block counts are powers of two, so
            // every odd stride visits every block once). With a plain
            // linear scan, a node whose start lies just behind another's
            // follows it block by block and loses every claim race to it
            // (seen with 16 nodes claiming at once against the API server).
            let start = fnv1a(&[&self.view.node.name, &pool.name]) % n;
            let stride = scan_stride(&self.view.node.name, &pool.name, n);
            // Each miss is an occupied CIDR, so this bound is never hit
            // while a free CIDR exists unless larger foreign blocks overlap.
            let limit = n.min((self.view.occupied.len() + self.work.len()) as u64 + 4096);
            for i in 0..limit {
                let idx = ((u128::from(start) + u128::from(i) * u128::from(stride)) % u128::from(n))
                    as u64;
                let Some(cidr) = pool.spec.cidr.subnet(bp, idx) else {
                    continue;
                };
                let name = block_name(&cidr);
                if self.work.contains_key(&name) || self.view.overlaps(&cidr) {
                    continue;
                }
                let spec = IpamBlockSpec::new(cidr, Some(self.view.affinity.clone()), self.now);
                self.new_block(name.clone(), spec);
                return Some(name);
            }
        }
        // Reclaim an empty block of another node (or of none): the first
        // by name, whole or summarised (a summarised one is read whole
        // first, and chosen again from what the store holds).
        let (now, cd) = (self.now, self.cooldown());
        let min_age = self.view.config.min_reclaim_age_ms;
        let mine = Some(self.view.affinity.as_str());
        let whole = self
            .view
            .blocks
            .values()
            .filter(|b| !self.work.contains_key(&b.name))
            .find(|b| {
                let s = &b.spec;
                pool.spec.cidr.contains_cidr(&s.cidr)
                    && s.affinity.as_deref() != mine
                    && s.is_empty()
                    && !s.has_cooling(now, cd)
                    && (s.affinity.is_none() || now.saturating_sub(s.created_at) >= min_age)
            })
            .map(|b| &b.name);
        let summarised = self
            .view
            .summaries
            .iter()
            .filter(|(n, _)| !self.work.contains_key(*n))
            .find(|(_, s)| {
                pool.spec.cidr.contains_cidr(&s.cidr)
                    && s.affinity.as_deref() != mine
                    && s.allocated == 0
                    && !s.has_cooling(now, cd)
                    && (s.affinity.is_none() || now.saturating_sub(s.created_at) >= min_age)
            })
            .map(|(n, _)| n);
        let victim = match (whole, summarised) {
            (Some(w), Some(s)) if s < w => {
                let s = s.clone();
                self.need(&s);
                return None;
            }
            (None, Some(s)) => {
                let s = s.clone();
                self.need(&s);
                return None;
            }
            (Some(w), _) => w.clone(),
            (None, None) => return None,
        };
        let affinity = self.view.affinity.clone();
        let w = self.entry(&victim)?;
        w.obj.spec.affinity = Some(affinity);
        w.obj.spec.created_at = now;
        self.affine.push(victim.clone());
        Some(victim)
    }
}

/// The odd step a node uses to walk a pool of `n` blocks (`n` a power of
/// two): coprime with `n`, so the walk is a permutation.
pub(crate) fn scan_stride(node: &str, pool: &str, n: u64) -> u64 {
    if n <= 2 {
        return 1;
    }
    (fnv1a(&[pool, node, "stride"]) % n) | 1
}

#[cfg(test)]
mod scan_tests {
    use super::scan_stride;

    #[test]
    fn every_node_walks_a_permutation_of_the_pool() {
        for n in [1u64, 2, 4, 64, 1024] {
            for node in ["n1", "n2", "n13", "n16", "worker-7"] {
                let stride = scan_stride(node, "pool", n);
                let start = 3 % n;
                let mut seen: Vec<u64> = (0..n)
                    .map(|i| {
                        ((u128::from(start) + u128::from(i) * u128::from(stride)) % u128::from(n))
                            as u64
                    })
                    .collect();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len() as u64, n, "node {node}, n {n}, stride {stride}");
            }
        }
    }

    #[test]
    fn nodes_do_not_share_one_walking_order() {
        let strides: std::collections::BTreeSet<u64> = (1..=16)
            .map(|i| scan_stride(&format!("n{i}"), "pool", 1024))
            .collect();
        assert!(strides.len() >= 12, "{strides:?}");
    }
}
