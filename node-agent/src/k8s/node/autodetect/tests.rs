//! Unit tests of address autodetection.

use super::*;

fn a(ifname: &str, addr: &str) -> IfAddr {
    IfAddr {
        ifname: ifname.into(),
        addr: addr.parse().expect("test cidr"),
        up: true,
    }
}

fn host() -> Vec<IfAddr> {
    vec![
        a("lo", "127.0.0.1/8"),
        a("docker0", "172.17.0.1/16"),
        a("cali0123456789a", "169.254.1.1/32"),
        a("eth0", "fe80::1/64"),
        a("eth0", "198.18.0.11/24"),
        a("eth0", "2001:db8:ffff::b/64"),
        a("eth1", "198.18.7.11/24"),
    ]
}

fn no_route(_: IpAddr) -> Option<IpAddr> {
    None
}

#[test]
fn first_found_skips_excluded_and_says_so() {
    let c = choose(&Method::FirstFound, Family::V4, &host(), &[], no_route)
        .expect("ok")
        .expect("some");
    assert_eq!(c.addr.to_string(), "198.18.0.11/24");
    assert_eq!(c.ifname.as_deref(), Some("eth0"));
    assert!(c.reason.contains("docker0 172.17.0.1/16"), "{}", c.reason);
    let c6 = choose(&Method::FirstFound, Family::V6, &host(), &[], no_route)
        .expect("ok")
        .expect("some");
    assert_eq!(
        c6.addr.to_string(),
        "2001:db8:ffff::b/64",
        "link-local skipped"
    );
}

#[test]
fn interface_and_skip_interface_regexes() {
    let m: Method = "interface=eth1".parse().expect("parse");
    let c = choose(&m, Family::V4, &host(), &[], no_route)
        .expect("ok")
        .expect("some");
    assert_eq!(c.addr.to_string(), "198.18.7.11/24");
    let m: Method = "skip-interface=eth0".parse().expect("parse");
    let c = choose(&m, Family::V4, &host(), &[], no_route)
        .expect("ok")
        .expect("some");
    assert_eq!(c.ifname.as_deref(), Some("eth1"));
    let m: Method = "interface=bond.*".parse().expect("parse");
    let e = choose(&m, Family::V4, &host(), &[], no_route).expect_err("no bond");
    assert!(e.to_string().contains("eth0"), "lists what exists: {e}");
}

#[test]
fn kubernetes_internal_ip_and_cidr_and_fixed() {
    let ips = ["198.18.7.11".parse().expect("ip")];
    let c = choose(
        &Method::KubernetesInternalIp,
        Family::V4,
        &host(),
        &ips,
        no_route,
    )
    .expect("ok")
    .expect("some");
    assert_eq!(c.addr.to_string(), "198.18.7.11/24");
    assert!(
        choose(
            &Method::KubernetesInternalIp,
            Family::V6,
            &host(),
            &ips,
            no_route
        )
        .is_err()
    );
    let m: Method = "cidr=10.0.0.0/8, 198.18.0.0/24".parse().expect("parse");
    let c = choose(&m, Family::V4, &host(), &[], no_route)
        .expect("ok")
        .expect("some");
    assert_eq!(c.addr.to_string(), "198.18.0.11/24");
    let m: Method = "198.18.0.11".parse().expect("parse");
    let c = choose(&m, Family::V4, &host(), &[], no_route)
        .expect("ok")
        .expect("some");
    assert_eq!(
        c.addr.to_string(),
        "198.18.0.11/24",
        "prefix from the interface"
    );
    let m: Method = "203.0.113.9".parse().expect("parse");
    let c = choose(&m, Family::V4, &host(), &[], no_route)
        .expect("ok")
        .expect("some");
    assert!(c.reason.contains("not present"), "{}", c.reason);
    assert!(matches!(
        choose(&Method::None, Family::V6, &host(), &[], no_route),
        Ok(None)
    ));
}

#[test]
fn can_reach_uses_the_kernels_answer() {
    let m: Method = "can-reach=198.18.7.1".parse().expect("parse");
    let c = choose(&m, Family::V4, &host(), &[], |_| "198.18.7.11".parse().ok())
        .expect("ok")
        .expect("some");
    assert_eq!(c.ifname.as_deref(), Some("eth1"));
    assert!(choose(&m, Family::V4, &host(), &[], no_route).is_err());
}

#[test]
fn bad_methods_are_rejected_with_the_reason() {
    for bad in [
        "interface=(",
        "can-reach=nowhere",
        "cidr=1.2.3.4/99",
        "guess",
    ] {
        assert!(bad.parse::<Method>().is_err(), "{bad}");
    }
}

#[test]
fn the_real_kernel_view_of_this_namespace_parses() {
    let addrs = local_addresses().expect("getifaddrs");
    assert!(
        addrs
            .iter()
            .any(|a| a.ifname == "lo" && a.addr.ip().is_loopback())
    );
    assert_eq!(
        kernel_source_towards("127.0.0.1".parse().expect("ip")),
        "127.0.0.1".parse().ok()
    );
}
