//! A node as route reflector for five clients, configured as in Calico:
//! the mesh is off, n1 carries a cluster ID (`routeReflectorClusterID` in
//! its per-node `BGPConfiguration` `node.n1`) and the label
//! `route-reflector: "true"`, and one `BGPPeer` for every node selects the
//! reflectors. The clients n2..n6 then peer only with n1 (no session
//! between them), n1 reflects each client's IPv4 and IPv6 blocks to the
//! others with the next hop kept (RFC 4456: ORIGINATOR_ID and CLUSTER_LIST
//! shown by `margayctl bgp routes`), and pods on every pair of clients reach
//! each other over both families. When the reflector's agent is killed and
//! restarted, graceful restart keeps the clients forwarding: ping streams
//! between two clients (IPv4 and IPv6) lose nothing.
//!
//! Two more clients are real daemons, configured as `BGPPeer`s of n1 with
//! `routeReflectorClient: true` (IPv4): BIRD 2 on the ToR and FRR 8.4 in a
//! namespace of its own. Each receives the node clients' blocks with the
//! next hop kept and the reflector's ORIGINATOR_ID / CLUSTER_LIST, and its
//! own route reaches every node client through the reflector.
//!
//! ```text
//!        BIRD (ToR 198.18.0.1)     FRR (n7 198.18.0.17)      all AS 64512
//!                    └──────┬────────────┘
//!              n1  route reflector, cluster 198.18.0.100
//!        ┌──────┬───────┼───────┬──────┐
//!        n2     n3      n4      n5     n6      (clients, one pod each)
//! ```

use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::lab::{self, Bird, Frr, Lab, Netns};
use integration_tests::pingstream::PingStream;
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
                .find(|x| {
                    [
                        "rr-client",
                        "selector",
                        "node-mesh",
                        "node-specific",
                        "reflector",
                    ]
                    .contains(x)
                })
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
fn bgp_route_to(ns: &Netns, ip: IpAddr) -> Option<String> {
    let fam = if ip.is_ipv4() { "-4" } else { "-6" };
    let out = ns
        .ip(&[fam, "route", "show", "proto", "80"])
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

/// The pod addresses of every ordered pair of `pods` that one ping (in
/// parallel, each waiting up to 1 s) does not reach; the first round that
/// reaches them all returns empty, else the failures after `deadline`.
fn unreachable_pairs(pods: &[(String, cni::WiredPod)], deadline: Duration) -> Vec<String> {
    let mut todo: Vec<(usize, IpAddr)> = Vec::new();
    for (i, _) in pods.iter().enumerate() {
        for (_, to) in pods
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| p)
        {
            todo.extend(
                [to.ipv4(), to.ipv6()]
                    .into_iter()
                    .flatten()
                    .map(|ip| (i, ip)),
            );
        }
    }
    let start = Instant::now();
    loop {
        let children: Vec<_> = todo
            .iter()
            .map(|(from, to)| {
                pods[*from]
                    .1
                    .ns
                    .command("ping")
                    .args(["-n", "-q", "-c1", "-W1", &to.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("ping")
            })
            .collect();
        let ok: Vec<bool> = children
            .into_iter()
            .map(|mut c| c.wait().is_ok_and(|s| s.success()))
            .collect();
        let mut it = ok.into_iter();
        todo.retain(|_| !it.next().unwrap_or(false));
        if todo.is_empty() || start.elapsed() > deadline {
            return todo
                .iter()
                .map(|(from, to)| format!("{} -> {to}", pods[*from].0))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (name, kind, state) of an Established session.
fn est(name: &str, kind: &str) -> (String, String, String) {
    (
        name.to_string(),
        kind.to_string(),
        "Established".to_string(),
    )
}

const CLIENTS: [&str; 5] = ["n2", "n3", "n4", "n5", "n6"];
/// The daemons' own routes (blackholed where they originate).
const BIRD_ROUTE: &str = "198.19.211.0/24";
const FRR_ROUTE: &str = "198.19.210.0/24";

fn bird_conf() -> String {
    format!(
        "log stderr all;\nrouter id 198.18.0.1;\nprotocol device {{ scan time 10; }}\n\
         protocol static {{ ipv4; route {BIRD_ROUTE} blackhole; }}\n\
         protocol bgp reflector {{\n  local 198.18.0.1 as 64512;\n  neighbor 198.18.0.11 as 64512;\n  direct;\n  \
         hold time 9; keepalive time 3; connect delay time 1; error wait time 1, 2;\n  \
         graceful restart on;\n  ipv4 {{ import all; export all; }};\n}}\n"
    )
}

fn frr_conf() -> String {
    format!(
        "frr defaults traditional\nhostname frr\nlog stdout informational\n!\n\
         router bgp 64512\n bgp router-id 198.18.0.17\n no bgp network import-check\n timers bgp 3 9\n \
         neighbor 198.18.0.11 remote-as 64512\n neighbor 198.18.0.11 timers connect 1\n !\n \
         address-family ipv4 unicast\n  network {FRR_ROUTE}\n exit-address-family\n!\n"
    )
}

#[test]
fn a_node_reflects_routes_between_five_clients_without_a_mesh() {
    integration_tests::require_root!();
    let t0 = Instant::now();
    let mut lab = Lab::builder().nodes(6).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(
        &lab,
        &[("v4", "198.19.0.0/16"), ("v6", "2001:db8:100::/48")],
    )
    .expect("bootstrap");
    // n7 is FRR's namespace: no Node object, no agent.
    lab.add_node().expect("FRR's namespace");
    let bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", &bird_conf()).expect("bird");
    let frr_ns = &lab.node("n7").expect("n7").ns;
    let frr = Frr::start(frr_ns, lab.run_dir(), "frr", &frr_conf()).expect("frr");
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<BGPConfiguration>(
            &c,
            json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": false}}),
        )
        .await?;
        k8s::apply_json::<BGPConfiguration>(
            &c,
            json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "node.n1"},
                "spec": {"routeReflectorClusterID": "198.18.0.100"}}),
        )
        .await?;
        k8s::apply_json::<BGPPeer>(
            &c,
            json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
                "metadata": {"name": "rrs"},
                "spec": {"peerSelector": {"matchLabels": {"route-reflector": "true"}}}}),
        )
        .await?;
        for (name, ip) in [("bird", "198.18.0.1"), ("frr", "198.18.0.17")] {
            k8s::apply_json::<BGPPeer>(
                &c,
                json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
                    "metadata": {"name": name},
                    "spec": {"node": "n1", "peerIP": ip, "asNumber": 64512,
                             "routeReflectorClient": true}}),
            )
            .await?;
        }
        Api::<Node>::all(c)
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"route-reflector": "true"}}})),
            )
            .await
            .map(drop)
    })
    .expect("client")
    .expect("configure");
    let mut agents: Vec<k8s::Agent> = lab
        .nodes()
        .iter()
        .take(6)
        .map(|n| k8s::start_agent(&lab, &n.name, &[]).expect("agent"))
        .collect();
    // One dual-stack pod on every client.
    let pods: Vec<(String, cni::WiredPod)> = agents[1..]
        .iter()
        .map(|a| {
            let p = cni::add_pod(&lab, a, "demo", &format!("p-{}", a.node), &[], &[]).expect("pod");
            assert!(p.result.ok, "ADD on {}: {:?}", a.node, p.result);
            assert!(p.ipv4().is_some() && p.ipv6().is_some(), "{:?}", p.result);
            (a.node.clone(), p)
        })
        .collect();
    let node = |name: &str| lab.node(name).expect("node");
    let ips =
        |p: &cni::WiredPod| -> Vec<IpAddr> { [p.ipv4(), p.ipv6()].into_iter().flatten().collect() };
    // Every client has every other client's blocks, next hop the
    // originating client (kept by the reflector), in both families.
    let check_routes = |when: &str| {
        for at in CLIENTS {
            // BIRD's and FRR's routes, reflected, next hop the daemon.
            for (net, via) in [(BIRD_ROUTE, "198.18.0.1"), (FRR_ROUTE, "198.18.0.17")] {
                let ip: IpAddr = net.replace("0/24", "1").parse().expect("ip");
                let via = format!("via {via} ");
                lab::wait_for(&format!("{when}: {at}'s route to {net} {via}"), T, || {
                    Ok(bgp_route_to(&node(at).ns, ip).filter(|r| r.contains(&via)))
                })
                .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(&node(at).ns, &["bgp", "routes"])));
            }
            for (owner, p) in pods.iter().filter(|(o, _)| o != at) {
                let o = node(owner);
                for (ip, via) in ips(p)
                    .into_iter()
                    .zip([IpAddr::V4(o.ipv4), IpAddr::V6(o.ipv6)])
                {
                    let via = format!("via {via} ");
                    lab::wait_for(&format!("{when}: {at}'s route to {ip} {via}"), T, || {
                        Ok(bgp_route_to(&node(at).ns, ip).filter(|r| r.contains(&via)))
                    })
                    .unwrap_or_else(|e| {
                        panic!("{e}\n{}", margayctl(&node(at).ns, &["bgp", "routes"]))
                    });
                }
            }
        }
    };
    check_routes("initially");
    for (_, p) in &pods {
        for ip in ips(p) {
            assert!(bgp_route_to(&node("n1").ns, ip).is_some(), "n1 to {ip}");
        }
    }
    println!(
        "{} client blocks reflected to every client in both families, {:.1} s after the start",
        pods.len(),
        t0.elapsed().as_secs_f64()
    );
    // Sessions (the status is refreshed every 250 ms): the reflector has
    // five clients; each client one session, to the reflector.
    let rr_sessions: Vec<_> = [
        est("peer-bird", "node-specific"),
        est("peer-frr", "node-specific"),
    ]
    .into_iter()
    .chain(
        CLIENTS
            .iter()
            .map(|c| est(&format!("peer-rrs-{c}"), "rr-client")),
    )
    .collect();
    lab::wait_for("n1's seven clients", T, || {
        Ok((sessions(&node("n1").ns) == rr_sessions).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(&node("n1").ns, &["node", "status"])));
    for n in CLIENTS {
        lab::wait_for(&format!("{n}'s one session"), T, || {
            Ok((sessions(&node(n).ns) == [est("peer-rrs-n1", "selector")]).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(&node(n).ns, &["node", "status"])));
    }
    // RFC 4456 attributes on the reflected paths, as a client sees them:
    // n6's blocks at n2, originator n6, cluster list the reflector's ID.
    let routes = margayctl(&node("n2").ns, &["bgp", "routes"]);
    println!("n2:\n{routes}");
    let reflected = routes
        .lines()
        .filter(|l| l.contains("peer-rrs-n1") && l.contains("198.18.0.16 via 198.18.0.100"))
        .count();
    assert_eq!(
        reflected, 2,
        "n6's IPv4 and IPv6 blocks, originator n6, cluster 198.18.0.100: {routes}"
    );
    // The same at BIRD and FRR, clients of the reflector: n6's block, next
    // hop n6, originator n6, cluster 198.18.0.100; and each other's route,
    // originated by the other daemon.
    let n6_pod = pods[4].1.ipv4().expect("v4");
    let at_bird = lab::wait_for("n6's block at BIRD", T, || {
        let r = bird.birdc(&format!("show route for {n6_pod} all"))?;
        Ok(r.contains("BGP.originator_id").then_some(r))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", bird.birdc("show route all").unwrap_or_default()));
    println!("BIRD:\n{at_bird}");
    for want in [
        "via 198.18.0.16 on",
        "BGP.originator_id: 198.18.0.16",
        "BGP.cluster_list: 198.18.0.100",
    ] {
        assert!(at_bird.contains(want), "{want}: {at_bird}");
    }
    let frr_at_bird = bird
        .birdc(&format!("show route {FRR_ROUTE} all"))
        .expect("birdc");
    assert!(
        frr_at_bird.contains("BGP.originator_id: 198.18.0.17")
            && frr_at_bird.contains("via 198.18.0.17 on"),
        "FRR's route at BIRD: {frr_at_bird}"
    );
    let at_frr = lab::wait_for("n6's block at FRR", T, || {
        let r = frr.vtysh(&format!("show bgp ipv4 unicast {n6_pod}"))?;
        Ok(r.contains("Originator").then_some(r))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            frr.vtysh("show bgp ipv4 unicast").unwrap_or_default()
        )
    });
    println!("FRR:\n{at_frr}");
    for want in [
        "198.18.0.16 from 198.18.0.11",
        "Originator: 198.18.0.16, Cluster list: 198.18.0.100",
    ] {
        assert!(at_frr.contains(want), "{want}: {at_frr}");
    }
    let bird_at_frr = frr
        .vtysh(&format!("show bgp ipv4 unicast {BIRD_ROUTE}"))
        .expect("vtysh");
    assert!(
        bird_at_frr.contains("Originator: 198.18.0.1,")
            && bird_at_frr.contains("198.18.0.1 from 198.18.0.11"),
        "BIRD's route at FRR: {bird_at_frr}"
    );

    // Pods on every pair of clients reach each other, both families.
    let failed = unreachable_pairs(&pods, T);
    assert!(failed.is_empty(), "unreachable:\n{}", failed.join("\n"));
    println!(
        "all {} ordered client pairs reach each other over IPv4 and IPv6, {:.1} s after the start",
        pods.len() * (pods.len() - 1),
        t0.elapsed().as_secs_f64()
    );

    // The reflector's agent dies and comes back; the clients keep
    // forwarding on the routes graceful restart keeps.
    let (a, b) = (&pods[0].1, &pods[4].1);
    let streams = [
        PingStream::start(&a.ns, b.ipv4().expect("v4")).expect("ping"),
        PingStream::start(&a.ns, b.ipv6().expect("v6")).expect("ping"),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let t_kill = Instant::now();
    agents[0]
        .daemon
        .signal(Signal::SIGKILL)
        .expect("kill n1's agent");
    agents[0].daemon.wait_exit(Duration::from_secs(5));
    // Every client saw its only session go, and keeps the reflected routes.
    for n in CLIENTS {
        lab::wait_for(&format!("{n}'s session to the reflector down"), T, || {
            Ok(sessions(&node(n).ns)
                .iter()
                .all(|s| s.2 != "Established")
                .then_some(()))
        })
        .expect("session down");
    }
    for ip in ips(b) {
        assert!(
            bgp_route_to(&node("n2").ns, ip).is_some_and(|r| r.contains("via")),
            "graceful restart keeps the route to {ip}: {}",
            margayctl(&node("n2").ns, &["bgp", "routes"])
        );
    }
    agents[0] = k8s::start_agent(&lab, "n1", &[]).expect("n1 again");
    lab::wait_for("n1's seven clients back", T, || {
        Ok((sessions(&node("n1").ns) == rr_sessions).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(&node("n1").ns, &["node", "status"])));
    // After the restart, reflection works again: the reflected paths are
    // back (`*`, not `*s`: no longer only the stale ones).
    lab::wait_for("n2's route to n6's pod reflected again", T, || {
        let r = margayctl(&node("n2").ns, &["bgp", "routes"]);
        Ok((r
            .lines()
            .filter(|l| {
                l.starts_with("* ")
                    && l.contains("peer-rrs-n1")
                    && l.contains("198.18.0.16 via 198.18.0.100")
            })
            .count()
            == 2)
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(&node("n2").ns, &["bgp", "routes"])));
    let restart = t_kill.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    for (ping, fam) in streams.into_iter().zip(["IPv4", "IPv6"]) {
        let r = ping.stop().expect("ping");
        println!(
            "{fam} n2 -> n6 across the reflector's restart ({:.1} s from SIGKILL to reflected again): {}",
            restart.as_secs_f64(),
            r.summary
        );
        // Every request answered but at most the one in flight at the
        // SIGINT: the stream covered the whole restart without a loss.
        assert!(
            r.lossless(10),
            "{fam}: requests lost: {:?} ({} sent, {} replies)\n{}",
            r.gaps,
            r.sent,
            r.replies,
            r.summary
        );
    }
    check_routes("after the reflector's restart");
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
}

/// Sets `nodeToNodeMeshMaxNodes` in the `default` BGPConfiguration.
fn set_mesh_max(lab: &Lab, max: u32) {
    k8s::with_client(lab.tor(), move |c| async move {
        k8s::apply_json::<BGPConfiguration>(
            &c,
            json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshMaxNodes": max}}),
        )
        .await
        .map(drop)
    })
    .expect("client")
    .expect("BGPConfiguration default");
}

/// The mesh gives way to route reflectors when the cluster is above
/// `nodeToNodeMeshMaxNodes` (lowered here to 3 for 4 nodes, as a cluster
/// growing past 100 would), with the default configuration otherwise: n1
/// is labelled `margay.dev/route-reflector=true` while the agents run (no
/// cluster ID configured) and reflects while the mesh is still up; after
/// the switch each other node keeps only its session to n1. Ping streams
/// cross the labelling (to n1's pod), the switch and the switch back
/// (between two clients) without a loss.
#[test]
fn the_mesh_gives_way_to_labelled_reflectors_above_the_size_without_a_loss() {
    integration_tests::require_root!();
    let t0 = Instant::now();
    let lab = Lab::builder().nodes(4).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(
        &lab,
        &[("v4", "198.19.0.0/16"), ("v6", "2001:db8:100::/48")],
    )
    .expect("bootstrap");
    let agents: Vec<k8s::Agent> = lab
        .nodes()
        .iter()
        .map(|n| k8s::start_agent(&lab, &n.name, &[]).expect("agent"))
        .collect();
    let pods: Vec<(String, cni::WiredPod)> = agents
        .iter()
        .map(|a| {
            let p = cni::add_pod(&lab, a, "demo", &format!("p-{}", a.node), &[], &[]).expect("pod");
            assert!(p.result.ok, "ADD on {}: {:?}", a.node, p.result);
            (a.node.clone(), p)
        })
        .collect();
    let node = |name: &str| lab.node(name).expect("node");
    let wait_sessions = |at: &str, want: &[(String, String, String)]| {
        lab::wait_for(&format!("{at}'s sessions {want:?}"), T, || {
            Ok((sessions(&node(at).ns) == want).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(&node(at).ns, &["node", "status"])));
    };
    let mesh_of = |me: &str| -> Vec<_> {
        ["n1", "n2", "n3", "n4"]
            .iter()
            .filter(|n| **n != me)
            .map(|n| est(&format!("mesh-{n}"), "node-mesh"))
            .collect()
    };
    // 4 nodes <= 100: the full mesh.
    wait_sessions("n1", &mesh_of("n1"));
    wait_sessions("n2", &mesh_of("n2"));
    let failed = unreachable_pairs(&pods, T);
    assert!(failed.is_empty(), "unreachable:\n{}", failed.join("\n"));
    let (n1_pod, n2_pod, n4_pod) = (&pods[0].1, &pods[1].1, &pods[3].1);
    // n1 becomes a reflector (in the mesh) under traffic to its pod.
    let streams = [
        PingStream::start(&n2_pod.ns, n1_pod.ipv4().expect("v4")).expect("ping"),
        PingStream::start(&n2_pod.ns, n1_pod.ipv6().expect("v6")).expect("ping"),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let t_label = Instant::now();
    k8s::with_client(lab.tor(), |c| async move {
        Api::<Node>::all(c)
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"margay.dev/route-reflector": "true"}}}),
                ),
            )
            .await
            .map(drop)
    })
    .expect("client")
    .expect("label n1");
    let reflector: Vec<_> = ["n2", "n3", "n4"]
        .iter()
        .map(|c| est(&format!("mesh-{c}"), "rr-client"))
        .collect();
    wait_sessions("n1", &reflector);
    let took = t_label.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    for (ping, fam) in streams.into_iter().zip(["IPv4", "IPv6"]) {
        let r = ping.stop().expect("ping");
        println!(
            "{fam} n2 -> n1 across n1 becoming a reflector ({:.1} s to its sessions back): {}",
            took.as_secs_f64(),
            r.summary
        );
        assert!(
            r.lossless(10),
            "labelling n1, {fam}: requests lost: {:?} ({} sent, {} replies)\n{}",
            r.gaps,
            r.sent,
            r.replies,
            r.summary
        );
    }
    // n2 holds n4's blocks twice: from n4, and reflected by n1.
    lab::wait_for("n4's blocks at n2 direct and reflected", T, || {
        let r = margayctl(&node("n2").ns, &["bgp", "routes"]);
        let reflected = r
            .lines()
            .filter(|l| l.contains("mesh-n1") && l.contains("198.18.0.14 via 244.0.0.1"))
            .count();
        Ok((reflected == 2).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", margayctl(&node("n2").ns, &["bgp", "routes"])));
    println!(
        "full mesh with n1 reflecting, all pairs reach each other, {:.1} s after the start",
        t0.elapsed().as_secs_f64()
    );

    for (max, to_reflectors) in [(3, true), (100, false)] {
        let (a, b) = (n2_pod, n4_pod);
        let streams = [
            PingStream::start(&a.ns, b.ipv4().expect("v4")).expect("ping"),
            PingStream::start(&a.ns, b.ipv6().expect("v6")).expect("ping"),
        ];
        std::thread::sleep(Duration::from_millis(300));
        let t_switch = Instant::now();
        set_mesh_max(&lab, max);
        let what = if to_reflectors {
            wait_sessions("n2", &[est("mesh-n1", "reflector")]);
            wait_sessions("n4", &[est("mesh-n1", "reflector")]);
            "mesh -> reflectors"
        } else {
            wait_sessions("n2", &mesh_of("n2"));
            "reflectors -> mesh"
        };
        let took = t_switch.elapsed();
        wait_sessions("n1", &reflector);
        // Let the streams run on the new topology for a moment.
        std::thread::sleep(Duration::from_millis(500));
        for (ping, fam) in streams.into_iter().zip(["IPv4", "IPv6"]) {
            let r = ping.stop().expect("ping");
            println!(
                "{fam} n2 -> n4 across {what} ({:.1} s to the new sessions): {}",
                took.as_secs_f64(),
                r.summary
            );
            assert!(
                r.lossless(10),
                "{what}, {fam}: requests lost: {:?} ({} sent, {} replies)\n{}",
                r.gaps,
                r.sent,
                r.replies,
                r.summary
            );
        }
        if to_reflectors {
            let status = margayctl(&node("n3").ns, &["node", "status"]);
            assert!(
                status.contains(
                    "BGP peers: route reflectors n1 (4 nodes > nodeToNodeMeshMaxNodes 3)"
                ),
                "{status}"
            );
        }
        let failed = unreachable_pairs(&pods, T);
        assert!(
            failed.is_empty(),
            "after {what}, unreachable:\n{}",
            failed.join("\n")
        );
    }
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
}
