//! Property test of the incremental engine: after any sequence of watch
//! events and commits, on every node,
//! * the engine's ruleset equals the from-scratch pipeline's,
//! * replaying every batch it sent on a kernel model is accepted and ends
//!   in the same table as one full rebuild,
//! * the rules agree with the spec evaluator on every pair.
//!
//! The events include AdminNetworkPolicies (tied priorities included), the
//! BaselineAdminNetworkPolicy and Node label/address changes.

use std::net::IpAddr;

use proptest::prelude::*;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use policy::build::*;
use policy::testkit::generate::{DIRECTIONS, peer_kinds, policy, port_kinds};
use policy::testkit::kernel::Kernel;
use policy::testkit::tiers::{GenRule, admin_policy, baseline_policy};
use policy::testkit::{NAMESPACES, PODS, SimNode, Xyz};
use policy::{
    CapturingSink, Engine, NamespaceInfo, PodKey, PodPhase, PolicyKey, PreparedPolicy, Ruleset,
    nft, plan,
};

#[derive(Debug, Clone)]
enum Op {
    Policy {
        ns: usize,
        slot: usize,
        peer: usize,
        port: usize,
        dir: usize,
        target: bool,
    },
    RemovePolicy {
        ns: usize,
        slot: usize,
    },
    /// BULK policies at once, most on ports of their own: enough for a
    /// chain to merge them into one `addr . proto . port` set.
    ManyPorts {
        ns: usize,
        peer_base: usize,
        port_base: usize,
        dir: usize,
        target: bool,
    },
    RemoveMany {
        ns: usize,
    },
    InvalidPolicy {
        ns: usize,
    },
    PodLabel {
        ns: usize,
        pod: usize,
        value: usize,
    },
    NsLabel {
        ns: usize,
        team: bool,
    },
    Finish {
        ns: usize,
        pod: usize,
    },
    Recreate {
        ns: usize,
        pod: usize,
    },
    RemovePod {
        ns: usize,
        pod: usize,
    },
    EndpointDown {
        ns: usize,
        pod: usize,
    },
    EndpointUp {
        ns: usize,
        pod: usize,
    },
    NodeAddr {
        extra: bool,
    },
    Admin {
        slot: usize,
        prio: usize,
        subject: usize,
        ingress: Vec<GenRule>,
        egress: Vec<GenRule>,
    },
    RemoveAdmin {
        slot: usize,
    },
    InvalidAdmin {
        slot: usize,
    },
    Baseline {
        subject: usize,
        ingress: Vec<GenRule>,
        egress: Vec<GenRule>,
    },
    RemoveBaseline,
    NodeZone {
        node: usize,
        zone_b: bool,
    },
    Commit,
    FailNextCommit,
}

fn gen_rules() -> impl Strategy<Value = Vec<GenRule>> {
    prop::collection::vec((0..3usize, 0..8usize, 0..7usize), 0..3)
}

fn op() -> impl Strategy<Value = Op> {
    let (np, nq) = (peer_kinds().len(), port_kinds().len());
    prop_oneof![
        4 => (0..3usize, 0..2usize, 0..np, 0..nq, 0..3usize, proptest::arbitrary::any::<bool>())
            .prop_map(|(ns, slot, peer, port, dir, target)| Op::Policy { ns, slot, peer, port, dir, target }),
        1 => (0..3usize, 0..2usize).prop_map(|(ns, slot)| Op::RemovePolicy { ns, slot }),
        1 => (0..3usize, 0..np, 0..4usize, 0..3usize, proptest::arbitrary::any::<bool>())
            .prop_map(|(ns, peer_base, port_base, dir, target)| Op::ManyPorts { ns, peer_base, port_base, dir, target }),
        1 => (0..3usize).prop_map(|ns| Op::RemoveMany { ns }),
        1 => (0..3usize).prop_map(|ns| Op::InvalidPolicy { ns }),
        4 => (0..3usize, 0..3usize, 0..4usize).prop_map(|(ns, pod, value)| Op::PodLabel { ns, pod, value }),
        2 => (0..3usize, proptest::arbitrary::any::<bool>()).prop_map(|(ns, team)| Op::NsLabel { ns, team }),
        1 => (0..3usize, 0..3usize).prop_map(|(ns, pod)| Op::Finish { ns, pod }),
        1 => (0..3usize, 0..3usize).prop_map(|(ns, pod)| Op::Recreate { ns, pod }),
        1 => (0..3usize, 0..3usize).prop_map(|(ns, pod)| Op::RemovePod { ns, pod }),
        1 => (0..3usize, 0..3usize).prop_map(|(ns, pod)| Op::EndpointDown { ns, pod }),
        1 => (0..3usize, 0..3usize).prop_map(|(ns, pod)| Op::EndpointUp { ns, pod }),
        1 => proptest::arbitrary::any::<bool>().prop_map(|extra| Op::NodeAddr { extra }),
        3 => (0..3usize, 0..3usize, 0..4usize, gen_rules(), gen_rules())
            .prop_map(|(slot, prio, subject, ingress, egress)| Op::Admin { slot, prio, subject, ingress, egress }),
        1 => (0..3usize).prop_map(|slot| Op::RemoveAdmin { slot }),
        1 => (0..3usize).prop_map(|slot| Op::InvalidAdmin { slot }),
        2 => (0..4usize, gen_rules(), gen_rules())
            .prop_map(|(subject, ingress, egress)| Op::Baseline { subject, ingress, egress }),
        1 => Just(Op::RemoveBaseline),
        1 => (0..2usize, proptest::arbitrary::any::<bool>()).prop_map(|(node, zone_b)| Op::NodeZone { node, zone_b }),
        3 => Just(Op::Commit),
        1 => Just(Op::FailNextCommit),
    ]
}

/// Policies of one [`Op::ManyPorts`]: three times what a chain needs to
/// merge rules on ports of their own (not every peer kind can be merged).
const BULK: usize = 3 * policy::ruleset::COMBO_MIN;

/// The ports of bulk policy `k`: every fourth on a probed port (so the
/// merged set decides what the spec is checked against), the others on a
/// port no probe uses, each its own.
fn bulk_ports(
    k: usize,
    base: usize,
) -> Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>> {
    Some(if k.is_multiple_of(4) {
        match (base + k / 4) % 4 {
            0 => vec![tcp(80)],
            1 => vec![udp(81)],
            2 => vec![range("TCP", 80, 81)],
            _ => vec![sctp(80)],
        }
    } else {
        vec![tcp(1000 + k as i32)]
    })
}

struct Node {
    engine: Engine,
    sink: CapturingSink,
}

fn check(xyz: &Xyz, nodes: &[Node]) -> Result<(), TestCaseError> {
    let mut rss = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let e = &n.engine;
        // The engine's cluster, with the test's policies: a node fed
        // compiled policies holds no objects to build from.
        let mut state = e.state().clone();
        state.policies = xyz.state.policies.clone();
        let pure = Ruleset::build(&plan::build(&state, e.node()), &state);
        prop_assert_eq!(e.ruleset(), &pure, "node {} engine != pure", i);
        let mut k = Kernel::default();
        for (j, b) in n.sink.batches.iter().enumerate() {
            if let Err(err) = k.apply(b) {
                return Err(TestCaseError::fail(format!(
                    "node {i} batch {j} rejected: {err}"
                )));
            }
        }
        let mut want = Kernel::default();
        let full = serde_json::to_value(nft::full(&pure)).expect("json");
        // The text the agent's sinks write for a full rebuild is the same
        // document, built element by element.
        let streamed: serde_json::Value =
            serde_json::from_str(&nft::full_json(&pure).expect("json")).expect("parses");
        prop_assert_eq!(&streamed, &full, "node {} full_json != full", i);
        want.apply(&full).map_err(TestCaseError::fail)?;
        prop_assert_eq!(k, want, "node {} kernel replay != full rebuild", i);
        rss.push(pure);
    }
    // Evaluator vs rules, with the engines' views of the nodes.
    let sim: Vec<SimNode<'_>> = nodes
        .iter()
        .zip(&rss)
        .map(|(n, rs)| SimNode {
            ctx: n.engine.node(),
            rs,
        })
        .collect();
    let eval = policy::spec_eval::Cluster {
        state: &xyz.state,
        node_addrs: &xyz.node_addrs,
    };
    // Endpoints whose pod is gone or finished are denied everything (fail
    // closed); the spec has no such thing, so leave their addresses out.
    let mut dead: Vec<IpAddr> = Vec::new();
    for n in nodes {
        for ep in n.engine.node().endpoints.values() {
            let live = xyz
                .state
                .pods
                .get(&ep.pod)
                .is_some_and(|p| plan::is_member(p));
            if !live {
                dead.extend(ep.ips.iter().copied());
            }
        }
    }
    // Live pods whose interface is down have no traffic at all.
    for p in xyz.state.pods.values() {
        let home = p
            .node_name
            .as_deref()
            .and_then(|n| n.strip_prefix("node"))
            .and_then(|i| i.parse::<usize>().ok());
        let wired = home
            .and_then(|i| nodes.get(i))
            .is_some_and(|n| n.engine.node().endpoints.contains_key(&p.key));
        if !wired {
            dead.extend(p.ips.iter().copied());
        }
    }
    for (sn, s) in xyz.addresses() {
        for (dn, d) in xyz.addresses() {
            if s == d || s.is_ipv4() != d.is_ipv4() || dead.contains(&s) || dead.contains(&d) {
                continue;
            }
            for l4 in [
                policy::testkit::PROBES[0],
                policy::testkit::PROBES[3],
                policy::testkit::PROBES[6],
            ] {
                let rules =
                    policy::testkit::flow(&sim, s, d, l4) == policy::testkit::SimVerdict::Accept;
                let spec = eval.allowed(s, d, l4);
                prop_assert_eq!(
                    rules,
                    spec.allowed,
                    "{} -> {} {:?}: {}",
                    sn,
                    dn,
                    l4,
                    spec.why
                );
            }
        }
    }
    Ok(())
}

/// Hands a NetworkPolicy to every node's engine: as the object to even
/// nodes, compiled ahead (as the agent's policy cache does) to odd ones,
/// so that both ways are held to the spec.
fn give_policy(nodes: &mut [Node], key: PolicyKey, np: &NetworkPolicy) {
    for (i, n) in nodes.iter_mut().enumerate() {
        if i % 2 == 0 {
            n.engine.upsert_policy(key.clone(), np.clone());
        } else {
            n.engine
                .upsert_prepared(key.clone(), PreparedPolicy::compile(&key, np));
        }
    }
}

fn run(ops: Vec<Op>, node_count: usize) -> Result<(), TestCaseError> {
    let mut xyz = Xyz::new(node_count, true);
    let original = xyz.clone();
    let mut nodes: Vec<Node> = xyz
        .nodes
        .iter()
        .map(|ctx| {
            let mut engine = Engine::new(ctx.clone());
            engine.load(xyz.state.clone());
            Node {
                engine,
                sink: CapturingSink::default(),
            }
        })
        .collect();
    for n in &mut nodes {
        n.engine
            .commit(&mut n.sink)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    let (peers, ports) = (peer_kinds(), port_kinds());
    let mut fail_next = false;
    for op in ops {
        let key = |ns: usize, pod: usize| PodKey::new(NAMESPACES[ns], PODS[pod]);
        let home = |k: &PodKey| {
            original
                .nodes
                .iter()
                .position(|n| n.endpoints.contains_key(k))
        };
        match op {
            Op::Policy {
                ns,
                slot,
                peer,
                port,
                dir,
                target,
            } => {
                let name = format!("p{slot}");
                let np = policy(
                    NAMESPACES[ns],
                    &name,
                    target.then_some("a"),
                    DIRECTIONS[dir],
                    &peers[peer].1,
                    &ports[port].1,
                );
                xyz.state.add_policy(np.clone()).expect("named");
                give_policy(&mut nodes, PolicyKey::new(NAMESPACES[ns], &name), &np);
            }
            Op::ManyPorts {
                ns,
                peer_base,
                port_base,
                dir,
                target,
            } => {
                for k in 0..BULK {
                    let name = format!("m{k:02}");
                    let np = policy(
                        NAMESPACES[ns],
                        &name,
                        target.then_some("a"),
                        DIRECTIONS[dir],
                        &peers[(peer_base + k) % peers.len()].1,
                        &bulk_ports(k, port_base),
                    );
                    xyz.state.add_policy(np.clone()).expect("named");
                    give_policy(&mut nodes, PolicyKey::new(NAMESPACES[ns], &name), &np);
                }
            }
            Op::RemoveMany { ns } => {
                for k in 0..BULK {
                    let key = PolicyKey::new(NAMESPACES[ns], format!("m{k:02}"));
                    xyz.state.policies.remove(&key);
                    for n in &mut nodes {
                        n.engine.remove_policy(&key);
                    }
                }
            }
            Op::RemovePolicy { ns, slot } => {
                let k = PolicyKey::new(NAMESPACES[ns], format!("p{slot}"));
                xyz.state.policies.remove(&k);
                for n in &mut nodes {
                    n.engine.remove_policy(&k);
                }
            }
            Op::InvalidPolicy { ns } => {
                let np = NetPol::new(NAMESPACES[ns], "p0")
                    .select(sel_expr(&[], vec![req("pod", "Like", &["a"])]))
                    .build();
                xyz.state.add_policy(np.clone()).expect("named");
                give_policy(&mut nodes, PolicyKey::new(NAMESPACES[ns], "p0"), &np);
            }
            Op::PodLabel { ns, pod, value } => {
                let Some(p) = xyz
                    .state
                    .pods
                    .get_mut(&key(ns, pod))
                    .map(std::sync::Arc::make_mut)
                else {
                    continue;
                };
                p.labels = p.labels.with("pod", ["a", "b", "c", "other"][value]);
                let p = p.clone();
                for n in &mut nodes {
                    n.engine.upsert_pod(p.clone());
                }
            }
            Op::NsLabel { ns, team } => {
                let mut n_info = NamespaceInfo::new(NAMESPACES[ns]).label("ns", NAMESPACES[ns]);
                if team {
                    n_info = n_info.label("ns", "y");
                }
                xyz.state.add_namespace(n_info.clone());
                for n in &mut nodes {
                    n.engine.upsert_namespace(n_info.clone());
                }
            }
            Op::Finish { ns, pod } => {
                let Some(p) = xyz
                    .state
                    .pods
                    .get_mut(&key(ns, pod))
                    .map(std::sync::Arc::make_mut)
                else {
                    continue;
                };
                p.phase = PodPhase::Succeeded;
                let p = p.clone();
                for n in &mut nodes {
                    n.engine.upsert_pod(p.clone());
                }
            }
            Op::Recreate { ns, pod } => {
                let p = original.state.pods[&key(ns, pod)].clone();
                xyz.state.add_pod(p.clone());
                for n in &mut nodes {
                    n.engine.upsert_pod(p.clone());
                }
            }
            Op::RemovePod { ns, pod } => {
                xyz.state.pods.remove(&key(ns, pod));
                for n in &mut nodes {
                    n.engine.remove_pod(&key(ns, pod));
                }
            }
            Op::EndpointDown { ns, pod } => {
                if let Some(h) = home(&key(ns, pod)) {
                    nodes[h].engine.remove_endpoint(&key(ns, pod));
                }
            }
            Op::EndpointUp { ns, pod } => {
                if let Some(h) = home(&key(ns, pod)) {
                    let ep = original.nodes[h].endpoints[&key(ns, pod)].clone();
                    nodes[h].engine.upsert_endpoint(ep);
                }
            }
            Op::NodeAddr { extra } => {
                let mut addrs = original.nodes[0].node_addrs.clone();
                if extra {
                    addrs.push("198.18.0.200".parse::<IpAddr>().expect("ip"));
                }
                xyz.node_addrs.insert("node0".into(), addrs.clone());
                nodes[0].engine.set_node_addrs(addrs.clone());
                let mut info = xyz.state.nodes["node0"].clone();
                info.addrs = addrs;
                xyz.state.add_node(info.clone());
                for n in &mut nodes {
                    n.engine.upsert_node(info.clone());
                }
            }
            Op::Admin {
                slot,
                prio,
                subject,
                ingress,
                egress,
            } => {
                let name = format!("anp{slot}");
                let anp = admin_policy(&name, [0, 10, 1000][prio], subject, &ingress, &egress);
                xyz.state.add_admin_policy(anp.clone()).expect("named");
                for n in &mut nodes {
                    n.engine.upsert_admin_policy(name.clone(), anp.clone());
                }
            }
            Op::RemoveAdmin { slot } => {
                let name = format!("anp{slot}");
                xyz.state.admin_policies.remove(&name);
                for n in &mut nodes {
                    n.engine.remove_admin_policy(&name);
                }
            }
            Op::InvalidAdmin { slot } => {
                // Out-of-range priority: the whole policy is ignored.
                let name = format!("anp{slot}");
                let anp = admin_policy(&name, 1001, 0, &[(1, 1, 0)], &[(1, 1, 0)]);
                xyz.state.add_admin_policy(anp.clone()).expect("named");
                for n in &mut nodes {
                    n.engine.upsert_admin_policy(name.clone(), anp.clone());
                }
            }
            Op::Baseline {
                subject,
                ingress,
                egress,
            } => {
                let b = baseline_policy(subject, &ingress, &egress);
                xyz.state.add_baseline_policy(b.clone()).expect("named");
                for n in &mut nodes {
                    n.engine.upsert_baseline_policy("default".into(), b.clone());
                }
            }
            Op::RemoveBaseline => {
                xyz.state.baseline_policies.remove("default");
                for n in &mut nodes {
                    n.engine.remove_baseline_policy("default");
                }
            }
            Op::NodeZone { node, zone_b } => {
                let name = format!("node{node}");
                let Some(mut info) = xyz.state.nodes.get(&name).cloned() else {
                    continue;
                };
                info.labels
                    .insert("zone".into(), if zone_b { "b" } else { "a" }.into());
                xyz.state.add_node(info.clone());
                for n in &mut nodes {
                    n.engine.upsert_node(info.clone());
                }
            }
            Op::FailNextCommit => fail_next = true,
            Op::Commit => {
                for n in &mut nodes {
                    if fail_next {
                        n.sink.fail_next = 1;
                    }
                    n.engine
                        .commit(&mut n.sink)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                fail_next = false;
                check(&xyz, &nodes)?;
            }
        }
    }
    for n in &mut nodes {
        n.engine
            .commit(&mut n.sink)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    check(&xyz, &nodes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 60, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_pure_pipeline_kernel_and_spec(ops in prop::collection::vec(op(), 1..24), two in proptest::arbitrary::any::<bool>()) {
        run(ops, if two { 2 } else { 1 })?;
    }
}
