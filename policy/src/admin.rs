//! AdminNetworkPolicy and BaselineAdminNetworkPolicy
//! (`policy.networking.k8s.io/v1alpha1`, SIG-Network's network-policy-api),
//! as typed serde structs: the input of [`crate::compile::admin`] and of
//! the oracle in [`crate::spec_eval`].
//!
//! Strictness: the closed parts of the v1alpha1 schema (spec, subject,
//! rules, ports) refuse unknown fields, so an object from a newer CRD whose
//! meaning we would get wrong is reported and skipped instead of being
//! half-applied. Peers are the exception: the API says an implementation
//! that sees a peer with no known field (a peer type from a newer CRD) must
//! fail closed (an `Allow` rule matches nothing, a `Deny`/`Pass` rule denies
//! everything), so unknown peer fields are kept in [`AdminPeer::unknown`]
//! and the compiler applies that rule.
//!
//! The agent watches these as dynamic objects and converts each with
//! [`AdminNetworkPolicy::from_value`] / [`BaselineAdminNetworkPolicy::from_value`]:
//! a bad object is one error (naming it), never a broken watch. The
//! `k8s_openapi` resource traits are implemented, so `kube::Api` works with
//! these types too (creating objects in tests, for example).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "policy.networking.k8s.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha1";
/// The only name a BaselineAdminNetworkPolicy may have.
pub const BASELINE_NAME: &str = "default";
/// `spec.priority` is in `0..=MAX_PRIORITY`.
pub const MAX_PRIORITY: i32 = 1000;

/// A cluster-scoped, priority-ordered policy evaluated before NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminNetworkPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: AdminNetworkPolicySpec,
    /// Written by implementations; not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminNetworkPolicySpec {
    /// 0..=1000; lower numbers take precedence.
    pub priority: i32,
    pub subject: Subject,
    /// In precedence order (the first matching rule decides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// The cluster's default policy, evaluated after NetworkPolicy (only the
/// object named `default` counts).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaselineAdminNetworkPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: BaselineAdminNetworkPolicySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaselineAdminNetworkPolicySpec {
    pub subject: Subject,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// The pods a policy applies to; exactly one field must be set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods matching `podSelector` in namespaces matching `namespaceSelector`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedPod {
    pub namespace_selector: LabelSelector,
    pub pod_selector: LabelSelector,
}

/// `Allow`, `Deny` or `Pass` (ANP only); anything else is kept as written
/// so the compiler can name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum RuleAction {
    Allow,
    Deny,
    Pass,
    Unknown(String),
}

impl From<String> for RuleAction {
    fn from(s: String) -> Self {
        match s.as_str() {
            "Allow" => RuleAction::Allow,
            "Deny" => RuleAction::Deny,
            "Pass" => RuleAction::Pass,
            _ => RuleAction::Unknown(s),
        }
    }
}

impl From<RuleAction> for String {
    fn from(a: RuleAction) -> String {
        a.to_string()
    }
}

impl fmt::Display for RuleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleAction::Allow => "Allow",
            RuleAction::Deny => "Deny",
            RuleAction::Pass => "Pass",
            RuleAction::Unknown(s) => s,
        })
    }
}

/// An ingress rule: traffic `from` the peers to the subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: RuleAction,
    /// Required, at least one peer (an empty list is invalid).
    #[serde(default)]
    pub from: Vec<AdminPeer>,
    /// `None`: every port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<AdminPort>>,
}

/// An egress rule: traffic from the subject `to` the peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: RuleAction,
    #[serde(default)]
    pub to: Vec<AdminPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<AdminPort>>,
}

/// One peer; exactly one field must be set. Ingress peers may only be
/// `namespaces` or `pods`; `nodes`, `networks` and `domainNames` are egress
/// peers (`domainNames`: ANP `Allow` rules only).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminPeer {
    /// Every pod of the matching namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// The addresses (`status.addresses`) of the matching nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (any address, pod addresses included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
    /// Fields this version does not know (a peer type of a newer CRD).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// One port; exactly one field must be set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<PortNumber>,
    /// A container port name on the destination pod (any protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortNumber {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub port: i32,
}

/// `start..=end` (inclusive).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub start: i32,
    pub end: i32,
}

/// An object that could not be read as its type.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {}: {source}", shown(.name))]
pub struct ParseError {
    pub kind: &'static str,
    /// `metadata.name` when the object has one.
    pub name: Option<String>,
    #[source]
    pub source: serde_json::Error,
}

fn shown(name: &Option<String>) -> String {
    match name {
        Some(n) => format!("{n:?}"),
        None => "(without a name)".to_string(),
    }
}

fn name_of(v: &serde_json::Value) -> Option<String> {
    v.get("metadata")?.get("name")?.as_str().map(str::to_string)
}

/// The Kubernetes resource traits (`Resource`, `ListableResource`,
/// `Metadata`) of a cluster-scoped type of this API group and version with
/// an `ObjectMeta` field `metadata`: the typed objects here and the agent's
/// lenient watch types use the same.
#[macro_export]
macro_rules! admin_policy_resource {
    ($t:ty, $kind:literal, $plural:literal) => {
        impl ::k8s_openapi::Resource for $t {
            const API_VERSION: &'static str = $crate::admin::API_VERSION;
            const GROUP: &'static str = $crate::admin::GROUP;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = $crate::admin::VERSION;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = ::k8s_openapi::ClusterResourceScope;
        }

        impl ::k8s_openapi::ListableResource for $t {
            const LIST_KIND: &'static str = concat!($kind, "List");
        }

        impl ::k8s_openapi::Metadata for $t {
            type Ty = ::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

            fn metadata(&self) -> &Self::Ty {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut Self::Ty {
                &mut self.metadata
            }
        }
    };
}

/// The Kubernetes resource traits of an admin policy type, and its
/// constructor, reader and name.
macro_rules! resource {
    ($t:ident, $spec:ty, $kind:literal, $plural:literal) => {
        impl $t {
            /// An object with `apiVersion`/`kind` set.
            pub fn new(name: &str, spec: $spec) -> Self {
                $t {
                    api_version: Some(API_VERSION.to_string()),
                    kind: Some($kind.to_string()),
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        ..ObjectMeta::default()
                    },
                    spec,
                    status: None,
                }
            }

            /// Reads one object (e.g. a watched dynamic object's JSON).
            pub fn from_value(v: serde_json::Value) -> Result<Self, ParseError> {
                let name = name_of(&v);
                serde_json::from_value(v).map_err(|source| ParseError {
                    kind: $kind,
                    name,
                    source,
                })
            }

            pub fn name(&self) -> Option<&str> {
                self.metadata.name.as_deref()
            }
        }

        $crate::admin_policy_resource!($t, $kind, $plural);
    };
}

resource!(
    AdminNetworkPolicy,
    AdminNetworkPolicySpec,
    "AdminNetworkPolicy",
    "adminnetworkpolicies"
);
resource!(
    BaselineAdminNetworkPolicy,
    BaselineAdminNetworkPolicySpec,
    "BaselineAdminNetworkPolicy",
    "baselineadminnetworkpolicies"
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_an_upstream_shaped_object() {
        let anp = AdminNetworkPolicy::from_value(json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha1",
            "kind": "AdminNetworkPolicy",
            "metadata": {"name": "gress-rules", "resourceVersion": "7"},
            "spec": {
                "priority": 15,
                "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
                "egress": [{
                    "name": "to-b",
                    "action": "Pass",
                    "to": [{"networks": ["198.19.0.0/16"]}, {"nodes": {}}],
                    "ports": [
                        {"portNumber": {"port": 80}},
                        {"portRange": {"protocol": "UDP", "start": 53, "end": 54}},
                        {"namedPort": "web"}
                    ]
                }],
                "ingress": [{"action": "Deny", "from": [{"pods": {
                    "namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "x"}}
                }}]}]
            },
            "status": {"conditions": []}
        }))
        .unwrap();
        assert_eq!(anp.name(), Some("gress-rules"));
        assert_eq!(anp.spec.priority, 15);
        let e = &anp.spec.egress[0];
        assert_eq!(e.action, RuleAction::Pass);
        assert_eq!(
            e.to[0].networks.as_deref(),
            Some(&["198.19.0.0/16".into()][..])
        );
        assert!(e.to[1].nodes.is_some());
        let ports = e.ports.as_ref().unwrap();
        assert_eq!(ports[0].port_number.as_ref().unwrap().protocol, None);
        assert_eq!(ports[1].port_range.as_ref().unwrap().end, 54);
        assert_eq!(ports[2].named_port.as_deref(), Some("web"));
        assert_eq!(anp.spec.ingress[0].action, RuleAction::Deny);
        // Round trip.
        let back = AdminNetworkPolicy::from_value(serde_json::to_value(&anp).unwrap()).unwrap();
        assert_eq!(back, anp);
    }

    #[test]
    fn unknown_fields_in_closed_parts_are_errors_that_name_the_object() {
        let err = AdminNetworkPolicy::from_value(json!({
            "metadata": {"name": "bad"},
            "spec": {"priority": 1, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Allow", "from": [{"namespaces": {}}], "extra": 1}]}
        }))
        .unwrap_err();
        assert_eq!(err.name.as_deref(), Some("bad"));
        let text = err.to_string();
        assert!(text.contains("AdminNetworkPolicy \"bad\""), "{text}");
        assert!(text.contains("extra"), "{text}");
        let err = BaselineAdminNetworkPolicy::from_value(json!({
            "metadata": {"name": "default"},
            "spec": {"subject": {"namespaces": {}, "nodes": {}}}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("nodes"), "{err}");
        assert!(
            AdminNetworkPolicy::from_value(
                json!({"metadata": {"name": "x"}, "spec": {"subject": {}}})
            )
            .is_err(),
            "priority is required"
        );
    }

    #[test]
    fn unknown_peer_fields_and_actions_are_kept_for_the_compiler() {
        let anp = AdminNetworkPolicy::from_value(json!({
            "metadata": {"name": "new"},
            "spec": {"priority": 1, "subject": {"namespaces": {}},
                     "egress": [{"action": "Redirect", "to": [{"services": {"name": "x"}}]}]}
        }))
        .unwrap();
        let r = &anp.spec.egress[0];
        assert_eq!(r.action, RuleAction::Unknown("Redirect".into()));
        assert!(r.to[0].unknown.contains_key("services"));
        assert_eq!(
            serde_json::to_value(&r.action).unwrap(),
            json!("Redirect"),
            "written back as read"
        );
    }

    #[test]
    fn resource_traits_name_the_api() {
        use k8s_openapi::{ListableResource, Resource};
        assert_eq!(AdminNetworkPolicy::URL_PATH_SEGMENT, "adminnetworkpolicies");
        assert_eq!(
            BaselineAdminNetworkPolicy::LIST_KIND,
            "BaselineAdminNetworkPolicyList"
        );
        let b = BaselineAdminNetworkPolicy::new("default", Default::default());
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["apiVersion"], json!(API_VERSION));
        assert_eq!(v["kind"], json!("BaselineAdminNetworkPolicy"));
    }
}
