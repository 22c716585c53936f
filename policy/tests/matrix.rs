//! The generated matrix: every peer kind × port kind × direction × target,
//! on one node and across two nodes, dual-stack. For each, the rendered
//! rules (walked by the simulator) must agree with the spec evaluator on
//! every ordered pair of addresses (pods, nodes, outside) and every probe
//! (TCP/UDP/SCTP 80 and 81, ICMP).

use policy::testkit::Xyz;
use policy::testkit::generate::{DIRECTIONS, peer_kinds, policy, port_kinds};

#[test]
fn matrix_rules_agree_with_the_evaluator() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for (pl, peers) in peer_kinds() {
        for (ql, ports) in port_kinds() {
            for dir in DIRECTIONS {
                for target in [Some("a"), None] {
                    for nodes in [1, 2] {
                        cases += 1;
                        let mut xyz = Xyz::new(nodes, true);
                        let np = policy("x", "m", target, dir, &peers, &ports);
                        xyz.state.add_policy(np).expect("policy has a name");
                        let rss = xyz.render();
                        for m in xyz.mismatches(&rss) {
                            failures.push(format!(
                                "[{pl} | {ql} | {dir} | target {target:?} | {nodes} node(s)] {} -> {} {:?}: rules allow={} spec: {}",
                                m.src, m.dst, m.l4, m.rules_allow, m.spec.why
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(cases > 500, "matrix shrank to {cases} cases");
    assert!(
        failures.is_empty(),
        "{} disagreements, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn matrix_pairs_of_policies_in_two_namespaces() {
    // Two policies at once (one in x, one in y), a stride through the space.
    let peers = peer_kinds();
    let ports = port_kinds();
    let mut failures = Vec::new();
    for i in 0..peers.len() {
        for j in 0..ports.len() {
            let (p2, q2) = ((i * 7 + 3) % peers.len(), (j * 5 + 1) % ports.len());
            let mut xyz = Xyz::new(2, true);
            xyz.state
                .add_policy(policy(
                    "x",
                    "m1",
                    Some("a"),
                    DIRECTIONS[i % 3],
                    &peers[i].1,
                    &ports[j].1,
                ))
                .expect("named");
            xyz.state
                .add_policy(policy(
                    "y",
                    "m2",
                    None,
                    DIRECTIONS[(i + j) % 3],
                    &peers[p2].1,
                    &ports[q2].1,
                ))
                .expect("named");
            xyz.state
                .add_policy(policy(
                    "x",
                    "m3",
                    Some("b"),
                    DIRECTIONS[j % 3],
                    &peers[p2].1,
                    &ports[j].1,
                ))
                .expect("named");
            let rss = xyz.render();
            for m in xyz.mismatches(&rss) {
                failures.push(format!(
                    "[{i},{j}] {} -> {} {:?}: rules allow={} spec: {}",
                    m.src, m.dst, m.l4, m.rules_allow, m.spec.why
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
