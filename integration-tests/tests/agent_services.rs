//! Per-Service advertisement by the agent, against the ToR's BIRD: two
//! nodes peer with BIRD (mesh off, so every route BIRD has from a node is
//! that node's own), `BGPConfiguration` names a range of each kind, and
//! Services and EndpointSlices are written to the API server as the
//! control plane would:
//! - a `externalTrafficPolicy: Local` Service's cluster, external and
//!   LoadBalancer IPs reach BIRD as /32s only from the node with the ready
//!   endpoint, follow the endpoint to the other node, and are withdrawn when
//!   it goes (the latency is printed, not asserted);
//! - a `Cluster` Service's addresses come from every node, as do the ranges;
//! - an address outside the range of its kind is never announced.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use integration_tests::k8s;
use integration_tests::lab::{self, Bird, Lab};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use node_agent::k8s::crd::{BGPConfiguration, BGPPeer};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const NS: &str = "web";
/// The Local Service's addresses, one per kind, all inside the ranges.
const LOCAL: [&str; 3] = ["198.19.250.10/32", "198.19.251.10/32", "198.19.252.10/32"];
/// The Cluster Service's addresses inside the ranges.
const CLUSTER: [&str; 2] = ["198.19.250.20/32", "198.19.251.20/32"];
/// Addresses outside the range of their kind: never announced.
const OUTSIDE: [&str; 3] = ["198.19.253.10/32", "198.19.253.20/32", "198.19.250.21/32"];

fn bird_conf() -> String {
    let mut c =
        String::from("log stderr all;\nrouter id 198.18.0.1;\nprotocol device { scan time 10; }\n");
    for (n, ip) in [("n1", "198.18.0.11"), ("n2", "198.18.0.12")] {
        c.push_str(&format!(
            "protocol bgp {n} {{\n  local 198.18.0.1 as 64513;\n  neighbor {ip} as 64512;\n  direct;\n  \
             hold time 9; keepalive time 3; connect delay time 1; error wait time 1, 2;\n  \
             ipv4 {{ import all; export none; }};\n}}\n"
        ));
    }
    c
}

/// The prefixes BIRD has from protocol `node` (`show route protocol` prints
/// each network on the first line of its routes).
fn from(bird: &Bird, node: &str) -> BTreeSet<String> {
    let out = bird
        .birdc(&format!("show route protocol {node}"))
        .expect("birdc");
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<ipnetwork::IpNetwork>().is_ok())
        .map(str::to_string)
        .collect()
}

fn has_all(set: &BTreeSet<String>, want: &[&str]) -> bool {
    want.iter().all(|p| set.contains(*p))
}

fn has_none(set: &BTreeSet<String>, want: &[&str]) -> bool {
    want.iter().all(|p| !set.contains(*p))
}

/// Waits until `ok` holds for both nodes' route sets at BIRD.
fn wait_bird(
    bird: &Bird,
    what: &str,
    ok: impl Fn(&BTreeSet<String>, &BTreeSet<String>) -> bool,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut last = (BTreeSet::new(), BTreeSet::new());
    let r = lab::wait_for(what, T, || {
        last = (from(bird, "n1"), from(bird, "n2"));
        Ok(ok(&last.0, &last.1).then(|| last.clone()))
    });
    let (a, b) = r.unwrap_or_else(|e| panic!("{e}\nfrom n1: {:?}\nfrom n2: {:?}", last.0, last.1));
    // In every state the test waits for, nothing outside the ranges.
    assert!(
        has_none(&a, &OUTSIDE) && has_none(&b, &OUTSIDE),
        "{a:?} {b:?}"
    );
    (a, b)
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

/// Prints how long after the API write the routes left BIRD: at most the
/// time since the write was sent (a fresh client: thread, runtime, TLS) and
/// at least the time since it was answered. Not asserted: a figure.
fn print_latency(what: &str, before: Instant, answered: Instant) {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    println!(
        "Local Service withdrawn at BIRD {:.0}-{:.0} ms after {what} \
         (from the API's answer - from sending the write; birdc polled back to back)",
        ms(answered),
        ms(before)
    );
}

#[test]
fn services_are_announced_per_traffic_policy_from_the_nodes_that_serve_them() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", &bird_conf()).expect("bird");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/17")]).expect("bootstrap");
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<BGPConfiguration>(
            &c,
            json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"},
                "spec": {"nodeToNodeMeshEnabled": false,
                         "serviceClusterIPs": [{"cidr": "198.19.250.0/24"}],
                         "serviceExternalIPs": [{"cidr": "198.19.251.0/24"}],
                         "serviceLoadBalancerIPs": [{"cidr": "198.19.252.0/24"}]}}),
        )
        .await?;
        k8s::apply_json::<BGPPeer>(
            &c,
            json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPPeer",
                "metadata": {"name": "tor"},
                "spec": {"peerIP": "198.18.0.1", "asNumber": 64513}}),
        )
        .await?;
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
                     "clusterIP": "198.19.250.10", "externalIPs": ["198.19.251.10"],
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
            "spec": {"clusterIP": "198.19.250.20",
                     // Outside every range; inside the cluster range but an
                     // external IP, which only serviceExternalIPs covers.
                     "externalIPs": ["198.19.251.20", "198.19.253.20", "198.19.250.21"],
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
    let ranges = ["198.19.250.0/24", "198.19.251.0/24", "198.19.252.0/24"];
    let (r1, r2) = wait_bird(&bird, "ranges and the Cluster Service from both", |a, b| {
        [a, b]
            .iter()
            .all(|s| has_all(s, &ranges) && has_all(s, &CLUSTER))
    });
    assert!(
        has_none(&r1, &LOCAL) && has_none(&r2, &LOCAL),
        "{r1:?} {r2:?}"
    );

    // A ready endpoint on n1: the Local Service from n1 only.
    put_slice(&lab, slice("n1", true));
    let (r1, r2) = wait_bird(&bird, "the Local Service from n1", |a, _| {
        has_all(a, &LOCAL)
    });
    println!("BIRD, endpoint on n1:\nfrom n1: {r1:?}\nfrom n2: {r2:?}");
    assert!(has_none(&r2, &LOCAL), "n2 has no endpoint: {r2:?}");

    // The endpoint moves to n2: the routes follow it.
    put_slice(&lab, slice("n2", true));
    let (r1, r2) = wait_bird(&bird, "the Local Service from n2 only", |a, b| {
        has_all(b, &LOCAL) && has_none(a, &LOCAL)
    });
    println!("BIRD, endpoint moved to n2:\nfrom n1: {r1:?}\nfrom n2: {r2:?}");

    // The endpoint stops being ready (terminating): withdrawn from n2.
    let before = Instant::now();
    put_slice(&lab, slice("n2", false));
    let answered = Instant::now();
    let (_, r2) = wait_bird(&bird, "the Local Service withdrawn", |a, b| {
        has_none(a, &LOCAL) && has_none(b, &LOCAL)
    });
    print_latency("its last endpoint turned not ready", before, answered);
    assert!(has_all(&r2, &CLUSTER), "the Cluster Service stays: {r2:?}");

    // Ready again on n1, then the EndpointSlice is deleted.
    put_slice(&lab, slice("n1", true));
    wait_bird(&bird, "the Local Service from n1 again", |a, _| {
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
    wait_bird(
        &bird,
        "withdrawn after the EndpointSlice is deleted",
        |a, b| has_none(a, &LOCAL) && has_none(b, &LOCAL),
    );
    print_latency("its EndpointSlice was deleted", before, answered);

    // And after all of it, still nothing outside the ranges.
    let (r1, r2) = (from(&bird, "n1"), from(&bird, "n2"));
    assert!(
        has_none(&r1, &OUTSIDE) && has_none(&r2, &OUTSIDE),
        "{r1:?} {r2:?}"
    );
    assert!(
        has_all(&r1, &CLUSTER) && has_all(&r2, &CLUSTER),
        "{r1:?} {r2:?}"
    );
}
