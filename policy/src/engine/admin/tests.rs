use crate::build::admin::*;
use crate::build::sel;
use crate::engine::tests::{check_kernel, engine_for, pure};
use crate::model::{NamespaceInfo, PodInfo, PodKey};
use crate::nft::DiffStats;
use crate::plan::PlanIssue;
use crate::sink::CapturingSink;
use crate::testkit::Xyz;

fn tier_chains(e: &crate::Engine) -> Vec<String> {
    e.ruleset()
        .chains
        .keys()
        .filter(|c| c.starts_with("a") || c.starts_with("b"))
        .cloned()
        .collect()
}

#[test]
fn node_label_change_is_only_node_set_elements() {
    let mut xyz = Xyz::new(2, true);
    xyz.state
        .add_admin_policy(
            anp("no-zone-b", 5)
                .egress(deny(vec![a_nodes(sel(&[("zone", "b")]))]))
                .build(),
        )
        .unwrap();
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    assert!(e.commit(&mut sink).unwrap().full);
    assert_eq!(tier_chains(&e).len(), 1, "{:?}", tier_chains(&e));
    let h4 = e
        .ruleset()
        .sets
        .iter()
        .find(|(n, _)| n.starts_with("h4_"))
        .map(|(_, s)| s.elems.len());
    assert_eq!(h4, Some(1), "node1 (zone b) has one IPv4 address");
    let mut node1 = e.state().nodes["node1"].clone();
    node1.labels.insert("zone".into(), "a".into());
    e.upsert_node(node1);
    let st = e.commit(&mut sink).unwrap();
    assert_eq!(
        st.diff,
        DiffStats {
            elems_deleted: 2,
            ..DiffStats::default()
        }
    );
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
}

#[test]
fn priority_change_swaps_chains_and_removal_collects_them() {
    let mut xyz = Xyz::new(1, true);
    xyz.state
        .add_admin_policy(
            anp("deny-y", 20)
                .ingress(deny(vec![a_namespaces(sel(&[("ns", "y")]))]))
                .build(),
        )
        .unwrap();
    xyz.state
        .add_admin_policy(
            anp("pass-y", 30)
                .ingress(pass(vec![a_namespaces(sel(&[("ns", "y")]))]))
                .build(),
        )
        .unwrap();
    xyz.state
        .add_baseline_policy(banp().ingress(deny(vec![a_namespaces(sel(&[]))])).build())
        .unwrap();
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    let before = tier_chains(&e);
    // ai_ (deny first) going to bi_ (baseline deny all).
    assert_eq!(before.len(), 2, "{before:?}");
    let mut p = e.state().admin_policies["pass-y"].clone();
    p.spec.priority = 10;
    e.upsert_admin_policy("pass-y".into(), p);
    let st = e.commit(&mut sink).unwrap();
    // A new ai_ chain (pass first) replaces the old one for all 9 pods;
    // the baseline chain stays.
    assert_eq!(st.diff.chains_added, 1, "{st:?}");
    assert_eq!(st.diff.chains_deleted, 1, "{st:?}");
    assert_eq!(st.diff.map_added, 9, "{st:?}");
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
    e.remove_admin_policy("pass-y");
    e.remove_admin_policy("deny-y");
    e.remove_baseline_policy("default");
    e.commit(&mut sink).unwrap();
    assert!(tier_chains(&e).is_empty(), "{:?}", tier_chains(&e));
    assert!(e.ruleset().dispatch.values().all(|d| d.ingress.is_none()));
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
}

#[test]
fn invalid_objects_are_reported_and_skipped() {
    let xyz = Xyz::new(1, true);
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    let clean = e.ruleset().clone();
    e.upsert_admin_policy(
        "too-low".into(),
        anp("too-low", 5000)
            .ingress(deny(vec![a_namespaces(sel(&[]))]))
            .build(),
    );
    e.upsert_baseline_policy("other".into(), banp().build());
    let st = e.commit(&mut sink).unwrap();
    assert!(st.noop, "{st:?}");
    assert_eq!(e.ruleset(), &clean);
    let issues: Vec<String> = e.issues().map(ToString::to_string).collect();
    assert_eq!(issues.len(), 2, "{issues:?}");
    assert!(
        issues
            .iter()
            .any(|i| i.contains("too-low") && i.contains("priority"))
    );
    assert!(
        issues
            .iter()
            .any(|i| i.contains("BaselineAdminNetworkPolicy other"))
    );
    assert!(e.issues().all(|i| matches!(i, PlanIssue::Admin(_))));
    e.remove_admin_policy("too-low");
    e.remove_baseline_policy("other");
    assert_eq!(e.issues().count(), 0);
}

#[test]
fn namespace_label_change_replans_admin_subjects() {
    let mut xyz = Xyz::new(1, true);
    xyz.state
        .add_admin_policy(
            anp("team", 1)
                .subject_namespaces(sel(&[("team", "red")]))
                .egress(deny(vec![a_networks(&["198.18.99.0/24"])]))
                .build(),
        )
        .unwrap();
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    assert!(e.ruleset().dispatch.values().all(|d| d.egress.is_none()));
    e.upsert_namespace(
        NamespaceInfo::new("y")
            .label("ns", "y")
            .label("team", "red"),
    );
    let st = e.commit(&mut sink).unwrap();
    // The three pods of y now go through the ANP chain.
    assert_eq!(st.diff.map_added, 3, "{st:?}");
    assert_eq!(st.diff.chains_added, 1, "{st:?}");
    let ya = crate::testkit::host_ifname("y", "a");
    assert!(e.ruleset().dispatch[&ya].egress.is_some());
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
    // A pod label change elsewhere is still element-only (no pod peers
    // here: nothing at all).
    let mut zc = PodInfo::clone(&e.state().pods[&PodKey::new("z", "c")]);
    zc.labels = zc.labels.with("pod", "q");
    e.upsert_pod(zc);
    assert!(e.commit(&mut sink).unwrap().noop);
}

#[test]
fn remote_pod_label_change_under_anp_pod_peers_is_only_set_elements() {
    let mut xyz = Xyz::new(2, true);
    xyz.state
        .add_admin_policy(
            anp("deny-b", 1)
                .ingress(deny(vec![a_pods(sel(&[]), sel(&[("pod", "b")]))]))
                .build(),
        )
        .unwrap();
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    // y/c lives on node1: only the selector sets' elements change here.
    let mut yc = PodInfo::clone(&e.state().pods[&PodKey::new("y", "c")]);
    yc.labels = yc.labels.with("pod", "b");
    e.upsert_pod(yc);
    let st = e.commit(&mut sink).unwrap();
    assert_eq!(
        st.diff,
        DiffStats {
            elems_added: 2,
            ..DiffStats::default()
        }
    );
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
}
