//! Sets whose elements depend on the cluster state: collected while a
//! build renders chains, filled once at its end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::addr::Family;
use crate::compile::{Peer, PodPeer};
use crate::model::{ClusterState, Protocol};
use crate::plan::members;
use crate::ruleset::{
    ComboKey, Elem, NamedKey, Ruleset, SetIr, SetKind, combo, named_set, node_elems, node_set,
    selector_set, union_set,
};
use crate::selector::Selector;

/// Sets whose elements depend on the cluster state, collected while
/// building chains and filled once at the end.
#[derive(Debug, Default)]
pub(crate) struct BuildCx {
    /// Pod-address sets: one selector's members (`s4_`/`s6_`), or the
    /// union of several selectors' (`u4_`/`u6_`, rules merged by
    /// `policy_chain_body`).
    pub(crate) selectors: BTreeMap<String, (Vec<PodPeer>, Family)>,
    /// Node-address sets (ANP `nodes` peers).
    pub(crate) nodes: BTreeMap<String, (Selector, Family)>,
    pub(crate) named: BTreeMap<String, NamedKey>,
    /// `addr . proto . port` sets of merged rules on ports of their own.
    pub(crate) combos: BTreeMap<String, ComboKey>,
    /// Every set and policy chain this build created (in creation order).
    pub(crate) new_sets: Vec<String>,
    pub(crate) new_chains: Vec<String>,
}

impl BuildCx {
    pub(crate) fn selector(&mut self, rs: &mut Ruleset, peers: &[PodPeer], fam: Family) -> String {
        let name = match peers {
            [one] => selector_set(one, fam),
            _ => union_set(peers, fam),
        };
        if !rs.sets.contains_key(&name) {
            rs.sets.insert(
                name.clone(),
                SetIr {
                    kind: SetKind::Addr(fam),
                    elems: BTreeSet::new(),
                },
            );
            self.selectors.insert(name.clone(), (peers.to_vec(), fam));
            self.new_sets.push(name.clone());
        }
        name
    }

    pub(crate) fn nodes(&mut self, rs: &mut Ruleset, sel: &Selector, fam: Family) -> String {
        let name = node_set(sel, fam);
        if !rs.sets.contains_key(&name) {
            rs.sets.insert(
                name.clone(),
                SetIr {
                    kind: SetKind::Addr(fam),
                    elems: BTreeSet::new(),
                },
            );
            self.nodes.insert(name.clone(), (sel.clone(), fam));
            self.new_sets.push(name.clone());
        }
        name
    }

    pub(crate) fn named(
        &mut self,
        rs: &mut Ruleset,
        peers: &Option<Vec<Peer>>,
        named: &BTreeSet<(Protocol, String)>,
        fam: Family,
    ) -> String {
        let name = named_set(peers, named, fam);
        if !rs.sets.contains_key(&name) {
            rs.sets.insert(
                name.clone(),
                SetIr {
                    kind: SetKind::AddrProtoPort(fam),
                    elems: BTreeSet::new(),
                },
            );
            self.named
                .insert(name.clone(), (peers.clone(), named.clone(), fam));
            self.new_sets.push(name.clone());
        }
        name
    }

    /// Computes the members of every set collected so far.
    pub(crate) fn apply(&mut self, rs: &mut Ruleset, state: &ClusterState) {
        let mut cache: BTreeMap<&PodPeer, BTreeSet<IpAddr>> = BTreeMap::new();
        for (name, (peers, fam)) in &self.selectors {
            let mut elems = BTreeSet::new();
            for peer in peers {
                let all = cache
                    .entry(peer)
                    .or_insert_with(|| members::selector(state, peer));
                elems.extend(
                    all.iter()
                        .filter(|ip| Family::of(**ip) == *fam)
                        .map(|ip| Elem::Addr(*ip)),
                );
            }
            if let Some(s) = rs.sets.get_mut(name) {
                s.elems = elems;
            }
        }
        let mut by_peer: BTreeMap<PodPeer, BTreeSet<IpAddr>> =
            cache.into_iter().map(|(p, ips)| (p.clone(), ips)).collect();
        for (name, key) in &self.combos {
            let elems = combo::elems(state, key, &mut by_peer);
            if let Some(s) = rs.sets.get_mut(name) {
                s.elems = elems;
            }
        }
        for (name, (sel, fam)) in &self.nodes {
            let elems = node_elems(state, sel, *fam);
            if let Some(s) = rs.sets.get_mut(name) {
                s.elems = elems;
            }
        }
        for (name, (peers, named, fam)) in &self.named {
            let elems = members::named_ports(state, peers, named)
                .into_iter()
                .filter(|(ip, _, _)| Family::of(ip) == *fam)
                .map(|(ip, p, port)| Elem::AddrProtoPort(ip, p, port))
                .collect();
            if let Some(s) = rs.sets.get_mut(name) {
                s.elems = elems;
            }
        }
    }
}
