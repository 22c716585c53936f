//! AdminNetworkPolicy / BaselineAdminNetworkPolicy objects, validated and
//! reduced to what the plan needs: a subject, and per direction an ordered
//! list of (action, [`Rule`]) with the same peers and ports as NetworkPolicy
//! rules (plus `nodes` peers).
//!
//! Error handling. The API server validates these objects against the CRD,
//! so an error means a hostile input or a CRD of another version:
//! * object level (no name, `priority` outside 0..=1000, a `subject` that is
//!   not exactly one valid selector, a BANP not named `default`): the whole
//!   object is ignored and reported (we cannot know whom it meant);
//! * rule level (an unknown action, a peer that is not exactly one known
//!   field, an invalid selector, CIDR or port): the rule fails closed as the
//!   API prescribes for unknown peers: an `Allow` rule matches nothing, a
//!   `Deny` or `Pass` rule (or one whose action is unknown) denies every
//!   connection of the subject in its direction. Reported.
//! * `domainNames` peers (FQDN, experimental) are not implemented: such a
//!   peer matches nothing (it is only valid in ANP `Allow` rules, so this
//!   errs on the closed side). Reported.
//!
//! Every error names the object, the direction, the rule and the field.

use std::collections::BTreeSet;
use std::fmt;

use ipnetwork::IpNetwork;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::addr::{AddrRange, union};
use crate::admin::{
    AdminNetworkPolicy, AdminPeer, AdminPort, BASELINE_NAME, BaselineAdminNetworkPolicy,
    MAX_PRIORITY, RuleAction, Subject,
};
use crate::compile::{Direction, NsScope, Peer, PodPeer, Port, Rule};
use crate::model::{Labels, Protocol};
use crate::selector::{LabelLookup, Selector};

/// Which of the two kinds an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminKind {
    Admin,
    Baseline,
}

impl fmt::Display for AdminKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdminKind::Admin => "AdminNetworkPolicy",
            AdminKind::Baseline => "BaselineAdminNetworkPolicy",
        })
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Allowed; no later tier is consulted.
    Allow,
    /// Denied; no later tier is consulted.
    Deny,
    /// (ANP only) skip the remaining ANP rules: NetworkPolicy decides, or
    /// the baseline when no NetworkPolicy selects the pod.
    Pass,
}

/// The pods a policy applies to (a `namespaces` subject has `pods: {}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdminSubject {
    pub namespaces: Selector,
    pub pods: Selector,
}

impl AdminSubject {
    pub fn selects(&self, pod_labels: &impl LabelLookup, ns_labels: &Labels) -> bool {
        self.namespaces.matches(ns_labels) && self.pods.matches(pod_labels)
    }
}

/// One rule, in its object's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdminRule {
    /// Position in the object's `ingress`/`egress` list.
    pub index: usize,
    pub name: Option<String>,
    pub action: Action,
    /// `peers: None` only for a rule that failed closed (denies all).
    pub rule: Rule,
}

/// A validated ANP or BANP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledAdmin {
    pub kind: AdminKind,
    pub name: String,
    /// ANP `spec.priority`; `None` for the baseline.
    pub priority: Option<u16>,
    pub subject: AdminSubject,
    pub ingress: Vec<AdminRule>,
    pub egress: Vec<AdminRule>,
}

impl CompiledAdmin {
    pub fn rules(&self, dir: Direction) -> &[AdminRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What became of an invalid rule or peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consequence {
    /// An `Allow` rule that failed closed: it matches nothing.
    RuleMatchesNothing,
    /// A `Deny`/`Pass` rule that failed closed: it denies every connection.
    RuleDeniesAll,
    /// Only this peer matches nothing (`domainNames`).
    PeerMatchesNothing,
}

impl fmt::Display for Consequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consequence::RuleMatchesNothing => "the rule matches nothing (fail closed)",
            Consequence::RuleDeniesAll => "the rule denies all traffic (fail closed)",
            Consequence::PeerMatchesNothing => "the peer matches nothing",
        })
    }
}

/// What is wrong with an ANP/BANP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminPolicyError {
    #[error("{kind} {name}: {reason}; the policy is ignored")]
    Ignored {
        kind: AdminKind,
        name: String,
        reason: String,
    },
    #[error("{kind} {name}: {dir} rule {index}{label}: {reason}; {consequence}")]
    Rule {
        kind: AdminKind,
        name: String,
        dir: &'static str,
        index: usize,
        /// ` ("rule name")` or empty.
        label: String,
        reason: String,
        consequence: Consequence,
    },
}

impl AdminPolicyError {
    /// The object the error is about.
    pub fn object(&self) -> (AdminKind, &str) {
        match self {
            AdminPolicyError::Ignored { kind, name, .. }
            | AdminPolicyError::Rule { kind, name, .. } => (*kind, name),
        }
    }
}

/// Compiles an ANP. `Err`: the object applies to nothing; `Ok` may carry
/// rule-level errors (those rules failed closed).
pub fn compile_admin(
    name: &str,
    anp: &AdminNetworkPolicy,
) -> Result<(CompiledAdmin, Vec<AdminPolicyError>), AdminPolicyError> {
    let kind = AdminKind::Admin;
    let ignored = |reason: String| AdminPolicyError::Ignored {
        kind,
        name: name.to_string(),
        reason,
    };
    let p = anp.spec.priority;
    let priority = u16::try_from(p)
        .ok()
        .filter(|p| i32::from(*p) <= MAX_PRIORITY)
        .ok_or_else(|| ignored(format!("spec.priority {p} is not in 0..={MAX_PRIORITY}")))?;
    let subject = compile_subject(&anp.spec.subject).map_err(ignored)?;
    let mut cx = Cx {
        kind,
        name,
        errors: Vec::new(),
    };
    let ingress = cx.rules(
        Direction::Ingress,
        anp.spec.ingress.iter().map(|r| {
            (
                r.name.as_deref(),
                &r.action,
                &r.from[..],
                r.ports.as_deref(),
            )
        }),
    );
    let egress = cx.rules(
        Direction::Egress,
        anp.spec
            .egress
            .iter()
            .map(|r| (r.name.as_deref(), &r.action, &r.to[..], r.ports.as_deref())),
    );
    Ok((
        CompiledAdmin {
            kind,
            name: name.to_string(),
            priority: Some(priority),
            subject,
            ingress,
            egress,
        },
        cx.errors,
    ))
}

/// Compiles a BANP (only `default` applies; others are `Err`).
pub fn compile_baseline(
    name: &str,
    banp: &BaselineAdminNetworkPolicy,
) -> Result<(CompiledAdmin, Vec<AdminPolicyError>), AdminPolicyError> {
    let kind = AdminKind::Baseline;
    let ignored = |reason: String| AdminPolicyError::Ignored {
        kind,
        name: name.to_string(),
        reason,
    };
    if name != BASELINE_NAME {
        return Err(ignored(format!(
            "only the one named {BASELINE_NAME:?} applies"
        )));
    }
    let subject = compile_subject(&banp.spec.subject).map_err(ignored)?;
    let mut cx = Cx {
        kind,
        name,
        errors: Vec::new(),
    };
    let ingress = cx.rules(
        Direction::Ingress,
        banp.spec.ingress.iter().map(|r| {
            (
                r.name.as_deref(),
                &r.action,
                &r.from[..],
                r.ports.as_deref(),
            )
        }),
    );
    let egress = cx.rules(
        Direction::Egress,
        banp.spec
            .egress
            .iter()
            .map(|r| (r.name.as_deref(), &r.action, &r.to[..], r.ports.as_deref())),
    );
    Ok((
        CompiledAdmin {
            kind,
            name: name.to_string(),
            priority: None,
            subject,
            ingress,
            egress,
        },
        cx.errors,
    ))
}

fn selector(s: &LabelSelector, field: &str) -> Result<Selector, String> {
    Selector::compile(s).map_err(|e| format!("{field}: {e}"))
}

fn compile_subject(s: &Subject) -> Result<AdminSubject, String> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok(AdminSubject {
            namespaces: selector(ns, "spec.subject.namespaces")?,
            pods: Selector::everything(),
        }),
        (None, Some(p)) => Ok(AdminSubject {
            namespaces: selector(&p.namespace_selector, "spec.subject.pods.namespaceSelector")?,
            pods: selector(&p.pod_selector, "spec.subject.pods.podSelector")?,
        }),
        _ => Err("spec.subject must set exactly one of namespaces and pods".into()),
    }
}

/// One rule as written: (name, action, peers, ports).
type RawRule<'a> = (
    Option<&'a str>,
    &'a RuleAction,
    &'a [AdminPeer],
    Option<&'a [AdminPort]>,
);

struct Cx<'a> {
    kind: AdminKind,
    name: &'a str,
    errors: Vec<AdminPolicyError>,
}

impl Cx<'_> {
    fn error(
        &mut self,
        dir: Direction,
        index: usize,
        rule: Option<&str>,
        reason: String,
        consequence: Consequence,
    ) {
        self.errors.push(AdminPolicyError::Rule {
            kind: self.kind,
            name: self.name.to_string(),
            dir: dir.as_str(),
            index,
            label: rule.map(|n| format!(" ({n:?})")).unwrap_or_default(),
            reason,
            consequence,
        });
    }

    fn rules<'r>(
        &mut self,
        dir: Direction,
        raw: impl Iterator<Item = RawRule<'r>>,
    ) -> Vec<AdminRule> {
        let mut out = Vec::new();
        for (index, (name, action, peers, ports)) in raw.enumerate() {
            let act = match (action, self.kind) {
                (RuleAction::Allow, _) => Ok(Action::Allow),
                (RuleAction::Deny, _) => Ok(Action::Deny),
                (RuleAction::Pass, AdminKind::Admin) => Ok(Action::Pass),
                (other, _) => Err(format!("action {:?} is not valid here", other.to_string())),
            };
            let compiled = act.and_then(|a| {
                let (rule, unsupported) = compile_rule(self.kind, dir, a, peers, ports)?;
                Ok((a, rule, unsupported))
            });
            match compiled {
                Ok((action, rule, unsupported)) => {
                    for reason in unsupported {
                        self.error(dir, index, name, reason, Consequence::PeerMatchesNothing);
                    }
                    out.push(AdminRule {
                        index,
                        name: name.map(str::to_string),
                        action,
                        rule,
                    });
                }
                Err(reason) => {
                    if matches!(action, RuleAction::Allow) {
                        self.error(dir, index, name, reason, Consequence::RuleMatchesNothing);
                    } else {
                        self.error(dir, index, name, reason, Consequence::RuleDeniesAll);
                        out.push(AdminRule {
                            index,
                            name: name.map(str::to_string),
                            action: Action::Deny,
                            rule: Rule {
                                peers: None,
                                ports: None,
                            },
                        });
                    }
                }
            }
        }
        out
    }
}

/// A valid rule, and the reasons of peers that match nothing.
fn compile_rule(
    kind: AdminKind,
    dir: Direction,
    action: Action,
    peers: &[AdminPeer],
    ports: Option<&[AdminPort]>,
) -> Result<(Rule, Vec<String>), String> {
    let list = match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    if peers.is_empty() {
        return Err(format!("{list} needs at least one peer"));
    }
    let mut out = BTreeSet::new();
    let mut unsupported = Vec::new();
    let mut non_pod_peer = false;
    for (i, p) in peers.iter().enumerate() {
        match compile_peer(kind, dir, action, p).map_err(|e| format!("{list}[{i}]: {e}"))? {
            PeerOutcome::Peer(peer) => {
                non_pod_peer |= !matches!(peer, Peer::Pods(_));
                out.insert(peer);
            }
            PeerOutcome::Nothing(reason) => {
                non_pod_peer = true;
                unsupported.push(format!("{list}[{i}]: {reason}"));
            }
        }
    }
    let ports = match ports {
        None => None,
        Some([]) => return Err("ports, when present, needs at least one port".into()),
        Some(list) => {
            let mut v = BTreeSet::new();
            for (i, p) in list.iter().enumerate() {
                for port in compile_port(p).map_err(|e| format!("ports[{i}]: {e}"))? {
                    if non_pod_peer && matches!(port, Port::Named { .. }) {
                        return Err(format!(
                            "ports[{i}]: a namedPort cannot be used with nodes, networks or domainNames peers"
                        ));
                    }
                    v.insert(port);
                }
            }
            Some(v.into_iter().collect())
        }
    };
    Ok((
        Rule {
            peers: Some(out.into_iter().collect()),
            ports,
        },
        unsupported,
    ))
}

enum PeerOutcome {
    Peer(Peer),
    /// A valid peer we do not implement: it matches nothing.
    Nothing(String),
}

fn compile_peer(
    kind: AdminKind,
    dir: Direction,
    action: Action,
    p: &AdminPeer,
) -> Result<PeerOutcome, String> {
    if !p.unknown.is_empty() {
        let names: Vec<&str> = p.unknown.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown peer field(s) {names:?} (a peer type this version does not know)"
        ));
    }
    let set = [
        ("namespaces", p.namespaces.is_some()),
        ("pods", p.pods.is_some()),
        ("nodes", p.nodes.is_some()),
        ("networks", p.networks.is_some()),
        ("domainNames", p.domain_names.is_some()),
    ];
    let named: Vec<&str> = set.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
    let [field] = named[..] else {
        return Err(format!(
            "exactly one of namespaces, pods, nodes, networks, domainNames must be set (found {named:?})"
        ));
    };
    if dir == Direction::Ingress && !matches!(field, "namespaces" | "pods") {
        return Err(format!("{field} is not an ingress peer"));
    }
    if let Some(s) = &p.namespaces {
        return Ok(PeerOutcome::Peer(Peer::Pods(PodPeer {
            ns: NsScope::Matching(selector(s, "namespaces")?),
            pods: Selector::everything(),
        })));
    }
    if let Some(np) = &p.pods {
        return Ok(PeerOutcome::Peer(Peer::Pods(PodPeer {
            ns: NsScope::Matching(selector(&np.namespace_selector, "pods.namespaceSelector")?),
            pods: selector(&np.pod_selector, "pods.podSelector")?,
        })));
    }
    if let Some(s) = &p.nodes {
        return Ok(PeerOutcome::Peer(Peer::Nodes(selector(s, "nodes")?)));
    }
    if let Some(nets) = &p.networks {
        if nets.is_empty() {
            return Err("networks needs at least one CIDR".into());
        }
        let mut ranges = Vec::new();
        for n in nets {
            if !n.contains('/') {
                return Err(format!("networks: {n:?} is not in CIDR notation"));
            }
            let net: IpNetwork = n.parse().map_err(|e| format!("networks: {n:?}: {e}"))?;
            ranges.push(AddrRange::of_net(&net));
        }
        return Ok(PeerOutcome::Peer(Peer::Block(union(ranges))));
    }
    // domainNames
    if kind == AdminKind::Baseline || action != Action::Allow {
        return Err("domainNames is only valid in AdminNetworkPolicy Allow rules".into());
    }
    Ok(PeerOutcome::Nothing(
        "domainNames peers are not supported".into(),
    ))
}

fn protocol(p: &Option<String>) -> Result<Protocol, String> {
    Protocol::parse(p.as_deref()).map_err(|e| e.to_string())
}

fn port_number(v: i32, what: &str) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|v| *v != 0)
        .ok_or_else(|| format!("{what} {v} is not in 1..=65535"))
}

/// One `ports` entry; a named port stands for that name in every protocol
/// (the container port's own protocol decides).
fn compile_port(p: &AdminPort) -> Result<Vec<Port>, String> {
    match (&p.port_number, &p.named_port, &p.port_range) {
        (Some(n), None, None) => {
            let port = port_number(n.port, "portNumber.port")?;
            Ok(vec![Port::Range {
                proto: protocol(&n.protocol)?,
                lo: port,
                hi: port,
            }])
        }
        (None, Some(name), None) => {
            if name.is_empty() || name.len() > 15 {
                return Err(format!("namedPort {name:?} must be 1 to 15 characters"));
            }
            Ok(Protocol::ALL
                .iter()
                .map(|proto| Port::Named {
                    proto: *proto,
                    name: name.clone(),
                })
                .collect())
        }
        (None, None, Some(r)) => {
            let lo = port_number(r.start, "portRange.start")?;
            let hi = port_number(r.end, "portRange.end")?;
            if hi < lo {
                return Err(format!("portRange.end {hi} is below start {lo}"));
            }
            Ok(vec![Port::Range {
                proto: protocol(&r.protocol)?,
                lo,
                hi,
            }])
        }
        _ => Err("exactly one of portNumber, namedPort, portRange must be set".into()),
    }
}

#[cfg(test)]
mod tests;
