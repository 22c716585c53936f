//! Tests of the node-to-node topology: the full mesh up to
//! `nodeToNodeMeshMaxNodes`, the labelled reflectors above it, configured
//! route reflectors and selector peerings.

use super::peers::Topology;
use super::tests::{input, view};
use super::*;
use crate::k8s::node::annotations::{DEFAULT_RR_CLUSTER_ID, LABEL_ROUTE_REFLECTOR};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// `input(me)` (nodes n1..n3) with `reflectors` labelled and the given
/// `default` BGPConfiguration.
fn cluster(me: &str, reflectors: &[&str], default: BGPConfigurationSpec) -> RoutingInput {
    let mut i = input(me);
    for n in i.nodes.iter_mut().chain([&mut i.me]) {
        if reflectors.contains(&n.name.as_str()) {
            n.labels
                .insert(LABEL_ROUTE_REFLECTOR.to_string(), "true".to_string());
        }
    }
    i.configs.insert("default".into(), default);
    i
}

fn max(n: u32) -> BGPConfigurationSpec {
    BGPConfigurationSpec {
        node_to_node_mesh_max_nodes: Some(n),
        ..Default::default()
    }
}

fn names(d: &Desired) -> Vec<&str> {
    d.peers.keys().map(String::as_str).collect()
}

#[test]
fn small_clusters_keep_the_full_mesh_and_a_labelled_node_reflects_in_it() {
    let d1 = desired(&cluster("n1", &["n1"], Default::default()), &view());
    let d2 = desired(&cluster("n2", &["n1"], Default::default()), &view());
    assert_eq!(d1.topology, Topology::FullMesh);
    assert_eq!(d1.cluster_id, Some(DEFAULT_RR_CLUSTER_ID));
    assert_eq!(names(&d1), ["mesh-n2", "mesh-n3"]);
    assert!(d1.peers.values().all(|p| p.rr_client));
    assert_eq!(d1.kinds["mesh-n2"], "rr-client");
    // A client keeps its sessions to everyone while the mesh is on.
    assert_eq!(names(&d2), ["mesh-n1", "mesh-n3"]);
    assert_eq!(d2.cluster_id, None);
    assert_eq!(d2.kinds["mesh-n1"], "node-mesh");
    assert!(d1.problems.is_empty() && d2.problems.is_empty());
    // Unlabelled, nobody reflects.
    assert_eq!(desired(&input("n1"), &view()).cluster_id, None);
}

#[test]
fn above_the_size_clients_keep_only_their_reflector_sessions_unchanged() {
    for me in ["n1", "n2", "n3"] {
        let mesh = desired(&cluster(me, &["n1"], max(3)), &view());
        let rr = desired(&cluster(me, &["n1"], max(2)), &view());
        assert_eq!(mesh.topology, Topology::FullMesh, "{me}: 3 nodes <= 3");
        assert_eq!(
            rr.topology,
            Topology::Reflectors {
                nodes: 3,
                max: 2,
                reflectors: vec!["n1".into()]
            },
            "{me}"
        );
        assert!(rr.problems.is_empty(), "{me}: {:?}", rr.problems);
        // Every session that stays is configured exactly as before, so the
        // speaker keeps it (no reset): the switch only closes sessions.
        for (name, p) in &rr.peers {
            assert_eq!(mesh.peers.get(name), Some(p), "{me}: {name} changed");
        }
        if me == "n1" {
            assert_eq!(rr.peers, mesh.peers, "the reflector keeps every session");
        } else {
            assert_eq!(names(&rr), ["mesh-n1"], "{me}");
            assert_eq!(rr.kinds["mesh-n1"], "reflector");
        }
    }
    assert_eq!(
        desired(&cluster("n2", &["n1"], max(2)), &view())
            .topology
            .to_string(),
        "route reflectors n1 (3 nodes > nodeToNodeMeshMaxNodes 2)"
    );
}

#[test]
fn reflectors_peer_with_each_other_as_non_clients() {
    let d1 = desired(&cluster("n1", &["n1", "n2"], max(2)), &view());
    assert_eq!(names(&d1), ["mesh-n2", "mesh-n3"]);
    assert!(!d1.peers["mesh-n2"].rr_client, "same cluster ID: no client");
    assert_eq!(d1.kinds["mesh-n2"], "reflector");
    assert!(d1.peers["mesh-n3"].rr_client);
    let d3 = desired(&cluster("n3", &["n1", "n2"], max(2)), &view());
    assert_eq!(names(&d3), ["mesh-n1", "mesh-n2"]);
}

#[test]
fn above_the_size_without_reflectors_the_mesh_stays_and_says_why() {
    let d = desired(&cluster("n2", &[], max(2)), &view());
    assert_eq!(d.topology, Topology::FullMesh);
    assert_eq!(names(&d), ["mesh-n1", "mesh-n3"]);
    assert!(
        d.problems.iter().any(|p| p.contains(
            "3 nodes > nodeToNodeMeshMaxNodes 2 but no node is labelled margay.dev/route-reflector=true"
        )),
        "{:?}",
        d.problems
    );
}

#[test]
fn an_explicit_mesh_setting_overrides_the_size() {
    let on = BGPConfigurationSpec {
        node_to_node_mesh_enabled: Some(true),
        ..max(2)
    };
    let d = desired(&cluster("n2", &["n1"], on), &view());
    assert_eq!(d.topology, Topology::FullMesh);
    assert_eq!(names(&d), ["mesh-n1", "mesh-n3"]);
    let off = BGPConfigurationSpec {
        node_to_node_mesh_enabled: Some(false),
        ..Default::default()
    };
    let d = desired(&cluster("n2", &["n1"], off), &view());
    assert_eq!(d.topology, Topology::Off);
    assert!(d.peers.is_empty());
}

#[test]
fn a_node_cannot_choose_its_own_mesh_size() {
    let mut i = cluster("n2", &["n1"], Default::default());
    i.configs.insert("node.n2".into(), max(2));
    let d = desired(&i, &view());
    assert_eq!(d.topology, Topology::FullMesh, "only `default` sets it");
    assert!(
        d.problems
            .iter()
            .any(|p| p.contains("node.n2: nodeToNodeMeshMaxNodes is cluster-wide")),
        "{:?}",
        d.problems
    );
}

/// Calico's route reflector set-up: n1 carries a cluster ID and the label
/// `route-reflector: "true"`, the mesh is off, and one BGPPeer for every
/// node selects the reflectors.
fn rr_input(me: &str) -> RoutingInput {
    let mut i = input(me);
    for n in i.nodes.iter_mut().chain([&mut i.me]) {
        if n.name == "n1" {
            n.rr_cluster_id = Some("198.18.0.100".into());
            n.labels.insert("route-reflector".into(), "true".into());
        }
    }
    i.configs.insert(
        "default".into(),
        BGPConfigurationSpec {
            node_to_node_mesh_enabled: Some(false),
            ..Default::default()
        },
    );
    i.peers.insert(
        "rrs".into(),
        BGPPeerSpec {
            peer_selector: Some(LabelSelector {
                match_labels: Some([("route-reflector".to_string(), "true".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    i
}

#[test]
fn route_reflectors_peer_with_every_node_and_make_them_clients() {
    // The reflector: the BGPPeer selects it, so it peers back with every
    // node the BGPPeer is for, each a client.
    let d = desired(&rr_input("n1"), &view());
    assert_eq!(d.cluster_id, Some(Ipv4Addr::new(198, 18, 0, 100)));
    assert_eq!(
        d.peers.keys().collect::<Vec<_>>(),
        ["peer-rrs-n2", "peer-rrs-n3"]
    );
    assert!(d.peers.values().all(|p| p.rr_client));
    assert_eq!(d.kinds["peer-rrs-n2"], "rr-client");
    // n1 has the lowest address: it connects, the clients accept.
    assert!(!d.peers["peer-rrs-n2"].passive);
    // A client: one session, to the reflector, not a client itself; no
    // cluster ID of its own.
    let d2 = desired(&rr_input("n2"), &view());
    assert_eq!(d2.cluster_id, None);
    assert_eq!(d2.peers.keys().collect::<Vec<_>>(), ["peer-rrs-n1"]);
    assert!(!d2.peers["peer-rrs-n1"].rr_client);
    assert!(d2.peers["peer-rrs-n1"].passive);
    assert_eq!(d2.kinds["peer-rrs-n1"], "selector");

    // Two reflectors of one cluster are not each other's clients; of
    // different clusters they are.
    let mut i = rr_input("n1");
    for n in i.nodes.iter_mut().filter(|n| n.name == "n3") {
        n.rr_cluster_id = Some("198.18.0.100".into());
        n.labels.insert("route-reflector".into(), "true".into());
    }
    let d = desired(&i, &view());
    assert!(d.peers["peer-rrs-n2"].rr_client);
    assert!(!d.peers["peer-rrs-n3"].rr_client);
    assert_eq!(d.kinds["peer-rrs-n3"], "selector");
    for n in i.nodes.iter_mut().filter(|n| n.name == "n3") {
        n.rr_cluster_id = Some("198.18.0.101".into());
    }
    assert!(desired(&i, &view()).peers["peer-rrs-n3"].rr_client);

    // An invalid cluster ID: reported, and no reflection.
    let mut i = rr_input("n1");
    i.me.rr_cluster_id = Some("not-an-id".into());
    let d = desired(&i, &view());
    assert_eq!(d.cluster_id, None);
    assert!(d.peers.values().all(|p| !p.rr_client));
    assert!(
        d.problems.iter().any(|p| p.contains("not-an-id")),
        "{:?}",
        d.problems
    );
}

#[test]
fn the_cluster_id_comes_from_the_per_node_bgpconfiguration_else_the_annotation() {
    let per_node = |id: &str| BGPConfigurationSpec {
        route_reflector_cluster_id: Some(id.into()),
        ..Default::default()
    };
    // n1 is a reflector by its BGPConfiguration only (no annotation).
    let mut i = rr_input("n1");
    for n in i.nodes.iter_mut().chain([&mut i.me]) {
        n.rr_cluster_id = None;
    }
    assert_eq!(desired(&i, &view()).cluster_id, None);
    i.configs.insert("node.n1".into(), per_node("198.18.0.200"));
    let d = desired(&i, &view());
    assert_eq!(d.cluster_id, Some(Ipv4Addr::new(198, 18, 0, 200)));
    assert!(d.peers.values().all(|p| p.rr_client), "{:?}", d.peers);
    // The clients see it too: n3 with the same cluster ID in its own
    // BGPConfiguration is a fellow reflector, not a client.
    i.configs.insert("node.n3".into(), per_node("198.18.0.200"));
    for n in i.nodes.iter_mut().filter(|n| n.name == "n3") {
        n.labels.insert("route-reflector".into(), "true".into());
    }
    let d = desired(&i, &view());
    assert!(d.peers["peer-rrs-n2"].rr_client);
    assert!(!d.peers["peer-rrs-n3"].rr_client);

    // The CRD wins over the annotation; the annotation is the fallback.
    let mut i = rr_input("n1");
    assert_eq!(
        desired(&i, &view()).cluster_id,
        Some(Ipv4Addr::new(198, 18, 0, 100))
    );
    i.configs.insert("node.n1".into(), per_node("198.18.0.200"));
    assert_eq!(
        desired(&i, &view()).cluster_id,
        Some(Ipv4Addr::new(198, 18, 0, 200))
    );
    // An invalid CRD value is reported by name, and no reflection (it does
    // not fall back to the annotation: the operator asked for something).
    i.configs.insert("node.n1".into(), per_node("rr-1"));
    let d = desired(&i, &view());
    assert_eq!(d.cluster_id, None);
    assert!(
        d.problems
            .iter()
            .any(|p| p.contains("node.n1: routeReflectorClusterID \"rr-1\"")),
        "{:?}",
        d.problems
    );

    // In `default` it would make every node a reflector of one cluster, with
    // no clients: ignored and reported.
    let mut i = input("n2");
    i.configs.insert("default".into(), per_node("198.18.0.200"));
    let d = desired(&i, &view());
    assert_eq!(d.cluster_id, None);
    assert!(
        d.problems.iter().any(|p| p.contains("is per node")),
        "{:?}",
        d.problems
    );
    // ... and a per-node override does not inherit it.
    let merged = effective_config(&i.configs, "n2");
    assert_eq!(merged.route_reflector_cluster_id, None);
}

#[test]
fn selector_peerings_are_configured_at_both_ends() {
    // "nodes labelled rack=r1 peer with the edge node": the edge node is
    // not itself selected by nodeSelector, but peers back.
    let peers = |me: &str| {
        let mut i = input(me);
        for n in i.nodes.iter_mut().chain([&mut i.me]) {
            if n.name == "n3" {
                n.labels = [("role".to_string(), "edge".to_string())].into();
            }
        }
        i.peers.insert(
            "to-edge".into(),
            BGPPeerSpec {
                node_selector: Some(LabelSelector {
                    match_labels: Some([("rack".to_string(), "r1".to_string())].into()),
                    ..Default::default()
                }),
                peer_selector: Some(LabelSelector {
                    match_labels: Some([("role".to_string(), "edge".to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        desired(&i, &view())
            .peers
            .into_keys()
            .filter(|k| k.starts_with("peer-"))
            .collect::<Vec<_>>()
    };
    assert_eq!(peers("n1"), ["peer-to-edge-n3"]);
    assert_eq!(peers("n3"), ["peer-to-edge-n1", "peer-to-edge-n2"]);
}
