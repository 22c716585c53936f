//! Routing: what this node's BGP speaker should do, and the task that makes
//! it so.
//!
//! ```text
//!  cluster (Nodes, BGPPeers, BGPConfigurations, BGPFilters, IPPools,
//!           Services, EndpointSlices) ─────────────────── generations ──┐
//!  IPAM view (affine blocks, borrowed addresses) ──────── changed ──────┼─► routing task ──► Speaker
//!  status timer (250ms)─────────────────────────────────────────────────┘      │ peers, originate/withdraw
//!                                                                              ▼
//!  Speaker ──best-path batches──► FIB task ──► kernel (route protocol 80, ECMP)
//! ```
//!
//! [`desired`] is a pure function of the cluster facts: peers (node-to-node
//! mesh, `BGPPeer`s that select this node) and prefixes to originate (blocks
//! affine to this node, addresses it borrowed, service ranges and the
//! Service addresses this node announces, see [`services`]). The task diffs
//! it against what the speaker runs.
//!
//! Mesh sessions: both nodes configure each other, and the one with the
//! higher address is passive, so a pair has exactly one TCP session.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bgp::bfd::BfdConfig;
use bgp::config::{GracefulRestart, Neighbor, PeerBfd, PeerConfig, RemoteAs};
use bgp::rib::filter::{FilterAction, MatchOp, Rule};
use bgp::wire::{Community, CommunityError, CommunitySet, Prefix};
use ipnetwork::IpNetwork;

use crate::k8s::crd::{
    BGPConfigurationSpec, BGPFilterSpec, BGPPeerSpec, NextHopMode, SourceAddress,
    parse_peer_address,
};
use crate::k8s::ipam::view::IpamView;
use crate::k8s::node::NodeFacts;
use crate::k8s::node::annotations::ANN_RR_CLUSTER_ID;
use crate::k8s::selector::selects;

pub mod services;

use services::{ServiceFacts, ServiceKey, ServiceRanges};

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

fn prefix_of(net: IpNetwork) -> Option<Prefix> {
    Prefix::new(net.network(), net.prefix()).ok()
}

/// The route reflector cluster ID of `n`: `routeReflectorClusterID` of
/// its `node.<name>` BGPConfiguration, else its Node annotation; `None`
/// when it is no route reflector. An invalid value is reported and counts
/// as none.
fn rr_cluster_id(
    configs: &BTreeMap<String, BGPConfigurationSpec>,
    n: &NodeFacts,
    problems: &mut Vec<String>,
) -> Option<Ipv4Addr> {
    let crd = configs
        .get(&format!("node.{}", n.name))
        .and_then(|c| c.route_reflector_cluster_id.as_deref());
    let (v, source) = match crd {
        Some(v) => (
            v,
            format!("BGPConfiguration node.{}: routeReflectorClusterID", n.name),
        ),
        None => (
            n.rr_cluster_id.as_deref()?,
            format!("node {}: {ANN_RR_CLUSTER_ID}", n.name),
        ),
    };
    let v = v.trim();
    match v.parse() {
        Ok(id) => Some(id),
        Err(_) => {
            problems.push(format!(
                "{source} {v:?} is not an IPv4 address: not a route reflector"
            ));
            None
        }
    }
}

/// Router id: our IPv4 address, else a stable value from the node name.
pub fn router_id(me: &NodeFacts) -> Ipv4Addr {
    me.ipv4.unwrap_or_else(|| {
        use sha1::Digest as _;
        let d = sha1::Sha1::digest(me.name.as_bytes());
        Ipv4Addr::new(d[0] | 1, d[1], d[2], d[3])
    })
}

fn base_peer(
    name: String,
    input: &RoutingInput,
    local_as: u32,
    addr: IpAddr,
    remote_as: u32,
) -> PeerConfig {
    let mut p = PeerConfig::new(
        name,
        local_as,
        router_id(&input.me),
        Neighbor::Addr(addr),
        RemoteAs::Asn(remote_as),
    );
    p.hold_time = 30;
    p.connect_retry = Duration::from_secs(2);
    p.graceful_restart = Some(GracefulRestart {
        restart_time: DEFAULT_GR_TIME,
        restarting: input.restarting,
        ..GracefulRestart::default()
    });
    p.next_hop_v4 = input.me.ipv4;
    p.next_hop_v6 = input.me.ipv6;
    p.source_addr = match addr {
        IpAddr::V4(_) => input.me.ipv4.map(IpAddr::V4),
        IpAddr::V6(_) => input.me.ipv6.map(IpAddr::V6),
    };
    p
}

fn apply_peer_spec(
    p: &mut PeerConfig,
    spec: &BGPPeerSpec,
    input: &RoutingInput,
    named: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Result<(), String> {
    for c in &spec.communities {
        match resolve_community(named, c) {
            Ok(x) => p.communities.insert(x),
            Err(e) => problems.push(format!("{}: {e}", p.name)),
        }
    }
    // Filters fail closed: a peer whose filter is missing or invalid is not
    // configured, rather than sent (or accepting) everything.
    for name in &spec.filters {
        let f = input
            .filters
            .get(name)
            .ok_or_else(|| format!("BGPFilter {name} not found: session not configured"))?;
        let (import, export) = f
            .rules()
            .map_err(|e| format!("BGPFilter {name}: {e}: session not configured"))?;
        p.filters.import.extend(import);
        p.filters.export.extend(export);
    }
    if let Some(h) = spec.hold_time {
        p.hold_time = h;
    }
    p.keepalive = spec.keepalive_time;
    if let (Some(t), Some(gr)) = (spec.graceful_restart_time, p.graceful_restart.as_mut()) {
        gr.restart_time = t.min(4095);
    }
    p.max_prefix = spec.max_prefix;
    p.rr_client = spec.route_reflector_client;
    p.next_hop_self = matches!(spec.next_hop_mode, Some(NextHopMode::SelfNode));
    p.ttl_security = spec.ttl_security;
    p.bfd = spec.bfd.as_ref().map(|b| {
        let (rx, tx, mult) = b.effective();
        PeerBfd {
            timers: BfdConfig {
                desired_min_tx: Duration::from_millis(u64::from(tx)),
                required_min_rx: Duration::from_millis(u64::from(rx)),
                detect_mult: mult,
            },
            multihop: b.multihop,
        }
    });
    if matches!(spec.source_address, Some(SourceAddress::None)) {
        p.source_addr = None;
    }
    if let Some(sel) = &spec.password {
        let key = (sel.name.clone(), sel.key.clone());
        match input.passwords.get(&key) {
            Some(pw) => p.md5_password = Some(pw.clone()),
            None => {
                return Err(format!(
                    "password Secret {}/{} not found: session not configured (an MD5 peer would reject us)",
                    sel.name, sel.key
                ));
            }
        }
    }
    Ok(())
}

/// Computes the speaker's desired state from the cluster facts.
pub fn desired(input: &RoutingInput, view: &IpamView) -> Desired {
    let me = &input.me;
    let cfg = effective_config(&input.configs, &me.name);
    let local_as = cfg.as_number();
    let port = cfg.listen_port();
    let mut problems = Vec::new();
    let listen: Vec<SocketAddr> = [me.ipv4.map(IpAddr::V4), me.ipv6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    let mut peers = BTreeMap::new();
    let mut kinds = BTreeMap::new();
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
    let my_addr = me.ipv4.map(IpAddr::V4).or(me.ipv6.map(IpAddr::V6));
    // As a route reflector, every node peer outside our cluster is a client.
    let cluster_id = rr_cluster_id(&input.configs, me, &mut problems);
    if input
        .configs
        .get("default")
        .is_some_and(|c| c.route_reflector_cluster_id.is_some())
    {
        problems.push(
            "BGPConfiguration default: routeReflectorClusterID is per node (node.<name>): ignored"
                .into(),
        );
    }
    // (Another node's invalid cluster ID is that node's problem to report.)
    let client = |n: &NodeFacts| {
        cluster_id.is_some() && rr_cluster_id(&input.configs, n, &mut Vec::new()) != cluster_id
    };

    if cfg.mesh_enabled() {
        for n in input.nodes.iter().filter(|n| n.name != me.name) {
            // One session per pair, over IPv4 when both have it (it carries
            // both families), else IPv6.
            let theirs = match (me.ipv4, n.ipv4, me.ipv6, n.ipv6) {
                (Some(_), Some(a), _, _) => IpAddr::V4(a),
                (_, _, Some(_), Some(a)) => IpAddr::V6(a),
                _ => {
                    problems.push(format!(
                        "mesh: node {} has no address in a family we have",
                        n.name
                    ));
                    continue;
                }
            };
            let their_as = effective_config(&input.configs, &n.name).as_number();
            let mut p = base_peer(
                format!("mesh-{}", n.name),
                input,
                local_as,
                theirs,
                their_as,
            );
            let mine = if theirs.is_ipv4() {
                me.ipv4.map(IpAddr::V4)
            } else {
                me.ipv6.map(IpAddr::V6)
            };
            p.passive = mine.is_some_and(|m| m > theirs);
            p.port = port;
            p.rr_client = client(n);
            kinds.insert(
                p.name.clone(),
                if p.rr_client {
                    "rr-client"
                } else {
                    "node-mesh"
                },
            );
            peers.insert(p.name.clone(), p);
        }
    }

    for (name, spec) in &input.peers {
        if let Err(e) = spec.validate() {
            problems.push(format!("BGPPeer {name}: {e}"));
            continue;
        }
        // The nodes this BGPPeer is for (`node`, else `nodeSelector`).
        let applies = |n: &NodeFacts| match &spec.node {
            Some(x) => *x == n.name,
            None => selects(spec.node_selector.as_ref(), &n.labels),
        };
        // (name, address, AS, the peer node when it is one).
        let mut targets: Vec<(String, SocketAddr, u32, Option<&NodeFacts>)> = Vec::new();
        if let Some(ip) = &spec.peer_ip {
            if !applies(me) {
                continue;
            }
            match parse_peer_address(ip) {
                Ok(sa) => targets.push((
                    format!("peer-{name}"),
                    sa,
                    spec.as_number.unwrap_or(local_as),
                    None,
                )),
                Err(e) => problems.push(format!("BGPPeer {name}: {e}")),
            }
        } else if let Some(sel) = &spec.peer_selector {
            // Both ends of each pair configure it, as Calico's automatic
            // reverse peering: we peer with the nodes `peerSelector` picks
            // when the BGPPeer is for us, and with the nodes it is for when
            // `peerSelector` picks us.
            let forward = applies(me);
            let reverse = selects(Some(sel), &me.labels);
            for n in input.nodes.iter().filter(|n| {
                n.name != me.name
                    && ((forward && selects(Some(sel), &n.labels)) || (reverse && applies(n)))
            }) {
                let addr = n.ipv4.map(IpAddr::V4).or(n.ipv6.map(IpAddr::V6));
                let Some(addr) = addr else { continue };
                let asn = spec
                    .as_number
                    .unwrap_or_else(|| effective_config(&input.configs, &n.name).as_number());
                targets.push((
                    format!("peer-{name}-{}", n.name),
                    SocketAddr::new(addr, port),
                    asn,
                    Some(n),
                ));
            }
        }
        for (pname, sa, asn, node) in targets {
            if Some(sa.ip()) == my_addr {
                continue; // never peer with ourselves
            }
            let mut p = base_peer(pname, input, local_as, sa.ip(), asn);
            p.port = sa.port();
            if let Err(e) = apply_peer_spec(&mut p, spec, input, &named, &mut problems) {
                problems.push(format!("BGPPeer {name}: {e}"));
                continue;
            }
            // A node-to-node peering from a selector is still one session
            // per pair.
            if spec.peer_selector.is_some() {
                p.passive = my_addr.is_some_and(|m| m > sa.ip());
            }
            if let Some(n) = node {
                p.rr_client |= client(n);
            }
            // An explicit peer replaces a mesh session to the same address.
            peers.retain(|_, q: &mut PeerConfig| q.neighbor != p.neighbor);
            let kind = if p.rr_client && node.is_some() {
                "rr-client"
            } else if spec.peer_selector.is_some() {
                "selector"
            } else if spec.node.is_some() {
                "node-specific"
            } else {
                "global"
            };
            kinds.insert(p.name.clone(), kind);
            peers.insert(p.name.clone(), p);
        }
    }

    // Communities per advertised network (Calico's prefixAdvertisements).
    let mut adverts: Vec<(IpNetwork, CommunitySet)> = Vec::new();
    for adv in &cfg.prefix_advertisements {
        let cidr = match adv.cidr.parse() {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("prefixAdvertisements: {e}"));
                continue;
            }
        };
        let mut set = CommunitySet::default();
        for c in &adv.communities {
            match resolve_community(&named, c) {
                Ok(x) => set.insert(x),
                Err(e) => problems.push(format!("prefixAdvertisements {}: {e}", adv.cidr.0)),
            }
        }
        adverts.push((cidr, set));
    }
    let communities_for = |net: &IpNetwork| -> CommunitySet {
        let mut out = CommunitySet::default();
        for (cidr, set) in &adverts {
            if cidr.contains(net.network()) && cidr.prefix() <= net.prefix() {
                set.iter().for_each(|c| out.insert(c));
            }
        }
        out
    };
    let mut originate = BTreeMap::new();
    let exported = |net: &IpNetwork| !input.no_export.iter().any(|p| p.contains(net.network()));
    let mut nets: BTreeSet<IpNetwork> = view
        .affine_blocks
        .iter()
        .copied()
        .filter(exported)
        .collect();
    for ip in view.borrowed() {
        let net = IpNetwork::from(ip);
        if exported(&net) {
            nets.insert(net);
        }
    }
    // Service ranges from every node, and the host routes of the Services
    // this node serves.
    let ranges = ServiceRanges::from_config(&cfg, &mut problems);
    nets.extend(ranges.all());
    nets.extend(services::service_routes(
        &ranges,
        &input.services,
        &input.ready_here,
    ));
    for net in nets {
        if let Some(p) = prefix_of(net) {
            originate.insert(p, communities_for(&net));
        }
    }
    let mut default_export: Vec<Rule> = Vec::new();
    for net in input.export_pools.iter().copied().chain(ranges.all()) {
        if let Some(p) = prefix_of(net) {
            default_export.push(Rule {
                family: None,
                cidr: Some((p, MatchOp::In)),
                len: None,
                remote_only: false,
                action: FilterAction::Accept,
            });
        }
    }
    default_export.push(Rule::all(None, FilterAction::Reject));
    Desired {
        local_as,
        router_id: router_id(me),
        cluster_id,
        listen,
        default_export,
        kinds: kinds
            .into_iter()
            .filter(|(k, _)| peers.contains_key(k))
            .collect(),
        peers,
        originate,
        problems,
    }
}

#[cfg(test)]
mod tests;
