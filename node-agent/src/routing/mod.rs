//! Routing: what this node's BGP speaker should do, and the task that makes
//! it so. One job per file:
//!
//! ```text
//!  cluster (Nodes, BGPPeers, BGPConfigurations, BGPFilters, IPPools,
//!           Services, EndpointSlices) ─────────────────── generations ──┐
//!  IPAM view (affine blocks, borrowed addresses) ──────── changed ──────┼─► task ──► speaker ──► Speaker
//!  password Secrets (secrets: on BGPPeer change, refresh) ──────────────┤    │    peers, originate/withdraw
//!  status timer (250ms) ─────────────────────────────────────────────────┘    └─► report: /status, metrics
//!
//!  Speaker ──best-path batches──► fib_task ──► kernel (route protocol 80, ECMP)
//! ```
//!
//! - [`input`]: the facts, read from the cluster view;
//! - [`desired`] (here): a pure function of those facts, from
//!   [`peers`] (the node-to-node topology — full mesh, or only the sessions
//!   with reflectors above `nodeToNodeMeshMaxNodes` — and the `BGPPeer`s
//!   that concern this node) and
//!   [`originate`] (blocks affine to this node, addresses it borrowed,
//!   service ranges and the Service addresses it announces, see
//!   [`services`]);
//! - [`speaker`]: diffs it against what the speaker runs, make-before-break
//!   ([`handover`]: peers no longer wanted wait for the new peers' routes;
//!   a restarted speaker is a graceful restart);
//! - [`secrets`]: BGP passwords, read only when they can have changed;
//! - [`fib_task`]: best paths into the kernel; a child of the routing
//!   run, which awaits it: when it ends or panics, the run ends and the
//!   supervisor starts a fresh one (speaker and FIB task);
//! - [`report`]: session status for `/status`, readiness and metrics;
//! - [`task`]: the loop that ties them together, with backoff on failure.

pub mod fib_task;
pub mod handover;
pub mod input;
pub mod originate;
pub mod peers;
pub mod report;
pub mod secrets;
pub mod services;
pub mod speaker;
pub mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bgp::config::PeerConfig;
use bgp::rib::filter::Rule;
use bgp::wire::{Community, CommunityError, CommunitySet, Prefix};
use ipnetwork::IpNetwork;

use crate::k8s::crd::{BGPConfigurationSpec, BGPFilterSpec, BGPPeerSpec};
use crate::k8s::ipam::view::IpamView;
use crate::k8s::node::NodeFacts;
use services::{ServiceFacts, ServiceKey};

/// Default graceful-restart time we announce, seconds.
pub const DEFAULT_GR_TIME: u16 = 120;

/// Inputs of [`desired`].
#[derive(Debug, Clone)]
pub struct RoutingInput {
    /// This node.
    pub me: NodeFacts,
    /// Every node (this one included).
    pub nodes: Vec<NodeFacts>,
    /// BGPConfiguration objects by name (`default`, `node.<name>`).
    pub configs: BTreeMap<String, BGPConfigurationSpec>,
    /// BGPPeer objects by name.
    pub peers: BTreeMap<String, BGPPeerSpec>,
    /// Resolved BGP passwords by (secret name, key).
    pub passwords: BTreeMap<(String, String), String>,
    /// Pools whose blocks must not be announced.
    pub no_export: Vec<IpNetwork>,
    /// Pools whose routes may be announced (the default export filter).
    pub export_pools: Vec<IpNetwork>,
    /// BGPFilter objects by name.
    pub filters: BTreeMap<String, BGPFilterSpec>,
    /// Every Service.
    pub services: Vec<ServiceFacts>,
    /// The Services with a ready endpoint on this node.
    pub ready_here: BTreeSet<ServiceKey>,
    /// We came back with forwarding state preserved (our routes were still
    /// in the kernel at start).
    pub restarting: bool,
}

/// The speaker's desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Our AS.
    pub local_as: u32,
    /// Our router id.
    pub router_id: Ipv4Addr,
    /// Our route reflector cluster ID, when this node is a route reflector.
    pub cluster_id: Option<Ipv4Addr>,
    /// Where to listen.
    pub listen: Vec<SocketAddr>,
    /// Peers by name.
    pub peers: BTreeMap<String, PeerConfig>,
    /// Prefixes to originate, with communities.
    pub originate: BTreeMap<Prefix, CommunitySet>,
    /// Export rules after every peer's own filters: only pool and service
    /// networks leave the node (it is no transit for other routes).
    pub default_export: Vec<Rule>,
    /// Kind of each peer, as `margayctl node status` shows it: node-mesh,
    /// global, node-specific or selector.
    pub kinds: BTreeMap<String, &'static str>,
    /// The node-to-node topology, for logs and status.
    pub topology: peers::Topology,
    /// Problems found (invalid peers etc.), for logs and status.
    pub problems: Vec<String>,
}

/// The effective BGPConfiguration for `node`: `default` overlaid with
/// `node.<node>`.
pub fn effective_config(
    configs: &BTreeMap<String, BGPConfigurationSpec>,
    node: &str,
) -> BGPConfigurationSpec {
    let base = configs.get("default").cloned().unwrap_or_default();
    // Always through `overlay`, which keeps per-node-only fields out of
    // the default.
    base.overlay(
        configs
            .get(&format!("node.{node}"))
            .unwrap_or(&BGPConfigurationSpec::default()),
    )
}

/// A community reference of a `prefixAdvertisements` or `BGPPeer` entry:
/// a name from `BGPConfiguration.spec.communities`, else a value (standard
/// `ASN:VALUE`, large `ASN:L1:L2`, extended `rt:`/`ro:ADMIN:VALUE`, or a
/// well-known name such as `no-export`).
pub fn resolve_community(
    named: &BTreeMap<String, String>,
    r: &str,
) -> Result<Community, CommunityError> {
    named.get(r).map(String::as_str).unwrap_or(r).parse()
}

/// Computes the speaker's desired state from the cluster facts.
pub fn desired(input: &RoutingInput, view: &IpamView) -> Desired {
    let me = &input.me;
    let cfg = effective_config(&input.configs, &me.name);
    let port = cfg.listen_port();
    let mut problems = Vec::new();
    let listen: Vec<SocketAddr> = [me.ipv4.map(IpAddr::V4), me.ipv6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    // Named communities of the configuration; every value checked once.
    let named: BTreeMap<String, String> = cfg
        .communities
        .iter()
        .map(|c| (c.name.clone(), c.value.clone()))
        .collect();
    for c in &cfg.communities {
        if let Err(e) = c.value.parse::<Community>() {
            problems.push(format!("communities {}: {e}", c.name));
        }
    }
    let peers::Peers {
        peers,
        kinds,
        cluster_id,
        topology,
    } = peers::peers(input, &cfg, &named, &mut problems);
    let originate::Origination {
        originate,
        default_export,
    } = originate::origination(input, view, &cfg, &named, &mut problems);
    Desired {
        local_as: cfg.as_number(),
        router_id: peers::router_id(me),
        cluster_id,
        listen,
        default_export,
        kinds,
        peers,
        originate,
        topology,
        problems,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod topology_tests;
