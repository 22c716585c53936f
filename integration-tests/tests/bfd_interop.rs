//! BFD (RFC 5880/5881) between margay-bgp and BIRD 2 (`protocol bfd`) and
//! FRR 8.4 (`bfdd`), in the lab: sessions come up (IPv4 and IPv6), GTSM
//! drops packets that did not come with TTL 255, and — the point of BFD —
//! a cut path takes the BGP session and its routes out of the kernel FIB
//! within `multiplier × interval + 100 ms`, next to a session without BFD
//! that waits for its hold timer: both failover times are measured from
//! the same cut and printed side by side.
//!
//! Set-up of the failover tests: the node n1 has a second address
//! (198.18.0.211); margay-bgp runs two eBGP sessions to the ToR's daemon,
//! one from each address. The daemon sends 198.19.200.0/24 over the first
//! (BFD 100 ms × 3, hold 3 s) and 198.19.201.0/24 over the second (no BFD,
//! hold 3 s). The cut is an nft drop rule for everything from and to the
//! ToR inside n1's namespace: links stay up, so only BFD or the hold timer
//! can notice.

mod bgp_support;

use std::time::{Duration, Instant};

use bgp_support::{MargayBgp, kernel_route, wait_kernel};
use integration_tests::lab::{Bird, Frr, Lab, Netns, wait_for};

const T: Duration = Duration::from_secs(20);
const SECOND_V4: &str = "198.18.0.211";
const VIA_BFD: &str = "198.19.200.0/24";
const VIA_HOLD: &str = "198.19.201.0/24";
/// BFD timers on both sides, and the BGP hold time of both sessions.
const INTERVAL_MS: u64 = 100;
const MULT: u64 = 3;
const HOLD_S: u64 = 3;

fn margay_two_sessions(tor_as: u32) -> String {
    format!(
        "local_as: 65001\nrouter_id: 198.18.0.11\nmultipath: 4\noriginate: []\npeers:\n\
         \x20 - name: tor-bfd\n    neighbor: 198.18.0.1\n    remote_as: {tor_as}\n    hold_time: {HOLD_S}\n\
         \x20   connect_retry: 1\n    source_addr: 198.18.0.11\n    families: [ipv4]\n\
         \x20   bfd: {{ min_rx: {INTERVAL_MS}, min_tx: {INTERVAL_MS}, multiplier: {MULT} }}\n\
         \x20 - name: tor-hold\n    neighbor: 198.18.0.1\n    remote_as: {tor_as}\n    hold_time: {HOLD_S}\n\
         \x20   connect_retry: 1\n    source_addr: {SECOND_V4}\n    families: [ipv4]\n"
    )
}

/// The BFD session of margay-bgp toward `peer`, from its status file.
fn bfd_session(m: &MargayBgp, peer: &str) -> Option<serde_json::Value> {
    m.status()["bfd"]
        .as_array()?
        .iter()
        .find(|s| s["peer"] == peer)
        .cloned()
}

fn wait_bfd_state(m: &MargayBgp, peer: &str, state: &str) -> serde_json::Value {
    let r = wait_for(&format!("BFD session to {peer} {state}"), T, || {
        Ok(bfd_session(m, peer).filter(|s| s["state"] == state))
    });
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}\nstatus: {}\nlog:\n{}", m.status(), m.log()),
    }
}

/// Drops everything between n1 and the ToR inside n1 (both families).
fn cut(ns: &Netns) {
    let rules = "table inet mgcut {\n\
        chain in { type filter hook input priority -300; policy accept; ip saddr 198.18.0.1 drop; ip6 saddr 2001:db8:ffff::1 drop; }\n\
        chain out { type filter hook output priority -300; policy accept; ip daddr 198.18.0.1 drop; ip6 daddr 2001:db8:ffff::1 drop; }\n\
        }\n";
    nft(ns, rules);
}

fn heal(ns: &Netns) {
    nft(ns, "delete table inet mgcut\n");
}

fn nft(ns: &Netns, script: &str) {
    let out = integration_tests::lab::netns::run_raw(
        ns.command("nft").args(["-f", "-"]),
        script.as_bytes(),
    )
    .expect("nft");
    assert!(out.status.success(), "nft: {out:?}");
}

/// Cuts the path, then watches n1's kernel until both prefixes are gone;
/// returns (BFD failover, hold-timer failover).
fn measure_failover(ns: &Netns) -> (Duration, Duration) {
    let route_gone = |p: &str| kernel_route(ns, p).trim().is_empty();
    assert!(!route_gone(VIA_BFD) && !route_gone(VIA_HOLD));
    cut(ns);
    let t0 = Instant::now();
    let (mut bfd, mut hold) = (None, None);
    while bfd.is_none() || hold.is_none() {
        let listed = ns.ip(&["-4", "route", "show", "proto", "80"]).expect("ip");
        let now = t0.elapsed();
        if bfd.is_none() && !listed.contains(VIA_BFD) {
            bfd = Some(now);
        }
        if hold.is_none() && !listed.contains(VIA_HOLD) {
            hold = Some(now);
        }
        assert!(
            now < Duration::from_secs(3 * HOLD_S),
            "routes stayed: {listed}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    (bfd.unwrap_or_default(), hold.unwrap_or_default())
}

fn report_and_check(daemon: &str, bfd: Duration, hold: Duration) {
    let limit = Duration::from_millis(MULT * INTERVAL_MS + 100);
    println!(
        "{daemon}: failover with BFD ({INTERVAL_MS} ms x {MULT}) {:.0} ms | with the hold timer ({HOLD_S} s) {:.0} ms | ratio {:.2}",
        bfd.as_secs_f64() * 1000.0,
        hold.as_secs_f64() * 1000.0,
        bfd.as_secs_f64() / hold.as_secs_f64()
    );
    assert!(
        bfd <= limit,
        "{daemon}: BFD failover {bfd:?} exceeds multiplier x interval + 100 ms = {limit:?}"
    );
    // Keepalives every second: the hold timer fires 2-3 s after the cut.
    assert!(
        hold > Duration::from_secs(HOLD_S - 1) && hold < Duration::from_secs(HOLD_S + 2),
        "{daemon}: hold-timer failover {hold:?}"
    );
}

/// After the cut: margay says why, and BFD and BGP recover on their own
/// once the path is back.
fn check_reasons_and_recovery(m: &mut MargayBgp, ns: &Netns) {
    // The status file is rewritten every 50 ms: wait for it to catch up.
    let error_of = |m: &MargayBgp, peer: &str, needle: &str| {
        wait_for(&format!("{peer}: last error {needle:?}"), T, || {
            Ok(m.peer(peer)
                .filter(|p| p["last_error"].as_str().is_some_and(|e| e.contains(needle))))
        })
        .unwrap_or_else(|e| panic!("{e}: {}", m.status()))
    };
    error_of(m, "tor-bfd", "BFD session down");
    error_of(m, "tor-hold", "hold timer");
    let s = bfd_session(m, "198.18.0.1").expect("bfd session");
    assert_eq!(s["diag"], "control detection time expired", "{s}");
    heal(ns);
    wait_bfd_state(m, "198.18.0.1", "Up");
    m.wait_established("tor-bfd", T);
    m.wait_established("tor-hold", T);
    wait_kernel(ns, VIA_BFD, "via 198.18.0.1", true, T);
    wait_kernel(ns, VIA_HOLD, "via 198.18.0.1", true, T);
}

fn bird_bfd_block() -> String {
    let timers = format!(
        "min rx interval {INTERVAL_MS} ms; min tx interval {INTERVAL_MS} ms; idle tx interval 1000 ms; multiplier {MULT};"
    );
    format!("protocol bfd {{\n  interface \"*\" {{ {timers} }};\n  multihop {{ {timers} }};\n}}\n")
}

fn bird_session(name: &str, neighbor: &str, bfd: bool, export: &str, family: &str) -> String {
    let (local, chan) = if family == "ipv6" {
        ("2001:db8:ffff::1", "ipv6")
    } else {
        ("198.18.0.1", "ipv4")
    };
    format!(
        "protocol bgp {name} {{\n  local {local} as 64513;\n  neighbor {neighbor} as 65001;\n  direct; passive on;\n  \
         hold time {HOLD_S}; keepalive time 1; connect delay time 1; error wait time 1, 2;\n  {bfd}\n  \
         {chan} {{ import all; export where net = {export}; }};\n}}\n",
        bfd = if bfd { "bfd on;" } else { "" },
    )
}

fn bird_head(statics: &str) -> String {
    format!(
        "log stderr all;\nrouter id 198.18.0.1;\nprotocol device {{ scan time 10; }}\n{statics}{}",
        bird_bfd_block()
    )
}

#[test]
fn bird_bfd_failover_within_the_detection_time_vs_the_hold_timer() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    n1.ns
        .ip(&["addr", "add", &format!("{SECOND_V4}/24"), "dev", "eth0"])
        .expect("second address");
    let conf = bird_head(&format!(
        "protocol static {{ ipv4; route {VIA_BFD} blackhole; route {VIA_HOLD} blackhole; }}\n"
    )) + &bird_session("fast", "198.18.0.11", true, VIA_BFD, "ipv4")
        + &bird_session("slow", SECOND_V4, false, VIA_HOLD, "ipv4");
    let bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", &conf).expect("bird");
    let mut m = MargayBgp::start(
        &n1.ns,
        lab.run_dir(),
        "margay-n1",
        &margay_two_sessions(64513),
    );
    m.wait_established("tor-bfd", T);
    m.wait_established("tor-hold", T);
    let s = wait_bfd_state(&m, "198.18.0.1", "Up");
    // Poll sequences done: 100 ms each way, detection 3 × 100 ms.
    wait_for("BFD at the fast rate", T, || {
        Ok(bfd_session(&m, "198.18.0.1").filter(|s| s["detect_time_ms"] == 300.0))
    })
    .unwrap_or_else(|e| panic!("{e}: {s}"));
    let sessions = bird.birdc("show bfd sessions").expect("birdc");
    assert!(
        sessions.contains("198.18.0.11") && sessions.contains("Up"),
        "{sessions}"
    );
    assert_eq!(m.peer("tor-bfd").expect("peer")["bfd"], "Up");
    assert!(m.peer("tor-hold").expect("peer")["bfd"].is_null());
    wait_kernel(&n1.ns, VIA_BFD, "via 198.18.0.1", true, T);
    wait_kernel(&n1.ns, VIA_HOLD, "via 198.18.0.1", true, T);

    let (bfd, hold) = measure_failover(&n1.ns);
    report_and_check("BIRD 2", bfd, hold);
    check_reasons_and_recovery(&mut m, &n1.ns);
    let p = bird.birdc("show protocols all fast").expect("birdc");
    assert!(p.contains("Established"), "{p}");
}

#[test]
fn bird_bfd_ipv6_session_and_gtsm() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    let conf = bird_head(
        "protocol static { ipv4; route 198.19.200.0/24 blackhole; }\n\
         protocol static { ipv6; route 2001:db8:200::/64 blackhole; }\n",
    ) + &bird_session("v4", "198.18.0.11", true, "198.19.200.0/24", "ipv4")
        + &bird_session("v6", "2001:db8:ffff::b", true, "2001:db8:200::/64", "ipv6");
    let _bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", &conf).expect("bird");
    // BIRD's packets leave the ToR with TTL 254: as if a router forwarded
    // them. A single-hop session must not come up (RFC 5881 §5).
    nft(
        lab.tor(),
        "table ip mgttl { chain out { type filter hook output priority -150; policy accept; udp dport 3784 ip ttl set 254; }; }\n",
    );
    let bfd =
        format!("bfd: {{ min_rx: {INTERVAL_MS}, min_tx: {INTERVAL_MS}, multiplier: {MULT} }}");
    let yaml = format!(
        "local_as: 65001\nrouter_id: 198.18.0.11\noriginate: []\npeers:\n\
         \x20 - name: v4\n    neighbor: 198.18.0.1\n    remote_as: 64513\n    hold_time: {HOLD_S}\n    connect_retry: 1\n    families: [ipv4]\n    {bfd}\n\
         \x20 - name: v6\n    neighbor: 2001:db8:ffff::1\n    remote_as: 64513\n    hold_time: {HOLD_S}\n    connect_retry: 1\n    families: [ipv6]\n    {bfd}\n"
    );
    let mut m = MargayBgp::start(&n1.ns, lab.run_dir(), "margay-n1", &yaml);
    m.wait_established("v4", T);
    m.wait_established("v6", T);
    wait_bfd_state(&m, "2001:db8:ffff::1", "Up");
    // Three idle-rate packets from BIRD at least: all dropped, still Down.
    wait_for("TTL-254 packets dropped", T, || {
        Ok(bfd_session(&m, "198.18.0.1").filter(|s| s["dropped"].as_u64() >= Some(3)))
    })
    .expect("drops counted");
    let s = bfd_session(&m, "198.18.0.1").expect("session");
    assert_ne!(s["state"], "Up", "{s}");
    assert_eq!(s["received"], 0, "{s}");
    // With TTL 255 again the session comes up.
    nft(lab.tor(), "delete table ip mgttl\n");
    wait_bfd_state(&m, "198.18.0.1", "Up");
    wait_kernel(&n1.ns, "2001:db8:200::/64", "via 2001:db8:ffff::1", true, T);
}

/// RFC 5883: BIRD's BGP session is multihop (`multihop 2`), so its BFD
/// session is too (UDP 4784); Margay's peer says `multihop: true`.
#[test]
fn bird_bfd_multihop_session_comes_up_and_detects_a_cut() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    let conf = bird_head(&format!(
        "protocol static {{ ipv4; route {VIA_BFD} blackhole; }}\n"
    )) + &bird_session("mh", "198.18.0.11", true, VIA_BFD, "ipv4")
        .replace("direct;", "multihop 2;");
    let bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", &conf).expect("bird");
    let yaml = format!(
        "local_as: 65001\nrouter_id: 198.18.0.11\noriginate: []\npeers:\n\
         \x20 - name: mh\n    neighbor: 198.18.0.1\n    remote_as: 64513\n    hold_time: 9\n    connect_retry: 1\n    families: [ipv4]\n\
         \x20   bfd: {{ min_rx: {INTERVAL_MS}, min_tx: {INTERVAL_MS}, multiplier: {MULT}, multihop: true }}\n"
    );
    let m = MargayBgp::start(&n1.ns, lab.run_dir(), "margay-n1", &yaml);
    let s = wait_bfd_state(&m, "198.18.0.1", "Up");
    assert_eq!(s["multihop"], true, "{s}");
    let b = bird.birdc("show bfd sessions").expect("birdc");
    assert!(b.contains("198.18.0.11") && b.contains("Up"), "{b}");
    wait_kernel(&n1.ns, VIA_BFD, "via 198.18.0.1", true, T);
    // Hold time 9 s: only BFD can take the route out this fast.
    std::thread::sleep(Duration::from_millis(500));
    cut(&n1.ns);
    let t0 = Instant::now();
    wait_kernel(&n1.ns, VIA_BFD, "", false, Duration::from_secs(2));
    let took = t0.elapsed();
    println!(
        "BIRD 2 multihop: failover with BFD {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(
        took <= Duration::from_millis(MULT * INTERVAL_MS + 100),
        "{took:?}"
    );
}

fn frr_bgpd() -> String {
    format!(
        "frr defaults traditional\nhostname tor\nlog stdout informational\n!\n\
         ip prefix-list only200 seq 5 permit {VIA_BFD}\nip prefix-list only201 seq 5 permit {VIA_HOLD}\n!\n\
         router bgp 64514\n bgp router-id 198.18.0.1\n no bgp ebgp-requires-policy\n no bgp network import-check\n \
         timers bgp 1 {HOLD_S}\n \
         neighbor 198.18.0.11 remote-as 65001\n neighbor 198.18.0.11 passive\n neighbor 198.18.0.11 bfd\n \
         neighbor 198.18.0.11 bfd profile fast\n \
         neighbor {SECOND_V4} remote-as 65001\n neighbor {SECOND_V4} passive\n !\n \
         address-family ipv4 unicast\n  network {VIA_BFD}\n  network {VIA_HOLD}\n  \
         neighbor 198.18.0.11 prefix-list only200 out\n  neighbor {SECOND_V4} prefix-list only201 out\n \
         exit-address-family\n!\n"
    )
}

fn frr_bfdd() -> String {
    format!(
        "bfd\n profile fast\n  receive-interval {INTERVAL_MS}\n  transmit-interval {INTERVAL_MS}\n  detect-multiplier {MULT}\n !\n!\n"
    )
}

#[test]
fn frr_bfd_failover_within_the_detection_time_vs_the_hold_timer() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    n1.ns
        .ip(&["addr", "add", &format!("{SECOND_V4}/24"), "dev", "eth0"])
        .expect("second address");
    let frr = Frr::start_with_bfd(
        lab.tor(),
        lab.run_dir(),
        "tor-frr",
        &frr_bgpd(),
        Some(&frr_bfdd()),
    )
    .expect("frr");
    let mut m = MargayBgp::start(
        &n1.ns,
        lab.run_dir(),
        "margay-n1",
        &margay_two_sessions(64514),
    );
    m.wait_established("tor-bfd", T);
    m.wait_established("tor-hold", T);
    wait_bfd_state(&m, "198.18.0.1", "Up");
    wait_for("BFD at the fast rate", T, || {
        Ok(bfd_session(&m, "198.18.0.1").filter(|s| s["detect_time_ms"] == 300.0))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", m.status()));
    let peers = frr.vtysh("show bfd peers brief").expect("vtysh");
    assert!(
        peers.contains("198.18.0.11") && peers.contains("up"),
        "{peers}"
    );
    wait_kernel(&n1.ns, VIA_BFD, "via 198.18.0.1", true, T);
    wait_kernel(&n1.ns, VIA_HOLD, "via 198.18.0.1", true, T);

    let (bfd, hold) = measure_failover(&n1.ns);
    report_and_check("FRR 8.4", bfd, hold);
    check_reasons_and_recovery(&mut m, &n1.ns);
}
