//! Routing: what this node's BGP speaker should do, and the task that makes
//! it so.
//!
//! ```text
//!  cluster (Nodes, BGPPeers, BGPConfigurations, IPPools) ──generations──┐
//!  IPAM view (affine blocks, borrowed addresses) ──────── changed ──────┼─► routing task ──► Speaker
//!  status timer (250ms)─────────────────────────────────────────────────┘      │ peers, originate/withdraw
//!                                                                              ▼
//!  Speaker ──best-path batches──► FIB task ──► kernel (route protocol 80, ECMP)
//! ```
//!
//! [`desired`] is a pure function of the cluster facts: peers (node-to-node
//! mesh, `BGPPeer`s that select this node) and prefixes to originate (blocks
//! affine to this node, addresses it borrowed, service ranges). The task
//! diffs it against what the speaker runs.
//!
//! Mesh sessions: both nodes configure each other, and the one with the
//! higher address is passive, so a pair has exactly one TCP session.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bgp::bfd::BfdConfig;
use bgp::config::{GracefulRestart, Neighbor, PeerBfd, PeerConfig, RemoteAs};
use bgp::wire::{Community, CommunityError, CommunitySet, Prefix};
use ipnetwork::IpNetwork;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::crd::{
    BGPConfigurationSpec, BGPPeerSpec, NextHopMode, SourceAddress, parse_peer_address,
};
use crate::ipamview::IpamView;

/// Annotation on a Node carrying the address its agent chose (IPv4, CIDR).
pub const ANN_IPV4: &str = "margay.dev/ipv4-address";
/// The same for IPv6.
pub const ANN_IPV6: &str = "margay.dev/ipv6-address";
/// Default graceful-restart time we announce, seconds.
pub const DEFAULT_GR_TIME: u16 = 120;

/// What the routing decision needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// BGP IPv4 address (annotation, else InternalIP).
    pub ipv4: Option<Ipv4Addr>,
    /// BGP IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
}

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
    /// Where to listen.
    pub listen: Vec<SocketAddr>,
    /// Peers by name.
    pub peers: BTreeMap<String, PeerConfig>,
    /// Prefixes to originate, with communities.
    pub originate: BTreeMap<Prefix, CommunitySet>,
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
    match configs.get(&format!("node.{node}")) {
        Some(over) => base.overlay(over),
        None => base,
    }
}

/// Whether a LabelSelector (absent: everything) matches `labels`; unknown
/// operators match nothing (fail closed).
pub fn selects(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else { return true };
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for r in sel.match_expressions.iter().flatten() {
        let vals = r.values.clone().unwrap_or_default();
        let have = labels.get(&r.key);
        let ok = match r.operator.as_str() {
            "In" => have.is_some_and(|h| vals.contains(h)),
            "NotIn" => have.is_none_or(|h| !vals.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false, // unknown operators select nothing (fail closed)
        };
        if !ok {
            return false;
        }
    }
    true
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
            kinds.insert(p.name.clone(), "node-mesh");
            peers.insert(p.name.clone(), p);
        }
    }

    for (name, spec) in &input.peers {
        if let Err(e) = spec.validate() {
            problems.push(format!("BGPPeer {name}: {e}"));
            continue;
        }
        let for_me = match &spec.node {
            Some(n) => *n == me.name,
            None => selects(spec.node_selector.as_ref(), &me.labels),
        };
        if !for_me {
            continue;
        }
        let mut targets: Vec<(String, SocketAddr, u32)> = Vec::new();
        if let Some(ip) = &spec.peer_ip {
            match parse_peer_address(ip) {
                Ok(sa) => targets.push((
                    format!("peer-{name}"),
                    sa,
                    spec.as_number.unwrap_or(local_as),
                )),
                Err(e) => problems.push(format!("BGPPeer {name}: {e}")),
            }
        } else if let Some(sel) = &spec.peer_selector {
            for n in input
                .nodes
                .iter()
                .filter(|n| n.name != me.name && selects(Some(sel), &n.labels))
            {
                let addr = n.ipv4.map(IpAddr::V4).or(n.ipv6.map(IpAddr::V6));
                let Some(addr) = addr else { continue };
                let asn = spec
                    .as_number
                    .unwrap_or_else(|| effective_config(&input.configs, &n.name).as_number());
                targets.push((
                    format!("peer-{name}-{}", n.name),
                    SocketAddr::new(addr, port),
                    asn,
                ));
            }
        }
        for (pname, sa, asn) in targets {
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
            // An explicit peer replaces a mesh session to the same address.
            peers.retain(|_, q: &mut PeerConfig| q.neighbor != p.neighbor);
            let kind = if spec.peer_selector.is_some() {
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
    for svc in cfg
        .service_cluster_ips
        .iter()
        .chain(&cfg.service_external_ips)
    {
        match svc.cidr.parse() {
            Ok(n) => {
                nets.insert(n);
            }
            Err(e) => problems.push(format!("service range: {e}")),
        }
    }
    for net in nets {
        if let Some(p) = prefix_of(net) {
            originate.insert(p, communities_for(&net));
        }
    }
    Desired {
        local_as,
        router_id: router_id(me),
        listen,
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
mod tests {
    use super::*;
    use crate::crd::{Cidr, Community, PrefixAdvertisement, ServiceCidr};
    use crate::ipamview::LocalAllocation;

    fn node(name: &str, v4: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: [("rack".to_string(), "r1".to_string())].into(),
            ipv4: v4.parse().ok(),
            ipv6: None,
        }
    }

    fn input(me: &str) -> RoutingInput {
        let nodes = vec![
            node("n1", "198.18.0.11"),
            node("n2", "198.18.0.12"),
            node("n3", "198.18.0.13"),
        ];
        RoutingInput {
            me: nodes.iter().find(|n| n.name == me).cloned().expect("me"),
            nodes,
            configs: BTreeMap::new(),
            peers: BTreeMap::new(),
            passwords: BTreeMap::new(),
            no_export: vec![],
            restarting: false,
        }
    }

    fn view() -> IpamView {
        IpamView {
            synced: true,
            affine_blocks: ["198.19.1.0/26".parse().expect("net")].into(),
            local: vec![LocalAllocation {
                ip: "198.19.2.7".parse().expect("ip"),
                namespace: "x".into(),
                pod: "p".into(),
                handle: "h".into(),
                borrowed: true,
                host_if: "calip".into(),
            }],
            pod_ips: Default::default(),
            ..Default::default()
        }
    }

    #[test]
    fn mesh_has_one_active_side_per_pair() {
        let d1 = desired(&input("n1"), &view());
        let d3 = desired(&input("n3"), &view());
        assert_eq!(d1.peers.keys().collect::<Vec<_>>(), ["mesh-n2", "mesh-n3"]);
        // n1 (lowest address) connects; n3 (highest) only accepts.
        assert!(!d1.peers["mesh-n3"].passive);
        assert!(d3.peers["mesh-n1"].passive);
        assert_eq!(d1.kinds["mesh-n2"], "node-mesh");
        assert_eq!(d1.local_as, 64512);
        assert_eq!(d1.peers["mesh-n2"].remote_as, RemoteAs::Asn(64512));
        assert_eq!(d1.router_id, Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(
            d1.listen,
            vec!["198.18.0.11:179".parse::<SocketAddr>().expect("sa")]
        );
    }

    #[test]
    fn originates_affine_blocks_and_borrowed_host_routes() {
        let d = desired(&input("n1"), &view());
        let got: Vec<String> = d.originate.keys().map(|p| p.to_string()).collect();
        assert_eq!(got, ["198.19.1.0/26", "198.19.2.7/32"]);
        let mut i = input("n1");
        i.no_export = vec!["198.19.1.0/24".parse().expect("net")];
        let got: Vec<String> = desired(&i, &view())
            .originate
            .keys()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            got,
            ["198.19.2.7/32"],
            "disableBGPExport pool not announced"
        );
    }

    #[test]
    fn tor_peer_replaces_the_mesh_when_mesh_is_off() {
        let mut i = input("n2");
        i.configs.insert(
            "default".into(),
            BGPConfigurationSpec {
                node_to_node_mesh_enabled: Some(false),
                communities: vec![Community {
                    name: "pods".into(),
                    value: "64512:100".into(),
                }],
                prefix_advertisements: vec![PrefixAdvertisement {
                    cidr: Cidr("198.19.0.0/16".into()),
                    communities: vec!["pods".into(), "65000:7".into()],
                }],
                service_cluster_ips: vec![ServiceCidr {
                    cidr: Cidr("198.19.255.0/24".into()),
                }],
                ..Default::default()
            },
        );
        i.peers.insert(
            "tor".into(),
            BGPPeerSpec {
                peer_ip: Some("198.18.0.1".into()),
                as_number: Some(65000),
                hold_time: Some(9),
                max_prefix: Some(1000),
                bfd: Some(crate::crd::BGPPeerBFD {
                    min_rx: Some(100),
                    multiplier: Some(4),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let d = desired(&i, &view());
        assert_eq!(d.peers.keys().collect::<Vec<_>>(), ["peer-tor"]);
        assert_eq!(d.kinds["peer-tor"], "global");
        let p = &d.peers["peer-tor"];
        assert_eq!(
            (p.remote_as, p.hold_time, p.max_prefix),
            (RemoteAs::Asn(65000), 9, Some(1000))
        );
        assert!(!p.passive);
        assert_eq!(
            p.bfd,
            Some(PeerBfd {
                timers: BfdConfig {
                    desired_min_tx: Duration::from_millis(300),
                    required_min_rx: Duration::from_millis(100),
                    detect_mult: 4,
                },
                multihop: false,
            }),
            "BFD from the BGPPeer, defaults filled in"
        );
        assert!(d.peers.values().all(|q| q.name == "peer-tor"));
        assert_eq!(
            d.originate[&"198.19.1.0/26".parse::<Prefix>().expect("p")].standard,
            vec![(64512 << 16) | 100, (65000 << 16) | 7]
        );
        assert!(
            d.originate
                .contains_key(&"198.19.255.0/24".parse::<Prefix>().expect("p"))
        );
    }

    #[test]
    fn peers_select_nodes_and_missing_passwords_are_reported() {
        let mut i = input("n1");
        i.me.labels.insert("role".into(), "edge".into());
        i.peers.insert(
            "edge-only".into(),
            BGPPeerSpec {
                peer_ip: Some("198.18.0.250".into()),
                as_number: Some(65001),
                node_selector: Some(LabelSelector {
                    match_labels: Some([("role".to_string(), "edge".to_string())].into()),
                    ..Default::default()
                }),
                password: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                    name: "bgp".into(),
                    key: "pw".into(),
                    optional: None,
                }),
                ..Default::default()
            },
        );
        i.peers.insert(
            "other-rack".into(),
            BGPPeerSpec {
                peer_ip: Some("198.18.0.251".into()),
                as_number: Some(65001),
                node_selector: Some(LabelSelector {
                    match_labels: Some([("rack".to_string(), "r9".to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let d = desired(&i, &view());
        assert!(!d.peers.contains_key("peer-other-rack"));
        assert!(
            !d.peers.contains_key("peer-edge-only"),
            "no password, no session"
        );
        assert!(
            d.problems.iter().any(|p| p.contains("bgp/pw")),
            "{:?}",
            d.problems
        );
        i.passwords
            .insert(("bgp".into(), "pw".into()), "s3cret".into());
        let d = desired(&i, &view());
        assert_eq!(
            d.peers["peer-edge-only"].md5_password.as_deref(),
            Some("s3cret")
        );
    }

    #[test]
    fn restarting_and_next_hops_reach_every_peer() {
        let mut i = input("n1");
        i.restarting = true;
        i.me.ipv6 = "2001:db8:ffff::b".parse().ok();
        let d = desired(&i, &view());
        for p in d.peers.values() {
            assert!(p.graceful_restart.is_some_and(|g| g.restarting));
            assert_eq!(p.next_hop_v6, "2001:db8:ffff::b".parse().ok());
        }
        assert_eq!(d.listen.len(), 2);
    }

    #[test]
    fn communities_of_every_kind_per_pool_and_per_peer() {
        let mut i = input("n1");
        i.configs.insert(
            "default".into(),
            BGPConfigurationSpec {
                communities: vec![
                    Community {
                        name: "pods".into(),
                        value: "64512:100".into(),
                    },
                    Community {
                        name: "big".into(),
                        value: "64512:1:2".into(),
                    },
                    Community {
                        name: "broken".into(),
                        value: "65536:1".into(),
                    },
                ],
                prefix_advertisements: vec![
                    PrefixAdvertisement {
                        cidr: Cidr("198.19.0.0/16".into()),
                        communities: vec!["pods".into(), "big".into(), "rt:64512:5".into()],
                    },
                    PrefixAdvertisement {
                        cidr: Cidr("198.19.2.0/24".into()),
                        communities: vec!["no-export".into(), "not-a-name".into()],
                    },
                ],
                ..Default::default()
            },
        );
        i.peers.insert(
            "tor".into(),
            BGPPeerSpec {
                peer_ip: Some("198.18.0.1".into()),
                as_number: Some(65000),
                communities: vec!["big".into(), "65000:9".into()],
                ..Default::default()
            },
        );
        let d = desired(&i, &view());
        let c = |s: &str| s.parse::<bgp::wire::Community>().expect("community");
        let block = &d.originate[&"198.19.1.0/26".parse::<Prefix>().expect("p")];
        assert_eq!(
            block.iter().collect::<Vec<_>>(),
            [c("64512:100"), c("64512:1:2"), c("rt:64512:5")]
        );
        // The borrowed /32 is also inside 198.19.2.0/24: both entries apply.
        let host = &d.originate[&"198.19.2.7/32".parse::<Prefix>().expect("p")];
        assert!(host.iter().any(|x| x == c("no-export")), "{host:?}");
        assert_eq!(
            d.peers["peer-tor"].communities.iter().collect::<Vec<_>>(),
            [c("65000:9"), c("64512:1:2")]
        );
        // Bad values are reported once each, by where they are.
        let mut problems = d.problems.clone();
        problems.sort();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("communities broken"), "{problems:?}");
        assert!(problems[1].contains("not-a-name"), "{problems:?}");
    }
}
