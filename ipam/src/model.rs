//! The IPAM data model: pools, blocks and configuration. The block spec is
//! plain serde (camelCase, CIDRs as strings) so that the agent can wrap it as
//! a CRD spec (`IPAMBlock` in `crd.margay.dev/v1`). A pool is not a wire type
//! here: the one `IPPool` spec is the agent's CRD type, whose store adapter
//! hands the allocator [`PoolParams`] with every default applied.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cidr::{Cidr, Family};
use crate::selector::Selector;

/// Shortest block prefix accepted for IPv4 (4096 addresses).
pub const MIN_BLOCK_PREFIX_V4: u8 = 20;
/// Shortest block prefix accepted for IPv6 (4096 addresses).
pub const MIN_BLOCK_PREFIX_V6: u8 = 116;
/// Default block size for IPv4 pools.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default block size for IPv6 pools.
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

/// A model object failed validation.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A pool is malformed.
    #[error("pool {pool}: {reason}")]
    Pool {
        /// Pool name.
        pool: String,
        /// What is wrong.
        reason: String,
    },
    /// A block is malformed (corrupt or hand-edited object).
    #[error("block {block}: {reason}")]
    Block {
        /// Block CIDR.
        block: Cidr,
        /// What is wrong.
        reason: String,
    },
}

// Also the items of the `IPPool` CRD's `allowedUses`: these doc comments are
// in its schema (deploy/crds.yaml), which a node-agent test keeps in step.
/// What a pool's addresses may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum AllowedUse {
    /// Pod addresses.
    Workload,
    /// Tunnel endpoint addresses (reserved for overlay modes).
    Tunnel,
}

/// What the allocator needs of an `IpPool` object, as its store hands it
/// over: parsed, with the API defaults applied (the agent converts its CRD
/// type, `IPPoolSpec`, the one IPPool spec, into this). [`IpPool::from_params`]
/// checks the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolParams {
    /// The pool's range.
    pub cidr: Cidr,
    /// Prefix length of the blocks carved from it (default 26 / 122).
    pub block_size: Option<u8>,
    /// Nodes allowed to claim blocks (everything by default).
    pub node_selector: Selector,
    /// No new allocations from a disabled pool.
    pub disabled: bool,
    /// Uses allowed.
    pub allowed_uses: Vec<AllowedUse>,
}

impl PoolParams {
    /// A pool over `cidr` with every default (all nodes; Workload and
    /// Tunnel, as the IPPool API's `allowedUses` default).
    pub fn new(cidr: Cidr) -> Self {
        PoolParams {
            cidr,
            block_size: None,
            node_selector: Selector::everything(),
            disabled: false,
            allowed_uses: vec![AllowedUse::Workload, AllowedUse::Tunnel],
        }
    }

    /// The effective block prefix length.
    pub fn block_prefix(&self) -> u8 {
        self.block_size.unwrap_or(match self.cidr.family() {
            Family::V4 => DEFAULT_BLOCK_SIZE_V4,
            Family::V6 => DEFAULT_BLOCK_SIZE_V6,
        })
    }
}

/// A validated pool, ready for the allocator.
#[derive(Clone, Debug)]
pub struct IpPool {
    /// Object name.
    pub name: String,
    /// Its parameters as stored.
    pub spec: PoolParams,
}

impl IpPool {
    /// Validates a stored pool: block size within range and not shorter than
    /// the pool.
    pub fn from_params(name: &str, spec: PoolParams) -> Result<IpPool, ModelError> {
        let bp = spec.block_prefix();
        let (min, max) = match spec.cidr.family() {
            Family::V4 => (MIN_BLOCK_PREFIX_V4, 32),
            Family::V6 => (MIN_BLOCK_PREFIX_V6, 128),
        };
        let bad = |reason: String| ModelError::Pool {
            pool: name.to_string(),
            reason,
        };
        if bp < min || bp > max {
            return Err(bad(format!("blockSize {bp} outside {min}..={max}")));
        }
        if bp < spec.cidr.prefix() {
            return Err(bad(format!(
                "blockSize {bp} is larger than the pool {}",
                spec.cidr
            )));
        }
        Ok(IpPool {
            name: name.to_string(),
            spec,
        })
    }

    /// Number of blocks the pool can hold, exactly (what operators see).
    pub fn block_count_exact(&self) -> crate::Count {
        self.spec
            .cidr
            .subnet_count_exact(self.spec.block_prefix())
            .unwrap_or_default()
    }

    /// Number of blocks the allocator may carve (capped at 2^63, see
    /// [`Cidr::subnet_count`]).
    pub fn block_count(&self) -> u64 {
        self.spec
            .cidr
            .subnet_count(self.spec.block_prefix())
            .unwrap_or(0)
    }
}

/// Who an allocation belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationAttrs {
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Pod namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Node that made the allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One allocated address of a block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Offset of the address in the block.
    pub ordinal: u32,
    /// The handle (`<network>.<containerID>[.<ifname>]`).
    pub handle: String,
    /// Owner attributes.
    #[serde(flatten)]
    pub attrs: AllocationAttrs,
    /// Block sequence number of the write that made this allocation, so a
    /// release planned against an old read cannot free a re-allocation.
    pub sequence: u64,
}

/// A free ordinal in the reuse queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FreeOrdinal {
    /// Offset of the address in the block.
    pub ordinal: u32,
    /// When it was last released (unix ms); absent if never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<u64>,
}

/// `IPAMBlock` spec. Invariant: the ordinals of `allocations` and `free` are
/// disjoint and together are exactly `0..size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamBlockSpec {
    /// The block's range.
    pub cidr: Cidr,
    /// `host:<node>` or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Allocated ordinals, sorted by ordinal.
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    /// Free ordinals; the front has been free the longest and is reused first.
    #[serde(default)]
    pub free: Vec<FreeOrdinal>,
    /// Incremented on every write.
    #[serde(default)]
    pub sequence: u64,
    /// When the current affinity was set (creation or reclaim), unix ms.
    #[serde(default)]
    pub created_at: u64,
}

/// The affinity string for a node.
pub fn host_affinity(node: &str) -> String {
    format!("host:{node}")
}

/// The object name of the block for `cidr`: "198-19-0-64-26", "2001-db8--40-122".
pub fn block_name(cidr: &Cidr) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix()).replace(['.', ':'], "-")
}

impl IpamBlockSpec {
    /// An empty block.
    pub fn new(cidr: Cidr, affinity: Option<String>, now_ms: u64) -> Self {
        let size = block_size(&cidr);
        IpamBlockSpec {
            cidr,
            affinity,
            allocations: Vec::new(),
            free: (0..size)
                .map(|ordinal| FreeOrdinal {
                    ordinal,
                    released_at: None,
                })
                .collect(),
            sequence: 0,
            created_at: now_ms,
        }
    }

    /// Number of addresses.
    pub fn size(&self) -> u32 {
        block_size(&self.cidr)
    }

    /// The node this block is affine to.
    pub fn affine_node(&self) -> Option<&str> {
        self.affinity.as_deref()?.strip_prefix("host:")
    }

    /// The ordinal of `ip`, if inside.
    pub fn ordinal_of(&self, ip: IpAddr) -> Option<u32> {
        self.cidr.offset_of(ip).and_then(|o| u32::try_from(o).ok())
    }

    /// The address at `ordinal`.
    pub fn ip_of(&self, ordinal: u32) -> Option<IpAddr> {
        self.cidr.nth(u128::from(ordinal))
    }

    /// The allocation at `ordinal`.
    pub fn allocation(&self, ordinal: u32) -> Option<&Allocation> {
        self.allocations
            .binary_search_by_key(&ordinal, |a| a.ordinal)
            .ok()
            .map(|i| &self.allocations[i])
    }

    /// True when nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    fn cooled(f: &FreeOrdinal, now_ms: u64, cooldown_ms: u64) -> bool {
        f.released_at
            .is_none_or(|t| t.saturating_add(cooldown_ms) <= now_ms)
    }

    /// Free ordinals usable now (past the cool-down).
    pub fn usable_count(&self, now_ms: u64, cooldown_ms: u64) -> usize {
        self.free
            .iter()
            .filter(|f| Self::cooled(f, now_ms, cooldown_ms))
            .count()
    }

    /// True if some free ordinal is still cooling down.
    pub fn has_cooling(&self, now_ms: u64, cooldown_ms: u64) -> bool {
        self.free
            .iter()
            .any(|f| !Self::cooled(f, now_ms, cooldown_ms))
    }

    /// Takes the longest-free usable ordinal out of the queue. Returns the
    /// entry and its queue position (for [`Self::untake`]).
    pub fn take_free(&mut self, now_ms: u64, cooldown_ms: u64) -> Option<(usize, FreeOrdinal)> {
        let pos = self
            .free
            .iter()
            .position(|f| Self::cooled(f, now_ms, cooldown_ms))?;
        Some((pos, self.free.remove(pos)))
    }

    /// Takes a specific ordinal out of the free queue (ignores cool-down: an
    /// explicitly requested address).
    pub fn take_specific(&mut self, ordinal: u32) -> Option<(usize, FreeOrdinal)> {
        let pos = self.free.iter().position(|f| f.ordinal == ordinal)?;
        Some((pos, self.free.remove(pos)))
    }

    /// Puts back an entry taken by `take_*` (undo, in reverse order of taking).
    pub fn untake(&mut self, pos: usize, entry: FreeOrdinal) {
        let pos = pos.min(self.free.len());
        self.free.insert(pos, entry);
    }

    /// Records an allocation (its ordinal must have been taken from `free`).
    pub fn insert_allocation(&mut self, a: Allocation) {
        match self
            .allocations
            .binary_search_by_key(&a.ordinal, |x| x.ordinal)
        {
            Ok(i) => self.allocations[i] = a,
            Err(i) => self.allocations.insert(i, a),
        }
    }

    /// Removes an allocation without touching the free queue (undo helper).
    pub fn remove_allocation(&mut self, ordinal: u32) -> Option<Allocation> {
        let i = self
            .allocations
            .binary_search_by_key(&ordinal, |a| a.ordinal)
            .ok()?;
        Some(self.allocations.remove(i))
    }

    /// Frees `ordinal`, appending it to the back of the reuse queue.
    pub fn release(&mut self, ordinal: u32, now_ms: u64) -> Option<Allocation> {
        let a = self.remove_allocation(ordinal)?;
        self.free.push(FreeOrdinal {
            ordinal,
            released_at: Some(now_ms),
        });
        Some(a)
    }

    /// Checks the invariants of a block read from the store (hostile or
    /// hand-edited objects must not make the allocator misbehave).
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |reason: String| ModelError::Block {
            block: self.cidr,
            reason,
        };
        let min = match self.cidr.family() {
            Family::V4 => MIN_BLOCK_PREFIX_V4,
            Family::V6 => MIN_BLOCK_PREFIX_V6,
        };
        if self.cidr.prefix() < min {
            return Err(bad(format!("prefix shorter than /{min}")));
        }
        let size = self.size() as usize;
        if self.allocations.len() + self.free.len() != size {
            return Err(bad(format!(
                "{} allocations + {} free != {size}",
                self.allocations.len(),
                self.free.len()
            )));
        }
        let mut seen = vec![false; size];
        let ords = self
            .allocations
            .iter()
            .map(|a| a.ordinal)
            .chain(self.free.iter().map(|f| f.ordinal));
        for o in ords {
            match seen.get_mut(o as usize) {
                Some(s) if !*s => *s = true,
                Some(_) => return Err(bad(format!("ordinal {o} listed twice"))),
                None => return Err(bad(format!("ordinal {o} out of range"))),
            }
        }
        if self
            .allocations
            .windows(2)
            .any(|w| w[0].ordinal >= w[1].ordinal)
        {
            return Err(bad("allocations not sorted by ordinal".into()));
        }
        Ok(())
    }
}

fn block_size(cidr: &Cidr) -> u32 {
    // Blocks are at most /20 or /116 (validated), so this fits.
    u32::try_from(cidr.size()).unwrap_or(u32::MAX)
}

/// Cluster-wide IPAM settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IpamConfig {
    /// Never borrow from blocks affine to other nodes.
    pub strict_affinity: bool,
    /// Most blocks a node may hold per pool (0 = unlimited).
    pub max_blocks_per_host: u32,
    /// Claim new blocks when affine ones are full (false: only borrow).
    pub auto_allocate_blocks: bool,
    /// A released address is not reused before this many ms (0 = off).
    pub reuse_cooldown_ms: u64,
    /// An empty block affine to another node is reclaimed only once it is
    /// this old (ms since its affinity was set).
    pub min_reclaim_age_ms: u64,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            strict_affinity: false,
            max_blocks_per_host: 0,
            auto_allocate_blocks: true,
            reuse_cooldown_ms: 0,
            min_reclaim_age_ms: 5 * 60 * 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn pool_defaults_and_validation() {
        let p = IpPool::from_params("p", PoolParams::new(c("198.19.0.0/16"))).unwrap();
        assert_eq!(p.spec.block_prefix(), 26);
        assert_eq!(p.block_count(), 1024);
        let p6 = IpPool::from_params("p6", PoolParams::new(c("2001:db8::/64"))).unwrap();
        assert_eq!(p6.spec.block_prefix(), 122);
        // Large IPv6 pools are fine (carved from their first 2^63 blocks).
        let p48 = IpPool::from_params("p48", PoolParams::new(c("2001:db8::/48"))).unwrap();
        assert_eq!(p48.block_count(), 1 << 63);
        let mut s = PoolParams::new(c("198.19.0.0/28"));
        assert!(IpPool::from_params("small", s.clone()).is_err());
        s.block_size = Some(30);
        assert!(IpPool::from_params("small", s.clone()).is_ok());
        s.block_size = Some(19);
        assert!(IpPool::from_params("x", s.clone()).is_err());
        s.block_size = Some(30);
        s.node_selector = "zone in (a)".parse().unwrap();
        assert!(IpPool::from_params("x", s).is_ok());
    }

    #[test]
    fn serde_shape_is_camel_case_with_string_cidrs() {
        let mut b = IpamBlockSpec::new(c("198.19.0.0/30"), Some(host_affinity("n1")), 7);
        let (_, f) = b.take_free(0, 0).unwrap();
        b.insert_allocation(Allocation {
            ordinal: f.ordinal,
            handle: "net.c1".into(),
            attrs: AllocationAttrs {
                pod: Some("p".into()),
                namespace: Some("ns".into()),
                node: Some("n1".into()),
            },
            sequence: 1,
        });
        let j = serde_json::to_value(&b).unwrap();
        assert_eq!(j["cidr"], "198.19.0.0/30");
        assert_eq!(j["affinity"], "host:n1");
        assert_eq!(j["createdAt"], 7);
        assert_eq!(j["allocations"][0]["handle"], "net.c1");
        assert_eq!(j["allocations"][0]["namespace"], "ns");
        assert_eq!(j["free"][0]["ordinal"], 1);
        let back: IpamBlockSpec = serde_json::from_value(j).unwrap();
        assert_eq!(back, b);
        back.validate().unwrap();
    }

    #[test]
    fn free_queue_reuses_longest_free_first_and_honours_cooldown() {
        let mut b = IpamBlockSpec::new(c("198.19.0.0/30"), None, 0);
        let mut got = Vec::new();
        while let Some((_, f)) = b.take_free(0, 0) {
            got.push(f.ordinal);
            b.insert_allocation(Allocation {
                ordinal: f.ordinal,
                handle: format!("h{}", f.ordinal),
                attrs: Default::default(),
                sequence: 0,
            });
        }
        assert_eq!(got, vec![0, 1, 2, 3]);
        b.release(2, 100);
        b.release(0, 200);
        // Cool-down of 150 ms: at t=260 only ordinal 2 (released at 100) is usable.
        assert_eq!(b.usable_count(240, 150), 0);
        assert_eq!(b.usable_count(260, 150), 1);
        assert_eq!(b.take_free(260, 150).map(|x| x.1.ordinal), Some(2));
        assert_eq!(b.take_free(260, 150), None);
        assert!(b.has_cooling(260, 150));
        assert_eq!(b.take_free(350, 150).map(|x| x.1.ordinal), Some(0));
    }

    #[test]
    fn validate_catches_corruption() {
        let mut b = IpamBlockSpec::new(c("198.19.0.0/30"), None, 0);
        b.validate().unwrap();
        b.free[1].ordinal = 0;
        assert!(b.validate().is_err());
        let mut b = IpamBlockSpec::new(c("198.19.0.0/30"), None, 0);
        b.free.pop();
        assert!(b.validate().is_err());
        let mut b = IpamBlockSpec::new(c("198.19.0.0/30"), None, 0);
        b.free[3].ordinal = 9;
        assert!(b.validate().is_err());
        let b = IpamBlockSpec {
            cidr: c("198.19.0.0/16"),
            ..IpamBlockSpec::new(c("198.19.0.0/30"), None, 0)
        };
        assert!(b.validate().is_err());
    }

    #[test]
    fn names_are_dns_safe() {
        assert_eq!(block_name(&c("198.19.0.64/26")), "198-19-0-64-26");
        assert_eq!(block_name(&c("2001:db8::40/122")), "2001-db8--40-122");
    }
}
