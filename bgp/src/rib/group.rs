//! Update groups: peers whose outbound policy is the same share one
//! Adj-RIB-Out, and each change is encoded once per group and handed to
//! every member as the same bytes (`Bytes` slices of one buffer).
//!
//! A group is what [`GroupKey`] holds: everything [`export_attrs`]
//! (super::export) reads of the target (iBGP/eBGP and the peer AS of an
//! external group, route-reflector client or not, next hop self and our
//! addresses, the communities added to our routes, the export rules) and
//! everything that changes the encoding (families, 4-octet AS, ADD-PATH,
//! extended next hop). The clients of a reflector form one group.
//!
//! **The source of a route never gets it back.** Each route in a group's
//! table carries the peer its best path came from (`except`). RFC 4456 §8
//! lets a client drop a reflected route that carries its own ORIGINATOR_ID,
//! but a route that already had an ORIGINATOR_ID (reflected by another
//! reflector below us) would come back to its sender as a new path, and a
//! client need not check at all; so, as before groups, nothing is sent to
//! the peer a route came from. The group's messages are laid out with the
//! routes of each source together: the member that is the source of a
//! stretch gets the buffer without that stretch (two slices), everyone else
//! the whole buffer. When a route's source changes from S to member T, T
//! had S's route and must forget it: T alone gets a WITHDRAW.
//!
//! **Joining late** (session up, route refresh, end of a restart deferral):
//! the member is sent the group's table as it stands (without the routes
//! it is the source of), then the changes pending since, then End-of-RIB.
//! Members joining in one flush share one encoded table.
//!
//! **Leaving** (session down or reset, graceful or not): the member just
//! leaves; a group without members is dropped. A new session joins again
//! and gets the table.
//!
//! Invariant: an active member holds every route of its group's table
//! whose `except` is not itself, as last flushed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::decision::PeerIdx;
use super::filter;
use super::intern::{FastState, RouteAttrs};
use super::memory::{self, Usage};
use super::{Flushed, PeerInfo, Rib, fam_idx};
use crate::wire::update::{encode_announce, encode_withdraw};
use crate::wire::{CommunitySet, EncodeCx, Families, Family, Message, Nlri, Prefix, Update};

/// Index of a group.
pub(super) type GroupId = u32;

/// What makes two peers' outbound streams identical.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct GroupKey {
    ebgp: bool,
    /// The peer AS, for external peers only (the AS-path loop check and
    /// the prepend depend on it; internal peers all have ours).
    peer_as: u32,
    rr_client: bool,
    next_hop_self: bool,
    local_v4: Option<Ipv4Addr>,
    local_v6: Option<Ipv6Addr>,
    communities: CommunitySet,
    export: Vec<filter::Rule>,
    families: Families,
    encode: EncodeCx,
}

impl GroupKey {
    pub(super) fn of(i: &PeerInfo) -> Self {
        GroupKey {
            ebgp: i.source.ebgp,
            peer_as: if i.source.ebgp { i.source.asn } else { 0 },
            rr_client: i.rr_client,
            next_hop_self: i.next_hop_self,
            local_v4: i.local_v4,
            local_v6: i.local_v6,
            communities: i.communities.clone(),
            export: i.filters.export.clone(),
            families: i.families,
            encode: i.encode.clone(),
        }
    }
}

/// A route as the group sends it, and the peer it came from (which is
/// never sent it).
#[derive(Clone, Debug)]
pub(super) struct Sent {
    pub(super) attrs: Arc<RouteAttrs>,
    pub(super) except: PeerIdx,
}

/// One group.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) key: GroupKey,
    /// The first member's info: export reads only the fields of the key.
    pub(super) info: PeerInfo,
    pub(super) members: BTreeSet<PeerIdx>,
    /// The Adj-RIB-Out, as flushed.
    pub(super) adj_out: HashMap<Prefix, Sent, FastState>,
    /// Changes since the last flush (`None`: withdraw).
    pub(super) pending: HashMap<Prefix, Option<Sent>, FastState>,
    /// Routes of `adj_out` per source, for the members' sent counters.
    excluded: HashMap<PeerIdx, u32, FastState>,
}

impl Group {
    pub(super) fn new(info: PeerInfo) -> Self {
        Group {
            key: GroupKey::of(&info),
            info,
            members: BTreeSet::new(),
            adj_out: HashMap::default(),
            pending: HashMap::default(),
            excluded: HashMap::default(),
        }
    }

    /// Queue what the group must hear for `prefix` (`None`: it must not
    /// see it).
    pub(super) fn queue(&mut self, prefix: &Prefix, sent: Option<Sent>, dump: bool) {
        if sent.is_none()
            && (dump || (!self.adj_out.contains_key(prefix) && !self.pending.contains_key(prefix)))
        {
            return;
        }
        self.pending.insert(*prefix, sent);
    }

    /// Put a route straight into the table (a new group's fill: no member
    /// has been sent anything yet).
    pub(super) fn fill(&mut self, prefix: Prefix, sent: Sent) {
        *self.excluded.entry(sent.except).or_default() += 1;
        if let Some(old) = self.adj_out.insert(prefix, sent) {
            self.uncount(old.except);
        }
    }

    fn uncount(&mut self, except: PeerIdx) {
        if let Some(n) = self.excluded.get_mut(&except) {
            *n -= 1;
            if *n == 0 {
                self.excluded.remove(&except);
            }
        }
    }

    /// Prefixes a member holds now.
    pub(super) fn sent_to(&self, member: PeerIdx) -> u32 {
        (self.adj_out.len() - self.excluded.get(&member).copied().unwrap_or(0) as usize) as u32
    }

    /// The table and queue's allocations.
    pub(super) fn memory(&self) -> Usage {
        let mut u = memory::map(&self.adj_out);
        for m in [memory::map(&self.pending), memory::map(&self.excluded)] {
            u.count += m.count;
            u.slots += m.slots;
            u.bytes += m.bytes;
        }
        u
    }

    /// The table for `fams`, as messages laid out by source.
    fn encode_table(&self, fams: Families) -> Chunked {
        let mut b = Builder::default();
        for (prefix, s) in &self.adj_out {
            if fams.contains(prefix.family()) {
                b.announce(s.except, *prefix, &s.attrs);
            }
        }
        b.finish(&self.key.encode)
    }

    /// Apply the pending changes to the table; returns them encoded (laid
    /// out by source) and the WITHDRAWs for single members.
    fn commit(&mut self) -> (Chunked, BTreeMap<PeerIdx, [Vec<Nlri>; 2]>) {
        let mut b = Builder::default();
        let mut only: BTreeMap<PeerIdx, [Vec<Nlri>; 2]> = BTreeMap::new();
        let pending = std::mem::take(&mut self.pending);
        for (prefix, new) in pending {
            let old = self.adj_out.get(&prefix).cloned();
            match (old, new) {
                (None, None) => {}
                (Some(old), None) => {
                    // Every member but the source has it.
                    self.adj_out.remove(&prefix);
                    self.uncount(old.except);
                    b.withdraw(old.except, prefix);
                }
                (old, Some(new)) => {
                    if let Some(o) = &old {
                        if Arc::ptr_eq(&o.attrs, &new.attrs) && o.except == new.except {
                            continue;
                        }
                        // The new source had the old route: it forgets it.
                        if o.except != new.except {
                            only.entry(new.except).or_default()[fam_idx(prefix.family())]
                                .push(Nlri::from(prefix));
                        }
                    }
                    b.announce(new.except, prefix, &new.attrs);
                    self.fill(prefix, new);
                }
            }
        }
        (b.finish(&self.key.encode), only)
    }
}

/// Messages in one buffer, the routes of each source together.
#[derive(Debug, Default)]
struct Chunked {
    buf: Bytes,
    /// Where each source's routes are in `buf`.
    ranges: HashMap<PeerIdx, (usize, usize), FastState>,
}

impl Chunked {
    /// What `member` is sent: the buffer without its own routes.
    fn for_member(&self, member: PeerIdx, out: &mut Vec<(PeerIdx, Bytes)>) {
        let (s, e) = self.ranges.get(&member).copied().unwrap_or((0, 0));
        if s == e {
            if !self.buf.is_empty() {
                out.push((member, self.buf.clone()));
            }
            return;
        }
        if s > 0 {
            out.push((member, self.buf.slice(..s)));
        }
        if e < self.buf.len() {
            out.push((member, self.buf.slice(e..)));
        }
    }
}

type AnnounceKey = (Family, usize);

/// Collects withdrawals and announcements by source, then encodes them.
#[derive(Default)]
struct Builder {
    by_source: BTreeMap<PeerIdx, Part>,
}

#[derive(Default)]
struct Part {
    withdraw: [Vec<Nlri>; 2],
    announce: HashMap<AnnounceKey, (Arc<RouteAttrs>, Vec<Nlri>)>,
}

impl Builder {
    fn withdraw(&mut self, source: PeerIdx, prefix: Prefix) {
        self.by_source.entry(source).or_default().withdraw[fam_idx(prefix.family())]
            .push(Nlri::from(prefix));
    }

    fn announce(&mut self, source: PeerIdx, prefix: Prefix, attrs: &Arc<RouteAttrs>) {
        let key = (prefix.family(), Arc::as_ptr(attrs) as usize);
        self.by_source
            .entry(source)
            .or_default()
            .announce
            .entry(key)
            .or_insert_with(|| (attrs.clone(), Vec::new()))
            .1
            .push(Nlri::from(prefix));
    }

    fn finish(self, cx: &EncodeCx) -> Chunked {
        let mut out = BytesMut::new();
        let mut ranges = HashMap::default();
        for (source, part) in self.by_source {
            let start = out.len();
            for f in Family::ALL {
                let mut w = part.withdraw[fam_idx(f)].clone();
                if !w.is_empty() {
                    w.sort();
                    encode_withdraw(f, &w, cx, &mut out);
                }
            }
            let mut ann: Vec<_> = part.announce.into_iter().collect();
            // Stable output: by family, then by first prefix.
            for (_, (_, nlri)) in &mut ann {
                nlri.sort();
            }
            ann.sort_by(|a, b| (a.0.0, a.1.1.first()).cmp(&(b.0.0, b.1.1.first())));
            for ((f, _), (a, nlri)) in ann {
                encode_announce(&a.attrs(), f, a.next_hop, &nlri, cx, &mut out);
            }
            ranges.insert(source, (start, out.len()));
        }
        Chunked {
            buf: out.freeze(),
            ranges,
        }
    }
}

impl Rib {
    /// Put an established peer into the group of its outbound policy
    /// (made, and filled from the Loc-RIB, if there is none); unless its
    /// initial routes are deferred, it is sent the group's table at the
    /// next flush.
    pub(super) fn join_group(&mut self, peer: PeerIdx) {
        let Some(info) = self.peers.get(peer as usize).and_then(|p| p.info.as_ref()) else {
            return;
        };
        let key = GroupKey::of(info);
        let gid = match self.group_index.get(&key) {
            Some(g) => *g,
            None => {
                let gid = self.next_group;
                self.next_group += 1;
                self.groups.insert(gid, Group::new(info.clone()));
                self.group_index.insert(key, gid);
                self.fill_group(gid);
                gid
            }
        };
        if let Some(g) = self.groups.get_mut(&gid) {
            g.members.insert(peer);
        }
        let Some(ps) = self.peers.get_mut(peer as usize) else {
            return;
        };
        ps.group = Some(gid);
        if !ps.deferred {
            let fams = ps.info.as_ref().map_or(Families::NONE, |i| i.families);
            ps.dump = fams;
            ps.pending_eor = fams.iter().collect();
        }
    }

    /// Take a peer out of its group (a group left empty goes).
    pub(super) fn leave_group(&mut self, peer: PeerIdx) {
        let Some(ps) = self.peers.get_mut(peer as usize) else {
            return;
        };
        ps.dump = Families::NONE;
        ps.pending_eor.clear();
        let Some(gid) = ps.group.take() else { return };
        let empty = self.groups.get_mut(&gid).is_some_and(|g| {
            g.members.remove(&peer);
            g.members.is_empty()
        });
        if empty {
            if let Some(g) = self.groups.remove(&gid) {
                self.group_index.remove(&g.key);
            }
        }
    }

    /// A new group's table: every best path as the group would be sent it.
    fn fill_group(&mut self, gid: GroupId) {
        let best = self.all_best(Families::BOTH);
        let Rib {
            groups,
            peers,
            interner,
            cfg,
            default_export,
            ..
        } = self;
        let Some(g) = groups.get_mut(&gid) else {
            return;
        };
        let cx = super::export::Cx {
            cfg,
            peers: &peers[..],
            default_export: &default_export[..],
        };
        for (prefix, p) in best {
            if let Some(attrs) = cx.attrs(interner, &g.info, &prefix, &p) {
                g.fill(
                    prefix,
                    Sent {
                        attrs,
                        except: p.peer(),
                    },
                );
            }
        }
    }

    /// The group's changes and joiners' tables, in each member's order:
    /// its table (joining), its own WITHDRAWs, the group's changes,
    /// End-of-RIB.
    pub(super) fn flush_groups(&mut self, out: &mut Flushed) {
        let Rib { groups, peers, .. } = self;
        for g in groups.values_mut() {
            // Joiners get the table before this flush's changes.
            let mut tables: HashMap<Families, Chunked> = HashMap::new();
            for &m in &g.members {
                if let Some(ps) = peers.get(m as usize) {
                    if !ps.deferred && !ps.dump.is_empty() && !tables.contains_key(&ps.dump) {
                        tables.insert(ps.dump, g.encode_table(ps.dump));
                    }
                }
            }
            let (changes, only) = if g.pending.is_empty() {
                (Chunked::default(), BTreeMap::new())
            } else {
                g.commit()
            };
            let mut eor: [Option<Bytes>; 2] = [None, None];
            for &m in &g.members {
                let Some(ps) = peers.get_mut(m as usize) else {
                    continue;
                };
                if ps.deferred {
                    continue;
                }
                if let Some(t) = tables.get(&std::mem::take(&mut ps.dump)) {
                    t.for_member(m, &mut out.send);
                }
                if let Some(w) = only.get(&m) {
                    let mut b = BytesMut::new();
                    for f in Family::ALL {
                        let mut v = w[fam_idx(f)].clone();
                        if !v.is_empty() {
                            v.sort();
                            encode_withdraw(f, &v, &g.key.encode, &mut b);
                        }
                    }
                    out.send.push((m, b.freeze()));
                }
                changes.for_member(m, &mut out.send);
                for f in ps.pending_eor.drain(..) {
                    let e = eor[fam_idx(f)].get_or_insert_with(|| {
                        Message::Update(Update::eor(f)).to_bytes(&g.key.encode)
                    });
                    out.send.push((m, e.clone()));
                }
            }
        }
    }
}
