//! Issue 4's acceptance: 16 agents' IPAM clients (separate processes)
//! allocate 1,000 addresses each, concurrently, from one /16 pool with /26
//! blocks through the API test server: 16,000 distinct addresses, each
//! recorded in exactly one IPAMBlock with its handle.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Instant;

use integration_tests::apiserver::{ApiServer, Config};
use integration_tests::{k8s, lab};
use kube::Api;
use node_agent::k8s::crd::{IPAMBlock, IPPool};

const NODES: usize = 16;
const EACH: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_agents_allocate_sixteen_thousand_distinct_addresses() {
    let server = ApiServer::start(Config::default())
        .await
        .expect("apiserver");
    let client = kube::Client::try_from(server.admin_config()).expect("client");
    k8s::install_crds(&client).await.expect("crds");
    k8s::apply_json::<IPPool>(
        &client,
        serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "IPPool",
            "metadata": {"name": "pool"}, "spec": {"cidr": "198.19.0.0/16", "blockSize": 26}}),
    )
    .await
    .expect("pool");

    // Each process runs as the agent does: with the ServiceAccount of
    // deploy/margay.yaml and only what its RBAC grants.
    for o in k8s::agent_identity_objects().expect("deploy/margay.yaml") {
        k8s::apply_object(&client, &o)
            .await
            .expect("identity object");
    }
    let token = server
        .service_account_token("margay-system", "margay-node")
        .await
        .expect("token");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("agent.kubeconfig");
    std::fs::write(
        &kubeconfig,
        integration_tests::apiserver::kubeconfig(&server.url(), &server.tls().ca_data(), &token),
    )
    .expect("kubeconfig");
    let bin = lab::workspace_bin("margay-ipam-load").expect("margay-ipam-load built");
    let started = Instant::now();
    let children: Vec<_> = (1..=NODES)
        .map(|i| {
            Command::new(&bin)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["--node", &format!("n{i}")])
                .args(["--count", &EACH.to_string(), "--callers", "16"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn load process")
        })
        .collect();
    let mut total_writes = 0u64;
    for (i, c) in children.into_iter().enumerate() {
        let out = tokio::task::spawn_blocking(move || c.wait_with_output())
            .await
            .expect("join")
            .expect("wait");
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "n{}: {}\n{}",
            i + 1,
            line,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("result line");
        assert_eq!(v["ok"], EACH, "n{}: {v}", i + 1);
        total_writes += v["writes"].as_u64().unwrap_or(0);
    }
    let took = started.elapsed();

    // The blocks are the truth: every address once, with its handle.
    let blocks = Api::<IPAMBlock>::all(client.clone())
        .list(&Default::default())
        .await
        .expect("blocks")
        .items;
    let mut addrs = BTreeSet::new();
    let mut handles: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for b in &blocks {
        let spec = &b.spec.0;
        for a in &spec.allocations {
            let ip = spec.ip_of(a.ordinal).expect("ordinal inside its block");
            assert!(addrs.insert(ip), "{ip} allocated twice");
            *handles.entry(a.handle.clone()).or_default() += 1;
            *per_node
                .entry(a.attrs.node.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    assert_eq!(addrs.len(), NODES * EACH);
    assert_eq!(handles.len(), NODES * EACH, "every handle recorded");
    assert!(handles.values().all(|n| *n == 1), "a handle in two places");
    assert!(per_node.values().all(|n| *n == EACH), "{per_node:?}");
    println!(
        "{} distinct addresses in {} blocks from {NODES} processes in {:.1} s; {total_writes} block writes ({:.3} per allocation)",
        addrs.len(),
        blocks.len(),
        took.as_secs_f64(),
        total_writes as f64 / (NODES * EACH) as f64
    );
    server.shutdown().await.expect("shutdown");
}
