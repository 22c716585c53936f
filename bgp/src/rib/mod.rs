//! Adj-RIB-In, Loc-RIB and Adj-RIB-Out (RFC 4271 §3.2), sans IO.
//!
//! Adj-RIB-In and Loc-RIB share one table per family, as in BIRD: each
//! destination holds every peer's path, the selected ones first. Attributes
//! are interned ([`intern`]). Changes are applied at once and their effects
//! (kernel FIB changes, UPDATEs to each peer, max-prefix violations) are
//! collected until [`Rib::flush`], so a burst of UPDATEs costs one batch of
//! kernel writes and packed UPDATEs.

#![allow(clippy::collapsible_if)] // nested `if let` keeps the RFC steps apart

pub mod decision;
mod export;
pub mod filter;
mod group;
pub mod intern;
pub mod log;
pub mod memory;
pub mod segmap;
pub mod table;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use self::decision::{Connected, DecisionOptions, IgpCost, LOCAL, Path, PeerIdx, Source};
use self::intern::{FastState, Interner, RouteAttrs};
use self::table::{Dest, Key, Table, V4Key};
use crate::wire::{
    CommunitySet, EncodeCx, Families, Family, NextHop, Nlri, Origin, PathAttrs, Prefix, Update,
};
pub use log::{LOG_BOUND, Left, LogReader};

/// Speaker-wide RIB settings.
#[derive(Clone, Debug)]
pub struct RibConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Route-reflector cluster id (defaults to the router id).
    pub cluster_id: Option<Ipv4Addr>,
    /// Decision process options.
    pub decision: DecisionOptions,
}

/// What the RIB knows about an established peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Identity for the decision process.
    pub source: Source,
    /// Our IPv4 address toward the peer (next hop self).
    pub local_v4: Option<Ipv4Addr>,
    /// Our IPv6 address toward the peer (next hop self).
    pub local_v6: Option<Ipv6Addr>,
    /// Route-reflector client.
    pub rr_client: bool,
    /// Always advertise ourselves as next hop.
    pub next_hop_self: bool,
    /// Communities added to the routes we originate when sent to this peer.
    pub communities: CommunitySet,
    /// Negotiated families.
    pub families: Families,
    /// Encoding context.
    pub encode: EncodeCx,
    /// Max-prefix limit per family.
    pub max_prefix: Option<u32>,
    /// Import and export filters.
    pub filters: PeerFilters,
}

/// A peer's import and export filters (first match decides; no match:
/// import accepts, export falls back to [`Rib::set_default_export`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerFilters {
    /// Applied to routes the peer sends.
    pub import: Vec<filter::Rule>,
    /// Applied to routes sent to the peer.
    pub export: Vec<filter::Rule>,
}

/// A change of the forwarding entry for a prefix: the next hops of the
/// selected paths (empty: remove the route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FibChange {
    /// Destination.
    pub prefix: Prefix,
    /// Next hops (ECMP when more than one).
    pub next_hops: Vec<IpAddr>,
}

/// One path of a destination, for displays.
#[derive(Clone, Debug)]
pub struct PathView {
    /// Where it came from ([`decision::LOCAL`]: originated here).
    pub peer: PeerIdx,
    /// Selected by the decision process (the first selected is the best;
    /// more than one with multipath).
    pub selected: bool,
    /// Kept stale by graceful restart.
    pub stale: bool,
    /// Its attributes and next hop.
    pub attrs: Arc<RouteAttrs>,
}

/// A destination and its paths, selected first.
#[derive(Clone, Debug)]
pub struct RouteView {
    /// Destination.
    pub prefix: Prefix,
    /// Paths, the selected ones first.
    pub paths: Vec<PathView>,
}

/// Per-peer counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Paths from the peer in the table now (per family: v4, v6).
    pub accepted: [u32; 2],
    /// Announcements received in all.
    pub received: u64,
    /// Announcements refused by import rules (loops, treat-as-withdraw).
    pub rejected: u64,
    /// Prefixes advertised to the peer now.
    pub sent: u32,
}

/// Effects of a batch of changes.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Kernel FIB changes, in order.
    pub fib: Vec<FibChange>,
    /// Readers of the peers that entered their update group's log in this
    /// flush (a new session, the end of a restart deferral): the peer's
    /// writer reads what it is sent with them (see [`LogReader`]).
    pub attach: Vec<(PeerIdx, LogReader)>,
    /// Peers over their max-prefix limit.
    pub max_prefix: Vec<(PeerIdx, Family, u32)>,
}

#[derive(Debug, Default)]
struct PeerState {
    info: Option<PeerInfo>,
    counters: PeerCounters,
    /// Its update group while established.
    group: Option<group::GroupId>,
    /// Families of the group's table to send it at the next flush.
    dump: Families,
    pending_eor: Vec<Family>,
    /// Has a place in its group's log (a reader was handed out).
    in_log: bool,
    over_limit: bool,
    /// Established, but its initial routes are withheld while deferring.
    deferred: bool,
}

fn fam_idx(f: Family) -> usize {
    match f {
        Family::Ipv4Unicast => 0,
        Family::Ipv6Unicast => 1,
    }
}

/// The kernel next hops of a selection (best first): none when we
/// originate the best path ourselves, else each selected peer path's next
/// hop, repeats in a row dropped.
fn hops(sel: &[Path]) -> impl Iterator<Item = IpAddr> + '_ {
    let ours = sel.first().is_some_and(|p| p.peer() == LOCAL);
    let mut last: Option<IpAddr> = None;
    sel.iter()
        .filter(move |p| !ours && p.peer() != LOCAL)
        .map(|p| p.attrs.next_hop.addr())
        .filter(move |h| last.replace(*h) != Some(*h))
}

/// The RIB.
pub struct Rib {
    cfg: RibConfig,
    v4: Table<V4Key>,
    v6: Table<Prefix>,
    interner: Interner,
    peers: Vec<PeerState>,
    /// Update groups (one Adj-RIB-Out each) and their index by policy.
    groups: HashMap<group::GroupId, group::Group, FastState>,
    group_index: HashMap<group::GroupKey, group::GroupId>,
    next_group: group::GroupId,
    igp: Box<dyn IgpCost + Send>,
    fib: Vec<FibChange>,
    /// Destinations whose selection has kernel next hops (what the FIB
    /// holds once every change handed out is applied).
    fib_routes: usize,
    max_prefix: Vec<(PeerIdx, Family, u32)>,
    /// Export rules after each peer's own (none: export everything).
    default_export: Vec<filter::Rule>,
    /// Initial updates are withheld (restarting, RFC 4724 §4.1).
    deferring: bool,
    /// Sessions handed a log reader so far (tells a stale reader).
    next_epoch: u64,
    /// Bytes of a group's log a member may be behind (see [`log`]).
    log_bound: usize,
}

impl std::fmt::Debug for Rib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rib")
            .field("v4", &self.v4.len())
            .field("v6", &self.v6.len())
            .finish()
    }
}

/// Apply `$body` to the table of `$fam` bound as `$t`.
macro_rules! with_table {
    ($self:ident, $fam:expr, |$t:ident| $body:expr) => {
        match $fam {
            Family::Ipv4Unicast => {
                let $t = &mut $self.v4;
                $body
            }
            Family::Ipv6Unicast => {
                let $t = &mut $self.v6;
                $body
            }
        }
    };
}

mod restart;

impl Rib {
    /// An empty RIB.
    pub fn new(cfg: RibConfig) -> Self {
        let peers = vec![PeerState::default()]; // index 0: LOCAL
        Rib {
            cfg,
            v4: Table::default(),
            v6: Table::default(),
            interner: Interner::default(),
            peers,
            groups: HashMap::default(),
            group_index: HashMap::new(),
            next_group: 0,
            igp: Box::new(Connected),
            fib: Vec::new(),
            fib_routes: 0,
            max_prefix: Vec::new(),
            default_export: Vec::new(),
            deferring: false,
            next_epoch: 0,
            log_bound: log::LOG_BOUND,
        }
    }

    /// Bytes of its group's log a member may be behind before it is
    /// resynced from the group's table instead (default [`LOG_BOUND`]).
    pub fn set_log_bound(&mut self, bytes: usize) {
        self.log_bound = bytes;
    }

    /// The export rules every peer gets after its own: when they change,
    /// every peer is sent what it now may see and told to forget what it
    /// may not.
    pub fn set_default_export(&mut self, rules: Vec<filter::Rule>) {
        if rules == self.default_export {
            return;
        }
        self.default_export = rules;
        for (prefix, p) in self.all_best(Families::BOTH) {
            self.export_change(&prefix, Some(&p));
        }
    }

    /// Replace the IGP cost hook.
    pub fn set_igp(&mut self, igp: Box<dyn IgpCost + Send>) {
        self.igp = igp;
    }

    /// Reserve an index for a peer (its routes and counters live under it).
    pub fn add_peer(&mut self) -> PeerIdx {
        self.peers.push(PeerState::default());
        (self.peers.len() - 1) as PeerIdx
    }

    /// Counters of a peer.
    pub fn counters(&self, peer: PeerIdx) -> PeerCounters {
        let Some(p) = self.peers.get(peer as usize) else {
            return PeerCounters::default();
        };
        let mut c = p.counters;
        c.sent = match p.group.and_then(|g| self.groups.get(&g)) {
            Some(g) if !p.deferred => g.sent_to(peer),
            _ => 0,
        };
        c
    }

    /// Bytes of encoded UPDATEs the groups' logs hold for members that
    /// have not read them yet (entries only, not the joiners' tables).
    pub fn out_log_bytes(&self) -> usize {
        self.groups.values().map(|g| g.log.entry_bytes()).sum()
    }

    /// Update groups in use and their members, for status and tests.
    pub fn groups(&self) -> Vec<Vec<PeerIdx>> {
        let mut v: Vec<Vec<PeerIdx>> = self
            .groups
            .values()
            .map(|g| g.members.iter().copied().collect())
            .collect();
        v.sort();
        v
    }

    /// The best path of every destination of `fams`.
    fn all_best(&self, fams: Families) -> Vec<(Prefix, Path)> {
        let mut best = Vec::new();
        if fams.contains(Family::Ipv4Unicast) {
            best.extend(
                self.v4
                    .map
                    .iter()
                    .filter_map(|(k, d)| d.selected().first().map(|p| (k.to_prefix(), p.clone()))),
            );
        }
        if fams.contains(Family::Ipv6Unicast) {
            best.extend(
                self.v6
                    .map
                    .iter()
                    .filter_map(|(k, d)| d.selected().first().map(|p| (*k, p.clone()))),
            );
        }
        best
    }

    /// Destinations per family.
    pub fn len(&self, f: Family) -> usize {
        match f {
            Family::Ipv4Unicast => self.v4.len(),
            Family::Ipv6Unicast => self.v6.len(),
        }
    }

    /// Distinct attribute sets held.
    pub fn attribute_sets(&self) -> usize {
        self.interner.len()
    }

    /// Up to `limit` destinations (both families) with every path, sorted
    /// by prefix; the table is not walked beyond `limit` entries.
    pub fn routes(&self, limit: usize) -> Vec<RouteView> {
        let view = |prefix: Prefix, d: &Dest| RouteView {
            prefix,
            paths: d
                .paths()
                .iter()
                .enumerate()
                .map(|(i, p)| PathView {
                    peer: p.peer(),
                    selected: i < d.selected().len(),
                    stale: p.is_stale(),
                    attrs: p.attrs.clone(),
                })
                .collect(),
        };
        let mut out: Vec<RouteView> = self
            .v4
            .map
            .iter()
            .map(|(k, d)| view(k.to_prefix(), d))
            .chain(self.v6.map.iter().map(|(k, d)| view(*k, d)))
            .take(limit)
            .collect();
        out.sort_by_key(|r| r.prefix);
        out
    }

    /// The selected next hops for a prefix (for tests and status).
    pub fn best(&self, p: &Prefix) -> Option<Vec<(PeerIdx, Arc<RouteAttrs>)>> {
        let d = match p.family() {
            Family::Ipv4Unicast => self.v4.map.get(&V4Key::from_prefix(p)),
            Family::Ipv6Unicast => self.v6.map.get(p),
        }?;
        Some(
            d.selected()
                .iter()
                .map(|x| (x.peer(), x.attrs.clone()))
                .collect(),
        )
    }

    fn source(&self, peer: PeerIdx) -> Option<Source> {
        if peer == LOCAL {
            return Some(Source {
                asn: self.cfg.local_as,
                router_id: self.cfg.router_id,
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                ebgp: false,
            });
        }
        self.peers
            .get(peer as usize)?
            .info
            .as_ref()
            .map(|i| i.source.clone())
    }

    fn cluster_id(&self) -> Ipv4Addr {
        self.cfg.cluster_id.unwrap_or(self.cfg.router_id)
    }

    /// Import rules shared by every prefix of an UPDATE: AS loop (RFC 4271
    /// §9.1.2), ORIGINATOR_ID and CLUSTER_LIST loops (RFC 4456 §8).
    fn import_ok(&self, a: &PathAttrs) -> bool {
        if a.as_path
            .as_ref()
            .is_some_and(|p| p.contains(self.cfg.local_as))
        {
            return false;
        }
        if a.originator_id == Some(self.cfg.router_id) {
            return false;
        }
        !a.cluster_list.contains(&self.cluster_id())
    }

    /// Apply one UPDATE from `peer`.
    pub fn apply_update(&mut self, peer: PeerIdx, u: &Update) {
        let Some(info) = self.peers.get(peer as usize).and_then(|p| p.info.as_ref()) else {
            return;
        };
        let fams = info.families;
        for n in &u.withdrawn {
            self.remove_path(peer, &n.prefix, n.path_id);
        }
        if let Some(m) = &u.mp_unreach {
            if fams.contains(m.family) {
                for n in &m.withdrawn {
                    self.remove_path(peer, &n.prefix, n.path_id);
                }
            }
        }
        let mut announce: Vec<(&[Nlri], NextHop)> = Vec::new();
        if !u.nlri.is_empty() {
            if let Some(nh) = u.attrs.next_hop {
                announce.push((&u.nlri, NextHop::V4(nh)));
            }
        }
        if let Some(m) = &u.mp_reach {
            if fams.contains(m.family) {
                announce.push((&m.nlri, m.next_hop));
            }
        }
        if announce.is_empty() {
            return;
        }
        let n_ann: usize = announce.iter().map(|(n, _)| n.len()).sum();
        let ok = !u.treat_as_withdraw() && self.import_ok(&u.attrs);
        if let Some(ps) = self.peers.get_mut(peer as usize) {
            ps.counters.received += n_ann as u64;
            if !ok {
                ps.counters.rejected += n_ann as u64;
            }
        }
        for (nlri, nh) in announce {
            if !ok {
                for n in nlri {
                    self.remove_path(peer, &n.prefix, n.path_id);
                }
                continue;
            }
            // Import filter: refused prefixes count as withdrawn. The
            // rules are cloned only for a peer that has some.
            let import: Option<Vec<filter::Rule>> = self
                .peers
                .get(peer as usize)
                .and_then(|p| p.info.as_ref())
                .filter(|i| !i.filters.import.is_empty())
                .map(|i| i.filters.import.clone());
            let refused = |n: &Nlri| {
                import.as_deref().is_some_and(|rules| {
                    filter::evaluate(rules, &n.prefix, false) == Some(filter::FilterAction::Reject)
                })
            };
            let shared = self.interner.intern(&u.attrs, nh);
            for n in nlri {
                if refused(n) {
                    if let Some(ps) = self.peers.get_mut(peer as usize) {
                        ps.counters.rejected += 1;
                    }
                    self.remove_path(peer, &n.prefix, n.path_id);
                    continue;
                }
                self.upsert_path(&n.prefix, Path::new(shared.clone(), peer, n.path_id));
            }
        }
        self.check_limit(peer);
    }

    fn check_limit(&mut self, peer: PeerIdx) {
        let Some(ps) = self.peers.get_mut(peer as usize) else {
            return;
        };
        let Some(limit) = ps.info.as_ref().and_then(|i| i.max_prefix) else {
            return;
        };
        if ps.over_limit {
            return;
        }
        for f in Family::ALL {
            if ps.counters.accepted[fam_idx(f)] > limit {
                ps.over_limit = true;
                self.max_prefix.push((peer, f, limit));
                return;
            }
        }
    }

    /// Originate a prefix (our blocks, service IPs) with these communities.
    pub fn originate(&mut self, prefix: Prefix, communities: CommunitySet) {
        let next_hop = match prefix.family() {
            Family::Ipv4Unicast => NextHop::V4(Ipv4Addr::UNSPECIFIED),
            Family::Ipv6Unicast => NextHop::V6 {
                global: Ipv6Addr::UNSPECIFIED,
                link_local: None,
            },
        };
        let mut attrs = PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(Default::default()),
            ..PathAttrs::default()
        };
        communities.add_to(&mut attrs);
        let shared = self.interner.intern(&attrs, next_hop);
        self.upsert_path(&prefix, Path::new(shared, LOCAL, 0));
    }

    /// Stop originating a prefix.
    pub fn withdraw_local(&mut self, prefix: &Prefix) {
        self.remove_path(LOCAL, prefix, 0);
    }

    fn upsert_path(&mut self, prefix: &Prefix, path: Path) {
        let peer = path.peer();
        let fi = fam_idx(prefix.family());
        let mut added = false;
        let changed = with_table!(self, prefix.family(), |t| {
            let key = Key::from_prefix(prefix);
            match t.map.remove(&key) {
                None => {
                    added = true;
                    let d = Dest::One(path);
                    t.map.insert(key, d);
                    None
                }
                Some(Dest::One(old)) if old.peer() == peer && old.path_id == path.path_id => {
                    let same = Arc::ptr_eq(&old.attrs, &path.attrs) && !old.is_stale();
                    t.map.insert(key, Dest::One(path));
                    if same {
                        Some(None)
                    } else {
                        Some(Some(vec![old]))
                    }
                }
                Some(d) => {
                    let old_sel = d.selected().to_vec();
                    let mut v = d.into_vec();
                    match v
                        .iter_mut()
                        .find(|p| p.peer() == peer && p.path_id == path.path_id)
                    {
                        Some(p) => *p = path,
                        None => {
                            added = true;
                            v.push(path);
                        }
                    }
                    t.map.insert(
                        key,
                        Dest::Many(Box::new(table::Multi { paths: v, nsel: 0 })),
                    );
                    Some(Some(old_sel))
                }
            }
        });
        if added {
            if let Some(ps) = self.peers.get_mut(peer as usize) {
                ps.counters.accepted[fi] += 1;
            }
        }
        match changed {
            None => self.reselect(prefix, Vec::new()),
            Some(None) => {}
            Some(Some(old)) => self.reselect(prefix, old),
        }
    }

    fn remove_path(&mut self, peer: PeerIdx, prefix: &Prefix, path_id: u32) {
        let fi = fam_idx(prefix.family());
        let old = with_table!(self, prefix.family(), |t| {
            let key = Key::from_prefix(prefix);
            let Some(d) = t.map.get(&key) else { return };
            if !d
                .paths()
                .iter()
                .any(|p| p.peer() == peer && p.path_id == path_id)
            {
                return;
            }
            let Some(d) = t.map.remove(&key) else { return };
            let old = d.selected().to_vec();
            let v = d.into_vec();
            let rest: Vec<Path> = v
                .into_iter()
                .filter(|p| !(p.peer() == peer && p.path_id == path_id))
                .collect();
            if !rest.is_empty() {
                t.map.insert(
                    key,
                    Dest::Many(Box::new(table::Multi {
                        paths: rest,
                        nsel: 0,
                    })),
                );
            }
            old
        });
        if let Some(ps) = self.peers.get_mut(peer as usize) {
            ps.counters.accepted[fi] = ps.counters.accepted[fi].saturating_sub(1);
        }
        self.reselect(prefix, old);
    }

    /// Re-run the decision process for `prefix`; `old_sel` holds the paths
    /// selected before the change, to detect what changed.
    fn reselect(&mut self, prefix: &Prefix, old_sel: Vec<Path>) {
        let fam = prefix.family();
        let key_v4 = V4Key::from_prefix(prefix);
        // Fast path, the common case of a table load: one path that is a
        // candidate (known peer, reachable next hop) is the selection by
        // itself; the entry stays where it is, no decision process runs.
        let single = match fam {
            Family::Ipv4Unicast => self.v4.map.get(&key_v4),
            Family::Ipv6Unicast => self.v6.map.get(prefix),
        }
        .and_then(|d| match d {
            Dest::One(p)
                if self.source(p.peer()).is_some()
                    && self.igp.cost(&p.attrs.next_hop).is_some() =>
            {
                Some(p.clone())
            }
            _ => None,
        });
        let dest = match (&single, fam) {
            (Some(_), _) => None,
            (None, Family::Ipv4Unicast) => self.v4.map.remove(&key_v4),
            (None, Family::Ipv6Unicast) => self.v6.map.remove(prefix),
        };
        // The new selection: the lone candidate, or the decision's order.
        let mut many: Vec<Path> = Vec::new();
        if let Some(d) = dest {
            let v = d.into_vec();
            let order = decision::select(
                &v,
                |p| self.source(p),
                self.igp.as_ref(),
                &self.cfg.decision,
            );
            let nsel = order.len();
            let mut sorted: Vec<Path> = order.iter().map(|&i| v[i].clone()).collect();
            for (i, p) in v.into_iter().enumerate() {
                if !order.contains(&i) {
                    sorted.push(p);
                }
            }
            many = sorted[..nsel].to_vec();
            if let Some(d) = Dest::from_vec(sorted, nsel) {
                match fam {
                    Family::Ipv4Unicast => self.v4.map.insert(key_v4, d),
                    Family::Ipv6Unicast => self.v6.map.insert(*prefix, d),
                };
            }
        }
        let new_sel: &[Path] = match &single {
            Some(p) => std::slice::from_ref(p),
            None => &many,
        };
        let same_best = match (old_sel.first(), new_sel.first()) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.peer() == b.peer() && a.path_id == b.path_id && Arc::ptr_eq(&a.attrs, &b.attrs)
            }
            _ => false,
        };
        // A change for the kernel only when the next hops differ; the new
        // list is allocated only then, at its exact size.
        if !hops(&old_sel).eq(hops(new_sel)) {
            let n = hops(new_sel).count();
            match (hops(&old_sel).next().is_some(), n > 0) {
                (false, true) => self.fib_routes += 1,
                (true, false) => self.fib_routes = self.fib_routes.saturating_sub(1),
                _ => {}
            }
            let mut next_hops = Vec::with_capacity(n);
            next_hops.extend(hops(new_sel));
            self.fib.push(FibChange {
                prefix: *prefix,
                next_hops,
            });
        }
        if !same_best {
            let best = new_sel.first().cloned();
            self.export_change(prefix, best.as_ref());
        }
    }

    /// A peer reached Established: it joins its update group, whose table
    /// it is sent at the next flush, then End-of-RIB.
    pub fn peer_up(&mut self, peer: PeerIdx, info: PeerInfo) {
        self.leave_group(peer);
        let Some(ps) = self.peers.get_mut(peer as usize) else {
            return;
        };
        ps.info = Some(info);
        ps.over_limit = false;
        ps.counters.sent = 0;
        ps.deferred = self.deferring;
        self.join_group(peer);
    }

    /// Resend everything of `fams` to a peer (route refresh): its group's
    /// table, then End-of-RIB; nothing while its initial routes are
    /// deferred (they come in full).
    pub fn refresh(&mut self, peer: PeerIdx, fams: Families) {
        let Some(ps) = self.peers.get_mut(peer as usize) else {
            return;
        };
        if ps.deferred || ps.group.is_none() {
            return;
        }
        for f in fams.iter() {
            ps.dump.insert(f);
        }
        ps.pending_eor.extend(fams.iter());
        self.group_waits(peer);
    }

    /// Destinations whose selection has kernel next hops: what the FIB
    /// holds once every change handed out has been applied.
    pub fn fib_routes(&self) -> usize {
        self.fib_routes
    }

    /// The prefixes of [`Rib::fib_routes`] (a walk over both tables).
    pub fn fib_prefixes(&self) -> Vec<Prefix> {
        let v4 = self
            .v4
            .map
            .iter()
            .filter(|(_, d)| hops(d.selected()).next().is_some())
            .map(|(k, _)| k.to_prefix());
        let v6 = self
            .v6
            .map
            .iter()
            .filter(|(_, d)| hops(d.selected()).next().is_some())
            .map(|(k, _)| *k);
        v4.chain(v6).collect()
    }

    /// Kernel FIB changes collected since the last [`Rib::flush`].
    pub fn pending_fib(&self) -> usize {
        self.fib.len()
    }

    /// Collect the effects of everything applied since the last flush.
    pub fn flush(&mut self) -> Flushed {
        let mut out = Flushed {
            fib: std::mem::take(&mut self.fib),
            attach: Vec::new(),
            max_prefix: std::mem::take(&mut self.max_prefix),
        };
        self.flush_groups(&mut out);
        out
    }
}
