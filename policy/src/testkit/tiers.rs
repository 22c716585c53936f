//! Generated AdminNetworkPolicies and BaselineAdminNetworkPolicies for the
//! x/y/z cluster: subjects, peers, ports and actions indexed by small
//! numbers, so property tests can pick them (see `tests/admin_prop.rs`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::admin::{AdminNetworkPolicy, AdminPeer, AdminPort, BaselineAdminNetworkPolicy};
use crate::build::admin::*;
use crate::build::{req, sel, sel_expr};

/// One generated rule: (action, peer kind, port kind), indices into
/// [`ACTIONS`], [`peer_kinds`], [`port_kinds`].
pub type GenRule = (usize, usize, usize);

/// `Allow`, `Deny`, `Pass` (a baseline `Pass` is invalid and fails closed).
pub const ACTIONS: [&str; 3] = ["Allow", "Deny", "Pass"];

/// Subjects: (label, is a `pods` subject, namespace selector, pod selector).
pub fn subjects() -> Vec<(&'static str, bool, LabelSelector, LabelSelector)> {
    vec![
        ("all namespaces", false, sel(&[]), sel(&[])),
        ("ns=x", false, sel(&[("ns", "x")]), sel(&[])),
        ("pod=a anywhere", true, sel(&[]), sel(&[("pod", "a")])),
        (
            "pod!=c in y|z",
            true,
            sel_expr(&[], vec![req("ns", "In", &["y", "z"])]),
            sel_expr(&[], vec![req("pod", "NotIn", &["c"])]),
        ),
    ]
}

/// Peers: (label, peers). The last kinds are egress-only (an ingress rule
/// with them is invalid and fails closed, which is also worth testing).
pub fn peer_kinds() -> Vec<(&'static str, Vec<AdminPeer>)> {
    vec![
        ("ns=y", vec![a_namespaces(sel(&[("ns", "y")]))]),
        ("all namespaces", vec![a_namespaces(sel(&[]))]),
        (
            "pod=b anywhere",
            vec![a_pods(sel(&[]), sel(&[("pod", "b")]))],
        ),
        (
            "pod=c in x|z",
            vec![a_pods(
                sel_expr(&[], vec![req("ns", "In", &["x", "z"])]),
                sel(&[("pod", "c")]),
            )],
        ),
        (
            "networks y/a + z/*",
            vec![a_networks(&[
                "198.19.2.2/32",
                "2001:db8::2:2/128",
                "198.19.3.0/24",
                "2001:db8::3:0/112",
            ])],
        ),
        ("networks all", vec![a_networks(&["0.0.0.0/0", "::/0"])]),
        ("nodes zone=b", vec![a_nodes(sel(&[("zone", "b")]))]),
        (
            "nodes {} + ns=z",
            vec![a_nodes(sel(&[])), a_namespaces(sel(&[("ns", "z")]))],
        ),
    ]
}

/// Ports: (label, ports); `None` = no `ports` (everything).
pub fn port_kinds() -> Vec<(&'static str, Option<Vec<AdminPort>>)> {
    vec![
        ("all", None),
        ("tcp/80", Some(vec![a_port("TCP", 80)])),
        ("udp/81", Some(vec![a_port("UDP", 81)])),
        ("tcp/80-81", Some(vec![a_range("TCP", 80, 81)])),
        ("named serve-80-tcp", Some(vec![a_named("serve-80-tcp")])),
        (
            "named serve-81-udp + sctp/80",
            Some(vec![a_named("serve-81-udp"), a_port("SCTP", 80)]),
        ),
        ("udp/1-80", Some(vec![a_range("UDP", 1, 80)])),
    ]
}

fn rule((action, peer, port): GenRule) -> ARule {
    let peers = peer_kinds();
    let ports = port_kinds();
    let peers = peers[peer % peers.len()].1.clone();
    let r = match action % ACTIONS.len() {
        0 => allow(peers),
        1 => deny(peers),
        _ => pass(peers),
    };
    match &ports[port % ports.len()].1 {
        Some(p) => r.ports(p.clone()),
        None => r,
    }
}

/// An ANP from indices.
pub fn admin_policy(
    name: &str,
    priority: i32,
    subject: usize,
    ingress: &[GenRule],
    egress: &[GenRule],
) -> AdminNetworkPolicy {
    let subjects = subjects();
    let (_, pods, ns_sel, pod_sel) = subjects[subject % subjects.len()].clone();
    let mut a = anp(name, priority);
    a = if pods {
        a.subject_pods(ns_sel, pod_sel)
    } else {
        a.subject_namespaces(ns_sel)
    };
    for r in ingress {
        a = a.ingress(rule(*r));
    }
    for r in egress {
        a = a.egress(rule(*r));
    }
    a.build()
}

/// The BANP `default` from indices.
pub fn baseline_policy(
    subject: usize,
    ingress: &[GenRule],
    egress: &[GenRule],
) -> BaselineAdminNetworkPolicy {
    let subjects = subjects();
    let (_, pods, ns_sel, pod_sel) = subjects[subject % subjects.len()].clone();
    let mut b = banp();
    b = if pods {
        b.subject_pods(ns_sel, pod_sel)
    } else {
        b.subject_namespaces(ns_sel)
    };
    for r in ingress {
        b = b.ingress(rule(*r));
    }
    for r in egress {
        b = b.egress(rule(*r));
    }
    b.build()
}
