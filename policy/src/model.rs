//! Inputs: the cluster state the policy plan is computed from.
//!
//! These are plain data types shared by the plan/render path and by the
//! independent evaluator in [`crate::spec_eval`]; they carry no semantics of
//! their own beyond the conversions from the Kubernetes objects.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::admin::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use crate::labels::PodLabels;

/// The label the API server puts on every namespace (immutable, = its name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// `namespace/name` of a pod. Shared strings: the engine keeps a pod's key
/// in its pod map, its address index and the pod itself, and the agent
/// hands in the strings its PodEndpoint cache already holds, so that a key
/// costs one copy of each string per pod, not one per holder
/// (docs/scale.md).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl PodKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `namespace/name` of a NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub namespace: String,
    pub name: String,
}

impl PolicyKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PolicyKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a NetworkPolicy object; `None` when it has no namespace or name.
    pub fn of(policy: &NetworkPolicy) -> Option<Self> {
        Some(PolicyKey::new(
            policy.metadata.namespace.clone()?,
            policy.metadata.name.clone()?,
        ))
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocols NetworkPolicy ports can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`; case-sensitive like
    /// the API). `None` (absent) is TCP.
    pub fn parse(s: Option<&str>) -> Result<Protocol, ModelError> {
        match s {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(other) => Err(ModelError::BadProtocol(other.to_string())),
        }
    }

    /// The name nftables uses for the protocol (`inet_proto`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A container port of a pod (what named ports resolve against).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl ContainerPort {
    pub fn named(name: &str, port: u16, protocol: Protocol) -> Self {
        ContainerPort {
            name: Some(name.to_string()),
            port,
            protocol,
        }
    }
}

/// `status.phase` of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn parse(s: Option<&str>) -> PodPhase {
        match s {
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some("Unknown") => PodPhase::Unknown,
            _ => PodPhase::Pending,
        }
    }
}

/// What the policy engine needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub key: PodKey,
    /// Shared: the agent's PodEndpoint cache and the engine hold one set
    /// per pod between them, not one each, and its strings are shared
    /// between pods ([`crate::labels`], docs/scale.md).
    pub labels: PodLabels,
    /// `status.podIPs` (IPv4 and/or IPv6).
    pub ips: Vec<IpAddr>,
    /// Container ports of `spec.containers`. Shared: the pods of one
    /// workload have the same list, and the agent hands in one copy for
    /// all of them (docs/scale.md).
    pub ports: Arc<[ContainerPort]>,
    pub phase: PodPhase,
    pub host_network: bool,
    /// The node the pod runs on (shared: a few thousand nodes for all pods).
    pub node_name: Option<Arc<str>>,
}

impl PodInfo {
    /// A running, pod-network pod with no ports (tests build on it).
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        PodInfo {
            key: PodKey::new(namespace, name),
            labels: PodLabels::default(),
            ips: Vec::new(),
            ports: Arc::new([]),
            phase: PodPhase::Running,
            host_network: false,
            node_name: None,
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels = self.labels.with(k, v);
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    pub fn port(mut self, port: ContainerPort) -> Self {
        self.add_port(port);
        self
    }

    /// Adds a container port (a new list: the old one may be shared).
    pub fn add_port(&mut self, port: ContainerPort) {
        let mut ports = self.ports.to_vec();
        ports.push(port);
        self.ports = ports.into();
    }

    pub fn on_node(mut self, node: &str) -> Self {
        self.node_name = Some(node.into());
        self
    }

    /// Converts a Pod object. Malformed IPs or ports are an error (the API
    /// server would not hold them); a pod without status simply has no IPs yet.
    pub fn from_k8s(pod: &Pod) -> Result<PodInfo, ModelError> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .ok_or(ModelError::MissingField("pod metadata.namespace"))?;
        let name = pod
            .metadata
            .name
            .clone()
            .ok_or(ModelError::MissingField("pod metadata.name"))?;
        let key = PodKey::new(namespace, name);
        let labels = pod
            .metadata
            .labels
            .as_ref()
            .map(PodLabels::from_map)
            .unwrap_or_default();
        let spec = pod.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let node_name = spec.and_then(|s| s.node_name.clone());
        let mut ports = Vec::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or(&[]) {
            for p in c.ports.as_deref().unwrap_or(&[]) {
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| ModelError::BadPort {
                        pod: key.to_string(),
                        port: i64::from(p.container_port),
                    })?;
                ports.push(ContainerPort {
                    name: p.name.clone(),
                    port,
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                });
            }
        }
        let status = pod.status.as_ref();
        let phase = PodPhase::parse(status.and_then(|s| s.phase.as_deref()));
        let mut ips: Vec<IpAddr> = Vec::new();
        let mut raw: Vec<&str> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().map(|p| p.ip.as_str()).collect())
            .unwrap_or_default();
        if raw.is_empty()
            && let Some(ip) = status.and_then(|s| s.pod_ip.as_deref())
        {
            raw.push(ip);
        }
        for s in raw {
            let ip: IpAddr = s.parse().map_err(|_| ModelError::BadIp {
                pod: key.to_string(),
                ip: s.to_string(),
            })?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        Ok(PodInfo {
            key,
            labels,
            ips,
            ports: ports.into(),
            phase,
            host_network,
            node_name: node_name.map(Arc::from),
        })
    }
}

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

impl NamespaceInfo {
    /// A namespace with the `kubernetes.io/metadata.name` label the API server
    /// always sets.
    pub fn new(name: &str) -> Self {
        let mut labels = Labels::new();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        NamespaceInfo {
            name: name.to_string(),
            labels,
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.to_string(), v.to_string());
        self
    }

    /// Converts a Namespace object, adding `kubernetes.io/metadata.name` if the
    /// object lacks it (as the API server does).
    pub fn from_k8s(ns: &Namespace) -> Result<NamespaceInfo, ModelError> {
        let name = ns
            .metadata
            .name
            .clone()
            .ok_or(ModelError::MissingField("namespace metadata.name"))?;
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| name.clone());
        Ok(NamespaceInfo { name, labels })
    }
}

/// A node: its labels and the IP addresses of `status.addresses` (what
/// AdminNetworkPolicy `nodes` peers select).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub addrs: Vec<IpAddr>,
}

impl NodeInfo {
    pub fn new(name: &str) -> Self {
        NodeInfo {
            name: name.to_string(),
            labels: Labels::new(),
            addrs: Vec::new(),
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.to_string(), v.to_string());
        self
    }

    pub fn addr(mut self, ip: IpAddr) -> Self {
        if !self.addrs.contains(&ip) {
            self.addrs.push(ip);
        }
        self
    }

    /// Converts a Node object: its `InternalIP` and `ExternalIP` addresses
    /// (host names are not addresses). A malformed IP is an error.
    pub fn from_k8s(node: &Node) -> Result<NodeInfo, ModelError> {
        let name = node
            .metadata
            .name
            .clone()
            .ok_or(ModelError::MissingField("node metadata.name"))?;
        let mut n = NodeInfo::new(&name);
        n.labels = node.metadata.labels.clone().unwrap_or_default();
        let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for a in addrs.into_iter().flatten() {
            if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
                continue;
            }
            let ip: IpAddr = a.address.parse().map_err(|_| ModelError::BadNodeIp {
                node: name.clone(),
                ip: a.address.clone(),
            })?;
            n = n.addr(ip);
        }
        Ok(n)
    }
}

/// The whole cluster as seen by the watchers.
///
/// A pod whose namespace object is not (yet) known is treated as being in a
/// namespace whose only label is `kubernetes.io/metadata.name`.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Shared: the agent's PodEndpoint cache makes one `PodInfo` per pod of
    /// another node and the engine holds that one (docs/scale.md).
    pub pods: BTreeMap<PodKey, Arc<PodInfo>>,
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    /// Shared: the agent hands in the objects its watch cache holds
    /// (10k policies are ~20 MB as objects).
    pub policies: BTreeMap<PolicyKey, Arc<NetworkPolicy>>,
    /// Nodes by name (only AdminNetworkPolicy `nodes` peers use them).
    pub nodes: BTreeMap<String, NodeInfo>,
    /// AdminNetworkPolicies by name.
    pub admin_policies: BTreeMap<String, AdminNetworkPolicy>,
    /// BaselineAdminNetworkPolicies by name (only `default` applies).
    pub baseline_policies: BTreeMap<String, BaselineAdminNetworkPolicy>,
}

impl ClusterState {
    pub fn add_node(&mut self, node: NodeInfo) {
        self.nodes.insert(node.name.clone(), node);
    }

    /// Adds an AdminNetworkPolicy; one without a name is an error.
    pub fn add_admin_policy(&mut self, anp: AdminNetworkPolicy) -> Result<(), ModelError> {
        let name = anp
            .metadata
            .name
            .clone()
            .ok_or(ModelError::MissingField("adminnetworkpolicy metadata.name"))?;
        self.admin_policies.insert(name, anp);
        Ok(())
    }

    /// Adds a BaselineAdminNetworkPolicy; one without a name is an error.
    pub fn add_baseline_policy(
        &mut self,
        banp: BaselineAdminNetworkPolicy,
    ) -> Result<(), ModelError> {
        let name = banp.metadata.name.clone().ok_or(ModelError::MissingField(
            "baselineadminnetworkpolicy metadata.name",
        ))?;
        self.baseline_policies.insert(name, banp);
        Ok(())
    }

    pub fn add_pod(&mut self, pod: impl Into<Arc<PodInfo>>) {
        let pod = pod.into();
        self.pods.insert(pod.key.clone(), pod);
    }

    pub fn add_namespace(&mut self, ns: NamespaceInfo) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    /// Adds a policy; one without namespace or name is an error.
    pub fn add_policy(&mut self, policy: NetworkPolicy) -> Result<(), ModelError> {
        let key = PolicyKey::of(&policy).ok_or(ModelError::MissingField(
            "networkpolicy metadata.namespace/name",
        ))?;
        self.policies.insert(key, Arc::new(policy));
        Ok(())
    }
}

/// A pod of this node, wired to a host-side interface (`cali…`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalEndpoint {
    pub pod: PodKey,
    /// Host-side interface name (≤ 15 bytes, starts with the node's prefix).
    pub iface: String,
    /// Addresses the CNI plugin gave the pod: the only sources allowed out of
    /// `iface` (anti-spoofing).
    pub ips: Vec<IpAddr>,
    /// A container a runtime started outside Kubernetes (`ctr run --cni`,
    /// podman): there is no Pod object, so no NetworkPolicy selects it and
    /// it is open in both directions; anti-spoofing still applies. Its
    /// address is in no pod selector set (peers match it only by ipBlock).
    pub standalone: bool,
}

/// Outgoing NAT (an IPPool's `natOutgoing`): traffic from an address in
/// `sources` to one outside every pool in `pools` is masqueraded to the
/// node's address on the way out. Traffic between pods (any pool, enabled
/// or not: a disabled pool also names a no-NAT destination, as in Calico)
/// keeps its addresses; traffic to the node itself never leaves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatOutgoing {
    /// CIDRs of the pools with NAT on.
    pub sources: Vec<ipnetwork::IpNetwork>,
    /// CIDRs of every pool (and of every no-NAT destination).
    pub pools: Vec<ipnetwork::IpNetwork>,
}

/// This node: its own addresses and its local endpoints.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub node_name: String,
    /// The node's own addresses: traffic from them to a local pod is always
    /// allowed (kubelet probes), as is traffic from a local pod to them.
    pub node_addrs: Vec<IpAddr>,
    /// Prefix of workload interfaces (`cali`): packets from any interface with
    /// this prefix that is not a known endpoint are dropped.
    pub iface_prefix: String,
    pub endpoints: BTreeMap<PodKey, LocalEndpoint>,
    /// Outgoing NAT.
    pub nat: NatOutgoing,
    /// Log denied packets (default off; see [`crate::flowlog`]).
    pub deny_log: Option<crate::flowlog::DenyLog>,
}

impl NodeContext {
    pub fn new(node_name: &str) -> Self {
        NodeContext {
            node_name: node_name.to_string(),
            node_addrs: Vec::new(),
            iface_prefix: "cali".to_string(),
            endpoints: BTreeMap::new(),
            nat: NatOutgoing::default(),
            deny_log: None,
        }
    }

    pub fn add_endpoint(&mut self, ep: LocalEndpoint) {
        self.endpoints.insert(ep.pod.clone(), ep);
    }
}

/// Errors converting Kubernetes objects into the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing {0}")]
    MissingField(&'static str),
    #[error("unknown protocol {0:?} (expected TCP, UDP or SCTP)")]
    BadProtocol(String),
    #[error("pod {pod}: container port {port} is not in 1..=65535")]
    BadPort { pod: String, port: i64 },
    #[error("pod {pod}: {ip:?} is not an IP address")]
    BadIp { pod: String, ip: String },
    #[error("node {node}: address {ip:?} is not an IP address")]
    BadNodeIp { node: String, ip: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort as K8sPort, PodIP, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn k8s_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("x".into()),
                name: Some("a".into()),
                labels: Some([("pod".to_string(), "a".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![
                        K8sPort {
                            name: Some("serve-80-tcp".into()),
                            container_port: 80,
                            ..Default::default()
                        },
                        K8sPort {
                            name: Some("serve-81-udp".into()),
                            container_port: 81,
                            protocol: Some("UDP".into()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("198.19.0.2".into()),
                pod_ips: Some(vec![
                    PodIP {
                        ip: "198.19.0.2".into(),
                    },
                    PodIP {
                        ip: "2001:db8::2".into(),
                    },
                ]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pod_from_k8s_takes_ips_ports_phase() {
        let p = PodInfo::from_k8s(&k8s_pod()).unwrap();
        assert_eq!(p.key, PodKey::new("x", "a"));
        assert_eq!(
            p.ips,
            vec![
                "198.19.0.2".parse::<IpAddr>().unwrap(),
                "2001:db8::2".parse().unwrap()
            ]
        );
        assert_eq!(p.ports.len(), 2);
        assert_eq!(p.ports[1].protocol, Protocol::Udp);
        assert_eq!(p.ports[0].protocol, Protocol::Tcp);
        assert_eq!(p.phase, PodPhase::Running);
        assert_eq!(p.node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn pod_from_k8s_rejects_bad_ip_and_protocol() {
        let mut pod = k8s_pod();
        pod.status.as_mut().unwrap().pod_ips = Some(vec![PodIP {
            ip: "not-an-ip".into(),
        }]);
        assert!(matches!(
            PodInfo::from_k8s(&pod),
            Err(ModelError::BadIp { .. })
        ));
        let mut pod = k8s_pod();
        pod.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .protocol = Some("ICMP".into());
        assert!(matches!(
            PodInfo::from_k8s(&pod),
            Err(ModelError::BadProtocol(_))
        ));
        let mut pod = k8s_pod();
        pod.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 70000;
        assert!(matches!(
            PodInfo::from_k8s(&pod),
            Err(ModelError::BadPort { .. })
        ));
    }

    #[test]
    fn namespace_gets_metadata_name_label() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("y".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let n = NamespaceInfo::from_k8s(&ns).unwrap();
        assert_eq!(
            n.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
            Some("y")
        );
    }

    #[test]
    fn node_from_k8s_takes_ip_addresses_only() {
        use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
        let addr = |t: &str, a: &str| NodeAddress {
            type_: t.into(),
            address: a.into(),
        };
        let mut node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some([("zone".to_string(), "a".to_string())].into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![
                    addr("Hostname", "n1"),
                    addr("InternalIP", "198.18.0.1"),
                    addr("InternalIP", "2001:db8:ffff::1"),
                    addr("ExternalIP", "198.18.0.1"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let n = NodeInfo::from_k8s(&node).unwrap();
        assert_eq!(n.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            n.addrs,
            vec![
                "198.18.0.1".parse::<IpAddr>().unwrap(),
                "2001:db8:ffff::1".parse().unwrap()
            ]
        );
        node.status.as_mut().unwrap().addresses = Some(vec![addr("InternalIP", "n1.local")]);
        assert!(matches!(
            NodeInfo::from_k8s(&node),
            Err(ModelError::BadNodeIp { .. })
        ));
    }
}
