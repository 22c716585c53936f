//! Test support shared by unit tests, the conformance suite and benchmarks:
//! the upstream-style `x/y/z × a/b/c` cluster and a simulator that walks a
//! [`Ruleset`] the way the kernel walks `table inet margay` for a new
//! (not yet tracked) packet.

pub mod kernel;
pub mod tiers;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use sha1::{Digest, Sha1};

use crate::addr::Family;
use crate::model::{
    ClusterState, ContainerPort, LocalEndpoint, NamespaceInfo, NodeContext, NodeInfo, PodInfo,
    PodKey, Protocol,
};
use crate::ruleset::{AddrField, Elem, Match, Ruleset, SPOOF, Verdict};
use crate::spec_eval::L4;

/// Host-side interface of a pod: `cali` + 11 hex digits of
/// SHA-1(`<namespace>.<pod>`) (the CNI plugin's naming).
pub fn host_ifname(namespace: &str, pod: &str) -> String {
    let d = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let mut h = hex::encode(d);
    h.truncate(11);
    format!("cali{h}")
}

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The ports every conformance pod serves (TCP and UDP; SCTP declared too).
pub const SERVED: [u16; 2] = [80, 81];

/// Name of the named port `serve-<port>-<proto>`.
pub fn port_name(port: u16, proto: Protocol) -> String {
    format!("serve-{port}-{}", proto.nft_name())
}

/// Addresses of pod `p` in namespace `n` (indices into the constants):
/// `198.19.<n+1>.<p+2>` and `2001:db8::<n+1>:<p+2>`.
pub fn pod_ips(n: usize, p: usize) -> (Ipv4Addr, Ipv6Addr) {
    let (n8, p8) = ((n as u8).wrapping_add(1), (p as u8).wrapping_add(2));
    (
        Ipv4Addr::new(198, 19, n8, p8),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, u16::from(n8), u16::from(p8)),
    )
}

/// Address of lab node `i` (0-based) on the underlay.
pub fn node_ip(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    let i8 = (i as u8).wrapping_add(1);
    (
        Ipv4Addr::new(198, 18, 0, i8),
        Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, u16::from(i8)),
    )
}

/// The Node object of lab node `i`: labels `kubernetes.io/hostname`,
/// `kubernetes.io/os: linux` and `zone` (`a` for even `i`, `b` for odd).
pub fn node_info(i: usize, name: &str, addrs: &[IpAddr]) -> NodeInfo {
    let mut n = NodeInfo::new(name)
        .label("kubernetes.io/hostname", name)
        .label("kubernetes.io/os", "linux")
        .label("zone", if i.is_multiple_of(2) { "a" } else { "b" });
    for a in addrs {
        n = n.addr(*a);
    }
    n
}

/// The conformance cluster: namespaces x, y, z (labels `ns` and
/// `kubernetes.io/metadata.name`), pods a, b, c in each (label `pod`), each
/// serving TCP/UDP/SCTP ports 80 and 81 with named ports `serve-80-tcp` …,
/// spread round-robin over `nodes` nodes named `node0`, `node1`, … (whose
/// Node objects come from [`node_info`]).
#[derive(Debug, Clone)]
pub struct Xyz {
    pub state: ClusterState,
    pub nodes: Vec<NodeContext>,
    pub node_addrs: BTreeMap<String, Vec<IpAddr>>,
    pub dual_stack: bool,
}

impl Xyz {
    /// `nodes` nodes named `node0`…, addresses from [`node_ip`], pods placed
    /// round-robin.
    pub fn new(nodes: usize, dual_stack: bool) -> Xyz {
        let nodes = nodes.max(1);
        let list: Vec<(String, Vec<IpAddr>)> = (0..nodes)
            .map(|i| {
                let (v4, v6) = node_ip(i);
                let mut a = vec![IpAddr::V4(v4)];
                if dual_stack {
                    a.push(IpAddr::V6(v6));
                }
                (format!("node{i}"), a)
            })
            .collect();
        Xyz::on_nodes(&list, |k| k % nodes, dual_stack)
    }

    /// The cluster on the given nodes (name, own addresses); pod number `k`
    /// (`x/a` = 0, `x/b` = 1, … `z/c` = 8) goes to node `place(k)`.
    pub fn on_nodes(
        nodes: &[(String, Vec<IpAddr>)],
        place: impl Fn(usize) -> usize,
        dual_stack: bool,
    ) -> Xyz {
        let mut state = ClusterState::default();
        let mut ctxs: Vec<NodeContext> = nodes
            .iter()
            .map(|(name, addrs)| {
                let mut c = NodeContext::new(name);
                c.node_addrs = addrs.clone();
                c
            })
            .collect();
        let mut k = 0;
        for (ni, ns) in NAMESPACES.iter().enumerate() {
            state.add_namespace(NamespaceInfo::new(ns).label("ns", ns));
            for (pi, pod) in PODS.iter().enumerate() {
                let (v4, v6) = pod_ips(ni, pi);
                let node = place(k).min(ctxs.len().saturating_sub(1));
                k += 1;
                let mut p = PodInfo::new(*ns, *pod).label("pod", pod).ip(IpAddr::V4(v4));
                if let Some(ctx) = ctxs.get(node) {
                    p = p.on_node(&ctx.node_name);
                }
                if dual_stack {
                    p = p.ip(IpAddr::V6(v6));
                }
                for port in SERVED {
                    for proto in Protocol::ALL {
                        p = p.port(ContainerPort::named(&port_name(port, proto), port, proto));
                    }
                }
                if let Some(ctx) = ctxs.get_mut(node) {
                    ctx.add_endpoint(LocalEndpoint {
                        standalone: false,
                        pod: p.key.clone(),
                        iface: host_ifname(ns, pod),
                        ips: p.ips.clone(),
                    });
                }
                state.add_pod(p);
            }
        }
        for (i, c) in ctxs.iter().enumerate() {
            state.add_node(node_info(i, &c.node_name, &c.node_addrs));
        }
        let node_addrs = ctxs
            .iter()
            .map(|c| (c.node_name.clone(), c.node_addrs.clone()))
            .collect();
        Xyz {
            state,
            nodes: ctxs,
            node_addrs,
            dual_stack,
        }
    }

    pub fn pod_mut(&mut self, ns: &str, pod: &str) -> Option<&mut PodInfo> {
        self.state
            .pods
            .get_mut(&PodKey::new(ns, pod))
            .map(Arc::make_mut)
    }
}

/// What a simulated hook decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimVerdict {
    Accept,
    Drop,
}

/// A packet crossing the forward hook of one node.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    /// Input interface (a workload interface, or e.g. `uplink`).
    pub iif: &'a str,
    pub oif: &'a str,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
}

enum Outcome {
    Accept,
    Drop,
    Return,
}

/// Walks `forward` for a packet in state `new` (not established).
pub fn forward(rs: &Ruleset, p: &Packet<'_>) -> SimVerdict {
    forward_traced(rs, p, &mut Vec::new())
}

/// One rule a simulated packet matched (`Log` rules are not recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub chain: String,
    /// Position in the chain.
    pub index: usize,
    pub origin: crate::origin::RuleOrigin,
}

/// [`forward`], recording every rule that matched, in order.
pub fn forward_traced(rs: &Ruleset, p: &Packet<'_>, hits: &mut Vec<Hit>) -> SimVerdict {
    if p.iif.starts_with(&rs.iface_prefix) && !spoof_ok(rs, p.iif, p.src) {
        return SimVerdict::Drop;
    }
    if let Some(chain) = rs.dispatch.get(p.iif).and_then(|d| d.egress.as_ref()) {
        match run_chain(rs, chain, p, 0, hits) {
            Outcome::Drop => return SimVerdict::Drop,
            Outcome::Accept => return SimVerdict::Accept,
            Outcome::Return => {}
        }
    }
    if let Some(chain) = rs.dispatch.get(p.oif).and_then(|d| d.ingress.as_ref()) {
        match run_chain(rs, chain, p, 0, hits) {
            Outcome::Drop => return SimVerdict::Drop,
            Outcome::Accept | Outcome::Return => {}
        }
    }
    SimVerdict::Accept
}

/// Walks `input` (packet from a workload interface to the node itself).
pub fn input(rs: &Ruleset, iif: &str, src: IpAddr) -> SimVerdict {
    let link_local = match src {
        IpAddr::V6(a) => a.is_unspecified() || (a.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    };
    if iif.starts_with(&rs.iface_prefix) && !link_local && !spoof_ok(rs, iif, src) {
        SimVerdict::Drop
    } else {
        SimVerdict::Accept
    }
}

fn spoof_ok(rs: &Ruleset, iif: &str, src: IpAddr) -> bool {
    let set = format!("{SPOOF}{}", Family::of(src).tag());
    rs.sets
        .get(&set)
        .is_some_and(|s| s.elems.contains(&Elem::IfAddr(iif.to_string(), src)))
}

fn run_chain(
    rs: &Ruleset,
    chain: &str,
    p: &Packet<'_>,
    depth: usize,
    hits: &mut Vec<Hit>,
) -> Outcome {
    if depth > 16 {
        return Outcome::Drop; // a loop would be a bug; the kernel rejects loops
    }
    let Some(rules) = rs.chains.get(chain) else {
        return Outcome::Drop; // a dangling reference would fail to load
    };
    for (index, r) in rules.iter().enumerate() {
        if r.matches.iter().all(|m| matches(rs, m, p)) {
            if !matches!(r.verdict, Verdict::Log(_)) {
                hits.push(Hit {
                    chain: chain.to_string(),
                    index,
                    origin: r.origin.clone(),
                });
            }
            return match &r.verdict {
                Verdict::Accept => Outcome::Accept,
                Verdict::Drop => Outcome::Drop,
                Verdict::Return => Outcome::Return,
                Verdict::Goto(c) => run_chain(rs, c, p, depth + 1, hits),
                Verdict::Log(_) => continue,
            };
        }
    }
    Outcome::Return
}

fn in_set(rs: &Ruleset, set: &str, f: impl Fn(&Elem) -> bool) -> bool {
    rs.sets.get(set).is_some_and(|s| s.elems.iter().any(f))
}

fn matches(rs: &Ruleset, m: &Match, p: &Packet<'_>) -> bool {
    let addr = |f: &AddrField| match f {
        AddrField::Saddr => p.src,
        AddrField::Daddr => p.dst,
    };
    match m {
        Match::Addr(f, fam, set) => {
            let a = addr(f);
            Family::of(a) == *fam
                && in_set(rs, set, |e| match e {
                    Elem::Addr(x) => *x == a,
                    Elem::Range(r) => r.contains(&a),
                    _ => false,
                })
        }
        Match::ProtoPort(set) => {
            let L4::Port(proto, port) = p.l4 else {
                return false;
            };
            in_set(
                rs,
                set,
                |e| matches!(e, Elem::ProtoPorts(pp, lo, hi) if *pp == proto && (*lo..=*hi).contains(&port)),
            )
        }
        Match::AddrProtoPort(f, fam, set) => {
            let a = addr(f);
            let L4::Port(proto, port) = p.l4 else {
                return false;
            };
            Family::of(a) == *fam
                && in_set(
                    rs,
                    set,
                    |e| matches!(e, Elem::AddrProtoPort(x, pp, pt) if *x == a && *pp == proto && *pt == port),
                )
        }
    }
}

/// A node's context and rendered ruleset, for [`flow`].
pub struct SimNode<'a> {
    pub ctx: &'a NodeContext,
    pub rs: &'a Ruleset,
}

/// Where an address lives: a local endpoint of some node, or a node itself.
fn locate<'a>(nodes: &'a [SimNode<'a>], ip: IpAddr) -> (Option<(usize, &'a str)>, Option<usize>) {
    for (i, n) in nodes.iter().enumerate() {
        for ep in n.ctx.endpoints.values() {
            if ep.ips.contains(&ip) {
                return (Some((i, ep.iface.as_str())), None);
            }
        }
    }
    let node = nodes.iter().position(|n| n.ctx.node_addrs.contains(&ip));
    (None, node)
}

/// Would a new connection from `src` to `dst` get through every node on its
/// path? Pods are wired to their node's workload interfaces; everything
/// else arrives/leaves through `uplink`. Node-originated packets to a local
/// pod take the output path (no policy); pod → own node takes input.
pub fn flow(nodes: &[SimNode<'_>], src: IpAddr, dst: IpAddr, l4: L4) -> SimVerdict {
    let (s_ep, s_node) = locate(nodes, src);
    let (d_ep, d_node) = locate(nodes, dst);
    const UP: &str = "uplink";
    // Pod → a node.
    if let (Some((si, iif)), Some(dn)) = (s_ep, d_node) {
        if si == dn {
            return input(nodes[si].rs, iif, src);
        }
        return forward(
            nodes[si].rs,
            &Packet {
                iif,
                oif: UP,
                src,
                dst,
                l4,
            },
        );
    }
    // Node → its own pod: output path.
    if let (Some(sn), Some((di, _))) = (s_node, d_ep)
        && sn == di
    {
        return SimVerdict::Accept;
    }
    match (s_ep, d_ep) {
        (Some((si, iif)), Some((di, oif))) if si == di => forward(
            nodes[si].rs,
            &Packet {
                iif,
                oif,
                src,
                dst,
                l4,
            },
        ),
        (s, d) => {
            if let Some((si, iif)) = s {
                let v = forward(
                    nodes[si].rs,
                    &Packet {
                        iif,
                        oif: UP,
                        src,
                        dst,
                        l4,
                    },
                );
                if v == SimVerdict::Drop {
                    return v;
                }
            }
            if let Some((di, oif)) = d {
                return forward(
                    nodes[di].rs,
                    &Packet {
                        iif: UP,
                        oif,
                        src,
                        dst,
                        l4,
                    },
                );
            }
            SimVerdict::Accept
        }
    }
}

/// The L4 probes of the conformance matrix.
pub const PROBES: [L4; 7] = [
    L4::Port(Protocol::Tcp, 80),
    L4::Port(Protocol::Tcp, 81),
    L4::Port(Protocol::Udp, 80),
    L4::Port(Protocol::Udp, 81),
    L4::Port(Protocol::Sctp, 80),
    L4::Port(Protocol::Sctp, 81),
    L4::Other(1),
];

/// One disagreement between the rendered rules and the evaluator.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub src: String,
    pub dst: String,
    pub l4: L4,
    pub rules_allow: bool,
    pub spec: crate::spec_eval::Answer,
}

impl Xyz {
    /// Renders every node's ruleset from scratch.
    pub fn render(&self) -> Vec<Ruleset> {
        self.nodes
            .iter()
            .map(|n| {
                let plan = crate::plan::build(&self.state, n);
                Ruleset::build(&plan, &self.state)
            })
            .collect()
    }

    /// Every pod address, plus the node addresses and an outside address,
    /// labelled for messages.
    pub fn addresses(&self) -> Vec<(String, IpAddr)> {
        let mut out = Vec::new();
        for p in self.state.pods.values() {
            for ip in &p.ips {
                out.push((format!("{}[{ip}]", p.key), *ip));
            }
        }
        for (n, addrs) in &self.node_addrs {
            for ip in addrs {
                out.push((format!("{n}[{ip}]"), *ip));
            }
        }
        out.push(("outside".into(), IpAddr::V4(Ipv4Addr::new(198, 18, 99, 1))));
        if self.dual_stack {
            out.push((
                "outside6".into(),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xeeee, 0, 0, 0, 0, 1)),
            ));
        }
        out
    }

    /// Compares the rendered rulesets (walked by the simulator) with the
    /// evaluator over every ordered pair of addresses of one family and every
    /// probe. Returns the disagreements.
    pub fn mismatches(&self, rulesets: &[Ruleset]) -> Vec<Mismatch> {
        let nodes: Vec<SimNode<'_>> = self
            .nodes
            .iter()
            .zip(rulesets)
            .map(|(ctx, rs)| SimNode { ctx, rs })
            .collect();
        let eval = crate::spec_eval::Cluster {
            state: &self.state,
            node_addrs: &self.node_addrs,
        };
        let addrs = self.addresses();
        let mut out = Vec::new();
        for (sn, s) in &addrs {
            for (dn, d) in &addrs {
                if s == d || s.is_ipv4() != d.is_ipv4() {
                    continue;
                }
                for l4 in PROBES {
                    let sim = flow(&nodes, *s, *d, l4) == SimVerdict::Accept;
                    let spec = eval.allowed(*s, *d, l4);
                    if sim != spec.allowed {
                        out.push(Mismatch {
                            src: sn.clone(),
                            dst: dn.clone(),
                            l4,
                            rules_allow: sim,
                            spec,
                        });
                    }
                }
            }
        }
        out
    }
}

/// Generated policies for the matrix: peer kinds × port kinds × directions.
pub mod generate {
    use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};

    use crate::build::*;

    /// (label, peers) — `None` = no `from`/`to` (all peers).
    pub fn peer_kinds() -> Vec<(&'static str, Option<Vec<NetworkPolicyPeer>>)> {
        vec![
            ("all-peers", None),
            ("pod=b", Some(vec![pods(sel(&[("pod", "b")]))])),
            ("ns=y", Some(vec![namespaces(sel(&[("ns", "y")]))])),
            (
                "pod=b AND ns=y",
                Some(vec![pods_in(sel(&[("pod", "b")]), sel(&[("ns", "y")]))]),
            ),
            ("ns={}", Some(vec![namespaces(sel(&[]))])),
            (
                "ipBlock-except",
                Some(vec![
                    block("198.19.0.0/16", &["198.19.2.0/24"]),
                    block("2001:db8::/64", &["2001:db8::2:0/112"]),
                ]),
            ),
            (
                "exprs",
                Some(vec![pods_in(
                    sel_expr(&[], vec![req("pod", "NotIn", &["a"])]),
                    sel_expr(
                        &[],
                        vec![req("ns", "In", &["x", "z"]), req("ns", "Exists", &[])],
                    ),
                )]),
            ),
            (
                "pod=c OR block(y/a)",
                Some(vec![
                    pods(sel(&[("pod", "c")])),
                    block("198.19.2.2/32", &[]),
                    block("2001:db8::2:2/128", &[]),
                ]),
            ),
            ("pods={}", Some(vec![pods(sel(&[]))])),
            (
                "nodes+outside",
                Some(vec![
                    block("198.18.0.0/16", &[]),
                    block("2001:db8:ffff::/48", &[]),
                    block("2001:db8:eeee::/48", &[]),
                ]),
            ),
        ]
    }

    /// (label, ports) — `None` = no `ports` (all).
    pub fn port_kinds() -> Vec<(&'static str, Option<Vec<NetworkPolicyPort>>)> {
        vec![
            ("all-ports", None),
            ("tcp/80", Some(vec![tcp(80)])),
            ("udp/81", Some(vec![udp(81)])),
            ("tcp/80-81", Some(vec![range("TCP", 80, 81)])),
            (
                "named serve-80-tcp",
                Some(vec![named("TCP", "serve-80-tcp")]),
            ),
            (
                "named serve-81-udp + tcp/81",
                Some(vec![named("UDP", "serve-81-udp"), tcp(81)]),
            ),
            ("udp/*", Some(vec![all_ports("UDP")])),
            ("sctp/80", Some(vec![sctp(80)])),
            ("named missing", Some(vec![named("TCP", "no-such-port")])),
        ]
    }

    pub const DIRECTIONS: [&str; 3] = ["Ingress", "Egress", "Ingress+Egress"];

    /// One policy in namespace `ns` selecting `target` (`pod` label, or all
    /// when `None`).
    pub fn policy(
        ns: &str,
        name: &str,
        target: Option<&str>,
        dir: &str,
        peers: &Option<Vec<NetworkPolicyPeer>>,
        ports: &Option<Vec<NetworkPolicyPort>>,
    ) -> NetworkPolicy {
        let mut np = NetPol::new(ns, name);
        if let Some(t) = target {
            np = np.select(sel(&[("pod", t)]));
        }
        let rule = || {
            let r = match peers {
                Some(p) => from(p.clone()),
                None => any(),
            };
            match ports {
                Some(p) => r.ports(p.clone()),
                None => r,
            }
        };
        match dir {
            "Ingress" => np.types(&["Ingress"]).ingress(rule()),
            "Egress" => np.types(&["Egress"]).egress(rule()),
            _ => np
                .types(&["Ingress", "Egress"])
                .ingress(rule())
                .egress(rule()),
        }
        .build()
    }
}
