//! Generated mixes of AdminNetworkPolicies (with tied priorities),
//! the BaselineAdminNetworkPolicy and NetworkPolicies on the x/y/z cluster
//! (one or two nodes, dual-stack): the rendered rules, walked by the
//! simulator, must agree with the spec evaluator on every ordered pair of
//! addresses (pods, nodes, outside) and every probe (TCP/UDP/SCTP 80/81,
//! ICMP). Each case checks about two thousand connections.

use proptest::prelude::*;

use policy::testkit::Xyz;
use policy::testkit::generate::{DIRECTIONS, peer_kinds, policy, port_kinds};
use policy::testkit::tiers::{GenRule, admin_policy, baseline_policy};

fn gen_rule() -> impl Strategy<Value = GenRule> {
    (0..3usize, 0..8usize, 0..7usize)
}

fn rules(max: usize) -> impl Strategy<Value = Vec<GenRule>> {
    prop::collection::vec(gen_rule(), 0..=max)
}

#[derive(Debug, Clone)]
struct Mix {
    /// (priority index, subject, ingress, egress)
    anps: Vec<(usize, usize, Vec<GenRule>, Vec<GenRule>)>,
    banp: Option<(usize, Vec<GenRule>, Vec<GenRule>)>,
    /// (namespace, peer kind, port kind, direction, select pod=a only)
    nps: Vec<(usize, usize, usize, usize, bool)>,
    two_nodes: bool,
}

fn mix() -> impl Strategy<Value = Mix> {
    let (np, nq) = (peer_kinds().len(), port_kinds().len());
    (
        prop::collection::vec((0..3usize, 0..4usize, rules(3), rules(3)), 0..=3),
        prop::option::of((0..4usize, rules(3), rules(3))),
        prop::collection::vec(
            (
                0..3usize,
                0..np,
                0..nq,
                0..3usize,
                proptest::arbitrary::any::<bool>(),
            ),
            0..=2,
        ),
        proptest::arbitrary::any::<bool>(),
    )
        .prop_map(|(anps, banp, nps, two_nodes)| Mix {
            anps,
            banp,
            nps,
            two_nodes,
        })
}

/// Few distinct priorities, so ties (ordered by name) are common.
const PRIORITIES: [i32; 3] = [0, 10, 1000];

fn run(m: &Mix) -> Result<(), TestCaseError> {
    let mut xyz = Xyz::new(if m.two_nodes { 2 } else { 1 }, true);
    for (i, (prio, subject, ingress, egress)) in m.anps.iter().enumerate() {
        let anp = admin_policy(
            &format!("anp{i}"),
            PRIORITIES[*prio],
            *subject,
            ingress,
            egress,
        );
        xyz.state.add_admin_policy(anp).expect("named");
    }
    if let Some((subject, ingress, egress)) = &m.banp {
        xyz.state
            .add_baseline_policy(baseline_policy(*subject, ingress, egress))
            .expect("named");
    }
    let (peers, ports) = (peer_kinds(), port_kinds());
    for (i, (ns, peer, port, dir, target)) in m.nps.iter().enumerate() {
        let np = policy(
            ["x", "y", "z"][*ns],
            &format!("np{i}"),
            target.then_some("a"),
            DIRECTIONS[*dir],
            &peers[*peer].1,
            &ports[*port].1,
        );
        xyz.state.add_policy(np).expect("named");
    }
    let rss = xyz.render();
    let bad = xyz.mismatches(&rss);
    if let Some(first) = bad.first() {
        return Err(TestCaseError::fail(format!(
            "{} disagreements; first: {} -> {} {:?}: rules allow={} spec: {}",
            bad.len(),
            first.src,
            first.dst,
            first.l4,
            first.rules_allow,
            first.spec.why
        )));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, max_shrink_iters: 300, ..ProptestConfig::default() })]

    #[test]
    fn tiers_rules_agree_with_the_evaluator(m in mix()) {
        run(&m)?;
    }
}
