//! Data for `margayctl ipam show [--show-blocks] [--ip X]` and
//! `margayctl ipam check`, computed from listed pools, blocks, pods and nodes
//! (the CLI only formats these structs).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::cidr::Cidr;
use crate::count::Count;
use crate::gc::LivePod;
use crate::model::{AllocationAttrs, IpPool, block_name};
use crate::store::{BlockObject, PoolObject};

/// Usage of one pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    /// Pool name.
    pub name: String,
    /// Pool CIDR.
    pub cidr: Cidr,
    /// Addresses in the pool, exactly (an IPv6 pool exceeds u64).
    pub capacity: Count,
    /// Addresses allocated.
    pub allocated: u64,
    /// Blocks carved so far.
    pub blocks: u64,
    /// Blocks the pool can hold, exactly.
    pub block_capacity: Count,
    /// Disabled flag.
    pub disabled: bool,
    /// Validation error, if the pool is ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Usage of one block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockUsage {
    /// Object name.
    pub name: String,
    /// Block CIDR.
    pub cidr: Cidr,
    /// Affinity (`host:<node>`), if any.
    pub affinity: Option<String>,
    /// Pool containing it, if any.
    pub pool: Option<String>,
    /// Allocated addresses.
    pub allocated: u32,
    /// Free addresses (including cooling ones).
    pub free: u32,
    /// Free addresses still in their reuse cool-down.
    pub cooling: u32,
    /// Allocations by nodes other than the affine one (borrowed).
    pub borrowed: u32,
    /// When the affinity was set (unix ms).
    pub created_at: u64,
    /// Validation problem, if the block is ignored by allocators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `ipam show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpamShow {
    /// Pools, by name.
    pub pools: Vec<PoolUsage>,
    /// Blocks, by CIDR (empty unless asked for).
    pub blocks: Vec<BlockUsage>,
}

fn pools_parsed(pools: &[PoolObject]) -> Vec<(String, Cidr, Result<IpPool, String>)> {
    pools
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.spec.cidr,
                IpPool::from_params(&p.name, p.spec.clone()).map_err(|e| e.to_string()),
            )
        })
        .collect()
}

fn block_problem(b: &BlockObject) -> Option<String> {
    if block_name(&b.spec.cidr) != b.name {
        return Some(format!("name does not match cidr {}", b.spec.cidr));
    }
    b.spec.validate().err().map(|e| e.to_string())
}

/// Summarizes pools and (with `show_blocks`) every block.
pub fn show(
    pools: &[PoolObject],
    blocks: &[BlockObject],
    show_blocks: bool,
    now_ms: u64,
    cooldown_ms: u64,
) -> IpamShow {
    let parsed = pools_parsed(pools);
    let pool_of = |c: &Cidr| {
        parsed
            .iter()
            .find(|(_, pc, _)| pc.contains_cidr(c))
            .map(|(n, _, _)| n.clone())
    };
    let mut out_pools: Vec<PoolUsage> = parsed
        .iter()
        .map(|(name, cidr, r)| {
            let inside: Vec<&BlockObject> = blocks
                .iter()
                .filter(|b| cidr.contains_cidr(&b.spec.cidr))
                .collect();
            PoolUsage {
                name: name.clone(),
                cidr: *cidr,
                capacity: cidr.count(),
                allocated: inside.iter().map(|b| b.spec.allocations.len() as u64).sum(),
                blocks: inside.len() as u64,
                block_capacity: r
                    .as_ref()
                    .map(IpPool::block_count_exact)
                    .unwrap_or_default(),
                disabled: r.as_ref().map(|p| p.spec.disabled).unwrap_or(true),
                error: r.as_ref().err().cloned(),
            }
        })
        .collect();
    out_pools.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out_blocks = Vec::new();
    if show_blocks {
        for b in blocks {
            let s = &b.spec;
            let affine = s.affine_node();
            out_blocks.push(BlockUsage {
                name: b.name.clone(),
                cidr: s.cidr,
                affinity: s.affinity.clone(),
                pool: pool_of(&s.cidr),
                allocated: s.allocations.len() as u32,
                free: s.free.len() as u32,
                cooling: (s.free.len() - s.usable_count(now_ms, cooldown_ms)) as u32,
                borrowed: s
                    .allocations
                    .iter()
                    .filter(|a| a.attrs.node.as_deref() != affine)
                    .count() as u32,
                created_at: s.created_at,
                error: block_problem(b),
            });
        }
        out_blocks.sort_by_key(|b| b.cidr);
    }
    IpamShow {
        pools: out_pools,
        blocks: out_blocks,
    }
}

/// `ipam show --ip X`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpInfo {
    /// The address asked about.
    pub ip: IpAddr,
    /// Pool containing it.
    pub pool: Option<String>,
    /// Block containing it (None: no block carved there yet).
    pub block: Option<Cidr>,
    /// Block affinity.
    pub affinity: Option<String>,
    /// Handle holding it (None: free).
    pub handle: Option<String>,
    /// Owner attributes.
    pub attrs: Option<AllocationAttrs>,
    /// Allocation sequence.
    pub sequence: Option<u64>,
}

/// Where an address is and who holds it.
pub fn lookup_ip(pools: &[PoolObject], blocks: &[BlockObject], ip: IpAddr) -> IpInfo {
    let pool = pools
        .iter()
        .find(|p| p.spec.cidr.contains(ip))
        .map(|p| p.name.clone());
    let block = blocks.iter().find(|b| b.spec.cidr.contains(ip));
    let alloc = block.and_then(|b| b.spec.allocation(b.spec.ordinal_of(ip)?));
    IpInfo {
        ip,
        pool,
        block: block.map(|b| b.spec.cidr),
        affinity: block.and_then(|b| b.spec.affinity.clone()),
        handle: alloc.map(|a| a.handle.clone()),
        attrs: alloc.map(|a| a.attrs.clone()),
        sequence: alloc.map(|a| a.sequence),
    }
}

/// One allocation, for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRef {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: Cidr,
    /// Handle.
    pub handle: String,
    /// `namespace/name`, if recorded.
    pub pod: Option<String>,
    /// Allocating node.
    pub node: Option<String>,
}

/// `ipam check`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// Allocations with pod attributes whose pod does not exist (leak
    /// candidates; the GC releases them after the grace period).
    pub allocations_without_pod: Vec<AllocationRef>,
    /// Allocations whose pod exists but reports other IPs (suspected leak
    /// from an earlier sandbox; never auto-released).
    pub allocations_with_other_pod_ips: Vec<AllocationRef>,
    /// Live pods (`namespace/name`) with no allocation.
    pub pods_without_allocation: Vec<String>,
    /// Blocks whose affinity names a node that does not exist.
    pub blocks_with_missing_node: Vec<Cidr>,
    /// Blocks allocators ignore (malformed), with the reason.
    pub invalid_blocks: Vec<(String, String)>,
    /// Addresses recorded in more than one allocation (overlapping blocks).
    pub duplicate_addresses: Vec<IpAddr>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self == &CheckReport::default()
    }
}

/// Cross-checks blocks against live pods (pods that should have an address:
/// the caller leaves out hostNetwork pods) and live nodes.
pub fn check(blocks: &[BlockObject], pods: &[LivePod], nodes: &HashSet<String>) -> CheckReport {
    let mut r = CheckReport::default();
    let live: BTreeMap<String, &LivePod> = pods
        .iter()
        .map(|p| (format!("{}/{}", p.namespace, p.name), p))
        .collect();
    let mut pods_with_alloc: HashSet<String> = HashSet::new();
    let mut seen_ips: HashSet<IpAddr> = HashSet::new();
    for b in blocks {
        if let Some(p) = block_problem(b) {
            r.invalid_blocks.push((b.name.clone(), p));
            continue;
        }
        if let Some(n) = b.spec.affine_node()
            && !nodes.contains(n)
        {
            r.blocks_with_missing_node.push(b.spec.cidr);
        }
        for a in &b.spec.allocations {
            let Some(ip) = b.spec.ip_of(a.ordinal) else {
                continue;
            };
            if !seen_ips.insert(ip) {
                r.duplicate_addresses.push(ip);
            }
            let pod = match (&a.attrs.namespace, &a.attrs.pod) {
                (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
                _ => None,
            };
            let aref = AllocationRef {
                ip,
                block: b.spec.cidr,
                handle: a.handle.clone(),
                pod: pod.clone(),
                node: a.attrs.node.clone(),
            };
            let Some(pod) = pod else { continue };
            match live.get(&pod) {
                None => r.allocations_without_pod.push(aref),
                Some(p) => {
                    pods_with_alloc.insert(pod);
                    if !p.ips.is_empty() && !p.ips.contains(&ip) {
                        r.allocations_with_other_pod_ips.push(aref);
                    }
                }
            }
        }
    }
    r.pods_without_allocation = live
        .keys()
        .filter(|k| !pods_with_alloc.contains(*k))
        .cloned()
        .collect();
    r.allocations_without_pod.sort_by_key(|a| a.ip);
    r.allocations_with_other_pod_ips.sort_by_key(|a| a.ip);
    r.blocks_with_missing_node.sort();
    r.duplicate_addresses.sort();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Allocation, IpamBlockSpec, PoolParams};
    use crate::store::Versioned;

    fn blk(cidr: &str, node: &str, allocs: &[(u32, &str, &str)]) -> BlockObject {
        let cidr: Cidr = cidr.parse().unwrap();
        let mut spec = IpamBlockSpec::new(cidr, Some(format!("host:{node}")), 5);
        for (o, pod, by) in allocs {
            spec.take_specific(*o).unwrap();
            spec.insert_allocation(Allocation {
                ordinal: *o,
                handle: format!("net.{pod}"),
                attrs: AllocationAttrs {
                    pod: Some(pod.to_string()),
                    namespace: Some("ns".into()),
                    node: Some(by.to_string()),
                },
                sequence: 1,
            });
        }
        Versioned {
            name: block_name(&cidr),
            resource_version: "1".into(),
            spec,
        }
    }

    /// An IPv6 /48 holds 2^80 addresses in 2^74 blocks of /122: more than
    /// a u64, shown exactly (they used to saturate at 2^64-1 and 2^63).
    #[test]
    fn ipv6_pool_sizes_are_exact() {
        let pools = vec![Versioned {
            name: "p6".into(),
            resource_version: "1".into(),
            spec: PoolParams::new("2001:db8::/48".parse().unwrap()),
        }];
        let s = show(&pools, &[], false, 0, 0);
        assert_eq!(s.pools[0].capacity.to_string(), "1208925819614629174706176");
        assert_eq!(
            s.pools[0].block_capacity.to_string(),
            "18889465931478580854784"
        );
    }

    #[test]
    fn show_and_lookup() {
        let pools = vec![Versioned {
            name: "p4".into(),
            resource_version: "1".into(),
            spec: PoolParams::new("198.19.0.0/16".parse().unwrap()),
        }];
        let blocks = vec![
            blk("198.19.0.0/26", "n1", &[(0, "a", "n1"), (1, "b", "n2")]),
            blk("198.19.0.64/26", "n2", &[]),
        ];
        let s = show(&pools, &blocks, true, 0, 0);
        assert_eq!(s.pools[0].allocated, 2);
        assert_eq!(s.pools[0].blocks, 2);
        assert_eq!(s.pools[0].capacity, Count::from(65536u64));
        assert_eq!(s.pools[0].block_capacity, Count::from(1024u64));
        assert_eq!(s.blocks[0].borrowed, 1);
        assert_eq!(s.blocks[0].free, 62);
        assert!(show(&pools, &blocks, false, 0, 0).blocks.is_empty());
        let i = lookup_ip(&pools, &blocks, "198.19.0.1".parse().unwrap());
        assert_eq!(i.handle.as_deref(), Some("net.b"));
        assert_eq!(i.affinity.as_deref(), Some("host:n1"));
        let i = lookup_ip(&pools, &blocks, "198.19.9.9".parse().unwrap());
        assert_eq!(
            (i.pool.as_deref(), i.block, i.handle),
            (Some("p4"), None, None)
        );
    }

    #[test]
    fn check_finds_each_kind_of_problem() {
        let blocks = vec![
            blk(
                "198.19.0.0/26",
                "n1",
                &[(0, "a", "n1"), (1, "gone", "n1"), (2, "c", "n1")],
            ),
            blk("198.19.0.64/26", "dead", &[]),
        ];
        let pods = vec![
            LivePod {
                namespace: "ns".into(),
                name: "a".into(),
                node: "n1".into(),
                ips: vec!["198.19.0.0".parse().unwrap()],
            },
            LivePod {
                namespace: "ns".into(),
                name: "c".into(),
                node: "n1".into(),
                ips: vec!["198.19.0.50".parse().unwrap()],
            },
            LivePod {
                namespace: "ns".into(),
                name: "noip".into(),
                node: "n1".into(),
                ips: vec![],
            },
        ];
        let nodes: HashSet<String> = ["n1".to_string()].into();
        let r = check(&blocks, &pods, &nodes);
        assert_eq!(r.allocations_without_pod.len(), 1);
        assert_eq!(r.allocations_without_pod[0].handle, "net.gone");
        assert_eq!(r.allocations_with_other_pod_ips[0].handle, "net.c");
        assert_eq!(r.pods_without_allocation, vec!["ns/noip".to_string()]);
        assert_eq!(
            r.blocks_with_missing_node,
            vec!["198.19.0.64/26".parse().unwrap()]
        );
        assert!(!r.is_clean());
        assert!(r.duplicate_addresses.is_empty() && r.invalid_blocks.is_empty());
    }
}
