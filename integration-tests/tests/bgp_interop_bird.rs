//! margay-bgp ↔ BIRD 2 in the lab: eBGP and iBGP (BIRD as route reflector),
//! IPv4 and IPv6 both ways into both kernels, withdrawals, Cease on
//! shutdown, TCP MD5 (right and wrong password), graceful restart.

mod bgp_support;

use std::time::{Duration, Instant};

use bgp_support::{
    MargayBgp, bird_config, kernel_route, margay_yaml, peer_yaml, wait_bird_established,
    wait_kernel,
};
use integration_tests::lab::{Bird, Lab, TOR_IPV4, TorBgp, tor_bird_config};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(20);

#[test]
fn bird_ebgp_both_families_both_ways_withdraw_and_cease() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    let bird_conf = |statics: &[&str]| {
        bird_config(
            "198.18.0.1",
            "198.18.0.1",
            "2001:db8:ffff::1",
            64512,
            statics,
            &[("n1", "198.18.0.11", 65001, "")],
        )
    };
    let bird = Bird::start(
        lab.tor(),
        lab.run_dir(),
        "tor-bird",
        &bird_conf(&["198.19.200.0/24", "2001:db8:200::/64"]),
    )
    .expect("bird");
    let peers = [peer_yaml(
        "tor",
        "198.18.0.1",
        "64512",
        "next_hop_v6: 2001:db8:ffff::b",
    )];
    let yaml = |orig: &[&str]| margay_yaml(65001, "198.18.0.11", orig, &peers, "");
    let mut m = MargayBgp::start(
        &n1.ns,
        lab.run_dir(),
        "margay-n1",
        &yaml(&["198.19.1.0/26", "2001:db8:1::/64"]),
    );
    m.wait_established("tor", T);
    wait_bird_established(&bird, "n1", T);

    // BIRD → Margay, into Margay's kernel (protocol 80).
    let r = wait_kernel(&n1.ns, "198.19.200.0/24", "via 198.18.0.1", true, T);
    assert!(r.contains("proto 80"), "{r}");
    let r = wait_kernel(&n1.ns, "2001:db8:200::/64", "via 2001:db8:ffff::1", true, T);
    assert!(r.contains("proto 80"), "{r}");
    // Margay → BIRD, into the ToR's kernel.
    let r = wait_kernel(lab.tor(), "198.19.1.0/26", "via 198.18.0.11", true, T);
    assert!(r.contains("proto bird"), "{r}");
    wait_kernel(
        lab.tor(),
        "2001:db8:1::/64",
        "via 2001:db8:ffff::b",
        true,
        T,
    );
    let routes = bird.birdc("show route protocol n1 all").expect("birdc");
    assert!(routes.contains("BGP.as_path: 65001"), "{routes}");

    // BIRD withdraws its IPv4 prefix; Margay's kernel follows.
    bird.reconfigure(&bird_conf(&["2001:db8:200::/64"]))
        .expect("reconfigure");
    wait_kernel(&n1.ns, "198.19.200.0/24", "", false, T);
    assert!(!kernel_route(&n1.ns, "2001:db8:200::/64").is_empty());

    // Margay withdraws its IPv6 prefix (SIGHUP re-reads `originate`).
    m.reload(&yaml(&["198.19.1.0/26"]));
    wait_kernel(lab.tor(), "2001:db8:1::/64", "", false, T);
    assert!(!kernel_route(lab.tor(), "198.19.1.0/26").is_empty());

    // SIGTERM without graceful restart: Cease/Administrative Shutdown, and
    // Margay removes its own kernel routes.
    m.daemon.signal(Signal::SIGTERM).expect("SIGTERM");
    let status = m.daemon.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}\n{}",
        m.log()
    );
    let p = bird.birdc("show protocols all n1").expect("birdc");
    assert!(
        p.contains("Administrative shutdown"),
        "BIRD got Cease/2: {p}"
    );
    let left = n1.ns.ip(&["route", "show", "proto", "80"]).expect("ip");
    let left6 = n1
        .ns
        .ip(&["-6", "route", "show", "proto", "80"])
        .expect("ip");
    assert!(
        left.trim().is_empty() && left6.trim().is_empty(),
        "{left}{left6}"
    );
    wait_kernel(lab.tor(), "198.19.1.0/26", "", false, T);
}

#[test]
fn bird_ibgp_route_reflector_between_two_margay_nodes() {
    require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    // The lab's ToR: iBGP AS 64512, dynamic neighbours, route reflector.
    let bird = lab
        .start_tor_bird(&tor_bird_config(&TorBgp {
            hold_time: 9,
            ..TorBgp::default()
        }))
        .expect("tor bird");
    let mut ms = Vec::new();
    for node in lab.nodes() {
        let i = node.index;
        let peers = [peer_yaml(
            "tor",
            &TOR_IPV4.to_string(),
            "internal",
            &format!("next_hop_v6: {}", node.ipv6),
        )];
        let yaml = margay_yaml(
            64512,
            &node.ipv4.to_string(),
            &[&format!("198.19.{i}.0/26"), &format!("2001:db8:{i}::/64")],
            &peers,
            "",
        );
        let mut m = MargayBgp::start(
            &node.ns,
            lab.run_dir(),
            &format!("margay-{}", node.name),
            &yaml,
        );
        m.wait_established("tor", T);
        ms.push(m);
    }
    let n1 = lab.node("n1").expect("n1");
    let n2 = lab.node("n2").expect("n2");
    // Reflected by BIRD with the next hop kept: node to node directly.
    let r = wait_kernel(&n1.ns, "198.19.2.0/26", "via 198.18.0.12", true, T);
    assert!(r.contains("proto 80"), "{r}");
    wait_kernel(&n2.ns, "198.19.1.0/26", "via 198.18.0.11", true, T);
    wait_kernel(&n1.ns, "2001:db8:2::/64", "via 2001:db8:ffff::c", true, T);
    wait_kernel(&n2.ns, "2001:db8:1::/64", "via 2001:db8:ffff::b", true, T);
    wait_kernel(lab.tor(), "198.19.1.0/26", "via 198.18.0.11", true, T);
    let routes = bird.birdc("show route 198.19.1.0/26 all").expect("birdc");
    assert!(
        routes.contains("BGP.local_pref: 100"),
        "iBGP attributes: {routes}"
    );

    // A node stops: the other node's kernel loses its routes.
    ms.remove(1).daemon.stop(Duration::from_secs(5));
    wait_kernel(&n1.ns, "198.19.2.0/26", "", false, T);
    wait_kernel(&n1.ns, "2001:db8:2::/64", "", false, T);
}

#[test]
fn bird_md5_right_password_establishes_wrong_one_does_not() {
    require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let bird = lab
        .start_tor_bird(&tor_bird_config(&TorBgp {
            hold_time: 9,
            password: Some("s3cret-lab".into()),
            ..TorBgp::default()
        }))
        .expect("tor bird");
    let start = |node: &integration_tests::lab::Node, pw: &str| {
        let peers = [peer_yaml(
            "tor",
            &TOR_IPV4.to_string(),
            "internal",
            &format!("md5_password: {pw}\nnext_hop_v6: {}", node.ipv6),
        )];
        let yaml = margay_yaml(
            64512,
            &node.ipv4.to_string(),
            &[&format!("198.19.{}.0/26", node.index)],
            &peers,
            "",
        );
        MargayBgp::start(
            &node.ns,
            lab.run_dir(),
            &format!("margay-{}", node.name),
            &yaml,
        )
    };
    let n1 = lab.node("n1").expect("n1");
    let n2 = lab.node("n2").expect("n2");
    let mut good = start(n1, "s3cret-lab");
    let bad = start(n2, "wrong-password");
    good.wait_established("tor", T);
    wait_kernel(lab.tor(), "198.19.1.0/26", "via 198.18.0.11", true, T);
    // Give the wrong one several connect attempts (retry 1 s).
    std::thread::sleep(Duration::from_secs(4));
    assert_ne!(bad.peer_state("tor"), "Established", "{}", bad.log());
    assert!(kernel_route(lab.tor(), "198.19.2.0/26").trim().is_empty());
    let protos = bird.birdc("show protocols").expect("birdc");
    assert_eq!(
        protos.matches("Established").count(),
        1,
        "only the right password has a session: {protos}"
    );
}

#[test]
fn graceful_restart_of_margay_keeps_forwarding_at_bird() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    let bird = Bird::start(
        lab.tor(),
        lab.run_dir(),
        "tor-bird",
        &bird_config(
            "198.18.0.1",
            "198.18.0.1",
            "2001:db8:ffff::1",
            64512,
            &["198.19.200.0/24"],
            &[("n1", "198.18.0.11", 65001, "graceful restart on;")],
        ),
    )
    .expect("bird");
    let peers = [peer_yaml(
        "tor",
        "198.18.0.1",
        "64512",
        "next_hop_v6: 2001:db8:ffff::b\ngraceful_restart: { restart_time: 30, stale_time: 60 }",
    )];
    let yaml = margay_yaml(65001, "198.18.0.11", &["198.19.1.0/26"], &peers, "");
    let mut m = MargayBgp::start(&n1.ns, lab.run_dir(), "margay-n1", &yaml);
    m.wait_established("tor", T);
    wait_kernel(lab.tor(), "198.19.1.0/26", "via 198.18.0.11", true, T);
    wait_kernel(&n1.ns, "198.19.200.0/24", "via 198.18.0.1", true, T);

    // Stop Margay (graceful: no NOTIFICATION) and poll both kernels every
    // 20 ms through the stop, the restart and the new session.
    m.daemon.signal(Signal::SIGTERM).expect("SIGTERM");
    assert!(
        m.daemon.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        m.log()
    );
    let down_at = Instant::now();
    let mut gaps = Vec::new();
    let mut poll = |what: &str| {
        if kernel_route(lab.tor(), "198.19.1.0/26").trim().is_empty() {
            gaps.push(format!("{what}: ToR lost 198.19.1.0/26"));
        }
        if kernel_route(&n1.ns, "198.19.200.0/24").trim().is_empty() {
            gaps.push(format!("{what}: n1 lost 198.19.200.0/24"));
        }
    };
    while down_at.elapsed() < Duration::from_secs(2) {
        poll("while down");
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = bird.birdc("show protocols all n1").expect("birdc");
    assert!(
        !p.contains("Established"),
        "session is down during the restart: {p}"
    );
    // A route of ours no peer announces any more (left by the previous
    // run): kept through the restart, removed once the tables are complete.
    n1.ns
        .ip(&[
            "route",
            "add",
            "198.19.99.0/24",
            "via",
            "198.18.0.1",
            "proto",
            "80",
            "metric",
            "1280",
        ])
        .expect("stale route");
    let mut m2 = MargayBgp::start(&n1.ns, lab.run_dir(), "margay-n1-again", &yaml);
    let up = Instant::now();
    let bird_up = || {
        bird.birdc("show protocols n1")
            .unwrap_or_default()
            .contains("Established")
    };
    while m2.peer_state("tor") != "Established" || !bird_up() {
        poll("restarting");
        assert!(up.elapsed() < T, "re-established in time: {}", m2.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    m2.wait_established("tor", T);
    // After End-of-RIB both ways: still there, and no longer stale at BIRD.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        poll("after restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gaps.is_empty(), "forwarding gaps: {gaps:?}\n{}", m2.log());
    wait_kernel(&n1.ns, "198.19.99.0/24", "proto 80", false, T);
    wait_kernel(&n1.ns, "198.19.200.0/24", "via 198.18.0.1", true, T);
    let r = bird.birdc("show route 198.19.1.0/26 all").expect("birdc");
    assert!(!r.contains("stale"), "refreshed after the restart: {r}");
    let log = m2.log();
    assert!(
        log.contains("restarting with forwarding state preserved"),
        "{log}"
    );
}

/// RFC 4724 §4.2 with a real peer: BIRD dies and its FIN never reaches
/// Margay (dropped at the ToR, as when a router's control plane restarts
/// or its host reboots), so Margay still holds an Established session when
/// the restarted BIRD connects again. That connection replaces the dead
/// session at once, with BIRD's routes kept in Margay's kernel throughout;
/// refusing it as a collision (RFC 4271 §6.8) would keep BIRD out until
/// Margay's 60 s hold timer expired and then flush its routes.
#[test]
fn bird_restarting_behind_a_dead_connection_replaces_the_session_at_once() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    // BIRD's later `hold time` overrides the helper's 9 s.
    let conf = bird_config(
        "198.18.0.1",
        "198.18.0.1",
        "2001:db8:ffff::1",
        64512,
        &["198.19.200.0/24"],
        &[(
            "n1",
            "198.18.0.11",
            65001,
            "graceful restart on; hold time 60; keepalive time 20;",
        )],
    );
    let mut bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", &conf).expect("bird");
    let peers = [peer_yaml(
        "tor",
        "198.18.0.1",
        "64512",
        "next_hop_v6: 2001:db8:ffff::b\ngraceful_restart: { restart_time: 30, stale_time: 60 }",
    )
    .replace("hold_time: 9", "hold_time: 60")];
    let yaml = margay_yaml(65001, "198.18.0.11", &["198.19.1.0/26"], &peers, "");
    let mut m = MargayBgp::start(&n1.ns, lab.run_dir(), "margay-n1", &yaml);
    m.wait_established("tor", T);
    wait_kernel(&n1.ns, "198.19.200.0/24", "via 198.18.0.1", true, T);

    // The session's TCP ports, seen from the ToR; drop everything the ToR
    // sends on that connection from now on (its FIN, its RSTs).
    let ss = lab
        .tor()
        .exec(&["ss", "-tnH", "state", "established"])
        .expect("ss");
    let (local, peer) = ss
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[f.len() - 2].to_string(), f[f.len() - 1].to_string()))
        })
        .find(|(l, p)| {
            (l.ends_with(":179") || p.ends_with(":179")) && p.starts_with("198.18.0.11:")
        })
        .unwrap_or_else(|| panic!("no BGP connection in the ToR:\n{ss}"));
    let port = |a: &str| a.rsplit(':').next().unwrap_or_default().to_string();
    let (lport, pport) = (port(&local), port(&peer));
    for cmd in [
        "add table inet mgt_gr",
        "add chain inet mgt_gr out { type filter hook output priority 0; }",
    ] {
        let argv: Vec<&str> = std::iter::once("nft").chain(cmd.split(' ')).collect();
        lab.tor().exec(&argv).expect("nft");
    }
    lab.tor()
        .exec(&[
            "nft",
            "add",
            "rule",
            "inet",
            "mgt_gr",
            "out",
            "ip",
            "daddr",
            "198.18.0.11",
            "tcp",
            "sport",
            &lport,
            "tcp",
            "dport",
            &pport,
            "drop",
        ])
        .expect("nft rule");

    // BIRD dies; Margay does not notice.
    bird.daemon.signal(Signal::SIGKILL).expect("SIGKILL");
    assert!(bird.daemon.wait_exit(Duration::from_secs(5)).is_some());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(m.peer_state("tor"), "Established", "{}", m.log());

    // BIRD again: its connection must replace the dead session well
    // before Margay's hold timer (60 s) could have ended it.
    let bird2 = Bird::start(lab.tor(), lab.run_dir(), "tor-bird-again", &conf).expect("bird");
    let started = Instant::now();
    let mut gaps = 0;
    loop {
        if kernel_route(&n1.ns, "198.19.200.0/24").trim().is_empty() {
            gaps += 1;
        }
        let bird_up = bird2
            .birdc("show protocols n1")
            .unwrap_or_default()
            .contains("Established");
        if bird_up && m.peer_state("tor") == "Established" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not re-established 20 s after BIRD restarted (hold timer 60 s)\nstatus: {}\n{}",
            m.status(),
            m.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gaps, 0, "BIRD's route left n1's kernel during the restart");
    wait_kernel(&n1.ns, "198.19.200.0/24", "via 198.18.0.1", true, T);
    wait_kernel(lab.tor(), "198.19.1.0/26", "via 198.18.0.11", true, T);
}
