//! A denied flow through the whole system, with `--policy-log-denied`: a
//! NetworkPolicy applied with kubectl denies `other -> web`; the agent's
//! log file gets a JSON record naming the rule (the policy's default
//! deny), the direction and both pods, and `margayctl policy show` on the
//! node counts the drop. An allowed flow logs nothing. `margayctl policy
//! trace --dataplane` on the node probes both flows and names the rule that
//! dropped (the default deny) and the one that allowed (the policy's rule
//! 0), with model and kernel in agreement.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{add_pod, eventually};
use integration_tests::k8s;
use integration_tests::lab::{self, Lab, Proto};

#[test]
fn a_denied_flow_shows_up_in_the_log_and_the_counters() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let log = lab.run_dir().join("denied.jsonl");
    let log_arg = log.to_str().expect("path").to_string();
    let agent = k8s::start_agent(
        &lab,
        "n1",
        &["--policy-log-denied", "true", "--policy-log-file", &log_arg],
    )
    .expect("agent");
    let pods = vec![
        add_pod(&lab, &agent, "web", "web"),
        add_pod(&lab, &agent, "client", "client"),
        add_pod(&lab, &agent, "other", "other"),
    ];
    let pairs = [(1, 0, Proto::Tcp), (2, 0, Proto::Tcp)];
    eventually(&pods, &pairs, &[true, true], "open before any policy");
    let np = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
"#;
    let f = lab.run_dir().join("np.yaml");
    std::fs::write(&f, np).expect("write");
    let kc = k8s::kubeconfig_path(&lab);
    let out = lab
        .tor()
        .exec(&[
            "kubectl",
            "--kubeconfig",
            kc.to_str().expect("path"),
            "apply",
            "-f",
            f.to_str().expect("path"),
        ])
        .expect("kubectl");
    assert!(out.contains("created"), "{out}");
    eventually(&pods, &pairs, &[true, false], "other -> web denied");
    // One allowed connection after the policy is surely in place (the
    // round above may have probed client -> web just before it was): the
    // policy's allow rule counts it below.
    eventually(
        &pods,
        &[(1, 0, Proto::Tcp)],
        &[true],
        "client -> web allowed by the policy",
    );
    // Records arrive within the log's rate limit; look for ours.
    let t = Instant::now();
    let record = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["src_pod"] == "demo/other" && v["dst_pod"] == "demo/web");
        if let Some(v) = found {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no record of other -> web in {}:\n{text}\n{}",
            log.display(),
            agent.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{record}");
    assert_eq!(record["policy"], "fixed:default");
    assert_eq!(record["direction"], "ingress");
    assert_eq!(record["action"], "deny");
    assert_eq!(
        (record["proto"].as_str(), record["dport"].as_u64()),
        (Some("tcp"), Some(80))
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("demo/client\",\"dst_pod\":\"demo/web"),
        "an allowed flow was logged:\n{text}"
    );
    // `margayctl policy show` on the node counts the drop and the allow.
    let bin = lab::workspace_bin("margayctl").expect("margayctl");
    let n1 = lab.node("n1").expect("n1");
    let show = n1
        .ns
        .exec(&[bin.to_str().expect("path"), "policy", "show"])
        .expect("margayctl policy show");
    println!("{show}");
    let count = |prefix: &str| -> u64 {
        show.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.split_whitespace().nth(4)?.parse::<u64>().ok())
            .sum()
    };
    assert!(count("np:demo/web-from-client ") > 0, "{show}");
    assert!(
        show.lines()
            .any(|l| l.starts_with("fixed:default ") && l.contains(" deny ") && !l.contains(" 0 ")),
        "{show}"
    );
    // `margayctl policy trace --dataplane`: the agent probes from the
    // source pod and reads the counters the probe moved.
    let trace = |from: &str, extra: &[&str]| -> (bool, String, String) {
        let mut argv = vec![
            bin.to_str().expect("path"),
            "policy",
            "trace",
            "--dataplane",
            "--from",
            from,
            "--to",
            "demo/web",
            "--port",
            "80/TCP",
        ];
        argv.extend_from_slice(extra);
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", n1.ns.name()])
            .args(&argv)
            .output()
            .expect("run margayctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let json_trace = |from: &str| -> serde_json::Value {
        let (ok, out, err) = trace(from, &["-o", "json"]);
        println!("{out}{err}");
        assert!(ok, "trace from {from} failed or disagreed: {out} {err}");
        serde_json::from_str(&out).expect("trace JSON")
    };
    let rules = |v: &serde_json::Value, side: &str| -> Vec<(String, String, String, String)> {
        v[side]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let f = |k: &str| r[k].as_str().unwrap_or("").to_string();
                (f("policy"), f("rule"), f("direction"), f("action"))
            })
            .collect()
    };
    let denied = json_trace("demo/other");
    assert_eq!(denied["agree"], true, "{denied}");
    assert_eq!(denied["model"]["verdict"], "deny", "{denied}");
    assert_eq!(denied["kernel"]["verdict"], "deny", "{denied}");
    let dropped_by = (
        "fixed:default".to_string(),
        "-".to_string(),
        "ingress".to_string(),
        "deny".to_string(),
    );
    assert_eq!(
        rules(&denied, "kernel"),
        vec![dropped_by.clone()],
        "{denied}"
    );
    assert_eq!(rules(&denied, "model"), vec![dropped_by], "{denied}");
    let chain = denied["kernel"]["rules"][0]["chain"].as_str().unwrap_or("");
    assert!(
        !chain.is_empty() && show.contains(chain),
        "the trace's chain {chain:?} is not one `policy show` lists:\n{show}"
    );
    let allowed = json_trace("demo/client");
    assert_eq!(allowed["agree"], true, "{allowed}");
    assert_eq!(
        (&allowed["model"]["verdict"], &allowed["kernel"]["verdict"]),
        (&serde_json::json!("allow"), &serde_json::json!("allow")),
        "{allowed}"
    );
    let allowed_by = (
        "np:demo/web-from-client".to_string(),
        "0".to_string(),
        "ingress".to_string(),
        "allow".to_string(),
    );
    assert_eq!(rules(&allowed, "kernel"), vec![allowed_by], "{allowed}");
    // The human form names the rule and the agreement.
    let (ok, table, err) = trace("demo/other", &[]);
    println!("{table}{err}");
    assert!(ok, "{table} {err}");
    assert!(
        table.contains("kernel: DENY")
            && table.contains("fixed:default rule - ingress deny")
            && table.contains("model and kernel AGREE"),
        "{table}"
    );
    // Clear errors: a pod that does not exist, an agent that does not answer.
    let (ok, _, err) = trace("demo/nope", &[]);
    assert!(!ok && err.contains("no such pod"), "{err}");
    let (ok, _, err) = trace("demo/other", &["--agent", "http://127.0.0.1:1"]);
    assert!(!ok && err.contains("cannot reach the agent"), "{err}");
}
