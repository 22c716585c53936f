use super::*;
use crate::build::admin::*;
use crate::build::sel;

fn ok(anp: AdminNetworkPolicy) -> CompiledAdmin {
    let (c, errs) = compile_admin("p", &anp).unwrap();
    assert!(errs.is_empty(), "unexpected errors: {errs:?}");
    c
}

fn with_errors(anp: AdminNetworkPolicy) -> (CompiledAdmin, Vec<AdminPolicyError>) {
    compile_admin("p", &anp).unwrap()
}

fn consequences(errs: &[AdminPolicyError]) -> Vec<Consequence> {
    errs.iter()
        .filter_map(|e| match e {
            AdminPolicyError::Rule { consequence, .. } => Some(*consequence),
            AdminPolicyError::Ignored { .. } => None,
        })
        .collect()
}

#[test]
fn rules_keep_their_order_actions_and_peers() {
    let c = ok(anp("p", 7)
        .subject_pods(sel(&[("ns", "x")]), sel(&[("pod", "a")]))
        .ingress(pass(vec![a_namespaces(sel(&[("ns", "y")]))]))
        .ingress(deny(vec![a_pods(sel(&[]), sel(&[("pod", "b")]))]).ports(vec![a_port("UDP", 53)]))
        .egress(allow(vec![
            a_networks(&["198.19.0.0/24", "198.19.1.0/24"]),
            a_nodes(sel(&[])),
        ]))
        .build());
    assert_eq!(c.priority, Some(7));
    assert!(c.subject.selects(
        &crate::Labels::from([("pod".to_string(), "a".to_string())]),
        &[("ns".to_string(), "x".to_string())].into()
    ));
    let actions: Vec<Action> = c.ingress.iter().map(|r| r.action).collect();
    assert_eq!(actions, vec![Action::Pass, Action::Deny]);
    assert_eq!(
        c.ingress[1].rule.ports,
        Some(vec![Port::Range {
            proto: Protocol::Udp,
            lo: 53,
            hi: 53
        }])
    );
    let peers = c.egress[0].rule.peers.as_ref().unwrap();
    assert_eq!(peers.len(), 2);
    match &peers[0] {
        Peer::Block(r) => assert_eq!(r.len(), 1, "adjacent CIDRs merge: {r:?}"),
        other => panic!("expected a block first, got {other:?}"),
    }
    assert!(matches!(peers[1], Peer::Nodes(_)));
}

#[test]
fn named_port_covers_every_protocol_and_range_is_inclusive() {
    let c = ok(anp("p", 1)
        .ingress(
            allow(vec![a_namespaces(sel(&[]))])
                .ports(vec![a_named("web"), a_range("SCTP", 9000, 9005)]),
        )
        .build());
    let ports = c.ingress[0].rule.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 4);
    assert!(ports.contains(&Port::Range {
        proto: Protocol::Sctp,
        lo: 9000,
        hi: 9005
    }));
    for proto in Protocol::ALL {
        assert!(ports.contains(&Port::Named {
            proto,
            name: "web".into()
        }));
    }
}

#[test]
fn object_level_errors_ignore_the_policy() {
    for (what, bad) in [
        ("priority", anp("p", 1001).build()),
        ("priority", anp("p", -1).build()),
        ("subject", {
            let mut a = anp("p", 1).build();
            a.spec.subject.pods = Some(Default::default());
            a
        }),
        ("subject", {
            let mut a = anp("p", 1).build();
            a.spec.subject.namespaces = None;
            a
        }),
        (
            "subject",
            anp("p", 1)
                .subject_namespaces(crate::build::sel_expr(
                    &[],
                    vec![crate::build::req("a", "Is", &["b"])],
                ))
                .build(),
        ),
    ] {
        let e = compile_admin("p", &bad).unwrap_err();
        assert!(matches!(e, AdminPolicyError::Ignored { .. }), "{what}: {e}");
        assert!(e.to_string().contains(what), "{what}: {e}");
        assert!(e.to_string().contains("AdminNetworkPolicy p"), "{e}");
    }
    let e = compile_baseline("other", &banp().build()).unwrap_err();
    assert!(
        e.to_string().contains("only the one named \"default\""),
        "{e}"
    );
    assert!(compile_baseline("default", &banp().build()).is_ok());
}

#[test]
fn invalid_allow_rules_match_nothing() {
    let (c, errs) = with_errors(
        anp("p", 1)
            .ingress(allow(vec![a_networks(&["198.19.0.0/16"])]).named("bad"))
            .ingress(allow(vec![]))
            .egress(allow(vec![a_networks(&["198.19.0.0"])]))
            .egress(allow(vec![a_namespaces(sel(&[]))]).ports(vec![a_range("TCP", 90, 80)]))
            .egress(allow(vec![a_networks(&["198.19.0.0/16"])]).ports(vec![a_named("web")]))
            .egress(allow(vec![a_namespaces(sel(&[]))]).ports(vec![]))
            .build(),
    );
    assert!(c.ingress.is_empty() && c.egress.is_empty(), "{c:?}");
    assert_eq!(
        consequences(&errs),
        vec![Consequence::RuleMatchesNothing; 6]
    );
    let text = errs[0].to_string();
    assert!(
        text.contains("ingress rule 0 (\"bad\"): from[0]: networks is not an ingress peer"),
        "{text}"
    );
    assert!(errs[2].to_string().contains("CIDR notation"), "{}", errs[2]);
    assert!(errs[3].to_string().contains("below start"), "{}", errs[3]);
    assert!(errs[4].to_string().contains("namedPort"), "{}", errs[4]);
}

#[test]
fn invalid_deny_and_pass_rules_deny_everything() {
    let mut unknown_peer = a_namespaces(sel(&[]));
    unknown_peer.namespaces = None;
    unknown_peer
        .unknown
        .insert("services".into(), serde_json::json!({}));
    let mut two_fields = a_namespaces(sel(&[]));
    two_fields.nodes = Some(sel(&[]));
    let mut a = anp("p", 1)
        .egress(deny(vec![unknown_peer]))
        .egress(pass(vec![two_fields]))
        .egress(allow(vec![a_namespaces(sel(&[]))]))
        .build();
    a.spec.egress[2].action = crate::admin::RuleAction::Unknown("Log".into());
    let (c, errs) = with_errors(a);
    assert_eq!(consequences(&errs), vec![Consequence::RuleDeniesAll; 3]);
    assert!(errs[0].to_string().contains("services"), "{}", errs[0]);
    assert!(errs[2].to_string().contains("\"Log\""), "{}", errs[2]);
    for r in &c.egress {
        assert_eq!(r.action, Action::Deny);
        assert_eq!(
            r.rule,
            Rule {
                peers: None,
                ports: None
            }
        );
    }
    // Pass is not a baseline action: fail closed too.
    let (b, errs) = compile_baseline(
        "default",
        &banp().ingress(pass(vec![a_namespaces(sel(&[]))])).build(),
    )
    .unwrap();
    assert_eq!(consequences(&errs), vec![Consequence::RuleDeniesAll]);
    assert_eq!(b.ingress[0].action, Action::Deny);
}

#[test]
fn domain_names_match_nothing_in_allow_rules_and_fail_closed_elsewhere() {
    let dn = AdminPeer {
        domain_names: Some(vec!["example.org".into()]),
        ..AdminPeer::default()
    };
    let (c, errs) = with_errors(
        anp("p", 1)
            .egress(allow(vec![dn.clone(), a_namespaces(sel(&[("ns", "y")]))]))
            .egress(deny(vec![dn.clone()]))
            .build(),
    );
    assert_eq!(
        consequences(&errs),
        vec![Consequence::PeerMatchesNothing, Consequence::RuleDeniesAll]
    );
    assert_eq!(c.egress[0].action, Action::Allow);
    assert_eq!(c.egress[0].rule.peers.as_ref().map(Vec::len), Some(1));
    assert_eq!(c.egress[1].rule.peers, None);
}
