//! VXLAN (`IPPool.spec.vxlanMode`) end to end, in a lab with two underlay
//! subnets: n1 and n2 share the ToR's `br0` (198.18.0.0/24), n3 sits one
//! routed hop away behind `br1` (198.18.1.0/24). The ToR routes between
//! them and speaks no BGP; the agents run with the node-to-node mesh off
//! and no peers, so no BGP route exists anywhere: every pod route comes
//! from the overlay.
//!
//! - `Always`: pod traffic between every pair of nodes is encapsulated (the
//!   `vxlan.margay` / `vxlan-v6.margay` packet counters of sender and
//!   receiver move), both families;
//! - `CrossSubnet`: n1 → n2 is routed plainly via n2's underlay address (the
//!   tunnel counters stand still), n1 → n3 still goes through the tunnel;
//! - a Node removed from the API: its FDB entry, neighbour and routes go;
//! - `Never`: the devices, their entries, the overlay routes and the tunnel
//!   annotations and addresses go; back to `Always`, the same pods talk
//!   again (no pod restart);
//! - the pods' MTU is the underlay's minus 50, and a full-size packet with
//!   DF set crosses the tunnel.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use integration_tests::cni::{self, WiredPod};
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{self, Daemon, Lab, Netns, Proto};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use node_agent::k8s::crd::{BGPConfiguration, IPPool};

const PORT: u16 = 8080;
const V4_POOL: (&str, &str) = ("v4", "198.19.0.0/16");
const V6_POOL: (&str, &str) = ("v6", "2001:db8:100::/48");

fn set_mode(lab: &Lab, pools: &[&str], mode: &str) {
    let pools: Vec<String> = pools.iter().map(|p| p.to_string()).collect();
    let mode = mode.to_string();
    k8s::with_client(lab.tor(), move |c| async move {
        for p in pools {
            Api::<IPPool>::all(c.clone())
                .patch(
                    &p,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"vxlanMode": mode}})),
                )
                .await
                .expect("patch pool");
        }
    })
    .expect("client");
}

/// The cluster: CRDs, Nodes, the pools in `mode`, mesh off, agents.
fn cluster(lab: &Lab, pools: &[(&str, &str)], mode: &str) -> Vec<Agent> {
    k8s::bootstrap(lab, pools).expect("bootstrap");
    let names: Vec<&str> = pools.iter().map(|(n, _)| *n).collect();
    set_mode(lab, &names, mode);
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<BGPConfiguration>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": false}}),
        )
        .await
        .expect("bgp config");
    })
    .expect("client");
    lab.nodes()
        .iter()
        // A quick leak GC: a removed node's tunnel address goes in the test.
        .map(|n| k8s::start_agent(lab, &n.name, &["--ipam-gc-interval", "500ms"]).expect("agent"))
        .collect()
}

/// A pod on `agent`'s node with a probe server on [`PORT`].
fn pod(lab: &Lab, agent: &Agent, name: &str) -> (WiredPod, Daemon) {
    let p = cni::add_pod(lab, agent, "demo", name, &[], &[]).expect("pod");
    assert!(p.result.ok, "ADD {name}: {:?}", p.result);
    let server = lab.serve(&p.ns, name, &[PORT], &[]).expect("server");
    (p, server)
}

fn reaches(from: &Netns, to: IpAddr) -> bool {
    lab::probe(
        from,
        SocketAddr::new(to, PORT),
        Proto::Tcp,
        Duration::from_millis(700),
    )
    .reached()
}

fn must_reach(from: &WiredPod, to: IpAddr, what: &str) {
    let o = lab::wait_reachable(
        &from.ns,
        SocketAddr::new(to, PORT),
        Proto::Tcp,
        Duration::from_secs(15),
    );
    assert!(o.reached(), "{what}: {to} not reached: {o:?}");
}

/// Packets through a device: (tx, rx); (0, 0) when it does not exist.
fn packets(node: &Netns, dev: &str) -> (u64, u64) {
    node.link_stats(dev)
        .map_or((0, 0), |s| (s.tx_packets, s.rx_packets))
}

fn device(v6: bool) -> &'static str {
    if v6 {
        "vxlan-v6.margay"
    } else {
        "vxlan.margay"
    }
}

/// Runs 5 probes `from` → `to` and returns how many packets the tunnel
/// devices of `src` (tx) and `dst` (rx) counted meanwhile.
fn tunnel_packets_during(from: &WiredPod, to: IpAddr, src: &Netns, dst: &Netns) -> (u64, u64) {
    let dev = device(to.is_ipv6());
    let (tx0, _) = packets(src, dev);
    let (_, rx0) = packets(dst, dev);
    for _ in 0..5 {
        assert!(reaches(&from.ns, to), "{to} stopped answering");
    }
    let (tx1, _) = packets(src, dev);
    let (_, rx1) = packets(dst, dev);
    (tx1.saturating_sub(tx0), rx1.saturating_sub(rx0))
}

/// The device `node` routes `dst` through.
fn route_dev(node: &Netns, dst: IpAddr) -> String {
    node.route_dev(dst).unwrap_or_default()
}

fn until(what: &str, mut ok: impl FnMut() -> bool) {
    lab::wait_for(what, Duration::from_secs(15), || Ok(ok().then_some(())))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn node_annotations(lab: &Lab, node: &str) -> std::collections::BTreeMap<String, String> {
    let node = node.to_string();
    k8s::with_client(lab.tor(), move |c| async move {
        Api::<Node>::all(c)
            .get(&node)
            .await
            .expect("node")
            .metadata
            .annotations
            .unwrap_or_default()
    })
    .expect("client")
}

/// Every route in `node`'s main table whose protocol is `proto`, both
/// families.
fn routes_of_proto(node: &Netns, proto: &str) -> String {
    let v4 = node
        .ip(&["route", "show", "proto", proto])
        .unwrap_or_default();
    let v6 = node
        .ip(&["-6", "route", "show", "proto", proto])
        .unwrap_or_default();
    format!("{v4}{v6}")
}

fn fdb(node: &Netns, dev: &str) -> String {
    node.exec(&["bridge", "fdb", "show", "dev", dev])
        .unwrap_or_default()
}

fn neigh(node: &Netns, dev: &str) -> String {
    node.ip(&["neigh", "show", "dev", dev]).unwrap_or_default()
}

#[test]
fn always_cross_subnet_and_never_across_a_router_without_bgp() {
    integration_tests::require_root!();
    let lab = Lab::builder().subnets(&[0, 0, 1]).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let mut agents = cluster(&lab, &[V4_POOL, V6_POOL], "Always");
    let (a, _sa) = pod(&lab, &agents[0], "a");
    let (b, _sb) = pod(&lab, &agents[1], "b");
    let (c, _sc) = pod(&lab, &agents[2], "c");
    let ns = |n: &str| &lab.node(n).expect("node").ns;
    let (n1, n2, n3) = (ns("n1"), ns("n2"), ns("n3"));
    let ip = |p: &WiredPod, v6: bool| {
        if v6 {
            p.ipv6().expect("v6")
        } else {
            p.ipv4().expect("v4")
        }
    };

    // Always: every pair talks, both families, through the tunnel.
    for v6 in [false, true] {
        must_reach(&a, ip(&b, v6), "a -> b (Always)");
        must_reach(&a, ip(&c, v6), "a -> c (Always)");
        must_reach(&c, ip(&b, v6), "c -> b (Always)");
        for (to, dst, what) in [(&b, n2, "a -> b"), (&c, n3, "a -> c")] {
            let (tx, rx) = tunnel_packets_during(&a, ip(to, v6), n1, dst);
            assert!(
                tx >= 5 && rx >= 5,
                "{what} (v6: {v6}) not encapsulated: {} tx {tx} on n1, rx {rx} on the peer",
                device(v6)
            );
        }
        assert_eq!(route_dev(n1, ip(&b, v6)), device(v6));
    }
    // Without a single BGP route: none on the nodes, none on the ToR.
    for n in [n1, n2, n3] {
        assert_eq!(routes_of_proto(n, "80"), "", "a BGP route on {}", n.name());
    }
    let tor_routes = format!(
        "{}{}",
        lab.tor().ip(&["route"]).unwrap_or_default(),
        lab.tor().ip(&["-6", "route"]).unwrap_or_default()
    );
    assert!(
        !tor_routes.contains("198.19.") && !tor_routes.contains("2001:db8:100:"),
        "the ToR knows pod routes:\n{tor_routes}"
    );
    // Static entries: n1 knows both VTEPs, by their published MACs.
    let ann3 = node_annotations(&lab, "n3");
    let n3_tunnel = ann3["margay.dev/ipv4-vxlan-tunnel-addr"].clone();
    let n3_mac = ann3["margay.dev/ipv4-vxlan-tunnel-mac"].clone();
    let f = fdb(n1, "vxlan.margay");
    assert!(
        f.contains(&format!("{n3_mac} dst 198.18.1.13")) && f.contains("dst 198.18.0.12"),
        "{f}"
    );
    let nb = neigh(n1, "vxlan.margay");
    assert!(
        nb.contains(&format!("{n3_tunnel} lladdr {n3_mac} PERMANENT")),
        "{nb}"
    );
    assert!(
        fdb(n1, "vxlan-v6.margay").contains("dst 2001:db8:ffff:1::d"),
        "{}",
        fdb(n1, "vxlan-v6.margay")
    );

    // CrossSubnet: n1 -> n2 plain, n1 -> n3 encapsulated.
    set_mode(&lab, &["v4", "v6"], "CrossSubnet");
    for v6 in [false, true] {
        until("n1 routes b's block over the underlay", || {
            route_dev(n1, ip(&b, v6)) == "eth0"
        });
        assert_eq!(route_dev(n1, ip(&c, v6)), device(v6));
        must_reach(&a, ip(&b, v6), "a -> b (CrossSubnet)");
        let (tx, rx) = tunnel_packets_during(&a, ip(&b, v6), n1, n2);
        assert_eq!((tx, rx), (0, 0), "a -> b (v6: {v6}) encapsulated");
        let (tx, rx) = tunnel_packets_during(&a, ip(&c, v6), n1, n3);
        assert!(
            tx >= 5 && rx >= 5,
            "a -> c (v6: {v6}) not encapsulated: tx {tx}, rx {rx}"
        );
    }
    let plain = n1.ip(&["route", "show", "proto", "82"]).unwrap_or_default();
    assert!(plain.contains("via 198.18.0.12 dev eth0"), "{plain}");

    // n3 leaves the cluster: its entries and routes go from n1.
    drop(agents.remove(2));
    k8s::with_client(lab.tor(), |c| async move {
        Api::<Node>::all(c)
            .delete("n3", &DeleteParams::default())
            .await
            .expect("delete n3")
    })
    .expect("client");
    until("n3's FDB entry, neighbour and routes gone from n1", || {
        !fdb(n1, "vxlan.margay").contains("198.18.1.13")
            && !fdb(n1, "vxlan-v6.margay").contains("2001:db8:ffff:1::d")
            && !neigh(n1, "vxlan.margay").contains(&n3_tunnel)
            && !routes_of_proto(n1, "82").contains(&n3_tunnel)
    });
    assert!(
        route_dev(n1, ip(&c, false)) != "vxlan.margay",
        "c still routed into the tunnel"
    );
    assert!(
        fdb(n1, "vxlan.margay").contains("dst 198.18.0.12"),
        "n2's entry went too"
    );
    until(
        "n3's tunnel addresses released by the others' leak GC",
        || {
            !k8s::handles(&lab)
                .unwrap_or_default()
                .iter()
                .any(|h| h.ends_with("tunnel-addr-n3"))
        },
    );

    // Never: nothing of the overlay is left.
    set_mode(&lab, &["v4", "v6"], "Always");
    until("n1 tunnels to n2 again", || {
        route_dev(n1, ip(&b, false)) == "vxlan.margay"
    });
    set_mode(&lab, &["v4", "v6"], "Never");
    until("devices and overlay routes gone", || {
        [n1, n2].iter().all(|n| {
            n.ip(&["link", "show", "dev", "vxlan.margay"]).is_err()
                && n.ip(&["link", "show", "dev", "vxlan-v6.margay"]).is_err()
                && routes_of_proto(n, "82").is_empty()
        })
    });
    until("tunnel annotations and addresses gone", || {
        !node_annotations(&lab, "n1")
            .keys()
            .any(|k| k.contains("vxlan"))
            && !k8s::handles(&lab)
                .unwrap_or_default()
                .iter()
                .any(|h| h.contains("tunnel-addr-n1"))
    });
    // ... and back: the same pods talk again, without a restart.
    set_mode(&lab, &["v4", "v6"], "Always");
    must_reach(&a, ip(&b, false), "a -> b (Always again)");
    must_reach(&a, ip(&b, true), "a -> b v6 (Always again)");
}

#[test]
fn pods_get_the_underlay_mtu_minus_the_vxlan_overhead() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    // A 1400-byte underlay: the pods must get 1350, not a constant.
    for n in lab.nodes() {
        n.ns.ip(&["link", "set", "eth0", "mtu", "1400"])
            .expect("mtu");
        lab.tor()
            .ip(&["link", "set", &n.name, "mtu", "1400"])
            .expect("mtu");
    }
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let agents = cluster(&lab, &[V4_POOL], "Always");
    let (a, _sa) = pod(&lab, &agents[0], "a");
    let (b, _sb) = pod(&lab, &agents[1], "b");
    let n1 = &lab.node("n1").expect("n1").ns;
    let mtu = |ns: &Netns, dev: &str| ns.link_stats(dev).map(|s| s.mtu);
    until("vxlan.margay on n1", || {
        n1.ip(&["link", "show", "dev", "vxlan.margay"]).is_ok()
    });
    assert_eq!(mtu(n1, "vxlan.margay"), Some(1350));
    assert_eq!(mtu(&a.ns, "eth0"), Some(1350), "pod side");
    let host_if = lab::host_ifname("demo", "a");
    assert_eq!(mtu(n1, &host_if), Some(1350), "host side");
    let b4 = b.ipv4().expect("b v4").to_string();
    must_reach(&a, b.ipv4().expect("b v4"), "a -> b");
    // A full-size packet with DF set crosses the tunnel (1350 - 28 bytes
    // of ICMP payload); one byte more does not leave the pod.
    let ping = |size: u32| {
        a.ns.exec(&[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            &b4,
        ])
    };
    let full = ping(1322);
    assert!(
        full.is_ok(),
        "1350-byte DF ping across the tunnel: {full:?}"
    );
    assert!(ping(1323).is_err(), "a 1351-byte DF packet left the pod");
}

/// How many times `node`'s agent changed the kernel for the overlay.
fn overlay_writes(lab: &Lab, node: &str) -> usize {
    std::fs::read_to_string(lab.run_dir().join(format!("{node}-agent.log")))
        .unwrap_or_default()
        .matches("overlay synced")
        .count()
}

#[test]
fn vxlan_takes_over_from_bgp_routes_and_rewrites_nothing_once_converged() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    // The node-to-node mesh on (no BGPConfiguration): BGP routes the pods
    // under Never and keeps running beside the overlay. The kernel is
    // re-read every 200 ms.
    k8s::bootstrap(&lab, &[V4_POOL, V6_POOL]).expect("bootstrap");
    let agents: Vec<Agent> = ["n1", "n2"]
        .iter()
        .map(|n| k8s::start_agent(&lab, n, &["--reconcile-interval", "200ms"]).expect("agent"))
        .collect();
    let (a, _sa) = pod(&lab, &agents[0], "a");
    let (b, _sb) = pod(&lab, &agents[1], "b");
    let n1 = &lab.node("n1").expect("n1").ns;
    for b_ip in [b.ipv4().expect("v4"), b.ipv6().expect("v6")] {
        must_reach(&a, b_ip, "a -> b over BGP routes");
        assert_eq!(route_dev(n1, b_ip), "eth0");
    }
    assert!(routes_of_proto(n1, "80").contains("via 2001:db8:ffff::c"));
    set_mode(&lab, &["v4", "v6"], "Always");
    for b_ip in [b.ipv4().expect("v4"), b.ipv6().expect("v6")] {
        let dev = device(b_ip.is_ipv6());
        until(&format!("n1 routes {b_ip} into {dev}"), || {
            route_dev(n1, b_ip) == dev
        });
        must_reach(&a, b_ip, "a -> b through the tunnel");
        let (tx, rx) = tunnel_packets_during(&a, b_ip, n1, &lab.node("n2").expect("n2").ns);
        assert!(tx >= 5 && rx >= 5, "{b_ip}: tx {tx} rx {rx}");
    }
    // BGP still runs: its routes stay, below the overlay's.
    let bgp = routes_of_proto(n1, "80");
    assert!(
        bgp.contains("via 198.18.0.12") && bgp.contains("via 2001:db8:ffff::c"),
        "{bgp}"
    );
    // Converged: five more kernel re-reads change nothing.
    std::thread::sleep(Duration::from_millis(300));
    let before = overlay_writes(&lab, "n1");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        overlay_writes(&lab, "n1"),
        before,
        "the overlay rewrote the kernel with nothing to change"
    );
    assert!(before > 0, "no overlay sync was logged at all");

    // A restarted agent finds everything right and keeps it: the tunnel
    // carries traffic while it is down, and it changes nothing when back.
    let mut agents = agents;
    drop(agents.remove(0));
    let b4 = b.ipv4().expect("v4");
    assert!(reaches(&a.ns, b4), "the tunnel went with the agent");
    agents.insert(
        0,
        k8s::start_agent(&lab, "n1", &["--reconcile-interval", "200ms"]).expect("agent"),
    );
    let log = lab.run_dir().join("n1-agent.log");
    until("the restarted agent's first overlay pass", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("pod MTU")
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        overlay_writes(&lab, "n1"),
        0,
        "the restarted agent rewrote a correct overlay"
    );
    must_reach(&a, b4, "a -> b after the agent restart");
}
