//! Host protection: policy for the node's own interfaces (traffic to and
//! from processes of the host: sshd, kubelet, BIRD, the agent), compiled
//! into their own table `inet margay_host` on the `input` and `output`
//! hooks; pod traffic (`forward`) stays with NetworkPolicy/ANP, except that
//! a policy with `applyOnForward` also polices what the node forwards
//! through the interfaces it protects (see [`HostNetworkPolicySpec`]).
//!
//! # Design (Calico's host endpoints, with NetworkPolicy's shape)
//! * A [`HostEndpointSpec`] (CRD `HostEndpoint`, cluster-scoped, like
//!   Calico's) names a `node`, an `interfaceName` (`*` or absent: every
//!   interface of the node) and `expectedIPs`; its labels are the object's
//!   labels.
//! * A [`HostNetworkPolicySpec`] (CRD `HostNetworkPolicy`, cluster-scoped,
//!   Margay's own) selects host endpoints by label and lists what is
//!   *allowed*, exactly like a NetworkPolicy: `policyTypes`, `ingress[].from`,
//!   `egress[].to`, `ports` (number, range, protocol). Peers are `ipBlock`
//!   (with `except`) or `hostEndpointSelector` (the `expectedIPs` of the host
//!   endpoints it selects, on any node). A host endpoint is isolated for a
//!   direction once a policy selects it for that direction; then only the
//!   union of the rules passes. Without a selecting policy nothing changes
//!   (unlike Calico, whose host endpoint alone denies: here creating a
//!   `HostEndpoint` is harmless, only a policy closes anything).
//!   ANP `nodes` *subjects* are not part of the network-policy-api, and ANP
//!   has no host subject; a separate, allow-only kind keeps the pod tiers
//!   untouched and the failsafe semantics simple.
//! * An interface's own host endpoint, when it isolates a direction, decides
//!   alone; otherwise a `*` endpoint of the node does. Two endpoints for the
//!   same node and interface: the first by name applies, the other is an issue.
//!
//! # What no policy can close
//! Before any host endpoint is consulted (`input` / `output`, in order):
//! loopback; the workload interfaces (`cali*`: a pod and its own node always
//! talk, as for pods); conntrack established/related (replies, also of
//! connections the node opened); the **failsafe ports** ([`Failsafe`],
//! Calico's `FailsafeInboundHostPorts`/`FailsafeOutboundHostPorts`: inbound
//! by destination port, outbound by destination port); IPv6 neighbour and
//! router discovery. A policy that denies everything still leaves the node
//! reachable for SSH, the API server, the kubelet, BGP, BFD, the agent and
//! DHCP, and able to reach the API server, its BGP peers and DNS.
//!
//! # Applying
//! The host table is small and changes rarely: [`HostRuleset`] renders it
//! whole and [`HostRuleset::apply_batch`] replaces it in one transaction (packets
//! see the old or the new table, established flows go on through conntrack);
//! the caller applies only when the rendered table differs from the last one
//! applied. Rule counters restart when the table is replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::addr::{AddrRange, subtract, union};
use crate::compile::Direction;
use crate::model::{Labels, Protocol};
use crate::selector::Selector;

pub mod render;

pub use render::{HOST_TABLE, HostRuleset};

/// Spec of a `HostEndpoint`: one interface (or all) of one node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostEndpointSpec {
    /// The node (its Kubernetes name).
    pub node: String,
    /// The interface; `*` or absent: every interface of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// The endpoint's addresses, as `hostEndpointSelector` peers of host
    /// policies see it.
    #[serde(default, rename = "expectedIPs", skip_serializing_if = "Vec::is_empty")]
    pub expected_ips: Vec<String>,
}

/// Spec of a `HostNetworkPolicy` (allow rules, NetworkPolicy-like).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostNetworkPolicySpec {
    /// The host endpoints (by their labels) this policy isolates.
    pub host_endpoint_selector: LabelSelector,
    /// `Ingress` and/or `Egress`; absent: `Ingress`, plus `Egress` when
    /// `egress` has rules (as NetworkPolicy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<HostRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<HostRule>,
    /// Also police traffic the node *forwards* through the host endpoints
    /// it selects (Calico's `applyOnForward`): a packet entering on such an
    /// interface meets its ingress rules, one leaving on it its egress
    /// rules, in the `forward` hook. Pod-to-pod traffic that crosses no
    /// host interface is never affected; the failsafe ports (traffic to
    /// and from the node itself) stay open. Default: off (host traffic
    /// only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub apply_on_forward: bool,
}

/// One allow rule. Empty `from`/`to`: every peer; empty `ports`: every port
/// and protocol.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostRule {
    /// Sources (ingress rules only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<HostPeer>,
    /// Destinations (egress rules only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<HostPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<HostPort>,
}

/// A peer: exactly one of the fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<HostIpBlock>,
    /// Host endpoints (any node) by label: their `expectedIPs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_endpoint_selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostIpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// `protocol` (TCP, UDP, SCTP; default TCP), `port` (absent: all) and
/// `endPort` (a range `port..=endPort`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// One `proto:port` that no host policy can close (Calico's spelling:
/// `tcp:22`, `udp:3784`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FailsafePort {
    pub protocol: Protocol,
    pub port: u16,
}

impl FromStr for FailsafePort {
    type Err = HostError;

    fn from_str(s: &str) -> Result<FailsafePort, HostError> {
        let bad = || HostError::BadFailsafe(s.to_string());
        let (p, port) = s.split_once(':').ok_or_else(bad)?;
        let protocol = match p.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return Err(bad()),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(FailsafePort { protocol, port })
    }
}

impl fmt::Display for FailsafePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol.nft_name(), self.port)
    }
}

/// The failsafe ports, by direction (destination ports both ways).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failsafe {
    pub inbound: BTreeSet<FailsafePort>,
    pub outbound: BTreeSet<FailsafePort>,
}

/// Inbound: SSH, BGP, API server, kubelet, DHCP client, BFD (single- and
/// multi-hop); the agent's own ports are added by [`Failsafe::defaults`].
pub const DEFAULT_INBOUND: &[&str] = &[
    "tcp:22",
    "tcp:179",
    "tcp:6443",
    "tcp:10250",
    "udp:68",
    "udp:3784",
    "udp:4784",
];
/// Outbound: BGP, API server, DNS, DHCP server, BFD.
pub const DEFAULT_OUTBOUND: &[&str] = &[
    "tcp:179", "tcp:6443", "udp:53", "tcp:53", "udp:67", "udp:3784", "udp:4784",
];

impl Failsafe {
    /// The defaults plus the agent's own TCP ports (health, metrics).
    pub fn defaults(agent_ports: &[u16]) -> Failsafe {
        let parse = |l: &[&str]| -> BTreeSet<FailsafePort> {
            l.iter().filter_map(|s| s.parse().ok()).collect()
        };
        let mut f = Failsafe {
            inbound: parse(DEFAULT_INBOUND),
            outbound: parse(DEFAULT_OUTBOUND),
        };
        f.inbound.extend(
            agent_ports
                .iter()
                .filter(|p| **p != 0)
                .map(|p| FailsafePort {
                    protocol: Protocol::Tcp,
                    port: *p,
                }),
        );
        f
    }

    /// Lists as configured (`tcp:22,udp:68`); an empty text: none.
    pub fn parse(inbound: &str, outbound: &str) -> Result<Failsafe, HostError> {
        let list = |s: &str| -> Result<BTreeSet<FailsafePort>, HostError> {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(FailsafePort::from_str)
                .collect()
        };
        Ok(Failsafe {
            inbound: list(inbound)?,
            outbound: list(outbound)?,
        })
    }

    pub fn get(&self, dir: Direction) -> &BTreeSet<FailsafePort> {
        match dir {
            Direction::Ingress => &self.inbound,
            Direction::Egress => &self.outbound,
        }
    }
}

/// A host endpoint as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEndpoint {
    pub name: String,
    pub labels: Labels,
    pub spec: HostEndpointSpec,
}

/// A host policy as the agent knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPolicy {
    pub name: String,
    pub spec: HostNetworkPolicySpec,
}

/// Every host endpoint and host policy of the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostState {
    pub endpoints: BTreeMap<String, HostEndpoint>,
    pub policies: BTreeMap<String, HostPolicy>,
}

/// This node's side of host protection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    pub node: String,
    /// Workload interface prefix (`cali`): never host-policed.
    pub iface_prefix: String,
    pub failsafe: Failsafe,
    /// Log denied packets (see [`crate::flowlog`]).
    pub deny_log: Option<crate::flowlog::DenyLog>,
}

/// Something wrong in the input, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("failsafe port {0:?}: expected <tcp|udp|sctp>:<1-65535>")]
    BadFailsafe(String),
    #[error("HostNetworkPolicy {policy}: {what} (policy ignored)")]
    Policy { policy: String, what: String },
    #[error("HostNetworkPolicy {policy} {dir}[{index}]: {what} (rule ignored: it allows nothing)")]
    Rule {
        policy: String,
        dir: &'static str,
        index: usize,
        what: String,
    },
    #[error("HostEndpoint {endpoint}: {what} (endpoint ignored)")]
    Endpoint { endpoint: String, what: String },
}

/// Which interface a host endpoint covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostIface {
    Named(String),
    All,
}

/// Port ranges (`None`: any port).
type Ports = Option<BTreeSet<(Protocol, u16, u16)>>;

/// A compiled peer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerC {
    Block(Vec<AddrRange>),
    Endpoints(Selector),
}

/// A compiled rule: `peers` `None` = any; `ports` `None` = any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleC {
    index: u32,
    peers: Option<Vec<PeerC>>,
    ports: Option<BTreeSet<(Protocol, u16, u16)>>,
}

#[derive(Debug, Clone)]
struct PolicyC {
    name: String,
    selector: Selector,
    ingress: Option<Vec<RuleC>>,
    egress: Option<Vec<RuleC>>,
    forward: bool,
}

/// One allow line set of a planned direction: the addresses (per family:
/// `None` = any) and ports (`None` = any) of one policy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostRulePlan {
    pub policy: String,
    pub index: u32,
    /// `None`: every peer. `Some(empty)`: no peer (the rule matches nothing).
    pub peers: Option<Vec<AddrRange>>,
    pub ports: Option<BTreeSet<(Protocol, u16, u16)>>,
}

/// The plan of one host endpoint: per direction, `None` = not isolated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostDirs {
    pub ingress: Option<Vec<HostRulePlan>>,
    pub egress: Option<Vec<HostRulePlan>>,
}

impl HostDirs {
    pub fn get(&self, dir: Direction) -> &Option<Vec<HostRulePlan>> {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What host protection does on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    pub config: HostConfig,
    /// Traffic to and from the host (input / output hooks).
    pub ifaces: BTreeMap<HostIface, HostDirs>,
    /// Forwarded traffic (forward hook): the endpoints isolated by
    /// `applyOnForward` policies, with those policies' rules only.
    pub forward: BTreeMap<HostIface, HostDirs>,
    pub issues: Vec<HostError>,
}

fn parse_ranges(cidr: &str) -> Result<AddrRange, String> {
    cidr.parse::<IpNetwork>()
        .map(|n| AddrRange::of_net(&n))
        .map_err(|e| format!("bad CIDR {cidr:?}: {e}"))
}

fn compile_peer(p: &HostPeer) -> Result<PeerC, String> {
    match (&p.ip_block, &p.host_endpoint_selector) {
        (Some(b), None) => {
            let all = parse_ranges(&b.cidr)?;
            let except = b
                .except
                .iter()
                .map(|e| parse_ranges(e))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PeerC::Block(subtract(all, &except)))
        }
        (None, Some(sel)) => Selector::compile(sel)
            .map(PeerC::Endpoints)
            .map_err(|e| format!("hostEndpointSelector: {e}")),
        _ => Err("a peer needs exactly one of ipBlock, hostEndpointSelector".into()),
    }
}

fn compile_ports(ports: &[HostPort]) -> Result<Ports, String> {
    if ports.is_empty() {
        return Ok(None);
    }
    let mut out = BTreeSet::new();
    for p in ports {
        let proto = Protocol::parse(p.protocol.as_deref()).map_err(|e| e.to_string())?;
        let (lo, hi) = match (p.port, p.end_port) {
            (None, None) => (1, u16::MAX),
            (None, Some(_)) => return Err("endPort without port".into()),
            (Some(0), _) => return Err("port 0".into()),
            (Some(lo), None) => (lo, lo),
            (Some(lo), Some(hi)) if hi < lo => {
                return Err(format!("endPort {hi} below port {lo}"));
            }
            (Some(lo), Some(hi)) => (lo, hi),
        };
        out.insert((proto, lo, hi));
    }
    Ok(Some(out))
}

fn compile_policy(p: &HostPolicy, issues: &mut Vec<HostError>) -> Option<PolicyC> {
    let policy_err = |what: String| HostError::Policy {
        policy: p.name.clone(),
        what,
    };
    let selector = match Selector::compile(&p.spec.host_endpoint_selector) {
        Ok(s) => s,
        Err(e) => {
            issues.push(policy_err(format!("hostEndpointSelector: {e}")));
            return None;
        }
    };
    let (mut ing, mut eg) = (false, false);
    if p.spec.policy_types.is_empty() {
        ing = true;
        eg = !p.spec.egress.is_empty();
    }
    for t in &p.spec.policy_types {
        match t.as_str() {
            "Ingress" => ing = true,
            "Egress" => eg = true,
            other => {
                issues.push(policy_err(format!("unknown policy type {other:?}")));
                return None;
            }
        }
    }
    let rules = |dir: Direction, list: &[HostRule], issues: &mut Vec<HostError>| -> Vec<RuleC> {
        let mut out = Vec::new();
        for (index, r) in list.iter().enumerate() {
            let (peers, wrong) = match dir {
                Direction::Ingress => (&r.from, &r.to),
                Direction::Egress => (&r.to, &r.from),
            };
            let res = if !wrong.is_empty() {
                Err(format!(
                    "{} peers in a {} rule",
                    if dir == Direction::Ingress {
                        "to"
                    } else {
                        "from"
                    },
                    dir.as_str()
                ))
            } else {
                let peers: Result<Option<Vec<PeerC>>, String> = if peers.is_empty() {
                    Ok(None)
                } else {
                    peers
                        .iter()
                        .map(compile_peer)
                        .collect::<Result<_, _>>()
                        .map(Some)
                };
                peers.and_then(|peers| Ok((peers, compile_ports(&r.ports)?)))
            };
            match res {
                Ok((peers, ports)) => out.push(RuleC {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    peers,
                    ports,
                }),
                Err(what) => issues.push(HostError::Rule {
                    policy: p.name.clone(),
                    dir: dir.as_str(),
                    index,
                    what,
                }),
            }
        }
        out
    };
    Some(PolicyC {
        name: p.name.clone(),
        selector,
        ingress: ing.then(|| rules(Direction::Ingress, &p.spec.ingress, issues)),
        egress: eg.then(|| rules(Direction::Egress, &p.spec.egress, issues)),
        forward: p.spec.apply_on_forward,
    })
}

/// The `expectedIPs` of every host endpoint, parsed (bad ones reported).
fn endpoint_ips(state: &HostState, issues: &mut Vec<HostError>) -> BTreeMap<String, Vec<IpAddr>> {
    let mut out = BTreeMap::new();
    for ep in state.endpoints.values() {
        let mut ips = Vec::new();
        for s in &ep.spec.expected_ips {
            match s.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => issues.push(HostError::Endpoint {
                    endpoint: ep.name.clone(),
                    what: format!("expectedIPs: {s:?} is not an address (skipped)"),
                }),
            }
        }
        out.insert(ep.name.clone(), ips);
    }
    out
}

/// Plans host protection for `config.node`.
pub fn plan(state: &HostState, config: &HostConfig) -> HostPlan {
    let mut issues = Vec::new();
    let policies: Vec<PolicyC> = state
        .policies
        .values()
        .filter_map(|p| compile_policy(p, &mut issues))
        .collect();
    let ips = endpoint_ips(state, &mut issues);
    let mut ifaces: BTreeMap<HostIface, HostDirs> = BTreeMap::new();
    let mut forward: BTreeMap<HostIface, HostDirs> = BTreeMap::new();
    let mut owner: BTreeMap<HostIface, String> = BTreeMap::new();
    for ep in state.endpoints.values() {
        if ep.spec.node != config.node {
            continue;
        }
        let iface = match ep.spec.interface_name.as_deref() {
            None | Some("*") => HostIface::All,
            Some(name) => match crate::plan::check_iface(name, "") {
                Err(reason) => {
                    issues.push(HostError::Endpoint {
                        endpoint: ep.name.clone(),
                        what: format!("interfaceName {name:?} {reason}"),
                    });
                    continue;
                }
                Ok(()) if name.starts_with(&config.iface_prefix) => {
                    issues.push(HostError::Endpoint {
                        endpoint: ep.name.clone(),
                        what: format!("interfaceName {name:?} is a workload interface"),
                    });
                    continue;
                }
                Ok(()) => HostIface::Named(name.to_string()),
            },
        };
        if let Some(first) = owner.get(&iface) {
            issues.push(HostError::Endpoint {
                endpoint: ep.name.clone(),
                what: format!(
                    "{iface:?} on node {} is already HostEndpoint {first}",
                    config.node
                ),
            });
            continue;
        }
        owner.insert(iface.clone(), ep.name.clone());
        let selecting: Vec<&PolicyC> = policies
            .iter()
            .filter(|p| p.selector.matches(&ep.labels))
            .collect();
        let fwd = endpoint_dirs(state, &ips, selecting.iter().copied().filter(|p| p.forward));
        if fwd.ingress.is_some() || fwd.egress.is_some() {
            forward.insert(iface.clone(), fwd);
        }
        ifaces.insert(iface, endpoint_dirs(state, &ips, selecting.into_iter()));
    }
    HostPlan {
        config: config.clone(),
        ifaces,
        forward,
        issues,
    }
}

/// What the policies selecting one endpoint allow, per direction.
fn endpoint_dirs<'a>(
    state: &HostState,
    ips: &BTreeMap<String, Vec<IpAddr>>,
    policies: impl Iterator<Item = &'a PolicyC>,
) -> HostDirs {
    let mut dirs = HostDirs::default();
    for p in policies {
        for (dir, rules) in [
            (Direction::Ingress, &p.ingress),
            (Direction::Egress, &p.egress),
        ] {
            let Some(rules) = rules else { continue };
            let slot = match dir {
                Direction::Ingress => &mut dirs.ingress,
                Direction::Egress => &mut dirs.egress,
            };
            let out = slot.get_or_insert_with(Vec::new);
            for r in rules {
                out.push(HostRulePlan {
                    policy: p.name.clone(),
                    index: r.index,
                    peers: r.peers.as_ref().map(|peers| resolve(state, ips, peers)),
                    ports: r.ports.clone(),
                });
            }
        }
    }
    dirs
}

/// The address ranges of a rule's peers.
fn resolve(
    state: &HostState,
    ips: &BTreeMap<String, Vec<IpAddr>>,
    peers: &[PeerC],
) -> Vec<AddrRange> {
    let mut out = Vec::new();
    for p in peers {
        match p {
            PeerC::Block(r) => out.extend(r.iter().copied()),
            PeerC::Endpoints(sel) => {
                for ep in state.endpoints.values().filter(|e| sel.matches(&e.labels)) {
                    out.extend(
                        ips.get(&ep.name)
                            .into_iter()
                            .flatten()
                            .map(AddrRange::single),
                    );
                }
            }
        }
    }
    union(out)
}

#[cfg(test)]
mod tests;
