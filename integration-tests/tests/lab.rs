//! Self-tests of the lab harness: topology, BGP through a BIRD ToR, pods,
//! probes, and that nothing is left behind — on drop, on panic, after `down`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use integration_tests::lab::{
    self, Bird, Lab, Netns, Outcome, PodSpec, Probe, Proto, TorBgp, node_bird_config, probe,
    probe_many, tor_bird_config,
};

fn ours(prefix: &str) -> Vec<String> {
    lab::netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

fn spec(ns: &str, name: &str, v4: &str, v6: &str) -> PodSpec {
    PodSpec {
        namespace: ns.into(),
        name: name.into(),
        ipv4: Some(v4.parse().expect("test address")),
        ipv6: Some(v6.parse().expect("test address")),
    }
}

/// The acceptance: 3 nodes + a BIRD ToR come up, routes flow, pods
/// reach each other across nodes, and dropping the lab leaves `ip netns list`
/// as it was.
#[test]
fn three_nodes_with_bird_tor_route_pods_and_leave_nothing() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(3).build().expect("lab");
    let prefix = lab.prefix().to_string();
    println!("ip netns list (ours) with the lab up: {:?}", ours(&prefix));
    assert_eq!(ours(&prefix).len(), 4, "ToR + 3 nodes");

    let tor = lab
        .start_tor_bird(&tor_bird_config(&TorBgp::default()))
        .expect("tor bird");
    let mut birds = Vec::new();
    let mut pods = Vec::new();
    let mut servers = Vec::new();
    for node in lab.nodes() {
        let i = node.index;
        let cfg = node_bird_config(
            node,
            64512,
            &format!("198.19.{i}.0/26"),
            Some(&format!("2001:db8:{i}::/122")),
        );
        birds.push(
            Bird::start(
                &node.ns,
                lab.run_dir(),
                &format!("{}-bird", node.name),
                &cfg,
            )
            .expect("node bird"),
        );
        let pod = lab
            .add_pod(
                &node.name,
                &spec(
                    "x",
                    &format!("p{i}"),
                    &format!("198.19.{i}.2"),
                    &format!("2001:db8:{i}::2"),
                ),
            )
            .expect("pod");
        servers.push(lab.serve(&pod.ns, &pod.name, &[80], &[80]).expect("server"));
        pods.push(pod);
    }
    assert_eq!(ours(&prefix).len(), 7, "ToR + 3 nodes + 3 pods");

    lab::wait_for("3 sessions at the ToR", Duration::from_secs(30), || {
        let out = tor.birdc("show protocols")?;
        Ok((out.matches("Established").count() == 3).then_some(()))
    })
    .expect("sessions");
    lab::wait_for(
        "6 BGP routes in each node's kernel",
        Duration::from_secs(30),
        || {
            for n in lab.nodes() {
                let v4 = n.ns.ip(&["-4", "route", "show", "proto", "bird"])?;
                let v6 = n.ns.ip(&["-6", "route", "show", "proto", "bird"])?;
                if v4.lines().count() < 3 || v6.lines().count() < 3 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .expect("routes");

    // Every ordered pair, TCP and UDP, v4 and v6: all must answer, first try.
    let mut probes = Vec::new();
    for from in &pods {
        for to in &pods {
            for ip in [to.ipv4.expect("v4").into(), to.ipv6.expect("v6").into()] {
                for proto in [Proto::Tcp, Proto::Udp] {
                    probes.push(Probe {
                        from_ns: from.ns.name().to_string(),
                        to: SocketAddr::new(ip, 80),
                        proto,
                    });
                }
            }
        }
    }
    let results = probe_many(&probes, Duration::from_secs(2), 16);
    for (p, r) in probes.iter().zip(&results) {
        let to_pod = pods
            .iter()
            .find(|q| {
                Some(p.to.ip()) == q.ipv4.map(Into::into)
                    || Some(p.to.ip()) == q.ipv6.map(Into::into)
            })
            .expect("target pod");
        assert_eq!(
            r,
            &Outcome::Reached(to_pod.name.clone()),
            "{} -> {} {}",
            p.from_ns,
            p.to,
            p.proto
        );
    }

    drop(servers);
    drop(pods);
    drop(birds);
    drop(tor);
    drop(lab);
    let left = ours(&prefix);
    println!("ip netns list (ours) after drop: {left:?}");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn probe_outcomes_distinguish_answer_refusal_and_silence() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let a = lab
        .add_pod("n1", &spec("x", "a", "198.19.9.2", "2001:db8:9::2"))
        .expect("pod a");
    let b = lab
        .add_pod("n1", &spec("x", "b", "198.19.9.3", "2001:db8:9::3"))
        .expect("pod b");
    let _srv = lab.serve(&b.ns, "b", &[80], &[80]).expect("server");
    let t = Duration::from_millis(700);
    let b4 = b.ipv4.expect("v4");
    let reached = lab::wait_reachable(
        &a.ns,
        SocketAddr::new(b4.into(), 80),
        Proto::Tcp,
        Duration::from_secs(5),
    );
    assert_eq!(reached, Outcome::Reached("b".into()));
    assert_eq!(
        probe(&a.ns, SocketAddr::new(b4.into(), 80), Proto::Udp, t),
        Outcome::Reached("b".into())
    );
    // No listener: RST for TCP, ICMP port unreachable for UDP.
    assert_eq!(
        probe(&a.ns, SocketAddr::new(b4.into(), 81), Proto::Tcp, t),
        Outcome::Refused
    );
    assert_eq!(
        probe(&a.ns, SocketAddr::new(b4.into(), 81), Proto::Udp, t),
        Outcome::Refused
    );
    // Dropped on the node: silence until the timeout.
    lab.node("n1")
        .expect("n1")
        .ns
        .exec(&["nft", "add table inet t; add chain inet t f { type filter hook forward priority 0; }; add rule inet t f tcp dport 80 drop"])
        .expect("nft drop rule");
    assert_eq!(
        probe(&a.ns, SocketAddr::new(b4.into(), 80), Proto::Tcp, t),
        Outcome::Timeout
    );
}

#[test]
fn panic_inside_a_test_still_removes_the_lab() {
    integration_tests::require_root!();
    let prefix = lab::test_prefix();
    let p = prefix.clone();
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::builder().prefix(&p).nodes(2).build().expect("lab");
        let _pod = lab
            .add_pod("n2", &spec("x", "a", "198.19.8.2", "2001:db8:8::2"))
            .expect("pod");
        let _srv = lab.serve(&_pod.ns, "a", &[80], &[]).expect("server");
        assert_eq!(ours(&p).len(), 4);
        panic!("deliberate failure in the middle of a test");
    });
    assert!(result.is_err());
    assert!(ours(&prefix).is_empty(), "left behind: {:?}", ours(&prefix));
    // A failing lab keeps its logs for whoever debugs it; this failure was
    // deliberate, so remove them too.
    let logs = std::env::temp_dir().join(format!("margay-lab-{prefix}"));
    assert!(
        logs.is_dir(),
        "a failed lab keeps its logs in {}",
        logs.display()
    );
    std::fs::remove_dir_all(&logs).expect("remove the kept logs");
}

/// A lab left by a process that died (here: the README's `up`, which leaves
/// everything running on purpose) is removed entirely by `down`, processes
/// included.
#[test]
fn down_removes_a_lab_left_running() {
    integration_tests::require_root!();
    let prefix = lab::test_prefix();
    let bin = env!("CARGO_BIN_EXE_margay-lab");
    let up = Command::new(bin)
        .args(["--prefix", &prefix, "up", "--nodes", "2", "--pods", "1"])
        .args(["--repo", concat!(env!("CARGO_MANIFEST_DIR"), "/..")])
        .output()
        .expect("run margay-lab up");
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "up failed: {stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(stdout.contains("Established"), "{stdout}");
    let names = ours(&prefix);
    assert_eq!(names.len(), 5, "ToR + 2 nodes + 2 pods: {names:?}");
    let pids: Vec<i32> = names
        .iter()
        .flat_map(|n| Netns::existing(n).pids())
        .collect();
    assert!(!pids.is_empty(), "BIRDs and servers run in the lab");

    let down = Command::new(bin)
        .args(["--prefix", &prefix, "down"])
        .output()
        .expect("run margay-lab down");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(ours(&prefix).is_empty(), "left behind: {:?}", ours(&prefix));
    std::thread::sleep(Duration::from_millis(100));
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next());
        assert!(
            matches!(state, None | Some(Some('Z'))),
            "pid {pid} still running after down: {stat}"
        );
    }
}

#[test]
fn stale_namespaces_of_dead_test_processes_are_swept() {
    integration_tests::require_root!();
    // A pid that existed and is gone: a child we already reaped.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait");
    let name = format!("{}{dead}x0-tor", lab::TEST_PREFIX);
    if std::path::Path::new(&format!("/proc/{dead}")).exists() {
        lab::skip(&format!("pid {dead} was reused already"));
        return;
    }
    let mut ns = Netns::create(&name).expect("create");
    ns.persist(); // as if its owner died without cleaning up
    drop(ns);
    assert!(lab::netns::exists(&name));
    lab::sweep_stale();
    assert!(!lab::netns::exists(&name), "{name} was not swept");
}
