//! The nfnetlink fast path ([`super::nfnl`]) against the real kernel, in
//! throwaway network namespaces like [`super::tests`]: native element
//! batches end where `nft` ends, the sink falls back to `nft` for what the
//! kernel refuses, and the engine through the fast sink ends where a full
//! rebuild does. Needs root; skips (saying why) otherwise.

use std::process::Command;

use super::tests::{TestNs, assert_table_is_a_full_rebuild, xyz_with_policies};
use policy::testkit::generate::{DIRECTIONS, peer_kinds, policy, port_kinds};
use policy::{Engine, NftSink, PodKey, PolicyKey};
use serde_json::Value;

/// Runs `f` on a thread inside `ns` (what the agent's controller thread is
/// to its node namespace).
fn in_ns<T: Send>(ns: &TestNs, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = std::fs::File::open(format!("/run/netns/{}", ns.0)).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// `nft -j list ruleset` of `ns` minus the session's sentinel table.
fn ruleset_of(ns: &TestNs) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-j", "list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Value = serde_json::from_slice(&out.stdout).expect("json");
    if let Some(a) = v.get_mut("nftables").and_then(Value::as_array_mut) {
        a.retain(|o| {
            o.get("metainfo").is_none()
                && [
                    o.get("table"),
                    o.get("chain"),
                    o.get("set"),
                    o.get("map"),
                    o.get("rule"),
                ]
                .into_iter()
                .flatten()
                .all(|b| {
                    b.get("name")
                        .or_else(|| b.get("table"))
                        .and_then(Value::as_str)
                        != Some("margay_sync")
                })
        });
        for o in a.iter_mut() {
            if let Some(m) = o
                .as_object_mut()
                .and_then(|m| m.values_mut().next())
                .and_then(Value::as_object_mut)
            {
                m.remove("handle");
                if let Some(Value::Array(e)) = m.get_mut("elem") {
                    e.sort_by_key(|x| x.to_string());
                }
            }
        }
    }
    v
}

#[test]
fn native_element_batches_match_what_nft_does() {
    use super::FastSink;
    use super::nfnl::{Declarations, NfSocket, encode};
    let Some(native) = TestNs::new("nat") else {
        return;
    };
    let Some(by_nft) = TestNs::new("natref") else {
        return;
    };
    let decl = serde_json::json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": "t"}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "a4", "type": "ipv4_addr"}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "a6", "type": "ipv6_addr"}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "sp4", "type": ["ifname", "ipv4_addr"]}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "sp6", "type": ["ifname", "ipv6_addr"]}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "pp", "type": ["ipv6_addr", "inet_proto", "inet_service"]}}},
        {"add": {"set": {"family": "inet", "table": "t", "name": "svc", "type": "inet_service"}}},
        {"add": {"chain": {"family": "inet", "table": "t", "name": "pi_a"}}},
        {"add": {"chain": {"family": "inet", "table": "t", "name": "pi_b"}}},
        {"add": {"map": {"family": "inet", "table": "t", "name": "vm", "type": "ifname", "map": "verdict"}}},
    ]});
    let el = |verb: &str, set: &str, elem: Value| serde_json::json!({verb: {"element": {"family": "inet", "table": "t", "name": set, "elem": elem}}});
    let steps = [
        serde_json::json!({"nftables": [
            el("add", "a4", serde_json::json!(["198.19.0.1", "198.19.0.2"])),
            el("add", "a6", serde_json::json!(["2001:db8::1"])),
            el("add", "sp4", serde_json::json!([{"concat": ["cali0123456789a", "198.19.0.1"]}, {"concat": ["c", "198.19.0.2"]}])),
            el("add", "sp6", serde_json::json!([{"concat": ["cali0123456789a", "2001:db8::1"]}])),
            el("add", "pp", serde_json::json!([{"concat": ["2001:db8::1", "tcp", 443]}, {"concat": ["2001:db8::2", 17, 53]}])),
            el("add", "svc", serde_json::json!([80, 65535])),
            el("add", "vm", serde_json::json!([["cali0123456789a", {"jump": {"target": "pi_a"}}], ["calib", {"goto": {"target": "pi_b"}}], ["calic", {"drop": null}], ["calid", {"accept": null}]])),
        ]}),
        // Adding what is there is no error (nft's `add`).
        serde_json::json!({"nftables": [el("add", "a4", serde_json::json!(["198.19.0.1"]))]}),
        serde_json::json!({"nftables": [
            el("delete", "a4", serde_json::json!(["198.19.0.2"])),
            el("delete", "sp4", serde_json::json!([{"concat": ["c", "198.19.0.2"]}])),
            el("delete", "vm", serde_json::json!(["calic"])),
            el("delete", "pp", serde_json::json!([{"concat": ["2001:db8::2", "udp", 53]}])),
        ]}),
    ];
    let mut d = Declarations::default();
    d.observe(&decl);
    for ns in [&native, &by_nft] {
        ns.nft().run_json(&decl.to_string(), &[]).expect("declare");
    }
    in_ns(&native, || {
        let mut sock = NfSocket::open().expect("nfnetlink socket");
        for (i, step) in steps.iter().enumerate() {
            let e =
                encode(step, &d, sock.next_seq()).unwrap_or_else(|| panic!("step {i} encodable"));
            sock.apply(&e)
                .unwrap_or_else(|err| panic!("step {i}: {err}"));
        }
        // A delete of an absent element fails the whole transaction.
        let bad = serde_json::json!({"nftables": [
            el("add", "a4", serde_json::json!(["198.19.0.9"])),
            el("delete", "a4", serde_json::json!(["198.19.0.77"])),
        ]});
        let e = encode(&bad, &d, sock.next_seq()).expect("encodable");
        let err = sock.apply(&e).expect_err("refused");
        assert!(err.to_string().contains("No such file"), "{err}");
    });
    for step in &steps {
        by_nft
            .nft()
            .run_json(&step.to_string(), &[])
            .expect("nft step");
    }
    let (n, r) = (ruleset_of(&native), ruleset_of(&by_nft));
    assert_eq!(n, r);
    assert!(n.to_string().contains("cali0123456789a"), "{n}");

    // Through the sink: declarations learned from what it applied; element
    // batches native; the refused batch goes to nft, which says why.
    let Some(sinkns) = TestNs::new("natsink") else {
        return;
    };
    let (native_count, via_nft, err) = in_ns(&sinkns, || {
        let mut sink = FastSink::new(super::NftSession::new());
        let run = |sink: &mut FastSink, v: &Value| {
            let b = policy::Batch {
                items: vec![policy::batch::Item::Raw(v.clone())],
            };
            sink.apply(&b)
        };
        for item in decl["nftables"].as_array().expect("items") {
            run(&mut sink, item).expect("declare");
        }
        for step in &steps {
            let b = policy::Batch {
                items: step["nftables"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .cloned()
                    .map(policy::batch::Item::Raw)
                    .collect(),
            };
            sink.apply(&b).expect("step");
        }
        let err = run(
            &mut sink,
            &el("delete", "a4", serde_json::json!(["198.19.0.77"])),
        )
        .expect_err("refused");
        (sink.native, sink.via_nft, err)
    });
    assert_eq!(native_count, steps.len() as u64);
    assert_eq!(
        via_nft,
        decl["nftables"].as_array().map_or(0, Vec::len) as u64
    );
    assert!(err.to_string().contains("No such file"), "{err}");
    assert_eq!(ruleset_of(&sinkns), r);
}

#[test]
fn fast_sink_stops_going_native_when_nft_takes_what_the_kernel_refused() {
    let Some(ns) = TestNs::new("natoff") else {
        return;
    };
    let cmd = |v: Value| policy::Batch {
        items: vec![policy::batch::Item::Raw(v)],
    };
    let add = |ip: &str| {
        cmd(
            serde_json::json!({"add": {"element": {"family": "inet", "table": "t", "name": "s", "elem": [ip]}}}),
        )
    };
    let (native, via_nft, enabled) = in_ns(&ns, || {
        let mut sink = super::FastSink::new(super::NftSession::new());
        sink.apply(&cmd(
            serde_json::json!({"add": {"table": {"family": "inet", "name": "t"}}}),
        ))
        .expect("table");
        sink.apply(&cmd(serde_json::json!({"add": {"set": {"family": "inet", "table": "t", "name": "s", "type": "ifname"}}})))
            .expect("set");
        // Behind the sink's back the set becomes one of IPv4 addresses: the
        // sink still encodes ifnames, which the kernel refuses; nft applies.
        ns.nft()
            .run_json(
                &serde_json::json!({"nftables": [
                    {"delete": {"set": {"family": "inet", "table": "t", "name": "s"}}},
                    {"add": {"set": {"family": "inet", "table": "t", "name": "s", "type": "ipv4_addr"}}},
                ]})
                .to_string(),
                &[],
            )
            .expect("redeclare");
        assert!(sink.native_enabled());
        sink.apply(&add("198.19.0.1")).expect("nft applies it");
        assert!(!sink.native_enabled());
        sink.apply(&add("198.19.0.2")).expect("through nft");
        (sink.native, sink.via_nft, sink.native_enabled())
    });
    assert_eq!((native, via_nft, enabled), (0, 4, false));
    let listed = ruleset_of(&ns).to_string();
    assert!(
        listed.contains("198.19.0.1") && listed.contains("198.19.0.2"),
        "{listed}"
    );
}

#[test]
fn engine_through_the_fast_sink_ends_where_a_full_rebuild_does() {
    let Some(a) = TestNs::new("fast") else { return };
    let Some(b) = TestNs::new("fastref") else {
        return;
    };
    let xyz = xyz_with_policies();
    let (state, node, native, via_nft) = in_ns(&a, || {
        let mut sink = super::FastSink::new(super::NftSession::new());
        let mut e = Engine::new(xyz.nodes[0].clone());
        e.load(xyz.state.clone());
        assert!(e.commit(&mut sink).expect("initial full").full);
        // Pods come and go, move between selectors; policies change.
        let keys: Vec<PodKey> = xyz.nodes[0].endpoints.keys().cloned().collect();
        for (step, key) in keys.iter().cycle().take(3 * keys.len()).enumerate() {
            if step % 2 == 0 {
                e.remove_endpoint(key);
            } else if let Some(ep) = xyz.nodes[0].endpoints.get(key) {
                e.upsert_endpoint(ep.clone());
            }
            if let Some(mut p) = e.state().pods.get(key).map(|p| policy::PodInfo::clone(p)) {
                p.labels = p.labels.with("pod", ["a", "b", "c", "d"][step % 4]);
                e.upsert_pod(p);
            }
            if step % 9 == 4 {
                let ns = ["x", "y", "z"][step % 3];
                e.upsert_policy(
                    PolicyKey::new(ns, "moving"),
                    policy(
                        ns,
                        "moving",
                        Some("a"),
                        DIRECTIONS[step % 3],
                        &peer_kinds()[step % peer_kinds().len()].1,
                        &port_kinds()[step % port_kinds().len()].1,
                    ),
                );
            }
            let st = e
                .commit(&mut sink)
                .unwrap_or_else(|err| panic!("step {step}: {err:?}"));
            assert!(!st.full, "step {step}: fell back to a full rebuild");
        }
        (
            e.state().clone(),
            e.node().clone(),
            sink.native,
            sink.via_nft,
        )
    });
    assert!(
        native > via_nft,
        "most batches are element-only and go native ({native} native, {via_nft} via nft)"
    );
    assert_table_is_a_full_rebuild(&a, &b, &state, &node);
}
