//! The desired content of `table inet margay`, as plain data that is cheap
//! to compare: named sets with their elements, chains with their rules, and
//! the endpoint dispatch maps. [`crate::nft`] turns it (or the difference
//! between two of them) into nftables commands.
//!
//! Layout (all names deterministic; content-addressed where noted):
//!
//! ```text
//! forward (hook forward): anti-spoof on cali* → ct established,related accept
//!                         → ct invalid drop
//!                         → iifname vmap @ep_egress    (egress of the sending pod)
//!                         → oifname vmap @ep_ingress   (ingress of the receiving pod)
//! input   (hook input):   anti-spoof on cali* (IPv6 link-local / :: exempt for ND)
//! ep_egress / ep_ingress  named verdict maps, iface → jump pe_/pi_, ae_/ai_ or be_/bi_ (or deny);
//!            no element = not isolated. One element per endpoint and direction:
//!            O(1) dispatch, and a local pod changing policies is one element.
//! pe_*/pi_*  content-addressed policy chains shared by endpoints with equal rules:
//!            node addresses allowed, one line per (peer set × family), then `drop`;
//!            rules whose peers are all pod selectors share one line per
//!            (ports × family) from MERGE_MIN such peers on, their members in
//!            one union set (u4_/u6_); the rest, pod-selector rules on few ports
//!            of their own, share one `addr . proto . port` line per family
//!            from COMBO_MIN of them on (c4_/c6_, see `combo.rs`)
//!            (egress allows with `return` so the receiver's ingress is still checked)
//! ai_/ae_, bi_/be_  AdminNetworkPolicy / BaselineAdminNetworkPolicy tier chains
//!            (content-addressed; `goto` the pi_/pe_ or bi_/be_ chain: see `tiers.rs`)
//! deny       `drop` (endpoints whose pod is unknown or finished)
//! sets: s4_/s6_<h(selector)> pod IPs (hash); u4_/u6_<h(selectors)> their union;   b4_/b6_<h(ranges)> ipBlock − except (interval)
//!       pt_<h(ranges)> proto . port (interval); n4_/n6_<h(peers,names)> addr . proto . port
//!       c4_/c6_<h(rules)> addr . proto . port of merged rules (members × ports)
//!       spoof4/spoof6 ifname . addr;            node4/node6 node addresses
//!       h4_/h6_<h(node selector)> addresses of the selected nodes (ANP `nodes` peers)
//!       natsrc4/natsrc6 pools with natOutgoing; pools4/pools6 every pool (interval)
//! postrouting (hook postrouting, type nat, srcnat): saddr @natsrc daddr != @pools
//!            → masquerade (outgoing NAT; empty sets: nothing is NATed)
//! ```
//!
//! Traffic between a pod and its own node never crosses `forward` (node → pod
//! leaves through `output`, pod → node arrives through `input`), so it is
//! allowed by construction; the node-address lines in policy chains also
//! cover node-sourced packets that are routed (e.g. from another netns).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use sha1::{Digest, Sha1};

use crate::addr::{AddrRange, Family, union};
use crate::compile::{Direction, Peer, PodPeer};
use crate::flowlog::DenyLog;
use crate::model::{ClusterState, Protocol};
use crate::origin::{RuleAction, RuleOrigin, fixed};
use crate::plan::{DirectionPlan, Plan, PortMatch, RulePlan, members};
use crate::selector::Selector;

mod combo;
mod fill;
mod tiers;

pub(crate) use fill::BuildCx;

pub(crate) use combo::elems_of_pod as combo_elems_of_pod;
pub use combo::{COMBO_MAX_PORTS, COMBO_MIN, ComboEntry, ComboKey, combo_set};

/// Kind (nftables type and flags) of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// `ipv4_addr` / `ipv6_addr`.
    Addr(Family),
    /// Same, `flags interval`.
    AddrInterval(Family),
    /// `inet_proto . inet_service`, `flags interval`.
    ProtoPort,
    /// `ipvX_addr . inet_proto . inet_service`.
    AddrProtoPort(Family),
    /// `ifname . ipvX_addr`.
    IfAddr(Family),
}

/// A set element.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    Addr(IpAddr),
    Range(AddrRange),
    ProtoPorts(Protocol, u16, u16),
    AddrProtoPort(IpAddr, Protocol, u16),
    IfAddr(String, IpAddr),
}

/// A named set and its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetIr {
    pub kind: SetKind,
    pub elems: BTreeSet<Elem>,
}

/// Which address of the packet a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrField {
    Saddr,
    Daddr,
}

/// One match of a rule (all of a rule's matches must hold).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// `ip saddr @set` (family picks `ip`/`ip6`).
    Addr(AddrField, Family, String),
    /// `meta l4proto . th dport @set`.
    ProtoPort(String),
    /// `ip daddr . meta l4proto . th dport @set`.
    AddrProtoPort(AddrField, Family, String),
}

/// Verdict of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Return,
    Drop,
    Goto(String),
    /// Not a verdict: `limit` + `log group` (denied-flow logging, placed
    /// before a `Drop` with the same matches); the packet goes on.
    Log(DenyLog),
}

/// A rule of a regular chain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleIr {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    /// What the rule stands for: its nft comment; every rule but a `Log`
    /// one has a counter (see [`crate::counters`]).
    pub origin: RuleOrigin,
}

impl RuleIr {
    /// nft-like text (also the input of content-addressed chain names).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for m in &self.matches {
            let _ = match m {
                Match::Addr(f, fam, set) => write!(s, "{} {} @{set} ", fam.nft_proto(), f.as_str()),
                Match::ProtoPort(set) => write!(s, "meta l4proto . th dport @{set} "),
                Match::AddrProtoPort(f, fam, set) => write!(
                    s,
                    "{} {} . meta l4proto . th dport @{set} ",
                    fam.nft_proto(),
                    f.as_str()
                ),
            };
        }
        if !matches!(self.verdict, Verdict::Log(_)) {
            s.push_str("counter ");
        }
        let _ = match &self.verdict {
            Verdict::Accept => write!(s, "accept"),
            Verdict::Return => write!(s, "return"),
            Verdict::Drop => write!(s, "drop"),
            Verdict::Goto(c) => write!(s, "goto {c}"),
            Verdict::Log(l) => write!(
                s,
                "limit rate {}/second burst {} packets log group {}",
                l.rate_per_second, l.burst, l.group
            ),
        };
        let _ = write!(s, " comment {:?}", self.origin.comment());
        s
    }
}

impl AddrField {
    pub fn as_str(self) -> &'static str {
        match self {
            AddrField::Saddr => "saddr",
            AddrField::Daddr => "daddr",
        }
    }
}

/// Where an endpoint's packets are judged, per direction (`None`: not
/// isolated, no map element).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dispatch {
    /// Chain for packets leaving the pod (`iifname` = iface).
    pub egress: Option<String>,
    /// Chain for packets going to the pod (`oifname` = iface).
    pub ingress: Option<String>,
}

impl Dispatch {
    pub fn get(&self, dir: Direction) -> &Option<String> {
        match dir {
            Direction::Egress => &self.egress,
            Direction::Ingress => &self.ingress,
        }
    }

    pub fn get_mut(&mut self, dir: Direction) -> &mut Option<String> {
        match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        }
    }
}

/// The desired content of `table inet margay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Workload interface prefix (`cali`), used by the anti-spoof rules.
    pub iface_prefix: String,
    pub sets: BTreeMap<String, SetIr>,
    /// Regular (non-base) chains: the policy chains and `deny`.
    pub chains: BTreeMap<String, Vec<RuleIr>>,
    /// Endpoint interface → its chains (the two verdict maps).
    pub dispatch: BTreeMap<String, Dispatch>,
    /// Log denied packets: a log rule before every `Drop` of the chains.
    pub deny_log: Option<DenyLog>,
}

pub const TABLE: &str = "margay";
/// The chain of endpoints that may send or receive nothing.
pub const DENY: &str = "deny";
/// The verdict maps, by direction.
pub const EGRESS_MAP: &str = "ep_egress";
pub const INGRESS_MAP: &str = "ep_ingress";
pub const SPOOF: &str = "spoof";
pub const NODE: &str = "node";
/// Sources whose traffic leaving the pools is masqueraded.
pub const NAT_SOURCES: &str = "natsrc";
/// Destinations never masqueraded to (every pool).
pub const POOLS: &str = "pools";

/// 64 bits of SHA-1 over a canonical text, as hex.
pub fn digest(parts: &[&str]) -> String {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let out = h.finalize();
    hex::encode(&out[..8])
}

/// `ingress` → the peer is the source; `egress` → the destination.
pub(crate) fn peer_field(dir: Direction) -> AddrField {
    match dir {
        Direction::Ingress => AddrField::Saddr,
        Direction::Egress => AddrField::Daddr,
    }
}

/// `<kind>i` / `<kind>e`: prefix of a content-addressed chain.
pub(crate) fn chain_prefix(kind: &str, dir: Direction) -> String {
    match dir {
        Direction::Ingress => format!("{kind}i"),
        Direction::Egress => format!("{kind}e"),
    }
}

pub(crate) fn fixed_set(base: &str, fam: Family) -> String {
    format!("{base}{}", fam.tag())
}

/// The elements of the four NAT sets for `nat` (ranges merged: an interval
/// set refuses overlapping elements).
pub fn nat_elems(nat: &crate::model::NatOutgoing) -> BTreeSet<(String, Elem)> {
    let mut out = BTreeSet::new();
    for (base, nets) in [(NAT_SOURCES, &nat.sources), (POOLS, &nat.pools)] {
        let ranges = crate::addr::union(nets.iter().map(AddrRange::of_net).collect());
        for r in ranges {
            out.insert((fixed_set(base, r.family), Elem::Range(r)));
        }
    }
    out
}

/// Name of the selector set of a peer.
pub fn selector_set(peer: &PodPeer, fam: Family) -> String {
    format!("s{}_{}", fam.tag(), digest(&[&peer.canonical()]))
}

/// Name of the node-address set of a `nodes` peer.
pub fn node_set(sel: &Selector, fam: Family) -> String {
    format!("h{}_{}", fam.tag(), digest(&["nodes", &sel.canonical()]))
}

/// The elements of a node-address set.
pub(crate) fn node_elems(state: &ClusterState, sel: &Selector, fam: Family) -> BTreeSet<Elem> {
    members::nodes(state, sel)
        .into_iter()
        .filter(|ip| Family::of(ip) == fam)
        .map(Elem::Addr)
        .collect()
}

/// Name of an egress named-port set.
pub fn named_set(
    peers: &Option<Vec<Peer>>,
    named: &BTreeSet<(Protocol, String)>,
    fam: Family,
) -> String {
    format!(
        "n{}_{}",
        fam.tag(),
        digest(&[&format!("{peers:?}"), &format!("{named:?}")])
    )
}

impl Ruleset {
    /// An empty table (no endpoints).
    pub fn empty(iface_prefix: &str) -> Ruleset {
        let mut sets = BTreeMap::new();
        for fam in Family::BOTH {
            sets.insert(
                fixed_set(SPOOF, fam),
                SetIr {
                    kind: SetKind::IfAddr(fam),
                    elems: BTreeSet::new(),
                },
            );
            sets.insert(
                fixed_set(NODE, fam),
                SetIr {
                    kind: SetKind::Addr(fam),
                    elems: BTreeSet::new(),
                },
            );
            for base in [NAT_SOURCES, POOLS] {
                sets.insert(
                    fixed_set(base, fam),
                    SetIr {
                        kind: SetKind::AddrInterval(fam),
                        elems: BTreeSet::new(),
                    },
                );
            }
        }
        let mut rs = Ruleset {
            iface_prefix: iface_prefix.to_string(),
            sets,
            chains: BTreeMap::new(),
            dispatch: BTreeMap::new(),
            deny_log: None,
        };
        rs.set_deny_log(None);
        rs
    }

    /// Turns denied-flow logging on or off (re-renders the `deny` chain;
    /// policy chains follow when they are next built).
    pub fn set_deny_log(&mut self, log: Option<DenyLog>) {
        self.deny_log = log;
        // The `deny` chain serves both dispatch maps: its counter is
        // labelled `ingress` but counts both directions.
        let body = self.with_logs(vec![RuleIr {
            matches: vec![],
            verdict: Verdict::Drop,
            origin: RuleOrigin::fixed(fixed::DENY_ENDPOINT, Direction::Ingress, RuleAction::Deny),
        }]);
        self.chains.insert(DENY.to_string(), body);
    }

    /// `body` with a log rule before every `Drop` when logging is on.
    pub(crate) fn with_logs(&self, body: Vec<RuleIr>) -> Vec<RuleIr> {
        let Some(log) = self.deny_log else {
            return body;
        };
        let mut out = Vec::with_capacity(body.len() + 2);
        for r in body {
            if r.verdict == Verdict::Drop {
                out.push(RuleIr {
                    verdict: Verdict::Log(log),
                    ..r.clone()
                });
            }
            out.push(r);
        }
        out
    }

    /// Renders a plan. Set memberships come from `state`.
    pub fn build(plan: &Plan, state: &ClusterState) -> Ruleset {
        let mut rs = Ruleset::empty(&plan.iface_prefix);
        rs.set_deny_log(plan.deny_log);
        for ip in &plan.node_addrs {
            rs.insert_elem(&fixed_set(NODE, Family::of(ip)), Elem::Addr(*ip));
        }
        for (set, e) in nat_elems(&plan.nat) {
            rs.insert_elem(&set, e);
        }
        let mut fill = BuildCx::default();
        for ep in plan.endpoints.values() {
            let e = &ep.endpoint;
            for ip in &e.ips {
                rs.insert_elem(
                    &fixed_set(SPOOF, Family::of(ip)),
                    Elem::IfAddr(e.iface.clone(), *ip),
                );
            }
            let mut d = Dispatch::default();
            for dir in [Direction::Egress, Direction::Ingress] {
                *d.get_mut(dir) = rs.direction_target(dir, ep.direction(dir), &mut fill);
            }
            rs.dispatch.insert(e.iface.clone(), d);
        }
        fill.apply(&mut rs, state);
        rs
    }

    fn insert_elem(&mut self, set: &str, e: Elem) {
        if let Some(s) = self.sets.get_mut(set) {
            s.elems.insert(e);
        }
    }

    /// The chain an endpoint's direction is judged by (`None`: not
    /// isolated); creates the policy chain and the sets it uses.
    pub(crate) fn direction_target(
        &mut self,
        dir: Direction,
        plan: &DirectionPlan,
        fill: &mut BuildCx,
    ) -> Option<String> {
        match plan {
            DirectionPlan::Open => None,
            DirectionPlan::DenyAll => Some(DENY.to_string()),
            DirectionPlan::Isolated { rules, .. } => {
                let body = self.policy_chain_body(dir, rules, fill);
                Some(self.add_chain(chain_prefix("p", dir), body, fill))
            }
            DirectionPlan::Tiered(t) => self.tiered_target(dir, t, fill),
        }
    }

    /// Adds a content-addressed chain `<prefix>_<digest of its rules>`
    /// (unless it exists) and returns its name.
    pub(crate) fn add_chain(
        &mut self,
        prefix: String,
        body: Vec<RuleIr>,
        fill: &mut BuildCx,
    ) -> String {
        let body = self.with_logs(body);
        let texts: Vec<String> = body.iter().map(RuleIr::text).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let name = format!("{prefix}_{}", digest(&refs));
        if !self.chains.contains_key(&name) {
            self.chains.insert(name.clone(), body);
            fill.new_chains.push(name.clone());
        }
        name
    }

    /// The verdict that lets a direction's check pass: `accept` for ingress
    /// (the last check), `return` for egress (the receiver's ingress is
    /// checked next).
    pub(crate) fn allow_verdict(dir: Direction) -> Verdict {
        match dir {
            Direction::Ingress => Verdict::Accept,
            Direction::Egress => Verdict::Return,
        }
    }

    /// The lines that always allow the node's own addresses.
    pub(crate) fn node_lines(dir: Direction) -> Vec<RuleIr> {
        Family::BOTH
            .iter()
            .map(|fam| RuleIr {
                matches: vec![Match::Addr(peer_field(dir), *fam, fixed_set(NODE, *fam))],
                verdict: Self::allow_verdict(dir),
                origin: RuleOrigin::fixed(fixed::NODE, dir, RuleAction::Allow),
            })
            .collect()
    }

    fn policy_chain_body(
        &mut self,
        dir: Direction,
        rules: &BTreeSet<RulePlan>,
        fill: &mut BuildCx,
    ) -> Vec<RuleIr> {
        let allow = Self::allow_verdict(dir);
        let mut body = Self::node_lines(dir);
        // Rules whose peers are all pod selectors and whose ports are equal
        // share their lines once they have MERGE_MIN peers or more: one set
        // per family holding the union of their selectors' members. A new
        // connection then walks one line per (port match × family), not one
        // per peer (a SYN pays ~60-90 ns per line it walks: with 10,000
        // such rules, 2.6% of the no-policy connection rate; bench_datapath).
        // Below that, lines per peer: a union set copies its members into
        // every chain that has one, which costs more than a few lines.
        let mut groups: BTreeMap<&PortMatch, (Vec<&RulePlan>, BTreeSet<&PodPeer>)> =
            BTreeMap::new();
        for r in rules {
            match pod_peers_only(r) {
                Some(peers) => {
                    let g = groups.entry(&r.ports).or_default();
                    g.0.push(r);
                    g.1.extend(peers);
                }
                None => body.extend(self.rule_lines(dir, r, &allow, fill)),
            }
        }
        // Rules left on lines of their own: from COMBO_MIN of them on, those
        // with few ports share one `addr . proto . port` lookup (combo.rs).
        let mut combo: Vec<(&RulePlan, ComboEntry)> = groups
            .values()
            .filter(|(_, peers)| peers.len() < MERGE_MIN)
            .flat_map(|(group, _)| group)
            .filter_map(|r| Some((*r, combo::combo_entry(r)?)))
            .collect();
        if combo.len() < COMBO_MIN {
            combo.clear();
        }
        let merged: std::collections::HashSet<*const RulePlan> =
            combo.iter().map(|(r, _)| *r as *const RulePlan).collect();
        for (ports, (group, peers)) in groups {
            if peers.len() < MERGE_MIN {
                for r in group {
                    if !merged.contains(&(r as *const RulePlan)) {
                        body.extend(self.rule_lines(dir, r, &allow, fill));
                    }
                }
                continue;
            }
            let peers: Vec<PodPeer> = peers.into_iter().cloned().collect();
            // One origin if every merged rule is the same policy rule, else
            // the shared line counts for all of them (`fixed::MERGED`).
            let origin = match group.split_first() {
                Some((first, rest)) if rest.iter().all(|r| r.origin == first.origin) => {
                    first.origin.clone()
                }
                _ => RuleOrigin::fixed(fixed::MERGED, dir, RuleAction::Allow),
            };
            let pt = match ports {
                PortMatch::Any => None,
                PortMatch::Listed { ranges, .. } => Some(self.port_set(ranges, fill)),
            };
            for fam in Family::BOTH {
                let mut matches = vec![Match::Addr(
                    peer_field(dir),
                    fam,
                    fill.selector(self, &peers, fam),
                )];
                matches.extend(pt.clone().map(Match::ProtoPort));
                body.push(RuleIr {
                    matches,
                    verdict: allow.clone(),
                    origin: origin.clone(),
                });
            }
        }
        if !combo.is_empty() {
            body.extend(self.combo_lines(dir, &combo, &allow, fill));
        }
        body.push(RuleIr {
            matches: vec![],
            verdict: Verdict::Drop,
            origin: RuleOrigin::fixed(fixed::DEFAULT, dir, RuleAction::Deny),
        });
        body
    }

    /// The lines that match one planned rule, each with `verdict` (several
    /// lines: one per peer set and family, plus named-port lines; their
    /// order does not matter as they share the verdict).
    pub(crate) fn rule_lines(
        &mut self,
        dir: Direction,
        r: &RulePlan,
        verdict: &Verdict,
        fill: &mut BuildCx,
    ) -> Vec<RuleIr> {
        let field = peer_field(dir);
        let rule = |matches: Vec<Match>| RuleIr {
            matches,
            verdict: verdict.clone(),
            origin: r.origin.clone(),
        };
        let mut body = Vec::new();
        let (pt, named) = match &r.ports {
            PortMatch::Any => (None, None),
            PortMatch::Listed { ranges, named } => {
                if ranges.is_empty() && named.is_empty() {
                    return body; // cannot match anything
                }
                let pt = (!ranges.is_empty()).then(|| self.port_set(ranges, fill));
                (pt, (!named.is_empty()).then_some(named))
            }
        };
        let any_port = matches!(r.ports, PortMatch::Any);
        // Rules for address matches `m`: with the port set, or alone.
        let with_ports = |m: Vec<Match>| -> Option<RuleIr> {
            if any_port {
                Some(rule(m))
            } else {
                pt.as_ref().map(|pt| {
                    let mut m = m;
                    m.push(Match::ProtoPort(pt.clone()));
                    rule(m)
                })
            }
        };
        // Address rules exist only for "all ports" or numeric ports;
        // a rule with only named ports is matched by its named-port set.
        let addr_rules = any_port || pt.is_some();
        match &r.peers {
            None => body.extend(with_ports(vec![])),
            Some(_) if !addr_rules => {}
            Some(peers) => {
                for p in peers {
                    for fam in Family::BOTH {
                        let set = match p {
                            Peer::Pods(pp) => fill.selector(self, std::slice::from_ref(pp), fam),
                            Peer::Nodes(sel) => fill.nodes(self, sel, fam),
                            Peer::Block(_) => continue,
                        };
                        body.extend(with_ports(vec![Match::Addr(field, fam, set)]));
                    }
                }
                let blocks: Vec<AddrRange> = peers
                    .iter()
                    .filter_map(|p| match p {
                        Peer::Block(r) => Some(r.iter().copied()),
                        Peer::Pods(_) | Peer::Nodes(_) => None,
                    })
                    .flatten()
                    .collect();
                let blocks = union(blocks);
                for fam in Family::BOTH {
                    let ranges: Vec<&AddrRange> =
                        blocks.iter().filter(|r| r.family == fam).collect();
                    if ranges.is_empty() {
                        continue;
                    }
                    let set = self.block_set(fam, &ranges, fill);
                    body.extend(with_ports(vec![Match::Addr(field, fam, set)]));
                }
            }
        }
        if let Some(named) = named {
            for fam in Family::BOTH {
                let set = fill.named(self, &r.peers, named, fam);
                body.push(rule(vec![Match::AddrProtoPort(field, fam, set)]));
            }
        }
        body
    }

    fn port_set(&mut self, ranges: &BTreeSet<(Protocol, u16, u16)>, fill: &mut BuildCx) -> String {
        let name = format!("pt_{}", digest(&[&format!("{ranges:?}")]));
        if !self.sets.contains_key(&name) {
            self.sets.insert(
                name.clone(),
                SetIr {
                    kind: SetKind::ProtoPort,
                    elems: ranges
                        .iter()
                        .map(|(p, lo, hi)| Elem::ProtoPorts(*p, *lo, *hi))
                        .collect(),
                },
            );
            fill.new_sets.push(name.clone());
        }
        name
    }

    fn block_set(&mut self, fam: Family, ranges: &[&AddrRange], fill: &mut BuildCx) -> String {
        let name = format!("b{}_{}", fam.tag(), digest(&[&format!("{ranges:?}")]));
        if !self.sets.contains_key(&name) {
            self.sets.insert(
                name.clone(),
                SetIr {
                    kind: SetKind::AddrInterval(fam),
                    elems: ranges.iter().map(|r| Elem::Range(**r)).collect(),
                },
            );
            fill.new_sets.push(name.clone());
        }
        name
    }
}

/// Pod-selector peers with equal ports from which a policy chain shares one
/// union set per family instead of a line per peer and family.
pub const MERGE_MIN: usize = 16;

/// The pod-selector peers of a rule that can share a union set with other
/// rules of the same ports: every peer a pod selector, ports either all or
/// numeric ranges only (named ports are matched per destination pod).
fn pod_peers_only(r: &RulePlan) -> Option<Vec<&PodPeer>> {
    match &r.ports {
        PortMatch::Any => {}
        PortMatch::Listed { ranges, named } if !ranges.is_empty() && named.is_empty() => {}
        PortMatch::Listed { .. } => return None,
    }
    let peers = r.peers.as_ref()?;
    if peers.is_empty() {
        return None;
    }
    peers
        .iter()
        .map(|p| match p {
            Peer::Pods(pp) => Some(pp),
            Peer::Nodes(_) | Peer::Block(_) => None,
        })
        .collect()
}

/// Name of the set of the union of several pod selectors' members.
pub fn union_set(peers: &[PodPeer], fam: Family) -> String {
    let canon: Vec<String> = peers.iter().map(PodPeer::canonical).collect();
    let refs: Vec<&str> = canon.iter().map(String::as_str).collect();
    format!("u{}_{}", fam.tag(), digest(&refs))
}

/// Identity of an egress named-port set: the rule's peers, the port names.
pub(crate) type NamedKey = (Option<Vec<Peer>>, BTreeSet<(Protocol, String)>, Family);
