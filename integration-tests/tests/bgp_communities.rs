//! Communities between margay-bgp, BIRD 2 and FRR 8.4 (all eBGP): what
//! Margay attaches to the routes it originates (standard, large and
//! extended, per prefix and per peer) is what BIRD and FRR see; what they
//! send (all three kinds) Margay keeps and passes on; the well-known
//! NO_EXPORT and NO_ADVERTISE keep routes from where they must not go.
//!
//! ```text
//!   BIRD (ToR, AS 64513) ── margay-bgp (n1, AS 65001) ── FRR (n2, AS 64514)
//! ```

mod bgp_support;

use std::time::Duration;

use bgp_support::{MargayBgp, wait_kernel};
use integration_tests::lab::{Bird, Frr, Lab, wait_for};

const T: Duration = Duration::from_secs(20);

fn bird_conf() -> String {
    "log stderr all;\nrouter id 198.18.0.1;\nprotocol device { scan time 10; }\n\
     protocol kernel { ipv4 { import none; export where source ~ [RTS_BGP]; }; }\n\
     protocol static s4 {\n  ipv4;\n  \
       route 198.19.200.0/24 blackhole { bgp_community.add((64513,5)); bgp_large_community.add((64513,1,1)); bgp_ext_community.add((rt,64513,3)); };\n  \
       route 198.19.201.0/24 blackhole { bgp_community.add((65535,65281)); };\n}\n\
     protocol bgp margay {\n  local 198.18.0.1 as 64513;\n  neighbor 198.18.0.11 as 65001;\n  direct;\n  \
       hold time 9; keepalive time 3; connect delay time 1; error wait time 1, 2;\n  \
       ipv4 { import all; export all; };\n}\n"
        .to_string()
}

fn frr_conf() -> String {
    "frr defaults traditional\nhostname ext\nlog stdout informational\n!\n\
     ip prefix-list p210 seq 5 permit 198.19.210.0/24\nip prefix-list p211 seq 5 permit 198.19.211.0/24\n!\n\
     route-map tag permit 10\n match ip address prefix-list p210\n set community 64514:9 additive\n \
       set large-community 64514:1:1 additive\n set extcommunity rt 64514:3\n!\n\
     route-map tag permit 20\n match ip address prefix-list p211\n set community no-advertise additive\n!\n\
     route-map tag permit 30\n!\n\
     router bgp 64514\n bgp router-id 198.18.0.12\n no bgp ebgp-requires-policy\n no bgp network import-check\n \
     timers bgp 3 9\n neighbor 198.18.0.11 remote-as 65001\n neighbor 198.18.0.11 timers connect 1\n !\n \
     address-family ipv4 unicast\n  network 198.19.210.0/24\n  network 198.19.211.0/24\n  \
     neighbor 198.18.0.11 route-map tag out\n  neighbor 198.18.0.11 send-community all\n \
     exit-address-family\n!\n"
        .to_string()
}

fn margay_conf() -> String {
    "local_as: 65001\nrouter_id: 198.18.0.11\noriginate:\n\
     \x20 - prefix: 198.19.1.0/26\n    communities: [\"65001:100\", \"65001:1:2\", \"rt:65001:7\"]\n\
     \x20 - prefix: 198.19.9.0/24\n    communities: [no-export]\n\
     peers:\n\
     \x20 - name: bird\n    neighbor: 198.18.0.1\n    remote_as: 64513\n    hold_time: 9\n    connect_retry: 1\n    families: [ipv4]\n\
     \x20 - name: frr\n    neighbor: 198.18.0.12\n    remote_as: 64514\n    hold_time: 9\n    connect_retry: 1\n    families: [ipv4]\n\
     \x20   communities: [\"65001:300\", \"65001:3:3\"]\n"
        .to_string()
}

/// The communities margay-bgp holds for the best path of `prefix`.
fn margay_communities(m: &MargayBgp, prefix: &str) -> Option<Vec<String>> {
    let v = m.status();
    let r = v["routes"]["routes"]
        .as_array()?
        .iter()
        .find(|r| r["prefix"] == prefix)?
        .clone();
    Some(
        r["paths"][0]["communities"]
            .as_array()?
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect(),
    )
}

fn wait_margay_route(m: &MargayBgp, prefix: &str) -> Vec<String> {
    wait_for(&format!("{prefix} in margay's RIB"), T, || {
        Ok(margay_communities(m, prefix))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", m.status()))
}

#[test]
fn communities_attached_kept_passed_on_and_well_known_ones_honoured() {
    require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    let n2 = lab.node("n2").expect("n2");
    let bird = Bird::start(lab.tor(), lab.run_dir(), "tor-bird", &bird_conf()).expect("bird");
    let frr = Frr::start(&n2.ns, lab.run_dir(), "n2-frr", &frr_conf()).expect("frr");
    let mut m = MargayBgp::start(&n1.ns, lab.run_dir(), "margay-n1", &margay_conf());
    m.wait_established("bird", T);
    m.wait_established("frr", T);

    // What Margay attaches, seen by BIRD (no per-peer extras for BIRD).
    wait_kernel(lab.tor(), "198.19.1.0/26", "via 198.18.0.11", true, T);
    let at_bird = bird.birdc("show route 198.19.1.0/26 all").expect("birdc");
    println!("BIRD:\n{at_bird}");
    assert!(
        at_bird.contains("BGP.community: (65001,100)\n"),
        "{at_bird}"
    );
    assert!(
        at_bird.contains("BGP.large_community: (65001, 1, 2)"),
        "{at_bird}"
    );
    assert!(
        at_bird.contains("BGP.ext_community: (rt, 65001, 7)"),
        "{at_bird}"
    );

    // ... and by FRR, with the per-peer communities of the `frr` peer.
    let at_frr = wait_for("198.19.1.0/26 at FRR", T, || {
        let s = frr.vtysh("show bgp ipv4 unicast 198.19.1.0/26")?;
        Ok(s.contains("Community").then_some(s))
    })
    .expect("FRR has the route");
    println!("FRR:\n{at_frr}");
    assert!(
        at_frr.contains("Community: 65001:100 65001:300"),
        "{at_frr}"
    );
    assert!(
        at_frr.contains("Large Community: 65001:1:2 65001:3:3"),
        "{at_frr}"
    );
    assert!(
        at_frr.contains("Extended Community: RT:65001:7"),
        "{at_frr}"
    );

    // What BIRD and FRR send, Margay keeps (and `margay-bgp` shows).
    assert_eq!(
        wait_margay_route(&m, "198.19.200.0/24"),
        ["64513:5", "64513:1:1", "rt:64513:3"]
    );
    assert_eq!(
        wait_margay_route(&m, "198.19.210.0/24"),
        ["64514:9", "64514:1:1", "rt:64514:3"]
    );
    // The well-known ones are kept too, and the routes are used here.
    assert_eq!(wait_margay_route(&m, "198.19.201.0/24"), ["no-export"]);
    assert_eq!(wait_margay_route(&m, "198.19.211.0/24"), ["no-advertise"]);
    wait_kernel(&n1.ns, "198.19.201.0/24", "via 198.18.0.1", true, T);
    wait_kernel(&n1.ns, "198.19.211.0/24", "via 198.18.0.12", true, T);

    // Passed on: BIRD's route reaches FRR with BIRD's communities.
    let passed = wait_for("198.19.200.0/24 at FRR", T, || {
        let s = frr.vtysh("show bgp ipv4 unicast 198.19.200.0/24")?;
        Ok(s.contains("Community").then_some(s))
    })
    .expect("FRR has BIRD's route");
    assert!(passed.contains("Community: 64513:5"), "{passed}");
    assert!(passed.contains("Large Community: 64513:1:1"), "{passed}");
    assert!(
        passed.contains("Extended Community: RT:64513:3"),
        "{passed}"
    );
    assert!(passed.contains("65001 64513"), "AS path: {passed}");
    // FRR's route reaches BIRD with FRR's communities.
    wait_kernel(lab.tor(), "198.19.210.0/24", "via 198.18.0.11", true, T);
    let at_bird = bird.birdc("show route 198.19.210.0/24 all").expect("birdc");
    assert!(at_bird.contains("(64514,9)"), "{at_bird}");

    // NO_EXPORT (BIRD's 201 and our own 9.0) and NO_ADVERTISE (FRR's 211)
    // go to no external peer. The routes above were sent in the same
    // batches; give a straggler a second anyway.
    std::thread::sleep(Duration::from_secs(1));
    let frr_table = frr.vtysh("show bgp ipv4 unicast").expect("vtysh");
    assert!(!frr_table.contains("198.19.201.0/24"), "{frr_table}");
    assert!(!frr_table.contains("198.19.9.0/24"), "{frr_table}");
    let bird_table = bird.birdc("show route").expect("birdc");
    assert!(!bird_table.contains("198.19.211.0/24"), "{bird_table}");
    assert!(!bird_table.contains("198.19.9.0/24"), "{bird_table}");
    assert!(bird_table.contains("198.19.210.0/24"), "{bird_table}");
}
