//! `kubectl apply --dry-run=server` accepts every manifest in deploy/ and
//! the kustomize overlay in kustomize/cluster against the API test server,
//! and a dry run creates nothing.

use std::path::{Path, PathBuf};

use integration_tests::apiserver::{ApiServer, Config};
use integration_tests::kubectl::Kubectl;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_server_dry_run_accepts_every_manifest_and_creates_nothing() {
    if !Kubectl::installed() {
        integration_tests::lab::skip("kubectl is not installed (scripts/install-deps installs it)");
        return;
    }
    let server = ApiServer::start(Config::default())
        .await
        .expect("apiserver");
    let dir = tempfile::tempdir().expect("tempdir");
    let k = Kubectl::for_server(&server, dir.path()).expect("kubeconfig");
    let run = |args: Vec<String>| {
        let k = k.clone();
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            k.run_async(&a, None).await
        }
    };
    let path = |f: &str| deploy().join(f).display().to_string();

    // As on a fresh cluster: CRDs and the namespace exist before the rest.
    let (ok, out) = run(vec!["apply".into(), "-f".into(), path("crds.yaml")]).await;
    assert!(ok, "{out}");
    let (ok, out) = run(vec![
        "create".into(),
        "namespace".into(),
        "margay-system".into(),
    ])
    .await;
    assert!(ok, "{out}");
    let (ok, out) = run(vec!["create".into(), "namespace".into(), "demo".into()]).await;
    assert!(ok, "{out}");
    // CRD resources are served asynchronously after the CRD is created.
    assert!(k.wait_served("ippools").await, "ippools never served");

    let mut files = vec![path("margay.yaml")];
    for e in std::fs::read_dir(deploy().join("examples")).expect("examples") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yaml") {
            files.push(p.display().to_string());
        }
    }
    files.sort();
    for f in &files {
        let (ok, out) = run(vec![
            "apply".into(),
            "--dry-run=server".into(),
            "-f".into(),
            f.clone(),
        ])
        .await;
        assert!(ok, "{f} rejected:\n{out}");
        assert!(out.contains("(server dry run)"), "{f}:\n{out}");
    }
    // The kustomize overlay an operator copies: base + pools, BGP, peers,
    // the generated Secret and the merged ConfigMap, in one apply.
    let overlay = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kustomize/cluster")
        .display()
        .to_string();
    let (ok, out) = run(vec![
        "apply".into(),
        "--dry-run=server".into(),
        "-k".into(),
        overlay.clone(),
    ])
    .await;
    assert!(ok, "kubectl apply -k {overlay} rejected:\n{out}");
    for obj in [
        "daemonset.apps/margay-node",
        "secret/bgp-secrets",
        "ippool.crd.margay.dev/default-ipv4",
        "bgpconfiguration.crd.margay.dev/default",
    ] {
        assert!(
            out.contains(&format!("{obj} created (server dry run)")),
            "{obj} not in the dry run of {overlay}:\n{out}"
        );
    }
    // Nothing was created by the dry runs.
    for (kind, ns) in [
        ("daemonsets", "margay-system"),
        ("configmaps", "margay-system"),
        ("secrets", "margay-system"),
        ("networkpolicies", "demo"),
    ] {
        let (ok, out) = run(vec![
            "get".into(),
            kind.into(),
            "-n".into(),
            ns.into(),
            "-o".into(),
            "name".into(),
        ])
        .await;
        assert!(
            ok && out.trim().is_empty(),
            "{kind} exist after a dry run: {out}"
        );
    }
    let (ok, out) = run(vec![
        "get".into(),
        "ippools,bgppeers,clusterroles".into(),
        "-o".into(),
        "name".into(),
    ])
    .await;
    assert!(ok, "{out}");
    assert!(
        !out.contains("ippool") && !out.contains("margay-node"),
        "{out}"
    );
    server.shutdown().await.expect("shutdown");
}

/// The lab's agents run with the DaemonSet's literal environment: the
/// allocator setting the scale figures were measured with is in it, and
/// what the API gives (`valueFrom`) is not.
#[test]
fn the_lab_agent_gets_the_daemonsets_literal_environment() {
    let env = integration_tests::k8s::shipped_agent_env().expect("deploy/margay.yaml");
    for setting in ["MIMALLOC_PURGE_DELAY", "MIMALLOC_ARENA_EAGER_COMMIT"] {
        assert!(
            env.contains(&(setting.to_string(), "0".to_string())),
            "{setting}: {env:?}"
        );
    }
    assert!(
        env.iter()
            .all(|(k, _)| k != "NODE_NAME" && k != "MARGAY_LOG_LEVEL"),
        "{env:?}"
    );
}

/// bench_cni_agent times the plugin as the shipped conflist configures it:
/// the entry it reads is the margay plugin's, with the log level set.
#[test]
fn the_shipped_conflist_names_the_plugins_log_level() {
    let plugin = integration_tests::k8s::shipped_plugin_conf().expect("deploy/margay.yaml");
    assert_eq!(plugin["type"], "margay", "{plugin}");
    assert_eq!(plugin["log_level"], "info", "{plugin}");
}
