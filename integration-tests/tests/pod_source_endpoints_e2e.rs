//! `--pod-source=endpoints` (docs/scale.md §4), two agents under the RBAC
//! of `deploy/margay.yaml`: n1 learns n2's pods only from the PodEndpoints
//! n2 publishes. A NetworkPolicy on n1 selecting pods by label allows a
//! pod of n2 and denies another; a label change of a remote pod reaches
//! n1's nftables; and the agents do not watch every Pod: pods of a node
//! without an agent cost them no Pod watch or list bytes (the API test
//! server counts the bytes each user receives).

use std::time::{Duration, Instant};

mod e2e_support;

use e2e_support::{add_pod, eventually};
use integration_tests::apiserver::traffic::user_totals;
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{Lab, Proto};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

const AGENT_USER: &str = "system:serviceaccount:margay-system:margay-node";

/// Bytes the agents received for `pods list` and `pods watch`.
fn agent_pod_bytes(lab: &Lab) -> u64 {
    let report = k8s::with_client(lab.tor(), |c| async move {
        let req = http::Request::get("/margay/traffic")
            .body(Vec::new())
            .expect("request");
        c.request_text(req).await
    })
    .expect("client")
    .expect("traffic report");
    let report: serde_json::Value = serde_json::from_str(&report).expect("traffic JSON");
    let (by, _) = user_totals(&report, AGENT_USER);
    ["pods list", "pods watch"]
        .iter()
        .filter_map(|k| by.get(*k))
        .map(|(bytes, _)| bytes)
        .sum()
}

fn relabel(lab: &Lab, pod: &str, app: &str) {
    let (pod, app) = (pod.to_string(), app.to_string());
    k8s::with_client(lab.tor(), move |c| async move {
        Api::<Pod>::namespaced(c, "demo")
            .patch(
                &pod,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": app}}})),
            )
            .await
            .map(drop)
    })
    .expect("client")
    .expect("relabel");
}

#[test]
fn endpoints_mode_enforces_policy_on_remote_pods_from_pod_endpoints() {
    integration_tests::require_root!();
    let t0 = Instant::now();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let agents: Vec<Agent> = ["n1", "n2"]
        .iter()
        .map(|n| k8s::start_agent(&lab, n, &["--pod-source", "endpoints"]).expect("agent"))
        .collect();
    let pods = vec![
        add_pod(&lab, &agents[0], "web", "web"),
        add_pod(&lab, &agents[1], "client", "client"),
        add_pod(&lab, &agents[1], "other", "other"),
    ];
    let (web, client, other) = (0, 1, 2);
    let pairs = [(client, web, Proto::Tcp), (other, web, Proto::Tcp)];
    eventually(&pods, &pairs, &[true, true], "open before any policy");

    let np: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web-from-client", "namespace": "demo"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                         "ports": [{"protocol": "TCP", "port": "http"}]}]
        }
    }))
    .expect("policy");
    k8s::with_client(lab.tor(), |c| async move {
        Api::<NetworkPolicy>::namespaced(c, "demo")
            .create(&PostParams::default(), &np)
            .await
            .map(drop)
    })
    .expect("client")
    .expect("create policy");
    // n1 knows client (app=client) and other (app=other) only from n2's
    // PodEndpoints: the first allowed, the second denied.
    eventually(&pods, &pairs, &[true, false], "policy applied on n1");

    // A remote label change: n2's agent rewrites the PodEndpoint, n1's
    // nftables follow.
    let t = Instant::now();
    relabel(&lab, "other", "client");
    let took_allow = eventually(&pods, &pairs, &[true, true], "other relabelled client");
    relabel(&lab, "client", "nope");
    let took_deny = eventually(&pods, &pairs, &[false, true], "client relabelled nope");
    println!(
        "remote label change -> n1 enforces it: {:.0} ms (allow), {:.0} ms (deny), {:.0} ms both",
        took_allow.as_secs_f64() * 1e3,
        took_deny.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
    // n1's Pod cache holds its own pod only: the policy set names the
    // remote addresses all the same.
    let n1_nft = lab
        .node("n1")
        .expect("n1")
        .ns
        .exec(&["nft", "list", "table", "inet", "margay"])
        .expect("nft n1");
    assert!(
        n1_nft.contains(&pods[other].v4.to_string()),
        "other's address in n1's sets:\n{n1_nft}"
    );

    // Pods of a node without an agent: no agent receives them (a
    // cluster-wide Pod watch would receive every one, ~2.5 KB each here).
    std::thread::sleep(Duration::from_millis(500));
    let before = agent_pod_bytes(&lab);
    let n = 30;
    k8s::with_client(lab.tor(), move |c| async move {
        let api = Api::<Pod>::namespaced(c, "demo");
        for i in 0..n {
            let p: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("far-{i}"), "labels": {"app": "far"},
                    "annotations": {"padding": "x".repeat(2048)}},
                "spec": {"nodeName": "elsewhere", "containers": [{"name": "c", "image": "i"}]}
            }))
            .expect("pod");
            api.create(&PostParams::default(), &p).await?;
        }
        Ok::<(), kube::Error>(())
    })
    .expect("client")
    .expect("create remote pods");
    std::thread::sleep(Duration::from_secs(2));
    let delta = agent_pod_bytes(&lab) - before;
    println!("Pod list/watch bytes received by the agents for {n} pods of another node: {delta} B");
    assert!(
        delta < 2048,
        "the agents received {delta} B of Pods for {n} pods on no agent's node: a cluster-wide Pod watch"
    );
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
}
