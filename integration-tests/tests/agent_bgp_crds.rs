//! The agent's routing features configured by CRDs only, against the ToR's
//! BIRD:
//! - BFD: a `BGPPeer` with `bfd: {minRx, minTx, multiplier}` runs a BFD
//!   session; it shows in `margayctl node status`, and when the path is cut
//!   the peer's routes leave the node's kernel FIB within `multiplier ×
//!   interval + 100 ms` (graceful restart, on by default in the agent, does
//!   not keep them: a BFD failure is not a restart);
//! - communities: `BGPConfiguration.communities` + `prefixAdvertisements`
//!   tag the node's pod block (per pool), `BGPPeer.communities` add more for
//!   one peer; BIRD sees them, and `margayctl bgp routes` shows the ones
//!   BIRD sends;
//! - filters: a `BGPFilter` named by a `BGPPeer` drops what it rejects on
//!   import and export, and by default a node passes on only pool and
//!   service networks (it is no transit for a ToR's other routes); the same
//!   filter on a second peer, FRR 8.4 in a namespace of its own, does the
//!   same there (each daemon's routes distinct, so every assertion names
//!   which daemon it is about).

use std::time::{Duration, Instant};

use integration_tests::lab::{self, Bird, Frr, Lab, Netns};
use integration_tests::{cni, k8s};
use node_agent::k8s::crd::{BGPConfiguration, BGPFilter, BGPPeer};

const T: Duration = Duration::from_secs(30);
const ROUTE: &str = "198.19.200.0/24";

fn bird_conf() -> String {
    format!(
        "log stderr all;\nrouter id 198.18.0.1;\nprotocol device {{ scan time 10; }}\n\
         protocol static {{ ipv4; route {ROUTE} blackhole; }}\n\
         protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
         protocol bgp n1 {{\n  local 198.18.0.1 as 64513;\n  neighbor 198.18.0.11 as 64512;\n  direct;\n  \
         hold time 3; keepalive time 1; connect delay time 1; error wait time 1, 2;\n  bfd on;\n  \
         ipv4 {{ import all; export all; }};\n}}\n"
    )
}

fn margayctl(ns: &Netns, args: &[&str]) -> String {
    let bin = lab::workspace_bin("margayctl").expect("margayctl");
    let mut argv = vec![bin.to_str().expect("utf-8")];
    argv.extend_from_slice(args);
    ns.exec(&argv)
        .unwrap_or_else(|e| format!("margayctl failed: {e}"))
}

fn nft(ns: &Netns, script: &str) {
    let out =
        lab::netns::run_raw(ns.command("nft").args(["-f", "-"]), script.as_bytes()).expect("nft");
    assert!(out.status.success(), "nft: {out:?}");
}

fn has_route(ns: &Netns) -> bool {
    ns.ip(&["-4", "route", "show", "proto", "80"])
        .expect("ip")
        .contains(ROUTE)
}

#[test]
fn a_bgppeer_with_bfd_fails_over_within_the_detection_time() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", &bird_conf()).expect("bird");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<BGPConfiguration>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": false}}),
        )
        .await
        .expect("config");
        k8s::apply_json::<BGPPeer>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
                "metadata": {"name": "tor"},
                "spec": {"peerIP": "198.18.0.1", "asNumber": 64513, "holdTime": 3,
                         "bfd": {"minRx": 100, "minTx": 100, "multiplier": 3}}}),
        )
        .await
        .expect("peer");
    })
    .expect("configure");
    let _agent = k8s::start_agent(&lab, "n1", &[]).expect("agent");
    let n1 = &lab.node("n1").expect("n1").ns;

    let status = lab::wait_for("BFD Up in margayctl node status", T, || {
        let s = margayctl(n1, &["node", "status"]);
        Ok(s.lines()
            .any(|l| l.contains("peer-tor") && l.contains("Established") && l.contains(" Up "))
            .then_some(s))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(n1, &["node", "status"])));
    println!("{status}");
    assert!(status.contains("BFD"), "a BFD column: {status}");
    lab::wait_for("BIRD's route in n1's FIB", T, || {
        Ok(has_route(n1).then_some(()))
    })
    .expect("route");
    lab::wait_for("BIRD's BFD session Up", T, || {
        Ok(bird
            .birdc("show bfd sessions")?
            .contains("Up")
            .then_some(()))
    })
    .expect("BIRD BFD up");
    // Let both sides finish their poll sequences (100 ms rates).
    std::thread::sleep(Duration::from_millis(500));

    nft(
        n1,
        "table inet mgcut {\n\
         chain in { type filter hook input priority -300; policy accept; ip saddr 198.18.0.1 drop; }\n\
         chain out { type filter hook output priority -300; policy accept; ip daddr 198.18.0.1 drop; }\n}\n",
    );
    let t0 = Instant::now();
    while has_route(n1) {
        assert!(t0.elapsed() < Duration::from_secs(5), "route stayed");
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = t0.elapsed();
    println!(
        "agent, BGPPeer with BFD 100 ms x 3: route out of the FIB {:.0} ms after the cut (hold time 3 s)",
        took.as_secs_f64() * 1e3
    );
    assert!(
        took <= Duration::from_millis(400),
        "BFD failover {took:?} > 3 x 100 ms + 100 ms"
    );
    nft(n1, "delete table inet mgcut\n");
    lab::wait_for("route back after the path heals", T, || {
        Ok(has_route(n1).then_some(()))
    })
    .expect("route back");
}

#[test]
fn communities_from_crds_reach_bird_and_birds_show_in_margayctl() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let conf = "log stderr all;\nrouter id 198.18.0.1;\nprotocol device { scan time 10; }\n\
        protocol kernel { ipv4 { import none; export where source ~ [RTS_BGP]; }; }\n\
        protocol static { ipv4; route 198.19.200.0/24 blackhole { bgp_community.add((64513,5)); \
        bgp_large_community.add((64513,1,1)); bgp_ext_community.add((rt,64513,3)); }; }\n\
        protocol bgp n1 {\n  local 198.18.0.1 as 64513;\n  neighbor 198.18.0.11 as 64512;\n  direct;\n  \
        hold time 9; keepalive time 3; connect delay time 1; error wait time 1, 2;\n  \
        ipv4 { import all; export all; };\n}\n";
    let bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", conf).expect("bird");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<BGPConfiguration>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"},
                "spec": {"nodeToNodeMeshEnabled": false,
                         "communities": [{"name": "pods", "value": "64512:100"},
                                         {"name": "pods-large", "value": "64512:7:7"}],
                         "prefixAdvertisements": [{"cidr": "198.19.0.0/16",
                             "communities": ["pods", "pods-large", "rt:64512:9"]}]}}),
        )
        .await
        .expect("config");
        k8s::apply_json::<BGPPeer>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
                "metadata": {"name": "tor"},
                "spec": {"peerIP": "198.18.0.1", "asNumber": 64513, "communities": ["64512:300"]}}),
        )
        .await
        .expect("peer");
    })
    .expect("configure");
    let agent = k8s::start_agent(&lab, "n1", &[]).expect("agent");
    let n1 = &lab.node("n1").expect("n1").ns;
    // A pod claims a block of the pool: the node originates it.
    let pod = cni::add_pod(&lab, &agent, "demo", "a", &[], &[]).expect("pod");
    assert!(pod.result.ok, "{:?}", pod.result);
    let v4 = pod.ipv4().expect("v4");
    let block = lab::wait_for("the pod's block at BIRD", T, || {
        let r = bird.birdc("show route protocol n1 all")?;
        Ok(r.contains("BGP.community").then_some(r))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(n1, &["bgp", "routes"])));
    println!("BIRD:\n{block}");
    let net: ipnetwork::IpNetwork = block
        .lines()
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
        .expect("a prefix");
    assert!(net.contains(v4), "the block of {v4}: {block}");
    assert!(
        block.contains("BGP.community: (64512,100) (64512,300)"),
        "{block}"
    );
    assert!(
        block.contains("BGP.large_community: (64512, 7, 7)"),
        "{block}"
    );
    assert!(
        block.contains("BGP.ext_community: (rt, 64512, 9)"),
        "{block}"
    );

    // Both BIRD's route and our own block: the routes section of /status
    // can show the one before the other.
    let routes = lab::wait_for("BIRD's route and ours in margayctl bgp routes", T, || {
        let s = margayctl(n1, &["bgp", "routes"]);
        Ok((s.contains("198.19.200.0/24") && s.lines().any(|l| l.contains("local"))).then_some(s))
    })
    .expect("margayctl bgp routes");
    println!("{routes}");
    let line = routes
        .lines()
        .find(|l| l.contains("198.19.200.0/24"))
        .expect("line");
    assert!(
        line.starts_with('*')
            && line.contains("198.18.0.1")
            && line.contains("peer-tor")
            && line.contains("64513 i")
            && line.ends_with("64513:5 64513:1:1 rt:64513:3"),
        "{line}"
    );
    let ours = routes
        .lines()
        .find(|l| l.contains("local"))
        .expect("our block");
    assert!(
        ours.ends_with("64512:100 64512:7:7 rt:64512:9"),
        "per-pool communities on our block, not the per-peer one: {ours}"
    );
}

/// FRR for the filter test: n1's eBGP peer in AS 64514, originating one
/// route in the pools (accepted), one the filter rejects on import and one
/// outside every pool.
fn frr_filter_conf() -> String {
    "frr defaults traditional\nhostname frr\nlog stdout informational\n!\n\
     router bgp 64514\n bgp router-id 198.18.0.13\n no bgp ebgp-requires-policy\n \
     no bgp network import-check\n timers bgp 3 9\n \
     neighbor 198.18.0.11 remote-as 64512\n neighbor 198.18.0.11 timers connect 1\n !\n \
     address-family ipv4 unicast\n  network 198.19.202.0/24\n  network 198.19.203.0/24\n  \
     network 198.18.78.0/24\n exit-address-family\n!\n"
        .to_string()
}

/// The prefixes in FRR's IPv4 BGP table.
fn frr_table(frr: &Frr) -> Vec<String> {
    let text = frr.vtysh("show bgp ipv4 unicast json").expect("vtysh");
    let v: serde_json::Value = serde_json::from_str(&text).expect("FRR's JSON");
    v["routes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn bgp_filters_from_crds_and_the_default_export() {
    integration_tests::require_root!();
    let mut lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let conf = "log stderr all;\nrouter id 198.18.0.1;\nprotocol device { scan time 10; }\n\
        protocol kernel { ipv4 { import none; export where source ~ [RTS_BGP]; }; }\n\
        protocol static { ipv4; route 198.19.200.0/24 blackhole; route 198.19.201.0/24 blackhole; \
        route 198.18.77.0/24 blackhole; }\n\
        protocol bgp n1 {\n  local 198.18.0.1 as 64513;\n  neighbor 198.18.0.11 as 64512;\n  direct;\n  \
        hold time 9; keepalive time 3; connect delay time 1; error wait time 1, 2;\n  \
        ipv4 { import all; export all; };\n}\n";
    let bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", conf).expect("bird");
    // Node objects for n1 and n2 only; n3 is FRR's namespace, no node (the
    // mesh is on: a Node there would be meshed with).
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    lab.add_node().expect("FRR's namespace");
    let frr_ns = &lab.node("n3").expect("n3").ns;
    let frr = Frr::start(frr_ns, lab.run_dir(), "frr", &frr_filter_conf()).expect("frr");
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<BGPConfiguration>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"},
                "spec": {"serviceClusterIPs": [{"cidr": "198.19.250.0/24"}, {"cidr": "198.19.251.0/24"}]}}),
        )
        .await
        .expect("config");
        k8s::apply_json::<BGPFilter>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPFilter",
                "metadata": {"name": "edge"},
                "spec": {"importV4": [{"action": "Reject", "matchOperator": "Equal", "cidr": "198.19.201.0/24"},
                                      {"action": "Reject", "matchOperator": "Equal", "cidr": "198.19.203.0/24"}],
                         "exportV4": [{"action": "Reject", "matchOperator": "Equal", "cidr": "198.19.251.0/24"}]}}),
        )
        .await
        .expect("filter");
        // Only n1 peers with BIRD and FRR; n2 hears of the world through
        // the mesh.
        for (name, ip, asn) in [("tor", "198.18.0.1", 64513), ("frr", "198.18.0.13", 64514)] {
            k8s::apply_json::<BGPPeer>(
                &c,
                serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
                    "metadata": {"name": name},
                    "spec": {"node": "n1", "peerIP": ip, "asNumber": asn, "filters": ["edge"]}}),
            )
            .await
            .expect("peer");
        }
    })
    .expect("configure");
    let _a1 = k8s::start_agent(&lab, "n1", &[]).expect("agent n1");
    let _a2 = k8s::start_agent(&lab, "n2", &[]).expect("agent n2");
    let n1 = &lab.node("n1").expect("n1").ns;
    let n2 = &lab.node("n2").expect("n2").ns;
    let routes = |ns: &Netns| ns.ip(&["-4", "route", "show", "proto", "80"]).expect("ip");

    // Import: 201 (BIRD) and 203 (FRR) refused at n1; 200 and 202 and the
    // outside 198.18.77.0/24 (BIRD) and 198.18.78.0/24 (FRR) taken.
    let want_n1 = [
        "198.19.200.0/24 via 198.18.0.1",
        "198.18.77.0/24 via 198.18.0.1",
        "198.19.202.0/24 via 198.18.0.13",
        "198.18.78.0/24 via 198.18.0.13",
    ];
    lab::wait_for("BIRD's and FRR's routes at n1", T, || {
        let r = routes(n1);
        Ok(want_n1.iter().all(|w| r.contains(w)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(n1, &["bgp", "routes"])));
    // Export: both get the service range 250, not 251; and, by the default
    // export, each other's pool-range routes (n1 passes them on) but not
    // each other's routes outside every pool.
    lab::wait_for("198.19.250.0/24 and FRR's 202 at BIRD", T, || {
        let r = bird.birdc("show route")?;
        Ok((r.contains("198.19.250.0/24") && r.contains("198.19.202.0/24")).then_some(()))
    })
    .expect("service range at BIRD");
    lab::wait_for("198.19.250.0/24 and BIRD's 200 at FRR", T, || {
        let t = frr_table(&frr);
        Ok(
            (t.iter().any(|p| p == "198.19.250.0/24") && t.iter().any(|p| p == "198.19.200.0/24"))
                .then_some(()),
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{:?}", frr_table(&frr)));
    // Default export: n2 learns the pool-range routes through n1, not the
    // routes outside every pool.
    lab::wait_for("198.19.200.0/24 and 202 at n2 over the mesh", T, || {
        let r = routes(n2);
        Ok((r.contains("198.19.200.0/24") && r.contains("198.19.202.0/24")).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(n2, &["bgp", "routes"])));
    // Everything above came in the same flushes; a straggler gets a second.
    std::thread::sleep(Duration::from_secs(1));
    let at_n1 = routes(n1);
    assert!(
        !at_n1.contains("198.19.201.0/24") && !at_n1.contains("198.19.203.0/24"),
        "{at_n1}"
    );
    let at_bird = bird.birdc("show route").expect("birdc");
    assert!(
        !at_bird.contains("198.19.251.0/24") && !at_bird.contains("198.18.78.0/24"),
        "{at_bird}"
    );
    let at_frr = frr_table(&frr);
    println!("FRR's table: {at_frr:?}");
    for p in ["198.19.251.0/24", "198.18.77.0/24", "198.19.201.0/24"] {
        assert!(!at_frr.iter().any(|x| x == p), "{p} at FRR: {at_frr:?}");
    }
    let at_n2 = routes(n2);
    assert!(
        !at_n2.contains("198.18.77.0/24") && !at_n2.contains("198.18.78.0/24"),
        "{at_n2}"
    );
    let shown = margayctl(n1, &["bgp", "routes"]);
    assert!(
        shown.contains("198.18.77.0/24")
            && shown.contains("198.18.78.0/24")
            && !shown.contains("198.19.201.0/24")
            && !shown.contains("198.19.203.0/24"),
        "{shown}"
    );
}
