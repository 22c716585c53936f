//! NetworkPolicy through the whole system: applied with kubectl against the
//! lab API server, enforced by the agent of the node that hosts the selected
//! pod, and gone again when the policy is deleted.

use std::time::Duration;

mod e2e_support;

use e2e_support::{add_pod, eventually};
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{self, Lab, Netns, Proto};

/// Runs margayctl in `ns`; returns (exit code, stdout + stderr).
fn margayctl(lab: &Lab, ns: &Netns, args: &[&str]) -> (i32, String) {
    let bin = lab::workspace_bin("margayctl").expect("margayctl built");
    let out = ns
        .command(bin.to_str().expect("path"))
        .arg("--kubeconfig")
        .arg(k8s::kubeconfig_path(lab))
        .args(args)
        .output()
        .expect("run margayctl");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn kubectl(lab: &Lab, args: &[&str]) -> String {
    e2e_support::try_kubectl(lab, args).expect("kubectl")
}

#[test]
fn kubectl_policy_takes_effect_on_the_right_node_and_goes_when_deleted() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
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
        (client, web, Proto::Udp),
        (web, other, Proto::Tcp),
        (other, client, Proto::Tcp),
    ];
    eventually(
        &pods,
        &pairs,
        &[true; 5],
        "everything open before any policy",
    );

    let policy = lab.run_dir().join("web-policy.yaml");
    std::fs::write(
        &policy,
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: http}]
"#,
    )
    .expect("write policy");
    let out = kubectl(&lab, &["apply", "-f", policy.to_str().expect("path")]);
    assert!(out.contains("created"), "{out}");
    let took = eventually(
        &pods,
        &pairs,
        // client→web TCP (named port) allowed; other→web and UDP denied;
        // web's egress and the other pods are not isolated.
        &[true, false, false, true, true],
        "policy applied",
    );
    println!(
        "policy enforced {:.0} ms after kubectl apply returned",
        took.as_secs_f64() * 1e3
    );
    // Enforced by the agent of the node hosting `web` (n1), nowhere else.
    let n1 = lab
        .node("n1")
        .expect("n1")
        .ns
        .exec(&["nft", "list", "table", "inet", "margay"])
        .expect("nft n1");
    let n2 = lab
        .node("n2")
        .expect("n2")
        .ns
        .exec(&["nft", "list", "table", "inet", "margay"])
        .expect("nft n2");
    let web_if = node_agent::dataplane::veth::VethName::for_pod("demo", "web").to_string();
    assert!(n1.contains(&web_if), "n1 has web's endpoint:\n{n1}");
    assert!(!n2.contains(&web_if), "n2 does not:\n{n2}");

    // margayctl agrees with what the probes saw, and names the policy.
    let tor = lab.tor();
    let trace = |from: &str, port: &str| {
        margayctl(
            &lab,
            tor,
            &[
                "policy", "trace", "--from", from, "--to", "demo/web", "--port", port,
            ],
        )
    };
    let (code, out) = trace("demo/client", "80/TCP");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("verdict: ALLOW") && out.contains("web-from-client"),
        "{out}"
    );
    assert!(trace("demo/other", "80/TCP").1.contains("verdict: DENY"));
    // The same answer for scripts: -o json and -o yaml carry the fields.
    let (code, out) = margayctl(
        &lab,
        tor,
        &[
            "policy",
            "trace",
            "--from",
            "demo/client",
            "--to",
            "demo/web",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let t: serde_json::Value = serde_json::from_str(&out).expect("trace -o json is JSON");
    assert_eq!(t["allowed"], true, "{out}");
    assert_eq!(
        t["destinationPolicies"],
        serde_json::json!(["web-from-client"])
    );
    let (code, out) = margayctl(
        &lab,
        tor,
        &[
            "policy",
            "trace",
            "--from",
            "demo/other",
            "--to",
            "demo/web",
            "-o",
            "yaml",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let t: serde_json::Value = serde_yaml_ng::from_str(&out).expect("trace -o yaml is YAML");
    assert_eq!(t["allowed"], false, "{out}");
    assert!(trace("demo/client", "80/UDP").1.contains("verdict: DENY"));
    let n1 = &lab.node("n1").expect("n1").ns;
    // Status is refreshed every second: poll (bounded).
    let established = |out: &str| {
        out.lines()
            .any(|l| l.starts_with("mesh-n2") && l.contains("Established"))
    };
    let mut out = String::new();
    for _ in 0..30 {
        let (code, o) = margayctl(&lab, n1, &["--agent", k8s::AGENT_HEALTH, "node", "status"]);
        assert_eq!(code, 0, "{o}");
        out = o;
        if established(&out) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(out.contains("198.18.0.11/24 on eth0"), "{out}");
    assert!(established(&out), "{out}");

    let out = kubectl(
        &lab,
        &["delete", "networkpolicy", "-n", "demo", "web-from-client"],
    );
    assert!(out.contains("deleted"), "{out}");
    eventually(&pods, &pairs, &[true; 5], "policy deleted");

    // IPAM from margayctl: usage, a clean check, a refused release.
    let (code, out) = margayctl(&lab, tor, &["ipam", "show", "--show-blocks"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("198.19.0.0/16") && out.contains("host:n1") && out.contains("host:n2"),
        "{out}"
    );
    let (code, out) = margayctl(&lab, tor, &["ipam", "check"]);
    assert_eq!(code, 0, "{out}");
    let web_ip = pods[web].v4.to_string();
    let (code, out) = margayctl(&lab, tor, &["ipam", "release", "--ip", &web_ip]);
    assert_ne!(
        code, 0,
        "releasing a live pod's address must be refused: {out}"
    );
    assert!(out.contains("demo/web") && out.contains("exists"), "{out}");
    // A leak: the Pod object goes without a CNI DEL.
    let other_ip = pods[other].v4.to_string();
    kubectl(&lab, &["delete", "pod", "-n", "demo", "other"]);
    let (code, out) = margayctl(&lab, tor, &["ipam", "check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROBLEMS FOUND") && out.contains(&format!("{other_ip} in block")),
        "{out}"
    );
    assert!(
        !out.contains("AllocationRef"),
        "a report, not Debug output: {out}"
    );
    let (code, out) = margayctl(&lab, tor, &["ipam", "check", "-o", "json"]);
    assert_eq!(code, 1, "{out}");
    let c: serde_json::Value = serde_json::from_str(&out).expect("check -o json is JSON");
    assert_eq!(c["clean"], false);
    assert_eq!(
        c["problems"]["allocationsWithoutPod"][0]["ip"], other_ip,
        "{out}"
    );
    let (code, out) = margayctl(&lab, tor, &["ipam", "show", "-o", "wide"]);
    assert!(
        code == 0 && out.contains("COOLING") && out.contains("host:n1"),
        "{out}"
    );
    let (code, out) = margayctl(&lab, tor, &["ipam", "release", "--ip", &other_ip]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = margayctl(&lab, tor, &["ipam", "show", "--ip", &other_ip]);
    assert!(code == 0 && out.contains("free"), "{out}");
    let (code, out) = margayctl(&lab, tor, &["ipam", "check"]);
    assert_eq!(code, 0, "clean after the release: {out}");
    drop(agents);
}
