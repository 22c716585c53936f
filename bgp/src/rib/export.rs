//! Adj-RIB-Out: export rules (RFC 4271 §9.1.3, iBGP split horizon, RFC 4456
//! route reflection, next hop self/keep) and the packing of pending changes
//! into UPDATE messages.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::decision::{DEFAULT_LOCAL_PREF, LOCAL, Path, PeerIdx};
use super::filter::{self, FilterAction};
use super::intern::RouteAttrs;
use super::{PeerState, Rib};
use crate::wire::attrs::flag;
use crate::wire::community::{NO_ADVERTISE, NO_EXPORT, NO_EXPORT_SUBCONFED};
use crate::wire::update::{encode_announce, encode_withdraw};
use crate::wire::{Family, Message, NextHop, Nlri, Prefix, Update};

impl Rib {
    /// The best path of `prefix` changed: queue what each peer must hear.
    pub(super) fn export_change(&mut self, prefix: &Prefix, best: Option<&Path>) {
        for idx in 1..self.peers.len() {
            // A deferred peer gets the whole table when deferral ends.
            if self.peers[idx].info.is_some() && !self.peers[idx].deferred {
                self.export_to(idx as PeerIdx, prefix, best, false);
            }
        }
    }

    pub(super) fn export_to(
        &mut self,
        peer: PeerIdx,
        prefix: &Prefix,
        best: Option<&Path>,
        dump: bool,
    ) {
        let attrs = best.and_then(|b| self.export_attrs(peer, prefix, b));
        let Some(ps) = self.peers.get_mut(peer as usize) else {
            return;
        };
        if attrs.is_none()
            && (dump || (!ps.adj_out.contains_key(prefix) && !ps.pending.contains_key(prefix)))
        {
            return;
        }
        ps.pending.insert(*prefix, attrs);
    }

    /// What `target` is sent for `best`, or `None` if it must not see it.
    fn export_attrs(
        &mut self,
        target: PeerIdx,
        prefix: &Prefix,
        best: &Path,
    ) -> Option<Arc<RouteAttrs>> {
        let src_idx = best.peer();
        if src_idx == target {
            return None; // never back to where it came from
        }
        let info = self.peers.get(target as usize)?.info.as_ref()?;
        if !info.families.contains(prefix.family()) {
            return None;
        }
        let local = src_idx == LOCAL;
        let ebgp = info.source.ebgp;
        let verdict = filter::evaluate(&info.filters.export, prefix, local)
            .or_else(|| filter::evaluate(&self.default_export, prefix, local));
        if verdict == Some(FilterAction::Reject) {
            return None;
        }
        // RFC 1997: the well-known communities limit where a route goes
        // (no confederations here: outside the AS means any external peer).
        let has = |c: u32| {
            best.attrs.communities().contains(&c)
                || (local && info.communities.standard.contains(&c))
        };
        if has(NO_ADVERTISE) || (ebgp && (has(NO_EXPORT) || has(NO_EXPORT_SUBCONFED))) {
            return None;
        }
        let src = self
            .peers
            .get(src_idx as usize)
            .and_then(|p| p.info.as_ref());
        let src_ebgp = src.is_some_and(|s| s.source.ebgp);
        let src_client = src.is_some_and(|s| s.rr_client);
        let mut a = best.attrs.attrs();
        let mut nh_self = local || ebgp || info.next_hop_self;
        if !ebgp && !local && !src_ebgp {
            // iBGP-learned toward iBGP: only by reflection (RFC 4456 §6).
            if !(src_client || info.rr_client) {
                return None;
            }
            if a.originator_id.is_none() {
                a.originator_id = src.map(|s| s.source.router_id);
            }
            a.cluster_list
                .insert(0, self.cfg.cluster_id.unwrap_or(self.cfg.router_id));
            nh_self = info.next_hop_self;
        }
        if ebgp {
            if a.as_path
                .as_ref()
                .is_some_and(|p| p.contains(info.source.asn))
            {
                return None; // the peer would drop it as a loop
            }
            a.as_path
                .get_or_insert_with(Default::default)
                .prepend(self.cfg.local_as);
            a.local_pref = None;
            if !local {
                a.med = None;
            }
            a.originator_id = None;
            a.cluster_list.clear();
            // RFC 4360: non-transitive extended communities stay in the AS.
            a.ext_communities.retain(|c| c.is_transitive());
        } else {
            a.local_pref = Some(a.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
        }
        if local {
            info.communities.add_to(&mut a);
        }
        for u in &mut a.unknown {
            u.flags |= flag::PARTIAL;
        }
        a.next_hop = None;
        let next_hop = if nh_self {
            match prefix.family() {
                Family::Ipv4Unicast => match (info.local_v4, info.local_v6) {
                    (Some(v4), _) => NextHop::V4(v4),
                    (None, Some(v6)) if info.encode.ext_next_hop_v4 => NextHop::V6 {
                        global: v6,
                        link_local: None,
                    },
                    _ => return None,
                },
                Family::Ipv6Unicast => match (info.local_v6, info.local_v4) {
                    (Some(v6), _) => NextHop::V6 {
                        global: v6,
                        link_local: None,
                    },
                    (None, Some(v4)) => NextHop::V6 {
                        global: v4.to_ipv6_mapped(),
                        link_local: None,
                    },
                    _ => return None,
                },
            }
        } else {
            best.attrs.next_hop
        };
        Some(self.interner.intern(&a, next_hop))
    }
}

/// Turn a peer's pending changes into packed UPDATEs (withdrawals first,
/// then announcements grouped by shared attributes, then End-of-RIB).
pub(super) fn encode_pending(ps: &mut PeerState) -> Option<Bytes> {
    if ps.pending.is_empty() && ps.pending_eor.is_empty() {
        return None;
    }
    let info = ps.info.as_ref()?;
    let cx = info.encode.clone();
    let mut withdraw: [Vec<Nlri>; 2] = [Vec::new(), Vec::new()];
    let mut groups: HashMap<(usize, Family), (Arc<RouteAttrs>, Vec<Nlri>)> = HashMap::new();
    for (prefix, attrs) in ps.pending.drain() {
        let fi = super::fam_idx(prefix.family());
        match attrs {
            Some(a) => {
                if ps
                    .adj_out
                    .get(&prefix)
                    .is_some_and(|old| Arc::ptr_eq(old, &a))
                {
                    continue;
                }
                ps.adj_out.insert(prefix, a.clone());
                let key = (Arc::as_ptr(&a) as usize, prefix.family());
                groups
                    .entry(key)
                    .or_insert_with(|| (a, Vec::new()))
                    .1
                    .push(Nlri::from(prefix));
            }
            None => {
                if ps.adj_out.remove(&prefix).is_some() {
                    withdraw[fi].push(Nlri::from(prefix));
                }
            }
        }
    }
    ps.counters.sent = ps.adj_out.len() as u32;
    let mut out = BytesMut::new();
    for f in Family::ALL {
        let w = &mut withdraw[super::fam_idx(f)];
        if !w.is_empty() {
            w.sort();
            encode_withdraw(f, w, &cx, &mut out);
        }
    }
    for ((_, f), (a, mut nlri)) in groups {
        nlri.sort();
        encode_announce(&a.attrs(), f, a.next_hop, &nlri, &cx, &mut out);
    }
    for f in ps.pending_eor.drain(..) {
        Message::Update(Update::eor(f)).encode(&cx, &mut out);
    }
    if out.is_empty() {
        None
    } else {
        Some(out.freeze())
    }
}
