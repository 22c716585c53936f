//! Pods with a server on port 80 and connectivity checks, for the e2e tests
//! that apply policy through the API and watch it take effect.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use integration_tests::cni;
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{Daemon, Lab, Netns, Probe, Proto, probe_many};

/// A pod in namespace `demo` labelled `app`, serving TCP and UDP 80.
pub struct TestPod {
    pub name: String,
    pub ns: Netns,
    pub v4: IpAddr,
    _server: Daemon,
}

/// Adds a pod through `agent` (CNI ADD) and starts its server.
pub fn add_pod(lab: &Lab, agent: &Agent, name: &str, app: &str) -> TestPod {
    let p = cni::add_pod(
        lab,
        agent,
        "demo",
        name,
        &[("app", app)],
        &[("http", 80, "TCP")],
    )
    .expect("pod");
    assert!(
        p.result.ok,
        "ADD {name}: {:?} {}",
        p.result.stdout, p.result.stderr
    );
    let v4 = p.ipv4().expect("v4");
    let server = lab.serve(&p.ns, name, &[80], &[80]).expect("server");
    TestPod {
        name: name.into(),
        ns: p.ns,
        v4,
        _server: server,
    }
}

/// (from, to, proto) → reached?, for the pairs given.
pub fn observe(pods: &[TestPod], pairs: &[(usize, usize, Proto)]) -> Vec<bool> {
    let probes: Vec<Probe> = pairs
        .iter()
        .map(|(f, t, p)| Probe {
            from_ns: pods[*f].ns.name().to_string(),
            to: SocketAddr::new(pods[*t].v4, 80),
            proto: *p,
        })
        .collect();
    probe_many(&probes, Duration::from_millis(600), 16)
        .iter()
        .map(|o| o.reached())
        .collect()
}

/// Polls until the pairs' reachability is `want` (15 s at most).
pub fn eventually(
    pods: &[TestPod],
    pairs: &[(usize, usize, Proto)],
    want: &[bool],
    what: &str,
) -> Duration {
    eventually_within(pods, pairs, want, what, Duration::from_secs(15))
}

/// [`eventually`] with its own limit.
pub fn eventually_within(
    pods: &[TestPod],
    pairs: &[(usize, usize, Proto)],
    want: &[bool],
    what: &str,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = observe(pods, pairs);
        if got == want {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let rows: Vec<String> = pairs
                .iter()
                .zip(got.iter().zip(want))
                .map(|((f, t, p), (g, w))| {
                    format!(
                        "{} -> {} {p}: got {g}, want {w}",
                        pods[*f].name, pods[*t].name
                    )
                })
                .collect();
            panic!("{what}:\n{}", rows.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl` with the lab's kubeconfig, run from the ToR as an operator would.
pub fn try_kubectl(lab: &Lab, args: &[&str]) -> Result<String, String> {
    let kc = k8s::kubeconfig_path(lab);
    let mut argv = vec!["kubectl", "--kubeconfig", kc.to_str().expect("path")];
    argv.extend_from_slice(args);
    lab.tor().exec(&argv).map_err(|e| e.to_string())
}

/// `kubectl apply -f` of `yaml`, written to the lab's run directory as `name`.
pub fn try_kubectl_apply(lab: &Lab, name: &str, yaml: &str) -> Result<String, String> {
    let f = lab.run_dir().join(format!("{name}.yaml"));
    std::fs::write(&f, yaml).expect("write manifest");
    try_kubectl(lab, &["apply", "-f", f.to_str().expect("path")])
}

/// The upstream AdminNetworkPolicy / BaselineAdminNetworkPolicy CRDs.
pub fn anp_crds() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/admin-network-policy-crds.yaml"),
    )
    .expect("crds")
}
