//! A node as route reflector, configured as in Calico: the mesh is off, n1
//! carries a cluster ID (annotation `margay.dev/route-reflector-cluster-id`)
//! and the label `route-reflector: "true"`, and one `BGPPeer` for every
//! node selects the reflectors. n2 and n3 then peer only with n1 (no
//! session between them), n1 reflects each client's block to the other
//! with the next hop kept (RFC 4456: ORIGINATOR_ID and CLUSTER_LIST shown
//! by `margayctl bgp routes`), and pods on n2 and n3 reach each other.
//! When the reflector's agent is killed and restarted, graceful restart
//! keeps the clients forwarding: a ping stream between them loses nothing.

use std::process::Stdio;
use std::time::Duration;

use integration_tests::lab::{self, Lab, Netns};
use integration_tests::{cni, k8s};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use nix::sys::signal::Signal;
use node_agent::k8s::crd::{BGPConfiguration, BGPPeer};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn margayctl(ns: &Netns, args: &[&str]) -> String {
    let bin = lab::workspace_bin("margayctl").expect("margayctl");
    let mut argv = vec![bin.to_str().expect("utf-8")];
    argv.extend_from_slice(args);
    ns.exec(&argv)
        .unwrap_or_else(|e| format!("margayctl failed: {e}"))
}

/// The BGP sessions in `margayctl node status`: (name, kind, state).
fn sessions(ns: &Netns) -> Vec<(String, String, String)> {
    margayctl(ns, &["node", "status"])
        .lines()
        .filter(|l| l.trim_start().starts_with("peer-") || l.trim_start().starts_with("mesh-"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let kind = w
                .iter()
                .find(|x| ["rr-client", "selector", "node-mesh"].contains(x))
                .unwrap_or(&"?");
            let state = if l.contains("Established") {
                "Established"
            } else {
                "down"
            };
            (w[0].to_string(), kind.to_string(), state.to_string())
        })
        .collect()
}

/// The kernel route (BGP, protocol 80) for the network containing `ip`.
fn bgp_route_to(ns: &Netns, ip: std::net::IpAddr) -> Option<String> {
    let out = ns
        .ip(&["-4", "route", "show", "proto", "80"])
        .expect("ip route");
    out.lines()
        .find(|l| {
            l.split_whitespace()
                .next()
                .and_then(|n| n.parse::<ipnetwork::IpNetwork>().ok())
                .is_some_and(|n| n.contains(ip))
        })
        .map(str::to_string)
}

#[test]
fn a_node_reflects_routes_between_clients_without_a_mesh() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(3).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<BGPConfiguration>(
            &c,
            json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": false}}),
        )
        .await?;
        k8s::apply_json::<BGPPeer>(
            &c,
            json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
                "metadata": {"name": "rrs"},
                "spec": {"peerSelector": {"matchLabels": {"route-reflector": "true"}}}}),
        )
        .await?;
        Api::<Node>::all(c)
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {
                    "labels": {"route-reflector": "true"},
                    "annotations": {"margay.dev/route-reflector-cluster-id": "198.18.0.100"}}})),
            )
            .await
            .map(drop)
    })
    .expect("client")
    .expect("configure");
    let mut agents: Vec<k8s::Agent> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| k8s::start_agent(&lab, n, &[]).expect("agent"))
        .collect();
    let pods: Vec<cni::WiredPod> = agents
        .iter()
        .map(|a| {
            let p = cni::add_pod(&lab, a, "demo", &format!("p-{}", a.node), &[], &[]).expect("pod");
            assert!(p.result.ok, "ADD on {}: {:?}", a.node, p.result);
            p
        })
        .collect();
    let ip = |i: usize| pods[i].ipv4().expect("v4");
    let node = |name: &str| &lab.node(name).expect("node").ns;

    // Each client's block at the other, next hop the originating client.
    for (at, to, via) in [("n2", 2, "198.18.0.13"), ("n3", 1, "198.18.0.12")] {
        let r = lab::wait_for(&format!("{at}: route to pod {}", ip(to)), T, || {
            Ok(bgp_route_to(node(at), ip(to)).filter(|r| r.contains(via)))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(node(at), &["bgp", "routes"])));
        println!("{at}: {r}");
    }
    for to in [1, 2] {
        assert!(bgp_route_to(node("n1"), ip(to)).is_some(), "n1 to pod {to}");
    }
    // Sessions (the status is refreshed every 250 ms): the reflector has two
    // clients; each client one session, to the reflector.
    let est = |name: &str, kind: &str| {
        (
            name.to_string(),
            kind.to_string(),
            "Established".to_string(),
        )
    };
    for (n, want) in [
        (
            "n1",
            vec![
                est("peer-rrs-n2", "rr-client"),
                est("peer-rrs-n3", "rr-client"),
            ],
        ),
        ("n2", vec![est("peer-rrs-n1", "selector")]),
        ("n3", vec![est("peer-rrs-n1", "selector")]),
    ] {
        lab::wait_for(&format!("{n}'s sessions"), T, || {
            Ok((sessions(node(n)) == want).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(node(n), &["node", "status"])));
    }
    // RFC 4456 attributes on the reflected path, as the client sees them.
    let routes = margayctl(node("n2"), &["bgp", "routes"]);
    println!("n2:\n{routes}");
    assert!(
        routes
            .lines()
            .any(|l| l.contains("peer-rrs-n1") && l.contains("198.18.0.13 via 198.18.0.100")),
        "originator n3, cluster 198.18.0.100: {routes}"
    );

    // Pods on the two clients reach each other.
    for (from, to) in [(1, 2), (2, 1)] {
        lab::wait_for(&format!("ping pod {} -> {}", ip(from), ip(to)), T, || {
            Ok(pods[from]
                .ns
                .exec(&["ping", "-c1", "-W1", &ip(to).to_string()])
                .ok())
        })
        .expect("ping");
    }

    // The reflector's agent dies and comes back; the clients keep
    // forwarding on the routes graceful restart keeps.
    let ping = pods[1]
        .ns
        .command("ping")
        .args(["-n", "-q", "-i", "0.01", "-c", "300", "-W", "1"])
        .arg(ip(2).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(500));
    agents[0]
        .daemon
        .signal(Signal::SIGKILL)
        .expect("kill n1's agent");
    agents[0].daemon.wait_exit(Duration::from_secs(5));
    // The client saw its only session go, and keeps the reflected route.
    lab::wait_for("n2's session to the reflector down", T, || {
        Ok(sessions(node("n2"))
            .iter()
            .all(|s| s.2 != "Established")
            .then_some(()))
    })
    .expect("session down");
    assert!(
        bgp_route_to(node("n2"), ip(2)).is_some_and(|r| r.contains("198.18.0.13")),
        "graceful restart keeps the route: {}",
        margayctl(node("n2"), &["bgp", "routes"])
    );
    agents[0] = k8s::start_agent(&lab, "n1", &[]).expect("n1 again");
    lab::wait_for("n1's clients back", T, || {
        let s = sessions(node("n1"));
        Ok((s.len() == 2 && s.iter().all(|x| x.2 == "Established")).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(node("n1"), &["node", "status"])));
    let out = ping.wait_with_output().expect("ping result");
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    println!("across the reflector's restart: {}", summary.trim());
    assert!(
        summary.contains("300 packets transmitted, 300 received"),
        "packets lost while the reflector restarted:\n{summary}"
    );
    // After the restart, reflection works again: still the route via n3.
    lab::wait_for("n2's route to n3's pod after the restart", T, || {
        let r = margayctl(node("n2"), &["bgp", "routes"]);
        Ok(r.lines()
            .any(|l| {
                l.starts_with("* ") && l.contains("peer-rrs-n1") && l.contains("198.18.0.13 via")
            })
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(node("n2"), &["bgp", "routes"])));
    assert!(
        bgp_route_to(node("n2"), ip(2)).is_some_and(|r| r.contains("198.18.0.13")),
        "{:?}",
        bgp_route_to(node("n2"), ip(2))
    );
}
