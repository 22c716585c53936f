//! The API server refuses bad IPPools with a message an operator can act on:
//! Margay's CRDs (deploy/crds.yaml) applied with kubectl, then pools applied
//! as an operator would. The API test server evaluates the CRDs' OpenAPI
//! schema and CEL rules as the real one does.

use std::path::Path;

use integration_tests::apiserver::{ApiServer, Config};
use integration_tests::kubectl::Kubectl;

fn pool(name: &str, spec: &str) -> String {
    format!("apiVersion: crd.margay.dev/v1\nkind: IPPool\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pools_are_refused_with_the_reason_good_ones_pass() {
    if !Kubectl::installed() {
        integration_tests::lab::skip("kubectl is not installed (scripts/install-deps installs it)");
        return;
    }
    let server = ApiServer::start(Config::default())
        .await
        .expect("apiserver");
    let dir = tempfile::tempdir().expect("tempdir");
    let k = Kubectl::for_server(&server, dir.path()).expect("kubeconfig");
    let crds =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml"))
            .expect("crds.yaml");
    let (ok, out) = k.run_async(&["apply", "-f", "-"], Some(&crds)).await;
    assert!(ok, "{out}");
    assert!(k.wait_served("ippools").await, "ippools never served");

    for (name, spec, why) in [
        (
            "v4-block-too-long",
            "  cidr: 198.19.0.0/16\n  blockSize: 40\n",
            "spec.blockSize must be at most 32 for an IPv4 pool",
        ),
        (
            "v6-block-too-long",
            "  cidr: 2001:db8::/48\n  blockSize: 130\n",
            "should be less than or equal to 128",
        ),
        (
            "block-larger-than-pool",
            "  cidr: 198.19.0.0/24\n  blockSize: 20\n",
            "spec.blockSize must be at least the pool's prefix length",
        ),
        (
            "default-block-larger-than-pool",
            "  cidr: 198.19.0.0/28\n",
            "spec.blockSize must be at least the pool's prefix length",
        ),
        (
            "host-bits",
            "  cidr: 198.19.0.5/16\n",
            "spec.cidr must be a network address without host bits",
        ),
        (
            "not-a-cidr",
            "  cidr: 198.19.0.0\n",
            "spec.cidr in body must be of type cidr",
        ),
        ("no-cidr", "  blockSize: 26\n", "spec.cidr: Required value"),
        (
            "bad-use",
            "  cidr: 198.19.0.0/16\n  allowedUses: [Everything]\n",
            "Unsupported value: \"Everything\"",
        ),
    ] {
        let (ok, out) = k
            .run_async(&["apply", "-f", "-"], Some(&pool(name, spec)))
            .await;
        assert!(!ok, "{name} was accepted:\n{out}");
        assert!(out.contains(why), "{name}: expected {why:?} in:\n{out}");
        assert!(
            out.contains(&format!("IPPool \"{name}\" is invalid")),
            "{name}: {out}"
        );
    }
    for (name, spec) in [
        ("v4", "  cidr: 198.19.0.0/16\n  blockSize: 26\n"),
        ("v4-default-block", "  cidr: 198.18.128.0/20\n"),
        ("v6", "  cidr: 2001:db8:100::/48\n  blockSize: 122\n"),
        (
            "v4-single-block",
            "  cidr: 198.19.255.0/26\n  blockSize: 26\n",
        ),
    ] {
        let (ok, out) = k
            .run_async(&["apply", "-f", "-"], Some(&pool(name, spec)))
            .await;
        assert!(ok, "{name} refused:\n{out}");
    }
    // Defaults from the schema are stored; unknown fields are pruned.
    let (ok, out) = k
        .run_async(
            &["get", "ippool", "v4", "-o", "jsonpath={.spec.disabled}"],
            None,
        )
        .await;
    assert!(ok && out.trim() == "false", "default not applied: {out}");
    // An update is validated too, not only a create.
    let (ok, out) = k
        .run_async(
            &[
                "patch",
                "ippool",
                "v4",
                "--type=merge",
                "-p",
                r#"{"spec":{"blockSize":33}}"#,
            ],
            None,
        )
        .await;
    assert!(
        !ok && out.contains("spec.blockSize must be at most 32"),
        "{out}"
    );
    server.shutdown().await.expect("shutdown");
}
