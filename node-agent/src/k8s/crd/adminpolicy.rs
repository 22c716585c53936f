//! AdminNetworkPolicy and BaselineAdminNetworkPolicy objects as the agent
//! watches them: metadata plus the rest kept as JSON, so that one object the
//! policy crate cannot read is reported and skipped instead of breaking the
//! whole watch (a typed watch fails on the first bad object). The policy
//! crate's typed API (`policy::admin`) reads each one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `policy.networking.k8s.io`, SIG-Network's policy API group.
pub const ADMIN_POLICY_GROUP: &str = policy::admin::GROUP;
/// The version Margay implements.
pub const ADMIN_POLICY_VERSION: &str = policy::admin::VERSION;

macro_rules! raw_admin_policy {
    ($t:ident, $kind:literal, $plural:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct $t {
            /// Object metadata.
            #[serde(default)]
            pub metadata: ObjectMeta,
            /// Everything else (`spec`, `status`), as sent.
            #[serde(flatten)]
            pub rest: Map<String, Value>,
        }

        policy::admin_policy_resource!($t, $kind, $plural);

        impl $t {
            /// The whole object as JSON, for `policy::admin`'s `from_value`.
            pub fn to_value(&self) -> Value {
                let mut m = self.rest.clone();
                m.remove("apiVersion");
                m.remove("kind");
                m.insert(
                    "metadata".into(),
                    serde_json::to_value(&self.metadata).unwrap_or(Value::Null),
                );
                Value::Object(m)
            }
        }
    };
}

raw_admin_policy!(
    RawAdminNetworkPolicy,
    "AdminNetworkPolicy",
    "adminnetworkpolicies",
    "An AdminNetworkPolicy as watched (see the module doc)."
);
raw_admin_policy!(
    RawBaselineAdminNetworkPolicy,
    "BaselineAdminNetworkPolicy",
    "baselineadminnetworkpolicies",
    "A BaselineAdminNetworkPolicy as watched (see the module doc)."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_object_is_watched_and_the_policy_crate_reads_or_refuses_it() {
        let good = serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
            "metadata": {"name": "a", "resourceVersion": "7"},
            "spec": {"priority": 10, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
        });
        let raw: RawAdminNetworkPolicy = serde_json::from_value(good).expect("raw");
        assert_eq!(raw.metadata.name.as_deref(), Some("a"));
        let anp = policy::admin::AdminNetworkPolicy::from_value(raw.to_value()).expect("typed");
        assert_eq!(anp.spec.priority, 10);
        // A field the API does not have: still watched, refused by name.
        let bad = serde_json::json!({
            "metadata": {"name": "b"}, "spec": {"priority": 1, "subjekt": {}}
        });
        let raw: RawAdminNetworkPolicy = serde_json::from_value(bad).expect("raw");
        let err = policy::admin::AdminNetworkPolicy::from_value(raw.to_value())
            .expect_err("unknown field");
        assert!(err.to_string().contains('b'), "{err}");
    }
}
