//! Sets whose elements depend on the cluster state: collected while a
//! build renders chains, filled once at its end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::addr::Family;
use crate::compile::{NsScope, Peer, PodPeer};
use crate::model::{ClusterState, PodInfo, Protocol};
use crate::plan::{is_member, members, namespace_labels};
use crate::ruleset::{
    ComboKey, Elem, NamedKey, Ruleset, SetIr, SetKind, combo, named_set, node_elems, node_set,
    selector_set, union_set,
};
use crate::selector::{Requirement, Selector, Values};

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
    /// Declares the empty set `name` unless the ruleset has it; true when
    /// it is new (the caller records what fills it).
    pub(crate) fn declare(&mut self, rs: &mut Ruleset, name: &str, kind: SetKind) -> bool {
        if rs.sets.contains_key(name) {
            return false;
        }
        rs.sets.insert(
            name.to_string(),
            SetIr {
                kind,
                elems: BTreeSet::new(),
            },
        );
        self.new_sets.push(name.to_string());
        true
    }

    pub(crate) fn selector(&mut self, rs: &mut Ruleset, peers: &[PodPeer], fam: Family) -> String {
        let name = match peers {
            [one] => selector_set(one, fam),
            _ => union_set(peers, fam),
        };
        if self.declare(rs, &name, SetKind::Addr(fam)) {
            self.selectors.insert(name.clone(), (peers.to_vec(), fam));
        }
        name
    }

    pub(crate) fn nodes(&mut self, rs: &mut Ruleset, sel: &Selector, fam: Family) -> String {
        let name = node_set(sel, fam);
        if self.declare(rs, &name, SetKind::Addr(fam)) {
            self.nodes.insert(name.clone(), (sel.clone(), fam));
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
        if self.declare(rs, &name, SetKind::AddrProtoPort(fam)) {
            self.named
                .insert(name.clone(), (peers.clone(), named.clone(), fam));
        }
        name
    }

    /// Computes the members of every set collected so far.
    pub(crate) fn apply(&mut self, rs: &mut Ruleset, state: &ClusterState) {
        let peers: BTreeSet<&PodPeer> = self
            .selectors
            .values()
            .flat_map(|(p, _)| p)
            .chain(
                self.combos
                    .values()
                    .flat_map(|(e, _)| e.iter().flat_map(|(p, _)| p)),
            )
            .collect();
        // Only the label keys the peers are looked up by are indexed (a
        // pod's other labels would cost an index entry each: at 150k pods
        // with 3-4 labels, ~50 MB at the build's peak).
        let keys = (peers.len() >= INDEX_MIN).then(|| {
            peers
                .iter()
                .filter_map(|p| Some(first_in(&p.pods)?.0.to_string()))
                .collect()
        });
        let mut members = Members::new(state, keys);
        for (name, (peers, fam)) in &self.selectors {
            let mut elems = BTreeSet::new();
            for peer in peers {
                elems.extend(
                    members
                        .of(peer)
                        .iter()
                        .filter(|ip| Family::of(**ip) == *fam)
                        .map(|ip| Elem::Addr(*ip)),
                );
            }
            if let Some(s) = rs.sets.get_mut(name) {
                s.elems = elems;
            }
        }
        for (name, key) in &self.combos {
            let elems = combo::elems(key, &mut members);
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

/// Selector peers to fill from which [`Members`] indexes the member pods:
/// one pass over the pods instead of one per peer. Below it (a settle
/// that re-plans one endpoint) the index would cost more than it saves.
pub(crate) const INDEX_MIN: usize = 16;

/// Member pods by (namespace, label key, label value).
type PodIndex<'a> = HashMap<(&'a str, &'a str, &'a str), Vec<&'a PodInfo>>;

/// Member addresses of selector peers, each computed once. Filling a
/// table with thousands of selector sets scanned every pod of the scope
/// once per selector (10,000 policies: 74% of a 7.6 s build, in
/// `Selector::matches`); with an index, the pods a selector can match
/// are looked up by its first `key in (values)` requirement first.
pub(crate) struct Members<'a> {
    state: &'a ClusterState,
    cache: BTreeMap<PodPeer, BTreeSet<IpAddr>>,
    /// (namespace, label key, label value) → member pods, for the label
    /// keys in `keys`; `None`: scan.
    index: Option<PodIndex<'a>>,
    keys: BTreeSet<String>,
}

impl<'a> Members<'a> {
    /// Members of `state`'s pods, indexed by the label keys `keys` (a
    /// peer whose first `in` requirement has another key is scanned for);
    /// `None`: every peer is scanned for.
    pub(crate) fn new(state: &'a ClusterState, keys: Option<BTreeSet<String>>) -> Self {
        let index = keys.as_ref().map(|keys| {
            let mut index = PodIndex::new();
            for pod in state.pods.values().filter(|p| is_member(p)) {
                for (k, v) in pod.labels.iter().filter(|(k, _)| keys.contains(*k)) {
                    index
                        .entry((&*pod.key.namespace, k, v))
                        .or_default()
                        .push(pod);
                }
            }
            index
        });
        Members {
            state,
            cache: BTreeMap::new(),
            index,
            keys: keys.unwrap_or_default(),
        }
    }

    /// The member addresses `peer` chooses (as [`members::selector`]).
    pub(crate) fn of(&mut self, peer: &PodPeer) -> &BTreeSet<IpAddr> {
        if !self.cache.contains_key(peer) {
            let indexed = first_in(&peer.pods).filter(|(key, _)| self.keys.contains(*key));
            let ips = match (&self.index, indexed) {
                (Some(index), Some((key, values))) => {
                    let mut out = BTreeSet::new();
                    for ns in scope(self.state, peer) {
                        for v in values {
                            let pods = index.get(&(ns.as_str(), key, v.as_str()));
                            for pod in pods.into_iter().flatten() {
                                if peer.pods.matches(&pod.labels) {
                                    out.extend(pod.ips.iter().copied());
                                }
                            }
                        }
                    }
                    out
                }
                _ => members::selector(self.state, peer),
            };
            self.cache.insert(peer.clone(), ips);
        }
        &self.cache[peer]
    }
}

/// The first `key in (values)` requirement of a selector: every pod it
/// matches has one of these labels.
fn first_in(sel: &Selector) -> Option<(&str, &Values)> {
    sel.requirements().iter().find_map(|r| match r {
        Requirement::In(k, vs) => Some((k.as_str(), vs)),
        _ => None,
    })
}

/// The namespaces a peer looks in.
fn scope(state: &ClusterState, peer: &PodPeer) -> Vec<String> {
    match &peer.ns {
        NsScope::Same(ns) => vec![ns.clone()],
        NsScope::Matching(sel) => members::namespaces_with_pods(state)
            .into_iter()
            .filter(|ns| sel.matches(&*namespace_labels(state, ns)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodKey;
    use crate::testkit::Xyz;

    fn set(vs: &[&str]) -> Values {
        vs.iter().map(|v| v.to_string()).collect()
    }

    /// The index finds exactly what a scan finds, for selectors with and
    /// without an `in` requirement, in one namespace or several, and for
    /// pods that are not members (finished).
    #[test]
    fn indexed_members_equal_the_scan() {
        let mut xyz = Xyz::new(2, true);
        let finished = PodKey::new("y", "b");
        if let Some(p) = xyz
            .state
            .pods
            .get_mut(&finished)
            .map(std::sync::Arc::make_mut)
        {
            p.phase = crate::model::PodPhase::Succeeded;
        }
        let reqs = [
            vec![Requirement::In("pod".into(), set(&["b"]))],
            vec![Requirement::In("pod".into(), set(&["a", "c", "nope"]))],
            vec![
                Requirement::In("pod".into(), set(&["a", "b"])),
                Requirement::NotIn("pod".into(), set(&["a"])),
            ],
            vec![Requirement::NotIn("pod".into(), set(&["a"]))],
            vec![Requirement::Exists("pod".into())],
            vec![Requirement::In("missing".into(), set(&["x"]))],
            vec![],
        ];
        let scopes = [
            NsScope::Same("x".into()),
            NsScope::Same("y".into()),
            NsScope::Same("no-such-namespace".into()),
            NsScope::Matching(Selector::everything()),
            NsScope::Matching(Selector::from_requirements([Requirement::In(
                "ns".into(),
                set(&["x", "z"]),
            )])),
        ];
        // "other" is indexed but no peer uses it; "missing" is not
        // indexed: its peers are scanned for.
        let keys = ["pod", "other"].map(String::from).into();
        let mut indexed = Members::new(&xyz.state, Some(keys));
        let mut checked = 0;
        for r in &reqs {
            for ns in &scopes {
                let peer = PodPeer {
                    ns: ns.clone(),
                    pods: Selector::from_requirements(r.clone()),
                };
                let want = members::selector(&xyz.state, &peer);
                assert_eq!(indexed.of(&peer), &want, "{peer:?}");
                checked += usize::from(!want.is_empty());
            }
        }
        assert!(checked >= 10, "too few peers with members: {checked}");
    }
}
