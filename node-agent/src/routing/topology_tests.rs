//! Tests of the node-to-node topology: the full mesh up to
//! `nodeToNodeMeshMaxNodes`, the labelled reflectors above it.

use super::peers::Topology;
use super::tests::{input, view};
use super::*;
use crate::k8s::node::annotations::{DEFAULT_RR_CLUSTER_ID, LABEL_ROUTE_REFLECTOR};

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
