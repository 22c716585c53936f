//! A NetworkPolicy object, validated and reduced to what the plan needs.
//!
//! Error handling (the API server validates these objects, so errors mean a
//! hostile or broken input; we stay safe rather than guess):
//! * an invalid `spec.podSelector` or `policyTypes` makes the whole policy
//!   invalid: it selects no pod (we cannot know which pods it meant);
//! * an invalid peer or port inside a rule drops that whole rule (the rule
//!   allows nothing) while the policy still isolates the pods it selects.
//!
//! Every error names the policy and the field.

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::addr::{AddrRange, subtract, union};
use crate::model::{PolicyKey, Protocol};
use crate::selector::{Selector, SelectorError};

pub mod admin;

/// Traffic direction relative to the selected pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Which namespaces a selector peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NsScope {
    /// The policy's own namespace (peer with only a `podSelector`).
    Same(String),
    /// Namespaces whose labels match (`{}` = all namespaces).
    Matching(Selector),
}

/// Pods chosen by a (namespace scope, pod selector) pair: the identity of a
/// selector IP set, shared by every rule that uses the same pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodPeer {
    pub ns: NsScope,
    pub pods: Selector,
}

impl PodPeer {
    pub fn canonical(&self) -> String {
        match &self.ns {
            NsScope::Same(ns) => format!("ns={ns:?} pods={}", self.pods.canonical()),
            NsScope::Matching(s) => {
                format!("nssel={} pods={}", s.canonical(), self.pods.canonical())
            }
        }
    }
}

/// One entry of `from`/`to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Pods(PodPeer),
    /// `ipBlock`: the CIDR minus its excepts, as disjoint ranges (also an
    /// AdminNetworkPolicy `networks` peer).
    Block(Vec<AddrRange>),
    /// The addresses of the nodes whose labels match (AdminNetworkPolicy
    /// egress `nodes` peers only).
    Nodes(Selector),
}

/// One entry of `ports`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    /// `port` (+ `endPort`), or all ports of the protocol when `port` is absent.
    Range { proto: Protocol, lo: u16, hi: u16 },
    /// A named port, resolved on the destination pod's containers.
    Named { proto: Protocol, name: String },
}

/// A rule; `None` peers/ports mean "all".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<Port>>,
}

/// A NetworkPolicy compiled where it arrives, so that its object need not
/// be kept: the agent's policy cache holds this instead of the object
/// (docs/scale.md), and the engine plans with it.
#[derive(Debug, Clone)]
pub struct PreparedPolicy {
    /// `None` when the policy is wholly invalid (its `errors` say why).
    pub compiled: Option<std::sync::Arc<CompiledPolicy>>,
    /// What was ignored, or why nothing could be used.
    pub errors: std::sync::Arc<[PolicyError]>,
}

impl PreparedPolicy {
    /// Compiles `np`.
    pub fn compile(key: &PolicyKey, np: &NetworkPolicy) -> Self {
        match compile(key, np) {
            Ok((c, errs)) => PreparedPolicy {
                compiled: Some(std::sync::Arc::new(c)),
                errors: errs.into(),
            },
            Err(e) => PreparedPolicy {
                compiled: None,
                errors: std::sync::Arc::from(vec![e]),
            },
        }
    }

    /// The very same preparation (not merely equal): a cache hands the
    /// same one out again for as long as the object does not change.
    pub fn same(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.errors, &other.errors)
            && match (&self.compiled, &other.compiled) {
                (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub key: PolicyKey,
    pub pod_selector: Selector,
    /// `Some` when the policy isolates ingress; the valid ingress rules.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy isolates egress; the valid egress rules.
    pub egress: Option<Vec<Rule>>,
}

impl CompiledPolicy {
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// What is wrong with a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy}: spec.podSelector: {source}")]
    PodSelector {
        policy: PolicyKey,
        #[source]
        source: SelectorError,
    },
    #[error("policy {policy}: spec.policyTypes: unknown type {value:?}")]
    PolicyType { policy: PolicyKey, value: String },
    #[error("policy {policy}: {dir} rule {rule} ignored: {reason}")]
    Rule {
        policy: PolicyKey,
        dir: &'static str,
        rule: usize,
        reason: String,
    },
    #[error("policy {policy}: missing spec")]
    NoSpec { policy: PolicyKey },
}

/// Compiles a policy. `Err` = the policy applies to nothing; `Ok` may still
/// carry rule-level errors (those rules were dropped).
pub fn compile(
    key: &PolicyKey,
    np: &NetworkPolicy,
) -> Result<(CompiledPolicy, Vec<PolicyError>), PolicyError> {
    let spec = np.spec.as_ref().ok_or_else(|| PolicyError::NoSpec {
        policy: key.clone(),
    })?;
    let pod_selector = match &spec.pod_selector {
        None => Selector::everything(),
        Some(s) => Selector::compile(s).map_err(|source| PolicyError::PodSelector {
            policy: key.clone(),
            source,
        })?,
    };
    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let (mut ingress_on, mut egress_on) = (false, false);
    match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            for t in types {
                match t.as_str() {
                    "Ingress" => ingress_on = true,
                    "Egress" => egress_on = true,
                    other => {
                        return Err(PolicyError::PolicyType {
                            policy: key.clone(),
                            value: other.to_string(),
                        });
                    }
                }
            }
        }
        _ => {
            ingress_on = true;
            egress_on = has_egress_rules;
        }
    }
    let mut errors = Vec::new();
    let ingress = ingress_on.then(|| {
        let raw = spec.ingress.as_deref().unwrap_or(&[]);
        compile_rules(
            key,
            Direction::Ingress,
            raw.iter().map(|r| (r.from.as_deref(), r.ports.as_deref())),
            &mut errors,
        )
    });
    let egress = egress_on.then(|| {
        let raw = spec.egress.as_deref().unwrap_or(&[]);
        compile_rules(
            key,
            Direction::Egress,
            raw.iter().map(|r| (r.to.as_deref(), r.ports.as_deref())),
            &mut errors,
        )
    });
    Ok((
        CompiledPolicy {
            key: key.clone(),
            pod_selector,
            ingress,
            egress,
        },
        errors,
    ))
}

fn compile_rules<'a>(
    key: &PolicyKey,
    dir: Direction,
    raw: impl Iterator<
        Item = (
            Option<&'a [NetworkPolicyPeer]>,
            Option<&'a [NetworkPolicyPort]>,
        ),
    >,
    errors: &mut Vec<PolicyError>,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (i, (peers, ports)) in raw.enumerate() {
        match compile_rule(key, peers, ports) {
            Ok(r) => rules.push(r),
            Err(reason) => errors.push(PolicyError::Rule {
                policy: key.clone(),
                dir: dir.as_str(),
                rule: i,
                reason,
            }),
        }
    }
    rules
}

fn compile_rule(
    key: &PolicyKey,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Rule, String> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => {
            let mut out = BTreeSet::new();
            for (i, p) in list.iter().enumerate() {
                out.insert(compile_peer(key, p).map_err(|e| format!("peer {i}: {e}"))?);
            }
            Some(out.into_iter().collect())
        }
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => {
            let mut out = BTreeSet::new();
            for (i, p) in list.iter().enumerate() {
                out.insert(compile_port(p).map_err(|e| format!("port {i}: {e}"))?);
            }
            Some(out.into_iter().collect())
        }
    };
    Ok(Rule { peers, ports })
}

fn compile_peer(key: &PolicyKey, p: &NetworkPolicyPeer) -> Result<Peer, String> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(b), None, None) => {
            if !b.cidr.contains('/') {
                return Err(format!("ipBlock.cidr {:?} is not in CIDR notation", b.cidr));
            }
            let cidr: IpNetwork = b
                .cidr
                .parse()
                .map_err(|e| format!("ipBlock.cidr {:?}: {e}", b.cidr))?;
            let whole = AddrRange::of_net(&cidr);
            let mut minus = Vec::new();
            for ex in b.except.iter().flatten() {
                if !ex.contains('/') {
                    return Err(format!("ipBlock.except {ex:?} is not in CIDR notation"));
                }
                let n: IpNetwork = ex
                    .parse()
                    .map_err(|e| format!("ipBlock.except {ex:?}: {e}"))?;
                let r = AddrRange::of_net(&n);
                if !whole.covers(&r) {
                    return Err(format!(
                        "ipBlock.except {ex:?} is not inside cidr {:?}",
                        b.cidr
                    ));
                }
                minus.push(r);
            }
            Ok(Peer::Block(union(subtract(whole, &minus))))
        }
        (Some(_), _, _) => Err("ipBlock cannot be combined with selectors".into()),
        (None, None, None) => {
            Err("peer selects nothing (no podSelector, namespaceSelector or ipBlock)".into())
        }
        (None, pods, ns) => {
            let pods = match pods {
                None => Selector::everything(),
                Some(s) => Selector::compile(s).map_err(|e| format!("podSelector: {e}"))?,
            };
            let ns = match ns {
                None => NsScope::Same(key.namespace.clone()),
                Some(s) => NsScope::Matching(
                    Selector::compile(s).map_err(|e| format!("namespaceSelector: {e}"))?,
                ),
            };
            Ok(Peer::Pods(PodPeer { ns, pods }))
        }
    }
}

fn compile_port(p: &NetworkPolicyPort) -> Result<Port, String> {
    let proto = Protocol::parse(p.protocol.as_deref()).map_err(|e| e.to_string())?;
    let to_port = |v: i32, what: &str| {
        u16::try_from(v)
            .ok()
            .filter(|v| *v != 0)
            .ok_or_else(|| format!("{what} {v} is not in 1..=65535"))
    };
    match (&p.port, p.end_port) {
        (None, None) => Ok(Port::Range {
            proto,
            lo: 0,
            hi: u16::MAX,
        }),
        (None, Some(_)) => Err("endPort without port".into()),
        (Some(IntOrString::Int(n)), end) => {
            let lo = to_port(*n, "port")?;
            let hi = match end {
                None => lo,
                Some(e) => {
                    let hi = to_port(e, "endPort")?;
                    if hi < lo {
                        return Err(format!("endPort {hi} is below port {lo}"));
                    }
                    hi
                }
            };
            Ok(Port::Range { proto, lo, hi })
        }
        (Some(IntOrString::String(name)), None) => {
            if name.is_empty() || name.len() > 15 {
                return Err(format!("port name {name:?} must be 1 to 15 characters"));
            }
            Ok(Port::Named {
                proto,
                name: name.clone(),
            })
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            Err("endPort cannot be used with a named port".into())
        }
    }
}

#[cfg(test)]
mod tests;
