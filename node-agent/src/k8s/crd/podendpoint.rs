//! `PodEndpoint`: the compact record of one pod that every agent needs for
//! policy (docs/scale.md §4). The agent of the pod's node writes it (see
//! `crate::k8s::podendpoints`); it holds only what policy reads of a
//! remote pod — node, addresses, labels, named ports — so that an agent
//! watching these instead of every Pod of the cluster receives ~0.9 KB per
//! change instead of ~3.4 KB, and keeps ~200 bytes per remote pod.
//!
//! The object has the Pod's namespace and name and an owner reference to
//! it (garbage collection removes it with the Pod, even when the node and
//! its agent are gone). It has no labels: `spec.node` is a selectable
//! field ([`NODE_FIELD`], Kubernetes 1.31+), so an agent lists and watches
//! its own node's endpoints with a field selector, and a label naming the
//! node again would add its bytes (and its managedFields entry) to every
//! watch event every agent receives. The pod's labels are in `spec.labels`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The field selector key of a PodEndpoint's node (`spec.node`, declared
/// in the CRD's `selectableFields`).
pub const NODE_FIELD: &str = "spec.node";

/// A named container port (what named-port policy rules resolve).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct NamedPort {
    /// The port's name in the container spec.
    pub name: String,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The port number.
    pub port: u16,
}

/// Spec of a `PodEndpoint`.
#[derive(
    CustomResource, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "crd.margay.dev",
    version = "v1",
    kind = "PodEndpoint",
    plural = "podendpoints",
    namespaced,
    doc = "One pod as policy sees it (node, addresses, labels, named ports), written by the agent of the pod's node.",
    shortname = "mep",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    selectable = ".spec.node"
)]
#[allow(clippy::duplicated_attributes)]
#[serde(rename_all = "camelCase")]
pub struct PodEndpointSpec {
    /// The node the pod runs on.
    pub node: String,
    /// The pod's addresses (IPv4 and/or IPv6).
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
    // The agent's cache keeps them interned (`policy::PodLabels`). Atomic:
    // the writer always replaces the whole map, and the API server then
    // records one field for it in managedFields instead of one per label
    // (sent with every watch event to every agent).
    /// The pod's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    pub labels: BTreeMap<String, String>,
    /// The pod's named container ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

impl PodEndpoint {
    /// The policy crate's view of the pod (a running, pod-network pod: the
    /// writer publishes no other).
    pub fn to_pod_info(&self) -> Result<policy::PodInfo, String> {
        let (Some(ns), Some(name)) = (&self.metadata.namespace, &self.metadata.name) else {
            return Err("PodEndpoint without namespace or name".into());
        };
        let s = &self.spec;
        let labels = policy::PodLabels::from_map(&s.labels);
        let ports: std::sync::Arc<[policy::ContainerPort]> = container_ports(&s.named_ports)
            .map_err(|e| invalid_ports(ns, name, &e))?
            .into();
        Ok(pod_view(
            &ns.as_str().into(),
            &name.as_str().into(),
            &s.node.as_str().into(),
            &s.addresses,
            &labels,
            &ports,
        ))
    }
}

/// The policy crate's container ports of a PodEndpoint's named ports; an
/// error names the port policy cannot use.
pub fn container_ports(named: &[NamedPort]) -> Result<Vec<policy::ContainerPort>, String> {
    named
        .iter()
        .map(|p| {
            let protocol = policy::Protocol::parse(Some(&p.protocol))
                .map_err(|e| format!("named port {}: {e}", p.name))?;
            Ok(policy::ContainerPort::named(&p.name, p.port, protocol))
        })
        .collect()
}

/// The policy crate's view of a pod from a PodEndpoint's fields, with
/// ports policy can use (one conversion for the object and the agent's
/// compact cache of them, `crate::k8s::endpointcache`): the addresses
/// sorted, without repeats.
pub fn pod_view(
    ns: &std::sync::Arc<str>,
    name: &std::sync::Arc<str>,
    node: &std::sync::Arc<str>,
    addresses: &[std::net::IpAddr],
    labels: &policy::PodLabels,
    ports: &std::sync::Arc<[policy::ContainerPort]>,
) -> policy::PodInfo {
    let mut info = policy::PodInfo::new(ns.clone(), name.clone());
    info.labels = labels.clone();
    info.ips = addresses.to_vec();
    info.ips.sort();
    info.ips.dedup();
    info.ips.shrink_to_fit();
    info.node_name = Some(node.clone());
    info.ports = ports.clone();
    info
}

/// Why policy cannot use PodEndpoint `ns/name`: `error`, from
/// [`container_ports`].
pub fn invalid_ports(ns: &str, name: &str, error: &str) -> String {
    format!("PodEndpoint {ns}/{name}: {error}")
}
