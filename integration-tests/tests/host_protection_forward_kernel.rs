//! Host protection of forwarded traffic (`applyOnForward`) on real
//! packets: the lab's ToR namespace plays the protected node; it routes
//! between n1 (198.18.0.0/24, on its interface br0) and n2 (198.18.1.0/24,
//! on br1). The host table is rendered by `policy::host` and applied with
//! the real `nft` in the ToR's namespace. IPv4 and IPv6 alike.
//!
//! * A host policy on br0 that allows ingress from everything but n1's
//!   subnet: without `applyOnForward` n1 -> n2 (forwarded) passes and only
//!   n1 -> the node itself is refused; with it n1 -> n2 is dropped too,
//!   while n2 -> n1 (entering on br1, not isolated) still passes.
//! * A deny-all with `applyOnForward` on every interface drops forwarding
//!   both ways, and the failsafe ports of the node itself still answer.
//! * Removing the table opens everything again.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use integration_tests::lab::{self, Lab, Netns, Proto};
use node_agent::dataplane::NftCli;
use node_agent::dataplane::policy::NftSink;
use node_agent::dataplane::policy::host::{self, *};

const T: Proto = Proto::Tcp;

fn apply(cli: &mut NftCli, state: &HostState, cfg: &HostConfig) {
    let p = host::plan(state, cfg);
    assert!(p.issues.is_empty(), "{:?}", p.issues);
    cli.apply(&HostRuleset::build(&p).apply_batch())
        .expect("apply host table");
}

/// Probes `(from, to, port, answers?)`; returns what differs.
fn check(step: &str, cases: &[(&Netns, IpAddr, u16, bool)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (from, to, port, want) in cases {
        let o = lab::probe(
            from,
            SocketAddr::new(*to, *port),
            T,
            Duration::from_millis(700),
        );
        if o.reached() != *want {
            failures.push(format!(
                "[{step}] {} -> {to} tcp/{port}: expected {}, got {o:?}",
                from.name(),
                if *want { "answer" } else { "no answer" }
            ));
        }
    }
    failures
}

fn policy(name: &str, spec: HostNetworkPolicySpec) -> HostPolicy {
    HostPolicy {
        name: name.into(),
        spec,
    }
}

fn endpoint(node: &str, iface: &str, role: &str) -> HostEndpoint {
    HostEndpoint {
        name: format!("{node}-{iface}"),
        labels: [("role".to_string(), role.to_string())].into(),
        spec: HostEndpointSpec {
            node: node.into(),
            interface_name: Some(iface.into()),
            expected_ips: vec![],
        },
    }
}

fn selector(role: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some([("role".to_string(), role.to_string())].into()),
        ..Default::default()
    }
}

#[test]
fn apply_on_forward_polices_forwarded_traffic_and_keeps_failsafes() {
    if let Err(why) = lab::can_run() {
        lab::skip(&why);
        return;
    }
    let mut lab = Lab::builder()
        .nodes(2)
        .subnets(&[0, 1])
        .build()
        .expect("lab");
    let n1 = Netns::existing(lab.nodes()[0].ns.name());
    let n2 = Netns::existing(lab.nodes()[1].ns.name());
    let (a4, a6) = (lab.nodes()[0].ipv4, lab.nodes()[0].ipv6);
    let (b4, b6) = (lab.nodes()[1].ipv4, lab.nodes()[1].ipv6);
    let (tor4, tor6) = lab::tor_addrs(0);
    for (ns, name) in [(&n1, "n1"), (&n2, "n2")] {
        let d = lab.serve(ns, name, &[8080], &[]).expect("listeners");
        lab.keep(d);
    }
    let d = lab
        .serve(lab.tor(), "tor", &[22, 8080], &[])
        .expect("tor listeners");
    lab.keep(d);
    let tor = Netns::existing(lab.tor().name());
    for ip in [IpAddr::V4(b4), IpAddr::V6(b6)] {
        let o = lab::wait_reachable(&n1, SocketAddr::new(ip, 8080), T, Duration::from_secs(10));
        assert!(o.reached(), "n2 {ip} reachable through the ToR: {o:?}");
    }
    let mut cli = NftCli::with_program("ip", ["netns", "exec", tor.name(), "nft"]);
    let cfg = HostConfig {
        node: "tor".into(),
        iface_prefix: "cali".into(),
        failsafe: Failsafe::defaults(&[]),
        deny_log: None,
    };
    let mut state = HostState::default();
    for e in [
        endpoint("tor", "br0", "edge"),
        endpoint("tor", "br1", "core"),
    ] {
        state.endpoints.insert(e.name.clone(), e);
    }
    // Everything but n1's subnet may come in on br0.
    let block = |cidr: &str, except: &str| HostPeer {
        ip_block: Some(HostIpBlock {
            cidr: cidr.into(),
            except: vec![except.into()],
        }),
        ..Default::default()
    };
    let not_n1 = |apply_on_forward| HostNetworkPolicySpec {
        host_endpoint_selector: selector("edge"),
        ingress: vec![HostRule {
            from: vec![
                block("0.0.0.0/0", "198.18.0.0/24"),
                block("::/0", "2001:db8:ffff::/64"),
            ],
            ..Default::default()
        }],
        apply_on_forward,
        ..Default::default()
    };
    let mut failures = Vec::new();
    let fwd = |want_ab: bool, want_ba: bool| {
        vec![
            (&n1, IpAddr::V4(b4), 8080, want_ab),
            (&n1, IpAddr::V6(b6), 8080, want_ab),
            (&n2, IpAddr::V4(a4), 8080, want_ba),
            (&n2, IpAddr::V6(a6), 8080, want_ba),
        ]
    };
    let to_node = |want_web: bool| {
        vec![
            (&n1, IpAddr::V4(tor4), 22, true),
            (&n1, IpAddr::V6(tor6), 22, true),
            (&n1, IpAddr::V4(tor4), 8080, want_web),
            (&n1, IpAddr::V6(tor6), 8080, want_web),
        ]
    };

    // 1. Host traffic only (the default).
    state
        .policies
        .insert("not-n1".into(), policy("not-n1", not_n1(false)));
    apply(&mut cli, &state, &cfg);
    failures.extend(check("host only: forwarding", &fwd(true, true)));
    failures.extend(check("host only: to the node", &to_node(false)));

    // 2. applyOnForward: n1's forwarded traffic in on br0 is dropped too.
    state
        .policies
        .insert("not-n1".into(), policy("not-n1", not_n1(true)));
    apply(&mut cli, &state, &cfg);
    failures.extend(check("applyOnForward: forwarding", &fwd(false, true)));
    failures.extend(check("applyOnForward: to the node", &to_node(false)));

    // 3. Deny-all, both directions, every interface, forwarded traffic
    // included: nothing is forwarded; the failsafe port still answers.
    state.policies.clear();
    state
        .endpoints
        .insert("tor-all".into(), endpoint("tor", "*", "edge"));
    state.policies.insert(
        "deny-all".into(),
        policy(
            "deny-all",
            HostNetworkPolicySpec {
                host_endpoint_selector: selector("edge"),
                policy_types: vec!["Ingress".into(), "Egress".into()],
                apply_on_forward: true,
                ..Default::default()
            },
        ),
    );
    apply(&mut cli, &state, &cfg);
    failures.extend(check("deny-all: forwarding", &fwd(false, false)));
    failures.extend(check("deny-all: to the node", &to_node(false)));

    // 4. No table: open again.
    cli.apply(&host::render::remove_batch()).expect("remove");
    failures.extend(check("removed", &fwd(true, true)));
    failures.extend(check("removed: to the node", &to_node(true)));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
