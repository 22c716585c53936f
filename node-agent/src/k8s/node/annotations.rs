//! The annotations Margay owns on Node objects, and what the other nodes
//! read from them.
//!
//! Each agent writes its own Node's annotations with a JSON merge patch of
//! only those keys ([`patch_node_annotations`]): the kubelet writes the
//! same object, so a read-modify-replace would race it (and RBAC grants
//! the agent `patch` on nodes, not `update`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::NodeIdentity;

/// Annotation on a Node carrying the address its agent chose (IPv4, CIDR).
pub const ANN_IPV4: &str = "margay.dev/ipv4-address";
/// The same for IPv6.
pub const ANN_IPV6: &str = "margay.dev/ipv6-address";
/// Annotation on a Node that makes it a route reflector with this cluster
/// ID (an IPv4 address, like Calico's `routeReflectorClusterID`): its
/// node peers without the same cluster ID become its clients (RFC 4456).
pub const ANN_RR_CLUSTER_ID: &str = "margay.dev/route-reflector-cluster-id";
/// Node label (value `true`) that makes a node a route reflector, with
/// [`DEFAULT_RR_CLUSTER_ID`] unless a cluster ID is configured: above
/// `nodeToNodeMeshMaxNodes` the other nodes peer only with these.
pub const LABEL_ROUTE_REFLECTOR: &str = "margay.dev/route-reflector";
/// The cluster ID of labelled reflectors without one of their own: one ID
/// for all, so that reflectors peer with each other as non-clients and
/// drop each other's reflections of a client's route (CLUSTER_LIST loop
/// check) while every client peers with each of them directly.
pub const DEFAULT_RR_CLUSTER_ID: Ipv4Addr = Ipv4Addr::new(244, 0, 0, 1);

/// Node annotation (VXLAN overlay): this node's IPv4 tunnel address.
pub const ANN_TUNNEL_ADDR_V4: &str = "margay.dev/ipv4-vxlan-tunnel-addr";
/// Node annotation (VXLAN overlay): the MAC of this node's IPv4 tunnel device.
pub const ANN_TUNNEL_MAC_V4: &str = "margay.dev/ipv4-vxlan-tunnel-mac";
/// Node annotation (VXLAN overlay): this node's IPv6 tunnel address.
pub const ANN_TUNNEL_ADDR_V6: &str = "margay.dev/ipv6-vxlan-tunnel-addr";
/// Node annotation (VXLAN overlay): the MAC of this node's IPv6 tunnel device.
pub const ANN_TUNNEL_MAC_V6: &str = "margay.dev/ipv6-vxlan-tunnel-mac";

/// What routing (and the overlay) need to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// BGP IPv4 address (annotation, else InternalIP).
    pub ipv4: Option<Ipv4Addr>,
    /// BGP IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Route reflector cluster ID as written on the Node (not yet checked).
    pub rr_cluster_id: Option<String>,
}

/// A Node's facts: its addresses (the agent's annotation, else its
/// InternalIP) and labels.
pub fn node_facts(n: &Node) -> NodeFacts {
    let ann = n.metadata.annotations.as_ref();
    let parse_ann = |k: &str| -> Option<IpAddr> {
        ann?.get(k).and_then(|v| {
            v.parse::<IpNetwork>()
                .ok()
                .map(|n| n.ip())
                .or_else(|| v.parse().ok())
        })
    };
    let internal = super::internal_ips(Some(n));
    let v4 = parse_ann(ANN_IPV4).or_else(|| internal.iter().copied().find(IpAddr::is_ipv4));
    let v6 = parse_ann(ANN_IPV6).or_else(|| internal.iter().copied().find(IpAddr::is_ipv6));
    NodeFacts {
        name: n.metadata.name.clone().unwrap_or_default(),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        ipv4: match v4 {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        ipv6: match v6 {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        },
        rr_cluster_id: ann.and_then(|a| a.get(ANN_RR_CLUSTER_ID)).cloned(),
    }
}

/// Writes this node's chosen addresses as annotations on its Node object
/// (other nodes mesh with them; operators see what was chosen). A key set
/// to `None` is removed. Nothing is sent when the Node already says so.
pub async fn publish_addresses(client: kube::Client, me: &NodeIdentity) -> Result<(), kube::Error> {
    let wanted: BTreeMap<&str, Option<String>> = [(ANN_IPV4, &me.ipv4), (ANN_IPV6, &me.ipv6)]
        .into_iter()
        .map(|(k, c)| (k, c.as_ref().map(|c| c.addr.to_string())))
        .collect();
    patch_node_annotations(&client, &me.name, &wanted).await
}

/// Sets (`Some`) or removes (`None`) annotations on Node `name` with one
/// JSON merge patch, if any differs from what the API server has.
pub async fn patch_node_annotations(
    client: &kube::Client,
    name: &str,
    wanted: &BTreeMap<&str, Option<String>>,
) -> Result<(), kube::Error> {
    let api = Api::<Node>::all(client.clone());
    let node = api.get(name).await?;
    let have = node.metadata.annotations.unwrap_or_default();
    let patch = annotations_patch(&have, wanted);
    if let Some(patch) = patch {
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(())
}

/// The merge patch that brings `have` to `wanted` (only the keys in
/// `wanted` are touched), or `None` when nothing differs.
fn annotations_patch(
    have: &BTreeMap<String, String>,
    wanted: &BTreeMap<&str, Option<String>>,
) -> Option<serde_json::Value> {
    let changes: serde_json::Map<String, serde_json::Value> = wanted
        .iter()
        .filter(|(k, v)| have.get(**k) != v.as_ref())
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    (!changes.is_empty()).then(|| serde_json::json!({ "metadata": { "annotations": changes } }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use kube::api::ObjectMeta;

    #[test]
    fn node_facts_prefer_the_agents_annotation_over_internal_ip() {
        let mut n = Node {
            metadata: ObjectMeta {
                name: Some("n2".into()),
                annotations: Some([(ANN_IPV4.to_string(), "198.18.7.12/24".to_string())].into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "198.18.0.12".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "2001:db8:ffff::c".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let f = node_facts(&n);
        assert_eq!(f.ipv4, "198.18.7.12".parse().ok());
        assert_eq!(f.ipv6, "2001:db8:ffff::c".parse().ok());
        n.metadata.annotations = None;
        assert_eq!(node_facts(&n).ipv4, "198.18.0.12".parse().ok());
    }

    #[test]
    fn annotation_patch_touches_only_our_keys_and_only_when_they_differ() {
        let have: BTreeMap<String, String> = [
            ("kubelet.example/x".to_string(), "keep".to_string()),
            (ANN_IPV4.to_string(), "198.18.0.11/24".to_string()),
            (ANN_IPV6.to_string(), "2001:db8:ffff::b/64".to_string()),
        ]
        .into();
        let same: BTreeMap<&str, Option<String>> = [
            (ANN_IPV4, Some("198.18.0.11/24".to_string())),
            (ANN_IPV6, Some("2001:db8:ffff::b/64".to_string())),
        ]
        .into();
        assert_eq!(annotations_patch(&have, &same), None);
        let moved: BTreeMap<&str, Option<String>> = [
            (ANN_IPV4, Some("198.18.0.12/24".to_string())),
            (ANN_IPV6, None),
        ]
        .into();
        assert_eq!(
            annotations_patch(&have, &moved),
            Some(serde_json::json!({"metadata": {"annotations": {
                ANN_IPV4: "198.18.0.12/24",
                ANN_IPV6: null,
            }}}))
        );
    }
}
