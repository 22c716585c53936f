//! `HostEndpoint` and `HostNetworkPolicy`: host protection (the node's own
//! interfaces; see `policy::host` for the semantics and the failsafe ports
//! no policy can close). The specs are the policy crate's types, wrapped.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of a `HostEndpoint`.
#[derive(
    CustomResource, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "crd.margay.dev",
    version = "v1",
    kind = "HostEndpoint",
    plural = "hostendpoints",
    doc = "One interface (or every interface, `*`) of one node that HostNetworkPolicies can protect; labels select it.",
    shortname = "hep",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(
        name = "Interface",
        type_ = "string",
        json_path = ".spec.interfaceName"
    )
)]
#[allow(clippy::duplicated_attributes)]
pub struct HostEndpointCrdSpec {
    #[serde(flatten)]
    pub spec: policy::host::HostEndpointSpec,
}

/// Spec of a `HostNetworkPolicy`.
#[derive(CustomResource, Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "crd.margay.dev",
    version = "v1",
    kind = "HostNetworkPolicy",
    plural = "hostnetworkpolicies",
    doc = "What may reach and leave the host endpoints it selects (allow rules, like a NetworkPolicy); failsafe ports stay open.",
    shortname = "hnp"
)]
pub struct HostNetworkPolicyCrdSpec {
    #[serde(flatten)]
    pub spec: policy::host::HostNetworkPolicySpec,
}

impl HostEndpoint {
    /// The policy crate's view of it.
    pub fn to_model(&self) -> policy::host::HostEndpoint {
        policy::host::HostEndpoint {
            name: self.metadata.name.clone().unwrap_or_default(),
            labels: self.metadata.labels.clone().unwrap_or_default(),
            spec: self.spec.spec.clone(),
        }
    }
}

impl HostNetworkPolicy {
    /// The policy crate's view of it.
    pub fn to_model(&self) -> policy::host::HostPolicy {
        policy::host::HostPolicy {
            name: self.metadata.name.clone().unwrap_or_default(),
            spec: self.spec.spec.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_read_into_the_policy_model() {
        let hep: HostEndpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.margay.dev/v1", "kind": "HostEndpoint",
            "metadata": {"name": "n1-eth0", "labels": {"role": "worker"}},
            "spec": {"node": "n1", "interfaceName": "eth0", "expectedIPs": ["198.18.0.1"]}
        }))
        .expect("HostEndpoint");
        let m = hep.to_model();
        assert_eq!((m.name.as_str(), m.spec.node.as_str()), ("n1-eth0", "n1"));
        assert_eq!(m.spec.expected_ips, vec!["198.18.0.1".to_string()]);
        let hnp: HostNetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.margay.dev/v1", "kind": "HostNetworkPolicy",
            "metadata": {"name": "ssh-only"},
            "spec": {"hostEndpointSelector": {"matchLabels": {"role": "worker"}},
                     "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/16"}}],
                                  "ports": [{"protocol": "TCP", "port": 8080}]}],
                     "applyOnForward": true}
        }))
        .expect("HostNetworkPolicy");
        assert_eq!(hnp.to_model().spec.ingress.len(), 1);
        assert!(hnp.to_model().spec.apply_on_forward);
    }
}
