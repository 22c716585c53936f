//! The engine's inputs for AdminNetworkPolicy, BaselineAdminNetworkPolicy
//! and Nodes (what ANP `nodes` peers select).

use std::collections::BTreeSet;

use crate::admin::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use crate::compile::admin::AdminPolicyError;
use crate::engine::Engine;
use crate::model::NodeInfo;
use crate::plan::PlanIssue;
use crate::ruleset::{Elem, node_elems};

impl Engine {
    /// Adds or changes an AdminNetworkPolicy (`name` = `metadata.name`). An
    /// invalid object or rule is reported in [`Engine::issues`] (see
    /// [`crate::compile::admin`] for what fails closed).
    pub fn upsert_admin_policy(&mut self, name: String, anp: AdminNetworkPolicy) {
        if self.state.admin_policies.get(&name) == Some(&anp) {
            return;
        }
        let errs = self.policies.upsert_admin(&name, &anp).to_vec();
        self.set_admin_issues("anp", &name, errs);
        self.state.admin_policies.insert(name, anp);
        self.dirty_all();
    }

    pub fn remove_admin_policy(&mut self, name: &str) {
        if self.state.admin_policies.remove(name).is_some() {
            self.policies.remove_admin(name);
            self.set_admin_issues("anp", name, Vec::new());
            self.dirty_all();
        }
    }

    /// Adds or changes a BaselineAdminNetworkPolicy (only `default` applies;
    /// another name is reported).
    pub fn upsert_baseline_policy(&mut self, name: String, banp: BaselineAdminNetworkPolicy) {
        if self.state.baseline_policies.get(&name) == Some(&banp) {
            return;
        }
        let errs = self.policies.upsert_baseline(&name, &banp).to_vec();
        self.set_admin_issues("banp", &name, errs);
        self.state.baseline_policies.insert(name, banp);
        self.dirty_all();
    }

    pub fn remove_baseline_policy(&mut self, name: &str) {
        if self.state.baseline_policies.remove(name).is_some() {
            self.policies.remove_baseline(name);
            self.set_admin_issues("banp", name, Vec::new());
            self.dirty_all();
        }
    }

    /// Adds or changes a Node: only the node-address sets' elements change.
    pub fn upsert_node(&mut self, node: NodeInfo) {
        if self.state.nodes.get(&node.name) == Some(&node) {
            return;
        }
        self.state.nodes.insert(node.name.clone(), node);
        self.refresh_node_sets();
    }

    pub fn remove_node(&mut self, name: &str) {
        if self.state.nodes.remove(name).is_some() {
            self.refresh_node_sets();
        }
    }

    /// Recomputes every node-address set (nodes are few; sets fewer).
    fn refresh_node_sets(&mut self) {
        let mut updates: Vec<(String, Elem, bool)> = Vec::new();
        for (name, (sel, fam)) in &self.node_sets {
            let want = node_elems(&self.state, sel, *fam);
            let have: BTreeSet<Elem> = self
                .rs
                .sets
                .get(name)
                .map(|s| s.elems.clone())
                .unwrap_or_default();
            for e in want.difference(&have) {
                updates.push((name.clone(), e.clone(), true));
            }
            for e in have.difference(&want) {
                updates.push((name.clone(), e.clone(), false));
            }
        }
        for (set, e, present) in updates {
            self.elem(&set, e, present);
        }
    }

    fn set_admin_issues(&mut self, kind: &str, name: &str, errs: Vec<AdminPolicyError>) {
        let prefix = format!("{kind} {name}#");
        self.issues.retain(|k, _| !k.starts_with(&prefix));
        for (i, e) in errs.into_iter().enumerate() {
            self.issues
                .insert(format!("{prefix}{i}"), PlanIssue::Admin(e));
        }
    }

    fn dirty_all(&mut self) {
        let keys: Vec<_> = self.node.endpoints.keys().cloned().collect();
        self.dirty.extend(keys);
    }
}

#[cfg(test)]
mod tests;
