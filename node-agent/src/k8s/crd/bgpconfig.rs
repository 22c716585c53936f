//! `BGPConfiguration`: cluster-wide BGP settings (`default`), optionally
//! overridden per node (`node.<nodename>`), and the types its spec uses.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Cidr, DEFAULT_AS, DEFAULT_BGP_PORT};

/// Largest cluster that gets the full mesh by default (Calico's advice
/// too: above ~100 nodes, route reflectors).
pub const DEFAULT_MESH_MAX_NODES: u32 = 100;

/// A named BGP community value: standard ("65000:100", RFC 1997), large
/// ("65000:1:2", RFC 8092), extended ("rt:65000:100", "ro:198.18.0.1:7",
/// RFC 4360) or well-known ("no-export", "no-advertise").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Community {
    /// Name used by `prefixAdvertisements` and `BGPPeer.communities`.
    pub name: String,
    /// The value.
    pub value: String,
}

/// Communities to attach to routes in a CIDR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrefixAdvertisement {
    /// Routes in this network get the communities.
    pub cidr: Cidr,
    /// Community values or names from `communities`.
    #[serde(default)]
    pub communities: Vec<String>,
}

/// A range of Service addresses to advertise: the range itself from every
/// node, and each Service address in it as a host route (see
/// `routing::services`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceCidr {
    /// The network.
    pub cidr: Cidr,
}

/// Log levels the agent understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Normal operation.
    Info,
    /// Only problems.
    Warning,
    /// Only failures.
    Error,
}

/// Cluster BGP settings. The object named `default` applies to every node;
/// `node.<nodename>` overrides fields for one node.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "crd.margay.dev",
    version = "v1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    doc = "BGP settings: `default` for the cluster, `node.<name>` per node.",
    shortname = "bgpconfig",
    printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"),
    printcolumn(
        name = "Mesh",
        type_ = "boolean",
        json_path = ".spec.nodeToNodeMeshEnabled"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// AS number of the nodes (default 64512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// iBGP full mesh between all nodes. Unset (the default): the full
    /// mesh up to `nodeToNodeMeshMaxNodes` nodes, route reflectors above
    /// it. `true`: always the full mesh; `false`: no node-to-node sessions
    /// at all (nodes peer with ToRs or reflectors through `BGPPeer`s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// Largest cluster (in nodes) that gets the full mesh when
    /// `nodeToNodeMeshEnabled` is unset (default 100). Above it, the nodes
    /// labelled `margay.dev/route-reflector=true` are route reflectors and
    /// every other node peers only with them (with none labelled, the mesh
    /// stays and a problem is reported). Only in `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_max_nodes: Option<u32>,
    /// TCP port the speaker listens on (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Named community values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    /// Communities per advertised network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// Service cluster IP ranges: every node announces the range; each
    /// Service's cluster IPs in it go out as host routes (with
    /// `externalTrafficPolicy: Local` only from nodes with a ready endpoint).
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<ServiceCidr>,
    /// Service external IP ranges (`spec.externalIPs`), the same way.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<ServiceCidr>,
    /// Service LoadBalancer IP ranges (`status.loadBalancer.ingress[].ip`,
    /// as assigned by MetalLB or another allocator), the same way.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<ServiceCidr>,
    /// Agent log level (default Info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<LogLevel>,
    /// Makes the node a route reflector with this cluster ID (an IPv4
    /// address; RFC 4456): its node peers of another cluster become its
    /// clients. Only in a per-node object (`node.<name>`); where Calico has
    /// it in its Node resource (`spec.bgp.routeReflectorClusterID`). The
    /// Node annotation `margay.dev/route-reflector-cluster-id` is the
    /// fallback when this is unset.
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<String>,
}

impl BGPConfigurationSpec {
    /// `self` with every field `over` sets replaced (per-node overrides).
    pub fn overlay(&self, over: &BGPConfigurationSpec) -> BGPConfigurationSpec {
        fn pick<T: Clone>(base: &Option<T>, over: &Option<T>) -> Option<T> {
            over.clone().or_else(|| base.clone())
        }
        fn pick_vec<T: Clone>(base: &[T], over: &[T]) -> Vec<T> {
            if over.is_empty() { base } else { over }.to_vec()
        }
        BGPConfigurationSpec {
            as_number: pick(&self.as_number, &over.as_number),
            node_to_node_mesh_enabled: pick(
                &self.node_to_node_mesh_enabled,
                &over.node_to_node_mesh_enabled,
            ),
            // Cluster-wide only: every node must agree on the topology.
            node_to_node_mesh_max_nodes: self.node_to_node_mesh_max_nodes,
            listen_port: pick(&self.listen_port, &over.listen_port),
            communities: pick_vec(&self.communities, &over.communities),
            prefix_advertisements: pick_vec(
                &self.prefix_advertisements,
                &over.prefix_advertisements,
            ),
            service_cluster_ips: pick_vec(&self.service_cluster_ips, &over.service_cluster_ips),
            service_external_ips: pick_vec(&self.service_external_ips, &over.service_external_ips),
            service_load_balancer_ips: pick_vec(
                &self.service_load_balancer_ips,
                &over.service_load_balancer_ips,
            ),
            log_severity_screen: pick(&self.log_severity_screen, &over.log_severity_screen),
            // Per node only: never inherited from `default`.
            route_reflector_cluster_id: over.route_reflector_cluster_id.clone(),
        }
    }

    /// The AS number, defaulted.
    pub fn as_number(&self) -> u32 {
        self.as_number.unwrap_or(DEFAULT_AS)
    }

    /// Largest cluster with the full mesh by default, defaulted.
    pub fn mesh_max_nodes(&self) -> u32 {
        self.node_to_node_mesh_max_nodes
            .unwrap_or(DEFAULT_MESH_MAX_NODES)
    }

    /// The listen port, defaulted.
    pub fn listen_port(&self) -> u16 {
        self.listen_port.unwrap_or(DEFAULT_BGP_PORT)
    }
}
