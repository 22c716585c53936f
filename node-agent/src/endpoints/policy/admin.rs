//! AdminNetworkPolicies, the BaselineAdminNetworkPolicy and Nodes into the
//! policy engine: objects compared by resourceVersion, read with the policy
//! crate's typed API; an object it cannot read is reported (and what it
//! held before is removed: a policy Margay cannot read is not enforced
//! half-way).

use std::collections::BTreeMap;

use policy::Engine;
use policy::admin::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use policy::model::NodeInfo;

use crate::k8s::cluster::Cluster;

/// What was last passed on.
#[derive(Debug, Default)]
pub(super) struct Seen {
    admin: BTreeMap<String, String>,
    baseline: BTreeMap<String, String>,
    nodes: BTreeMap<String, String>,
    /// Objects that could not be read: name → why.
    unreadable: BTreeMap<String, String>,
}

fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.resource_version.clone().unwrap_or_default()
}

impl Seen {
    /// Passes changed objects on to `engine`.
    /// `moved`: whether AdminNetworkPolicy, BaselineAdminNetworkPolicy
    /// and Node events came since the last call (each kind is read only
    /// then).
    pub(super) fn update(&mut self, engine: &mut Engine, cluster: &Cluster, moved: [bool; 3]) {
        let [admin_moved, baseline_moved, nodes_moved] = moved;
        if admin_moved {
            self.update_admin(engine, cluster);
        }
        if baseline_moved {
            self.update_baseline(engine, cluster);
        }
        if nodes_moved {
            self.update_nodes(engine, cluster);
        }
    }

    fn update_admin(&mut self, engine: &mut Engine, cluster: &Cluster) {
        let mut seen = BTreeMap::new();
        for o in cluster.admin_policies.state() {
            let Some(name) = o.metadata.name.clone() else {
                continue;
            };
            let v = rv(&o.metadata);
            if self.admin.get(&name) != Some(&v) {
                match AdminNetworkPolicy::from_value(o.to_value()) {
                    Ok(anp) => {
                        self.unreadable.remove(&format!("anp/{name}"));
                        engine.upsert_admin_policy(name.clone(), anp);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "AdminNetworkPolicy not enforced");
                        self.unreadable.insert(format!("anp/{name}"), e.to_string());
                        engine.remove_admin_policy(&name);
                    }
                }
            }
            seen.insert(name, v);
        }
        for name in self.admin.keys() {
            if !seen.contains_key(name) {
                engine.remove_admin_policy(name);
                self.unreadable.remove(&format!("anp/{name}"));
            }
        }
        self.admin = seen;
    }

    fn update_baseline(&mut self, engine: &mut Engine, cluster: &Cluster) {
        let mut seen = BTreeMap::new();
        for o in cluster.baseline_policies.state() {
            let Some(name) = o.metadata.name.clone() else {
                continue;
            };
            let v = rv(&o.metadata);
            if self.baseline.get(&name) != Some(&v) {
                match BaselineAdminNetworkPolicy::from_value(o.to_value()) {
                    Ok(banp) => {
                        self.unreadable.remove(&format!("banp/{name}"));
                        engine.upsert_baseline_policy(name.clone(), banp);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "BaselineAdminNetworkPolicy not enforced");
                        self.unreadable
                            .insert(format!("banp/{name}"), e.to_string());
                        engine.remove_baseline_policy(&name);
                    }
                }
            }
            seen.insert(name, v);
        }
        for name in self.baseline.keys() {
            if !seen.contains_key(name) {
                engine.remove_baseline_policy(name);
                self.unreadable.remove(&format!("banp/{name}"));
            }
        }
        self.baseline = seen;
    }

    fn update_nodes(&mut self, engine: &mut Engine, cluster: &Cluster) {
        let mut seen = BTreeMap::new();
        for n in cluster.nodes.state() {
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            let v = rv(&n.metadata);
            if self.nodes.get(&name) != Some(&v) {
                match NodeInfo::from_k8s(&n) {
                    Ok(info) => engine.upsert_node(info),
                    Err(e) => tracing::warn!(error = %e, node = %name, "node ignored by policy"),
                }
            }
            seen.insert(name, v);
        }
        for name in self.nodes.keys() {
            if !seen.contains_key(name) {
                engine.remove_node(name);
            }
        }
        self.nodes = seen;
    }

    /// Why objects are not enforced, one line each.
    pub(super) fn unreadable(&self) -> impl Iterator<Item = String> + '_ {
        self.unreadable
            .iter()
            .map(|(name, why)| format!("{name} not enforced: {why}"))
    }
}
