//! Host protection on real packets: a lab node with listeners on the
//! failsafe ports and on ordinary ports, the host table rendered by
//! `policy::host` and applied with the real `nft` in the node's namespace.
//!
//! * A deny-all host policy (both directions, every interface) leaves every
//!   failsafe port answering (TCP 22/179/6443/10250/9647, UDP 3784/4784 in;
//!   TCP 6443 and UDP 53 out), over IPv4 and IPv6, and refuses the rest.
//! * A dropped probe moves exactly one counter: the chain's default deny.
//! * An allow rule opens its port for its peer only; its counter moves.
//! * Removing the table leaves nothing behind and everything open again.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use integration_tests::lab::{self, Lab, Netns, Proto};
use node_agent::dataplane::NftCli;
use node_agent::dataplane::policy::Direction;
use node_agent::dataplane::policy::NftSink;
use node_agent::dataplane::policy::counters::{self, RuleCounter};
use node_agent::dataplane::policy::host::{self, *};
use node_agent::dataplane::policy::origin::{RuleAction, RuleOrigin, fixed};

const T: Proto = Proto::Tcp;
const U: Proto = Proto::Udp;

fn listing(ns: &Netns) -> Vec<RuleCounter> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "nft",
            "-j",
            "list",
            "table",
            "inet",
        ])
        .arg(HOST_TABLE)
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft json");
    counters::parse_listing(&v).expect("parse listing")
}

fn apply(cli: &mut NftCli, state: &HostState, cfg: &HostConfig) {
    let p = host::plan(state, cfg);
    assert!(p.issues.is_empty(), "{:?}", p.issues);
    cli.apply(&HostRuleset::build(&p).apply_batch())
        .expect("apply host table");
}

fn check(
    failures: &mut Vec<String>,
    step: &str,
    from: &Netns,
    to: IpAddr,
    cases: &[(Proto, u16, bool)],
) {
    for (proto, port, want) in cases {
        let o = lab::probe(
            from,
            SocketAddr::new(to, *port),
            *proto,
            Duration::from_millis(700),
        );
        if o.reached() != *want {
            failures.push(format!(
                "[{step}] {} -> {to} {proto}/{port}: expected {}, got {o:?}",
                from.name(),
                if *want { "answer" } else { "no answer" }
            ));
        }
    }
}

#[test]
fn deny_all_on_the_host_leaves_the_failsafe_ports_working() {
    if let Err(why) = lab::can_run() {
        lab::skip(&why);
        return;
    }
    let mut lab = Lab::builder().nodes(1).build().expect("lab");
    let n = &lab.nodes()[0];
    let (node_name, node4, node6) = (n.name.clone(), n.ipv4, n.ipv6);
    let node_ns = Netns::existing(n.ns.name());
    let (tor4, tor6) = lab::tor_addrs(0);
    let d = lab
        .serve(
            &node_ns,
            "node",
            &[22, 179, 6443, 10250, 9647, 8080],
            &[3784, 4784, 9999],
        )
        .expect("node listeners");
    lab.keep(d);
    let d = lab
        .serve(lab.tor(), "tor", &[6443, 8080], &[53, 9999])
        .expect("tor listeners");
    lab.keep(d);
    let node_ips = [IpAddr::V4(node4), IpAddr::V6(node6)];
    let tor_ips = [IpAddr::V4(tor4), IpAddr::V6(tor6)];
    for ip in node_ips {
        let o = lab::wait_reachable(
            lab.tor(),
            SocketAddr::new(ip, 8080),
            T,
            Duration::from_secs(10),
        );
        assert!(o.reached(), "node {ip} reachable before any policy: {o:?}");
    }
    let mut cli = NftCli::with_program("ip", ["netns", "exec", node_ns.name(), "nft"]);
    let cfg = HostConfig {
        node: node_name.clone(),
        iface_prefix: "cali".into(),
        failsafe: Failsafe::defaults(&[9647]),
        deny_log: None,
    };
    let mut state = HostState::default();
    state.endpoints.insert(
        "n1-any".into(),
        HostEndpoint {
            name: "n1-any".into(),
            labels: [("role".to_string(), "worker".to_string())].into(),
            spec: HostEndpointSpec {
                node: node_name.clone(),
                interface_name: Some("*".into()),
                expected_ips: vec![node4.to_string()],
            },
        },
    );
    let worker = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some([("role".to_string(), "worker".to_string())].into()),
        ..Default::default()
    };
    state.policies.insert(
        "deny-all".into(),
        HostPolicy {
            name: "deny-all".into(),
            spec: HostNetworkPolicySpec {
                host_endpoint_selector: worker.clone(),
                policy_types: vec!["Ingress".into(), "Egress".into()],
                ..Default::default()
            },
        },
    );
    apply(&mut cli, &state, &cfg);
    let mut failures = Vec::new();
    let inbound = [
        (T, 22, true),
        (T, 179, true),
        (T, 6443, true),
        (T, 10250, true),
        (T, 9647, true),
        (U, 3784, true),
        (U, 4784, true),
        (T, 8080, false),
        (U, 9999, false),
    ];
    let outbound = [
        (T, 6443, true),
        (U, 53, true),
        (T, 8080, false),
        (U, 9999, false),
    ];
    for ip in node_ips {
        check(&mut failures, "deny-all in", lab.tor(), ip, &inbound);
    }
    for ip in tor_ips {
        check(&mut failures, "deny-all out", &node_ns, ip, &outbound);
    }
    // One dropped connection attempt moves only the default deny of ingress.
    let before = listing(&node_ns);
    let o = lab::probe(
        lab.tor(),
        SocketAddr::new(node_ips[0], 8080),
        T,
        Duration::from_millis(500),
    );
    assert!(!o.reached(), "8080 under deny-all: {o:?}");
    let moved = counters::delta(&before, &listing(&node_ns));
    let deny_in = RuleOrigin::fixed(fixed::DEFAULT, Direction::Ingress, RuleAction::Deny);
    let who: Vec<String> = moved
        .iter()
        .map(|(c, n)| format!("{} {}: +{n}", c.chain, c.origin))
        .collect();
    if moved.len() != 1 || moved[0].0.origin != deny_in || moved[0].0.chain != "hin_any" {
        failures.push(format!(
            "a dropped probe moved {who:?}, expected only hin_any's default deny"
        ));
    }
    let failsafe = RuleOrigin::fixed(fixed::FAILSAFE, Direction::Ingress, RuleAction::Allow);
    let t = counters::totals(&listing(&node_ns));
    if t.get(&failsafe).is_none_or(|x| x.packets == 0) {
        failures.push(format!("failsafe ingress counter did not move: {t:?}"));
    }

    // Allow TCP 8080 from the ToR's IPv4 address only.
    state.policies.insert(
        "web-from-tor".into(),
        HostPolicy {
            name: "web-from-tor".into(),
            spec: HostNetworkPolicySpec {
                host_endpoint_selector: worker,
                ingress: vec![HostRule {
                    from: vec![HostPeer {
                        ip_block: Some(HostIpBlock {
                            cidr: format!("{tor4}/32"),
                            except: vec![],
                        }),
                        ..Default::default()
                    }],
                    ports: vec![HostPort {
                        protocol: Some("TCP".into()),
                        port: Some(8080),
                        end_port: None,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        },
    );
    apply(&mut cli, &state, &cfg);
    check(
        &mut failures,
        "allow 8080 v4",
        lab.tor(),
        node_ips[0],
        &[(T, 8080, true), (U, 9999, false)],
    );
    check(
        &mut failures,
        "allow 8080 v4",
        lab.tor(),
        node_ips[1],
        &[(T, 8080, false), (T, 22, true)],
    );
    let allow = RuleOrigin::new(
        node_agent::dataplane::policy::origin::Tier::Host,
        "web-from-tor",
        Direction::Ingress,
        Some(0),
        RuleAction::Allow,
    );
    let t = counters::totals(&listing(&node_ns));
    if t.get(&allow).is_none_or(|x| x.packets == 0) {
        failures.push(format!("the allow rule's counter did not move: {t:?}"));
    }

    // Remove: no table left, everything answers again.
    cli.apply(&host::render::remove_batch()).expect("remove");
    let tables = node_ns
        .exec(&["nft", "list", "tables"])
        .expect("nft list tables");
    if tables.contains(HOST_TABLE) {
        failures.push(format!("host table left behind: {tables}"));
    }
    for ip in node_ips {
        check(
            &mut failures,
            "removed",
            lab.tor(),
            ip,
            &[(T, 8080, true), (U, 9999, true)],
        );
    }
    for ip in tor_ips {
        check(
            &mut failures,
            "removed out",
            &node_ns,
            ip,
            &[(T, 8080, true)],
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
