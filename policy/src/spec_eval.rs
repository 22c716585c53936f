//! An evaluator written straight from the Kubernetes NetworkPolicy spec: given
//! the cluster and one connection attempt, is it allowed?
//!
//! It is the oracle of the conformance tests, so it deliberately shares no
//! code with the plan/render path (`compile`, `selector`, `plan`, `ruleset`,
//! `addr`): it reads the `NetworkPolicy` objects directly, one connection at
//! a time, with the simplest code that states the rules. Only the input data
//! types of [`crate::model`] are common.
//!
//! The spec, as implemented here (see also the crate docs):
//! 1. A connection from S to D is allowed iff S's egress allows it and D's
//!    ingress allows it. Addresses that are not (pod-network, unfinished)
//!    pods have no policy of their own.
//! 2. A pod is isolated for a direction iff some policy in its namespace
//!    selects it (`podSelector`) and that policy's types include the
//!    direction (`policyTypes`, defaulting to Ingress plus Egress when
//!    `egress` has rules). A non-isolated direction allows everything.
//! 3. An isolated direction allows a connection iff some rule of some
//!    selecting policy (for that direction) matches both a peer and a port;
//!    an empty/absent peer list or port list matches everything.
//! 4. Traffic between a pod and its own node (the node's addresses) is
//!    always allowed.
//! 5. Invalid input: a policy with an invalid `podSelector` or an unknown
//!    policy type applies to nothing; a rule with any invalid peer or port
//!    matches nothing (the policy still isolates).
//! 6. AdminNetworkPolicy tiers (see [`admin`]): for one direction of a pod,
//!    the first matching rule of the ANPs selecting it (by priority, then
//!    name; rules in written order) decides with `Allow`/`Deny`; `Pass`, or
//!    no match, leaves it to rules 2–3; a direction no NetworkPolicy
//!    isolates is then decided by the first matching rule of the BANP
//!    `default` if it selects the pod, else allowed. Rule 4 comes first.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{ClusterState, Labels, NAMESPACE_NAME_LABEL, PodInfo, PodPhase, Protocol};
use crate::selector::LabelLookup;

/// Layer-4 part of a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    /// TCP/UDP/SCTP to a destination port.
    Port(Protocol, u16),
    /// Any other IP protocol (by number), e.g. ICMP = 1.
    Other(u8),
}

/// The cluster as the evaluator sees it.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    pub state: &'a ClusterState,
    /// Addresses of each node, by node name.
    pub node_addrs: &'a BTreeMap<String, Vec<IpAddr>>,
}

/// The answer, with the reason (for test failure messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub why: String,
}

/// (peers, ports) of one rule as written.
type RawRule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

mod admin;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

impl Cluster<'_> {
    /// Is a new connection from `src` to `dst` allowed?
    pub fn allowed(&self, src: IpAddr, dst: IpAddr, l4: L4) -> Answer {
        let src_pod = self.pod_with_ip(src);
        let dst_pod = self.pod_with_ip(dst);
        if let Some(s) = src_pod {
            let (ok, why) = self.direction_allows(Dir::Egress, s, dst, dst_pod, l4);
            if !ok {
                return Answer {
                    allowed: false,
                    why: format!("egress of {}: {why}", s.key),
                };
            }
        }
        if let Some(d) = dst_pod {
            let (ok, why) = self.direction_allows(Dir::Ingress, d, src, src_pod, l4);
            if !ok {
                return Answer {
                    allowed: false,
                    why: format!("ingress of {}: {why}", d.key),
                };
            }
        }
        Answer {
            allowed: true,
            why: "allowed".into(),
        }
    }

    /// The pod (pod network, not finished) that owns an address.
    fn pod_with_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.state.pods.values().map(|p| &**p).find(|p| {
            !p.host_network
                && p.phase != PodPhase::Succeeded
                && p.phase != PodPhase::Failed
                && p.ips.contains(&ip)
        })
    }

    /// Does `pod`'s policy for `dir` allow talking with `peer_ip`?
    fn direction_allows(
        &self,
        dir: Dir,
        pod: &PodInfo,
        peer_ip: IpAddr,
        peer_pod: Option<&PodInfo>,
        l4: L4,
    ) -> (bool, String) {
        if let Some(node) = &pod.node_name
            && self
                .node_addrs
                .get(&**node)
                .is_some_and(|a| a.contains(&peer_ip))
        {
            return (true, "own node".into());
        }
        if let Some((allowed, why)) = self.admin_tier(dir, pod, peer_ip, peer_pod, l4) {
            return (allowed, why);
        }
        if let Some(answer) = self.network_policies(dir, pod, peer_ip, peer_pod, l4) {
            return answer;
        }
        if let Some((allowed, why)) = self.baseline_tier(dir, pod, peer_ip, peer_pod, l4) {
            return (allowed, why);
        }
        (true, "not isolated".into())
    }

    /// The NetworkPolicy verdict; `None` when none isolates `pod` for `dir`.
    fn network_policies(
        &self,
        dir: Dir,
        pod: &PodInfo,
        peer_ip: IpAddr,
        peer_pod: Option<&PodInfo>,
        l4: L4,
    ) -> Option<(bool, String)> {
        let mut isolated_by = Vec::new();
        for (key, np) in &self.state.policies {
            if *key.namespace != *pod.key.namespace {
                continue;
            }
            let Some(spec) = &np.spec else { continue };
            let empty = LabelSelector::default();
            match label_selector_matches(spec.pod_selector.as_ref().unwrap_or(&empty), &pod.labels)
            {
                Some(true) => {}
                _ => continue, // not selected, or invalid selector (applies to nothing)
            }
            let Some((ingress, egress)) = policy_types(np) else {
                continue;
            };
            let applies = match dir {
                Dir::Ingress => ingress,
                Dir::Egress => egress,
            };
            if !applies {
                continue;
            }
            isolated_by.push(key.to_string());
            // The rules of this direction.
            let rules: Vec<RawRule<'_>> = match dir {
                Dir::Ingress => spec
                    .ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect(),
                Dir::Egress => spec
                    .egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                    .collect(),
            };
            // Named ports are looked up on the destination pod.
            let dest_pod = match dir {
                Dir::Ingress => Some(pod),
                Dir::Egress => peer_pod,
            };
            for (i, (peers, ports)) in rules.into_iter().enumerate() {
                let peers = peers.map(Vec::as_slice).unwrap_or(&[]);
                let ports = ports.map(Vec::as_slice).unwrap_or(&[]);
                if !rule_is_valid(peers, ports) {
                    continue;
                }
                let peer_ok = peers.is_empty()
                    || peers
                        .iter()
                        .any(|p| self.peer_matches(p, &key.namespace, peer_ip, peer_pod));
                let port_ok =
                    ports.is_empty() || ports.iter().any(|p| port_matches(p, l4, dest_pod));
                if peer_ok && port_ok {
                    return Some((true, format!("{key} rule {i}")));
                }
            }
        }
        if isolated_by.is_empty() {
            None
        } else {
            Some((false, format!("no rule of {isolated_by:?} matches")))
        }
    }

    fn namespace_labels(&self, ns: &str) -> Labels {
        match self.state.namespaces.get(ns) {
            Some(n) => n.labels.clone(),
            None => Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())]),
        }
    }

    fn peer_matches(
        &self,
        peer: &NetworkPolicyPeer,
        policy_ns: &str,
        ip: IpAddr,
        pod: Option<&PodInfo>,
    ) -> bool {
        if let Some(b) = &peer.ip_block {
            let Some(true) = cidr_contains(&b.cidr, ip) else {
                return false;
            };
            return !b
                .except
                .iter()
                .flatten()
                .any(|e| cidr_contains(e, ip) == Some(true));
        }
        let Some(pod) = pod else { return false };
        let ns_ok = match &peer.namespace_selector {
            None => *pod.key.namespace == *policy_ns,
            Some(sel) => {
                label_selector_matches(sel, &self.namespace_labels(&pod.key.namespace))
                    == Some(true)
            }
        };
        let pod_ok = match &peer.pod_selector {
            None => true,
            Some(sel) => label_selector_matches(sel, &pod.labels) == Some(true),
        };
        ns_ok && pod_ok
    }
}

/// (ingress, egress) isolation of a policy; `None` when `policyTypes` is invalid.
fn policy_types(np: &NetworkPolicy) -> Option<(bool, bool)> {
    let spec = np.spec.as_ref()?;
    match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            let mut r = (false, false);
            for t in types {
                match t.as_str() {
                    "Ingress" => r.0 = true,
                    "Egress" => r.1 = true,
                    _ => return None,
                }
            }
            Some(r)
        }
        _ => Some((true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()))),
    }
}

/// `Some(matches)`, or `None` when the selector is invalid.
fn label_selector_matches(sel: &LabelSelector, labels: &impl LabelLookup) -> Option<bool> {
    let mut ok = true;
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.label(k) != Some(v.as_str()) {
            ok = false;
        }
    }
    for req in sel.match_expressions.iter().flatten() {
        if req.key.is_empty() {
            return None;
        }
        let values = req.values.as_deref().unwrap_or(&[]);
        let have = labels.label(&req.key);
        let m = match req.operator.as_str() {
            "In" if !values.is_empty() => have.is_some_and(|v| values.iter().any(|x| x == v)),
            "NotIn" if !values.is_empty() => have.is_none_or(|v| !values.iter().any(|x| x == v)),
            "Exists" if values.is_empty() => have.is_some(),
            "DoesNotExist" if values.is_empty() => have.is_none(),
            _ => return None,
        };
        if !m {
            ok = false;
        }
    }
    Some(ok)
}

/// Parses `a.b.c.d/n` or `v6/n` by hand; `Some(contains)` or `None` if invalid.
fn cidr_contains(cidr: &str, ip: IpAddr) -> Option<bool> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    let (a, b, bits) = match (addr, ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        (IpAddr::V4(_), _) => return (len <= 32).then_some(false),
        (IpAddr::V6(_), _) => return (len <= 128).then_some(false),
    };
    if len > bits {
        return None;
    }
    let shift = bits - len;
    Some(len == 0 || (a >> shift) == (b >> shift))
}

fn parse_proto(p: &NetworkPolicyPort) -> Option<Protocol> {
    match p.protocol.as_deref() {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The validity rules of the API (what `compile` must also reject).
fn rule_is_valid(peers: &[NetworkPolicyPeer], ports: &[NetworkPolicyPort]) -> bool {
    let peer_ok = |p: &NetworkPolicyPeer| match &p.ip_block {
        Some(b) => {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                return false;
            }
            let Some((net, len)) = b.cidr.split_once('/') else {
                return false;
            };
            let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
                return false;
            };
            let bits = if net.is_ipv4() { 32 } else { 128 };
            if len > bits {
                return false;
            }
            b.except.iter().flatten().all(|e| {
                // Inside the cidr: its network address is in the cidr and it is
                // at least as long.
                let Some((en, el)) = e.split_once('/') else {
                    return false;
                };
                let (Ok(en), Ok(el)) = (en.parse::<IpAddr>(), el.parse::<u32>()) else {
                    return false;
                };
                en.is_ipv4() == net.is_ipv4()
                    && el <= bits
                    && el >= len
                    && cidr_contains(&b.cidr, en) == Some(true)
            })
        }
        None => {
            if p.pod_selector.is_none() && p.namespace_selector.is_none() {
                return false;
            }
            let empty = Labels::new();
            p.pod_selector
                .iter()
                .chain(p.namespace_selector.iter())
                .all(|s| label_selector_matches(s, &empty).is_some())
        }
    };
    let port_ok = |p: &NetworkPolicyPort| {
        if parse_proto(p).is_none() {
            return false;
        }
        match (&p.port, p.end_port) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(IntOrString::Int(n)), end) => {
                (1..=65535).contains(n) && end.is_none_or(|e| (*n..=65535).contains(&e))
            }
            (Some(IntOrString::String(name)), None) => (1..=15).contains(&name.len()),
            (Some(IntOrString::String(_)), Some(_)) => false,
        }
    };
    peers.iter().all(peer_ok) && ports.iter().all(port_ok)
}

fn port_matches(p: &NetworkPolicyPort, l4: L4, dest_pod: Option<&PodInfo>) -> bool {
    let L4::Port(proto, port) = l4 else {
        return false;
    };
    if parse_proto(p) != Some(proto) {
        return false;
    }
    match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let lo = *n;
            let hi = p.end_port.unwrap_or(lo);
            (lo..=hi).contains(&i32::from(port))
        }
        Some(IntOrString::String(name)) => dest_pod.is_some_and(|d| {
            d.ports.iter().any(|cp| {
                cp.name.as_deref() == Some(name.as_str()) && cp.protocol == proto && cp.port == port
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains_by_hand() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            cidr_contains("198.19.0.0/24", ip("198.19.0.200")),
            Some(true)
        );
        assert_eq!(
            cidr_contains("198.19.0.0/24", ip("198.19.1.0")),
            Some(false)
        );
        assert_eq!(cidr_contains("0.0.0.0/0", ip("1.2.3.4")), Some(true));
        assert_eq!(cidr_contains("0.0.0.0/0", ip("2001:db8::1")), Some(false));
        assert_eq!(
            cidr_contains("2001:db8::/32", ip("2001:db8:1::1")),
            Some(true)
        );
        assert_eq!(cidr_contains("198.19.0.0/33", ip("198.19.0.1")), None);
        assert_eq!(cidr_contains("nope", ip("198.19.0.1")), None);
        assert_eq!(cidr_contains("198.19.0.5/32", ip("198.19.0.5")), Some(true));
    }
}
