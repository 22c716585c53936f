//! margay-bgp ↔ FRR 8.4 and ↔ GoBGP 3.10 in the lab (IPv4 and IPv6 both
//! ways, withdrawals), and route reflection among three Margay speakers.

mod bgp_support;

use std::time::Duration;

use bgp_support::{MargayBgp, kernel_route, margay_yaml, peer_yaml, wait_kernel};
use integration_tests::lab::{Frr, Gobgp, Lab, wait_for};

const T: Duration = Duration::from_secs(20);

fn frr_config(networks: &[&str]) -> String {
    let v4: String = networks
        .iter()
        .filter(|n| !n.contains(':'))
        .map(|n| format!("  network {n}\n"))
        .collect();
    let v6: String = networks
        .iter()
        .filter(|n| n.contains(':'))
        .map(|n| format!("  network {n}\n"))
        .collect();
    format!(
        "frr defaults traditional\nhostname tor\nlog stdout informational\n!\n\
         router bgp 64513\n bgp router-id 198.18.0.1\n no bgp ebgp-requires-policy\n \
         no bgp network import-check\n timers bgp 3 9\n \
         neighbor 198.18.0.11 remote-as 65001\n neighbor 198.18.0.11 timers connect 1\n !\n \
         address-family ipv4 unicast\n{v4} exit-address-family\n !\n \
         address-family ipv6 unicast\n{v6}  neighbor 198.18.0.11 activate\n exit-address-family\n!\n"
    )
}

#[test]
fn frr_ebgp_both_families_both_ways_and_withdraw() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    let frr = Frr::start(
        lab.tor(),
        lab.run_dir(),
        "tor-frr",
        &frr_config(&["198.19.201.0/24", "2001:db8:201::/64"]),
    )
    .expect("frr");
    let peers = [peer_yaml(
        "tor",
        "198.18.0.1",
        "64513",
        "next_hop_v6: 2001:db8:ffff::b",
    )];
    let yaml = |o: &[&str]| margay_yaml(65001, "198.18.0.11", o, &peers, "");
    let mut m = MargayBgp::start(
        &n1.ns,
        lab.run_dir(),
        "margay-n1",
        &yaml(&["198.19.1.0/26", "2001:db8:1::/64"]),
    );
    m.wait_established("tor", T);
    let summary = wait_for("FRR session established", T, || {
        let s = frr.vtysh("show bgp summary json")?;
        let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
        let st = &v["ipv4Unicast"]["peers"]["198.18.0.11"]["state"];
        Ok((st == "Established").then_some(s))
    })
    .expect("FRR establishes");
    assert!(summary.contains("65001"));

    // FRR → Margay's kernel.
    let r = wait_kernel(&n1.ns, "198.19.201.0/24", "via 198.18.0.1", true, T);
    assert!(r.contains("proto 80"), "{r}");
    let r6 = wait_kernel(&n1.ns, "2001:db8:201::/64", "via", true, T);
    assert!(r6.contains("proto 80"), "{r6}");
    // Margay → FRR's kernel (zebra installs as proto bgp).
    let r = wait_kernel(lab.tor(), "198.19.1.0/26", "via 198.18.0.11", true, T);
    assert!(r.contains("proto bgp"), "{r}");
    wait_kernel(
        lab.tor(),
        "2001:db8:1::/64",
        "via 2001:db8:ffff::b",
        true,
        T,
    );
    let route = frr
        .vtysh("show bgp ipv4 unicast 198.19.1.0/26")
        .expect("vtysh");
    assert!(route.contains("65001"), "AS path at FRR: {route}");

    // Withdrawals both ways.
    // vtysh -c takes one command per -c; run the sequence as one script.
    let out = std::process::Command::new("vtysh")
        .arg("--vty_socket")
        .arg(lab.run_dir().join("tor-frr"))
        .args([
            "-c",
            "configure terminal",
            "-c",
            "router bgp 64513",
            "-c",
            "address-family ipv4 unicast",
            "-c",
            "no network 198.19.201.0/24",
        ])
        .output()
        .expect("vtysh");
    assert!(out.status.success(), "{out:?}");
    wait_kernel(&n1.ns, "198.19.201.0/24", "", false, T);
    m.reload(&yaml(&["2001:db8:1::/64"]));
    wait_kernel(lab.tor(), "198.19.1.0/26", "", false, T);
    assert!(!kernel_route(lab.tor(), "2001:db8:1::/64").trim().is_empty());
}

fn gobgp_config() -> String {
    let mut s = String::from(
        "[global.config]\n  as = 64514\n  router-id = \"198.18.0.1\"\n\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"198.18.0.11\"\n    peer-as = 65001\n\
         \x20 [neighbors.timers.config]\n    connect-retry = 1\n    hold-time = 9\n    keepalive-interval = 3\n",
    );
    for f in ["ipv4-unicast", "ipv6-unicast"] {
        s.push_str(&format!(
            "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{f}\"\n"
        ));
    }
    s
}

#[test]
fn gobgp_ebgp_both_families_both_ways_and_withdraw() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let n1 = lab.node("n1").expect("n1");
    let gobgp =
        Gobgp::start(lab.tor(), lab.run_dir(), "tor-gobgp", &gobgp_config()).expect("gobgp");
    let peers = [peer_yaml(
        "tor",
        "198.18.0.1",
        "64514",
        "next_hop_v6: 2001:db8:ffff::b",
    )];
    let yaml = |o: &[&str]| margay_yaml(65001, "198.18.0.11", o, &peers, "");
    let mut m = MargayBgp::start(
        &n1.ns,
        lab.run_dir(),
        "margay-n1",
        &yaml(&["198.19.1.0/26", "2001:db8:1::/64"]),
    );
    m.wait_established("tor", T);
    gobgp
        .cli(&["global", "rib", "add", "198.19.202.0/24"])
        .expect("gobgp add v4");
    gobgp
        .cli(&[
            "global",
            "rib",
            "-a",
            "ipv6",
            "add",
            "2001:db8:202::/64",
            "nexthop",
            "2001:db8:ffff::1",
        ])
        .expect("gobgp add v6");

    let r = wait_kernel(&n1.ns, "198.19.202.0/24", "via 198.18.0.1", true, T);
    assert!(r.contains("proto 80"), "{r}");
    wait_kernel(&n1.ns, "2001:db8:202::/64", "via 2001:db8:ffff::1", true, T);
    // GoBGP has no kernel here: read its RIB.
    let rib = wait_for("GoBGP learns Margay's prefixes", T, || {
        let v4 = gobgp.cli(&["global", "rib"])?;
        let v6 = gobgp.cli(&["global", "rib", "-a", "ipv6"])?;
        Ok((v4.contains("198.19.1.0/26") && v6.contains("2001:db8:1::/64")).then_some(v4 + &v6))
    })
    .expect("GoBGP RIB");
    assert!(
        rib.contains("198.18.0.11") && rib.contains("2001:db8:ffff::b"),
        "{rib}"
    );
    assert!(rib.contains("65001"), "AS path: {rib}");

    gobgp
        .cli(&["global", "rib", "del", "198.19.202.0/24"])
        .expect("gobgp del");
    wait_kernel(&n1.ns, "198.19.202.0/24", "", false, T);
    m.reload(&yaml(&["198.19.1.0/26"]));
    wait_for("GoBGP sees the IPv6 withdrawal", T, || {
        let v6 = gobgp.cli(&["global", "rib", "-a", "ipv6"])?;
        Ok((!v6.contains("2001:db8:1::/64")).then_some(()))
    })
    .expect("withdrawn at GoBGP");
    let v4 = gobgp.cli(&["global", "rib"]).expect("gobgp");
    assert!(v4.contains("198.19.1.0/26"), "{v4}");
}

#[test]
fn route_reflection_among_three_margay_speakers() {
    require_root!();
    let lab = Lab::builder().nodes(3).build().expect("lab");
    let mut ms = Vec::new();
    for node in lab.nodes() {
        let i = node.index;
        let (peers, extra) = if i == 1 {
            (
                vec![
                    peer_yaml("n2", "198.18.0.12", "internal", "rr_client: true"),
                    peer_yaml("n3", "198.18.0.13", "internal", "rr_client: true"),
                ],
                "cluster_id: 198.18.0.11\n",
            )
        } else {
            (
                vec![peer_yaml(
                    "rr",
                    "198.18.0.11",
                    "internal",
                    &format!("next_hop_v6: {}", node.ipv6),
                )],
                "",
            )
        };
        let v4 = format!("198.19.{i}.0/26");
        let v6 = format!("2001:db8:{i}::/64");
        let orig: Vec<&str> = if i == 1 { vec![] } else { vec![&v4, &v6] };
        let yaml = margay_yaml(65000, &node.ipv4.to_string(), &orig, &peers, extra);
        ms.push(MargayBgp::start(
            &node.ns,
            lab.run_dir(),
            &format!("margay-{}", node.name),
            &yaml,
        ));
    }
    ms[0].wait_established("n2", T);
    ms[0].wait_established("n3", T);
    let (n1, n2, n3) = (
        lab.node("n1").expect("n1"),
        lab.node("n2").expect("n2"),
        lab.node("n3").expect("n3"),
    );
    // Clients learn each other's routes through the reflector, next hop kept.
    wait_kernel(&n3.ns, "198.19.2.0/26", "via 198.18.0.12", true, T);
    wait_kernel(&n2.ns, "198.19.3.0/26", "via 198.18.0.13", true, T);
    wait_kernel(&n3.ns, "2001:db8:2::/64", "via 2001:db8:ffff::c", true, T);
    wait_kernel(&n2.ns, "2001:db8:3::/64", "via 2001:db8:ffff::d", true, T);
    wait_kernel(&n1.ns, "198.19.2.0/26", "via 198.18.0.12", true, T);
    wait_kernel(&n1.ns, "198.19.3.0/26", "via 198.18.0.13", true, T);
    // A client never gets its own route back (ORIGINATOR_ID / split horizon).
    assert!(kernel_route(&n2.ns, "198.19.2.0/26").trim().is_empty());
    // n2 learned exactly n3's IPv4 route. The status file is a snapshot
    // the speaker rewrites, so it may trail the kernel: wait for it.
    wait_for("n2's status counts one accepted IPv4 route", T, || {
        let st = ms[1].peer("rr").unwrap_or_default();
        Ok((st["accepted_v4"] == 1).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", ms[1].peer("rr").unwrap_or_default()));

    // A client's withdrawal is reflected.
    ms.remove(2).daemon.stop(Duration::from_secs(5));
    wait_kernel(&n2.ns, "198.19.3.0/26", "", false, T);
    wait_kernel(&n2.ns, "2001:db8:3::/64", "", false, T);
}
