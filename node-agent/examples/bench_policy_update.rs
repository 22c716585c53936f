//! Benchmark (not a test): what the dataplane controller's policy pass
//! (`PolicySync::update`, run on every watched change before the commit)
//! costs on a large cluster. No kernel is touched (no commit).
//!
//! ```text
//! cargo run --release -p node-agent --example bench_policy_update -- [--pods 10000]
//! ```
//! A synthetic cluster: `--pods` pods in 100 namespaces, 200
//! NetworkPolicies, this node holding every 40th pod. Prints each pass
//! beside its anchor from the same run: the first pass, which converts
//! every object.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::Event;
use node_agent::endpoints::Endpoint;
use node_agent::endpoints::policy::PolicySync;
use node_agent::k8s::cluster::Cluster;
use node_agent::k8s::endpointcache::PodName;
use node_agent::k8s::ipam::view::{IpamView, LocalAllocation};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ip(j: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 19, (j / 250) as u8, (j % 250) as u8 + 1))
}

fn pod(j: usize, rv: u64, tier: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("p{j}"), "namespace": format!("ns{}", j % 100),
                     "resourceVersion": rv.to_string(), "uid": format!("u{j}"),
                     "labels": {"app": format!("a{}", j % 50), "tier": tier, "pod": format!("p{j}")}},
        "spec": {"nodeName": format!("n{}", j % 40), "containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]},
        "status": {"phase": "Running", "podIP": ip(j).to_string(), "podIPs": [{"ip": ip(j).to_string()}]}
    }))
    .expect("pod")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let pods = arg("--pods", 10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _g = rt.enter();
    // Never connected: the policy pass reads the stores only.
    let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse()?))?;
    let (cluster, mut w) = Cluster::detached(client);
    for i in 0..100 {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": format!("ns{i}"), "labels": {"team": format!("t{}", i % 10)}}
        }))?;
        w.namespaces.apply_watcher_event(&Event::Apply(ns));
    }
    for j in 0..pods {
        w.pods.apply_watcher_event(&Event::Apply(pod(j, 1, "web")));
    }
    for k in 0..200 {
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("np{k}"), "namespace": format!("ns{}", k % 100), "resourceVersion": "1"},
            "spec": {"podSelector": {"matchLabels": {"app": format!("a{}", k % 50)}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("a{}", (k + 1) % 50)}}},
                                           {"namespaceSelector": {"matchLabels": {"team": format!("t{}", k % 10)}}}],
                                  "ports": [{"port": 80}]}]}
        }))?;
        w.policies.apply_watcher_event(&Event::Apply(np));
    }
    let mut view = IpamView {
        synced: true,
        ..IpamView::default()
    };
    let mut registry = BTreeMap::new();
    for j in 0..pods {
        let (ns, name) = (format!("ns{}", j % 100), format!("p{j}"));
        view.pod_ips.insert(&PodName::new(&ns, &name), ip(j));
        if j % 40 == 1 {
            let host_if = format!("cali{j:011}");
            view.local.push(LocalAllocation {
                ip: ip(j),
                namespace: ns.clone(),
                pod: name.clone(),
                handle: format!("net.c{j}"),
                borrowed: false,
                host_if: host_if.clone(),
            });
            registry.insert(
                format!("net.c{j}"),
                Endpoint {
                    container_id: format!("c{j}"),
                    namespace: ns,
                    pod: name,
                    host_if,
                    ips: vec![ip(j)],
                    handle: format!("net.c{j}"),
                    netns: String::new(),
                    ifname: "eth0".into(),
                },
            );
        }
    }
    let mut ps = PolicySync::new("n1", vec!["198.18.0.1".parse()?]);
    let t = Instant::now();
    ps.update(&cluster, &view, &registry);
    let cold = t.elapsed().as_secs_f64() * 1e3;

    let rounds = 30;
    let mut none = Vec::new();
    let mut one_pod = Vec::new();
    let mut one_ip = Vec::new();
    for r in 0..rounds {
        let t = Instant::now();
        ps.update(&cluster, &view, &registry);
        none.push(t.elapsed().as_secs_f64() * 1e3);
        // A pod elsewhere changes a label (a new resourceVersion).
        let j = (r * 37) % pods;
        let tier = if r % 2 == 0 { "db" } else { "web" };
        w.pods
            .apply_watcher_event(&Event::Apply(pod(j, 2 + r as u64, tier)));
        let t = Instant::now();
        ps.update(&cluster, &view, &registry);
        one_pod.push(t.elapsed().as_secs_f64() * 1e3);
        // The IPAM view learns one more address of a pod.
        let key = PodName::new(&format!("ns{}", j % 100), &format!("p{j}"));
        view.pod_ips.insert(
            &key,
            IpAddr::V4(Ipv4Addr::new(198, 19, 200, (r % 250) as u8 + 1)),
        );
        let t = Instant::now();
        ps.update(&cluster, &view, &registry);
        one_ip.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "PolicySync::update, {pods} pods / 100 namespaces / 200 policies, {} local endpoints ({rounds} rounds, medians)",
        registry.len()
    );
    println!("  anchor: first pass (converts every object) {cold:.2} ms");
    for (what, v) in [
        ("nothing changed", none),
        ("one pod's labels changed", one_pod),
        ("one pod's IPAM addresses changed", one_ip),
    ] {
        let m = median(v);
        println!(
            "  {what:<34} {m:.3} ms  ({:.3} of the first pass)",
            m / cold
        );
    }
    Ok(())
}
