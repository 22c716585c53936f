use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::*;
use crate::testkit::kernel::Kernel;

fn sel(k: &str, v: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
        ..LabelSelector::default()
    }
}

fn hep(name: &str, node: &str, iface: Option<&str>, ips: &[&str], role: &str) -> HostEndpoint {
    HostEndpoint {
        name: name.into(),
        labels: BTreeMap::from([("role".to_string(), role.to_string())]),
        spec: HostEndpointSpec {
            node: node.into(),
            interface_name: iface.map(str::to_string),
            expected_ips: ips.iter().map(|s| s.to_string()).collect(),
        },
    }
}

fn config() -> HostConfig {
    HostConfig {
        node: "n1".into(),
        iface_prefix: "cali".into(),
        failsafe: Failsafe::defaults(&[9647]),
        deny_log: None,
    }
}

fn state(policies: Vec<(&str, HostNetworkPolicySpec)>) -> HostState {
    let mut s = HostState::default();
    for e in [
        hep("n1-eth0", "n1", Some("eth0"), &["198.18.0.1"], "worker"),
        hep("n1-all", "n1", Some("*"), &[], "worker"),
        hep(
            "n2-eth0",
            "n2",
            Some("eth0"),
            &["198.18.0.2", "2001:db8::2"],
            "peer",
        ),
    ] {
        s.endpoints.insert(e.name.clone(), e);
    }
    for (n, spec) in policies {
        s.policies.insert(
            n.into(),
            HostPolicy {
                name: n.into(),
                spec,
            },
        );
    }
    s
}

#[test]
fn failsafe_defaults_and_parsing() {
    let f = Failsafe::defaults(&[9647, 0]);
    for want in [
        "tcp:22",
        "tcp:179",
        "tcp:6443",
        "tcp:10250",
        "udp:3784",
        "udp:4784",
        "tcp:9647",
    ] {
        assert!(f.inbound.contains(&want.parse().unwrap()), "{want}");
    }
    for want in ["tcp:6443", "tcp:179", "udp:53", "tcp:53"] {
        assert!(f.outbound.contains(&want.parse().unwrap()), "{want}");
    }
    assert!(!f.inbound.iter().any(|p| p.port == 0));
    let p = Failsafe::parse("tcp:22, udp:68", "").unwrap();
    assert_eq!(p.inbound.len(), 2);
    assert!(p.outbound.is_empty());
    for bad in ["tcp", "tcp:0", "icmp:1", "tcp:70000", "22"] {
        assert!(bad.parse::<FailsafePort>().is_err(), "{bad}");
    }
}

#[test]
fn no_policy_leaves_endpoints_open_and_other_nodes_out() {
    let p = plan(&state(vec![]), &config());
    assert!(p.issues.is_empty(), "{:?}", p.issues);
    assert_eq!(p.ifaces.len(), 2, "n2's endpoint is not this node's");
    assert!(p.ifaces.values().all(|d| *d == HostDirs::default()));
    let rs = HostRuleset::build(&p);
    assert!(rs.chains.is_empty());
}

#[test]
fn deny_all_ingress_and_allow_rules_from_endpoint_peers() {
    let deny_all = HostNetworkPolicySpec {
        host_endpoint_selector: sel("role", "worker"),
        policy_types: vec!["Ingress".into()],
        ..Default::default()
    };
    let from_peers = HostNetworkPolicySpec {
        host_endpoint_selector: sel("role", "worker"),
        ingress: vec![HostRule {
            from: vec![HostPeer {
                host_endpoint_selector: Some(sel("role", "peer")),
                ..Default::default()
            }],
            ports: vec![HostPort {
                protocol: Some("TCP".into()),
                port: Some(8000),
                end_port: Some(8010),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let p = plan(
        &state(vec![("a-deny", deny_all), ("b-peers", from_peers)]),
        &config(),
    );
    assert!(p.issues.is_empty(), "{:?}", p.issues);
    let eth0 = &p.ifaces[&HostIface::Named("eth0".into())];
    let lines = eth0.ingress.as_ref().expect("isolated");
    assert_eq!(
        lines.len(),
        1,
        "deny-all adds no line; the other policy one"
    );
    let peers = lines[0].peers.as_ref().unwrap();
    assert_eq!(peers.len(), 2, "n2's two expected IPs: {peers:?}");
    assert_eq!(eth0.egress, None, "Ingress-only policies leave egress open");
    let rs = HostRuleset::build(&p);
    let chain = &rs.chains["hin_if_eth0"];
    // v4 line, v6 line, final drop.
    assert_eq!(chain.len(), 3);
    assert_eq!(
        chain[0].1.as_deref(),
        Some("host b-peers ingress 0 allow"),
        "{chain:?}"
    );
    assert_eq!(chain[2].1.as_deref(), Some("fixed default ingress - deny"));
    assert!(rs.chains.contains_key("hin_any"));
    assert_eq!(rs.maps["hep_in"]["eth0"], "hin_if_eth0");
}

#[test]
fn bad_input_is_reported_and_fails_closed() {
    let bad_rule = HostNetworkPolicySpec {
        host_endpoint_selector: sel("role", "worker"),
        ingress: vec![
            HostRule {
                to: vec![HostPeer::default()],
                ..Default::default()
            },
            HostRule {
                from: vec![HostPeer {
                    ip_block: Some(HostIpBlock {
                        cidr: "198.18.0.0/33".into(),
                        except: vec![],
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let bad_type = HostNetworkPolicySpec {
        host_endpoint_selector: sel("role", "worker"),
        policy_types: vec!["Sideways".into()],
        ..Default::default()
    };
    let mut s = state(vec![("bad-rule", bad_rule), ("bad-type", bad_type)]);
    let e = hep("z-dup", "n1", Some("eth0"), &["nope"], "x");
    s.endpoints.insert(e.name.clone(), e);
    let p = plan(&s, &config());
    assert_eq!(p.issues.len(), 5, "{:#?}", p.issues);
    // Both rules dropped: the endpoint is isolated with nothing allowed.
    let eth0 = &p.ifaces[&HostIface::Named("eth0".into())];
    assert_eq!(eth0.ingress.as_deref(), Some(&[][..]));
}

#[test]
fn batches_replay_on_the_kernel_model_and_remove_cleanly() {
    let spec = HostNetworkPolicySpec {
        host_endpoint_selector: sel("role", "worker"),
        policy_types: vec!["Ingress".into(), "Egress".into()],
        egress: vec![HostRule {
            to: vec![HostPeer {
                ip_block: Some(HostIpBlock {
                    cidr: "198.18.0.0/16".into(),
                    except: vec!["198.18.5.0/24".into()],
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut cfg = config();
    cfg.deny_log = Some(crate::flowlog::DenyLog::default());
    let rs = HostRuleset::build(&plan(&state(vec![("p", spec)]), &cfg));
    let mut k = Kernel::default();
    let batch = serde_json::to_value(rs.apply_batch()).unwrap();
    k.apply(&batch).expect("first apply");
    k.apply(&batch).expect("re-apply replaces");
    let t = &k.tables[&("inet".to_string(), HOST_TABLE.to_string())];
    assert!(t.chains.contains_key("hout_if_eth0"));
    let drops = &t.chains["hout_if_eth0"].rules;
    assert!(drops.iter().any(|r| r.contains("\"log\"")), "{drops:?}");
    k.apply(&serde_json::to_value(render::remove_batch()).unwrap())
        .expect("remove");
    assert!(k.tables.is_empty());
    k.apply(&serde_json::to_value(render::remove_batch()).unwrap())
        .expect("remove when absent");
}

#[test]
fn apply_on_forward_polices_forwarded_traffic_with_its_own_policies_only() {
    let host_only = HostNetworkPolicySpec {
        host_endpoint_selector: sel("role", "worker"),
        ingress: vec![HostRule::default()],
        ..Default::default()
    };
    let p = plan(&state(vec![("host", host_only.clone())]), &config());
    assert!(p.forward.is_empty());
    let rs = HostRuleset::build(&p);
    assert!(
        rs.base.iter().all(|(n, _)| *n != "forward"),
        "no forward hook without applyOnForward"
    );
    let fwd = HostNetworkPolicySpec {
        host_endpoint_selector: sel("role", "worker"),
        policy_types: vec!["Ingress".into()],
        ingress: vec![HostRule {
            from: vec![HostPeer {
                ip_block: Some(HostIpBlock {
                    cidr: "198.18.0.0/16".into(),
                    except: vec!["198.18.5.0/24".into()],
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        apply_on_forward: true,
        ..Default::default()
    };
    let p = plan(&state(vec![("fwd", fwd), ("host", host_only)]), &config());
    let eth0 = &p.forward[&HostIface::Named("eth0".into())];
    let lines = eth0.ingress.as_ref().expect("isolated for forwarding");
    assert!(lines.iter().all(|l| l.policy == "fwd"), "{lines:?}");
    assert_eq!(eth0.egress, None);
    // Host traffic still sees both policies.
    let host = p.ifaces[&HostIface::Named("eth0".into())]
        .ingress
        .as_ref()
        .expect("host");
    assert_eq!(host.len(), 2);
    let rs = HostRuleset::build(&p);
    let (_, base) = rs
        .base
        .iter()
        .find(|(n, _)| *n == "forward")
        .expect("forward hook");
    assert_eq!(base.len(), 3, "ct, jump fwd_in, jump fwd_out: {base:?}");
    let check = serde_json::to_string(&rs.chains["fwd_in"]).expect("json");
    assert!(
        check.contains("cali*") && check.contains("\"lo\""),
        "{check}"
    );
    assert_eq!(rs.maps["hep_fwd_in"]["eth0"], "fin_if_eth0");
    let chain = &rs.chains["fin_if_eth0"];
    assert_eq!(chain.len(), 2, "allow line, final drop: {chain:?}");
    assert_eq!(
        chain[0].0.last(),
        Some(&serde_json::json!({"return": null}))
    );
    let batch = rs.apply_batch().to_json().expect("json");
    assert!(
        batch.contains(r#"{"goto":{"target":"fin_if_eth0"}}"#),
        "{batch}"
    );
}
