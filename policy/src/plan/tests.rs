//! One test per semantic rule. Each states its expectation from the spec by
//! hand, checks the rendered rules (through the simulator) against it, and
//! checks the evaluator agrees with both on every pair of the cluster.

use std::net::IpAddr;

use super::*;
use crate::build::*;
use crate::model::{ContainerPort, NamespaceInfo, PodPhase};
use crate::ruleset::Ruleset;
use crate::spec_eval::L4;
use crate::testkit::{Packet, SimNode, SimVerdict, Xyz, flow, forward, pod_ips};

const TCP80: L4 = L4::Port(Protocol::Tcp, 80);
const TCP81: L4 = L4::Port(Protocol::Tcp, 81);
const UDP80: L4 = L4::Port(Protocol::Udp, 80);
const UDP81: L4 = L4::Port(Protocol::Udp, 81);
const SCTP80: L4 = L4::Port(Protocol::Sctp, 80);
const ICMP: L4 = L4::Other(1);

fn idx(ns: &str, pod: &str) -> (usize, usize) {
    let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap_or(0);
    let p = ["a", "b", "c"].iter().position(|x| *x == pod).unwrap_or(0);
    (n, p)
}

fn v4(ns: &str, pod: &str) -> IpAddr {
    let (n, p) = idx(ns, pod);
    IpAddr::V4(pod_ips(n, p).0)
}

fn v6(ns: &str, pod: &str) -> IpAddr {
    let (n, p) = idx(ns, pod);
    IpAddr::V6(pod_ips(n, p).1)
}

/// A test world: the xyz cluster on `nodes` nodes, dual-stack.
struct W {
    xyz: Xyz,
}

impl W {
    fn new(nodes: usize) -> W {
        W {
            xyz: Xyz::new(nodes, true),
        }
    }

    fn policy(mut self, np: k8s_openapi::api::networking::v1::NetworkPolicy) -> W {
        self.xyz.state.add_policy(np).unwrap();
        self
    }

    fn rulesets(&self) -> Vec<Ruleset> {
        self.xyz.render()
    }

    /// Asserts the rules allow (or not) `src → dst` on both families, and
    /// that the evaluator says the same; then that the evaluator and the
    /// rules agree everywhere.
    fn expect(&self, src: (&str, &str), dst: (&str, &str), l4: L4, allowed: bool) {
        let rss = self.rulesets();
        let nodes: Vec<SimNode<'_>> = self
            .xyz
            .nodes
            .iter()
            .zip(&rss)
            .map(|(ctx, rs)| SimNode { ctx, rs })
            .collect();
        let eval = crate::spec_eval::Cluster {
            state: &self.xyz.state,
            node_addrs: &self.xyz.node_addrs,
        };
        for (s, d) in [
            (v4(src.0, src.1), v4(dst.0, dst.1)),
            (v6(src.0, src.1), v6(dst.0, dst.1)),
        ] {
            let sim = flow(&nodes, s, d, l4) == SimVerdict::Accept;
            assert_eq!(
                sim, allowed,
                "rules: {src:?} -> {dst:?} {l4:?} ({s} -> {d}) allowed={sim}, expected {allowed}"
            );
            let ans = eval.allowed(s, d, l4);
            assert_eq!(
                ans.allowed, allowed,
                "evaluator: {src:?} -> {dst:?} {l4:?}: {}",
                ans.why
            );
        }
        let mm = self.xyz.mismatches(&rss);
        assert!(mm.is_empty(), "rules and evaluator disagree: {mm:#?}");
    }

    fn allow(&self, src: (&str, &str), dst: (&str, &str), l4: L4) {
        self.expect(src, dst, l4, true);
    }

    fn deny(&self, src: (&str, &str), dst: (&str, &str), l4: L4) {
        self.expect(src, dst, l4, false);
    }
}

fn pod(name: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    sel(&[("pod", name)])
}

fn ns(name: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    sel(&[("ns", name)])
}

#[test]
fn no_policy_allows_everything() {
    for nodes in [1, 2] {
        let w = W::new(nodes);
        w.allow(("x", "a"), ("y", "b"), TCP80);
        w.allow(("z", "c"), ("x", "a"), ICMP);
    }
}

#[test]
fn default_deny_ingress_isolates_only_that_direction() {
    for nodes in [1, 2] {
        let w = W::new(nodes).policy(NetPol::new("x", "deny").build());
        w.deny(("y", "a"), ("x", "a"), TCP80);
        w.deny(("x", "b"), ("x", "a"), UDP81);
        w.allow(("x", "a"), ("y", "b"), TCP80); // egress not isolated
        w.allow(("y", "a"), ("y", "b"), TCP80); // other namespace untouched
    }
}

#[test]
fn default_deny_egress() {
    for nodes in [1, 2] {
        let w = W::new(nodes).policy(NetPol::new("x", "deny").types(&["Egress"]).build());
        w.deny(("x", "a"), ("y", "b"), TCP80);
        w.deny(("x", "a"), ("x", "b"), ICMP);
        w.allow(("y", "b"), ("x", "a"), TCP80); // ingress not isolated
    }
}

#[test]
fn lone_pod_selector_means_policy_namespace() {
    let w = W::new(2).policy(
        NetPol::new("x", "allow-b")
            .select(pod("a"))
            .ingress(from(vec![pods(pod("b"))]))
            .build(),
    );
    w.allow(("x", "b"), ("x", "a"), TCP80);
    w.deny(("y", "b"), ("x", "a"), TCP80);
    w.deny(("x", "c"), ("x", "a"), TCP80);
    w.allow(("x", "c"), ("x", "b"), TCP80); // x/b not selected
}

#[test]
fn empty_namespace_selector_means_all_namespaces() {
    let w = W::new(2).policy(
        NetPol::new("x", "all-ns")
            .ingress(from(vec![namespaces(sel(&[]))]))
            .build(),
    );
    w.allow(("y", "a"), ("x", "a"), TCP80);
    w.allow(("z", "c"), ("x", "b"), UDP81);
    w.allow(("x", "c"), ("x", "a"), ICMP);
}

#[test]
fn pod_and_namespace_selector_in_one_peer_are_anded() {
    let w = W::new(2).policy(
        NetPol::new("x", "and")
            .select(pod("a"))
            .ingress(from(vec![pods_in(pod("b"), ns("y"))]))
            .build(),
    );
    w.allow(("y", "b"), ("x", "a"), TCP80);
    w.deny(("y", "c"), ("x", "a"), TCP80);
    w.deny(("z", "b"), ("x", "a"), TCP80);
    w.deny(("x", "b"), ("x", "a"), TCP80);
}

#[test]
fn separate_peers_are_ored() {
    let w = W::new(2).policy(
        NetPol::new("x", "or")
            .select(pod("a"))
            .ingress(from(vec![pods(pod("b")), namespaces(ns("y"))]))
            .build(),
    );
    w.allow(("y", "c"), ("x", "a"), TCP80);
    w.allow(("x", "b"), ("x", "a"), TCP80);
    w.deny(("z", "b"), ("x", "a"), TCP80);
    w.deny(("x", "c"), ("x", "a"), TCP80);
}

#[test]
fn match_expressions_in_peers() {
    let w = W::new(1).policy(
        NetPol::new("x", "expr")
            .select(pod("a"))
            .ingress(from(vec![pods_in(
                sel_expr(&[], vec![req("pod", "NotIn", &["a", "b"])]),
                sel_expr(&[], vec![req("ns", "In", &["y", "z"])]),
            )]))
            .ingress(
                from(vec![namespaces(sel_expr(
                    &[],
                    vec![req("ns", "Exists", &[]), req("team", "DoesNotExist", &[])],
                ))])
                .ports(vec![udp(81)]),
            )
            .build(),
    );
    w.allow(("y", "c"), ("x", "a"), TCP80);
    w.allow(("z", "c"), ("x", "a"), TCP81);
    w.deny(("y", "b"), ("x", "a"), TCP80);
    w.deny(("x", "c"), ("x", "a"), TCP80);
    w.allow(("x", "b"), ("x", "a"), UDP81);
}

#[test]
fn namespace_label_change_moves_pods_in_and_out() {
    let mut w = W::new(2).policy(
        NetPol::new("x", "team")
            .ingress(from(vec![namespaces(sel(&[("team", "blue")]))]))
            .build(),
    );
    w.deny(("y", "a"), ("x", "a"), TCP80);
    w.xyz.state.add_namespace(
        NamespaceInfo::new("y")
            .label("ns", "y")
            .label("team", "blue"),
    );
    w.allow(("y", "a"), ("x", "a"), TCP80);
    w.deny(("z", "a"), ("x", "a"), TCP80);
}

#[test]
fn ip_block_with_except() {
    let (a4, a6) = (v4("y", "a"), v6("y", "a"));
    let w = W::new(2).policy(
        NetPol::new("x", "cidr")
            .select(pod("a"))
            .ingress(from(vec![
                block("198.19.0.0/16", &[&format!("{a4}/32")]),
                block("2001:db8::/64", &[&format!("{a6}/128")]),
            ]))
            .build(),
    );
    w.allow(("y", "b"), ("x", "a"), TCP80);
    w.allow(("z", "c"), ("x", "a"), UDP80);
    w.deny(("y", "a"), ("x", "a"), TCP80);
}

#[test]
fn except_only_removes_what_its_own_peer_allows() {
    let a4 = v4("y", "a");
    let a6 = v6("y", "a");
    let w = W::new(2).policy(
        NetPol::new("x", "cidr-or-pod")
            .select(pod("a"))
            .ingress(from(vec![
                block("198.19.0.0/16", &[&format!("{a4}/32")]),
                block("2001:db8::/64", &[&format!("{a6}/128")]),
                pods_in(pod("a"), ns("y")),
            ]))
            .build(),
    );
    w.allow(("y", "a"), ("x", "a"), TCP80);
    // And across rules of different policies too.
    let w = W::new(1)
        .policy(
            NetPol::new("x", "cidr")
                .select(pod("a"))
                .ingress(from(vec![
                    block("198.19.0.0/16", &[&format!("{a4}/32")]),
                    block("2001:db8::/64", &[&format!("{a6}/128")]),
                ]))
                .build(),
        )
        .policy(
            NetPol::new("x", "pod")
                .select(pod("a"))
                .ingress(from(vec![namespaces(ns("y"))]).ports(vec![tcp(81)]))
                .build(),
        );
    w.deny(("y", "a"), ("x", "a"), TCP80);
    w.allow(("y", "a"), ("x", "a"), TCP81);
}

#[test]
fn numeric_ports_ranges_and_protocols() {
    let w = W::new(2).policy(
        NetPol::new("x", "ports")
            .select(pod("a"))
            .ingress(any().ports(vec![tcp(80), range("UDP", 79, 80), sctp(81)]))
            .build(),
    );
    w.allow(("y", "a"), ("x", "a"), TCP80);
    w.deny(("y", "a"), ("x", "a"), TCP81);
    w.allow(("y", "a"), ("x", "a"), UDP80);
    w.deny(("y", "a"), ("x", "a"), UDP81);
    w.deny(("y", "a"), ("x", "a"), SCTP80);
    w.allow(("y", "a"), ("x", "a"), L4::Port(Protocol::Sctp, 81));
    w.deny(("y", "a"), ("x", "a"), ICMP);
}

#[test]
fn end_port_range_covers_both_ends() {
    let w = W::new(1).policy(
        NetPol::new("x", "range")
            .ingress(from(vec![namespaces(sel(&[]))]).ports(vec![range("TCP", 81, 90)]))
            .build(),
    );
    w.deny(("y", "a"), ("x", "a"), TCP80);
    w.allow(("y", "a"), ("x", "a"), TCP81);
    w.allow(("y", "a"), ("x", "b"), L4::Port(Protocol::Tcp, 90));
    w.deny(("y", "a"), ("x", "b"), L4::Port(Protocol::Tcp, 91));
}

#[test]
fn protocol_without_port_means_all_its_ports() {
    let w = W::new(1).policy(
        NetPol::new("x", "udp")
            .ingress(any().ports(vec![all_ports("UDP")]))
            .build(),
    );
    w.allow(("y", "a"), ("x", "a"), UDP80);
    w.allow(("y", "a"), ("x", "a"), L4::Port(Protocol::Udp, 5353));
    w.deny(("y", "a"), ("x", "a"), TCP80);
}

#[test]
fn ingress_named_port_resolves_on_each_destination_pod() {
    let mut w = W::new(2).policy(
        NetPol::new("x", "named")
            .ingress(any().ports(vec![named("TCP", "http")]))
            .build(),
    );
    // Same name, different numbers on different pods; UDP "http" ignored.
    w.xyz
        .pod_mut("x", "a")
        .unwrap()
        .add_port(ContainerPort::named("http", 80, Protocol::Tcp));
    w.xyz
        .pod_mut("x", "b")
        .unwrap()
        .add_port(ContainerPort::named("http", 81, Protocol::Tcp));
    w.xyz
        .pod_mut("x", "c")
        .unwrap()
        .add_port(ContainerPort::named("http", 80, Protocol::Udp));
    w.allow(("y", "a"), ("x", "a"), TCP80);
    w.deny(("y", "a"), ("x", "a"), TCP81);
    w.allow(("y", "a"), ("x", "b"), TCP81);
    w.deny(("y", "a"), ("x", "b"), TCP80);
    w.deny(("y", "a"), ("x", "c"), TCP80);
    w.deny(("y", "a"), ("x", "c"), UDP80);
}

#[test]
fn standard_named_ports_serve_80_tcp() {
    let w = W::new(2).policy(
        NetPol::new("x", "named")
            .ingress(any().ports(vec![
                named("TCP", "serve-80-tcp"),
                named("UDP", "serve-81-udp"),
            ]))
            .build(),
    );
    w.allow(("z", "a"), ("x", "a"), TCP80);
    w.deny(("z", "a"), ("x", "a"), TCP81);
    w.allow(("z", "a"), ("x", "a"), UDP81);
    w.deny(("z", "a"), ("x", "a"), UDP80);
}

#[test]
fn egress_named_port_resolves_on_the_peer_pods() {
    let mut w = W::new(2).policy(
        NetPol::new("x", "named-egress")
            .types(&["Egress"])
            .select(pod("a"))
            .egress(to(vec![namespaces(ns("y"))]).ports(vec![named("TCP", "web")]))
            .build(),
    );
    w.xyz
        .pod_mut("y", "a")
        .unwrap()
        .add_port(ContainerPort::named("web", 80, Protocol::Tcp));
    w.xyz
        .pod_mut("y", "b")
        .unwrap()
        .add_port(ContainerPort::named("web", 81, Protocol::Tcp));
    w.xyz
        .pod_mut("z", "a")
        .unwrap()
        .add_port(ContainerPort::named("web", 80, Protocol::Tcp));
    w.allow(("x", "a"), ("y", "a"), TCP80);
    w.deny(("x", "a"), ("y", "a"), TCP81);
    w.allow(("x", "a"), ("y", "b"), TCP81);
    w.deny(("x", "a"), ("y", "c"), TCP80);
    w.deny(("x", "a"), ("z", "a"), TCP80); // not a peer
}

#[test]
fn egress_named_port_with_no_peers_and_with_ip_block() {
    let w = W::new(2)
        .policy(
            NetPol::new("x", "any-peer")
                .select(pod("a"))
                .egress(any().ports(vec![named("UDP", "serve-81-udp")]))
                .build(),
        )
        .policy(
            NetPol::new("x", "block")
                .select(pod("b"))
                .egress(
                    to(vec![
                        block("198.19.2.0/24", &[]),
                        block("2001:db8::2:0/112", &[]),
                    ])
                    .ports(vec![named("TCP", "serve-80-tcp")]),
                )
                .build(),
        );
    w.allow(("x", "a"), ("z", "c"), UDP81);
    w.deny(("x", "a"), ("z", "c"), UDP80);
    w.allow(("x", "b"), ("y", "c"), TCP80);
    w.deny(("x", "b"), ("z", "c"), TCP80);
}

#[test]
fn union_of_several_policies() {
    let w = W::new(2)
        .policy(
            NetPol::new("x", "one")
                .select(pod("a"))
                .ingress(from(vec![pods(pod("b"))]).ports(vec![tcp(80)]))
                .build(),
        )
        .policy(
            NetPol::new("x", "two")
                .select(sel_expr(&[], vec![req("pod", "In", &["a", "c"])]))
                .ingress(from(vec![namespaces(ns("z"))]).ports(vec![udp(81)]))
                .build(),
        );
    w.allow(("x", "b"), ("x", "a"), TCP80);
    w.deny(("x", "b"), ("x", "a"), UDP81);
    w.allow(("z", "b"), ("x", "a"), UDP81);
    w.deny(("z", "b"), ("x", "a"), TCP80);
    w.allow(("z", "b"), ("x", "c"), UDP81);
    w.deny(("x", "b"), ("x", "c"), TCP80);
}

#[test]
fn policy_types_default_egress_when_egress_rules_exist() {
    let w = W::new(1).policy(
        NetPol::new("x", "e")
            .select(pod("a"))
            .egress(to(vec![namespaces(ns("y"))]))
            .build(),
    );
    // Ingress isolated too (default type), with no ingress rules.
    w.deny(("y", "a"), ("x", "a"), TCP80);
    w.allow(("x", "a"), ("y", "a"), TCP80);
    w.deny(("x", "a"), ("z", "a"), TCP80);
}

#[test]
fn empty_from_allows_all_peers_and_empty_rules_isolate() {
    let w = W::new(1).policy(NetPol::new("x", "all").ingress(from(vec![])).build());
    w.allow(("z", "c"), ("x", "a"), TCP80);
    let w = W::new(1).policy(NetPol::new("x", "none").no_ingress_rules().build());
    w.deny(("z", "c"), ("x", "a"), TCP80);
}

#[test]
fn icmp_only_with_rules_without_ports() {
    let w = W::new(1).policy(
        NetPol::new("x", "p")
            .select(pod("a"))
            .ingress(from(vec![pods(pod("b"))]))
            .ingress(from(vec![pods(pod("c"))]).ports(vec![tcp(80)]))
            .build(),
    );
    w.allow(("x", "b"), ("x", "a"), ICMP);
    w.deny(("x", "c"), ("x", "a"), ICMP);
}

#[test]
fn own_node_always_allowed_other_nodes_are_ordinary_addresses() {
    let w = W::new(2)
        .policy(NetPol::new("x", "deny-in").build())
        .policy(NetPol::new("x", "deny-out").types(&["Egress"]).build());
    let rss = w.rulesets();
    let nodes: Vec<SimNode<'_>> = w
        .xyz
        .nodes
        .iter()
        .zip(&rss)
        .map(|(ctx, rs)| SimNode { ctx, rs })
        .collect();
    let x_a = w.xyz.state.pods.get(&PodKey::new("x", "a")).unwrap();
    let own = x_a.node_name.clone().unwrap();
    let own_addrs = w.xyz.node_addrs[&*own].clone();
    let other: Vec<IpAddr> = w
        .xyz
        .node_addrs
        .iter()
        .filter(|(n, _)| **n != *own)
        .flat_map(|(_, a)| a.clone())
        .collect();
    let eval = crate::spec_eval::Cluster {
        state: &w.xyz.state,
        node_addrs: &w.xyz.node_addrs,
    };
    for n in own_addrs {
        let pod_ip = x_a
            .ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == n.is_ipv4())
            .unwrap();
        assert_eq!(flow(&nodes, n, pod_ip, TCP80), SimVerdict::Accept);
        assert_eq!(flow(&nodes, pod_ip, n, TCP80), SimVerdict::Accept);
        assert!(eval.allowed(n, pod_ip, TCP80).allowed);
        assert!(eval.allowed(pod_ip, n, TCP80).allowed);
    }
    for n in other {
        let pod_ip = x_a
            .ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == n.is_ipv4())
            .unwrap();
        assert_eq!(flow(&nodes, n, pod_ip, TCP80), SimVerdict::Drop);
        assert_eq!(flow(&nodes, pod_ip, n, TCP80), SimVerdict::Drop);
        assert!(!eval.allowed(n, pod_ip, TCP80).allowed);
    }
    assert!(w.xyz.mismatches(&rss).is_empty());
}

#[test]
fn host_network_pods_are_not_selector_members_or_endpoints() {
    let mut w = W::new(1).policy(
        NetPol::new("x", "from-b")
            .select(pod("a"))
            .ingress(from(vec![namespaces(sel(&[]))]).ports(vec![]))
            .ingress(from(vec![pods(pod("hn"))]))
            .build(),
    );
    let node_ip = w.xyz.node_addrs["node0"][0];
    let mut hn = PodInfo::new("x", "hostnet")
        .label("pod", "hn")
        .ip(node_ip)
        .on_node("node0");
    hn.host_network = true;
    w.xyz.state.add_pod(hn.clone());
    let plan = build(&w.xyz.state, &w.xyz.nodes[0]);
    let rs = Ruleset::build(&plan, &w.xyz.state);
    for (name, set) in &rs.sets {
        if name.starts_with('s') {
            assert!(
                !set.elems.contains(&crate::ruleset::Elem::Addr(node_ip)),
                "{name} holds the host-network pod's IP"
            );
        }
    }
    // Even listed as an endpoint by mistake, it gets no pass: deny all.
    let mut node = w.xyz.nodes[0].clone();
    node.add_endpoint(LocalEndpoint {
        standalone: false,
        pod: hn.key.clone(),
        iface: "calihostnet0".into(),
        ips: vec![node_ip],
    });
    let plan = build(&w.xyz.state, &node);
    assert_eq!(plan.endpoints[&hn.key].ingress, DirectionPlan::DenyAll);
    w.xyz.nodes.truncate(1);
}

#[test]
fn a_standalone_workload_is_open_both_ways_and_in_no_selector_set() {
    // Every pod in x is isolated both ways; a workload started by a runtime
    // outside Kubernetes has no Pod object: no policy selects it.
    let w = W::new(1).policy(
        NetPol::new("x", "deny-all")
            .types(&["Ingress", "Egress"])
            .build(),
    );
    let ip: IpAddr = "198.19.77.7".parse().unwrap();
    let key = PodKey::new("", "mgnet.ctr1");
    let mut node = w.xyz.nodes[0].clone();
    node.add_endpoint(LocalEndpoint {
        standalone: true,
        pod: key.clone(),
        iface: "cali0123456789a".into(),
        ips: vec![ip],
    });
    let plan = build(&w.xyz.state, &node);
    assert_eq!(plan.endpoints[&key].ingress, DirectionPlan::Open);
    assert_eq!(plan.endpoints[&key].egress, DirectionPlan::Open);
    // The same endpoint without the flag is an unknown pod: fail closed.
    node.add_endpoint(LocalEndpoint {
        standalone: false,
        pod: key.clone(),
        iface: "cali0123456789a".into(),
        ips: vec![ip],
    });
    let plan = build(&w.xyz.state, &node);
    assert_eq!(plan.endpoints[&key].ingress, DirectionPlan::DenyAll);
}

#[test]
fn finished_pods_leave_sets_at_once_and_ip_reuse_inherits_nothing() {
    let mut w = W::new(1).policy(
        NetPol::new("x", "from-b")
            .select(pod("a"))
            .ingress(from(vec![pods(pod("b"))]))
            .build(),
    );
    w.allow(("x", "b"), ("x", "a"), TCP80);
    let b = w.xyz.pod_mut("x", "b").unwrap();
    b.phase = PodPhase::Succeeded;
    let ips = b.ips.clone();
    // A new pod reuses x/b's addresses but has other labels.
    let mut reuse = PodInfo::new("x", "b2")
        .label("pod", "other")
        .on_node("node0");
    reuse.ips = ips.clone();
    w.xyz.state.add_pod(reuse);
    let plan = build(&w.xyz.state, &w.xyz.nodes[0]);
    let rs = Ruleset::build(&plan, &w.xyz.state);
    for (name, set) in &rs.sets {
        if name.starts_with('s') {
            for ip in &ips {
                assert!(
                    !set.elems.contains(&crate::ruleset::Elem::Addr(*ip)),
                    "{name} still holds {ip}"
                );
            }
        }
    }
    let eval = crate::spec_eval::Cluster {
        state: &w.xyz.state,
        node_addrs: &w.xyz.node_addrs,
    };
    assert!(!eval.allowed(ips[0], v4("x", "a"), TCP80).allowed);
}

#[test]
fn invalid_policy_is_reported_and_others_still_apply() {
    let w = W::new(1)
        .policy(
            NetPol::new("x", "bad")
                .select(sel_expr(&[], vec![req("pod", "Like", &["a"])]))
                .build(),
        )
        .policy(NetPol::new("y", "deny").build());
    let plan = build(&w.xyz.state, &w.xyz.nodes[0]);
    assert_eq!(plan.issues.len(), 1, "{:?}", plan.issues);
    let msg = plan.issues[0].to_string();
    assert!(msg.contains("x/bad") && msg.contains("Like"), "{msg}");
    w.allow(("z", "a"), ("x", "a"), TCP80);
    w.deny(("z", "a"), ("y", "a"), TCP80);
}

#[test]
fn anti_spoofing_drops_foreign_sources_from_workloads() {
    let w = W::new(1);
    let rs = &w.rulesets()[0];
    let iface = crate::testkit::host_ifname("x", "a");
    let good = Packet {
        iif: &iface,
        oif: "uplink",
        src: v4("x", "a"),
        dst: v4("y", "a"),
        l4: TCP80,
    };
    assert_eq!(forward(rs, &good), SimVerdict::Accept);
    let spoofed = Packet {
        src: v4("x", "b"),
        ..good.clone()
    };
    assert_eq!(forward(rs, &spoofed), SimVerdict::Drop);
    let unknown_if = Packet {
        iif: "cali00000000000",
        ..good.clone()
    };
    assert_eq!(forward(rs, &unknown_if), SimVerdict::Drop);
    let v6_spoof = Packet {
        src: v6("x", "b"),
        dst: v6("y", "a"),
        ..good
    };
    assert_eq!(forward(rs, &v6_spoof), SimVerdict::Drop);
    assert_eq!(
        crate::testkit::input(rs, &iface, "fe80::1".parse().unwrap()),
        SimVerdict::Accept
    );
    assert_eq!(
        crate::testkit::input(rs, &iface, v4("x", "b")),
        SimVerdict::Drop
    );
}

#[test]
fn unknown_endpoint_pod_is_denied_both_ways() {
    let mut node = NodeContext::new("n");
    let key = PodKey::new("x", "ghost");
    node.add_endpoint(LocalEndpoint {
        standalone: false,
        pod: key.clone(),
        iface: "califfffffffff0".into(),
        ips: vec![],
    });
    let plan = build(&ClusterState::default(), &node);
    assert_eq!(plan.endpoints[&key].ingress, DirectionPlan::DenyAll);
    assert_eq!(plan.endpoints[&key].egress, DirectionPlan::DenyAll);
}

#[test]
fn bad_interface_names_are_issues() {
    let mut node = NodeContext::new("n");
    for (i, iface) in ["eth0", "cali", "cali;drop", "cali0123456789abcdef"]
        .iter()
        .enumerate()
    {
        node.add_endpoint(LocalEndpoint {
            standalone: false,
            pod: PodKey::new("x", format!("p{i}")),
            iface: iface.to_string(),
            ips: vec![],
        });
    }
    let plan = build(&ClusterState::default(), &node);
    assert!(plan.endpoints.is_empty());
    assert_eq!(plan.issues.len(), 4);
}

#[test]
fn equal_rules_share_one_chain_and_selector_sets_are_shared() {
    let w = W::new(1)
        .policy(
            NetPol::new("x", "p1")
                .ingress(from(vec![pods(pod("b"))]))
                .build(),
        )
        .policy(
            NetPol::new("x", "p2")
                .select(pod("a"))
                .ingress(from(vec![pods(pod("b"))]))
                .build(),
        );
    let rs = &w.rulesets()[0];
    let pi: Vec<_> = rs.chains.keys().filter(|c| c.starts_with("pi_")).collect();
    assert_eq!(
        pi.len(),
        1,
        "x/a, x/b, x/c all allow exactly from x/b: {pi:?}"
    );
    let s: Vec<_> = rs.sets.keys().filter(|c| c.starts_with("s4_")).collect();
    assert_eq!(s.len(), 1);
}

#[test]
fn rendering_is_deterministic() {
    let w = W::new(2)
        .policy(
            NetPol::new("x", "p1")
                .ingress(
                    from(vec![
                        pods(pod("b")),
                        block("198.19.0.0/16", &["198.19.1.0/24"]),
                    ])
                    .ports(vec![tcp(80), named("UDP", "serve-81-udp")]),
                )
                .build(),
        )
        .policy(
            NetPol::new("y", "p2")
                .types(&["Egress"])
                .egress(to(vec![namespaces(ns("x"))]).ports(vec![named("TCP", "serve-80-tcp")]))
                .build(),
        );
    assert_eq!(w.rulesets(), w.rulesets());
    let a = crate::nft::to_json(&crate::nft::full(&w.rulesets()[0])).unwrap();
    let b = crate::nft::to_json(&crate::nft::full(&w.rulesets()[0])).unwrap();
    assert_eq!(a, b);
    // The streamed text is the same document (key order aside).
    let streamed = crate::nft::full_json(&w.rulesets()[0]).unwrap();
    let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
    assert_eq!(parse(&streamed), parse(&a));
    assert!(
        w.rulesets()[0].sets.values().any(|s| !s.elems.is_empty()),
        "the world has set elements to stream"
    );
}
