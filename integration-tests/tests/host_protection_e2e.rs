//! Host protection through the whole system: a `HostEndpoint` and a deny-all
//! `HostNetworkPolicy` applied with kubectl make the agent install
//! `inet margay_host` on its node: an ordinary port of the node stops
//! answering while SSH (a failsafe port) still does and the agent keeps
//! talking to the API server (outbound 6443 is failsafe too); deleting the
//! policy opens the port again, deleting the endpoint removes the table.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use integration_tests::k8s;
use integration_tests::lab::{self, Lab, Netns, Proto};

fn kubectl(lab: &Lab, args: &[&str], stdin_file: Option<(&str, &str)>) -> String {
    let kc = k8s::kubeconfig_path(lab);
    let mut argv: Vec<String> = vec![
        "kubectl".into(),
        "--kubeconfig".into(),
        kc.to_str().expect("path").into(),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    if let Some((name, yaml)) = stdin_file {
        let f = lab.run_dir().join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).expect("write manifest");
        argv.extend(["-f".into(), f.to_str().expect("path").into()]);
    }
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    lab.tor().exec(&refs).expect("kubectl")
}

/// Waits until every (port, answers) holds from the ToR; returns how long.
fn until(tor: &Netns, ip: IpAddr, want: &[(u16, bool)], what: &str) -> Duration {
    let t = Instant::now();
    loop {
        let got: Vec<bool> = want
            .iter()
            .map(|(p, _)| {
                lab::probe(
                    tor,
                    SocketAddr::new(ip, *p),
                    Proto::Tcp,
                    Duration::from_millis(400),
                )
                .reached()
            })
            .collect();
        if got.iter().zip(want).all(|(g, (_, w))| g == w) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{what}: ports {want:?} answered {got:?} after 15 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const HEP: &str = r#"apiVersion: crd.margay.dev/v1
kind: HostEndpoint
metadata: {name: n1-all, labels: {role: worker}}
spec: {node: n1, interfaceName: "*"}
"#;

const DENY_ALL: &str = r#"apiVersion: crd.margay.dev/v1
kind: HostNetworkPolicy
metadata: {name: deny-all-in}
spec:
  hostEndpointSelector: {matchLabels: {role: worker}}
  policyTypes: [Ingress]
"#;

#[test]
fn host_policy_from_kubectl_closes_ports_but_not_the_failsafes() {
    integration_tests::require_root!();
    let mut lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let agent = k8s::start_agent(&lab, "n1", &[]).expect("agent");
    let n = lab.node("n1").expect("n1");
    let (ns, ip) = (Netns::existing(n.ns.name()), IpAddr::V4(n.ipv4));
    let d = lab
        .serve(&ns, "n1-host", &[22, 8080], &[])
        .expect("listeners");
    lab.keep(d);
    until(
        lab.tor(),
        ip,
        &[(22, true), (8080, true)],
        "open before any policy",
    );

    let out = kubectl(&lab, &["apply"], Some(("hep", HEP)));
    assert!(out.contains("created"), "{out}");
    let out = kubectl(&lab, &["apply"], Some(("deny", DENY_ALL)));
    assert!(out.contains("created"), "{out}");
    let took = until(
        lab.tor(),
        ip,
        &[(22, true), (8080, false)],
        "deny-all applied",
    );
    println!(
        "host deny-all enforced {:.0} ms after kubectl apply",
        took.as_secs_f64() * 1e3
    );
    let tables = ns.exec(&["nft", "list", "tables"]).expect("nft");
    assert!(tables.contains("margay_host"), "{tables}");

    // The agent still hears from the API server (its watch sees the
    // deletion), though every ordinary inbound port is closed.
    let out = kubectl(&lab, &["delete", "hostnetworkpolicy", "deny-all-in"], None);
    assert!(out.contains("deleted"), "{out}");
    until(lab.tor(), ip, &[(22, true), (8080, true)], "policy deleted");

    let out = kubectl(&lab, &["delete", "hostendpoint", "n1-all"], None);
    assert!(out.contains("deleted"), "{out}");
    let t = Instant::now();
    loop {
        let tables = ns.exec(&["nft", "list", "tables"]).expect("nft");
        if !tables.contains("margay_host") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "host table left after the endpoint was deleted: {tables}\n{}",
            agent.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
