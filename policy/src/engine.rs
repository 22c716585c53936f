//! The incremental policy engine: owns the cluster view and the desired
//! ruleset of one node, applies watch events to them in place, and hands the
//! sink one minimal transaction per [`Engine::commit`].
//!
//! ```text
//!  watchers (agent) ──upsert_pod / upsert_namespace / upsert_policy / …──► Engine
//!  CNI EndpointUp/Down ──upsert_endpoint / remove_endpoint──────────────► Engine
//!  Engine::commit(&mut sink) ──one nftables batch──► NftSink (nft -j -f -)
//! ```
//!
//! * A pod or namespace change re-evaluates only the addresses involved
//!   against the existing selector / named-port sets: element adds/deletes.
//! * A policy change re-plans the local endpoints of its namespace; an
//!   AdminNetworkPolicy / BaselineAdminNetworkPolicy change re-plans every
//!   local endpoint (they are cluster-scoped); with any of those present, a
//!   namespace label change re-plans that namespace's endpoints (subjects
//!   select by namespace labels); a node change updates the node-address
//!   sets' elements only; a local pod change re-plans that endpoint. A re-planned endpoint's element in
//!   the dispatch verdict maps points at a (possibly new, content-addressed)
//!   policy chain: a map element change, no rule rewritten.
//! * Policy chains and sets are reference counted (a tier chain's `goto`
//!   counts for its target) and deleted at commit when nothing uses them
//!   any more.
//! * The first commit, and any commit after the sink failed, is a full
//!   atomic rebuild of the table.
//!
//! The result always equals the from-scratch pipeline
//! (`plan::build` + `Ruleset::build`); the tests check it.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::addr::Family;
use crate::compile::{Direction, PodPeer, PolicyError, PreparedPolicy};
use crate::model::{
    ClusterState, LocalEndpoint, NamespaceInfo, NodeContext, PodInfo, PodKey, PolicyKey, Protocol,
};
use crate::nft::{Changes, DiffStats, emit};
use crate::plan::{
    PlanIssue, Policies, check_iface, is_member, members, namespace_labels, peer_selects,
    plan_endpoint,
};
use crate::ruleset::{
    BuildCx, ComboKey, Elem, Match, NODE, NamedKey, RuleIr, Ruleset, SPOOF, Verdict,
    combo_elems_of_pod,
};
use crate::selector::Selector;

mod admin;
use crate::sink::NftSink;

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// The whole table was rebuilt (first commit, or recovery).
    pub full: bool,
    pub diff: DiffStats,
    /// Nothing to do: no batch was sent.
    pub noop: bool,
}

/// A commit that did not reach the kernel.
#[derive(Debug, thiserror::Error)]
pub enum EngineError<E: std::error::Error + Send + Sync + 'static> {
    #[error("applying the incremental batch failed, and so did the full rebuild")]
    Apply {
        #[source]
        source: E,
    },
}

/// The member pods of one address: nearly always one, held in place (a
/// `Vec` of one was an allocation per address, ~7 MB at 150k pods; a
/// set's first node ~0.5 KB; docs/scale.md).
#[derive(Debug)]
enum Holders {
    One(PodKey),
    /// Sorted, two or more (an address being reused).
    Many(Vec<PodKey>),
}

impl Holders {
    fn keys(&self) -> &[PodKey] {
        match self {
            Holders::One(k) => std::slice::from_ref(k),
            Holders::Many(ks) => ks,
        }
    }

    fn add(&mut self, key: &PodKey) {
        match self {
            Holders::One(k) if k == key => {}
            Holders::One(k) => {
                let mut ks = vec![k.clone(), key.clone()];
                ks.sort();
                *self = Holders::Many(ks);
            }
            Holders::Many(ks) => {
                if let Err(at) = ks.binary_search(key) {
                    ks.insert(at, key.clone());
                }
            }
        }
    }

    /// Removes `key`; whether none are left.
    fn remove(&mut self, key: &PodKey) -> bool {
        match self {
            Holders::One(k) => k == key,
            Holders::Many(ks) => {
                // Two or more before: one at least after.
                ks.retain(|k| k != key);
                if let [k] = ks.as_slice() {
                    *self = Holders::One(k.clone());
                }
                false
            }
        }
    }
}

/// The incremental engine of one node.
#[derive(Debug)]
pub struct Engine {
    state: ClusterState,
    node: NodeContext,
    policies: Policies,
    /// NetworkPolicies handed in compiled ([`Engine::upsert_prepared`]: the
    /// agent keeps no objects); those handed in as objects are in
    /// `state.policies`. A key is in one of the two at most.
    prepared: HashMap<PolicyKey, PreparedPolicy>,
    /// Member pods by address (several while an address is being reused).
    by_ip: HashMap<IpAddr, Holders>,
    rs: Ruleset,
    sel_sets: BTreeMap<String, (Vec<PodPeer>, Family)>,
    named_sets: BTreeMap<String, NamedKey>,
    /// Sets of merged rules on ports of their own (`ruleset::combo`).
    combo_sets: BTreeMap<String, ComboKey>,
    /// Node-address sets (ANP `nodes` peers).
    node_sets: BTreeMap<String, (Selector, Family)>,
    /// Policy chain → number of endpoint chains that go to it.
    chain_refs: HashMap<String, usize>,
    /// Set → number of policy chains that use it (fixed sets not counted).
    set_refs: HashMap<String, usize>,
    dirty: BTreeSet<PodKey>,
    changes: Changes,
    needs_full: bool,
    issues: BTreeMap<String, PlanIssue>,
}

impl Engine {
    /// An engine for `node` with an empty cluster. The first commit rebuilds
    /// the whole table (start-up reconcile: one atomic transaction).
    pub fn new(node: NodeContext) -> Engine {
        let mut e = Engine {
            state: ClusterState::default(),
            rs: {
                let mut rs = Ruleset::empty(&node.iface_prefix);
                rs.set_deny_log(node.deny_log);
                rs
            },
            node: NodeContext {
                endpoints: BTreeMap::new(),
                node_addrs: Vec::new(),
                nat: Default::default(),
                ..node.clone()
            },
            policies: Policies::default(),
            prepared: HashMap::new(),
            by_ip: HashMap::new(),
            sel_sets: BTreeMap::new(),
            named_sets: BTreeMap::new(),
            combo_sets: BTreeMap::new(),
            node_sets: BTreeMap::new(),
            chain_refs: HashMap::new(),
            set_refs: HashMap::new(),
            dirty: BTreeSet::new(),
            changes: Changes::default(),
            needs_full: true,
            issues: BTreeMap::new(),
        };
        e.set_node_addrs(node.node_addrs.clone());
        e.set_nat(node.nat.clone());
        for ep in node.endpoints.into_values() {
            e.upsert_endpoint(ep);
        }
        e
    }

    /// Loads a whole cluster state (start-up, or resync after a watch error).
    pub fn load(&mut self, state: ClusterState) {
        let old: Vec<PodKey> = self.state.pods.keys().cloned().collect();
        for k in old {
            if !state.pods.contains_key(&k) {
                self.remove_pod(&k);
            }
        }
        let old: Vec<String> = self.state.namespaces.keys().cloned().collect();
        for n in old {
            if !state.namespaces.contains_key(&n) {
                self.remove_namespace(&n);
            }
        }
        let old: Vec<PolicyKey> = (self.state.policies.keys())
            .chain(self.prepared.keys())
            .cloned()
            .collect();
        for k in old {
            if !state.policies.contains_key(&k) {
                self.remove_policy(&k);
            }
        }
        let old: Vec<String> = self.state.nodes.keys().cloned().collect();
        for n in old {
            if !state.nodes.contains_key(&n) {
                self.remove_node(&n);
            }
        }
        let old: Vec<String> = self.state.admin_policies.keys().cloned().collect();
        for n in old {
            if !state.admin_policies.contains_key(&n) {
                self.remove_admin_policy(&n);
            }
        }
        let old: Vec<String> = self.state.baseline_policies.keys().cloned().collect();
        for n in old {
            if !state.baseline_policies.contains_key(&n) {
                self.remove_baseline_policy(&n);
            }
        }
        for ns in state.namespaces.into_values() {
            self.upsert_namespace(ns);
        }
        for node in state.nodes.into_values() {
            self.upsert_node(node);
        }
        for (key, np) in state.policies {
            self.upsert_policy(key, np);
        }
        for (name, anp) in state.admin_policies {
            self.upsert_admin_policy(name, anp);
        }
        for (name, banp) in state.baseline_policies {
            self.upsert_baseline_policy(name, banp);
        }
        for pod in state.pods.into_values() {
            self.upsert_pod(pod);
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// The desired ruleset (what the kernel has after a successful commit).
    pub fn ruleset(&self) -> &Ruleset {
        &self.rs
    }

    /// Current problems in the input (invalid policies, bad interfaces).
    pub fn issues(&self) -> impl Iterator<Item = &PlanIssue> {
        self.issues.values()
    }

    /// Forces the next commit to rebuild the whole table.
    pub fn force_full(&mut self) {
        self.needs_full = true;
    }

    // ---- inputs -------------------------------------------------------

    /// Adds or replaces a pod. Pass an `Arc` the caller keeps (the agent's
    /// PodEndpoint cache does) and the engine holds that one, not a copy.
    pub fn upsert_pod(&mut self, pod: impl Into<Arc<PodInfo>>) {
        let pod = pod.into();
        let key = pod.key.clone();
        if let Some(old) = self.state.pods.get_mut(&key)
            && (Arc::ptr_eq(old, &pod) || **old == *pod)
        {
            // The same pod: nothing changes but which copy is held (the
            // caller's, which it keeps: one copy between them).
            *old = pod;
            return;
        }
        let old = self.state.pods.insert(key.clone(), pod);
        self.pod_changed(&key, old);
    }

    pub fn remove_pod(&mut self, key: &PodKey) {
        if let Some(old) = self.state.pods.remove(key) {
            self.pod_changed(key, Some(old));
        }
    }

    pub fn upsert_namespace(&mut self, ns: NamespaceInfo) {
        if self.state.namespaces.get(&ns.name) == Some(&ns) {
            return;
        }
        let name = ns.name.clone();
        self.state.namespaces.insert(name.clone(), ns);
        self.namespace_changed(&name);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        if self.state.namespaces.remove(name).is_some() {
            self.namespace_changed(name);
        }
    }

    pub fn upsert_policy(
        &mut self,
        key: PolicyKey,
        np: impl Into<Arc<k8s_openapi::api::networking::v1::NetworkPolicy>>,
    ) {
        let np = np.into();
        if self.state.policies.get(&key) == Some(&np) {
            return;
        }
        self.prepared.remove(&key);
        let errs = self.policies.upsert(&key, &np).to_vec();
        self.policy_issues(&key, errs);
        self.state.policies.insert(key.clone(), np);
        self.dirty_namespace(&key.namespace);
    }

    /// As [`Engine::upsert_policy`], for a policy compiled where it arrived
    /// ([`PreparedPolicy::compile`]): the engine keeps the compiled form
    /// only. Handing in the same preparation again changes nothing.
    pub fn upsert_prepared(&mut self, key: PolicyKey, p: PreparedPolicy) {
        if self.prepared.get(&key).is_some_and(|old| old.same(&p)) {
            return;
        }
        self.state.policies.remove(&key);
        let errs = self.policies.upsert_prepared(&key, &p).to_vec();
        self.policy_issues(&key, errs);
        self.prepared.insert(key.clone(), p);
        self.dirty_namespace(&key.namespace);
    }

    /// How many NetworkPolicies the engine holds (valid or not).
    pub fn policy_count(&self) -> usize {
        self.state.policies.len() + self.prepared.len()
    }

    fn policy_issues(&mut self, key: &PolicyKey, errs: Vec<PolicyError>) {
        self.issues
            .retain(|k, _| !k.starts_with(&format!("policy {key}#")));
        for (i, e) in errs.into_iter().enumerate() {
            self.issues
                .insert(format!("policy {key}#{i}"), PlanIssue::Policy(e));
        }
    }

    pub fn remove_policy(&mut self, key: &PolicyKey) {
        let raw = self.state.policies.remove(key).is_some();
        if self.prepared.remove(key).is_some() || raw {
            self.policies.remove(key);
            self.issues
                .retain(|k, _| !k.starts_with(&format!("policy {key}#")));
            self.dirty_namespace(&key.namespace);
        }
    }

    /// Adds or changes a local endpoint (CNI EndpointUp).
    pub fn upsert_endpoint(&mut self, ep: LocalEndpoint) {
        let issue_key = format!("endpoint {}", ep.pod);
        if let Err(reason) = check_iface(&ep.iface, &self.node.iface_prefix) {
            self.remove_endpoint(&ep.pod);
            self.issues.insert(
                issue_key,
                PlanIssue::BadInterface {
                    pod: ep.pod.clone(),
                    iface: ep.iface.clone(),
                    reason,
                },
            );
            return;
        }
        self.issues.remove(&issue_key);
        if self.node.endpoints.get(&ep.pod) == Some(&ep) {
            return;
        }
        if let Some(old) = self.node.endpoints.get(&ep.pod).cloned() {
            if old.iface != ep.iface {
                self.remove_endpoint(&ep.pod);
            } else {
                self.set_spoof(&old, false);
            }
        }
        self.set_spoof(&ep, true);
        self.rs.dispatch.entry(ep.iface.clone()).or_default();
        self.dirty.insert(ep.pod.clone());
        self.node.endpoints.insert(ep.pod.clone(), ep);
    }

    /// Removes a local endpoint (CNI EndpointDown).
    pub fn remove_endpoint(&mut self, pod: &PodKey) {
        self.issues.remove(&format!("endpoint {pod}"));
        let Some(ep) = self.node.endpoints.remove(pod) else {
            return;
        };
        self.dirty.remove(pod);
        self.set_spoof(&ep, false);
        if self.rs.dispatch.contains_key(&ep.iface) {
            for dir in [Direction::Egress, Direction::Ingress] {
                self.set_target(&ep.iface, dir, None);
            }
            self.rs.dispatch.remove(&ep.iface);
        }
    }

    /// The node's own addresses.
    pub fn set_node_addrs(&mut self, addrs: Vec<IpAddr>) {
        let old: BTreeSet<IpAddr> = self.node.node_addrs.iter().copied().collect();
        let new: BTreeSet<IpAddr> = addrs.iter().copied().collect();
        for ip in old.difference(&new) {
            self.elem(
                &format!("{NODE}{}", Family::of(ip).tag()),
                Elem::Addr(*ip),
                false,
            );
        }
        for ip in new.difference(&old) {
            self.elem(
                &format!("{NODE}{}", Family::of(ip).tag()),
                Elem::Addr(*ip),
                true,
            );
        }
        self.node.node_addrs = addrs;
    }

    /// Outgoing NAT: which pools masquerade, and what is never NATed to.
    pub fn set_nat(&mut self, nat: crate::model::NatOutgoing) {
        let old = crate::ruleset::nat_elems(&self.node.nat);
        let new = crate::ruleset::nat_elems(&nat);
        for (set, e) in old.difference(&new) {
            self.elem(set, e.clone(), false);
        }
        for (set, e) in new.difference(&old) {
            self.elem(set, e.clone(), true);
        }
        self.node.nat = nat;
    }

    // ---- commit -------------------------------------------------------

    /// Whether the next [`Engine::commit`] may take long: a full render,
    /// more than a couple of endpoints to plan, or many objects to write.
    /// A caller on an async runtime moves such a commit off its worker
    /// thread, a hand-over that costs more than a light commit (one pod's
    /// endpoint, a few set elements) takes.
    pub fn commit_is_heavy(&self) -> bool {
        const LIGHT_ENDPOINTS: usize = 2;
        const LIGHT_WEIGHT: usize = 512;
        self.needs_full
            || self.dirty.len() > LIGHT_ENDPOINTS
            || self.changes.weight() > LIGHT_WEIGHT
    }

    /// Brings the kernel to the desired state in one transaction. When the
    /// incremental batch fails, rebuilds the table (one more transaction).
    pub fn commit<S: NftSink>(
        &mut self,
        sink: &mut S,
    ) -> Result<CommitStats, EngineError<S::Error>> {
        self.settle();
        if !self.needs_full {
            let (batch, diff) = emit(&self.changes, &self.rs);
            if diff.is_empty() {
                self.changes = Changes::default();
                return Ok(CommitStats {
                    full: false,
                    diff,
                    noop: true,
                });
            }
            match sink.apply(&batch) {
                Ok(()) => {
                    self.changes = Changes::default();
                    return Ok(CommitStats {
                        full: false,
                        diff,
                        noop: false,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "incremental nftables batch failed; rebuilding the table");
                }
            }
        }
        self.changes = Changes::default();
        self.needs_full = true;
        sink.apply_full(&self.rs)
            .map_err(|source| EngineError::Apply { source })?;
        self.needs_full = false;
        Ok(CommitStats {
            full: true,
            diff: DiffStats::default(),
            noop: false,
        })
    }

    /// Re-plans dirty endpoints and drops what nothing uses any more.
    fn settle(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut cx = BuildCx::default();
        for key in dirty {
            let Some(ep) = self.node.endpoints.get(&key).cloned() else {
                continue;
            };
            let plan = plan_endpoint(&self.state, &self.policies, &ep);
            for dir in [Direction::Egress, Direction::Ingress] {
                let before_sets = cx.new_sets.len();
                let before_chains = cx.new_chains.len();
                let target = self.rs.direction_target(dir, plan.direction(dir), &mut cx);
                // Account for what this call created.
                for c in &cx.new_chains[before_chains..] {
                    self.policy_chain_created(c);
                }
                for s in &cx.new_sets[before_sets..] {
                    self.changes.new_sets.insert(s.clone());
                    self.changes.deleted_sets.remove(s);
                }
                self.set_target(&ep.iface, dir, target);
            }
        }
        // Fill the sets this round created, and index them for updates.
        cx.apply(&mut self.rs, &self.state);
        self.sel_sets.append(&mut cx.selectors);
        self.named_sets.append(&mut cx.named);
        self.combo_sets.append(&mut cx.combos);
        self.node_sets.append(&mut cx.nodes);
        self.collect_garbage();
    }

    fn policy_chain_created(&mut self, name: &str) {
        self.chain_created(name);
        self.chain_refs.entry(name.to_string()).or_insert(0);
        let (sets, chains) = self
            .rs
            .chains
            .get(name)
            .map(|b| (sets_of(b), gotos_of(b)))
            .unwrap_or_default();
        for s in sets {
            *self.set_refs.entry(s).or_insert(0) += 1;
        }
        // A tier chain's `goto` keeps its target alive (the target was
        // created, and registered, before the chain that goes to it).
        for c in chains {
            *self.chain_refs.entry(c).or_insert(0) += 1;
        }
    }

    /// Points an endpoint's direction at a chain (or at nothing), keeping
    /// the reference counts and recording the map change.
    fn set_target(&mut self, iface: &str, dir: Direction, new: Option<String>) {
        let d = self.rs.dispatch.entry(iface.to_string()).or_default();
        let old = d.get(dir).clone();
        if old == new {
            return;
        }
        *d.get_mut(dir) = new.clone();
        if let Some(n) = new.as_ref().and_then(|c| self.chain_refs.get_mut(c)) {
            *n += 1;
        }
        if let Some(n) = old.as_ref().and_then(|c| self.chain_refs.get_mut(c)) {
            *n = n.saturating_sub(1);
        }
        // The first change of a key in a round sees the applied value.
        self.changes
            .map
            .entry((dir, iface.to_string()))
            .or_insert(old.is_some());
    }

    fn collect_garbage(&mut self) {
        // Deleting a tier chain can free the chain it went to: repeat.
        loop {
            let dead: Vec<String> = self
                .chain_refs
                .iter()
                .filter(|(_, n)| **n == 0)
                .map(|(c, _)| c.clone())
                .collect();
            if dead.is_empty() {
                break;
            }
            for c in dead {
                self.chain_refs.remove(&c);
                if let Some(body) = self.rs.chains.remove(&c) {
                    for s in sets_of(&body) {
                        if let Some(n) = self.set_refs.get_mut(&s) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    for t in gotos_of(&body) {
                        if let Some(n) = self.chain_refs.get_mut(&t) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
                self.chain_deleted(&c);
            }
        }
        let dead: Vec<String> = self
            .set_refs
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(s, _)| s.clone())
            .collect();
        for s in dead {
            self.set_refs.remove(&s);
            self.rs.sets.remove(&s);
            self.sel_sets.remove(&s);
            self.named_sets.remove(&s);
            self.combo_sets.remove(&s);
            self.node_sets.remove(&s);
            self.changes.elem_add.remove(&s);
            self.changes.elem_del.remove(&s);
            if !self.changes.new_sets.remove(&s) {
                self.changes.deleted_sets.insert(s);
            }
        }
    }

    fn chain_created(&mut self, name: &str) {
        // Deleted and re-created in one round: same name, same content.
        if !self.changes.deleted_chains.remove(name) {
            self.changes.new_chains.insert(name.to_string());
        }
    }

    fn chain_deleted(&mut self, name: &str) {
        if !self.changes.new_chains.remove(name) {
            self.changes.deleted_chains.insert(name.to_string());
        }
    }

    // ---- membership ---------------------------------------------------

    /// Adds/removes one element of an existing set, recording the change.
    fn elem(&mut self, set: &str, e: Elem, present: bool) {
        let Some(s) = self.rs.sets.get_mut(set) else {
            return;
        };
        let changed = if present {
            s.elems.insert(e.clone())
        } else {
            s.elems.remove(&e)
        };
        if !changed || self.changes.new_sets.contains(set) {
            return;
        }
        let (to, from) = if present {
            (&mut self.changes.elem_add, &mut self.changes.elem_del)
        } else {
            (&mut self.changes.elem_del, &mut self.changes.elem_add)
        };
        // Undoing a pending opposite change cancels it.
        if !from.get_mut(set).is_some_and(|x| x.remove(&e)) {
            to.entry(set.to_string()).or_default().insert(e);
        }
    }

    fn set_spoof(&mut self, ep: &LocalEndpoint, present: bool) {
        for ip in &ep.ips {
            let set = format!("{SPOOF}{}", Family::of(ip).tag());
            self.elem(&set, Elem::IfAddr(ep.iface.clone(), *ip), present);
        }
    }

    fn pod_changed(&mut self, key: &PodKey, old: Option<Arc<PodInfo>>) {
        let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
        if let Some(o) = &old {
            ips.extend(o.ips.iter().copied());
            for ip in &o.ips {
                if let Some(s) = self.by_ip.get_mut(ip)
                    && s.remove(key)
                {
                    self.by_ip.remove(ip);
                }
            }
        }
        if let Some(new) = self.state.pods.get(key) {
            ips.extend(new.ips.iter().copied());
            if is_member(new) {
                for ip in &new.ips {
                    match self.by_ip.entry(*ip) {
                        Entry::Vacant(v) => {
                            v.insert(Holders::One(key.clone()));
                        }
                        Entry::Occupied(mut o) => o.get_mut().add(key),
                    }
                }
            }
        }
        for ip in ips {
            self.recheck_ip(ip);
        }
        if self.node.endpoints.contains_key(key) {
            self.dirty.insert(key.clone());
        }
    }

    fn namespace_changed(&mut self, ns: &str) {
        let ips: BTreeSet<IpAddr> = members::pods_in_ns(&self.state, ns)
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        for ip in ips {
            self.recheck_ip(ip);
        }
        // ANP/BANP subjects select by namespace labels.
        if self.policies.has_admin() {
            self.dirty_namespace(ns);
        }
    }

    fn dirty_namespace(&mut self, ns: &str) {
        let keys: Vec<PodKey> = self
            .node
            .endpoints
            .range(PodKey::new(ns, "")..)
            .take_while(|(k, _)| *k.namespace == *ns)
            .map(|(k, _)| k.clone())
            .collect();
        self.dirty.extend(keys);
    }

    /// Recomputes one address's elements in every selector and named-port set.
    fn recheck_ip(&mut self, ip: IpAddr) {
        let fam = Family::of(ip);
        let pods: Vec<&PodInfo> = self
            .by_ip
            .get(&ip)
            .into_iter()
            .flat_map(Holders::keys)
            .filter_map(|k| self.state.pods.get(k).map(|p| &**p))
            .collect();
        let mut updates: Vec<(String, Elem, bool)> = Vec::new();
        for (name, (peers, sfam)) in &self.sel_sets {
            if *sfam != fam {
                continue;
            }
            let want = pods.iter().any(|p| {
                let labels = namespace_labels(&self.state, &p.key.namespace);
                peers.iter().any(|peer| peer_selects(peer, p, &labels))
            });
            let have = self
                .rs
                .sets
                .get(name)
                .is_some_and(|s| s.elems.contains(&Elem::Addr(ip)));
            if want != have {
                updates.push((name.clone(), Elem::Addr(ip), want));
            }
        }
        // `addr . proto . port` sets: the elements `ip` should have, by set.
        let mut wanted: Vec<(&String, BTreeSet<Elem>)> = Vec::new();
        for (name, (peers, named, sfam)) in &self.named_sets {
            if *sfam != fam {
                continue;
            }
            let mut want: BTreeSet<Elem> = BTreeSet::new();
            for p in &pods {
                let labels = namespace_labels(&self.state, &p.key.namespace);
                for (a, proto, port) in members::named_ports_of_pod(peers, named, p, &labels) {
                    if a == ip {
                        want.insert(Elem::AddrProtoPort(a, proto, port));
                    }
                }
            }
            wanted.push((name, want));
        }
        for (name, (entries, sfam)) in &self.combo_sets {
            if *sfam != fam {
                continue;
            }
            let mut want: BTreeSet<Elem> = BTreeSet::new();
            for p in &pods {
                let labels = namespace_labels(&self.state, &p.key.namespace);
                combo_elems_of_pod(entries, p, &labels, ip, &mut want);
            }
            wanted.push((name, want));
        }
        for (name, want) in wanted {
            let have: BTreeSet<Elem> = self
                .rs
                .sets
                .get(name)
                .map(|s| {
                    s.elems
                        .range(
                            Elem::AddrProtoPort(ip, Protocol::Tcp, 0)
                                ..=Elem::AddrProtoPort(ip, Protocol::Sctp, u16::MAX),
                        )
                        .cloned()
                        .collect()
                })
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
}

/// Chains a chain goes to (each once).
fn gotos_of(body: &[RuleIr]) -> BTreeSet<String> {
    body.iter()
        .filter_map(|r| match &r.verdict {
            Verdict::Goto(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// Non-fixed sets a chain uses (each once).
fn sets_of(body: &[RuleIr]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in body {
        for m in &r.matches {
            let name = match m {
                Match::Addr(_, _, s) | Match::ProtoPort(s) | Match::AddrProtoPort(_, _, s) => s,
            };
            if !name.starts_with(NODE) && !name.starts_with(SPOOF) {
                out.insert(name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
