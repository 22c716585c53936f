//! Export rules (RFC 4271 §9.1.3, iBGP split horizon, RFC 4456 route
//! reflection, next hop self/keep), evaluated once per update group (the
//! Adj-RIB-Out and the encoding are in `group`).

use std::sync::Arc;

use super::decision::{DEFAULT_LOCAL_PREF, LOCAL, Path};
use super::filter::{self, FilterAction};
use super::group::Sent;
use super::intern::{Interner, RouteAttrs};
use super::{PeerInfo, PeerState, Rib, RibConfig};
use crate::wire::attrs::flag;
use crate::wire::community::{NO_ADVERTISE, NO_EXPORT, NO_EXPORT_SUBCONFED};
use crate::wire::{Family, NextHop, Prefix};

impl Rib {
    /// The best path of `prefix` changed: queue what each group must hear.
    pub(super) fn export_change(&mut self, prefix: &Prefix, best: Option<&Path>) {
        let Rib {
            groups,
            peers,
            interner,
            cfg,
            default_export,
            ..
        } = self;
        let cx = Cx {
            cfg,
            peers: &peers[..],
            default_export: &default_export[..],
        };
        for g in groups.values_mut() {
            let sent = best.and_then(|b| {
                cx.attrs(interner, &g.info, prefix, b).map(|attrs| Sent {
                    attrs,
                    except: b.peer(),
                })
            });
            g.queue(prefix, sent, false);
        }
    }
}

/// What export reads besides the target group.
pub(super) struct Cx<'a> {
    pub(super) cfg: &'a RibConfig,
    pub(super) peers: &'a [PeerState],
    pub(super) default_export: &'a [filter::Rule],
}

impl Cx<'_> {
    /// What a peer with `info` (any member of its group: only the
    /// group's fields are read) is sent for `best`, or `None` if it must
    /// not see it. The peer `best` came from is not sent it at all (see
    /// `group`).
    pub(super) fn attrs(
        &self,
        interner: &mut Interner,
        info: &PeerInfo,
        prefix: &Prefix,
        best: &Path,
    ) -> Option<Arc<RouteAttrs>> {
        let src_idx = best.peer();
        if !info.families.contains(prefix.family()) {
            return None;
        }
        let local = src_idx == LOCAL;
        let ebgp = info.source.ebgp;
        let verdict = filter::evaluate(&info.filters.export, prefix, local)
            .or_else(|| filter::evaluate(self.default_export, prefix, local));
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
        Some(interner.intern(&a, next_hop))
    }
}
