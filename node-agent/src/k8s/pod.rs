//! What the agent reads of a Pod: the addresses a Pod asks for in its
//! `margay.dev/ip-addrs` annotation, and what of each Pod the watch cache
//! keeps ([`Cached`], [`trim_pod`]).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::k8s::crd::{
    BGPConfiguration, BGPFilter, BGPPeer, IPAMConfiguration, IPPool, RawAdminNetworkPolicy,
    RawBaselineAdminNetworkPolicy,
};

/// The prefix of the annotations Margay owns.
const MARGAY_PREFIX: &str = "margay.dev/";

/// Pod annotation with the addresses the pod wants (JSON list).
pub const ANN_IP_ADDRS: &str = "margay.dev/ip-addrs";

/// The addresses requested by a Pod's `margay.dev/ip-addrs` annotation.
pub fn requested_by_annotation(pod: &Pod) -> Result<Vec<IpAddr>, String> {
    let Some(v) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_IP_ADDRS))
    else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = serde_json::from_str(v).map_err(|e| {
        format!("annotation {ANN_IP_ADDRS}={v:?} is not a JSON list of addresses: {e}")
    })?;
    list.iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("annotation {ANN_IP_ADDRS}: {s:?} is not an IP address"))
        })
        .collect()
}

/// What of an object the agent keeps in its cache: all of it, except
/// for Pods (see [`trim_pod`]), Nodes ([`trim_node`]) and NetworkPolicies,
/// Namespaces, Services and EndpointSlices ([`trim_meta`]). PodEndpoints are not kept whole at all
/// (`crate::k8s::endpointcache`).
pub trait Cached {
    /// Drops what the agent never reads (nothing, by default).
    fn trim(&mut self) {}

    /// Whether this (trimmed) object says nothing `old` (the cached one)
    /// did not, apart from its resourceVersion: a write to what the trim
    /// dropped. Such an event updates the cache but moves no generation,
    /// so nothing re-reads the kind for it. False by default.
    fn unchanged(&self, _old: &Self) -> bool {
        false
    }
}
impl Cached for Node {
    fn trim(&mut self) {
        trim_node(self);
    }

    /// A kubelet's status report (conditions' heartbeats, images,
    /// capacity) is all trimmed away: ~17 such events a second at 5,000
    /// nodes, each of which made routing, the overlay and policy re-read
    /// all 5,000 Nodes.
    fn unchanged(&self, old: &Self) -> bool {
        self.metadata.labels == old.metadata.labels
            && self.metadata.annotations == old.metadata.annotations
            && self.metadata.uid == old.metadata.uid
            && self.metadata.deletion_timestamp == old.metadata.deletion_timestamp
            && self.spec == old.spec
            && self.status == old.status
            && self.metadata.name == old.metadata.name
    }
}
impl Cached for Namespace {
    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
    }
}
impl Cached for NetworkPolicy {
    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
    }
}
impl Cached for IPPool {}
impl Cached for BGPPeer {}
impl Cached for BGPConfiguration {}
impl Cached for BGPFilter {}
impl Cached for Service {
    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
    }
}
impl Cached for EndpointSlice {
    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
    }
}
impl Cached for IPAMConfiguration {}
impl Cached for RawAdminNetworkPolicy {}
impl Cached for RawBaselineAdminNetworkPolicy {}
impl Cached for Pod {
    fn trim(&mut self) {
        trim_pod(self);
    }
}

/// The annotation `kubectl apply` leaves on what it applied: a JSON copy
/// of the whole object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops the metadata the agent never reads of objects every agent holds
/// one of per object of the cluster (10k NetworkPolicies): the API
/// server's `managedFields` (an entry per writer, often bigger than the
/// spec) and `kubectl apply`'s copy of the object.
pub fn trim_meta(m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

/// Drops what the agent never reads of a Node before it is cached: it
/// keeps the metadata (name, labels, and of the annotations Margay's own,
/// `margay.dev/…`: addresses, route-reflector settings, tunnel addresses),
/// the spec, and of the status only the addresses. Every agent holds every
/// Node; a kubelet's Node status (images, conditions, nodeInfo, capacity)
/// is most of its bytes, and the other annotations (kubeadm's, CSI
/// drivers', other CNIs') are for others. (This node's own annotations are
/// written after a GET of the Node, not from this cache.)
pub fn trim_node(n: &mut Node) {
    use k8s_openapi::api::core::v1::NodeStatus;
    n.metadata.managed_fields = None;
    n.metadata.owner_references = None;
    if let Some(a) = n.metadata.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(MARGAY_PREFIX));
        if a.is_empty() {
            n.metadata.annotations = None;
        }
    }
    if let Some(st) = n.status.take() {
        n.status = Some(NodeStatus {
            addresses: st.addresses,
            ..NodeStatus::default()
        });
    }
}

/// Drops what the agent never reads of a Pod before it is cached: it keeps
/// name, namespace, uid, resourceVersion, labels, deletionTimestamp,
/// Margay's own annotation, the node, hostNetwork, each container's name
/// and ports, the phase and the addresses (what policy, IPAM and the
/// endpoint checks read). A full Pod as kube decodes it is ~25 KB of
/// memory, all of it held for every pod of the cluster (docs/scale.md).
pub fn trim_pod(p: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    let m = &mut p.metadata;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == ANN_IP_ADDRS);
    }
    if m.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        m.annotations = None;
    }
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    m.creation_timestamp = None;
    if let Some(spec) = p.spec.take() {
        p.spec = Some(PodSpec {
            node_name: spec.node_name,
            host_network: spec.host_network,
            containers: spec
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        });
    }
    if let Some(st) = p.status.take() {
        p.status = Some(PodStatus {
            phase: st.phase,
            pod_ip: st.pod_ip,
            pod_ips: st.pod_ips,
            ..PodStatus::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trimmed_policy_keeps_all_but_managed_fields_and_kubectls_copy() {
        let mut np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "3",
                "labels": {"team": "a"},
                "annotations": {LAST_APPLIED: "{\"big\": \"copy\"}", "note": "kept"},
                "managedFields": [{"manager": "kubectl", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}
        }))
        .expect("policy");
        let spec = np.spec.clone();
        np.trim();
        assert_eq!(np.metadata.managed_fields, None);
        let ann = np.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(ann.len(), 1);
        assert_eq!(ann.get("note").map(String::as_str), Some("kept"));
        assert_eq!(np.spec, spec);
        assert_eq!(np.metadata.resource_version.as_deref(), Some("3"));
        assert!(np.metadata.labels.is_some());
        let mut ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ns", "labels": {"k": "v"},
                "annotations": {LAST_APPLIED: "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]}
        }))
        .expect("namespace");
        ns.trim();
        assert_eq!(ns.metadata.managed_fields, None);
        assert_eq!(ns.metadata.annotations, None);
        assert!(ns.metadata.labels.is_some());
    }

    #[test]
    fn a_trimmed_pod_keeps_what_the_agent_reads() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"}, "deletionTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {ANN_IP_ADDRS: "[\"198.19.0.5\"]", "big": "x"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u2"}]},
            "spec": {"nodeName": "n1", "hostNetwork": false, "serviceAccountName": "default",
                "containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": "198.19.0.5", "podIPs": [{"ip": "198.19.0.5"}],
                "hostIP": "198.18.0.11", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("pod");
        let mut t = pod.clone();
        trim_pod(&mut t);
        assert_eq!(
            policy::PodInfo::from_k8s(&t).expect("trimmed"),
            policy::PodInfo::from_k8s(&pod).expect("full")
        );
        assert_eq!(requested_by_annotation(&t), requested_by_annotation(&pod));
        assert_eq!(
            crate::k8s::ipam::gc::live_pod(&t).map(|l| (l.namespace, l.name, l.node)),
            crate::k8s::ipam::gc::live_pod(&pod).map(|l| (l.namespace, l.name, l.node))
        );
        assert!(t.metadata.deletion_timestamp.is_some());
        assert_eq!(t.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(t.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
        assert!(t.metadata.owner_references.is_none());
        let spec = t.spec.as_ref().expect("spec");
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(t.status.as_ref().and_then(|s| s.host_ip.clone()), None);
    }

    /// A kubelet's status report changes nothing the trimmed Node keeps:
    /// no generation moves for it. A label, an annotation of Margay's or
    /// an address does.
    #[test]
    fn a_nodes_heartbeat_is_unchanged_once_trimmed() {
        let node = |rv: &str, beat: &str, zone: &str, addr: &str| {
            let mut n: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n2", "resourceVersion": rv, "labels": {"zone": zone},
                    "managedFields": [{"manager": "kubelet", "operation": "Update", "time": beat}]},
                "status": {"addresses": [{"type": "InternalIP", "address": addr}],
                    "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": beat}]}
            }))
            .expect("node");
            n.trim();
            n
        };
        let old = node("1", "2026-12-05T10:00:00Z", "a", "198.18.0.12");
        assert!(node("2", "2026-12-05T10:05:00Z", "a", "198.18.0.12").unchanged(&old));
        assert!(!node("2", "2026-12-05T10:05:00Z", "b", "198.18.0.12").unchanged(&old));
        assert!(!node("2", "2026-12-05T10:05:00Z", "a", "198.18.0.13").unchanged(&old));
        let mut annotated = node("2", "2026-12-05T10:05:00Z", "a", "198.18.0.12");
        annotated.metadata.annotations = Some(
            [(
                crate::k8s::node::annotations::ANN_IPV4.to_string(),
                "198.18.0.12/24".to_string(),
            )]
            .into(),
        );
        assert!(!annotated.unchanged(&old));
    }

    #[test]
    fn a_trimmed_node_keeps_what_the_agent_reads() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2", "labels": {"zone": "a"},
                "annotations": {crate::k8s::node::annotations::ANN_IPV4: "198.18.0.12/24",
                    crate::k8s::node::annotations::ANN_RR_CLUSTER_ID: "198.18.0.1",
                    crate::k8s::node::annotations::ANN_TUNNEL_MAC_V4: "02:00:00:00:00:01",
                    "node.alpha.kubernetes.io/ttl": "0",
                    "csi.volume.kubernetes.io/nodeid": "{\"ebs.csi.aws.com\":\"i-0123\"}"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.12"},
                                     {"type": "InternalIP", "address": "2001:db8::12"}],
                "images": [{"names": ["registry.example.com/a:1"], "sizeBytes": 1}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "c",
                    "kernelVersion": "k", "kubeProxyVersion": "", "kubeletVersion": "v",
                    "machineID": "m", "operatingSystem": "linux", "osImage": "o", "systemUUID": "s"}}
        }))
        .expect("node");
        let mut t = node.clone();
        trim_node(&mut t);
        assert_eq!(
            crate::k8s::node::annotations::node_facts(&t),
            crate::k8s::node::annotations::node_facts(&node)
        );
        assert_eq!(
            crate::k8s::node::internal_ips(Some(&t)),
            crate::k8s::node::internal_ips(Some(&node))
        );
        assert_eq!(
            policy::NodeInfo::from_k8s(&t).expect("trimmed"),
            policy::NodeInfo::from_k8s(&node).expect("full")
        );
        assert_eq!(t.metadata.labels, node.metadata.labels);
        assert_eq!(t.spec, node.spec);
        let st = t.status.as_ref().expect("status");
        assert!(st.images.is_none() && st.conditions.is_none() && st.node_info.is_none());
        assert!(t.metadata.managed_fields.is_none());
        let ann = t.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(ann.len(), 3, "Margay's three kept: {ann:?}");
        assert!(ann.keys().all(|k| k.starts_with(MARGAY_PREFIX)));
    }
}
