//! Graceful restart (RFC 4724) in the RIB: a peer's routes kept as stale
//! while it restarts and purged when it does not refresh them, and, when we
//! are the one restarting, the initial updates withheld until we have
//! heard everyone's (§4.1: the restarting speaker defers route selection
//! until End-of-RIB from its peers), so a helper keeps the routes it has
//! from us until we can send it a complete table. This matters for a
//! route reflector: its clients' routes reach the other clients only
//! through it, and an early End-of-RIB would make them purge those.

use super::Rib;
use super::decision::{Path, PeerIdx};
use super::table::{Dest, Key};
use crate::wire::{Families, Family, Prefix};

impl Rib {
    /// A peer left Established. Routes of `graceful` families are kept as
    /// stale (RFC 4724); the others are withdrawn.
    pub fn peer_down(&mut self, peer: PeerIdx, graceful: Families) {
        self.leave_group(peer);
        if let Some(ps) = self.peers.get_mut(peer as usize) {
            ps.counters.sent = 0;
            ps.deferred = false;
        }
        for f in Family::ALL {
            if graceful.contains(f) {
                self.mark_stale(peer, f);
            } else {
                self.drop_paths(peer, f, false);
            }
        }
        // The source stays known while stale routes need it for selection.
        if graceful.is_empty() {
            if let Some(ps) = self.peers.get_mut(peer as usize) {
                ps.info = None;
            }
        }
    }

    /// Remove a peer's routes of `family` that are still stale.
    pub fn purge_stale(&mut self, peer: PeerIdx, family: Family) {
        self.drop_paths(peer, family, true);
    }

    fn mark_stale(&mut self, peer: PeerIdx, f: Family) {
        with_table!(self, f, |t| {
            for d in t.map.values_mut() {
                match d {
                    Dest::One(p) if p.peer() == peer => p.set_stale(),
                    Dest::Many(m) => m
                        .paths
                        .iter_mut()
                        .filter(|p| p.peer() == peer)
                        .for_each(Path::set_stale),
                    _ => {}
                }
            }
        });
    }

    fn drop_paths(&mut self, peer: PeerIdx, f: Family, only_stale: bool) {
        let victims: Vec<(Prefix, u32)> = with_table!(self, f, |t| {
            t.map
                .iter()
                .flat_map(|(k, d)| {
                    d.paths()
                        .iter()
                        .filter(|p| p.peer() == peer && (!only_stale || p.is_stale()))
                        .map(move |p| (k.to_prefix(), p.path_id))
                })
                .collect()
        });
        for (prefix, id) in victims {
            self.remove_path(peer, &prefix, id);
        }
    }

    /// Withhold every peer's initial routes and End-of-RIB from now until
    /// [`Rib::end_deferral`]; the caller ends it when every peer has sent
    /// its End-of-RIB, or after a deferral time.
    pub fn defer_initial_updates(&mut self) {
        self.deferring = true;
    }

    /// Whether initial updates are being withheld.
    pub fn deferring(&self) -> bool {
        self.deferring
    }

    /// Stop deferring: every established peer gets its complete initial
    /// routes and End-of-RIB (at the next [`Rib::flush`]).
    pub fn end_deferral(&mut self) {
        self.deferring = false;
        for idx in 1..self.peers.len() {
            let ps = &mut self.peers[idx];
            if !std::mem::take(&mut ps.deferred) {
                continue;
            }
            if let Some(fams) = ps.info.as_ref().map(|i| i.families) {
                self.refresh(idx as PeerIdx, fams);
            }
        }
    }
}
