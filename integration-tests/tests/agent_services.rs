//! Per-Service advertisement by the agent, against two real peers at once:
//! BIRD 2 on the ToR and FRR 8.4 (bgpd) in a namespace of its own on the
//! same underlay, each in its own AS. Two nodes peer with both (mesh off,
//! so every route a daemon has from a node is that node's own; IPv4
//! sessions carrying IPv4 and IPv6), `BGPConfiguration` names a range of
//! each kind (the cluster range in both families), and Services and
//! EndpointSlices are written to the API server as the control plane would.
//! Every assertion holds at BIRD and at FRR:
//! - a `externalTrafficPolicy: Local` dual-stack Service's cluster IPs
//!   (IPv4 and IPv6), external and LoadBalancer IPs arrive as /32s and a
//!   /128 only from the node with the ready endpoint, follow the endpoint to
//!   the other node, and are withdrawn when it goes (the latency is
//!   printed, not asserted);
//! - a `Cluster` Service's addresses come from every node, as do the ranges;
//! - an address outside the range of its kind is never announced.
//!
//! ```text
//!   BIRD (ToR 198.18.0.1, AS 64513)    FRR (n3 198.18.0.13, AS 64514)
//!            │  └──────────────┬─────────────┘  │
//!        n1 (AS 64512)                      n2 (AS 64512)
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use integration_tests::k8s;
use integration_tests::lab::{self, Bird, Frr, Lab};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use node_agent::k8s::crd::{BGPConfiguration, BGPPeer};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const NS: &str = "web";
/// The Local Service's addresses, one per kind (the cluster IP in both
/// families), all inside the ranges.
const LOCAL: [&str; 4] = [
    "198.19.250.10/32",
    "2001:db8:250::10/128",
    "198.19.251.10/32",
    "198.19.252.10/32",
];
/// The Cluster Service's addresses inside the ranges.
const CLUSTER: [&str; 3] = [
    "198.19.250.20/32",
    "2001:db8:250::20/128",
    "198.19.251.20/32",
];
/// Addresses outside the range of their kind: never announced.
const OUTSIDE: [&str; 4] = [
    "198.19.253.10/32",
    "198.19.253.20/32",
    "198.19.250.21/32",
    "2001:db8:253::20/128",
];
/// The configured ranges.
const RANGES: [&str; 4] = [
    "198.19.250.0/24",
    "2001:db8:250::/112",
    "198.19.251.0/24",
    "198.19.252.0/24",
];
const NODES: [(&str, &str); 2] = [("n1", "198.18.0.11"), ("n2", "198.18.0.12")];

fn bird_conf() -> String {
    let mut c =
        String::from("log stderr all;\nrouter id 198.18.0.1;\nprotocol device { scan time 10; }\n");
    for (n, ip) in NODES {
        c.push_str(&format!(
            "protocol bgp {n} {{\n  local 198.18.0.1 as 64513;\n  neighbor {ip} as 64512;\n  direct;\n  \
             hold time 9; keepalive time 3; connect delay time 1; error wait time 1, 2;\n  \
             ipv4 {{ import all; export none; }};\n  ipv6 {{ import all; export none; }};\n}}\n"
        ));
    }
    c
}

/// FRR takes everything from both nodes and sends them nothing.
fn frr_conf() -> String {
    let mut c = String::from(
        "frr defaults traditional\nhostname frr\nlog stdout informational\n!\n\
         route-map none deny 10\n!\n\
         router bgp 64514\n bgp router-id 198.18.0.13\n no bgp ebgp-requires-policy\n timers bgp 3 9\n",
    );
    for (_, ip) in NODES {
        c.push_str(&format!(
            " neighbor {ip} remote-as 64512\n neighbor {ip} timers connect 1\n"
        ));
    }
    for af in ["ipv4", "ipv6"] {
        c.push_str(&format!(" address-family {af} unicast\n"));
        for (_, ip) in NODES {
            c.push_str(&format!(
                "  neighbor {ip} activate\n  neighbor {ip} route-map none out\n"
            ));
        }
        c.push_str(" exit-address-family\n");
    }
    c + "!\n"
}

/// The two peers under test.
struct Peers {
    bird: Bird,
    frr: Frr,
}

impl Peers {
    /// The prefixes BIRD has from protocol `node` (`show route protocol`
    /// prints each network on the first line of its routes).
    fn bird_from(&self, node: &str) -> BTreeSet<String> {
        let out = self
            .bird
            .birdc(&format!("show route protocol {node}"))
            .expect("birdc");
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.parse::<ipnetwork::IpNetwork>().is_ok())
            .map(str::to_string)
            .collect()
    }

    /// The prefixes FRR has a path for from n1 and from n2: its BGP
    /// tables (both families, one `vtysh`) in JSON, where every path names
    /// its `peerId`.
    fn frr_from_nodes(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let text = self
            .frr
            .vtysh_many(&["show bgp ipv4 unicast json", "show bgp ipv6 unicast json"])
            .expect("vtysh");
        let mut out = (BTreeSet::new(), BTreeSet::new());
        for table in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
            let table = table.expect("FRR's JSON");
            for (prefix, paths) in table["routes"].as_object().into_iter().flatten() {
                for p in paths.as_array().into_iter().flatten() {
                    if p["peerId"] == NODES[0].1 {
                        out.0.insert(prefix.clone());
                    } else if p["peerId"] == NODES[1].1 {
                        out.1.insert(prefix.clone());
                    }
                }
            }
        }
        out
    }

    /// What daemon `i` (0 BIRD, 1 FRR) has from n1 and from n2.
    fn query(&self, i: usize) -> (&'static str, BTreeSet<String>, BTreeSet<String>) {
        match i {
            0 => ("BIRD", self.bird_from("n1"), self.bird_from("n2")),
            _ => {
                let (a, b) = self.frr_from_nodes();
                ("FRR", a, b)
            }
        }
    }

    /// What each daemon has from n1 and from n2.
    fn snapshot(&self) -> Snapshot {
        [self.query(0), self.query(1)]
    }
}

fn has_all(set: &BTreeSet<String>, want: &[&str]) -> bool {
    want.iter().all(|p| set.contains(*p))
}

fn has_none(set: &BTreeSet<String>, want: &[&str]) -> bool {
    want.iter().all(|p| !set.contains(*p))
}

type Snapshot = [(&'static str, BTreeSet<String>, BTreeSet<String>); 2];

/// Waits until `ok` holds for both nodes' route sets (from n1, from n2) at
/// BIRD and at FRR, each daemon polled back to back in a thread of its own;
/// returns the last snapshot and, per daemon, when its answer first
/// satisfied `ok` (taken right after that query returned).
fn wait_peers(
    peers: &Peers,
    what: &str,
    ok: impl Fn(&BTreeSet<String>, &BTreeSet<String>) -> bool + Sync,
) -> (Snapshot, [Instant; 2]) {
    let ok = &ok;
    let polled: Vec<_> = std::thread::scope(|sc| {
        let threads: Vec<_> = (0..2)
            .map(|i| {
                sc.spawn(move || {
                    let mut last = peers.query(i);
                    let r = lab::wait_for(&format!("{what} at {}", last.0), T, || {
                        last = peers.query(i);
                        Ok(ok(&last.1, &last.2).then(Instant::now))
                    });
                    (last, r)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("poll thread"))
            .collect()
    });
    let mut seen = [Instant::now(); 2];
    for (i, (last, r)) in polled.iter().enumerate() {
        match r {
            Ok(t) => seen[i] = *t,
            Err(e) => panic!(
                "{e}\n{d}:\n  from n1: {:?}\n  from n2: {:?}",
                last.1,
                last.2,
                d = last.0
            ),
        }
    }
    // Both still so together, and nothing outside the ranges.
    let snap = peers.snapshot();
    for (d, a, b) in &snap {
        assert!(ok(a, b), "{what}: {d} changed back:\n{}", show(&snap));
        assert!(
            has_none(a, &OUTSIDE) && has_none(b, &OUTSIDE),
            "{d}: {a:?} {b:?}"
        );
    }
    (snap, seen)
}

fn show(s: &Snapshot) -> String {
    s.iter()
        .map(|(d, a, b)| format!("{d}:\n  from n1: {a:?}\n  from n2: {b:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The EndpointSlice of the Local Service: one endpoint on `node`, ready or not.
fn slice(node: &str, ready: bool) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "local-x1", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "local"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.19.0.5"], "nodeName": node,
                       "conditions": {"ready": ready, "serving": ready, "terminating": !ready}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }))
    .expect("slice")
}

/// Creates or replaces the Local Service's EndpointSlice.
fn put_slice(lab: &Lab, s: EndpointSlice) {
    k8s::with_client(lab.tor(), move |c| async move {
        let api: Api<EndpointSlice> = Api::namespaced(c, NS);
        match api.get_opt("local-x1").await? {
            None => api.create(&PostParams::default(), &s).await.map(drop),
            Some(cur) => {
                let mut s = s;
                s.metadata.resource_version = cur.metadata.resource_version;
                api.replace("local-x1", &PostParams::default(), &s)
                    .await
                    .map(drop)
            }
        }
    })
    .expect("client")
    .expect("endpointslice");
}

/// Prints how long after the API write the routes left each daemon: at
/// most the time from sending the write (a fresh client: thread, runtime,
/// TLS) to the end of the query that first saw them gone, and at least the
/// time from the API's answer. Not asserted: a figure (a query is one or two
/// birdc/vtysh runs per node).
fn print_latency(what: &str, before: Instant, answered: Instant, seen: [Instant; 2]) {
    for (d, at) in ["BIRD", "FRR"].into_iter().zip(seen) {
        let ms = |t: Instant| at.saturating_duration_since(t).as_secs_f64() * 1e3;
        println!(
            "Local Service withdrawn at {d} {:.0}-{:.0} ms after {what} \
             (from the API's answer - from sending the write)",
            ms(answered),
            ms(before)
        );
    }
}

#[test]
fn services_are_announced_per_traffic_policy_from_the_nodes_that_serve_them() {
    integration_tests::require_root!();
    let mut lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", &bird_conf()).expect("bird");
    // Node objects for n1 and n2 only: n3 is FRR's namespace, no node.
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/17")]).expect("bootstrap");
    lab.add_node().expect("FRR's namespace");
    let frr_ns = lab.node("n3").expect("n3");
    assert_eq!(frr_ns.ipv4.to_string(), "198.18.0.13");
    let frr = Frr::start(&frr_ns.ns, lab.run_dir(), "frr", &frr_conf()).expect("frr");
    let peers = Peers { bird, frr };
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<BGPConfiguration>(
            &c,
            json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"},
                "spec": {"nodeToNodeMeshEnabled": false,
                         "serviceClusterIPs": [{"cidr": "198.19.250.0/24"}, {"cidr": "2001:db8:250::/112"}],
                         "serviceExternalIPs": [{"cidr": "198.19.251.0/24"}],
                         "serviceLoadBalancerIPs": [{"cidr": "198.19.252.0/24"}]}}),
        )
        .await?;
        for (name, ip, asn) in [("tor", "198.18.0.1", 64513), ("frr", "198.18.0.13", 64514)] {
            k8s::apply_json::<BGPPeer>(
                &c,
                json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
                    "metadata": {"name": name},
                    "spec": {"peerIP": ip, "asNumber": asn}}),
            )
            .await?;
        }
        Api::<Namespace>::all(c.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NS}}))
                    .map_err(kube::Error::SerdeError)?,
            )
            .await?;
        let svcs: Api<Service> = Api::namespaced(c.clone(), NS);
        let local: Service = serde_json::from_value(json!({
            "metadata": {"name": "local", "namespace": NS},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
                     "clusterIP": "198.19.250.10", "clusterIPs": ["198.19.250.10", "2001:db8:250::10"],
                     "externalIPs": ["198.19.251.10"],
                     "selector": {"app": "local"}, "ports": [{"port": 80}]}}))
        .map_err(kube::Error::SerdeError)?;
        svcs.create(&PostParams::default(), &local).await?;
        // The LoadBalancer IPs, as MetalLB would write them; the second is
        // outside serviceLoadBalancerIPs.
        svcs.patch_status(
            "local",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [
                {"ip": "198.19.252.10"}, {"ip": "198.19.253.10"}]}}})),
        )
        .await?;
        let cluster: Service = serde_json::from_value(json!({
            "metadata": {"name": "cluster", "namespace": NS},
            "spec": {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"],
                     "clusterIP": "198.19.250.20", "clusterIPs": ["198.19.250.20", "2001:db8:250::20"],
                     // Outside every range (both families); inside the
                     // cluster range but an external IP, which only
                     // serviceExternalIPs covers.
                     "externalIPs": ["198.19.251.20", "198.19.253.20", "198.19.250.21",
                                     "2001:db8:253::20"],
                     "selector": {"app": "cluster"}, "ports": [{"port": 80}]}}))
        .map_err(kube::Error::SerdeError)?;
        svcs.create(&PostParams::default(), &cluster).await?;
        Ok::<_, kube::Error>(())
    })
    .expect("client")
    .expect("configure");
    let _a1 = k8s::start_agent(&lab, "n1", &[]).expect("agent n1");
    let _a2 = k8s::start_agent(&lab, "n2", &[]).expect("agent n2");

    // No endpoint yet: the ranges and the Cluster Service from both nodes,
    // nothing of the Local Service.
    let (s, _) = wait_peers(
        &peers,
        "ranges and the Cluster Service from both",
        |a, b| {
            [a, b]
                .iter()
                .all(|s| has_all(s, &RANGES) && has_all(s, &CLUSTER))
        },
    );
    for (d, r1, r2) in &s {
        assert!(
            has_none(r1, &LOCAL) && has_none(r2, &LOCAL),
            "{d}: {r1:?} {r2:?}"
        );
    }

    // A ready endpoint on n1: the Local Service from n1 only.
    put_slice(&lab, slice("n1", true));
    let (s, _) = wait_peers(&peers, "the Local Service from n1", |a, _| {
        has_all(a, &LOCAL)
    });
    println!("endpoint on n1:\n{}", show(&s));
    for (d, _, r2) in &s {
        assert!(has_none(r2, &LOCAL), "{d}: n2 has no endpoint: {r2:?}");
    }

    // The endpoint moves to n2: the routes follow it.
    put_slice(&lab, slice("n2", true));
    let (s, _) = wait_peers(&peers, "the Local Service from n2 only", |a, b| {
        has_all(b, &LOCAL) && has_none(a, &LOCAL)
    });
    println!("endpoint moved to n2:\n{}", show(&s));

    // The endpoint stops being ready (terminating): withdrawn from n2.
    let before = Instant::now();
    put_slice(&lab, slice("n2", false));
    let answered = Instant::now();
    let (s, seen) = wait_peers(&peers, "the Local Service withdrawn", |a, b| {
        has_none(a, &LOCAL) && has_none(b, &LOCAL)
    });
    print_latency("its last endpoint turned not ready", before, answered, seen);
    for (d, _, r2) in &s {
        assert!(
            has_all(r2, &CLUSTER),
            "{d}: the Cluster Service stays: {r2:?}"
        );
    }

    // Ready again on n1, then the EndpointSlice is deleted.
    put_slice(&lab, slice("n1", true));
    wait_peers(&peers, "the Local Service from n1 again", |a, _| {
        has_all(a, &LOCAL)
    });
    let before = Instant::now();
    k8s::with_client(lab.tor(), |c| async move {
        Api::<EndpointSlice>::namespaced(c, NS)
            .delete("local-x1", &DeleteParams::default())
            .await
            .map(drop)
    })
    .expect("client")
    .expect("delete slice");
    let answered = Instant::now();
    let (_, seen) = wait_peers(
        &peers,
        "withdrawn after the EndpointSlice is deleted",
        |a, b| has_none(a, &LOCAL) && has_none(b, &LOCAL),
    );
    print_latency("its EndpointSlice was deleted", before, answered, seen);

    // And after all of it, still nothing outside the ranges, and the
    // Cluster Service and the ranges from both.
    let s = peers.snapshot();
    for (d, r1, r2) in &s {
        for r in [r1, r2] {
            assert!(has_none(r, &OUTSIDE), "{d}: {r:?}");
            assert!(has_all(r, &CLUSTER) && has_all(r, &RANGES), "{d}: {r:?}");
        }
    }
}
