//! The BGP FIB adapter (`node_agent::dataplane::fib`) against a real kernel, in a lab
//! node's namespace: upsert, replace, ECMP, IPv6 (also via an IPv4 next
//! hop), withdraw, reconcile — and the agent's local routes (protocol 81)
//! and foreign routes are never touched, even for the same prefix.

use std::collections::HashSet;
use std::net::IpAddr;

use integration_tests::lab::{self, Lab, Netns};
use node_agent::dataplane::fib::{FIB_METRIC, Fib, FibChange, Prefix, RTPROT_MARGAY};

macro_rules! require_root {
    () => {
        if let Err(why) = lab::can_run() {
            integration_tests::lab::skip(&why);
            return;
        }
    };
}

fn p(s: &str) -> Prefix {
    s.parse().expect("test prefix")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn change(prefix: &str, hops: &[&str]) -> FibChange {
    FibChange {
        prefix: p(prefix),
        next_hops: hops.iter().map(|h| ip(h)).collect(),
    }
}

/// Runs `f` with a [`Fib`] opened inside `ns`, on a runtime on that thread.
fn with_fib<R: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce(&Fib, &tokio::runtime::Runtime) -> R + Send + 'static,
) -> R {
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let fib = rt.block_on(async { Fib::new() }).expect("netlink socket");
        let r = f(&fib, &rt);
        drop(fib);
        r
    })
    .expect("enter netns")
}

/// `ip route show` lines of one family in `ns` (`-4`/`-6`), extra args after.
fn routes(ns: &Netns, fam: &str, extra: &[&str]) -> String {
    let mut args = vec![fam, "route", "show"];
    args.extend_from_slice(extra);
    ns.ip(&args).expect("ip route")
}

fn ours(ns: &Netns, fam: &str) -> String {
    routes(ns, fam, &["proto", &RTPROT_MARGAY.to_string()])
}

#[test]
fn fib_apply_replace_ecmp_withdraw_and_reconcile_in_a_kernel() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let ns = Netns::existing(lab.node("n1").expect("n1").ns.name());

    // Routes that are not ours: the agent's local routes (proto 81), an
    // operator's static route, and one stale route of ours (proto 80) that
    // a previous run left.
    ns.ip_batch(&[
        "route add blackhole 198.19.5.0/26 proto 81",
        "route add 198.19.1.0/24 via 198.18.0.1 proto 81",
        "route add 198.19.6.0/24 via 198.18.0.1 proto static",
        "route add 198.19.7.0/24 via 198.18.0.1 proto 80",
        "route add 2001:db8:7::/64 via 2001:db8:ffff::1 proto 80 metric 1280",
        "route add blackhole 2001:db8:5::/64 proto 81",
    ])
    .expect("seed routes");
    let foreign_v4 = routes(&ns, "-4", &["proto", "81"]) + &routes(&ns, "-4", &["proto", "static"]);
    let foreign_v6 = routes(&ns, "-6", &["proto", "81"]);
    assert!(foreign_v4.contains("198.19.5.0/26") && foreign_v4.contains("198.19.6.0/24"));

    let ns2 = Netns::existing(ns.name());
    with_fib(&ns, move |fib, rt| {
        // Upserts: single next hop, ECMP, IPv6, IPv6 via an IPv4 next hop,
        // and a prefix that also has a proto-81 route.
        let n = rt
            .block_on(fib.apply(&[
                change("198.19.1.0/24", &["198.18.0.2"]),
                change("198.19.2.0/24", &["198.18.0.1", "198.18.0.2"]),
                change("198.19.3.0/24", &["198.18.0.1"]),
                change("2001:db8:1::/64", &["2001:db8:ffff::1"]),
                change("2001:db8:2::/64", &["2001:db8:ffff::1", "2001:db8:ffff::2"]),
                change("2001:db8:3::/64", &["2001:db8:ffff::1"]),
                // RFC 8950: an IPv4 route via an IPv6 next hop; and an IPv4
                // route via an IPv4-mapped next hop (as some peers send).
                change("198.19.10.0/24", &["2001:db8:ffff::1"]),
                change("198.19.11.0/24", &["::ffff:198.18.0.1"]),
                change("2001:db8:5::/64", &["2001:db8:ffff::1"]),
            ]))
            .expect("apply");
        assert_eq!(n, 9);
        let v4 = ours(&ns2, "-4");
        let v6 = ours(&ns2, "-6");
        println!("after apply:\n{v4}{v6}");
        assert!(
            v4.contains(&format!(
                "198.19.1.0/24 via 198.18.0.2 dev eth0 metric {FIB_METRIC}"
            )),
            "{v4}"
        );
        assert!(v4.contains("198.19.3.0/24 via 198.18.0.1 dev eth0"), "{v4}");
        let ecmp = routes(&ns2, "-4", &["198.19.2.0/24"]);
        assert!(
            ecmp.contains("nexthop via 198.18.0.1 dev eth0")
                && ecmp.contains("nexthop via 198.18.0.2 dev eth0"),
            "ECMP route: {ecmp}"
        );
        assert!(
            v6.contains("2001:db8:1::/64 via 2001:db8:ffff::1 dev eth0"),
            "{v6}"
        );
        let ecmp6 = routes(&ns2, "-6", &["2001:db8:2::/64"]);
        assert!(
            ecmp6.contains("via 2001:db8:ffff::1 dev eth0")
                && ecmp6.contains("via 2001:db8:ffff::2 dev eth0"),
            "IPv6 ECMP route: {ecmp6}"
        );
        assert!(
            v4.contains("198.19.10.0/24 via inet6 2001:db8:ffff::1 dev eth0"),
            "{v4}"
        );
        assert!(
            v4.contains("198.19.11.0/24 via 198.18.0.1 dev eth0"),
            "{v4}"
        );
        // Linux has no IPv6 route via an IPv4 gateway: such a change removes
        // the prefix instead of failing the batch.
        rt.block_on(fib.apply(&[change("2001:db8:3::/64", &["::ffff:198.18.0.1"])]))
            .expect("apply of an unusable next hop");
        assert!(!ours(&ns2, "-6").contains("2001:db8:3::/64"));
        rt.block_on(fib.apply(&[
            change("2001:db8:3::/64", &["2001:db8:ffff::2"]),
            change("198.19.10.0/24", &[]),
            change("198.19.11.0/24", &[]),
        ]))
        .expect("apply");
        // The same prefix as a local route: both exist, the local one (lower
        // metric) is what the kernel uses.
        let both = routes(&ns2, "-4", &["198.19.1.0/24"]);
        assert!(
            both.contains("proto 81") && both.contains("proto 80"),
            "{both}"
        );
        let get = ns2
            .ip(&["-4", "route", "get", "198.19.1.7"])
            .expect("route get");
        assert!(
            get.contains("via 198.18.0.1"),
            "local route must win: {get}"
        );

        // Replace: a new next hop, ECMP shrinking to one, and within one
        // batch only the last change of a prefix counts.
        rt.block_on(fib.apply(&[
            change("198.19.3.0/24", &["198.18.0.2"]),
            change("198.19.2.0/24", &["198.18.0.2"]),
            change("198.19.4.0/24", &["198.18.0.1"]),
            change("198.19.4.0/24", &[]),
            change("198.19.8.0/24", &[]),
            change("198.19.8.0/24", &["198.18.0.2"]),
        ]))
        .expect("replace");
        let v4 = ours(&ns2, "-4");
        println!("after replace:\n{v4}");
        assert!(v4.contains("198.19.3.0/24 via 198.18.0.2 dev eth0"), "{v4}");
        assert!(!v4.contains("198.19.3.0/24 via 198.18.0.1"), "{v4}");
        assert!(v4.contains("198.19.2.0/24 via 198.18.0.2 dev eth0"), "{v4}");
        assert!(!v4.contains("nexthop"), "ECMP gone: {v4}");
        assert!(!v4.contains("198.19.4.0/24"), "{v4}");
        assert!(v4.contains("198.19.8.0/24 via 198.18.0.2"), "{v4}");

        // Withdraw, also of something that is not there (idempotent), and
        // of a prefix whose proto-81 route must stay.
        rt.block_on(fib.apply(&[
            change("198.19.8.0/24", &[]),
            change("198.19.9.0/24", &[]),
            change("2001:db8:1::/64", &[]),
            change("198.19.1.0/24", &[]),
            change("2001:db8:5::/64", &[]),
        ]))
        .expect("withdraw");
        let v4 = ours(&ns2, "-4");
        let v6 = ours(&ns2, "-6");
        assert!(
            !v4.contains("198.19.8.0/24") && !v4.contains("198.19.1.0/24"),
            "{v4}"
        );
        assert!(
            !v6.contains("2001:db8:1::/64") && !v6.contains("2001:db8:5::"),
            "{v6}"
        );

        // Reconcile after a "restart": wanted = what is installed now minus
        // 198.19.3.0/24. The stale proto-80 routes from before go too.
        let listed: HashSet<Prefix> = rt.block_on(fib.ours()).expect("ours").into_iter().collect();
        for want in [
            "198.19.2.0/24",
            "198.19.3.0/24",
            "198.19.7.0/24",
            "2001:db8:2::/64",
        ] {
            assert!(listed.contains(&p(want)), "ours() lists {want}: {listed:?}");
        }
        let wanted: HashSet<Prefix> = [
            p("198.19.2.0/24"),
            p("2001:db8:2::/64"),
            p("2001:db8:3::/64"),
        ]
        .into_iter()
        .collect();
        let removed = rt.block_on(fib.reconcile(&wanted)).expect("reconcile");
        let left: HashSet<Prefix> = rt.block_on(fib.ours()).expect("ours").into_iter().collect();
        assert_eq!(left, wanted, "only wanted routes of ours are left");
        // 198.19.3.0/24, the stale 198.19.7.0/24 (other metric), the stale
        // 2001:db8:7::/64.
        assert_eq!(removed, 3);
        // Nothing changed for a route that stayed (no flush-and-rebuild):
        // a second reconcile removes nothing.
        assert_eq!(rt.block_on(fib.reconcile(&wanted)).expect("reconcile"), 0);
    });

    // Foreign and local routes are exactly as before.
    let after_v4 = routes(&ns, "-4", &["proto", "81"]) + &routes(&ns, "-4", &["proto", "static"]);
    let after_v6 = routes(&ns, "-6", &["proto", "81"]);
    assert_eq!(after_v4, foreign_v4);
    assert_eq!(after_v6, foreign_v6);
}

/// Many routes at once (the initial load of a full table): all land, and a
/// withdraw of all removes them all.
#[test]
fn fib_applies_and_withdraws_ten_thousand_routes() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let ns = Netns::existing(lab.node("n1").expect("n1").ns.name());
    let n = 10_000u32;
    let adds: Vec<FibChange> = (0..n)
        .map(|i| FibChange {
            prefix: Prefix::new(
                IpAddr::from([198, 19, (i >> 8) as u8 & 0x3f, (i & 0xff) as u8]),
                32,
            )
            .expect("prefix"),
            next_hops: vec![ip("198.18.0.1")],
        })
        .collect();
    let dels: Vec<FibChange> = adds
        .iter()
        .map(|c| FibChange {
            prefix: c.prefix,
            next_hops: Vec::new(),
        })
        .collect();
    let ns2 = Netns::existing(ns.name());
    with_fib(&ns, move |fib, rt| {
        let t = std::time::Instant::now();
        assert_eq!(rt.block_on(fib.apply(&adds)).expect("apply"), n as usize);
        println!("{n} routes applied in {:?}", t.elapsed());
        let count = ours(&ns2, "-4").lines().count();
        assert_eq!(count, n as usize);
        assert_eq!(rt.block_on(fib.apply(&dels)).expect("withdraw"), n as usize);
        assert_eq!(ours(&ns2, "-4").lines().count(), 0);
    });
}

/// A route the kernel refuses (its gateway is not on any link) is reported
/// with its prefix, and the rest of the batch still lands.
#[test]
fn fib_reports_a_refused_route_and_applies_the_rest() {
    require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let ns = Netns::existing(lab.node("n1").expect("n1").ns.name());
    let ns2 = Netns::existing(ns.name());
    with_fib(&ns, move |fib, rt| {
        let err = rt
            .block_on(fib.apply(&[
                change("198.19.20.0/24", &["198.18.0.1"]),
                change("198.19.21.0/24", &["198.19.250.1"]),
                change("198.19.22.0/24", &["198.18.0.1"]),
            ]))
            .expect_err("an unreachable gateway is refused");
        let text = format!("{err}");
        assert!(text.contains("198.19.21.0/24"), "{text}");
        let v4 = ours(&ns2, "-4");
        assert!(
            v4.contains("198.19.20.0/24") && v4.contains("198.19.22.0/24"),
            "{v4}"
        );
        assert!(!v4.contains("198.19.21.0/24"), "{v4}");
    });
}
