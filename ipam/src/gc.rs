//! Leak GC planning: which allocations belong to pods that are gone.
//!
//! The agent calls [`LeakTracker::observe`] periodically with the blocks and
//! the live pods and nodes (from synced informers). An allocation becomes a
//! candidate when no live pod has its namespace/name; it is *ready* once it
//! has been a candidate for the grace period (default 15 min), or at once if
//! its node is gone as well. Right before releasing, the agent re-reads the
//! pods and calls [`LeakTracker::confirm`], which drops every candidate whose
//! pod exists again; [`crate::Allocator::release_targets`] then frees a slot
//! only if it still holds the same handle *and* allocation sequence, so a
//! re-allocated address is never freed.
//!
//! Allocations without pod attributes (a node's VXLAN tunnel address, a
//! container that is no pod) are candidates only once their node is gone,
//! and are then released at once. A pod that exists is never released, even if it reports other
//! IPs (that case is listed by [`crate::report::check`] for an operator).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::alloc::ReleaseTarget;
use crate::cidr::Cidr;
use crate::store::BlockObject;

/// Default grace period before a pod-less allocation is released.
pub const DEFAULT_GRACE_MS: u64 = 15 * 60 * 1000;

/// A pod as the GC sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LivePod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node it is scheduled on (empty if unscheduled).
    pub node: String,
    /// `status.podIPs` (may be empty while starting).
    pub ips: Vec<IpAddr>,
}

/// Why an allocation is considered leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakReason {
    /// No pod with this namespace/name exists.
    PodGone,
    /// No pod, and the allocating node is gone too (released at once).
    NodeGone,
}

/// An allocation that may be released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakCandidate {
    /// What to release.
    pub target: ReleaseTarget,
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block_cidr: Cidr,
    /// `namespace/name` of the pod it was for (empty: none, e.g. a tunnel
    /// address of a node that is gone).
    pub pod: String,
    /// The node that allocated it.
    pub node: Option<String>,
    /// When it was first seen without a pod (unix ms).
    pub first_seen_ms: u64,
    /// Why.
    pub reason: LeakReason,
}

/// Remembers since when each allocation has been without a pod.
#[derive(Debug)]
pub struct LeakTracker {
    grace_ms: u64,
    only_node: Option<String>,
    seen: HashMap<ReleaseTarget, u64>,
}

fn pod_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

impl LeakTracker {
    /// A tracker with a grace period. With `only_node`, only allocations made
    /// by that node, or by nodes that are gone, are considered (one tracker
    /// per agent; concurrent releases of the same slot are harmless).
    pub fn new(grace_ms: u64, only_node: Option<String>) -> Self {
        LeakTracker {
            grace_ms,
            only_node,
            seen: HashMap::new(),
        }
    }

    /// Number of allocations currently tracked as pod-less.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    /// Updates the candidates from a fresh view and returns those ready to
    /// release (sorted by address).
    pub fn observe(
        &mut self,
        blocks: &[BlockObject],
        pods: &[LivePod],
        nodes: &HashSet<String>,
        now_ms: u64,
    ) -> Vec<LeakCandidate> {
        let live: HashSet<String> = pods
            .iter()
            .map(|p| pod_key(&p.namespace, &p.name))
            .collect();
        self.observe_with(
            blocks,
            |ns, name| live.contains(&pod_key(ns, name)),
            nodes,
            now_ms,
        )
    }

    /// [`Self::observe`] with the live pods as a lookup (namespace, name),
    /// so that a cluster's pods need not be copied into a list for it.
    pub fn observe_with(
        &mut self,
        blocks: &[BlockObject],
        is_live: impl Fn(&str, &str) -> bool,
        nodes: &HashSet<String>,
        now_ms: u64,
    ) -> Vec<LeakCandidate> {
        let mut still = HashMap::new();
        let mut ready = Vec::new();
        for b in blocks {
            for a in &b.spec.allocations {
                let node_gone = a.attrs.node.as_ref().is_some_and(|n| !nodes.contains(n));
                if let Some(me) = &self.only_node
                    && a.attrs.node.as_ref() != Some(me)
                    && !node_gone
                {
                    continue;
                }
                let pod = match (&a.attrs.namespace, &a.attrs.pod) {
                    (Some(ns), Some(name)) if is_live(ns, name) => continue,
                    (Some(ns), Some(name)) => pod_key(ns, name),
                    // No pod to outlive: it lives as long as its node.
                    _ if node_gone => String::new(),
                    _ => continue,
                };
                let Some(ip) = b.spec.ip_of(a.ordinal) else {
                    continue;
                };
                let target = ReleaseTarget {
                    block: b.name.clone(),
                    ordinal: a.ordinal,
                    handle: a.handle.clone(),
                    sequence: a.sequence,
                };
                let first = self.seen.get(&target).copied().unwrap_or(now_ms);
                still.insert(target.clone(), first);
                let due = node_gone || now_ms.saturating_sub(first) >= self.grace_ms;
                if due {
                    ready.push(LeakCandidate {
                        target,
                        ip,
                        block_cidr: b.spec.cidr,
                        pod,
                        node: a.attrs.node.clone(),
                        first_seen_ms: first,
                        reason: if node_gone {
                            LeakReason::NodeGone
                        } else {
                            LeakReason::PodGone
                        },
                    });
                }
            }
        }
        self.seen = still;
        ready.sort_by_key(|c| c.ip);
        ready
    }

    /// Re-validation right before releasing: keeps only candidates whose pod
    /// still does not exist in `pods_now`, and forgets the others.
    pub fn confirm(
        &mut self,
        ready: Vec<LeakCandidate>,
        pods_now: &[LivePod],
    ) -> Vec<ReleaseTarget> {
        let live: HashSet<String> = pods_now
            .iter()
            .map(|p| pod_key(&p.namespace, &p.name))
            .collect();
        let mut out = Vec::new();
        for c in ready {
            if !c.pod.is_empty() && live.contains(&c.pod) {
                self.seen.remove(&c.target);
            } else {
                out.push(c.target);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Allocation, AllocationAttrs, IpamBlockSpec, block_name};
    use crate::store::Versioned;

    fn block(allocs: &[(u32, &str, Option<&str>, &str)]) -> BlockObject {
        let cidr: Cidr = "198.19.0.0/26".parse().unwrap();
        let mut spec = IpamBlockSpec::new(cidr, Some("host:n1".into()), 0);
        for (o, h, pod, node) in allocs {
            spec.take_specific(*o).unwrap();
            spec.insert_allocation(Allocation {
                ordinal: *o,
                handle: h.to_string(),
                attrs: AllocationAttrs {
                    pod: pod.map(String::from),
                    namespace: pod.map(|_| "ns".to_string()),
                    node: Some(node.to_string()),
                },
                sequence: 3,
            });
        }
        Versioned {
            name: block_name(&cidr),
            resource_version: "1".into(),
            spec,
        }
    }

    fn pod(name: &str) -> LivePod {
        LivePod {
            namespace: "ns".into(),
            name: name.into(),
            node: "n1".into(),
            ips: vec![],
        }
    }

    #[test]
    fn releases_only_after_grace_and_never_live_pods() {
        let b = vec![block(&[
            (0, "net.a", Some("a"), "n1"),
            (1, "net.b", Some("b"), "n1"),
            (2, "tunnel", None, "n1"),
        ])];
        let nodes: HashSet<String> = ["n1".to_string()].into();
        let mut t = LeakTracker::new(1000, None);
        assert!(t.observe(&b, &[pod("a")], &nodes, 0).is_empty());
        assert_eq!(t.tracked(), 1, "b is a candidate, tunnel never");
        assert!(t.observe(&b, &[pod("a")], &nodes, 999).is_empty());
        let ready = t.observe(&b, &[pod("a")], &nodes, 1000);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].pod, "ns/b");
        assert_eq!(ready[0].reason, LeakReason::PodGone);
        // The pod reappears before release: nothing is released.
        assert!(t.confirm(ready.clone(), &[pod("a"), pod("b")]).is_empty());
        assert_eq!(t.tracked(), 0);
        // A pod that comes back resets the clock.
        let mut t = LeakTracker::new(1000, None);
        t.observe(&b, &[pod("a")], &nodes, 0);
        t.observe(&b, &[pod("a"), pod("b")], &nodes, 500);
        assert!(t.observe(&b, &[pod("a")], &nodes, 1200).is_empty());
        let r = t.observe(&b, &[pod("a")], &nodes, 2200);
        assert_eq!(t.confirm(r, &[pod("a")]).len(), 1);
    }

    #[test]
    fn node_gone_is_immediate_and_only_node_filters() {
        let b = vec![block(&[
            (0, "net.a", Some("a"), "n1"),
            (1, "net.b", Some("b"), "gone"),
            (2, "net.c", Some("c"), "n2"),
        ])];
        let nodes: HashSet<String> = ["n1".to_string(), "n2".to_string()].into();
        let mut t = LeakTracker::new(1000, Some("n1".into()));
        let ready = t.observe(&b, &[], &nodes, 0);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].reason, LeakReason::NodeGone);
        assert_eq!(ready[0].target.handle, "net.b");
        assert_eq!(t.tracked(), 2, "n2's allocation is not ours to judge");
        let ready = t.observe(&b, &[], &nodes, 1000);
        let handles: Vec<_> = ready.iter().map(|c| c.target.handle.as_str()).collect();
        assert_eq!(handles, vec!["net.a", "net.b"]);
        assert_eq!(ready[0].target.sequence, 3);
    }

    #[test]
    fn allocations_without_a_pod_go_with_their_node_only() {
        let b = vec![block(&[
            (0, "vxlan-tunnel-addr-n1", None, "n1"),
            (1, "vxlan-tunnel-addr-gone", None, "gone"),
        ])];
        let nodes: HashSet<String> = ["n1".to_string()].into();
        let mut t = LeakTracker::new(1000, Some("n1".into()));
        for now in [0, 5000] {
            let ready = t.observe(&b, &[], &nodes, now);
            let handles: Vec<_> = ready.iter().map(|c| c.target.handle.as_str()).collect();
            assert_eq!(handles, ["vxlan-tunnel-addr-gone"], "at {now} ms");
            assert_eq!(ready[0].reason, LeakReason::NodeGone);
            // No pod to come back: confirmation keeps it.
            assert_eq!(t.confirm(ready, &[pod("a")]).len(), 1);
        }
    }

    #[test]
    fn reserve_units_are_not_leaks_and_go_with_their_node() {
        let b = vec![block(&[
            (0, "margay-reserve.n1.17", None, "n1"),
            (1, "margay-reserve.gone.3", None, "gone"),
            (2, "net.p", Some("p"), "n1"),
        ])];
        let nodes: HashSet<String> = ["n1".to_string()].into();
        let mut t = LeakTracker::new(1000, Some("n1".into()));
        for now in [0, 5000] {
            let ready = t.observe(&b, &[pod("p")], &nodes, now);
            let handles: Vec<_> = ready.iter().map(|c| c.target.handle.as_str()).collect();
            assert_eq!(handles, ["margay-reserve.gone.3"], "at {now} ms");
            assert_eq!(ready[0].reason, LeakReason::NodeGone);
        }
    }
}
