//! The whole system in the lab: agents on every node, pods created through
//! the real CNI binary, routes exchanged over BGP — as a node-to-node mesh
//! and through a BIRD route reflector on the ToR — and pods on different
//! nodes reaching each other over IPv4 and IPv6.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use integration_tests::cni;
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{
    self, Daemon, Lab, Netns, Probe, Proto, TorBgp, probe_many, tor_bird_config,
};
use node_agent::k8s::crd::{BGPConfiguration, BGPPeer};

const POOLS: &[(&str, &str)] = &[("v4", "198.19.0.0/16"), ("v6", "2001:db8:100::/48")];

struct TestPod {
    ns: Netns,
    ips: Vec<IpAddr>,
    _server: Daemon,
}

fn add_pod(lab: &Lab, agent: &Agent, name: &str) -> TestPod {
    let p = cni::add_pod(lab, agent, "demo", name, &[("app", "demo")], &[]).expect("pod");
    assert!(
        p.result.ok,
        "ADD {name}: {:?} {}",
        p.result.stdout, p.result.stderr
    );
    let ips: Vec<IpAddr> = [p.ipv4(), p.ipv6()].into_iter().flatten().collect();
    assert_eq!(ips.len(), 2, "dual-stack: {ips:?}");
    let server = lab.serve(&p.ns, name, &[80], &[80]).expect("server");
    TestPod {
        ns: p.ns,
        ips,
        _server: server,
    }
}

/// Every ordered pair over TCP and UDP, v4 and v6, until all answer or the
/// deadline passes; returns the failures of the last round.
fn all_reach(pods: &[TestPod], deadline: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let mut probes = Vec::new();
        for from in pods {
            for to in pods {
                for ip in &to.ips {
                    for proto in [Proto::Tcp, Proto::Udp] {
                        probes.push(Probe {
                            from_ns: from.ns.name().to_string(),
                            to: SocketAddr::new(*ip, 80),
                            proto,
                        });
                    }
                }
            }
        }
        let res = probe_many(&probes, Duration::from_millis(800), 32);
        let failed: Vec<String> = probes
            .iter()
            .zip(&res)
            .filter(|(_, r)| !r.reached())
            .map(|(p, r)| format!("{} -> {} {}: {r:?}", p.from_ns, p.to, p.proto))
            .collect();
        if failed.is_empty() || start.elapsed() > deadline {
            return failed;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn bgp_routes(lab: &Lab, node: &str) -> String {
    let ns = &lab.node(node).expect("node").ns;
    let v4 = ns.ip(&["-4", "route", "show", "proto", "80"]).expect("ip");
    let v6 = ns.ip(&["-6", "route", "show", "proto", "80"]).expect("ip");
    format!("{v4}{v6}")
}

fn start_cluster(lab: &Lab, extra: serde_json::Value) -> Vec<Agent> {
    k8s::bootstrap(lab, POOLS).expect("bootstrap");
    k8s::with_client(lab.tor(), move |c| async move {
        for obj in extra.as_array().cloned().unwrap_or_default() {
            if obj["kind"] == "BGPConfiguration" {
                k8s::apply_json::<BGPConfiguration>(&c, obj)
                    .await
                    .expect("apply");
            } else {
                k8s::apply_json::<BGPPeer>(&c, obj).await.expect("apply");
            }
        }
    })
    .expect("configure");
    lab.nodes()
        .iter()
        .map(|n| k8s::start_agent(lab, &n.name, &[]).expect("agent"))
        .collect()
}

#[test]
fn pods_reach_each_other_across_nodes_over_the_node_mesh() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(3).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let agents = start_cluster(&lab, serde_json::json!([]));
    let pods: Vec<TestPod> = agents
        .iter()
        .map(|a| add_pod(&lab, a, &format!("{}-a", a.node)))
        .collect();
    let failed = all_reach(&pods, Duration::from_secs(30));
    assert!(
        failed.is_empty(),
        "unreachable over the mesh:\n{}\nn1 BGP routes:\n{}",
        failed.join("\n"),
        bgp_routes(&lab, "n1")
    );
    // Each node learned the two other nodes' v4 and v6 blocks, next hop = node.
    let r = bgp_routes(&lab, "n1");
    assert!(
        r.contains("via 198.18.0.12") && r.contains("via 198.18.0.13"),
        "{r}"
    );
    assert!(
        r.contains("via 2001:db8:ffff::c") && r.contains("via 2001:db8:ffff::d"),
        "{r}"
    );
}

#[test]
fn pods_reach_each_other_through_a_bird_route_reflector_and_new_nodes_join_fast() {
    integration_tests::require_root!();
    let mut lab = Lab::builder().nodes(3).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let tor = lab
        .start_tor_bird(&tor_bird_config(&TorBgp::default()))
        .expect("bird");
    let cfg = serde_json::json!([
        {"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
         "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": false}},
        {"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
         "metadata": {"name": "tor"}, "spec": {"peerIP": "198.18.0.1", "asNumber": 64512}}
    ]);
    let mut agents = start_cluster(&lab, cfg);
    let mut pods: Vec<TestPod> = agents
        .iter()
        .map(|a| add_pod(&lab, a, &format!("{}-a", a.node)))
        .collect();
    let failed = all_reach(&pods, Duration::from_secs(30));
    assert!(
        failed.is_empty(),
        "unreachable via the ToR:\n{}\nToR:\n{}",
        failed.join("\n"),
        tor.birdc("show route").unwrap_or_default()
    );
    let protocols = tor.birdc("show protocols").expect("birdc");
    assert_eq!(protocols.matches("Established").count(), 3, "{protocols}");
    assert!(!bgp_routes(&lab, "n1").contains("mesh"), "no mesh sessions");

    // A new node: its block must reach the others.
    let n4 = lab.add_node().expect("n4").name.clone();
    let ip4 = lab.node(&n4).expect("n4").ipv4;
    k8s::with_client(lab.tor(), move |c| async move {
        k8s::create_node(&c, "n4", ip4.into(), &[])
            .await
            .expect("node n4");
    })
    .expect("n4 object");
    agents.push(k8s::start_agent(&lab, &n4, &[]).expect("agent n4"));
    let started = Instant::now();
    let pod4 = add_pod(&lab, agents.last().expect("n4 agent"), "n4-a");
    let claimed = started.elapsed();
    let v4 = pod4.ips.iter().find(|i| i.is_ipv4()).copied().expect("v4");
    lab::wait_for("n4's block on n1", Duration::from_secs(10), || {
        Ok(bgp_routes(&lab, "n1")
            .lines()
            .any(|l| {
                l.contains("via 198.18.0.14") && {
                    let net: Option<ipnetwork::IpNetwork> =
                        l.split_whitespace().next().and_then(|n| n.parse().ok());
                    net.is_some_and(|n| n.contains(v4))
                }
            })
            .then_some(()))
    })
    .expect("n4's block reaches n1");
    println!(
        "new node n4: pod ADD (block claim) took {:.0} ms; block on n1 {:.0} ms after ADD returned",
        claimed.as_secs_f64() * 1e3,
        (started.elapsed() - claimed).as_secs_f64() * 1e3
    );
    pods.push(pod4);
    let failed = all_reach(&pods, Duration::from_secs(20));
    assert!(failed.is_empty(), "with n4:\n{}", failed.join("\n"));
}
