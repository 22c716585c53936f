//! Tests of [`super::desired`].

use super::*;
use crate::k8s::crd::{Cidr, Community, PrefixAdvertisement, ServiceCidr};
use crate::k8s::ipam::view::LocalAllocation;
use std::time::Duration;

use bgp::bfd::BfdConfig;
use bgp::config::{PeerBfd, RemoteAs};
use bgp::rib::filter::FilterAction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub(super) fn node(name: &str, v4: &str) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        labels: [("rack".to_string(), "r1".to_string())].into(),
        ipv4: v4.parse().ok(),
        ipv6: None,
        rr_cluster_id: None,
    }
}

pub(super) fn input(me: &str) -> RoutingInput {
    let nodes = vec![
        node("n1", "198.18.0.11"),
        node("n2", "198.18.0.12"),
        node("n3", "198.18.0.13"),
    ];
    RoutingInput {
        me: nodes.iter().find(|n| n.name == me).cloned().expect("me"),
        nodes,
        configs: BTreeMap::new(),
        peers: BTreeMap::new(),
        passwords: BTreeMap::new(),
        no_export: vec![],
        export_pools: vec!["198.19.0.0/16".parse().expect("net")],
        filters: BTreeMap::new(),
        services: vec![],
        ready_here: BTreeSet::new(),
        restarting: false,
    }
}

pub(super) fn view() -> IpamView {
    IpamView {
        synced: true,
        affine_blocks: ["198.19.1.0/26".parse().expect("net")].into(),
        local: vec![LocalAllocation {
            ip: "198.19.2.7".parse().expect("ip"),
            namespace: "x".into(),
            pod: "p".into(),
            handle: "h".into(),
            borrowed: true,
            host_if: "calip".into(),
        }],
        pod_ips: Default::default(),
        ..Default::default()
    }
}

#[test]
fn mesh_has_one_active_side_per_pair() {
    let d1 = desired(&input("n1"), &view());
    let d3 = desired(&input("n3"), &view());
    assert_eq!(d1.peers.keys().collect::<Vec<_>>(), ["mesh-n2", "mesh-n3"]);
    // n1 (lowest address) connects; n3 (highest) only accepts.
    assert!(!d1.peers["mesh-n3"].passive);
    assert!(d3.peers["mesh-n1"].passive);
    assert_eq!(d1.kinds["mesh-n2"], "node-mesh");
    assert_eq!(d1.local_as, 64512);
    assert_eq!(d1.peers["mesh-n2"].remote_as, RemoteAs::Asn(64512));
    assert_eq!(d1.router_id, Ipv4Addr::new(198, 18, 0, 11));
    assert_eq!(
        d1.listen,
        vec!["198.18.0.11:179".parse::<SocketAddr>().expect("sa")]
    );
}

#[test]
fn originates_affine_blocks_and_borrowed_host_routes() {
    let d = desired(&input("n1"), &view());
    let got: Vec<String> = d.originate.keys().map(|p| p.to_string()).collect();
    assert_eq!(got, ["198.19.1.0/26", "198.19.2.7/32"]);
    let mut i = input("n1");
    i.no_export = vec!["198.19.1.0/24".parse().expect("net")];
    let got: Vec<String> = desired(&i, &view())
        .originate
        .keys()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        got,
        ["198.19.2.7/32"],
        "disableBGPExport pool not announced"
    );
}

#[test]
fn tor_peer_replaces_the_mesh_when_mesh_is_off() {
    let mut i = input("n2");
    i.configs.insert(
        "default".into(),
        BGPConfigurationSpec {
            node_to_node_mesh_enabled: Some(false),
            communities: vec![Community {
                name: "pods".into(),
                value: "64512:100".into(),
            }],
            prefix_advertisements: vec![PrefixAdvertisement {
                cidr: Cidr("198.19.0.0/16".into()),
                communities: vec!["pods".into(), "65000:7".into()],
            }],
            service_cluster_ips: vec![ServiceCidr {
                cidr: Cidr("198.19.255.0/24".into()),
            }],
            ..Default::default()
        },
    );
    i.peers.insert(
        "tor".into(),
        BGPPeerSpec {
            peer_ip: Some("198.18.0.1".into()),
            as_number: Some(65000),
            hold_time: Some(9),
            max_prefix: Some(1000),
            bfd: Some(crate::k8s::crd::BGPPeerBFD {
                min_rx: Some(100),
                multiplier: Some(4),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let d = desired(&i, &view());
    assert_eq!(d.peers.keys().collect::<Vec<_>>(), ["peer-tor"]);
    assert_eq!(d.kinds["peer-tor"], "global");
    let p = &d.peers["peer-tor"];
    assert_eq!(
        (p.remote_as, p.hold_time, p.max_prefix),
        (RemoteAs::Asn(65000), 9, Some(1000))
    );
    assert!(!p.passive);
    assert_eq!(
        p.bfd,
        Some(PeerBfd {
            timers: BfdConfig {
                desired_min_tx: Duration::from_millis(300),
                required_min_rx: Duration::from_millis(100),
                detect_mult: 4,
            },
            multihop: false,
        }),
        "BFD from the BGPPeer, defaults filled in"
    );
    assert!(d.peers.values().all(|q| q.name == "peer-tor"));
    assert_eq!(
        d.originate[&"198.19.1.0/26".parse::<Prefix>().expect("p")].standard,
        vec![(64512 << 16) | 100, (65000 << 16) | 7]
    );
    assert!(
        d.originate
            .contains_key(&"198.19.255.0/24".parse::<Prefix>().expect("p"))
    );
}

#[test]
fn peers_select_nodes_and_missing_passwords_are_reported() {
    let mut i = input("n1");
    i.me.labels.insert("role".into(), "edge".into());
    i.peers.insert(
        "edge-only".into(),
        BGPPeerSpec {
            peer_ip: Some("198.18.0.250".into()),
            as_number: Some(65001),
            node_selector: Some(LabelSelector {
                match_labels: Some([("role".to_string(), "edge".to_string())].into()),
                ..Default::default()
            }),
            password: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                name: "bgp".into(),
                key: "pw".into(),
                optional: None,
            }),
            ..Default::default()
        },
    );
    i.peers.insert(
        "other-rack".into(),
        BGPPeerSpec {
            peer_ip: Some("198.18.0.251".into()),
            as_number: Some(65001),
            node_selector: Some(LabelSelector {
                match_labels: Some([("rack".to_string(), "r9".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let d = desired(&i, &view());
    assert!(!d.peers.contains_key("peer-other-rack"));
    assert!(
        !d.peers.contains_key("peer-edge-only"),
        "no password, no session"
    );
    assert!(
        d.problems.iter().any(|p| p.contains("bgp/pw")),
        "{:?}",
        d.problems
    );
    i.passwords
        .insert(("bgp".into(), "pw".into()), "s3cret".into());
    let d = desired(&i, &view());
    assert_eq!(
        d.peers["peer-edge-only"].md5_password.as_deref(),
        Some("s3cret")
    );
}

#[test]
fn restarting_and_next_hops_reach_every_peer() {
    let mut i = input("n1");
    i.restarting = true;
    i.me.ipv6 = "2001:db8:ffff::b".parse().ok();
    let d = desired(&i, &view());
    for p in d.peers.values() {
        assert!(p.graceful_restart.is_some_and(|g| g.restarting));
        assert_eq!(p.next_hop_v6, "2001:db8:ffff::b".parse().ok());
    }
    assert_eq!(d.listen.len(), 2);
}

#[test]
fn filters_resolve_by_name_fail_closed_and_defaults_export_pools_only() {
    let mut i = input("n1");
    i.configs.insert(
        "default".into(),
        BGPConfigurationSpec {
            service_cluster_ips: vec![ServiceCidr {
                cidr: Cidr("198.19.250.0/24".into()),
            }],
            ..Default::default()
        },
    );
    let peer = |filters: &[&str]| BGPPeerSpec {
        peer_ip: Some("198.18.0.1".into()),
        as_number: Some(65000),
        filters: filters.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    };
    i.peers.insert("tor".into(), peer(&["no-hosts"]));
    i.peers.insert("tor2".into(), peer(&["missing"]));
    i.filters.insert(
        "no-hosts".into(),
        serde_json::from_value(serde_json::json!({
            "exportV4": [{"action": "Reject", "matchOperator": "In", "cidr": "198.19.0.0/16",
                          "prefixLength": {"min": 32}}],
            "importV4": [{"action": "Reject", "matchOperator": "NotIn", "cidr": "198.19.0.0/16"}]
        }))
        .expect("filter"),
    );
    let d = desired(&i, &view());
    let f = &d.peers["peer-tor"].filters;
    assert_eq!((f.import.len(), f.export.len()), (1, 1));
    assert_eq!(f.export[0].len, Some((32, 32)));
    assert!(
        !d.peers.contains_key("peer-tor2"),
        "a missing filter: no session"
    );
    assert!(
        d.problems
            .iter()
            .any(|p| p.contains("BGPFilter missing not found")),
        "{:?}",
        d.problems
    );
    // Defaults: the pool, the service range, then nothing else.
    let nets: Vec<String> = d
        .default_export
        .iter()
        .map(|r| r.cidr.map(|(c, _)| c.to_string()).unwrap_or_default())
        .collect();
    assert_eq!(nets, ["198.19.0.0/16", "198.19.250.0/24", ""]);
    assert_eq!(
        d.default_export.last().map(|r| r.action),
        Some(FilterAction::Reject)
    );
}

#[test]
fn communities_of_every_kind_per_pool_and_per_peer() {
    let mut i = input("n1");
    i.configs.insert(
        "default".into(),
        BGPConfigurationSpec {
            communities: vec![
                Community {
                    name: "pods".into(),
                    value: "64512:100".into(),
                },
                Community {
                    name: "big".into(),
                    value: "64512:1:2".into(),
                },
                Community {
                    name: "broken".into(),
                    value: "65536:1".into(),
                },
            ],
            prefix_advertisements: vec![
                PrefixAdvertisement {
                    cidr: Cidr("198.19.0.0/16".into()),
                    communities: vec!["pods".into(), "big".into(), "rt:64512:5".into()],
                },
                PrefixAdvertisement {
                    cidr: Cidr("198.19.2.0/24".into()),
                    communities: vec!["no-export".into(), "not-a-name".into()],
                },
            ],
            ..Default::default()
        },
    );
    i.peers.insert(
        "tor".into(),
        BGPPeerSpec {
            peer_ip: Some("198.18.0.1".into()),
            as_number: Some(65000),
            communities: vec!["big".into(), "65000:9".into()],
            ..Default::default()
        },
    );
    let d = desired(&i, &view());
    let c = |s: &str| s.parse::<bgp::wire::Community>().expect("community");
    let block = &d.originate[&"198.19.1.0/26".parse::<Prefix>().expect("p")];
    assert_eq!(
        block.iter().collect::<Vec<_>>(),
        [c("64512:100"), c("64512:1:2"), c("rt:64512:5")]
    );
    // The borrowed /32 is also inside 198.19.2.0/24: both entries apply.
    let host = &d.originate[&"198.19.2.7/32".parse::<Prefix>().expect("p")];
    assert!(host.iter().any(|x| x == c("no-export")), "{host:?}");
    assert_eq!(
        d.peers["peer-tor"].communities.iter().collect::<Vec<_>>(),
        [c("65000:9"), c("64512:1:2")]
    );
    // Bad values are reported once each, by where they are.
    let mut problems = d.problems.clone();
    problems.sort();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("communities broken"), "{problems:?}");
    assert!(problems[1].contains("not-a-name"), "{problems:?}");
}

#[test]
fn service_ranges_and_the_services_this_node_serves_are_originated_and_exported() {
    let mut i = input("n1");
    let cidr = |c: &str| ServiceCidr {
        cidr: Cidr(c.into()),
    };
    i.configs.insert(
        "default".into(),
        BGPConfigurationSpec {
            service_cluster_ips: vec![cidr("198.19.250.0/24")],
            service_load_balancer_ips: vec![cidr("198.19.252.0/24")],
            prefix_advertisements: vec![PrefixAdvertisement {
                cidr: Cidr("198.19.252.10/32".into()),
                communities: vec!["65000:10".into()],
            }],
            ..Default::default()
        },
    );
    let facts = |name: &str, local: bool, addrs: &[(services::AddrKind, &str)]| ServiceFacts {
        key: ServiceKey {
            namespace: "web".into(),
            name: name.into(),
        },
        local,
        addrs: addrs
            .iter()
            .map(|(k, a)| (*k, a.parse().expect("ip")))
            .collect(),
    };
    use services::AddrKind::{Cluster, LoadBalancer};
    i.services = vec![
        facts(
            "lb",
            true,
            &[(Cluster, "198.19.250.10"), (LoadBalancer, "198.19.252.10")],
        ),
        facts("api", false, &[(Cluster, "198.19.250.20")]),
    ];
    let originated = |i: &RoutingInput| -> Vec<String> {
        desired(i, &view())
            .originate
            .keys()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        originated(&i),
        [
            "198.19.1.0/26",
            "198.19.2.7/32",
            "198.19.250.0/24",
            "198.19.250.20/32",
            "198.19.252.0/24"
        ],
        "the Local Service has no endpoint here"
    );
    i.ready_here.insert(i.services[0].key.clone());
    let d = desired(&i, &view());
    assert_eq!(
        originated(&i),
        [
            "198.19.1.0/26",
            "198.19.2.7/32",
            "198.19.250.0/24",
            "198.19.250.10/32",
            "198.19.250.20/32",
            "198.19.252.0/24",
            "198.19.252.10/32"
        ]
    );
    // prefixAdvertisements apply per Service address, too.
    assert_eq!(
        d.originate[&"198.19.252.10/32".parse::<Prefix>().expect("p")].standard,
        vec![(65000 << 16) | 10]
    );
    let exported: Vec<String> = d
        .default_export
        .iter()
        .filter_map(|r| r.cidr.map(|(c, _)| c.to_string()))
        .collect();
    assert_eq!(
        exported,
        ["198.19.0.0/16", "198.19.250.0/24", "198.19.252.0/24"]
    );
}
