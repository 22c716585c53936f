//! Restarting margay-node must not disturb the datapath: with a bounded ping
//! stream and a TCP connection running between pods on different nodes, the
//! agent of one node is SIGKILLed and restarted, then the other's is
//! SIGTERMed and restarted. Nothing is lost, and afterwards routes, the
//! nftables table and the IPAM allocations are what they were. Meanwhile a
//! pod that policy denies keeps trying to connect: not one attempt may get
//! through while an agent is down or starting (fail closed).

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use integration_tests::cni;
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{self, Daemon, Lab, Netns};
use kube::Api;
use nix::sys::signal::Signal;
use node_agent::k8s::crd::IPAMBlock;

fn add_pod(lab: &Lab, agent: &Agent, name: &str, app: &str) -> (Netns, IpAddr) {
    let p = cni::add_pod(lab, agent, "demo", name, &[("app", app)], &[]).expect("pod");
    assert!(
        p.result.ok,
        "ADD {name}: {:?} {}",
        p.result.stdout, p.result.stderr
    );
    let ip = p.ipv4().expect("v4");
    (p.ns, ip)
}

/// The node's `inet margay` table as content: every object without its
/// kernel handle, sorted (a rebuild may create objects in another order).
fn nft_normalized(ns: &Netns) -> String {
    let json = ns
        .exec(&["nft", "-j", "list", "table", "inet", "margay"])
        .expect("nft -j");
    let v: serde_json::Value = serde_json::from_str(&json).expect("nft json");
    let mut objs: Vec<String> = v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .map(|o| {
            let mut o = o.clone();
            if let Some(m) = o
                .as_object_mut()
                .and_then(|m| m.values_mut().next())
                .and_then(|inner| inner.as_object_mut())
            {
                m.remove("handle");
                // Per-rule counters count the traffic of the test: their
                // values are not state, their presence is.
                if let Some(expr) = m.get_mut("expr").and_then(|e| e.as_array_mut()) {
                    for e in expr {
                        if let Some(c) = e.get_mut("counter") {
                            *c = serde_json::json!({});
                        }
                    }
                }
            }
            o.to_string()
        })
        .collect();
    objs.sort();
    objs.join("\n") + "\n"
}

/// Everything whose stability we check, per node, as text.
fn snapshot(lab: &Lab) -> String {
    let mut out = String::new();
    for n in lab.nodes() {
        for proto in ["80", "81"] {
            for fam in ["-4", "-6"] {
                out += &n
                    .ns
                    .ip(&[fam, "route", "show", "proto", proto])
                    .expect("routes");
            }
        }
        out += &nft_normalized(&n.ns);
    }
    let blocks = k8s::with_client(lab.tor(), |c| async move {
        let mut b: Vec<String> = Api::<IPAMBlock>::all(c)
            .list(&Default::default())
            .await
            .expect("blocks")
            .items
            .into_iter()
            .map(|b| {
                let mut allocs: Vec<String> = b
                    .spec
                    .0
                    .allocations
                    .iter()
                    .map(|a| format!("{}:{}", a.ordinal, a.handle))
                    .collect();
                allocs.sort();
                format!("{} {:?} {allocs:?}", b.spec.0.cidr, b.spec.0.affinity)
            })
            .collect();
        b.sort();
        b.join("\n")
    })
    .expect("blocks");
    out + &blocks
}

fn wait_ready(lab: &Lab, node: &str) {
    let n = lab.node(node).expect("node");
    let url = format!("{}/readyz", k8s::AGENT_HEALTH);
    lab::wait_for(&format!("{node} ready"), Duration::from_secs(30), || {
        Ok(n.ns
            .exec(&["curl", "-sf", "-m", "1", &url])
            .ok()
            .map(|_| ()))
    })
    .expect("agent ready again");
}

#[test]
fn agent_restarts_lose_no_packet_and_change_no_state() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    // A policy, so the nft table has real content to keep.
    k8s::with_client(lab.tor(), |c| async move {
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "demo-only", "namespace": "demo"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "demo"}}}]}]}
        }))
        .expect("policy json");
        k8s::create_pod(&c, "demo", "placeholder", "n1", &[], &[]).await.expect("ns");
        Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(c, "demo")
            .create(&Default::default(), &np)
            .await
            .expect("policy");
    })
    .expect("policy");
    let mut agents: Vec<Agent> = ["n1", "n2"]
        .iter()
        .map(|n| k8s::start_agent(&lab, n, &[]).expect("agent"))
        .collect();
    let (a_ns, _) = add_pod(&lab, &agents[0], "a", "demo");
    let (b_ns, b_ip) = add_pod(&lab, &agents[1], "b", "demo");
    // Not app=demo: the policy on b denies it.
    let (x_ns, _) = add_pod(&lab, &agents[0], "intruder", "intruder");
    let _srv: Daemon = lab.serve(&b_ns, "b", &[80], &[]).expect("server");
    let reached = lab::wait_reachable(
        &a_ns,
        std::net::SocketAddr::new(b_ip, 80),
        lab::Proto::Tcp,
        Duration::from_secs(15),
    );
    assert!(reached.reached(), "{reached:?}");
    wait_ready(&lab, "n1");
    wait_ready(&lab, "n2");
    // The denied flow is denied (so the prober below can see a breach).
    let denied = lab::probe(
        &x_ns,
        std::net::SocketAddr::new(b_ip, 80),
        lab::Proto::Tcp,
        Duration::from_millis(500),
    );
    assert!(!denied.reached(), "policy lets the intruder in: {denied:?}");
    let before = snapshot(&lab);

    // The intruder tries b:80 every ~60 ms through both restarts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let x_name = x_ns.name().to_string();
    let stop_x = stop.clone();
    let intruder = std::thread::spawn(move || {
        Netns::existing(&x_name).enter(move || {
            let (mut tries, mut breaches) = (0u32, 0u32);
            while !stop_x.load(std::sync::atomic::Ordering::Relaxed) {
                tries += 1;
                let to = std::net::SocketAddr::new(b_ip, 80);
                if std::net::TcpStream::connect_timeout(&to, Duration::from_millis(50)).is_ok() {
                    breaches += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (tries, breaches)
        })
    });

    // 1500 pings at 10 ms (15 s), and a long-lived TCP connection.
    let ping = a_ns
        .command("ping")
        .args([
            "-n",
            "-q",
            "-i",
            "0.01",
            "-c",
            "1500",
            "-W",
            "1",
            &b_ip.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping");
    // A TCP connection open through both restarts: 140 lines over 14 s.
    let b_name = b_ns.name().to_string();
    let sink = std::thread::spawn(move || {
        Netns::existing(&b_name).enter(|| -> std::io::Result<usize> {
            use std::io::Read as _;
            let l = std::net::TcpListener::bind("0.0.0.0:81")?;
            let (mut s, _) = l.accept()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            Ok(buf.len())
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let a_name = a_ns.name().to_string();
    let writer = std::thread::spawn(move || {
        Netns::existing(&a_name).enter(move || -> std::io::Result<usize> {
            use std::io::Write as _;
            let mut s = std::net::TcpStream::connect((b_ip, 81))?;
            let mut sent = 0;
            for i in 0..140 {
                let line = format!("line{i}\n");
                s.write_all(line.as_bytes())?;
                sent += line.len();
                std::thread::sleep(Duration::from_millis(100));
            }
            s.shutdown(std::net::Shutdown::Write)?;
            Ok(sent)
        })
    });

    std::thread::sleep(Duration::from_secs(2));
    agents[0]
        .daemon
        .signal(Signal::SIGKILL)
        .expect("kill n1's agent");
    agents[0].daemon.wait_exit(Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(1));
    agents[0] = k8s::start_agent(&lab, "n1", &[]).expect("n1 agent again");
    wait_ready(&lab, "n1");

    agents[1]
        .daemon
        .signal(Signal::SIGTERM)
        .expect("stop n2's agent");
    let st = agents[1]
        .daemon
        .wait_exit(Duration::from_secs(10))
        .expect("n2 exits");
    assert!(st.success(), "SIGTERM exit: {st:?}");
    std::thread::sleep(Duration::from_secs(1));
    agents[1] = k8s::start_agent(&lab, "n2", &[]).expect("n2 agent again");
    let last_start = std::time::Instant::now();
    wait_ready(&lab, "n2");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (tries, breaches) = intruder
        .join()
        .expect("intruder thread")
        .expect("enter intruder");
    println!("denied flow: {tries} attempts during the restarts, {breaches} got through");
    assert!(tries > 50, "the intruder barely tried: {tries}");
    assert_eq!(
        breaches, 0,
        "a denied flow got through while an agent restarted"
    );

    let out = ping.wait_with_output().expect("ping result");
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{}", summary.trim());
    assert!(
        summary.contains("1500 packets transmitted, 1500 received"),
        "packets lost across agent restarts:\n{summary}"
    );
    let sent = writer
        .join()
        .expect("writer thread")
        .expect("enter a")
        .expect("the TCP connection broke while writing");
    let got = sink
        .join()
        .expect("sink thread")
        .expect("enter b")
        .expect("the TCP connection broke while reading");
    assert_eq!(got, sent, "bytes lost on the TCP connection");

    // Let the restarted agents finish their start-up reconcile, then compare.
    // (the agents run with a 10 s start-up grace before removing stale routes).
    std::thread::sleep(Duration::from_secs(11).saturating_sub(last_start.elapsed()));
    let after = snapshot(&lab);
    assert_eq!(before, after, "state changed across restarts");
}
