//! The API server goes away for 10 s: pods keep talking, a CNI ADD fails
//! with "try again later" (11) and leaves nothing behind, and once the API
//! server is back (same state file, no watch history) the agents relist and
//! the same ADD succeeds.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use integration_tests::cni::{self, Attachment};
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{self, Lab, Netns, Proto};
use nix::sys::signal::Signal;

fn pod_object(lab: &Lab, name: &str, node: &str) {
    let (pod, on) = (name.to_string(), node.to_string());
    k8s::with_client(lab.tor(), move |c| async move {
        k8s::create_pod(&c, "demo", &pod, &on, &[], &[])
            .await
            .expect("pod");
    })
    .expect("pod object");
}

fn attach(lab: &Lab, name: &str) -> (Netns, Attachment) {
    let ns = Netns::create(&lab.pod_ns_name("demo", name)).expect("netns");
    let a = Attachment {
        container_id: format!("ctr-{name}"),
        netns: ns.path().display().to_string(),
        ifname: "eth0".into(),
        pod_namespace: "demo".into(),
        pod_name: name.into(),
    };
    (ns, a)
}

fn v4(out: &cni::Outcome) -> IpAddr {
    out.ips()
        .iter()
        .filter_map(|s| s.parse().ok())
        .find(IpAddr::is_ipv4)
        .expect("v4")
}

fn cali_links(ns: &Netns) -> usize {
    cni::host_veths(ns).expect("ip link").len()
}

#[test]
fn api_server_outage_keeps_pods_working_and_cni_says_try_again() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let mut api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let agents: Vec<Agent> = ["n1", "n2"]
        .iter()
        // No reserve: a reserve unit would answer ADD c without the API
        // server (its move waits for the server to come back).
        .map(|n| k8s::start_agent(&lab, n, &["--ipam-reserve", "0"]).expect("agent"))
        .collect();
    let conf = |a: &Agent| cni::margay_conf(a, &lab.run_dir().join("cni.log"));
    let n1 = &lab.node("n1").expect("n1").ns;
    let n2 = &lab.node("n2").expect("n2").ns;
    for (name, node) in [("a", "n1"), ("b", "n2"), ("c", "n1")] {
        pod_object(&lab, name, node);
    }
    let (a_ns, a) = attach(&lab, "a");
    let (b_ns, b) = attach(&lab, "b");
    let out = cni::invoke(n1, "ADD", &conf(&agents[0]), &a).expect("ADD a");
    assert!(out.ok, "{:?}", out.stdout);
    let out = cni::invoke(n2, "ADD", &conf(&agents[1]), &b).expect("ADD b");
    assert!(out.ok, "{:?}", out.stdout);
    let b_ip = v4(&out);
    let _srv = lab.serve(&b_ns, "b", &[80], &[]).expect("server");
    let to_b = SocketAddr::new(b_ip, 80);
    assert!(lab::wait_reachable(&a_ns, to_b, Proto::Tcp, Duration::from_secs(15)).reached());

    // Outage.
    api.signal(Signal::SIGTERM).expect("stop apiserver");
    assert!(
        api.wait_exit(Duration::from_secs(10)).is_some(),
        "apiserver exits"
    );
    let down_at = Instant::now();
    let links = cali_links(n1);
    let (_c_ns, c) = attach(&lab, "c");
    let out = cni::invoke(n1, "ADD", &conf(&agents[0]), &c).expect("ADD c");
    assert!(!out.ok, "ADD must fail while the API server is down");
    assert_eq!(out.error_code(), Some(11), "{:?}", out.stdout);
    assert_eq!(cali_links(n1), links, "no veth left behind");
    let mut probes = 0;
    while down_at.elapsed() < Duration::from_secs(10) {
        let o = lab::probe(&a_ns, to_b, Proto::Tcp, Duration::from_secs(1));
        assert!(
            o.reached(),
            "pods must keep talking during the outage: {o:?}"
        );
        probes += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("{probes} probes a -> b during the 10 s outage, all answered");

    // Back, with the same state; the agents relist.
    let _api = k8s::start_apiserver(&lab).expect("apiserver again");
    let started = Instant::now();
    let out = loop {
        let out = cni::invoke(n1, "ADD", &conf(&agents[0]), &c).expect("ADD c again");
        if out.ok || started.elapsed() > Duration::from_secs(30) {
            break out;
        }
        assert_eq!(
            out.error_code(),
            Some(11),
            "only 'try again' while recovering: {:?}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        out.ok,
        "ADD after recovery: {:?} {}",
        out.stdout, out.stderr
    );
    println!(
        "ADD succeeded {:.1} s after the API server came back",
        started.elapsed().as_secs_f64()
    );
    // Exactly one allocation per pod: the failed attempt leaked nothing.
    let handles = k8s::handles(&lab).expect("handles");
    let mut sorted = handles.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "k8s-pod-network.ctr-a",
            "k8s-pod-network.ctr-b",
            "k8s-pod-network.ctr-c"
        ],
        "{handles:?}"
    );
}
