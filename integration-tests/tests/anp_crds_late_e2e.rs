//! AdminNetworkPolicy CRDs installed *after* the agent started: the agent
//! is ready without them (its watches retry with backoff), and once they
//! are installed an ANP applied with kubectl takes effect without a
//! restart. Prints how long the pick-up took.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{add_pod, anp_crds, eventually_within, try_kubectl_apply};
use integration_tests::k8s;
use integration_tests::lab::{Lab, Proto};

fn kubectl_apply(lab: &Lab, name: &str, yaml: &str) -> String {
    try_kubectl_apply(lab, name, yaml).expect("kubectl apply")
}

#[test]
fn anp_crds_installed_after_the_agent_are_picked_up() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let agent = k8s::start_agent(&lab, "n1", &[]).expect("agent without ANP CRDs");
    let pods = vec![
        add_pod(&lab, &agent, "web", "web"),
        add_pod(&lab, &agent, "other", "other"),
    ];
    let pairs = [(1, 0, Proto::Tcp)];
    eventually_within(&pods, &pairs, &[true], "open", Duration::from_secs(15));
    let crds = anp_crds();
    let out = kubectl_apply(&lab, "anp-crds", &crds);
    assert!(out.contains("created"), "{out}");
    std::thread::sleep(Duration::from_millis(500)); // CRDs are served
    let t = Instant::now();
    let out = kubectl_apply(
        &lab,
        "anp",
        r#"apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: web-guard}
spec:
  priority: 10
  subject:
    pods:
      namespaceSelector: {}
      podSelector: {matchLabels: {app: web}}
  ingress:
  - name: other
    action: Deny
    from:
    - pods:
        namespaceSelector: {}
        podSelector: {matchLabels: {app: other}}
"#,
    );
    assert!(out.contains("created"), "{out}");
    eventually_within(
        &pods,
        &pairs,
        &[false],
        "ANP Deny after a late CRD install",
        Duration::from_secs(90),
    );
    println!(
        "ANP picked up {:.1} s after kubectl apply (CRDs installed after the agent)",
        t.elapsed().as_secs_f64()
    );
}
