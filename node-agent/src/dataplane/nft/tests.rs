//! The nft executor against the real kernel, in throwaway network namespaces
//! (`mgt<pid>xdp-…`, swept by the lab if a run is killed): the policy
//! crate's full rebuilds and incremental batches are accepted by nft 1.0.6
//! and a sequence of incremental batches ends in
//! the same table as one full rebuild. Needs root; skips (saying why)
//! otherwise.

use std::process::Command;

use super::NftCli;
use policy::build::*;
use policy::testkit::Xyz;
use policy::testkit::generate::{DIRECTIONS, peer_kinds, policy, port_kinds};
use policy::{CapturingSink, Engine, NftSink, PodKey, PolicyKey, Ruleset, nft, plan};
use serde_json::Value;

pub(super) struct TestNs(pub(super) String);

impl TestNs {
    pub(super) fn new(tag: &str) -> Option<TestNs> {
        if !nix::unistd::Uid::effective().is_root() {
            ipam::testsupport::skip("needs root to create network namespaces");
            return None;
        }
        let name = format!("mgt{}xdp-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        // As root this machine can: a failure is a failure, not a skip.
        assert!(ok, "`ip netns add {name}` failed as root");
        Some(TestNs(name))
    }

    pub(super) fn nft(&self) -> NftCli {
        NftCli::with_program("ip", ["netns", "exec", self.0.as_str(), "nft"])
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `nft -j list table` without handles, with set elements sorted.
pub(super) fn normalized(cli: &NftCli) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.remove("handle");
                if let Some(Value::Array(e)) = o.get_mut("elem") {
                    e.sort_by_key(|x| x.to_string());
                }
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = cli.list_table().expect("list").expect("table exists");
    strip(&mut v);
    // The kernel lists objects in creation order; sort by kind and name,
    // keeping each chain's rules in order (stable sort).
    if let Some(a) = v.get_mut("nftables").and_then(Value::as_array_mut) {
        a.sort_by_key(|o| {
            let (kind, body) = o
                .as_object()
                .and_then(|m| m.iter().next())
                .map(|(k, b)| (k.clone(), b.clone()))
                .unwrap_or_default();
            let name = body
                .get("chain")
                .or_else(|| body.get("name"))
                .map(|n| n.to_string())
                .unwrap_or_default();
            (kind, name)
        });
    }
    v
}

pub(super) fn xyz_with_policies() -> Xyz {
    let mut xyz = Xyz::new(1, true);
    let (peers, ports) = (peer_kinds(), port_kinds());
    for (i, (_, p)) in peers.iter().enumerate() {
        let (_, q) = &ports[i % ports.len()];
        let ns = ["x", "y", "z"][i % 3];
        xyz.state
            .add_policy(policy(
                ns,
                &format!("m{i}"),
                (i % 2 == 0).then_some("a"),
                DIRECTIONS[i % 3],
                p,
                q,
            ))
            .expect("named");
    }
    xyz
}

#[test]
fn full_rebuild_loads_and_replaces_atomically() {
    let Some(ns) = TestNs::new("full") else {
        return;
    };
    let mut cli = ns.nft();
    let xyz = xyz_with_policies();
    let rs = Ruleset::build(&plan::build(&xyz.state, &xyz.nodes[0]), &xyz.state);
    cli.apply(&nft::full(&rs)).expect("full rebuild accepted");
    let listed = cli.list_table().expect("list").expect("table");
    let objs = listed["nftables"].as_array().expect("array");
    let sets = objs.iter().filter(|o| o.get("set").is_some()).count();
    let chains = objs.iter().filter(|o| o.get("chain").is_some()).count();
    assert_eq!(sets, rs.sets.len());
    assert_eq!(
        chains,
        rs.chains.len() + 3,
        "policy chains + deny, forward, input, postrouting (outgoing NAT)"
    );
    let maps = objs.iter().filter(|o| o.get("map").is_some()).count();
    assert_eq!(maps, 2, "ep_egress, ep_ingress");
    // A second full rebuild over the existing table (start-up reconcile).
    cli.apply(&nft::full(&rs))
        .expect("rebuild over an existing table");
    assert_eq!(
        normalized(&cli)["nftables"].as_array().map(Vec::len),
        Some(objs.len())
    );
    cli.remove_table().expect("remove");
    assert!(cli.list_table().expect("list").is_none());
    cli.remove_table().expect("remove is idempotent");
}

#[test]
fn incremental_batches_end_where_a_full_rebuild_does() {
    let Some(a) = TestNs::new("inc") else { return };
    let Some(b) = TestNs::new("ref") else { return };
    let mut live = a.nft();
    let xyz = Xyz::new(1, true);
    let mut e = Engine::new(xyz.nodes[0].clone());
    e.load(xyz.state.clone());
    e.commit(&mut live).expect("initial full");
    let (peers, ports) = (peer_kinds(), port_kinds());
    let mut step = 0;
    for (i, (_, peer)) in peers.iter().enumerate() {
        for (_, port) in ports.iter().skip(i % 3).step_by(3) {
            step += 1;
            let ns = ["x", "y", "z"][step % 3];
            let np = policy(
                ns,
                &format!("p{}", step % 4),
                (step % 2 == 0).then_some("a"),
                DIRECTIONS[step % 3],
                peer,
                port,
            );
            e.upsert_policy(PolicyKey::new(ns, format!("p{}", step % 4)), np);
            // Move a pod in and out of selectors, and one endpoint down/up.
            let key = PodKey::new(["x", "y", "z"][step % 3], ["a", "b", "c"][(step / 3) % 3]);
            if let Some(mut p) = e.state().pods.get(&key).map(|p| policy::PodInfo::clone(p)) {
                p.labels = p.labels.with("pod", ["a", "b", "c", "d"][step % 4]);
                e.upsert_pod(p);
            }
            if step % 5 == 0 {
                e.remove_endpoint(&key);
            } else if let Some(ep) = xyz.nodes[0].endpoints.get(&key) {
                e.upsert_endpoint(ep.clone());
            }
            if step % 7 == 0 {
                e.upsert_namespace(
                    policy::NamespaceInfo::new("z")
                        .label("ns", if step % 2 == 0 { "y" } else { "z" }),
                );
            }
            let st = e
                .commit(&mut live)
                .unwrap_or_else(|err| panic!("step {step}: {err:?}"));
            assert!(
                !st.full,
                "step {step}: incremental batch was rejected, fell back to full"
            );
        }
    }
    let mut reference = b.nft();
    let pure = Ruleset::build(&plan::build(e.state(), e.node()), e.state());
    reference
        .apply(&nft::full(&pure))
        .expect("reference rebuild");
    assert_eq!(normalized(&live), normalized(&reference));
}

#[test]
fn rejected_batch_leaves_the_table_untouched() {
    let Some(ns) = TestNs::new("rej") else { return };
    let mut cli = ns.nft();
    let xyz = Xyz::new(1, false);
    let mut e = Engine::new(xyz.nodes[0].clone());
    e.load(xyz.state.clone());
    e.commit(&mut cli).expect("initial");
    let before = normalized(&cli);
    // Adds an element, then deletes one that is not there: all or nothing.
    let bad = serde_json::json!({"nftables": [
        {"add": {"element": {"family": "inet", "table": "margay", "name": "node4", "elem": ["198.18.0.77"]}}},
        {"delete": {"element": {"family": "inet", "table": "margay", "name": "node4", "elem": ["198.18.0.78"]}}},
    ]});
    let err = cli
        .run_json(&bad.to_string(), &[])
        .expect_err("must be rejected");
    assert!(err.to_string().contains("rejected"), "{err}");
    assert_eq!(normalized(&cli), before);
    // The engine recovers from a failed incremental batch with a rebuild.
    let mut capture = CapturingSink::default();
    e.upsert_policy(
        PolicyKey::new("x", "deny"),
        NetPol::new("x", "deny").build(),
    );
    capture.fail_next = 1;
    assert!(e.commit(&mut capture).expect("rebuild").full);
    cli.run_json(&capture.batches[0].to_string(), &[])
        .expect("apply rebuild");
}

#[test]
fn session_applies_incrementally_rejects_cleanly_and_respawns() {
    let Some(a) = TestNs::new("ses") else { return };
    let Some(b) = TestNs::new("sref") else { return };
    let mut s = super::NftSession::with_program("ip", ["netns", "exec", a.0.as_str(), "nft"]);
    let xyz = xyz_with_policies();
    let mut e = Engine::new(xyz.nodes[0].clone());
    e.load(xyz.state.clone());
    assert!(e.commit(&mut s).expect("initial full").full);
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        let key = PodKey::new(*ns, "b");
        let mut p = policy::PodInfo::clone(&e.state().pods[&key]);
        p.labels = p.labels.with("pod", "c");
        e.upsert_pod(p);
        e.upsert_policy(
            PolicyKey::new(*ns, "extra"),
            policy(
                ns,
                "extra",
                Some("c"),
                DIRECTIONS[i],
                &peer_kinds()[i + 1].1,
                &port_kinds()[i + 1].1,
            ),
        );
        let st = e.commit(&mut s).expect("incremental");
        assert!(!st.full && !st.noop, "{st:?}");
    }
    // A rejected batch: error with nft's message, session still usable.
    let bad = r#"{"nftables":[{"delete":{"element":{"family":"inet","table":"margay","name":"node4","elem":["198.18.0.78"]}}}]}"#;
    let err = s.run_json(bad).expect_err("must be rejected");
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
    let spawns = s.spawns;
    e.remove_policy(&PolicyKey::new("y", "extra"));
    assert!(!e.commit(&mut s).expect("after a rejection").full);
    assert_eq!(s.spawns, spawns, "a rejection does not restart nft");
    // nft dies: the next batch fails, the engine rebuilds on a fresh nft.
    let _ = Command::new("ip")
        .args(["netns", "pids", &a.0])
        .output()
        .map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        });
    std::thread::sleep(std::time::Duration::from_millis(100));
    e.remove_policy(&PolicyKey::new("z", "extra"));
    let st = e.commit(&mut s).expect("recovers");
    assert!(st.full, "{st:?}");
    assert!(s.spawns > spawns);
    assert_table_is_a_full_rebuild(&a, &b, e.state(), e.node());
}

/// The table in `live` is what one full rebuild of `state` makes (applied
/// in `reference`); the nft session's sentinel table is ignored.
pub(super) fn assert_table_is_a_full_rebuild(
    live: &TestNs,
    reference: &TestNs,
    state: &policy::ClusterState,
    node: &policy::NodeContext,
) {
    let pure = Ruleset::build(&plan::build(state, node), state);
    let mut r = reference.nft();
    r.apply(&nft::full(&pure)).expect("reference");
    let mut got = normalized(&live.nft());
    if let Some(arr) = got.get_mut("nftables").and_then(Value::as_array_mut) {
        arr.retain(|o| {
            o.get("table")
                .and_then(|t| t.get("name"))
                .and_then(Value::as_str)
                != Some("margay_sync")
        });
    }
    assert_eq!(got, normalized(&r));
}
