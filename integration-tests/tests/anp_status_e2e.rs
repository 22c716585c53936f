//! AdminNetworkPolicy status: two agents under the RBAC of
//! deploy/margay.yaml elect one writer with the Lease
//! `margay-policy-status`; it writes `Accepted=True` on a policy Margay
//! enforces and `Accepted=False` (naming the field) on one using what
//! Margay does not support; it writes once, not at every reconcile; and
//! when it stops, the other agent takes over within the lease duration
//! (plus one retry period) and goes on writing.

use std::time::{Duration, Instant};

mod e2e_support;

use e2e_support::{anp_crds, try_kubectl, try_kubectl_apply};
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::Lab;
use serde_json::Value;

/// Lease duration of the test (the agent renews every third of it).
const LEASE: Duration = Duration::from_secs(3);

fn apply(lab: &Lab, name: &str, yaml: &str) {
    let out = try_kubectl_apply(lab, name, yaml).expect("apply");
    assert!(
        out.contains("created") || out.contains("configured"),
        "{out}"
    );
}

fn get(lab: &Lab, args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend(["-o", "json"]);
    try_kubectl(lab, &a)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

fn accepted(o: &Value) -> Option<Value> {
    o.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")
        .cloned()
}

/// Waits for the `Accepted` condition of an ANP to satisfy `ok`.
fn wait_condition(lab: &Lab, name: &str, ok: impl Fn(&Value) -> bool, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let o = get(lab, &["adminnetworkpolicy", name]);
        if let Some(c) = o.as_ref().and_then(accepted)
            && ok(&c)
        {
            return o.expect("object");
        }
        assert!(
            start.elapsed() < limit,
            "ANP {name}: no such Accepted condition after {limit:?}; object: {o:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn holder(lab: &Lab) -> Option<String> {
    get(
        lab,
        &["lease", "-n", "margay-system", "margay-policy-status"],
    )?
    .pointer("/spec/holderIdentity")?
    .as_str()
    .map(str::to_string)
}

const ACCEPTED: &str = r#"apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: deny-other}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - name: from-b
    action: Deny
    from: [{namespaces: {matchLabels: {team: b}}}]
"#;

fn fqdn(peer: &str) -> String {
    format!(
        r#"apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: to-fqdn}}
spec:
  priority: 20
  subject: {{namespaces: {{}}}}
  egress:
  - name: web
    action: Allow
    to: [{peer}]
"#
    )
}

#[test]
fn one_elected_agent_writes_accepted_conditions_and_another_takes_over() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let crds = anp_crds();
    apply(&lab, "anp-crds", &crds);
    std::thread::sleep(Duration::from_millis(500)); // CRDs are served
    let lease = format!("{}s", LEASE.as_secs());
    let mut agents: Vec<Agent> = ["n1", "n2"]
        .iter()
        .map(|n| k8s::start_agent(&lab, n, &["--policy-status-lease", &lease]).expect("agent"))
        .collect();

    apply(&lab, "accepted", ACCEPTED);
    apply(&lab, "fqdn", &fqdn("{domainNames: [\"example.org\"]}"));
    let limit = Duration::from_secs(15);
    let ok = wait_condition(&lab, "deny-other", |c| c["status"] == "True", limit);
    let c = accepted(&ok).expect("condition");
    assert_eq!(c["reason"], "Accepted");
    assert_eq!(c["observedGeneration"], ok["metadata"]["generation"]);
    assert!(c["lastTransitionTime"].is_string(), "{c}");
    let bad = wait_condition(&lab, "to-fqdn", |c| c["status"] == "False", limit);
    let c = accepted(&bad).expect("condition");
    assert_eq!(c["reason"], "Unsupported");
    let msg = c["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("domainNames"),
        "message names the field: {msg}"
    );

    // Exactly one agent holds the lease, and only it wrote.
    let first = holder(&lab).expect("lease holder");
    let (h, other) = if first == "n1" { (0, 1) } else { (1, 0) };
    assert_eq!(agents[h].node, first);
    let wrote = |a: &Agent| a.daemon.log().matches("policy status written").count();
    assert_eq!(wrote(&agents[other]), 0, "the follower wrote status");
    assert_eq!(wrote(&agents[h]), 2, "one write per object");

    // Reconciles (renewals, lease and pod events) write nothing more.
    let rv = |lab: &Lab, n: &str| {
        get(lab, &["adminnetworkpolicy", n]).map(|o| o["metadata"]["resourceVersion"].clone())
    };
    let before = (rv(&lab, "deny-other"), rv(&lab, "to-fqdn"));
    std::thread::sleep(LEASE);
    assert_eq!((rv(&lab, "deny-other"), rv(&lab, "to-fqdn")), before);
    assert_eq!(wrote(&agents[h]), 2, "no write storm");
    assert_eq!(
        holder(&lab).as_deref(),
        Some(first.as_str()),
        "the holder renews"
    );

    // The holder stops; the other takes over and writes the next change.
    agents[h].daemon.stop(Duration::from_secs(1));
    let stopped = Instant::now();
    apply(&lab, "fqdn-fixed", &fqdn("{networks: [\"198.18.0.0/16\"]}"));
    let takeover = loop {
        if holder(&lab).as_deref() == Some(agents[other].node.as_str()) {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < LEASE * 3,
            "no takeover after {:?}; lease holder {:?}",
            stopped.elapsed(),
            holder(&lab)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "the other agent took the lease {takeover:?} after the holder stopped (lease {LEASE:?})"
    );
    // Within the lease duration plus one renew period (and polling).
    assert!(
        takeover <= LEASE + LEASE / 3 + Duration::from_millis(500),
        "takeover took {takeover:?}"
    );
    let fixed = wait_condition(&lab, "to-fqdn", |c| c["status"] == "True", limit);
    let c = accepted(&fixed).expect("condition");
    assert_eq!(c["observedGeneration"], fixed["metadata"]["generation"]);
    assert_ne!(
        c["lastTransitionTime"],
        accepted(&bad).expect("old")["lastTransitionTime"].clone(),
        "the status changed: a new transition time"
    );
    assert!(wrote(&agents[other]) >= 1, "the new holder wrote");
}
