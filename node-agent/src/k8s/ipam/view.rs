//! What the IPAM blocks say, distilled for the rest of the agent: the blocks
//! affine to this node, the addresses allocated by this node (its pods), the
//! ones borrowed from other nodes' blocks, and every pod's addresses
//! cluster-wide.
//!
//! ```text
//!  Store::watch_blocks ──► view task (owns the block map) ──► watch::Sender<Arc<IpamView>>
//!                                                               ├─► dataplane (routes, policy pod IPs)
//!                                                               └─► routing (originate blocks, /32s)
//! ```
//!
//! The IPAM blocks are the authoritative pod → address map: an address is
//! known the moment it is allocated, before kubelet reports `podIPs`, and
//! after an agent restart the local endpoints can be rebuilt from it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use ipam::{BlockEvent, BlockObject, Store};
use ipnetwork::IpNetwork;
use tokio::sync::watch;

use super::podips::PodIps;
use crate::dataplane::veth::VethName;
use crate::k8s::endpointcache::PodName;

/// One address allocated by this node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalAllocation {
    /// The address.
    pub ip: IpAddr,
    /// Pod namespace (empty for a standalone workload).
    pub namespace: String,
    /// Pod name (empty for a standalone workload).
    pub pod: String,
    /// The IPAM handle.
    pub handle: String,
    /// Whether it comes from a block affine to another node (or none).
    pub borrowed: bool,
    /// The host-side veth the CNI plugin created for it.
    pub host_if: String,
}

impl LocalAllocation {
    /// A container started outside Kubernetes (`ctr run --cni`, podman):
    /// allocated by the CNI plugin without a pod identity.
    pub fn standalone(&self) -> bool {
        self.namespace.is_empty() && self.pod.is_empty()
    }
}

/// Handle prefix of a node's IPv4 VXLAN tunnel address (Calico's name).
const TUNNEL_V4: &str = "vxlan-tunnel-addr-";
/// Handle prefix of a node's IPv6 VXLAN tunnel address.
const TUNNEL_V6: &str = "vxlan-v6-tunnel-addr-";

/// The IPAM handle of `node`'s VXLAN tunnel address in one family:
/// `vxlan-tunnel-addr-<node>` / `vxlan-v6-tunnel-addr-<node>`, as Calico
/// names them. Such an allocation has no pod: the leak GC never takes it,
/// and it is nobody's endpoint.
pub fn tunnel_handle(node: &str, v6: bool) -> String {
    format!("{}{node}", if v6 { TUNNEL_V6 } else { TUNNEL_V4 })
}

/// Whether `handle` is a VXLAN tunnel address's ([`tunnel_handle`]).
pub fn is_tunnel_handle(handle: &str) -> bool {
    handle.starts_with(TUNNEL_V4) || handle.starts_with(TUNNEL_V6)
}

/// The distilled view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpamView {
    /// True once the first full list of blocks has been seen.
    pub synced: bool,
    /// Blocks affine to this node.
    pub affine_blocks: BTreeSet<IpNetwork>,
    /// Addresses allocated by this node for workloads (pods and standalone
    /// containers; not its tunnel addresses).
    pub local: Vec<LocalAllocation>,
    /// This node's VXLAN tunnel addresses ([`tunnel_handle`]), at most one
    /// per family; `host_if` is empty.
    pub tunnels: Vec<LocalAllocation>,
    /// Where everything that lives on another node is: each block affine
    /// to another node, and each address another node allocated outside
    /// its own blocks (a borrowed /32 or /128), with that node's name.
    /// Shared: it changes only when blocks come, go or change hands, or an
    /// address is borrowed or given back, and the view task builds it
    /// again only then.
    pub remote: Arc<BTreeMap<IpNetwork, String>>,
    /// Every pod's addresses, cluster-wide, by (namespace, name). Shared:
    /// copies of one view share it, and a new view shares with the last
    /// the shards no block event touched, so a reader can tell a new
    /// view's addresses from ones it already saw ([`PodIps::same_shard`]).
    pub pod_ips: PodIps,
}

/// Who made one allocation, as the view tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Maker {
    /// No node recorded.
    Nobody,
    /// This node; with the handle (local allocations are listed by it).
    Me(Box<str>),
    /// The node the block is affine to.
    Affine,
    /// Another node (outside its own blocks: a borrowed address).
    Other(Arc<str>),
}

/// One allocation as the view reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    ip: IpAddr,
    maker: Maker,
    /// (namespace, pod), when the allocation has a pod identity; the
    /// strings are shared with the view's [`PodIps`] (and the namespace
    /// with every pod of it, see [`Names`]).
    pod: Option<PodName>,
}

/// Strings many allocations repeat (namespaces, node names), one copy
/// each: the view task keeps one set for all the blocks it holds.
#[derive(Debug, Default)]
pub struct Names(HashSet<Arc<str>>);

impl Names {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.0.insert(a.clone());
        a
    }

    /// Forgets the strings no digest holds any more.
    fn prune(&mut self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// What the view reads of one IPAM block, and all it keeps of it: the
/// network, the affinity, and per allocation the address, who made it and
/// the pod — the handle only for this node's allocations, nothing of the
/// free list, sequences or timestamps. The view task holds one per block
/// of the cluster (docs/scale.md, "Where the memory goes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDigest {
    net: IpNetwork,
    /// `host:<node>` (or another affinity), if any.
    affinity: Option<Box<str>>,
    held: Vec<Held>,
}

impl BlockDigest {
    /// The digest of `b` for node `me`; `None` (logged) for a block whose
    /// CIDR is unusable. Allocations outside the block are dropped (logged).
    /// Namespaces and node names come from `names`.
    pub fn of(b: &BlockObject, me: &str, names: &mut Names) -> Option<BlockDigest> {
        let spec = &b.spec;
        let Ok(net) = spec.cidr.to_string().parse::<IpNetwork>() else {
            tracing::warn!(block = %b.name, cidr = %spec.cidr, "block with an unusable CIDR ignored");
            return None;
        };
        let affine_to = spec
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"));
        let mut held = Vec::with_capacity(spec.allocations.len());
        for a in &spec.allocations {
            let Some(ip) = nth(net, a.ordinal) else {
                tracing::warn!(block = %b.name, ordinal = a.ordinal, "allocation outside its block ignored");
                continue;
            };
            let maker = match a.attrs.node.as_deref() {
                None => Maker::Nobody,
                Some(n) if n == me => Maker::Me(a.handle.as_str().into()),
                Some(n) if affine_to == Some(n) => Maker::Affine,
                Some(n) => Maker::Other(names.get(n)),
            };
            let pod = a
                .attrs
                .namespace
                .as_deref()
                .zip(a.attrs.pod.as_deref())
                .map(|(ns, pod)| PodName {
                    namespace: names.get(ns),
                    name: pod.into(),
                });
            held.push(Held { ip, maker, pod });
        }
        Some(BlockDigest {
            net,
            affinity: spec.affinity.as_deref().map(Into::into),
            held,
        })
    }

    /// The (pod, address) pairs of this block.
    fn pod_addresses(&self) -> impl Iterator<Item = (&PodName, IpAddr)> {
        self.held
            .iter()
            .filter_map(|a| a.pod.as_ref().map(|p| (p, a.ip)))
    }

    /// Records this block's pods' addresses in `pod_ips`.
    pub fn add_pod_ips(&self, pod_ips: &mut PodIps) {
        for (pod, ip) in self.pod_addresses() {
            pod_ips.insert(pod, ip);
        }
    }

    /// Updates `pod_ips` for this block's digest replacing `old` (either
    /// may be absent: a new or a deleted block). Pairs in both are left
    /// alone, so that a block event rewrites only the shards of the pods
    /// whose addresses it changed.
    pub fn replace_pod_ips(old: Option<&Self>, new: Option<&Self>, pod_ips: &mut PodIps) {
        let kept: HashSet<(&str, &str, IpAddr)> = new
            .into_iter()
            .flat_map(|d| d.pod_addresses())
            .map(|(p, ip)| (&*p.namespace, &*p.name, ip))
            .collect();
        for (pod, ip) in old.into_iter().flat_map(|d| d.pod_addresses()) {
            if !kept.contains(&(&*pod.namespace, &*pod.name, ip)) {
                pod_ips.remove(&pod.namespace, &pod.name, ip);
            }
        }
        if let Some(d) = new {
            d.add_pod_ips(pod_ips);
        }
    }
}

/// What one block adds to the view, worked out once per version of the
/// block (the view task keeps it beside the digest, so that a new view
/// after one block event does not read every allocation of the cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Part {
    /// The block, when it is affine to this node.
    affine: Option<IpNetwork>,
    /// Its entries of [`IpamView::remote`].
    remote: Vec<(IpNetwork, Arc<str>)>,
    /// This node's workloads in it.
    local: Vec<LocalAllocation>,
    /// This node's tunnel addresses in it.
    tunnels: Vec<LocalAllocation>,
}

impl Part {
    /// [`IpamView::remote`] of these parts (in block order: a later
    /// block's entry for the same network wins, as it always did).
    fn remote_of<'a>(parts: impl IntoIterator<Item = &'a Part>) -> BTreeMap<IpNetwork, String> {
        let mut m = BTreeMap::new();
        for p in parts {
            for (net, node) in &p.remote {
                m.insert(*net, node.to_string());
            }
        }
        m
    }
}

impl BlockDigest {
    /// What this block adds to the view of the node whose affinity is
    /// `affinity` (`host:<node>`).
    fn part(&self, affinity: &str) -> Part {
        let net = self.net;
        let ours = self.affinity.as_deref() == Some(affinity);
        let mut part = Part::default();
        match self
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
        {
            _ if ours => part.affine = Some(net),
            Some(other) => part.remote.push((net, other.into())),
            None => {}
        }
        for a in &self.held {
            let ip = a.ip;
            match &a.maker {
                Maker::Me(handle) if is_tunnel_handle(handle) => {
                    part.tunnels.push(LocalAllocation {
                        ip,
                        namespace: String::new(),
                        pod: String::new(),
                        handle: handle.to_string(),
                        borrowed: !ours,
                        host_if: String::new(),
                    });
                }
                Maker::Me(handle) => {
                    // No pod identity: a standalone workload the CNI
                    // plugin wired (only the CNI allocates through the
                    // agent), keyed by its handle.
                    let (namespace, pod) = a
                        .pod
                        .as_ref()
                        .map(|p| (p.namespace.to_string(), p.name.to_string()))
                        .unwrap_or_default();
                    part.local.push(LocalAllocation {
                        ip,
                        host_if: VethName::for_attachment(&namespace, &pod, handle, "eth0").into(),
                        namespace,
                        pod,
                        handle: handle.to_string(),
                        borrowed: !ours,
                    });
                }
                // Another node's address outside its own blocks.
                Maker::Other(n) => part.remote.push((IpNetwork::from(ip), n.clone())),
                Maker::Affine | Maker::Nobody => {}
            }
        }
        part
    }
}

impl IpamView {
    /// Distils `blocks` for node `me`.
    pub fn from_blocks<'a>(
        blocks: impl IntoIterator<Item = &'a BlockObject>,
        me: &str,
    ) -> IpamView {
        let mut names = Names::default();
        let digests: Vec<BlockDigest> = blocks
            .into_iter()
            .filter_map(|b| BlockDigest::of(b, me, &mut names))
            .collect();
        let mut pod_ips = PodIps::default();
        for d in &digests {
            d.add_pod_ips(&mut pod_ips);
        }
        IpamView::from_digests(&digests, me, pod_ips)
    }

    /// Distils the digests of the blocks ([`BlockDigest::of`] for the same
    /// `me`); `pod_ips` is their pods' addresses, kept up to date by the
    /// caller ([`BlockDigest::add_pod_ips`], [`BlockDigest::replace_pod_ips`]).
    pub fn from_digests<'a>(
        blocks: impl IntoIterator<Item = &'a BlockDigest>,
        me: &str,
        pod_ips: PodIps,
    ) -> IpamView {
        let affinity = ipam::model::host_affinity(me);
        let parts: Vec<Part> = blocks.into_iter().map(|b| b.part(&affinity)).collect();
        let remote = Arc::new(Part::remote_of(parts.iter()));
        IpamView::from_parts(parts.iter(), remote, pod_ips)
    }

    /// The view the blocks' parts make, with `remote` made of the same
    /// parts ([`Part::remote_of`]).
    fn from_parts<'a>(
        parts: impl IntoIterator<Item = &'a Part>,
        remote: Arc<BTreeMap<IpNetwork, String>>,
        pod_ips: PodIps,
    ) -> IpamView {
        let mut view = IpamView {
            synced: true,
            remote,
            pod_ips,
            ..IpamView::default()
        };
        for p in parts {
            view.affine_blocks.extend(p.affine);
            view.local.extend(p.local.iter().cloned());
            view.tunnels.extend(p.tunnels.iter().cloned());
        }
        view.local.sort();
        view.tunnels.sort();
        view
    }

    /// Addresses this node borrowed (announced as host routes), its
    /// tunnel addresses included.
    pub fn borrowed(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.local
            .iter()
            .chain(&self.tunnels)
            .filter(|a| a.borrowed)
            .map(|a| a.ip)
    }

    /// This node's tunnel address in one family, if IPAM holds one.
    pub fn tunnel_address(&self, v6: bool) -> Option<IpAddr> {
        self.tunnels
            .iter()
            .find(|a| a.ip.is_ipv6() == v6)
            .map(|a| a.ip)
    }
}

fn nth(net: IpNetwork, ordinal: u32) -> Option<IpAddr> {
    match net {
        IpNetwork::V4(n) => n.nth(ordinal).map(IpAddr::V4),
        IpNetwork::V6(n) => {
            let base = u128::from(n.network());
            let size_bits = 128 - u32::from(n.prefix());
            if size_bits < 32 && u64::from(ordinal) >= (1u64 << size_bits) {
                return None;
            }
            Some(IpAddr::V6(base.checked_add(u128::from(ordinal))?.into()))
        }
    }
}

/// What the view task holds of the cluster's blocks: a digest per block,
/// not the block (the view reads a few fields), with what the block adds
/// to the view; every pod's addresses kept up to date block by block; and
/// the remote map, built again only when a block's share of it changed.
#[derive(Default)]
struct Digests {
    blocks: BTreeMap<String, (BlockDigest, Part)>,
    names: Names,
    pod_ips: PodIps,
    remote: Arc<BTreeMap<IpNetwork, String>>,
    remote_stale: bool,
}

impl Digests {
    /// Takes in one event of the block watch, for node `me`.
    fn apply(&mut self, ev: &BlockEvent, me: &str) {
        let affinity = ipam::model::host_affinity(me);
        match ev {
            BlockEvent::Resync(all) => {
                self.blocks.clear();
                self.pod_ips.clear();
                self.names.prune();
                for b in all {
                    if let Some(d) = BlockDigest::of(b, me, &mut self.names) {
                        d.add_pod_ips(&mut self.pod_ips);
                        let part = d.part(&affinity);
                        self.blocks.insert(b.name.clone(), (d, part));
                    }
                }
                self.remote_stale = true;
            }
            BlockEvent::Applied(b) => {
                let old = match BlockDigest::of(b, me, &mut self.names) {
                    Some(d) => {
                        let part = d.part(&affinity);
                        self.blocks.insert(b.name.clone(), (d, part))
                    }
                    None => self.blocks.remove(&b.name),
                };
                let new = self.blocks.get(&b.name);
                replaced(&mut self.pod_ips, &mut self.remote_stale, old.as_ref(), new);
            }
            BlockEvent::Deleted { name } => {
                let old = self.blocks.remove(name);
                replaced(
                    &mut self.pod_ips,
                    &mut self.remote_stale,
                    old.as_ref(),
                    None,
                );
            }
        }
    }

    /// The view of what it holds.
    fn view(&mut self) -> IpamView {
        if std::mem::take(&mut self.remote_stale) {
            self.remote = Arc::new(Part::remote_of(self.blocks.values().map(|(_, p)| p)));
        }
        IpamView::from_parts(
            self.blocks.values().map(|(_, p)| p),
            self.remote.clone(),
            self.pod_ips.clone(),
        )
    }
}

/// Updates `pod_ips` for a block whose digest and part went from `old` to
/// `new`, and flags `remote_stale` when its share of the remote map moved.
fn replaced(
    pod_ips: &mut PodIps,
    remote_stale: &mut bool,
    old: Option<&(BlockDigest, Part)>,
    new: Option<&(BlockDigest, Part)>,
) {
    BlockDigest::replace_pod_ips(old.map(|o| &o.0), new.map(|n| &n.0), pod_ips);
    let old_remote = old.map_or(&[][..], |o| &o.1.remote[..]);
    let new_remote = new.map_or(&[][..], |n| &n.1.remote[..]);
    if old_remote != new_remote {
        *remote_stale = true;
    }
}

/// Runs the view task: follows the block watch (re-subscribing with backoff
/// when it breaks) and publishes a new view after every change.
///
/// Each event is then handed to `feed` (the node's allocator), so that one
/// list and watch of the cluster's blocks serves both: before, the
/// allocator's cache followed a watch of its own, and every agent start
/// listed every block of the cluster one more time.
pub async fn run(
    store: Arc<dyn Store>,
    me: String,
    tx: Arc<watch::Sender<Arc<IpamView>>>,
    feed: Option<ipam::Allocator>,
    mut pulse: crate::status::health::Pulse,
) {
    let mut digests = Digests::default();
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut stream = store.watch_blocks();
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                () = pulse.tick() => continue,
            };
            let Some(ev) = ev else { break };
            match ev {
                Ok(ev) => {
                    backoff = Duration::from_millis(200);
                    digests.apply(&ev, &me);
                    let view = Arc::new(digests.view());
                    tx.send_if_modified(|cur| {
                        if **cur == *view {
                            false
                        } else {
                            *cur = view;
                            true
                        }
                    });
                    // The allocator's cache is an optimisation (every write
                    // is a CAS), so a stopped allocator only loses freshness.
                    if let Some(alloc) = &feed
                        && let Err(e) = alloc.apply_block_event(ev).await
                    {
                        tracing::debug!(error = %e, "the allocator takes no more block events");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "IPAM block watch failed; keeping the last view");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        pulse.beat();
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::endpointcache::NamePair;

    fn block(
        name: &str,
        cidr: &str,
        affinity: Option<&str>,
        allocs: serde_json::Value,
    ) -> BlockObject {
        let spec = serde_json::from_value(serde_json::json!({
            "cidr": cidr,
            "affinity": affinity,
            "allocations": allocs,
            "free": [],
        }))
        .expect("block spec");
        BlockObject {
            name: name.into(),
            resource_version: "1".into(),
            spec,
        }
    }

    #[test]
    fn distils_affinity_local_borrowed_and_cluster_pod_ips() {
        let blocks = [
            block(
                "b1",
                "198.19.0.0/26",
                Some("host:n1"),
                serde_json::json!([
                    {"ordinal": 2, "handle": "net.c1", "pod": "a", "namespace": "x", "node": "n1", "sequence": 1},
                    {"ordinal": 3, "handle": "net.c9", "pod": "z", "namespace": "x", "node": "n2", "sequence": 1},
                    {"ordinal": 9, "handle": "net.ctr1", "node": "n1", "sequence": 1},
                    {"ordinal": 10, "handle": "net.ctr2", "node": "n2", "sequence": 1},
                ]),
            ),
            block(
                "b2",
                "198.19.0.64/26",
                Some("host:n2"),
                serde_json::json!([
                    {"ordinal": 5, "handle": "net.c2", "pod": "b", "namespace": "y", "node": "n1", "sequence": 1},
                ]),
            ),
            block(
                "b3",
                "2001:db8::/122",
                Some("host:n1"),
                serde_json::json!([
                    {"ordinal": 2, "handle": "net.c1", "pod": "a", "namespace": "x", "node": "n1", "sequence": 1},
                ]),
            ),
        ];
        let v = IpamView::from_blocks(&blocks, "n1");
        assert!(v.synced);
        let affine: Vec<String> = v.affine_blocks.iter().map(|n| n.to_string()).collect();
        assert_eq!(affine, vec!["198.19.0.0/26", "2001:db8::/122"]);
        let local: Vec<(String, bool)> = v
            .local
            .iter()
            .map(|a| (a.ip.to_string(), a.borrowed))
            .collect();
        assert_eq!(
            local,
            vec![
                ("198.19.0.2".to_string(), false),
                ("198.19.0.9".to_string(), false),
                ("198.19.0.69".to_string(), true),
                ("2001:db8::2".to_string(), false),
            ]
        );
        assert_eq!(
            v.borrowed().map(|i| i.to_string()).collect::<Vec<_>>(),
            vec!["198.19.0.69"]
        );
        assert_eq!(
            v.pod_ips
                .get("x", "a")
                .expect("pod x/a")
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>(),
            vec!["198.19.0.2", "2001:db8::2"]
        );
        assert!(v.pod_ips.get("x", "z").is_some(), "other nodes' pods too");
        // A standalone workload (no pod identity) of this node is local,
        // keyed by its handle, and is nobody's pod address.
        let ctr = v
            .local
            .iter()
            .find(|a| a.handle == "net.ctr1")
            .expect("standalone workload listed");
        assert!(ctr.standalone());
        assert_eq!(
            ctr.host_if,
            VethName::for_attachment("", "", "net.ctr1", "eth0").as_str()
        );
        assert!(!v.local.iter().any(|a| a.handle == "net.ctr2"));
        assert_eq!(v.pod_ips.len(), 3);
        let pod = v.local.iter().find(|a| a.pod == "a").expect("pod a");
        assert!(!pod.standalone());
        assert_eq!(pod.host_if, VethName::for_pod("x", "a").as_str());
    }

    #[test]
    fn tunnel_addresses_and_where_remote_destinations_live() {
        let blocks = [
            block(
                "b1",
                "198.19.0.0/26",
                Some("host:n1"),
                serde_json::json!([
                    {"ordinal": 3, "handle": "net.c9", "pod": "z", "namespace": "x", "node": "n2", "sequence": 1},
                ]),
            ),
            block(
                "b2",
                "198.19.0.64/26",
                Some("host:n2"),
                serde_json::json!([
                    {"ordinal": 1, "handle": tunnel_handle("n2", false), "node": "n2", "sequence": 1},
                    {"ordinal": 5, "handle": tunnel_handle("n1", false), "node": "n1", "sequence": 1},
                ]),
            ),
            block(
                "b3",
                "198.19.0.128/26",
                None,
                serde_json::json!([
                    {"ordinal": 2, "handle": "net.c7", "pod": "y", "namespace": "x", "node": "n3", "sequence": 1},
                ]),
            ),
        ];
        let v = IpamView::from_blocks(&blocks, "n1");
        // Tunnel addresses are not workloads: no route to a veth, no policy.
        assert!(v.local.is_empty(), "{:?}", v.local);
        assert_eq!(v.tunnel_address(false), "198.19.0.69".parse().ok());
        assert_eq!(v.tunnel_address(true), None);
        assert_eq!(
            v.borrowed().map(|i| i.to_string()).collect::<Vec<_>>(),
            vec!["198.19.0.69"],
            "a tunnel address from another node's block is announced"
        );
        let remote: Vec<(String, &str)> = v
            .remote
            .iter()
            .map(|(n, node)| (n.to_string(), node.as_str()))
            .collect();
        assert_eq!(
            remote,
            vec![
                ("198.19.0.3/32".to_string(), "n2"),
                ("198.19.0.64/26".to_string(), "n2"),
                ("198.19.0.130/32".to_string(), "n3"),
            ]
        );
        assert!(is_tunnel_handle(&tunnel_handle("n9", true)));
        assert!(!is_tunnel_handle("k8s-pod-network.c1"));
    }

    #[test]
    fn ordinals_outside_the_block_are_ignored() {
        assert_eq!(nth("198.19.0.0/30".parse().expect("net"), 4), None);
        assert_eq!(nth("2001:db8::/126".parse().expect("net"), 4), None);
        assert_eq!(
            nth("2001:db8::/122".parse().expect("net"), 63).map(|i| i.to_string()),
            Some("2001:db8::3f".into())
        );
    }

    /// The view task's incremental upkeep (one block at a time, copies of
    /// old views alive) gives the same view as distilling every block
    /// again, over a long random run of block events.
    #[test]
    fn block_by_block_upkeep_equals_a_full_distillation() {
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let nodes = ["n1", "n2", "n3"];
        let mut current: BTreeMap<String, BlockObject> = BTreeMap::new();
        let mut digests = Digests::default();
        let mut kept: Vec<(IpamView, IpamView)> = Vec::new();
        for step in 0..600 {
            let b = next(6);
            let name = format!("b{b}");
            let ev = match next(10) {
                0 => BlockEvent::Deleted { name: name.clone() },
                1 if step % 50 == 1 => BlockEvent::Resync(current.values().cloned().collect()),
                _ => {
                    let mut allocs = Vec::new();
                    for ordinal in 0..8u64 {
                        if next(3) == 0 {
                            continue;
                        }
                        // Few pods, so that one pod has addresses in
                        // several blocks (and several families).
                        let pod = next(12);
                        allocs.push(serde_json::json!({
                            "ordinal": ordinal,
                            "handle": format!("net.c{pod}"),
                            "pod": format!("p{pod}"),
                            "namespace": format!("ns{}", pod % 3),
                            "node": nodes[next(3) as usize],
                            "sequence": step,
                        }));
                    }
                    let cidr = match b % 2 {
                        0 => format!("198.19.{b}.0/26"),
                        _ => format!("2001:db8::{b}00/122"),
                    };
                    let affinity = format!("host:{}", nodes[(b % 3) as usize]);
                    BlockEvent::Applied(block(
                        &name,
                        &cidr,
                        Some(&affinity),
                        serde_json::Value::Array(allocs),
                    ))
                }
            };
            match &ev {
                BlockEvent::Resync(_) => {}
                BlockEvent::Applied(o) => {
                    current.insert(o.name.clone(), o.clone());
                }
                BlockEvent::Deleted { name } => {
                    current.remove(name);
                }
            }
            digests.apply(&ev, "n1");
            let view = digests.view();
            let full = IpamView::from_blocks(current.values(), "n1");
            assert_eq!(view, full, "step {step}");
            let mut a: Vec<_> = view
                .pod_ips
                .iter()
                .map(|(p, ips)| (p.pair(), ips.to_vec()))
                .collect();
            let mut b: Vec<_> = full
                .pod_ips
                .iter()
                .map(|(p, ips)| (p.pair(), ips.to_vec()))
                .collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "step {step}");
            // Readers keep old views: what they hold must not change.
            if step % 7 == 0 {
                kept.push((view, full));
            }
        }
        assert!(kept.len() > 10);
        for (i, (view, then)) in kept.iter().enumerate() {
            assert_eq!(view, then, "view kept at {i} changed since");
        }
    }
}
