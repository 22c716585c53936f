//! The upstream AdminNetworkPolicy / BaselineAdminNetworkPolicy conformance
//! cases that apply to Margay, restated as data.
//!
//! Source: kubernetes-sigs/network-policy-api, tag v0.1.7 (the last release
//! of the v1alpha1 ANP/BANP suite): the cluster of
//! `conformance/base/manifests.yaml` (houses gryffindor, slytherin,
//! hufflepuff, ravenclaw, two pods each, container ports `web` 80/TCP and
//! `dns` 53/UDP), the policies of `conformance/base/admin_network_policy/`,
//! `baseline_admin_network_policy/` and `api_integration/` (written here as
//! JSON and read through the typed API), and the probes and mutations of
//! `conformance/tests/`:
//! * `admin-network-policy-standard-gress-rules.go` (AdminNetworkPolicyGress)
//! * `baseline-admin-network-policy-standard-gress-rules.go` (BaselineAdminNetworkPolicyGress)
//! * `admin-network-policy-standard-priority.go` (AdminNetworkPolicyPriorityField)
//! * `admin-network-policy-standard-integration.go` (AdminNetworkPolicyIntegration)
//! * `admin-network-policy-standard-egress-inline-cidr-rules.go` (AdminNetworkPolicyEgressInlineCIDRPeers)
//!
//! Subtests run in order and mutations accumulate, as upstream. Every
//! probe's expected verdict is the upstream one; both the rendered rules
//! (walked by the simulator, pods spread over two nodes) and the spec
//! evaluator must give it, on IPv4 and IPv6. After each step the rules and
//! the evaluator must also agree on every pair of the cluster.
//! Left out: the experimental `nodes`/named-port suites (they probe
//! host-network pods on nodes; Margay always allows a pod and its own node
//! to talk, see the crate docs) and the per-protocol duplicates of the
//! combined "gress" suites.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

use policy::admin::{AdminNetworkPolicy, BaselineAdminNetworkPolicy, RuleAction};
use policy::spec_eval::{Cluster, L4};
use policy::testkit::{SimNode, SimVerdict, Xyz, flow, host_ifname, node_info, node_ip};
use policy::{
    ClusterState, ContainerPort, LocalEndpoint, NamespaceInfo, NodeContext, PodInfo, Protocol,
};

/// (house, pod name prefix).
const HOUSES: [(&str, &str); 4] = [
    ("gryffindor", "harry-potter"),
    ("slytherin", "draco-malfoy"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
];

fn ns(house: &str) -> String {
    format!("network-policy-conformance-{house}")
}

fn pod_addrs(house: usize, k: usize) -> [IpAddr; 2] {
    let (h, k) = (10 + house as u8, 2 + k as u8);
    [
        IpAddr::V4(Ipv4Addr::new(198, 19, h, k)),
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            u16::from(h),
            u16::from(k),
        )),
    ]
}

/// The upstream cluster on two nodes, dual-stack.
fn houses() -> Xyz {
    let mut state = ClusterState::default();
    let mut nodes: Vec<NodeContext> = (0..2)
        .map(|i| {
            let mut c = NodeContext::new(&format!("node{i}"));
            let (v4, v6) = node_ip(i);
            c.node_addrs = vec![IpAddr::V4(v4), IpAddr::V6(v6)];
            c
        })
        .collect();
    for (hi, (house, prefix)) in HOUSES.iter().enumerate() {
        state.add_namespace(NamespaceInfo::new(&ns(house)).label("conformance-house", house));
        for k in 0..2 {
            let node = &mut nodes[(hi + k) % 2];
            let mut p = PodInfo::new(ns(house), format!("{prefix}-{k}"))
                .label("conformance-house", house)
                .port(ContainerPort::named("web", 80, Protocol::Tcp))
                .port(ContainerPort::named("dns", 53, Protocol::Udp))
                .on_node(&node.node_name);
            for ip in pod_addrs(hi, k) {
                p = p.ip(ip);
            }
            node.add_endpoint(LocalEndpoint {
                pod: p.key.clone(),
                iface: host_ifname(&p.key.namespace, &p.key.name),
                ips: p.ips.clone(),
                standalone: false,
            });
            state.add_pod(p);
        }
    }
    for (i, c) in nodes.iter().enumerate() {
        state.add_node(node_info(i, &c.node_name, &c.node_addrs));
    }
    let node_addrs: BTreeMap<String, Vec<IpAddr>> = nodes
        .iter()
        .map(|c| (c.node_name.clone(), c.node_addrs.clone()))
        .collect();
    Xyz {
        state,
        nodes,
        node_addrs,
        dual_stack: true,
    }
}

/// `client -> server proto/port: allowed?` as upstream asserts it.
struct Probe {
    client: String,
    server: String,
    proto: &'static str,
    port: u16,
    allowed: bool,
}

fn p(client: &str, server: &str, proto: &'static str, port: u16, allowed: bool) -> Probe {
    Probe {
        client: client.to_string(),
        server: server.to_string(),
        proto,
        port,
        allowed,
    }
}

fn addrs_of(w: &Xyz, pod: &str) -> Vec<IpAddr> {
    w.state
        .pods
        .values()
        .find(|p| *p.key.name == *pod)
        .map(|p| p.ips.clone())
        .unwrap_or_else(|| panic!("no pod {pod}"))
}

/// Checks the probes (both families) and the whole-cluster agreement.
fn check(w: &Xyz, step: &str, probes: &[Probe], failures: &mut Vec<String>) {
    let rss = w.render();
    let nodes: Vec<SimNode<'_>> = w
        .nodes
        .iter()
        .zip(&rss)
        .map(|(ctx, rs)| SimNode { ctx, rs })
        .collect();
    let eval = Cluster {
        state: &w.state,
        node_addrs: &w.node_addrs,
    };
    for pr in probes {
        let proto = match pr.proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => Protocol::Sctp,
        };
        let l4 = L4::Port(proto, pr.port);
        for (s, d) in addrs_of(w, &pr.client)
            .into_iter()
            .zip(addrs_of(w, &pr.server))
        {
            let what = format!(
                "[{step}] {} -> {} {}/{} ({s} -> {d}), upstream expects {}",
                pr.client,
                pr.server,
                pr.proto,
                pr.port,
                if pr.allowed { "allowed" } else { "denied" }
            );
            let rules = flow(&nodes, s, d, l4) == SimVerdict::Accept;
            if rules != pr.allowed {
                failures.push(format!("{what}: the rules say {rules}"));
            }
            let spec = eval.allowed(s, d, l4);
            if spec.allowed != pr.allowed {
                failures.push(format!(
                    "{what}: the evaluator says {} ({})",
                    spec.allowed, spec.why
                ));
            }
        }
    }
    for m in w.mismatches(&rss) {
        failures.push(format!(
            "[{step}] rules and evaluator disagree: {} -> {} {:?}: rules allow={} spec: {}",
            m.src, m.dst, m.l4, m.rules_allow, m.spec.why
        ));
    }
}

fn finish(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn set_anp(w: &mut Xyz, v: Value) {
    let anp = AdminNetworkPolicy::from_value(v).expect("upstream ANP parses");
    assert!(anp.name().is_some());
    w.state.add_admin_policy(anp).expect("named");
}

fn set_banp(w: &mut Xyz, v: Value) {
    let b = BaselineAdminNetworkPolicy::from_value(v).expect("upstream BANP parses");
    w.state.add_baseline_policy(b).expect("named");
}

fn anp_mut<'a>(w: &'a mut Xyz, name: &str) -> &'a mut AdminNetworkPolicy {
    w.state
        .admin_policies
        .get_mut(name)
        .unwrap_or_else(|| panic!("no ANP {name}"))
}

fn banp_mut(w: &mut Xyz) -> &mut BaselineAdminNetworkPolicy {
    w.state
        .baseline_policies
        .get_mut("default")
        .expect("BANP default")
}

/// `namespaces: {matchLabels: {kubernetes.io/metadata.name: <ns of house>}}`
fn house_ns(house: &str) -> Value {
    json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": ns(house)}}})
}

fn ports(list: &[(&str, u16)]) -> Value {
    Value::Array(
        list.iter()
            .map(|(proto, port)| json!({"portNumber": {"protocol": proto, "port": port}}))
            .collect(),
    )
}

/// The rules of `standard-gress-rules-combined.yaml` (ANP flavour when
/// `pass` is set: it has the two Pass rules; the BANP has not).
fn gress_rules(peer: &str, pass: bool) -> Vec<Value> {
    let slytherin = ports(&[("TCP", 80), ("UDP", 53), ("SCTP", 9003)]);
    let mut v = vec![
        json!({"name": "allow-ravenclaw-everything", "action": "Allow", peer: [house_ns("ravenclaw")]}),
        json!({"name": "deny-ravenclaw-everything", "action": "Deny", peer: [house_ns("ravenclaw")]}),
    ];
    if pass {
        v.push(json!({"name": "pass-ravenclaw-everything", "action": "Pass", peer: [house_ns("ravenclaw")]}));
    }
    v.push(
        json!({"name": "deny-slytherin-at-ports-80-53-9003", "action": "Deny",
                  peer: [house_ns("slytherin")], "ports": slytherin}),
    );
    if pass {
        v.push(
            json!({"name": "pass-slytherin-at-port-80-53-9003", "action": "Pass",
                      peer: [house_ns("slytherin")], "ports": slytherin}),
        );
    }
    v
}

fn gress_hufflepuff(peer: &str, first_tcp: u16) -> Vec<Value> {
    vec![
        json!({"name": "allow-hufflepuff-at-ports", "action": "Allow", peer: [house_ns("hufflepuff")],
               "ports": ports(&[("TCP", first_tcp), ("UDP", 5353), ("SCTP", 9003)])}),
        json!({"name": "deny-hufflepuff-everything-else", "action": "Deny", peer: [house_ns("hufflepuff")]}),
    ]
}

/// The four "gress" subtests shared by the ANP and BANP suites.
fn gress_probes_allow() -> Vec<Probe> {
    vec![
        p("harry-potter-0", "luna-lovegood-0", "tcp", 80, true),
        p("harry-potter-1", "luna-lovegood-0", "udp", 53, true),
        p("harry-potter-0", "luna-lovegood-0", "sctp", 9003, true),
        p("luna-lovegood-0", "harry-potter-0", "tcp", 80, true),
        p("luna-lovegood-1", "harry-potter-0", "udp", 53, true),
        p("luna-lovegood-1", "harry-potter-0", "sctp", 9003, true),
    ]
}

fn gress_probes_allow_ports() -> Vec<Probe> {
    vec![
        p("harry-potter-0", "cedric-diggory-1", "tcp", 8080, true),
        p("harry-potter-1", "cedric-diggory-1", "tcp", 80, false),
        p("harry-potter-0", "cedric-diggory-1", "udp", 5353, true),
        p("harry-potter-1", "cedric-diggory-1", "udp", 53, false),
        p("harry-potter-0", "cedric-diggory-1", "sctp", 9003, true),
        p("harry-potter-1", "cedric-diggory-1", "sctp", 9005, false),
        p("cedric-diggory-0", "harry-potter-1", "tcp", 80, true),
        p("cedric-diggory-1", "harry-potter-1", "tcp", 8080, false),
        p("cedric-diggory-0", "harry-potter-1", "udp", 5353, true),
        p("cedric-diggory-1", "harry-potter-1", "udp", 53, false),
        p("cedric-diggory-0", "harry-potter-1", "sctp", 9003, true),
        p("cedric-diggory-1", "harry-potter-1", "sctp", 9005, false),
    ]
}

fn gress_probes_deny() -> Vec<Probe> {
    vec![
        p("harry-potter-0", "luna-lovegood-1", "tcp", 80, false),
        p("harry-potter-1", "luna-lovegood-1", "udp", 53, false),
        p("harry-potter-0", "luna-lovegood-1", "sctp", 9003, false),
        p("luna-lovegood-0", "harry-potter-1", "tcp", 80, false),
        p("luna-lovegood-1", "harry-potter-1", "udp", 53, false),
        p("luna-lovegood-1", "harry-potter-1", "sctp", 9003, false),
    ]
}

fn gress_probes_deny_ports() -> Vec<Probe> {
    vec![
        p("harry-potter-0", "draco-malfoy-0", "tcp", 80, false),
        p("harry-potter-1", "draco-malfoy-0", "tcp", 8080, true),
        p("harry-potter-0", "draco-malfoy-0", "udp", 53, false),
        p("harry-potter-1", "draco-malfoy-0", "udp", 5353, true),
        p("harry-potter-0", "draco-malfoy-0", "sctp", 9003, false),
        p("harry-potter-1", "draco-malfoy-0", "sctp", 9005, true),
        p("draco-malfoy-0", "harry-potter-0", "tcp", 80, false),
        p("draco-malfoy-1", "harry-potter-0", "tcp", 8080, true),
        p("draco-malfoy-0", "harry-potter-0", "udp", 53, false),
        p("draco-malfoy-1", "harry-potter-0", "udp", 5353, true),
        p("draco-malfoy-0", "harry-potter-0", "sctp", 9003, false),
        p("draco-malfoy-1", "harry-potter-0", "sctp", 9005, true),
    ]
}

/// AdminNetworkPolicyGress (`admin-network-policy-standard-gress-rules.go`).
#[test]
fn upstream_anp_gress_rules() {
    let mut w = houses();
    let mut egress = gress_rules("to", true);
    egress.extend(gress_hufflepuff("to", 8080));
    let mut ingress = gress_rules("from", true);
    ingress.extend(gress_hufflepuff("from", 80));
    set_anp(
        &mut w,
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha1",
            "kind": "AdminNetworkPolicy",
            "metadata": {"name": "gress-rules"},
            "spec": {
                "priority": 15,
                "subject": house_ns("gryffindor"),
                "egress": egress,
                "ingress": ingress,
            }
        }),
    );
    let mut f = Vec::new();
    check(&w, "allow-gress", &gress_probes_allow(), &mut f);
    check(
        &w,
        "allow-gress at ports",
        &gress_probes_allow_ports(),
        &mut f,
    );
    let a = anp_mut(&mut w, "gress-rules");
    a.spec.egress.swap(0, 1);
    a.spec.ingress.swap(0, 1);
    check(
        &w,
        "deny-gress (rules 0 and 1 swapped)",
        &gress_probes_deny(),
        &mut f,
    );
    check(
        &w,
        "deny-gress at ports",
        &gress_probes_deny_ports(),
        &mut f,
    );
    let a = anp_mut(&mut w, "gress-rules");
    a.spec.egress.swap(0, 2);
    a.spec.ingress.swap(0, 2);
    check(
        &w,
        "pass-gress (rules 0 and 2 swapped)",
        &[
            p("harry-potter-0", "luna-lovegood-0", "tcp", 80, true),
            p("harry-potter-0", "luna-lovegood-0", "udp", 5353, true),
            p("harry-potter-0", "luna-lovegood-0", "sctp", 9003, true),
            p("luna-lovegood-0", "harry-potter-0", "tcp", 80, true),
            p("luna-lovegood-1", "harry-potter-0", "udp", 53, true),
            p("luna-lovegood-1", "harry-potter-0", "sctp", 9003, true),
        ],
        &mut f,
    );
    let a = anp_mut(&mut w, "gress-rules");
    a.spec.egress.swap(3, 4);
    a.spec.ingress.swap(3, 4);
    let mut probes = Vec::new();
    for (c, s) in [
        ("harry-potter", "draco-malfoy-0"),
        ("draco-malfoy", "harry-potter-0"),
    ] {
        for (k, proto, port) in [
            (0, "tcp", 80),
            (1, "tcp", 8080),
            (0, "udp", 53),
            (1, "udp", 5353),
            (0, "sctp", 9003),
            (1, "sctp", 9005),
        ] {
            probes.push(p(&format!("{c}-{k}"), s, proto, port, true));
        }
    }
    check(
        &w,
        "pass-gress at ports (rules 3 and 4 swapped)",
        &probes,
        &mut f,
    );
    finish(f);
}

/// BaselineAdminNetworkPolicyGress
/// (`baseline-admin-network-policy-standard-gress-rules.go`).
#[test]
fn upstream_banp_gress_rules() {
    let mut w = houses();
    let mut egress = gress_rules("to", false);
    egress.extend(gress_hufflepuff("to", 8080));
    let mut ingress = gress_rules("from", false);
    ingress.extend(gress_hufflepuff("from", 80));
    set_banp(
        &mut w,
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha1",
            "kind": "BaselineAdminNetworkPolicy",
            "metadata": {"name": "default"},
            "spec": {"subject": house_ns("gryffindor"), "egress": egress, "ingress": ingress}
        }),
    );
    let mut f = Vec::new();
    check(&w, "allow-gress", &gress_probes_allow(), &mut f);
    check(
        &w,
        "allow-gress at ports",
        &gress_probes_allow_ports(),
        &mut f,
    );
    let b = banp_mut(&mut w);
    b.spec.egress.swap(0, 1);
    b.spec.ingress.swap(0, 1);
    check(
        &w,
        "deny-gress (rules 0 and 1 swapped)",
        &gress_probes_deny(),
        &mut f,
    );
    check(
        &w,
        "deny-gress at ports",
        &gress_probes_deny_ports(),
        &mut f,
    );
    finish(f);
}

/// `pods: {namespaceSelector, podSelector}` on the conformance-house label.
fn house_pods(house: &str) -> Value {
    json!({"pods": {
        "namespaceSelector": {"matchLabels": {"conformance-house": house}},
        "podSelector": {"matchLabels": {"conformance-house": house}},
    }})
}

/// AdminNetworkPolicyPriorityField (`admin-network-policy-standard-priority.go`).
#[test]
fn upstream_anp_priority_field() {
    let mut w = houses();
    let policy = |name: &str, prio: i32, action: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {
                "priority": prio,
                "subject": house_pods("gryffindor"),
                "ingress": [{"name": "all-ingress-from-slytherin", "action": action,
                             "from": [house_pods("slytherin")]}],
                "egress": [{"name": "all-egress-to-slytherin", "action": action,
                            "to": [house_pods("slytherin")]}],
            }
        })
    };
    set_anp(&mut w, policy("priority-50-example", 50, "Deny"));
    set_anp(
        &mut w,
        policy("old-priority-60-new-priority-40-example", 60, "Pass"),
    );
    set_banp(
        &mut w,
        json!({
            "metadata": {"name": "default"},
            "spec": {
                "subject": house_pods("gryffindor"),
                "ingress": [{"action": "Allow", "from": [house_pods("slytherin")]}],
                "egress": [{"action": "Allow", "to": [house_pods("slytherin")]}],
            }
        }),
    );
    let probes = |allowed: bool| {
        vec![
            p("draco-malfoy-0", "harry-potter-0", "tcp", 80, allowed),
            p("draco-malfoy-1", "harry-potter-0", "tcp", 8080, allowed),
            p("harry-potter-0", "draco-malfoy-0", "tcp", 80, allowed),
            p("harry-potter-1", "draco-malfoy-0", "tcp", 8080, allowed),
        ]
    };
    let mut f = Vec::new();
    check(
        &w,
        "deny at priority 50 wins over pass at 60",
        &probes(false),
        &mut f,
    );
    anp_mut(&mut w, "old-priority-60-new-priority-40-example")
        .spec
        .priority = 40;
    check(
        &w,
        "pass at priority 40 hands over to the BANP allow",
        &probes(true),
        &mut f,
    );
    finish(f);
}

/// AdminNetworkPolicyIntegration (`admin-network-policy-standard-integration.go`).
#[test]
fn upstream_anp_np_banp_integration() {
    let mut w = houses();
    let house_label = |h: &str| json!({"namespaces": {"matchLabels": {"conformance-house": h}}});
    set_anp(
        &mut w,
        json!({
            "metadata": {"name": "pass-example"},
            "spec": {
                "priority": 10,
                "subject": house_label("gryffindor"),
                "ingress": [{"action": "Deny", "from": [house_label("slytherin")]}],
                "egress": [{"action": "Deny", "to": [house_label("slytherin")]}],
            }
        }),
    );
    let np: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-gress-from-to-slytherin-to-gryffindor",
                     "namespace": ns("gryffindor")},
        "spec": {
            "podSelector": null,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"conformance-house": "slytherin"}}}]}],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"conformance-house": "slytherin"}}}]}],
        }
    }))
    .expect("upstream NetworkPolicy parses");
    w.state.add_policy(np).expect("named");
    set_banp(
        &mut w,
        json!({
            "metadata": {"name": "default"},
            "spec": {
                "subject": house_label("gryffindor"),
                "ingress": [{"action": "Deny", "from": [house_label("slytherin")]}],
                "egress": [{"action": "Deny", "to": [house_label("slytherin")]}],
            }
        }),
    );
    let into_gryffindor = |allowed: bool| {
        vec![
            p("draco-malfoy-0", "harry-potter-0", "tcp", 80, allowed),
            p("draco-malfoy-1", "harry-potter-0", "tcp", 8080, allowed),
        ]
    };
    let out_of_gryffindor = |allowed: bool| {
        vec![
            p("harry-potter-0", "draco-malfoy-0", "tcp", 80, allowed),
            p("harry-potter-1", "draco-malfoy-0", "tcp", 8080, allowed),
        ]
    };
    let mut f = Vec::new();
    check(&w, "ANP deny ingress", &into_gryffindor(false), &mut f);
    check(&w, "ANP deny egress", &out_of_gryffindor(false), &mut f);
    anp_mut(&mut w, "pass-example").spec.ingress[0].action = RuleAction::Pass;
    check(
        &w,
        "ANP pass ingress, NetworkPolicy allows",
        &into_gryffindor(true),
        &mut f,
    );
    anp_mut(&mut w, "pass-example").spec.egress[0].action = RuleAction::Pass;
    check(
        &w,
        "ANP pass egress, NetworkPolicy allows",
        &out_of_gryffindor(true),
        &mut f,
    );
    w.state.policies.clear();
    check(
        &w,
        "ANP pass ingress, BANP denies",
        &into_gryffindor(false),
        &mut f,
    );
    check(
        &w,
        "ANP pass egress, BANP denies",
        &out_of_gryffindor(false),
        &mut f,
    );
    finish(f);
}

/// AdminNetworkPolicyEgressInlineCIDRPeers
/// (`admin-network-policy-standard-egress-inline-cidr-rules.go`).
#[test]
fn upstream_anp_egress_inline_cidr() {
    let mut w = houses();
    set_anp(
        &mut w,
        json!({
            "metadata": {"name": "inline-cidr-as-peers-example"},
            "spec": {
                "priority": 85,
                "subject": house_pods("gryffindor"),
                "egress": [
                    {"name": "allow-egress-to-slytherin", "action": "Allow", "to": [house_pods("slytherin")]},
                    {"name": "deny-egress-to-internet", "action": "Deny",
                     "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
                ],
            }
        }),
    );
    let to = |server: &str, allowed: bool| {
        vec![
            p("harry-potter-1", server, "tcp", 80, allowed),
            p("harry-potter-1", server, "udp", 53, allowed),
            p("harry-potter-1", server, "sctp", 9003, allowed),
        ]
    };
    let mut f = Vec::new();
    let mut probes = to("luna-lovegood-0", false);
    probes.extend(to("cedric-diggory-0", false));
    probes.extend(to("draco-malfoy-0", true));
    check(
        &w,
        "deny-egress to 0.0.0.0/0 after the slytherin allow",
        &probes,
        &mut f,
    );
    // Upstream inserts an Allow of the two pods' addresses (/32, or /128 on
    // IPv6 clusters) at index 0; dual-stack here, so both.
    let mut nets = Vec::new();
    for pod in ["luna-lovegood-0", "cedric-diggory-0"] {
        for ip in addrs_of(&w, pod) {
            nets.push(format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }));
        }
    }
    let rule = AdminNetworkPolicy::from_value(json!({
        "metadata": {"name": "x"},
        "spec": {"priority": 0, "subject": {"namespaces": {}}, "egress": [
            {"name": "allow-egress-to-specific-podIPs", "action": "Allow", "to": [{"networks": nets}]}
        ]}
    }))
    .expect("parses")
    .spec
    .egress
    .remove(0);
    anp_mut(&mut w, "inline-cidr-as-peers-example")
        .spec
        .egress
        .insert(0, rule);
    let mut probes = to("luna-lovegood-0", true);
    probes.extend(to("cedric-diggory-0", true));
    probes.extend(to("luna-lovegood-1", false));
    probes.extend(to("cedric-diggory-1", false));
    check(
        &w,
        "allow-egress to the two pods' addresses",
        &probes,
        &mut f,
    );
    finish(f);
}
