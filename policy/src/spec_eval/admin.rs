//! The oracle's AdminNetworkPolicy / BaselineAdminNetworkPolicy tiers,
//! written from the network-policy-api v1alpha1 reference (API types and
//! their documentation), reading the typed objects directly and sharing no
//! code with `compile`/`plan`/`ruleset`:
//!
//! * ANPs are consulted by `spec.priority` (lower first); equal priorities,
//!   which the API leaves undefined, by name. Within an ANP, its rules for
//!   the direction in written order. The first rule whose peers and ports
//!   match decides: `Allow`/`Deny` are final, `Pass` ends the ANP tier.
//! * The BANP (only the object named `default`) is consulted only when no
//!   NetworkPolicy isolates the direction; its first matching rule decides.
//! * Subjects and pod peers never include host-network pods (the oracle
//!   only evaluates pod-network pods); `nodes` peers are the `status`
//!   addresses of matching nodes; `networks` match any address; `namedPort`
//!   matches a container port of that name (and the connection's protocol)
//!   on the destination pod.
//! * Invalid input. An object with `priority` outside 0..=1000, a subject
//!   that is not exactly one valid selector, or (BANP) a name other than
//!   `default` applies to nothing. An invalid rule fails closed, as the API
//!   prescribes for peers it cannot read: an `Allow` rule matches nothing,
//!   any other rule (`Deny`, `Pass`, unknown action) denies every
//!   connection. A `domainNames` peer (not implemented) matches nothing.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::admin::{AdminPeer, AdminPort, RuleAction, Subject};
use crate::model::{Labels, PodInfo, Protocol};

use super::{Cluster, Dir, L4, cidr_contains, label_selector_matches};

/// ANP or BANP: they differ in the actions and peers they accept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    Admin,
    Baseline,
}

/// What a rule does to a connection it matches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Effect {
    Allow,
    Deny,
    Pass,
}

/// One rule as written.
struct RuleView<'a> {
    action: &'a RuleAction,
    peers: &'a [AdminPeer],
    ports: Option<&'a Vec<AdminPort>>,
}

impl Cluster<'_> {
    /// The ANP tier: `Some((allowed, why))` when an `Allow`/`Deny` rule
    /// decides; `None` after a `Pass` or when no rule matches.
    pub(super) fn admin_tier(
        &self,
        dir: Dir,
        pod: &PodInfo,
        peer_ip: IpAddr,
        peer_pod: Option<&PodInfo>,
        l4: L4,
    ) -> Option<(bool, String)> {
        let mut anps: Vec<_> = self
            .state
            .admin_policies
            .iter()
            .filter(|(_, a)| (0..=1000).contains(&a.spec.priority))
            .collect();
        // The map iterates by name; a stable sort keeps that among equals.
        anps.sort_by_key(|(_, a)| a.spec.priority);
        for (name, a) in anps {
            if self.subject_selects(&a.spec.subject, pod) != Some(true) {
                continue;
            }
            let rules = rules_of(dir, &a.spec.ingress, &a.spec.egress);
            for (i, r) in rules.iter().enumerate() {
                let Some(effect) =
                    self.rule_effect(Tier::Admin, dir, r, pod, peer_ip, peer_pod, l4)
                else {
                    continue;
                };
                let why = format!("ANP {name} (priority {}) rule {i}", a.spec.priority);
                return match effect {
                    Effect::Allow => Some((true, format!("allowed by {why}"))),
                    Effect::Deny => Some((false, format!("denied by {why}"))),
                    Effect::Pass => None,
                };
            }
        }
        None
    }

    /// The BANP tier (call only when no NetworkPolicy isolates `dir`).
    pub(super) fn baseline_tier(
        &self,
        dir: Dir,
        pod: &PodInfo,
        peer_ip: IpAddr,
        peer_pod: Option<&PodInfo>,
        l4: L4,
    ) -> Option<(bool, String)> {
        let b = self.state.baseline_policies.get("default")?;
        if self.subject_selects(&b.spec.subject, pod) != Some(true) {
            return None;
        }
        let rules = rules_of(dir, &b.spec.ingress, &b.spec.egress);
        for (i, r) in rules.iter().enumerate() {
            match self.rule_effect(Tier::Baseline, dir, r, pod, peer_ip, peer_pod, l4) {
                Some(Effect::Allow) => return Some((true, format!("allowed by BANP rule {i}"))),
                Some(_) => return Some((false, format!("denied by BANP rule {i}"))),
                None => {}
            }
        }
        None
    }

    /// `Some(selects)`, or `None` when the subject is invalid.
    fn subject_selects(&self, s: &Subject, pod: &PodInfo) -> Option<bool> {
        let ns_labels = self.namespace_labels(&pod.key.namespace);
        match (&s.namespaces, &s.pods) {
            (Some(ns), None) => label_selector_matches(ns, &ns_labels),
            (None, Some(p)) => {
                let ns_ok = label_selector_matches(&p.namespace_selector, &ns_labels)?;
                let pod_ok = label_selector_matches(&p.pod_selector, &pod.labels)?;
                Some(ns_ok && pod_ok)
            }
            _ => None,
        }
    }

    /// What a rule does to this connection; `None`: it does not match.
    #[allow(clippy::too_many_arguments)]
    fn rule_effect(
        &self,
        tier: Tier,
        dir: Dir,
        r: &RuleView<'_>,
        pod: &PodInfo,
        peer_ip: IpAddr,
        peer_pod: Option<&PodInfo>,
        l4: L4,
    ) -> Option<Effect> {
        let effect = match (r.action, tier) {
            (RuleAction::Allow, _) => Effect::Allow,
            (RuleAction::Deny, _) => Effect::Deny,
            (RuleAction::Pass, Tier::Admin) => Effect::Pass,
            // Not an action of this tier: fail closed.
            _ => return Some(Effect::Deny),
        };
        if !rule_is_valid(tier, dir, effect, r) {
            return match effect {
                Effect::Allow => None,
                Effect::Deny | Effect::Pass => Some(Effect::Deny),
            };
        }
        let peer_ok = r
            .peers
            .iter()
            .any(|p| self.admin_peer_matches(p, peer_ip, peer_pod));
        // Named ports are looked up on the destination pod.
        let dest = match dir {
            Dir::Ingress => Some(pod),
            Dir::Egress => peer_pod,
        };
        let port_ok = match r.ports {
            None => true,
            Some(ports) => ports.iter().any(|p| admin_port_matches(p, l4, dest)),
        };
        (peer_ok && port_ok).then_some(effect)
    }

    fn admin_peer_matches(&self, p: &AdminPeer, ip: IpAddr, pod: Option<&PodInfo>) -> bool {
        if let Some(ns) = &p.namespaces {
            return pod.is_some_and(|pod| {
                label_selector_matches(ns, &self.namespace_labels(&pod.key.namespace)) == Some(true)
            });
        }
        if let Some(np) = &p.pods {
            return pod.is_some_and(|pod| {
                label_selector_matches(
                    &np.namespace_selector,
                    &self.namespace_labels(&pod.key.namespace),
                ) == Some(true)
                    && label_selector_matches(&np.pod_selector, &pod.labels) == Some(true)
            });
        }
        if let Some(sel) = &p.nodes {
            return self.state.nodes.values().any(|n| {
                label_selector_matches(sel, &n.labels) == Some(true) && n.addrs.contains(&ip)
            });
        }
        if let Some(nets) = &p.networks {
            return nets.iter().any(|c| cidr_contains(c, ip) == Some(true));
        }
        false // domainNames: not implemented
    }
}

fn rules_of<'a, I, E>(dir: Dir, ingress: &'a [I], egress: &'a [E]) -> Vec<RuleView<'a>>
where
    I: AsRule,
    E: AsRule,
{
    match dir {
        Dir::Ingress => ingress.iter().map(AsRule::view).collect(),
        Dir::Egress => egress.iter().map(AsRule::view).collect(),
    }
}

trait AsRule {
    fn view(&self) -> RuleView<'_>;
}

impl AsRule for crate::admin::IngressRule {
    fn view(&self) -> RuleView<'_> {
        RuleView {
            action: &self.action,
            peers: &self.from,
            ports: self.ports.as_ref(),
        }
    }
}

impl AsRule for crate::admin::EgressRule {
    fn view(&self) -> RuleView<'_> {
        RuleView {
            action: &self.action,
            peers: &self.to,
            ports: self.ports.as_ref(),
        }
    }
}

fn selector_ok(s: &LabelSelector) -> bool {
    label_selector_matches(s, &Labels::new()).is_some()
}

fn cidr_ok(c: &str) -> bool {
    let Some((addr, len)) = c.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(len)) = (addr.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    len <= if addr.is_ipv4() { 32 } else { 128 }
}

/// The API's constraints on a rule (what the compiler must also refuse).
fn rule_is_valid(tier: Tier, dir: Dir, effect: Effect, r: &RuleView<'_>) -> bool {
    if r.peers.is_empty() {
        return false;
    }
    let mut only_pod_peers = true;
    for p in r.peers {
        if !p.unknown.is_empty() {
            return false;
        }
        let count = usize::from(p.namespaces.is_some())
            + usize::from(p.pods.is_some())
            + usize::from(p.nodes.is_some())
            + usize::from(p.networks.is_some())
            + usize::from(p.domain_names.is_some());
        if count != 1 {
            return false;
        }
        let pod_peer = p.namespaces.is_some() || p.pods.is_some();
        if dir == Dir::Ingress && !pod_peer {
            return false;
        }
        only_pod_peers &= pod_peer;
        let ok = if let Some(s) = &p.namespaces {
            selector_ok(s)
        } else if let Some(np) = &p.pods {
            selector_ok(&np.namespace_selector) && selector_ok(&np.pod_selector)
        } else if let Some(s) = &p.nodes {
            selector_ok(s)
        } else if let Some(nets) = &p.networks {
            !nets.is_empty() && nets.iter().all(|c| cidr_ok(c))
        } else {
            tier == Tier::Admin && effect == Effect::Allow
        };
        if !ok {
            return false;
        }
    }
    let Some(ports) = r.ports else {
        return true;
    };
    let proto_ok = |p: &Option<String>| matches!(p.as_deref(), None | Some("TCP" | "UDP" | "SCTP"));
    let num_ok = |n: i32| (1..=65535).contains(&n);
    !ports.is_empty()
        && ports
            .iter()
            .all(|p| match (&p.port_number, &p.named_port, &p.port_range) {
                (Some(n), None, None) => proto_ok(&n.protocol) && num_ok(n.port),
                (None, Some(name), None) => (1..=15).contains(&name.len()) && only_pod_peers,
                (None, None, Some(r)) => {
                    proto_ok(&r.protocol) && num_ok(r.start) && num_ok(r.end) && r.start <= r.end
                }
                _ => false,
            })
}

fn proto_of(p: &Option<String>) -> Protocol {
    match p.as_deref() {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

fn admin_port_matches(p: &AdminPort, l4: L4, dest: Option<&PodInfo>) -> bool {
    let L4::Port(proto, port) = l4 else {
        return false;
    };
    if let Some(n) = &p.port_number {
        return proto_of(&n.protocol) == proto && i32::from(port) == n.port;
    }
    if let Some(r) = &p.port_range {
        return proto_of(&r.protocol) == proto && (r.start..=r.end).contains(&i32::from(port));
    }
    if let Some(name) = &p.named_port {
        return dest.is_some_and(|d| {
            d.ports.iter().any(|cp| {
                cp.name.as_deref() == Some(name.as_str()) && cp.protocol == proto && cp.port == port
            })
        });
    }
    false
}
