use super::*;
use crate::build::*;

fn key() -> PolicyKey {
    PolicyKey::new("x", "p")
}

fn ok(np: NetworkPolicy) -> CompiledPolicy {
    let (c, errs) = compile(&key(), &np).unwrap();
    assert!(errs.is_empty(), "unexpected errors: {errs:?}");
    c
}

#[test]
fn policy_types_default_to_ingress() {
    let c = ok(NetPol::new("x", "p").build());
    assert_eq!(
        c.ingress,
        Some(vec![]),
        "no rules: ingress isolated, nothing allowed"
    );
    assert_eq!(c.egress, None);
}

#[test]
fn policy_types_default_adds_egress_when_egress_rules_exist() {
    let c = ok(NetPol::new("x", "p").egress(any()).build());
    assert!(c.ingress.is_some());
    assert_eq!(c.egress.as_ref().map(Vec::len), Some(1));
}

#[test]
fn explicit_policy_types_win_over_rules() {
    let c = ok(NetPol::new("x", "p")
        .types(&["Egress"])
        .ingress(any())
        .build());
    assert!(
        c.ingress.is_none(),
        "ingress rules ignored without the Ingress type"
    );
    assert_eq!(c.egress, Some(vec![]));
}

#[test]
fn empty_peers_and_ports_mean_all() {
    let c = ok(NetPol::new("x", "p")
        .ingress(from(vec![]).ports(vec![]))
        .build());
    assert_eq!(
        c.ingress,
        Some(vec![Rule {
            peers: None,
            ports: None
        }])
    );
}

#[test]
fn lone_pod_selector_is_policy_namespace_and_empty_ns_selector_is_all() {
    let c = ok(NetPol::new("x", "p")
        .ingress(from(vec![
            pods(sel(&[("pod", "a")])),
            namespaces(sel(&[])),
            pods_in(sel(&[("pod", "b")]), sel(&[("ns", "y")])),
        ]))
        .build());
    let peers = c.ingress.unwrap()[0].peers.clone().unwrap();
    assert!(peers.contains(&Peer::Pods(PodPeer {
        ns: NsScope::Same("x".into()),
        pods: Selector::compile(&sel(&[("pod", "a")])).unwrap(),
    })));
    assert!(peers.contains(&Peer::Pods(PodPeer {
        ns: NsScope::Matching(Selector::everything()),
        pods: Selector::everything(),
    })));
    assert!(peers.contains(&Peer::Pods(PodPeer {
        ns: NsScope::Matching(Selector::compile(&sel(&[("ns", "y")])).unwrap()),
        pods: Selector::compile(&sel(&[("pod", "b")])).unwrap(),
    })));
}

#[test]
fn ip_block_except_is_subtracted() {
    let c = ok(NetPol::new("x", "p")
        .ingress(from(vec![block("198.19.0.0/24", &["198.19.0.128/25"])]))
        .build());
    let peers = c.ingress.unwrap()[0].peers.clone().unwrap();
    let Peer::Block(r) = &peers[0] else {
        panic!("not a block: {peers:?}")
    };
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].lo_ip().to_string(), "198.19.0.0");
    assert_eq!(r[0].hi_ip().to_string(), "198.19.0.127");
}

#[test]
fn ports_numbers_ranges_names_protocol_only() {
    let c = ok(NetPol::new("x", "p")
        .ingress(any().ports(vec![
            tcp(80),
            range("UDP", 1000, 2000),
            named("SCTP", "serve-80-sctp"),
            all_ports("UDP"),
        ]))
        .build());
    let ports = c.ingress.unwrap()[0].ports.clone().unwrap();
    assert!(ports.contains(&Port::Range {
        proto: Protocol::Tcp,
        lo: 80,
        hi: 80
    }));
    assert!(ports.contains(&Port::Range {
        proto: Protocol::Udp,
        lo: 1000,
        hi: 2000
    }));
    assert!(ports.contains(&Port::Named {
        proto: Protocol::Sctp,
        name: "serve-80-sctp".into()
    }));
    assert!(ports.contains(&Port::Range {
        proto: Protocol::Udp,
        lo: 0,
        hi: 65535
    }));
}

#[test]
fn protocol_defaults_to_tcp() {
    let mut p = tcp(80);
    p.protocol = None;
    let c = ok(NetPol::new("x", "p").ingress(any().ports(vec![p])).build());
    assert_eq!(
        c.ingress.unwrap()[0].ports.as_deref(),
        Some(
            &[Port::Range {
                proto: Protocol::Tcp,
                lo: 80,
                hi: 80
            }][..]
        )
    );
}

#[test]
fn bad_pod_selector_invalidates_the_policy() {
    let np = NetPol::new("x", "p")
        .select(sel_expr(&[], vec![req("a", "Equals", &["b"])]))
        .build();
    let err = compile(&key(), &np).unwrap_err();
    assert!(matches!(err, PolicyError::PodSelector { .. }));
    assert!(err.to_string().contains("x/p"), "{err}");
    assert!(err.to_string().contains("Equals"), "{err}");
}

#[test]
fn unknown_policy_type_invalidates_the_policy() {
    let np = NetPol::new("x", "p").types(&["Sideways"]).build();
    assert!(matches!(
        compile(&key(), &np),
        Err(PolicyError::PolicyType { .. })
    ));
}

#[test]
fn bad_rule_is_dropped_policy_still_isolates() {
    let np = NetPol::new("x", "p")
        .ingress(from(vec![
            pods(sel(&[("pod", "a")])),
            namespaces(sel_expr(&[], vec![req("ns", "Near", &["y"])])),
        ]))
        .ingress(from(vec![pods(sel(&[("pod", "b")]))]))
        .build();
    let (c, errs) = compile(&key(), &np).unwrap();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(matches!(&errs[0], PolicyError::Rule { rule: 0, .. }));
    assert_eq!(c.ingress.as_ref().map(Vec::len), Some(1), "rule 1 kept");
}

#[test]
fn invalid_ports_and_blocks_are_rule_errors() {
    let bad: Vec<NetworkPolicyPeer> = vec![
        block("198.19.0.0/33", &[]),
        block("198.19.0.0/24", &["198.18.0.0/24"]),
        block("not-a-cidr", &[]),
        NetworkPolicyPeer::default(),
        NetworkPolicyPeer {
            ip_block: block("198.19.0.0/24", &[]).ip_block,
            pod_selector: Some(sel(&[])),
            ..Default::default()
        },
    ];
    for p in bad {
        let np = NetPol::new("x", "p").ingress(from(vec![p.clone()])).build();
        let (c, errs) = compile(&key(), &np).unwrap();
        assert_eq!(errs.len(), 1, "{p:?}");
        assert_eq!(c.ingress, Some(vec![]));
    }
    let mut no_port_with_end = tcp(80);
    no_port_with_end.port = None;
    no_port_with_end.end_port = Some(90);
    let mut named_with_end = named("TCP", "http");
    named_with_end.end_port = Some(90);
    let bad_ports = vec![
        tcp(0),
        tcp(65536),
        range("TCP", 90, 80),
        no_port_with_end,
        named_with_end,
        named("TCP", ""),
        all_ports("ICMP"),
    ];
    for p in bad_ports {
        let np = NetPol::new("x", "p")
            .egress(any().ports(vec![p.clone()]))
            .build();
        let (c, errs) = compile(&key(), &np).unwrap();
        assert_eq!(errs.len(), 1, "{p:?}");
        assert_eq!(c.egress, Some(vec![]));
    }
}

#[test]
fn missing_spec_is_an_error() {
    let mut np = NetPol::new("x", "p").build();
    np.spec = None;
    assert!(matches!(
        compile(&key(), &np),
        Err(PolicyError::NoSpec { .. })
    ));
}
