use super::*;
use crate::build::*;
use crate::sink::CapturingSink;
use crate::testkit::Xyz;
use crate::testkit::kernel::Kernel;
use k8s_openapi::api::networking::v1::NetworkPolicyPort;

pub(super) fn engine_for(xyz: &Xyz, node: usize) -> Engine {
    let mut e = Engine::new(xyz.nodes[node].clone());
    e.load(xyz.state.clone());
    e
}

pub(super) fn pure(e: &Engine) -> Ruleset {
    let plan = crate::plan::build(e.state(), e.node());
    Ruleset::build(&plan, e.state())
}

/// Applies every captured batch to a kernel model and compares it with a
/// full rebuild of the pure pipeline's ruleset.
pub(super) fn check_kernel(e: &Engine, sink: &CapturingSink) {
    let mut k = Kernel::default();
    for (i, b) in sink.batches.iter().enumerate() {
        k.apply(b)
            .unwrap_or_else(|err| panic!("batch {i} rejected: {err}\n{b}"));
    }
    let mut want = Kernel::default();
    let full = serde_json::to_value(crate::nft::full(&pure(e))).unwrap();
    want.apply(&full).unwrap();
    assert_eq!(k, want);
}

/// One node, every pod on it, one default-deny policy; nothing committed.
fn one_node_deny() -> (Engine, CapturingSink) {
    let mut xyz = Xyz::new(1, true);
    xyz.state
        .add_policy(NetPol::new("x", "deny").build())
        .unwrap();
    (engine_for(&xyz, 0), CapturingSink::default())
}

#[test]
fn first_commit_is_full_then_noop() {
    let (mut e, mut sink) = one_node_deny();
    assert!(e.commit_is_heavy(), "a full render is heavy");
    assert!(e.commit(&mut sink).unwrap().full);
    assert_eq!(e.ruleset(), &pure(&e));
    assert!(!e.commit_is_heavy(), "nothing pending");
    let st = e.commit(&mut sink).unwrap();
    assert!(st.noop);
    assert_eq!(sink.batches.len(), 1);
    check_kernel(&e, &sink);
}

#[test]
fn remote_pod_label_change_is_only_set_elements() {
    let mut xyz = Xyz::new(2, true);
    xyz.state
        .add_policy(
            NetPol::new("x", "from-b")
                .ingress(from(vec![pods_in(sel(&[("pod", "b")]), sel(&[]))]))
                .build(),
        )
        .unwrap();
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    // z/c lives on node0 (round-robin index 8): take y/c (index 5, node1).
    let mut pod = PodInfo::clone(&e.state().pods[&PodKey::new("y", "c")]);
    assert_eq!(pod.node_name.as_deref(), Some("node1"));
    pod.labels = pod.labels.with("pod", "b");
    e.upsert_pod(pod);
    assert!(!e.commit_is_heavy(), "two set elements are light");
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

#[test]
fn a_commit_planning_many_endpoints_is_heavy() {
    let (mut e, mut sink) = one_node_deny();
    e.commit(&mut sink).unwrap();
    // One node: every pod is local, each relabelled pod an endpoint to plan.
    let keys: Vec<PodKey> = e.state().pods.keys().cloned().collect();
    for (n, key) in keys.iter().enumerate() {
        let mut pod = PodInfo::clone(&e.state().pods[key]);
        pod.labels = pod.labels.with("relabelled", "yes");
        e.upsert_pod(pod);
        assert_eq!(e.commit_is_heavy(), n >= 2, "after {} endpoints", n + 1);
    }
    e.commit(&mut sink).unwrap();
    assert!(!e.commit_is_heavy());
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
}

#[test]
fn local_pod_label_change_swaps_its_chain_and_collects_garbage() {
    let mut xyz = Xyz::new(1, false);
    xyz.state
        .add_policy(
            NetPol::new("x", "a-only")
                .select(sel(&[("pod", "a")]))
                .ingress(from(vec![pods(sel(&[("pod", "b")]))]).ports(vec![tcp(80)]))
                .build(),
        )
        .unwrap();
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    let mut a = PodInfo::clone(&e.state().pods[&PodKey::new("x", "a")]);
    a.labels = a.labels.with("pod", "z");
    e.upsert_pod(a);
    let st = e.commit(&mut sink).unwrap();
    // x/a no longer isolated: its ingress map element goes, the policy
    // chain and its sets (selector v4+v6, ports) are deleted.
    assert_eq!(st.diff.map_deleted, 1, "{st:?}");
    assert_eq!(st.diff.map_added, 0, "{st:?}");
    assert_eq!(st.diff.chains_deleted, 1, "{st:?}");
    assert_eq!(st.diff.sets_deleted, 3, "{st:?}");
    assert!(!e.ruleset().chains.keys().any(|c| c.starts_with("pi_")));
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
}

#[test]
fn failed_batch_falls_back_to_full_rebuild() {
    let xyz = Xyz::new(1, true);
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    e.upsert_policy(
        PolicyKey::new("y", "deny"),
        NetPol::new("y", "deny").build(),
    );
    sink.fail_next = 1;
    let st = e.commit(&mut sink).unwrap();
    assert!(st.full);
    check_kernel(&e, &sink);
    // Both fail: error, and the next commit is full again.
    e.remove_policy(&PolicyKey::new("y", "deny"));
    sink.fail_next = 2;
    assert!(e.commit(&mut sink).is_err());
    let st = e.commit(&mut sink).unwrap();
    assert!(st.full);
    check_kernel(&e, &sink);
}

#[test]
fn endpoint_down_and_up_again_in_one_round() {
    let (mut e, mut sink) = one_node_deny();
    e.commit(&mut sink).unwrap();
    let key = PodKey::new("x", "a");
    let ep = e.node().endpoints[&key].clone();
    e.remove_endpoint(&key);
    e.upsert_endpoint(ep);
    e.commit(&mut sink).unwrap();
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
    // Down for good.
    e.remove_endpoint(&key);
    let st = e.commit(&mut sink).unwrap();
    // Its ingress element goes; the policy chain stays (x/b, x/c use it).
    assert_eq!(st.diff.map_deleted, 1, "{st:?}");
    assert_eq!(st.diff.chains_deleted, 0, "{st:?}");
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
}

#[test]
fn invalid_endpoint_interface_is_an_issue_not_a_rule() {
    let xyz = Xyz::new(1, true);
    let mut e = engine_for(&xyz, 0);
    e.upsert_endpoint(LocalEndpoint {
        standalone: false,
        pod: PodKey::new("x", "evil"),
        iface: "cali\" accept".into(),
        ips: vec![],
    });
    assert_eq!(e.issues().count(), 1);
    assert!(!e.ruleset().dispatch.contains_key("cali\" accept"));
}

/// Outgoing NAT lives in the same table and transactions: pool changes are
/// set elements only (merged ranges), and the kernel model agrees with a
/// full rebuild after each.
#[test]
fn nat_pools_change_as_set_elements() {
    let xyz = Xyz::new(1, true);
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    let net = |s: &str| s.parse::<ipnetwork::IpNetwork>().unwrap();
    e.set_nat(crate::model::NatOutgoing {
        sources: vec![net("198.19.0.0/17")],
        pools: vec![
            net("198.19.0.0/17"),
            net("198.19.128.0/17"),
            net("2001:db8:100::/48"),
        ],
    });
    let st = e.commit(&mut sink).unwrap();
    assert!(!st.full && st.diff.elems_added == 3, "{st:?}");
    assert_eq!(e.ruleset(), &pure(&e));
    // The two adjacent /17s are one interval element.
    assert_eq!(e.ruleset().sets["pools4"].elems.len(), 1);
    e.set_nat(crate::model::NatOutgoing::default());
    let st = e.commit(&mut sink).unwrap();
    assert!(!st.full && st.diff.elems_deleted == 3, "{st:?}");
    check_kernel(&e, &sink);
    let full = serde_json::to_string(&crate::nft::full(&pure(&e))).unwrap();
    assert!(
        full.contains(r#""hook":"postrouting""#) && full.contains("masquerade"),
        "{full}"
    );
}

#[test]
fn many_rules_with_equal_ports_share_a_union_set_that_follows_label_changes() {
    let mut xyz = Xyz::new(1, true);
    // MERGE_MIN selectors on port 80 (b, c and others that match no pod),
    // one on port 81.
    let mut rules = vec![
        ("b".to_string(), 80),
        ("c".to_string(), 80),
        ("b".to_string(), 81),
    ];
    rules.extend((2..crate::ruleset::MERGE_MIN).map(|k| (format!("none-{k}"), 80)));
    for (i, (peer, port)) in rules.iter().enumerate() {
        let (name, peer, port) = (format!("p{i}"), peer.as_str(), *port);
        xyz.state
            .add_policy(
                NetPol::new("x", &name)
                    .select(sel(&[("pod", "a")]))
                    .ingress(from(vec![pods(sel(&[("pod", peer)]))]).ports(vec![tcp(port)]))
                    .build(),
            )
            .unwrap();
    }
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    let iface = e.node().endpoints[&PodKey::new("x", "a")].iface.clone();
    let rs = e.ruleset();
    let chain = rs.dispatch[&iface].ingress.clone().unwrap();
    let lines = &rs.chains[&chain];
    // Node addresses (2), port 80 from any of the MERGE_MIN selectors (one
    // line per family, one union set each), port 81 from b (its own
    // selector sets), drop.
    assert_eq!(lines.len(), 7, "{lines:?}");
    let sets: Vec<&str> = lines
        .iter()
        .flat_map(|l| &l.matches)
        .filter_map(|m| match m {
            Match::Addr(_, _, s) if !s.starts_with("node") => Some(s.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        sets.iter().filter(|s| s.starts_with('u')).count(),
        2,
        "{sets:?}"
    );
    assert_eq!(
        sets.iter().filter(|s| s.starts_with('s')).count(),
        2,
        "{sets:?}"
    );
    let u4 = sets
        .iter()
        .find(|s| s.starts_with("u4_"))
        .unwrap()
        .to_string();
    // The shared lines come from MERGE_MIN policies: their counter is
    // theirs together, under the fixed `merged` origin; port 81 keeps p2's.
    for l in lines.iter().filter(|l| {
        l.matches
            .iter()
            .any(|m| matches!(m, Match::Addr(_, _, s) if s.starts_with('u')))
    }) {
        assert_eq!(l.origin.comment(), "fixed merged ingress - allow", "{l:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.origin.comment() == "np x/p2 ingress 0 allow"),
        "{lines:?}"
    );
    let ip = |p: &str| e.state().pods[&PodKey::new("x", p)].ips[0];
    let want: BTreeSet<Elem> = [ip("b"), ip("c")].into_iter().map(Elem::Addr).collect();
    assert_eq!(rs.sets[&u4].elems, want);
    // x/c leaves the selector: its two addresses leave the union sets only.
    let mut c = PodInfo::clone(&e.state().pods[&PodKey::new("x", "c")]);
    c.labels = c.labels.with("pod", "z");
    e.upsert_pod(c);
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
fn a_few_rules_with_equal_ports_keep_a_line_per_peer() {
    let mut xyz = Xyz::new(1, true);
    for (name, peer) in [("from-b", "b"), ("from-c", "c")] {
        xyz.state
            .add_policy(
                NetPol::new("x", name)
                    .select(sel(&[("pod", "a")]))
                    .ingress(from(vec![pods(sel(&[("pod", peer)]))]).ports(vec![tcp(80)]))
                    .build(),
            )
            .unwrap();
    }
    let e = engine_for(&xyz, 0);
    let rs = pure(&e);
    let iface = &e.node().endpoints[&PodKey::new("x", "a")].iface;
    let lines = &rs.chains[rs.dispatch[iface].ingress.as_ref().unwrap()];
    // Node addresses (2), b and c per family (4), drop: no union set.
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert!(!rs.sets.keys().any(|s| s.starts_with('u')));
}

#[test]
fn many_rules_on_ports_of_their_own_share_one_lookup_that_follows_label_changes() {
    let mut xyz = Xyz::new(1, true);
    // COMBO_MIN policies from b, each on a port of its own (80 among them),
    // one from c on 81, and one on a range too wide to merge.
    let mut rules: Vec<(String, NetworkPolicyPort)> = (0..crate::ruleset::COMBO_MIN)
        .map(|k| {
            (
                "b".to_string(),
                tcp(if k == 0 { 80 } else { 2000 + k as i32 }),
            )
        })
        .collect();
    rules.push(("c".to_string(), udp(81)));
    rules.push(("c".to_string(), range("TCP", 3000, 3999)));
    for (i, (peer, port)) in rules.iter().enumerate() {
        xyz.state
            .add_policy(
                NetPol::new("x", &format!("p{i:02}"))
                    .select(sel(&[("pod", "a")]))
                    .ingress(from(vec![pods(sel(&[("pod", peer)]))]).ports(vec![port.clone()]))
                    .build(),
            )
            .unwrap();
    }
    let mut e = engine_for(&xyz, 0);
    let mut sink = CapturingSink::default();
    e.commit(&mut sink).unwrap();
    let iface = e.node().endpoints[&PodKey::new("x", "a")].iface.clone();
    let rs = e.ruleset().clone();
    let lines = &rs.chains[rs.dispatch[&iface].ingress.as_ref().unwrap()];
    // Node addresses (2), one combo line per family (2), the wide range
    // from c per family (2), drop: 7 lines, not 2 + 2 × 18 + 1.
    assert_eq!(lines.len(), 7, "{lines:?}");
    let combos: Vec<&str> = lines
        .iter()
        .flat_map(|l| &l.matches)
        .filter_map(|m| match m {
            Match::AddrProtoPort(_, _, s) if s.starts_with('c') => Some(s.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(combos.len(), 2, "{lines:?}");
    let c4 = combos
        .iter()
        .find(|s| s.starts_with("c4_"))
        .unwrap()
        .to_string();
    let ip = |p: &str| e.state().pods[&PodKey::new("x", p)].ips[0];
    let (b, c) = (ip("b"), ip("c"));
    let mut want: BTreeSet<Elem> = (0..crate::ruleset::COMBO_MIN)
        .map(|k| Elem::AddrProtoPort(b, Protocol::Tcp, if k == 0 { 80 } else { 2000 + k as u16 }))
        .collect();
    want.insert(Elem::AddrProtoPort(c, Protocol::Udp, 81));
    assert_eq!(rs.sets[&c4].elems, want);
    // The merged line counts for all of its policies.
    for l in lines.iter().filter(|l| {
        l.matches
            .iter()
            .any(|m| matches!(m, Match::AddrProtoPort(_, _, s) if s.starts_with('c')))
    }) {
        assert_eq!(l.origin.comment(), "fixed merged ingress - allow", "{l:?}");
    }
    // x/c takes b's label: its address gains b's 16 ports and keeps udp/81;
    // only elements change (IPv4 and IPv6), no rule.
    let mut cp = PodInfo::clone(&e.state().pods[&PodKey::new("x", "c")]);
    cp.labels = cp.labels.with("pod", "b");
    e.upsert_pod(cp);
    let st = e.commit(&mut sink).unwrap();
    assert_eq!(
        st.diff,
        DiffStats {
            elems_added: 2 * crate::ruleset::COMBO_MIN,
            // c leaves pod=c: udp/81 in the combo sets, and the selector
            // sets of the wide range's lines.
            elems_deleted: 2 + 2,
            ..DiffStats::default()
        },
        "{st:?}"
    );
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
    // Below COMBO_MIN mergeable rules (two fewer: 15), lines of their own
    // again: 16 rules, two lines each.
    for gone in ["p01", "p02"] {
        e.remove_policy(&PolicyKey::new("x", gone));
    }
    e.commit(&mut sink).unwrap();
    let rs = e.ruleset();
    let lines = &rs.chains[rs.dispatch[&iface].ingress.as_ref().unwrap()];
    assert_eq!(
        lines.len(),
        2 + 2 * crate::ruleset::COMBO_MIN + 1,
        "{lines:?}"
    );
    assert!(
        !rs.sets
            .keys()
            .any(|s| s.starts_with("c4_") || s.starts_with("c6_"))
    );
    assert_eq!(e.ruleset(), &pure(&e));
    check_kernel(&e, &sink);
}

/// An address's holders: one in place, several sorted while it is being
/// reused, back to one in place, none.
#[test]
fn holders_of_an_address() {
    let (a, b, c) = (
        PodKey::new("x", "a"),
        PodKey::new("x", "b"),
        PodKey::new("x", "c"),
    );
    let mut h = Holders::One(b.clone());
    h.add(&b);
    assert!(matches!(h, Holders::One(_)));
    h.add(&c);
    h.add(&a);
    assert_eq!(h.keys(), [a.clone(), b.clone(), c.clone()]);
    assert!(!h.remove(&b));
    assert!(!h.remove(&a));
    assert!(matches!(&h, Holders::One(k) if *k == c));
    assert!(!h.remove(&a), "not a holder: c stays");
    assert!(h.remove(&c));
    // In place: no bigger than the key it holds.
    assert_eq!(
        std::mem::size_of::<Holders>(),
        std::mem::size_of::<PodKey>()
    );
}
