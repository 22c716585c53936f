//! The decision process of RFC 4271 §9.1.2.2, written as the RFC does: a
//! sequence of eliminations over the candidate routes of one destination
//! (which keeps MED comparison correct when it is only between routes from
//! the same neighbouring AS), extended with RFC 4456 §9 (ORIGINATOR_ID in
//! place of the router id, shorter CLUSTER_LIST first).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::intern::RouteAttrs;
use crate::wire::NextHop;

/// Index of a route source: 0 is the local speaker (originated routes).
pub type PeerIdx = u32;

/// The local source.
pub const LOCAL: PeerIdx = 0;

/// LOCAL_PREF assumed when a route has none.
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// What the decision process needs to know about a route's source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Peer AS (our AS for local routes).
    pub asn: u32,
    /// Peer BGP identifier.
    pub router_id: Ipv4Addr,
    /// Peer address.
    pub addr: IpAddr,
    /// External peer.
    pub ebgp: bool,
}

/// One path to a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// Interned attributes.
    pub attrs: Arc<RouteAttrs>,
    /// Source (high bit: stale, RFC 4724).
    peer: u32,
    /// ADD-PATH identifier.
    pub path_id: u32,
}

const STALE: u32 = 1 << 31;

impl Path {
    /// A fresh path.
    pub fn new(attrs: Arc<RouteAttrs>, peer: PeerIdx, path_id: u32) -> Self {
        Path {
            attrs,
            peer: peer & !STALE,
            path_id,
        }
    }
    /// Its source.
    pub fn peer(&self) -> PeerIdx {
        self.peer & !STALE
    }
    /// Kept only because its peer is restarting?
    pub fn is_stale(&self) -> bool {
        self.peer & STALE != 0
    }
    /// Mark stale.
    pub fn set_stale(&mut self) {
        self.peer |= STALE;
    }
}

/// Options of the decision process.
#[derive(Clone, Debug, Default)]
pub struct DecisionOptions {
    /// Compare MED between routes from different neighbouring ASes too.
    pub always_compare_med: bool,
    /// Maximum number of equal-cost paths installed (0 or 1: no ECMP).
    pub multipath: usize,
}

/// Cost to reach a next hop; `None` when unreachable (the route is then
/// not a candidate). The default treats every next hop as reachable at 0.
pub trait IgpCost {
    /// The cost.
    fn cost(&self, nh: &NextHop) -> Option<u32>;
}

/// Every next hop reachable at cost 0 (directly connected peers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Connected;

impl IgpCost for Connected {
    fn cost(&self, _: &NextHop) -> Option<u32> {
        Some(0)
    }
}

fn keep_min<K: Ord + Copy>(c: &mut Vec<usize>, key: impl Fn(usize) -> K) {
    if let Some(m) = c.iter().map(|&i| key(i)).min() {
        c.retain(|&i| key(i) == m);
    }
}

/// Rank the paths: returns the indices of the selected paths, best first;
/// more than one means an ECMP set (when `multipath` allows). Empty when no
/// path is usable.
pub fn select(
    paths: &[Path],
    source: impl Fn(PeerIdx) -> Option<Source>,
    igp: &dyn IgpCost,
    opts: &DecisionOptions,
) -> Vec<usize> {
    let src: Vec<Option<Source>> = paths.iter().map(|p| source(p.peer())).collect();
    let cost: Vec<Option<u32>> = paths.iter().map(|p| igp.cost(&p.attrs.next_hop)).collect();
    let mut c: Vec<usize> = (0..paths.len())
        .filter(|&i| src[i].is_some() && cost[i].is_some())
        .collect();
    if c.len() <= 1 {
        return c;
    }
    let a = |i: usize| &*paths[i].attrs;
    let s = |i: usize| src[i].as_ref();
    // a) highest degree of preference (LOCAL_PREF)
    keep_min(&mut c, |i| {
        std::cmp::Reverse(a(i).local_pref().unwrap_or(DEFAULT_LOCAL_PREF))
    });
    // locally originated routes before learned ones (as BIRD and FRR do)
    keep_min(&mut c, |i| paths[i].peer() != super::decision::LOCAL);
    // b) shortest AS_PATH
    keep_min(&mut c, |i| a(i).as_path_len());
    // c) lowest ORIGIN
    keep_min(&mut c, |i| a(i).origin().map_or(0, |o| o as u8));
    // d) MED, among routes from the same neighbouring AS
    let neighbor_as = |i: usize| a(i).first_as().unwrap_or(0);
    let med = |i: usize| a(i).med().unwrap_or(0);
    let before = c.clone();
    c.retain(|&i| {
        !before.iter().any(|&j| {
            (opts.always_compare_med || neighbor_as(j) == neighbor_as(i)) && med(j) < med(i)
        })
    });
    // e) eBGP over iBGP
    if c.iter().any(|&i| s(i).is_some_and(|x| x.ebgp)) {
        c.retain(|&i| s(i).is_some_and(|x| x.ebgp));
    }
    // f) lowest interior cost to the next hop
    keep_min(&mut c, |i| cost[i].unwrap_or(u32::MAX));
    let ecmp = c.clone();
    // g) lowest BGP identifier (ORIGINATOR_ID when reflected)
    let id = |i: usize| {
        a(i).originator_id()
            .unwrap_or_else(|| s(i).map_or(Ipv4Addr::UNSPECIFIED, |x| x.router_id))
    };
    keep_min(&mut c, id);
    keep_min(&mut c, |i| a(i).cluster_list().len());
    // lowest peer address, then path identifier
    keep_min(&mut c, |i| s(i).map(|x| x.addr));
    keep_min(&mut c, |i| paths[i].path_id);
    let Some(&best) = c.first() else { return c };
    let mut out = vec![best];
    if opts.multipath > 1 {
        for i in ecmp {
            if i != best
                && out.len() < opts.multipath
                && s(i).map(|x| x.ebgp) == s(best).map(|x| x.ebgp)
            {
                out.push(i);
            }
        }
    }
    out
}
