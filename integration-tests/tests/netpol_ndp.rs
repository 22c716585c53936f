//! IPv6 neighbour discovery keeps working under policy: a pod isolated in
//! both directions (only one peer allowed) still resolves its gateway and is
//! resolved by its node after every neighbour cache is flushed. ND is
//! link-local: pod → node arrives through `input` (anti-spoofing exempts
//! `fe80::/10` and `::`), node → pod leaves through `output` (no policy).

mod netpol_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use integration_tests::lab::{self, Proto};
use netpol_support::PolicyLab;
use node_agent::dataplane::policy::PodKey;
use node_agent::dataplane::policy::build::*;

#[test]
fn neighbour_discovery_survives_isolation_in_both_directions() {
    require_root!();
    let mut lab = PolicyLab::new(2).expect("policy lab");
    lab.set_policy(
        NetPol::new("x", "only-y-a")
            .select(sel(&[("pod", "a")]))
            .types(&["Ingress", "Egress"])
            .ingress(from(vec![pods_in(
                sel(&[("pod", "a")]),
                sel(&[("ns", "y")]),
            )]))
            .egress(to(vec![pods_in(sel(&[("pod", "a")]), sel(&[("ns", "y")]))]))
            .build(),
    )
    .expect("policy");
    // Forget every neighbour: pods, nodes.
    for p in lab.pods.values() {
        p.ns.ip(&["-6", "neigh", "flush", "all"])
            .expect("flush pod");
    }
    for n in lab.lab.nodes() {
        n.ns.ip(&["-6", "neigh", "flush", "all"])
            .expect("flush node");
    }
    let pod = |ns: &str, name: &str| &lab.pods[&PodKey::new(ns, name)];
    let (xa, ya, yb) = (pod("x", "a"), pod("y", "a"), pod("y", "b"));
    let v6 = |p: &integration_tests::lab::Pod| IpAddr::V6(p.ipv6.expect("v6"));
    // Allowed both ways across nodes (x/a on n1, y/a on n2).
    let o = lab::wait_reachable(
        &xa.ns,
        SocketAddr::new(v6(ya), 80),
        Proto::Tcp,
        Duration::from_secs(5),
    );
    assert!(
        o.reached(),
        "x/a -> y/a over IPv6 after a neighbour flush: {o:?}"
    );
    let o = lab::wait_reachable(
        &ya.ns,
        SocketAddr::new(v6(xa), 81),
        Proto::Udp,
        Duration::from_secs(5),
    );
    assert!(
        o.reached(),
        "y/a -> x/a over IPv6 after a neighbour flush: {o:?}"
    );
    // Its own node reaches it (node -> pod ND and traffic via output).
    let n1 = &lab.lab.nodes()[0];
    let o = lab::wait_reachable(
        &n1.ns,
        SocketAddr::new(v6(xa), 80),
        Proto::Tcp,
        Duration::from_secs(5),
    );
    assert!(o.reached(), "node -> x/a over IPv6: {o:?}");
    // And the policy still denies the rest.
    let o = lab::probe(
        &yb.ns,
        SocketAddr::new(v6(xa), 80),
        Proto::Tcp,
        Duration::from_millis(500),
    );
    assert!(!o.reached(), "y/b -> x/a must stay denied: {o:?}");
    // Link-local traffic from the pod to its node (what RS/NS from fe80::
    // look like): the input hook's anti-spoofing must let it through.
    let gw = format!("{}%eth0", integration_tests::lab::pod::HOST_LL6);
    let ping = xa.ns.exec(&["ping", "-6", "-c", "1", "-W", "2", &gw]);
    assert!(ping.is_ok(), "x/a -> its gateway's link-local: {ping:?}");
    // The pod's neighbour entry for its gateway was resolved again.
    let neigh = xa.ns.ip(&["-6", "neigh", "show"]).expect("neigh");
    assert!(
        neigh.contains("fe80::") && !neigh.contains("FAILED"),
        "x/a neighbours: {neigh}"
    );
}
