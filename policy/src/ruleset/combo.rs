//! Many rules on distinct ports in one lookup.
//!
//! A policy chain walks its lines in order, and a new connection pays
//! ~60-90 ns for every line it walks (`bench_datapath`). Rules whose peers
//! are pod selectors share a line when their ports are equal (the union
//! sets of `policy_chain_body`), but rules on ports of their own cannot:
//! with 10,000 policies each opening a different port to a different
//! selector, the SYN walked 20,000 lines and the connection rate fell to
//! 1.5% of the no-policy figure.
//!
//! From [`COMBO_MIN`] such rules on, a chain matches them all with one line
//! per family against one `addr . proto . port` set (`c4_`/`c6_`): its
//! elements are, for each rule, every member of its peers times every port
//! of its ranges. One hash lookup, whatever the number of rules.
//!
//! Only rules with few ports ([`COMBO_MAX_PORTS`]) are merged, because the
//! elements are a product: a rule's range is expanded port by port, so a
//! wide range would multiply the set's size by its width. Those rules keep
//! their own lines. The merged line counts for all of its rules
//! (`fixed::MERGED`, unless they are one policy rule), like a union line.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::addr::Family;
use crate::compile::{Direction, PodPeer};
use crate::model::{Labels, PodInfo, Protocol};
use crate::origin::{RuleAction, RuleOrigin, fixed};
use crate::plan::{PortMatch, RulePlan, peer_selects};
use crate::ruleset::fill::Members;
use crate::ruleset::{BuildCx, Elem, Match, RuleIr, Ruleset, SetKind, Verdict, digest, peer_field};

/// Rules on ports of their own from which a chain merges them.
pub const COMBO_MIN: usize = 16;
/// The most ports (summed over its ranges) a rule may have to be merged.
pub const COMBO_MAX_PORTS: u32 = 8;

/// One merged rule: its pod-selector peers and its port ranges.
pub type ComboEntry = (Vec<PodPeer>, Vec<(Protocol, u16, u16)>);
/// What a combo set stands for: its rules, in a canonical order, and the
/// family of its addresses.
pub type ComboKey = (Vec<ComboEntry>, Family);

/// The rule as a combo entry, if it can be merged: every peer a pod
/// selector, numeric ports only, at most [`COMBO_MAX_PORTS`] of them.
pub(crate) fn combo_entry(r: &RulePlan) -> Option<ComboEntry> {
    let PortMatch::Listed { ranges, named } = &r.ports else {
        return None;
    };
    if ranges.is_empty() || !named.is_empty() {
        return None;
    }
    let ports: u32 = ranges
        .iter()
        .map(|(_, lo, hi)| u32::from(*hi).saturating_sub(u32::from(*lo)) + 1)
        .sum();
    if ports > COMBO_MAX_PORTS {
        return None;
    }
    let peers = r.peers.as_ref()?;
    if peers.is_empty() {
        return None;
    }
    let pods = peers
        .iter()
        .map(|p| match p {
            crate::compile::Peer::Pods(pp) => Some(pp.clone()),
            crate::compile::Peer::Nodes(_) | crate::compile::Peer::Block(_) => None,
        })
        .collect::<Option<Vec<PodPeer>>>()?;
    Some((pods, ranges.iter().copied().collect()))
}

/// Name of the combo set of these entries.
pub fn combo_set(entries: &[ComboEntry], fam: Family) -> String {
    let canon: Vec<String> = entries
        .iter()
        .map(|(peers, ranges)| {
            let peers: Vec<String> = peers.iter().map(PodPeer::canonical).collect();
            format!("{peers:?} {ranges:?}")
        })
        .collect();
    let refs: Vec<&str> = canon.iter().map(String::as_str).collect();
    format!("c{}_{}", fam.tag(), digest(&refs))
}

/// The elements `ip` contributes to a combo set as the address of `pod`
/// (whose namespace has `ns_labels`).
pub(crate) fn elems_of_pod(
    entries: &[ComboEntry],
    pod: &PodInfo,
    ns_labels: &Labels,
    ip: IpAddr,
    out: &mut BTreeSet<Elem>,
) {
    for (peers, ranges) in entries {
        if peers.iter().any(|p| peer_selects(p, pod, ns_labels)) {
            push_ports(ip, ranges, out);
        }
    }
}

fn push_ports(ip: IpAddr, ranges: &[(Protocol, u16, u16)], out: &mut BTreeSet<Elem>) {
    for (proto, lo, hi) in ranges {
        for port in *lo..=*hi {
            out.insert(Elem::AddrProtoPort(ip, *proto, port));
        }
    }
}

/// Every element of a combo set (a from-scratch fill).
pub(crate) fn elems(key: &ComboKey, members: &mut Members<'_>) -> BTreeSet<Elem> {
    let (entries, fam) = key;
    let mut out = BTreeSet::new();
    for (peers, ranges) in entries {
        let mut ips = BTreeSet::new();
        for p in peers {
            ips.extend(
                members
                    .of(p)
                    .iter()
                    .copied()
                    .filter(|ip| Family::of(*ip) == *fam),
            );
        }
        for ip in ips {
            push_ports(ip, ranges, &mut out);
        }
    }
    out
}

impl Ruleset {
    /// One line per family matching `rules` (each a [`combo_entry`]) by
    /// one `addr . proto . port` lookup.
    pub(crate) fn combo_lines(
        &mut self,
        dir: Direction,
        rules: &[(&RulePlan, ComboEntry)],
        verdict: &Verdict,
        fill: &mut BuildCx,
    ) -> Vec<RuleIr> {
        let origin = match rules.split_first() {
            Some(((first, _), rest)) if rest.iter().all(|(r, _)| r.origin == first.origin) => {
                first.origin.clone()
            }
            _ => RuleOrigin::fixed(fixed::MERGED, dir, RuleAction::Allow),
        };
        let mut entries: Vec<ComboEntry> = rules.iter().map(|(_, e)| e.clone()).collect();
        entries.sort();
        entries.dedup();
        Family::BOTH
            .iter()
            .map(|fam| RuleIr {
                matches: vec![Match::AddrProtoPort(
                    peer_field(dir),
                    *fam,
                    fill.combo(self, &entries, *fam),
                )],
                verdict: verdict.clone(),
                origin: origin.clone(),
            })
            .collect()
    }
}

impl BuildCx {
    fn combo(&mut self, rs: &mut Ruleset, entries: &[ComboEntry], fam: Family) -> String {
        let name = combo_set(entries, fam);
        if self.declare(rs, &name, SetKind::AddrProtoPort(fam)) {
            self.combos.insert(name.clone(), (entries.to_vec(), fam));
        }
        name
    }
}
