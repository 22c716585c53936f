//! AdminNetworkPolicy and BaselineAdminNetworkPolicy through the whole
//! system: ANPs/BANPs applied with kubectl take effect on the node hosting
//! the selected pod in the order the API defines: ANP (Allow/Deny/Pass by
//! priority) before NetworkPolicy before the baseline. (Every other agent
//! test runs without these CRDs: an agent is ready without the API.)

mod e2e_support;

use std::time::Duration;

use e2e_support::{add_pod, anp_crds, eventually, try_kubectl_apply};
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{Lab, Proto};

fn kubectl_apply(lab: &Lab, name: &str, yaml: &str) -> String {
    try_kubectl_apply(lab, name, yaml).expect("kubectl apply")
}

/// `margayctl policy trace` from the ToR, as an operator would run it.
fn trace(lab: &Lab, from: &str, to: &str) -> String {
    let bin = integration_tests::lab::workspace_bin("margayctl").expect("margayctl");
    let out = lab
        .tor()
        .command(bin.to_str().expect("path"))
        .arg("--kubeconfig")
        .arg(k8s::kubeconfig_path(lab))
        .args([
            "policy", "trace", "--from", from, "--to", to, "--port", "80/TCP",
        ])
        .output()
        .expect("run margayctl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn admin_policies_apply_in_tier_order_once_their_api_is_installed() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let crds = anp_crds();
    let out = kubectl_apply(&lab, "anp-crds", &crds);
    assert!(out.contains("created"), "{out}");
    std::thread::sleep(Duration::from_millis(500)); // CRDs are served
    let agents: Vec<Agent> = ["n1", "n2"]
        .iter()
        .map(|n| k8s::start_agent(&lab, n, &[]).expect("agent"))
        .collect();
    let pods = vec![
        add_pod(&lab, &agents[0], "web", "web"),
        add_pod(&lab, &agents[1], "client", "client"),
        add_pod(&lab, &agents[1], "other", "other"),
    ];
    let (web, client, other) = (0, 1, 2);
    let pairs = [
        (client, web, Proto::Tcp),
        (other, web, Proto::Tcp),
        (client, other, Proto::Tcp),
    ];
    eventually(&pods, &pairs, &[true; 3], "open before any policy");

    let anp = |action: &str| {
        format!(
            r#"apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: web-guard}}
spec:
  priority: 10
  subject:
    pods:
      namespaceSelector: {{}}
      podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - name: other
    action: {action}
    from:
    - pods:
        namespaceSelector: {{}}
        podSelector: {{matchLabels: {{app: other}}}}
"#
        )
    };
    // 1. ANP Deny of other -> web.
    let out = kubectl_apply(&lab, "anp", &anp("Deny"));
    assert!(out.contains("created"), "{out}");
    let took = eventually(&pods, &pairs, &[true, false, true], "ANP Deny other -> web");
    println!(
        "ANP enforced {:.0} ms after kubectl apply returned",
        took.as_secs_f64() * 1e3
    );

    // 2. The baseline denies web's ingress: no NetworkPolicy selects web, so
    // the baseline decides for client as well.
    let out = kubectl_apply(
        &lab,
        "banp",
        r#"apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject:
    pods:
      namespaceSelector: {}
      podSelector: {matchLabels: {app: web}}
  ingress:
  - name: deny-all
    action: Deny
    from:
    - namespaces: {}
"#,
    );
    assert!(out.contains("created"), "{out}");
    eventually(&pods, &pairs, &[false, false, true], "baseline Deny");

    // 3. A NetworkPolicy that selects web hides the baseline: client is
    // allowed by it; other stays denied by the ANP, which comes first.
    let out = kubectl_apply(
        &lab,
        "np",
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
"#,
    );
    assert!(out.contains("created"), "{out}");
    eventually(
        &pods,
        &pairs,
        &[true, false, true],
        "NetworkPolicy over baseline",
    );

    // 4. ANP Allow wins over the NetworkPolicy that does not allow other.
    let out = kubectl_apply(&lab, "anp", &anp("Allow"));
    assert!(out.contains("configured"), "{out}");
    eventually(
        &pods,
        &pairs,
        &[true, true, true],
        "ANP Allow over NetworkPolicy",
    );
    // margayctl's trace sees the ANP too.
    let trace = trace(&lab, "demo/other", "demo/web");
    assert!(trace.contains("verdict: ALLOW"), "{trace}");

    // 5. ANP Pass hands other over to the NetworkPolicy, which denies it.
    let out = kubectl_apply(&lab, "anp", &anp("Pass"));
    assert!(out.contains("configured"), "{out}");
    eventually(
        &pods,
        &pairs,
        &[true, false, true],
        "ANP Pass to NetworkPolicy",
    );

    // The baseline can only be named default (the API server says so).
    let err = try_kubectl_apply(
        &lab,
        "banp-other",
        r#"apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: other}
spec:
  subject: {namespaces: {}}
"#,
    )
    .expect_err("a baseline not named default is refused");
    assert!(err.contains("metadata.name=\"default\""), "{err}");
    drop(agents);
}
