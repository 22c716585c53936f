use super::*;
use crate::dataplane::vxlan::DEVICE_V6;
use crate::k8s::ipam::view::LocalAllocation;

fn net(s: &str) -> IpNetwork {
    s.parse().expect("net")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn pool(name: &str, cidr: &str, mode: VxlanMode) -> PoolFacts {
    PoolFacts {
        name: name.into(),
        cidr: net(cidr),
        mode,
        for_tunnel: true,
    }
}

fn tunnel(ip_: &str) -> LocalAllocation {
    LocalAllocation {
        ip: ip(ip_),
        namespace: String::new(),
        pod: String::new(),
        handle: crate::k8s::ipam::view::tunnel_handle("n1", ip(ip_).is_ipv6()),
        borrowed: false,
        host_if: String::new(),
    }
}

/// n1 (198.18.0.11/24) with n2 in its subnet, n3 behind a router; each
/// with a v4 and a v6 block, n3 also a borrowed /32 in n1's block.
fn world() -> (BTreeMap<String, Peer>, IpamView) {
    let peer = |v4: &str, v6: &str, t4: &str, t6: &str, name: &str| Peer {
        underlay: [Some(ip(v4)), Some(ip(v6))],
        tunnel: [
            Some((ip(t4), tunnel_mac(name, Family::V4))),
            Some((ip(t6), tunnel_mac(name, Family::V6))),
        ],
    };
    let peers: BTreeMap<String, Peer> = [
        (
            "n2".to_string(),
            peer(
                "198.18.0.12",
                "2001:db8:ffff::c",
                "198.19.0.65",
                "2001:db8:100::41",
                "n2",
            ),
        ),
        (
            "n3".to_string(),
            peer(
                "198.18.1.13",
                "2001:db8:ffff:1::d",
                "198.19.0.129",
                "2001:db8:100::81",
                "n3",
            ),
        ),
    ]
    .into();
    let view = IpamView {
        synced: true,
        affine_blocks: [net("198.19.0.0/26"), net("2001:db8:100::/122")].into(),
        tunnels: vec![tunnel("198.19.0.1"), tunnel("2001:db8:100::1")],
        remote: std::sync::Arc::new(std::collections::BTreeMap::from([
            (net("198.19.0.64/26"), "n2".to_string()),
            (net("198.19.0.128/26"), "n3".to_string()),
            (net("198.19.0.7/32"), "n3".to_string()),
            (net("2001:db8:100::40/122"), "n2".to_string()),
            (net("2001:db8:100::80/122"), "n3".to_string()),
            // Not in any pool the overlay carries.
            (net("198.19.200.0/26"), "n2".to_string()),
        ])),
        ..IpamView::default()
    };
    (peers, view)
}

fn input<'a>(
    peers: &'a BTreeMap<String, Peer>,
    pools: &'a [PoolFacts],
    view: &'a IpamView,
    settings: &'a Settings,
) -> Input<'a> {
    Input {
        me: "n1",
        underlay: [
            Some(net("198.18.0.11/24")),
            Some(net("2001:db8:ffff::b/64")),
        ],
        underlay_mtu: 1500,
        peers,
        pools,
        view,
        settings,
    }
}

#[test]
fn always_tunnels_every_remote_block_of_the_pool() {
    let (peers, view) = world();
    let pools = [
        pool("v4", "198.19.0.0/17", VxlanMode::Always),
        pool("v6", "2001:db8:100::/48", VxlanMode::Never),
        pool("other", "198.19.200.0/24", VxlanMode::Never),
    ];
    let s = Settings::default();
    let p = plan(&input(&peers, &pools, &view, &s));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(p.devices.keys().copied().collect::<Vec<_>>(), [Family::V4]);
    let d = &p.devices[&Family::V4];
    assert_eq!(
        (d.vni, d.port, d.local, d.mtu, d.address),
        (4096, 4789, ip("198.18.0.11"), 1450, Some(ip("198.19.0.1")))
    );
    let via = |gw: &str| Via::Tunnel {
        af: Family::V4,
        gw: ip(gw),
    };
    let dev = Via::Device { af: Family::V4 };
    let want: BTreeMap<IpNetwork, Via> = [
        (net("198.19.0.64/26"), via("198.19.0.65")),
        (net("198.19.0.128/26"), via("198.19.0.129")),
        (net("198.19.0.7/32"), via("198.19.0.129")),
        // The gateways themselves, on the device.
        (net("198.19.0.65/32"), dev),
        (net("198.19.0.129/32"), dev),
    ]
    .into();
    assert_eq!(p.routes, want);
    assert_eq!(
        p.fdb,
        [
            Fdb {
                af: Family::V4,
                mac: tunnel_mac("n2", Family::V4),
                dst: ip("198.18.0.12")
            },
            Fdb {
                af: Family::V4,
                mac: tunnel_mac("n3", Family::V4),
                dst: ip("198.18.1.13")
            },
        ]
        .into()
    );
    assert!(p.neigh.contains(&Neigh {
        af: Family::V4,
        ip: ip("198.19.0.129"),
        mac: tunnel_mac("n3", Family::V4)
    }));
    assert_eq!(p.pod_mtu, 1450);
    assert_eq!(p.tunnel_pools[Family::V4.idx()], ["v4"]);
    // The IPv6 family has no device: its tunnel address goes back.
    assert_eq!(p.stale_tunnels, [ip("2001:db8:100::1")]);
}

#[test]
fn cross_subnet_routes_plainly_within_the_subnet_and_tunnels_across() {
    let (peers, view) = world();
    let pools = [
        pool("v4", "198.19.0.0/17", VxlanMode::CrossSubnet),
        pool("v6", "2001:db8:100::/48", VxlanMode::CrossSubnet),
    ];
    let s = Settings::default();
    let p = plan(&input(&peers, &pools, &view, &s));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(
        p.routes[&net("198.19.0.64/26")],
        Via::Underlay {
            gw: ip("198.18.0.12")
        }
    );
    assert_eq!(
        p.routes[&net("198.19.0.128/26")],
        Via::Tunnel {
            af: Family::V4,
            gw: ip("198.19.0.129")
        }
    );
    assert_eq!(
        p.routes[&net("2001:db8:100::40/122")],
        Via::Underlay {
            gw: ip("2001:db8:ffff::c")
        }
    );
    assert_eq!(
        p.routes[&net("2001:db8:100::80/122")],
        Via::Tunnel {
            af: Family::V6,
            gw: ip("2001:db8:100::81")
        }
    );
    // Only the tunnelled peer's tunnel address is routed on the device.
    assert_eq!(
        p.routes[&net("2001:db8:100::81/128")],
        Via::Device { af: Family::V6 }
    );
    assert!(!p.routes.contains_key(&net("198.19.0.65/32")));
    assert_eq!(p.devices[&Family::V6].mtu, 1430);
    // Pods fit in the smaller of the two tunnels.
    assert_eq!(p.pod_mtu, 1430);
    assert!(p.stale_tunnels.is_empty());
}

#[test]
fn never_wants_nothing_and_gives_the_tunnel_addresses_back() {
    let (peers, view) = world();
    let pools = [
        pool("v4", "198.19.0.0/17", VxlanMode::Never),
        pool("v6", "2001:db8:100::/48", VxlanMode::Never),
    ];
    let s = Settings::default();
    let p = plan(&input(&peers, &pools, &view, &s));
    assert!(p.devices.is_empty() && p.routes.is_empty() && p.fdb.is_empty());
    assert_eq!(p.pod_mtu, 1500);
    assert_eq!(p.stale_tunnels.len(), 2);
    for v in p.annotations().values() {
        assert_eq!(*v, None, "every tunnel annotation removed");
    }
}

#[test]
fn a_node_without_a_tunnel_address_yet_is_a_problem_not_a_route() {
    let (mut peers, view) = world();
    if let Some(n3) = peers.get_mut("n3") {
        n3.tunnel = [None, None];
    }
    let pools = [pool("v4", "198.19.0.0/17", VxlanMode::Always)];
    let s = Settings::default();
    let p = plan(&input(&peers, &pools, &view, &s));
    assert!(!p.routes.contains_key(&net("198.19.0.128/26")));
    assert!(p.routes.contains_key(&net("198.19.0.64/26")));
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert!(p.problems[0].contains("n3"), "{:?}", p.problems);
    assert!(!p.fdb.iter().any(|f| f.dst == ip("198.18.1.13")));
}

#[test]
fn tunnel_addresses_outside_vxlan_pools_are_released_and_settings_apply() {
    let (peers, mut view) = world();
    view.tunnels = vec![tunnel("198.19.200.5")];
    let pools = [
        pool("v4", "198.19.0.0/17", VxlanMode::Always),
        PoolFacts {
            for_tunnel: false,
            ..pool("v4b", "198.19.128.0/17", VxlanMode::Always)
        },
        pool("old", "198.19.200.0/24", VxlanMode::Never),
    ];
    let s = Settings {
        vni: 7,
        port: 8472,
        mtu_v4: Some(1400),
        ..Settings::default()
    };
    let p = plan(&input(&peers, &pools, &view, &s));
    assert_eq!(p.stale_tunnels, [ip("198.19.200.5")]);
    let d = &p.devices[&Family::V4];
    assert_eq!((d.vni, d.port, d.mtu, d.address), (7, 8472, 1400, None));
    assert_eq!(p.pod_mtu, 1400);
    assert_eq!(
        p.tunnel_pools[Family::V4.idx()],
        ["v4"],
        "only pools this node may use"
    );
    let fixed = Settings {
        veth_mtu: Some(1300),
        ..s
    };
    assert_eq!(plan(&input(&peers, &pools, &view, &fixed)).pod_mtu, 1300);
    // No address yet: nothing to announce.
    assert_eq!(p.annotations()[ANN_TUNNEL_MAC_V4], None);
}

#[test]
fn a_vxlan_family_without_an_underlay_address_is_a_problem() {
    let (peers, view) = world();
    let pools = [pool("v6", "2001:db8:100::/48", VxlanMode::Always)];
    let s = Settings::default();
    let mut i = input(&peers, &pools, &view, &s);
    i.underlay[Family::V6.idx()] = None;
    let p = plan(&i);
    assert!(p.devices.is_empty());
    assert!(p.problems[0].contains(DEVICE_V6), "{:?}", p.problems);
}

#[test]
fn macs_are_stable_local_unicast_and_print_as_they_parse() {
    let m = tunnel_mac("n1", Family::V4);
    assert_eq!(m, tunnel_mac("n1", Family::V4));
    assert_ne!(m, tunnel_mac("n2", Family::V4));
    assert_ne!(m, tunnel_mac("n1", Family::V6));
    assert_eq!(m.0[0] & 0x03, 0x02, "locally administered, unicast");
    assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
    assert!("02:00:00:00:00".parse::<Mac>().is_err());
    assert!("02:00:00:00:00:zz".parse::<Mac>().is_err());
    let (peers, view) = world();
    let pools = [pool("v4", "198.19.0.0/17", VxlanMode::Always)];
    let s = Settings::default();
    let ann = plan(&input(&peers, &pools, &view, &s)).annotations();
    assert_eq!(ann[ANN_TUNNEL_ADDR_V4].as_deref(), Some("198.19.0.1"));
    assert_eq!(ann[ANN_TUNNEL_MAC_V4], Some(m.to_string()));
    assert_eq!(ann[ANN_TUNNEL_ADDR_V6], None);
}
