//! Peers from the CRDs: the node-to-node mesh, and the `BGPPeer`s that
//! concern this node (a fixed address, or the other nodes a selector
//! picks, in both directions), each with its options, filters and
//! password; and whether this node is a route reflector.
//!
//! Mesh sessions: both nodes configure each other, and the one with the
//! higher address is passive, so a pair has exactly one TCP session.
//!
//! The topology ([`Topology`]): the full mesh by default up to
//! `nodeToNodeMeshMaxNodes` nodes (100); above it, when nodes are labelled
//! `margay.dev/route-reflector=true`, only the sessions that touch a
//! reflector stay. A labelled node reflects in both topologies, so the
//! switch only closes client-to-client sessions whose routes the clients
//! already also hold through the reflectors (same next hop): forwarding
//! does not change when the cluster crosses the size, either way.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bgp::bfd::BfdConfig;
use bgp::config::{GracefulRestart, Neighbor, PeerBfd, PeerConfig, RemoteAs};

use super::{DEFAULT_GR_TIME, RoutingInput, effective_config, resolve_community};
use crate::k8s::crd::{
    BGPConfigurationSpec, BGPPeerSpec, NextHopMode, SourceAddress, parse_peer_address,
};
use crate::k8s::node::NodeFacts;
use crate::k8s::node::annotations::{
    ANN_RR_CLUSTER_ID, DEFAULT_RR_CLUSTER_ID, LABEL_ROUTE_REFLECTOR,
};
use margay_types::Selector;

/// The sessions this node should have.
#[derive(Debug, Default)]
pub struct Peers {
    /// Peers by name.
    pub peers: BTreeMap<String, PeerConfig>,
    /// Each peer's kind (node-mesh, rr-client, selector, node-specific,
    /// global).
    pub kinds: BTreeMap<String, &'static str>,
    /// Our route reflector cluster ID, when this node is a route reflector.
    pub cluster_id: Option<Ipv4Addr>,
    /// Which node-to-node sessions there are, and why.
    pub topology: Topology,
}

/// The node-to-node sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Topology {
    /// Every node with every node.
    #[default]
    FullMesh,
    /// Only sessions with a reflector (`nodes` > `max`, `reflectors`
    /// labelled or configured).
    Reflectors {
        /// Nodes in the cluster.
        nodes: usize,
        /// `nodeToNodeMeshMaxNodes`.
        max: u32,
        /// The reflectors' names.
        reflectors: Vec<String>,
    },
    /// `nodeToNodeMeshEnabled: false`: only `BGPPeer`s.
    Off,
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::FullMesh => f.write_str("full mesh"),
            Topology::Reflectors {
                nodes,
                max,
                reflectors,
            } => write!(
                f,
                "route reflectors {} ({nodes} nodes > nodeToNodeMeshMaxNodes {max})",
                reflectors.join(",")
            ),
            Topology::Off => f.write_str("no mesh (nodeToNodeMeshEnabled: false)"),
        }
    }
}

/// The route reflector cluster ID of `n`: `routeReflectorClusterID` of
/// its `node.<name>` BGPConfiguration, else its Node annotation, else
/// [`DEFAULT_RR_CLUSTER_ID`] when it carries the reflector label; `None`
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
        None => match n.rr_cluster_id.as_deref() {
            Some(v) => (v, format!("node {}: {ANN_RR_CLUSTER_ID}", n.name)),
            None => {
                return (n.labels.get(LABEL_ROUTE_REFLECTOR).map(String::as_str) == Some("true"))
                    .then_some(DEFAULT_RR_CLUSTER_ID);
            }
        },
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

/// The peers of this node, with the effective configuration `cfg` and
/// its named communities `named`; problems are appended to `problems`.
pub fn peers(
    input: &RoutingInput,
    cfg: &BGPConfigurationSpec,
    named: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Peers {
    let me = &input.me;
    let local_as = cfg.as_number();
    let port = cfg.listen_port();
    let mut peers = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let my_addr = me.ipv4.map(IpAddr::V4).or(me.ipv6.map(IpAddr::V6));
    // As a route reflector, every node peer outside our cluster is a client.
    let cluster_id = rr_cluster_id(&input.configs, me, problems);
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
    if input
        .configs
        .get(&format!("node.{}", me.name))
        .is_some_and(|c| c.node_to_node_mesh_max_nodes.is_some())
    {
        problems.push(format!(
            "BGPConfiguration node.{}: nodeToNodeMeshMaxNodes is cluster-wide (default): ignored",
            me.name
        ));
    }
    // (Another node's invalid cluster ID is that node's problem to report.)
    let client = |n: &NodeFacts| {
        cluster_id.is_some() && rr_cluster_id(&input.configs, n, &mut Vec::new()) != cluster_id
    };

    let topology = topology(input, cfg, problems);
    // In the reflector topology, a reflector keeps a session with every
    // node and the others only with the reflectors.
    let meshed = |n: &NodeFacts| match &topology {
        Topology::FullMesh => true,
        Topology::Reflectors { reflectors, .. } => {
            cluster_id.is_some() || reflectors.contains(&n.name)
        }
        Topology::Off => false,
    };
    for n in input
        .nodes
        .iter()
        .filter(|n| n.name != me.name && meshed(n))
    {
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
        let kind = if p.rr_client {
            "rr-client"
        } else if matches!(topology, Topology::Reflectors { .. }) {
            "reflector"
        } else {
            "node-mesh"
        };
        kinds.insert(p.name.clone(), kind);
        peers.insert(p.name.clone(), p);
    }

    for (name, spec) in &input.peers {
        if let Err(e) = spec.validate() {
            problems.push(format!("BGPPeer {name}: {e}"));
            continue;
        }
        // The nodes this BGPPeer is for (`node`, else `nodeSelector`). An
        // invalid selector selects nothing.
        let node_selector = Selector::compile_opt(spec.node_selector.as_ref());
        let applies = |n: &NodeFacts| match &spec.node {
            Some(x) => *x == n.name,
            None => node_selector.as_ref().is_ok_and(|s| s.matches(&n.labels)),
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
            let selects = |l| Selector::compile(sel).is_ok_and(|s| s.matches(l));
            let forward = applies(me);
            let reverse = selects(&me.labels);
            for n in input.nodes.iter().filter(|n| {
                n.name != me.name && ((forward && selects(&n.labels)) || (reverse && applies(n)))
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
            if let Err(e) = apply_peer_spec(&mut p, spec, input, named, problems) {
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

    Peers {
        kinds: kinds
            .into_iter()
            .filter(|(k, _)| peers.contains_key(k))
            .collect(),
        peers,
        cluster_id,
        topology,
    }
}

/// The node-to-node topology: `nodeToNodeMeshEnabled` when set, else the
/// full mesh up to `nodeToNodeMeshMaxNodes` nodes and the reflectors above
/// it (the full mesh, reported, when no node is one).
fn topology(
    input: &RoutingInput,
    cfg: &BGPConfigurationSpec,
    problems: &mut Vec<String>,
) -> Topology {
    match cfg.node_to_node_mesh_enabled {
        Some(true) => return Topology::FullMesh,
        Some(false) => return Topology::Off,
        None => {}
    }
    let max = cfg.mesh_max_nodes();
    let nodes = input.nodes.len();
    if u32::try_from(nodes).is_ok_and(|n| n <= max) {
        return Topology::FullMesh;
    }
    // (Each reflector's invalid cluster ID is reported by that node.)
    let reflectors: Vec<String> = input
        .nodes
        .iter()
        .filter(|n| rr_cluster_id(&input.configs, n, &mut Vec::new()).is_some())
        .map(|n| n.name.clone())
        .collect();
    if reflectors.is_empty() {
        problems.push(format!(
            "{nodes} nodes > nodeToNodeMeshMaxNodes {max} but no node is labelled \
             {LABEL_ROUTE_REFLECTOR}=true: keeping the full mesh"
        ));
        return Topology::FullMesh;
    }
    Topology::Reflectors {
        nodes,
        max,
        reflectors,
    }
}
