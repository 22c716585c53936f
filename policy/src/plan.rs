//! The per-endpoint rule plan: which policies isolate each local pod in each
//! direction, and the union of their rules with named ports resolved where
//! the destination is known (ingress: the endpoint itself).
//!
//! Membership (which IPs a selector peer stands for) is not part of the plan:
//! it is computed by [`members`] and rendered as sets, so a pod label change
//! elsewhere in the cluster changes set elements, not this plan.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::admin::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use crate::compile::admin::{
    Action, AdminKind, AdminPolicyError, AdminRule, CompiledAdmin, compile_admin, compile_baseline,
};
use crate::compile::{
    CompiledPolicy, Direction, Peer, PodPeer, PolicyError, Port, PreparedPolicy, Rule,
};
use crate::model::{
    ClusterState, Labels, LocalEndpoint, NAMESPACE_NAME_LABEL, NodeContext, PodInfo, PodKey,
    PodPhase, PolicyKey, Protocol,
};
use crate::origin::{RuleAction, RuleOrigin, Tier};
use crate::selector::Selector;

/// Port part of a planned rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// No `ports`: every protocol and port.
    Any,
    /// Listed ports. `ranges` are disjoint per protocol. `named` is only used
    /// for egress (resolved on each destination pod); for ingress the names
    /// were resolved on the endpoint into `ranges`. Both empty = the rule
    /// cannot match (e.g. a named port the pod does not have).
    Listed {
        ranges: BTreeSet<(Protocol, u16, u16)>,
        named: BTreeSet<(Protocol, String)>,
    },
}

/// One allow rule of an endpoint, after resolution.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RulePlan {
    /// `None` = all peers.
    pub peers: Option<Vec<Peer>>,
    pub ports: PortMatch,
    /// The policy rule it comes from (rendered as the nft rule's comment,
    /// so its counter is attributed; part of the chain's content).
    pub origin: RuleOrigin,
}

/// What applies to one direction of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectionPlan {
    /// No policy selects the pod for this direction: everything allowed.
    Open,
    /// Selected by `policies`; only the union of `rules` is allowed.
    Isolated {
        policies: Vec<PolicyKey>,
        rules: BTreeSet<RulePlan>,
    },
    /// The endpoint's pod is unknown, finished, or host-network: nothing is
    /// allowed until that changes (fail closed).
    DenyAll,
    /// AdminNetworkPolicy and/or BaselineAdminNetworkPolicy rules apply.
    Tiered(TieredPlan),
}

/// One ANP/BANP rule of an endpoint, after resolution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TierRule {
    /// `AdminNetworkPolicy <name> ingress[<i>] ("<rule name>")` (for
    /// messages; not part of the rendered rules).
    pub origin: String,
    pub action: Action,
    pub rule: RulePlan,
}

/// A direction under the admin tiers. A connection is judged by the first
/// matching `admin` rule (`Allow`/`Deny` decide; `Pass` skips the other
/// ANP rules); then, if NetworkPolicies isolate the direction, by them
/// alone; otherwise by the first matching `baseline` rule; otherwise it is
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TieredPlan {
    /// ANP rules selecting the pod, by (priority, policy name), each
    /// policy's rules in their written order.
    pub admin: Vec<TierRule>,
    /// The isolating NetworkPolicies and the union of their rules; `None`:
    /// no NetworkPolicy isolates this direction.
    pub np: Option<(Vec<PolicyKey>, BTreeSet<RulePlan>)>,
    /// The BANP's rules (empty when `np` is `Some`: they are never reached).
    pub baseline: Vec<TierRule>,
}

/// The plan of one local endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPlan {
    pub endpoint: LocalEndpoint,
    pub ingress: DirectionPlan,
    pub egress: DirectionPlan,
}

impl EndpointPlan {
    pub fn direction(&self, dir: Direction) -> &DirectionPlan {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Something in the input that was skipped, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanIssue {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Admin(#[from] AdminPolicyError),
    #[error("endpoint {pod}: interface {iface:?} {reason}")]
    BadInterface {
        pod: PodKey,
        iface: String,
        reason: &'static str,
    },
}

/// Every compiled policy: NetworkPolicies indexed by namespace, ANPs in
/// precedence order, the BANP.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_ns: BTreeMap<String, BTreeMap<PolicyKey, std::sync::Arc<CompiledPolicy>>>,
    errors: BTreeMap<PolicyKey, Vec<PolicyError>>,
    /// ANPs by (priority, name): equal priorities (undefined by the API)
    /// are ordered by name, so every node decides alike.
    admin: BTreeMap<(u16, String), CompiledAdmin>,
    admin_priority: BTreeMap<String, u16>,
    baseline: Option<CompiledAdmin>,
    admin_errors: BTreeMap<(AdminKind, String), Vec<AdminPolicyError>>,
}

impl Policies {
    pub fn compile_all(state: &ClusterState) -> Policies {
        let mut p = Policies::default();
        for (key, np) in &state.policies {
            p.upsert(key, np);
        }
        for (name, anp) in &state.admin_policies {
            p.upsert_admin(name, anp);
        }
        for (name, banp) in &state.baseline_policies {
            p.upsert_baseline(name, banp);
        }
        p
    }

    /// (Re)compiles one AdminNetworkPolicy; returns its errors.
    pub fn upsert_admin(&mut self, name: &str, anp: &AdminNetworkPolicy) -> &[AdminPolicyError] {
        self.remove_admin(name);
        let errs = match compile_admin(name, anp) {
            Ok((c, errs)) => {
                let prio = c.priority.unwrap_or(u16::MAX);
                self.admin_priority.insert(name.to_string(), prio);
                self.admin.insert((prio, name.to_string()), c);
                errs
            }
            Err(e) => vec![e],
        };
        self.admin_issues(AdminKind::Admin, name, errs)
    }

    pub fn remove_admin(&mut self, name: &str) {
        if let Some(prio) = self.admin_priority.remove(name) {
            self.admin.remove(&(prio, name.to_string()));
        }
        self.admin_errors
            .remove(&(AdminKind::Admin, name.to_string()));
    }

    /// (Re)compiles one BaselineAdminNetworkPolicy; returns its errors.
    pub fn upsert_baseline(
        &mut self,
        name: &str,
        banp: &BaselineAdminNetworkPolicy,
    ) -> &[AdminPolicyError] {
        self.remove_baseline(name);
        let errs = match compile_baseline(name, banp) {
            Ok((c, errs)) => {
                self.baseline = Some(c);
                errs
            }
            Err(e) => vec![e],
        };
        self.admin_issues(AdminKind::Baseline, name, errs)
    }

    pub fn remove_baseline(&mut self, name: &str) {
        if self.baseline.as_ref().is_some_and(|b| b.name == name) {
            self.baseline = None;
        }
        self.admin_errors
            .remove(&(AdminKind::Baseline, name.to_string()));
    }

    fn admin_issues(
        &mut self,
        kind: AdminKind,
        name: &str,
        errs: Vec<AdminPolicyError>,
    ) -> &[AdminPolicyError] {
        for e in &errs {
            tracing::warn!(policy = %name, kind = %kind, error = %e, "admin network policy partly or wholly ignored");
        }
        self.admin_errors
            .entry((kind, name.to_string()))
            .or_insert(errs)
    }

    /// ANPs in precedence order.
    pub fn admins(&self) -> impl Iterator<Item = &CompiledAdmin> {
        self.admin.values()
    }

    /// The BANP in effect.
    pub fn baseline(&self) -> Option<&CompiledAdmin> {
        self.baseline.as_ref()
    }

    /// Is any ANP or BANP in effect?
    pub fn has_admin(&self) -> bool {
        !self.admin.is_empty() || self.baseline.is_some()
    }

    pub fn admin_errors(&self) -> impl Iterator<Item = &AdminPolicyError> {
        self.admin_errors.values().flatten()
    }

    /// (Re)compiles one policy; returns its errors.
    pub fn upsert(
        &mut self,
        key: &PolicyKey,
        np: &k8s_openapi::api::networking::v1::NetworkPolicy,
    ) -> &[PolicyError] {
        self.upsert_prepared(key, &PreparedPolicy::compile(key, np))
    }

    /// Takes a policy compiled elsewhere; returns its errors.
    pub fn upsert_prepared(&mut self, key: &PolicyKey, p: &PreparedPolicy) -> &[PolicyError] {
        self.remove(key);
        if let Some(c) = &p.compiled {
            self.by_ns
                .entry(key.namespace.clone())
                .or_default()
                .insert(key.clone(), c.clone());
        }
        let errs = p.errors.to_vec();
        for e in &errs {
            tracing::warn!(policy = %key, error = %e, "network policy partly or wholly ignored");
        }
        self.errors.entry(key.clone()).or_insert(errs)
    }

    pub fn remove(&mut self, key: &PolicyKey) {
        if let Some(m) = self.by_ns.get_mut(&key.namespace) {
            m.remove(key);
            if m.is_empty() {
                self.by_ns.remove(&key.namespace);
            }
        }
        self.errors.remove(key);
    }

    pub fn in_namespace(&self, ns: &str) -> impl Iterator<Item = &CompiledPolicy> {
        self.by_ns
            .get(ns)
            .into_iter()
            .flat_map(|m| m.values().map(|c| &**c))
    }

    pub fn all(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.by_ns.values().flat_map(|m| m.values().map(|c| &**c))
    }

    pub fn errors(&self) -> impl Iterator<Item = &PolicyError> {
        self.errors.values().flatten()
    }
}

/// The plan for every local endpoint.
#[derive(Debug, Clone)]
pub struct Plan {
    pub endpoints: BTreeMap<PodKey, EndpointPlan>,
    pub node_addrs: Vec<IpAddr>,
    pub nat: crate::model::NatOutgoing,
    pub iface_prefix: String,
    /// Log denied packets (see [`crate::flowlog`]).
    pub deny_log: Option<crate::flowlog::DenyLog>,
    pub issues: Vec<PlanIssue>,
}

/// Computes the plan of every local endpoint from scratch.
pub fn build(state: &ClusterState, node: &NodeContext) -> Plan {
    let policies = Policies::compile_all(state);
    build_with(state, node, &policies)
}

/// [`build`] with already compiled policies.
pub fn build_with(state: &ClusterState, node: &NodeContext, policies: &Policies) -> Plan {
    let mut issues: Vec<PlanIssue> = policies.errors().cloned().map(PlanIssue::from).collect();
    issues.extend(policies.admin_errors().cloned().map(PlanIssue::from));
    let mut endpoints = BTreeMap::new();
    for ep in node.endpoints.values() {
        if let Err(reason) = check_iface(&ep.iface, &node.iface_prefix) {
            issues.push(PlanIssue::BadInterface {
                pod: ep.pod.clone(),
                iface: ep.iface.clone(),
                reason,
            });
            continue;
        }
        endpoints.insert(ep.pod.clone(), plan_endpoint(state, policies, ep));
    }
    Plan {
        endpoints,
        node_addrs: node.node_addrs.clone(),
        nat: node.nat.clone(),
        iface_prefix: node.iface_prefix.clone(),
        deny_log: node.deny_log,
        issues,
    }
}

/// Interface names go into nft rules and set elements: keep them boring.
pub fn check_iface(iface: &str, prefix: &str) -> Result<(), &'static str> {
    if iface.is_empty() || iface.len() > 15 {
        return Err("must be 1 to 15 bytes");
    }
    if !iface
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only contain ASCII letters, digits, '-', '_' and '.'");
    }
    if !iface.starts_with(prefix) || iface.len() == prefix.len() {
        return Err("does not start with the workload interface prefix");
    }
    Ok(())
}

/// Is this pod a member of selector sets / an endpoint (by its pod IPs)?
pub fn is_member(pod: &PodInfo) -> bool {
    !pod.host_network && !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed)
}

/// Plans one endpoint.
pub fn plan_endpoint(
    state: &ClusterState,
    policies: &Policies,
    ep: &LocalEndpoint,
) -> EndpointPlan {
    if ep.standalone {
        return EndpointPlan {
            endpoint: ep.clone(),
            ingress: DirectionPlan::Open,
            egress: DirectionPlan::Open,
        };
    }
    let pod = state.pods.get(&ep.pod).filter(|p| is_member(p));
    let Some(pod) = pod else {
        return EndpointPlan {
            endpoint: ep.clone(),
            ingress: DirectionPlan::DenyAll,
            egress: DirectionPlan::DenyAll,
        };
    };
    let ns_labels = policies
        .has_admin()
        .then(|| namespace_labels(state, &pod.key.namespace));
    let dir_plan = |dir: Direction| {
        let mut selected = Vec::new();
        // Equal rules of several policies are rendered once, attributed to
        // the first policy (by namespace/name): the first matching line is
        // the one the kernel would count anyway, and endpoints whose
        // policies allow the same keep sharing one chain.
        let mut rules: BTreeMap<(Option<Vec<Peer>>, PortMatch), RuleOrigin> = BTreeMap::new();
        for p in policies.in_namespace(&pod.key.namespace) {
            let Some(prules) = p.rules(dir) else { continue };
            if !p.pod_selector.matches(&pod.labels) {
                continue;
            }
            selected.push(p.key.clone());
            for (i, r) in prules.iter().enumerate() {
                let origin = RuleOrigin::new(
                    Tier::NetworkPolicy,
                    p.key.to_string(),
                    dir,
                    Some(u32::try_from(i).unwrap_or(u32::MAX)),
                    RuleAction::Allow,
                );
                let rp = plan_rule(r, dir, pod, origin);
                rules.entry((rp.peers, rp.ports)).or_insert(rp.origin);
            }
        }
        let rules: BTreeSet<RulePlan> = rules
            .into_iter()
            .map(|((peers, ports), origin)| RulePlan {
                peers,
                ports,
                origin,
            })
            .collect();
        let np = (!selected.is_empty()).then_some((selected, rules));
        match &ns_labels {
            Some(ns_labels) => tiered(policies, dir, pod, ns_labels, np),
            None => np_plan(np),
        }
    };
    EndpointPlan {
        endpoint: ep.clone(),
        ingress: dir_plan(Direction::Ingress),
        egress: dir_plan(Direction::Egress),
    }
}

fn np_plan(np: Option<(Vec<PolicyKey>, BTreeSet<RulePlan>)>) -> DirectionPlan {
    match np {
        None => DirectionPlan::Open,
        Some((policies, rules)) => DirectionPlan::Isolated { policies, rules },
    }
}

/// A direction with the admin tiers around the NetworkPolicy verdict `np`
/// (plain [`DirectionPlan::Open`]/[`DirectionPlan::Isolated`] when no
/// ANP/BANP rule applies, so their rendering stays as without ANPs).
fn tiered(
    policies: &Policies,
    dir: Direction,
    pod: &PodInfo,
    ns_labels: &Labels,
    np: Option<(Vec<PolicyKey>, BTreeSet<RulePlan>)>,
) -> DirectionPlan {
    let tier_rules = |a: &CompiledAdmin| -> Vec<TierRule> {
        if !a.subject.selects(&pod.labels, ns_labels) {
            return Vec::new();
        }
        a.rules(dir)
            .iter()
            .map(|r| tier_rule(a, r, dir, pod))
            .collect()
    };
    let admin: Vec<TierRule> = policies.admins().flat_map(tier_rules).collect();
    let baseline = match (&np, policies.baseline()) {
        (None, Some(b)) => tier_rules(b),
        _ => Vec::new(),
    };
    if admin.is_empty() && baseline.is_empty() {
        return np_plan(np);
    }
    DirectionPlan::Tiered(TieredPlan {
        admin,
        np,
        baseline,
    })
}

fn tier_rule(a: &CompiledAdmin, r: &AdminRule, dir: Direction, pod: &PodInfo) -> TierRule {
    let label = r
        .name
        .as_ref()
        .map(|n| format!(" ({n:?})"))
        .unwrap_or_default();
    TierRule {
        origin: format!("{} {} {}[{}]{label}", a.kind, a.name, dir.as_str(), r.index),
        action: r.action,
        rule: plan_rule(
            &r.rule,
            dir,
            pod,
            RuleOrigin::new(
                match a.kind {
                    AdminKind::Admin => Tier::Admin,
                    AdminKind::Baseline => Tier::Baseline,
                },
                a.name.clone(),
                dir,
                Some(u32::try_from(r.index).unwrap_or(u32::MAX)),
                r.action.into(),
            ),
        ),
    }
}

fn plan_rule(r: &Rule, dir: Direction, pod: &PodInfo, origin: RuleOrigin) -> RulePlan {
    let ports = match &r.ports {
        None => PortMatch::Any,
        Some(ports) => {
            let mut ranges = Vec::new();
            let mut named = BTreeSet::new();
            for p in ports {
                match p {
                    Port::Range { proto, lo, hi } => ranges.push((*proto, *lo, *hi)),
                    Port::Named { proto, name } => match dir {
                        // The destination is the endpoint itself.
                        Direction::Ingress => {
                            ranges.extend(resolve_named(pod, *proto, name).map(|n| (*proto, n, n)))
                        }
                        Direction::Egress => {
                            named.insert((*proto, name.clone()));
                        }
                    },
                }
            }
            PortMatch::Listed {
                ranges: merge_port_ranges(ranges),
                named,
            }
        }
    };
    RulePlan {
        peers: r.peers.clone(),
        ports,
        origin,
    }
}

/// Port numbers a named port has on a pod (containers may repeat a name).
pub fn resolve_named<'a>(
    pod: &'a PodInfo,
    proto: Protocol,
    name: &'a str,
) -> impl Iterator<Item = u16> + 'a {
    pod.ports
        .iter()
        .filter(move |p| p.protocol == proto && p.name.as_deref() == Some(name))
        .map(|p| p.port)
}

/// Sorts and merges overlapping/adjacent ranges of the same protocol
/// (nftables interval sets reject overlapping elements).
pub fn merge_port_ranges(mut v: Vec<(Protocol, u16, u16)>) -> BTreeSet<(Protocol, u16, u16)> {
    v.sort();
    let mut out: Vec<(Protocol, u16, u16)> = Vec::with_capacity(v.len());
    for (p, lo, hi) in v {
        if let Some(last) = out.last_mut()
            && last.0 == p
            && u32::from(lo) <= u32::from(last.2) + 1
        {
            last.2 = last.2.max(hi);
            continue;
        }
        out.push((p, lo, hi));
    }
    out.into_iter().collect()
}

/// Labels of a namespace; an unknown namespace has only its name label.
pub fn namespace_labels<'a>(state: &'a ClusterState, ns: &str) -> Cow<'a, Labels> {
    match state.namespaces.get(ns) {
        Some(n) => Cow::Borrowed(&n.labels),
        None => Cow::Owned(Labels::from([(
            NAMESPACE_NAME_LABEL.to_string(),
            ns.to_string(),
        )])),
    }
}

/// Does a selector peer choose this pod (given its namespace's labels)?
pub fn peer_selects(peer: &PodPeer, pod: &PodInfo, ns_labels: &Labels) -> bool {
    let ns_ok = match &peer.ns {
        crate::compile::NsScope::Same(ns) => **ns == *pod.key.namespace,
        crate::compile::NsScope::Matching(s) => s.matches(ns_labels),
    };
    ns_ok && peer.pods.matches(&pod.labels)
}

/// Set memberships, computed from the cluster state.
pub mod members {
    use super::*;

    /// IPs of the member pods a selector peer chooses.
    pub fn selector(state: &ClusterState, peer: &PodPeer) -> BTreeSet<IpAddr> {
        let mut out = BTreeSet::new();
        let mut add_ns = |ns: &str| {
            for pod in pods_in_ns(state, ns) {
                if is_member(pod) && peer.pods.matches(&pod.labels) {
                    out.extend(pod.ips.iter().copied());
                }
            }
        };
        match &peer.ns {
            crate::compile::NsScope::Same(ns) => add_ns(ns),
            crate::compile::NsScope::Matching(sel) => {
                for ns in namespaces_with_pods(state) {
                    if sel.matches(&*namespace_labels(state, &ns)) {
                        add_ns(&ns);
                    }
                }
            }
        }
        out
    }

    /// Addresses of the nodes a `nodes` peer selects.
    pub fn nodes(state: &ClusterState, sel: &Selector) -> BTreeSet<IpAddr> {
        state
            .nodes
            .values()
            .filter(|n| sel.matches(&n.labels))
            .flat_map(|n| n.addrs.iter().copied())
            .collect()
    }

    /// Every namespace that has pods, each once, without walking all pods.
    pub fn namespaces_with_pods(state: &ClusterState) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut from = PodKey::new("", "");
        while let Some((k, _)) = state.pods.range(from..).next() {
            out.push(k.namespace.to_string());
            // The smallest namespace after `k.namespace`.
            from = PodKey::new(format!("{}\0", k.namespace), "");
        }
        out
    }

    /// Pods of one namespace (the map is ordered by namespace first).
    pub fn pods_in_ns<'a>(
        state: &'a ClusterState,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a PodInfo> {
        state
            .pods
            .range(PodKey::new(ns, "")..)
            .take_while(move |(k, _)| *k.namespace == *ns)
            .map(|(_, p)| &**p)
    }

    /// Does a rule's peer list choose this pod address?
    pub fn peers_choose(
        peers: &Option<Vec<Peer>>,
        pod: &PodInfo,
        ip: &IpAddr,
        ns_labels: &Labels,
    ) -> bool {
        match peers {
            None => true,
            Some(list) => list.iter().any(|p| match p {
                Peer::Pods(pp) => peer_selects(pp, pod, ns_labels),
                Peer::Block(ranges) => ranges.iter().any(|r| r.contains(ip)),
                // Member pods are never host-network: no node address.
                Peer::Nodes(_) => false,
            }),
        }
    }

    /// (address, protocol, port) of every member pod address the peers
    /// choose that has one of the named ports (egress named ports).
    pub fn named_ports_of_pod(
        peers: &Option<Vec<Peer>>,
        named: &BTreeSet<(Protocol, String)>,
        pod: &PodInfo,
        ns_labels: &Labels,
    ) -> BTreeSet<(IpAddr, Protocol, u16)> {
        let mut out = BTreeSet::new();
        if !is_member(pod) {
            return out;
        }
        for ip in &pod.ips {
            if !peers_choose(peers, pod, ip, ns_labels) {
                continue;
            }
            for (proto, name) in named {
                for port in resolve_named(pod, *proto, name) {
                    out.insert((*ip, *proto, port));
                }
            }
        }
        out
    }

    /// [`named_ports_of_pod`] over the whole cluster.
    pub fn named_ports(
        state: &ClusterState,
        peers: &Option<Vec<Peer>>,
        named: &BTreeSet<(Protocol, String)>,
    ) -> BTreeSet<(IpAddr, Protocol, u16)> {
        let mut out = BTreeSet::new();
        for pod in state.pods.values() {
            let labels = namespace_labels(state, &pod.key.namespace);
            out.extend(named_ports_of_pod(peers, named, pod, &labels));
        }
        out
    }
}

#[cfg(test)]
mod tests;
