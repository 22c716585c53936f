//! Update groups: peers whose outbound policy is the same share one
//! Adj-RIB-Out, and each change is encoded once per group, appended to the
//! group's log ([`super::log`]) and read from there by every member's
//! writer at its own pace (`Bytes` slices of one buffer, no copies).
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
//! leaves (and its place in the log with what it had not read); a group
//! without members is dropped. A new session joins again and gets the
//! table.
//!
//! **Falling behind**: a member more than the log bound behind is moved to
//! the log's end and sent, instead of what it skipped, WITHDRAWs for every
//! prefix withdrawn since its position (the group keeps tombstones until
//! every member has read past them) and for the routes it is now the
//! source of, then the table: the same final state, in bounded memory.
//!
//! Invariant: an active member holds every route of its group's table
//! whose `except` is not itself, as last flushed.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::decision::PeerIdx;
use super::filter;
use super::intern::{FastState, RouteAttrs};
use super::log::{Chunked, Log};
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
    /// Members with something to be sent alone at the next flush (a
    /// flush looks at these, not at every member).
    waiting: BTreeSet<PeerIdx>,
    /// The Adj-RIB-Out, as flushed.
    pub(super) adj_out: HashMap<Prefix, Sent, FastState>,
    /// Changes since the last flush (`None`: withdraw).
    pub(super) pending: HashMap<Prefix, Option<Sent>, FastState>,
    /// Routes of `adj_out` per source, for the members' sent counters.
    excluded: HashMap<PeerIdx, u32, FastState>,
    /// The encoded changes, read by each member at its pace.
    pub(super) log: Log,
    /// Prefixes withdrawn from `adj_out` and the log position of their
    /// WITHDRAW (for resyncs: what a member that skipped it must forget),
    /// as long as a member may not have read it.
    tombstones: HashMap<Prefix, u64, FastState>,
    /// The same, oldest first (to forget them as the log is read).
    tomb_order: VecDeque<(u64, Prefix)>,
    /// The last table encoded for joiners, per families, and the log
    /// position it is as of: a later joiner is sent it and reads the log
    /// from there (see [`Log::join_at`]) instead of a new encoding, as long
    /// as the log holds the entries since. When thousands of sessions come
    /// up at once (a reflector's restart) they join over hundreds of
    /// flushes; each used to be sent a table of its own, encoded anew.
    joined_table: HashMap<Families, (u64, Arc<Chunked>)>,
}

impl Group {
    pub(super) fn new(info: PeerInfo) -> Self {
        Group {
            key: GroupKey::of(&info),
            info,
            members: BTreeSet::new(),
            waiting: BTreeSet::new(),
            adj_out: HashMap::default(),
            pending: HashMap::default(),
            excluded: HashMap::default(),
            log: Log::default(),
            tombstones: HashMap::default(),
            tomb_order: VecDeque::new(),
            joined_table: HashMap::new(),
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
        for m in [
            memory::map(&self.pending),
            memory::map(&self.excluded),
            memory::map(&self.tombstones),
        ] {
            u.count += m.count;
            u.slots += m.slots;
            u.bytes += m.bytes;
        }
        u.bytes += self.log.bytes() + self.tomb_order.capacity() * size_of::<(u64, Prefix)>();
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

    /// What brings a member that read the log up to `from` to the table
    /// as it stands: WITHDRAWs for every prefix gone since (and for those
    /// it is now the source of: it may hold another's route for them),
    /// then the table without its own routes (`table`: the group's table
    /// encoded, shared by the resyncs of one flush).
    fn resync_for(&self, member: PeerIdx, from: u64, table: &Chunked) -> Vec<Bytes> {
        let mut gone: [Vec<Nlri>; 2] = [Vec::new(), Vec::new()];
        for (prefix, seq) in &self.tombstones {
            if *seq >= from && !self.adj_out.contains_key(prefix) {
                gone[fam_idx(prefix.family())].push(Nlri::from(*prefix));
            }
        }
        for (prefix, s) in &self.adj_out {
            if s.except == member {
                gone[fam_idx(prefix.family())].push(Nlri::from(*prefix));
            }
        }
        let mut out = Vec::new();
        let w = encode_withdraws(gone, &self.key.encode);
        if !w.is_empty() {
            out.push(w);
        }
        table.for_member(member, |b| out.push(b));
        out
    }

    /// Forget the WITHDRAWs every member has read.
    fn forget_tombstones(&mut self) {
        if self.tomb_order.is_empty() {
            return;
        }
        let slowest = self.log.slowest();
        while let Some(&(seq, prefix)) = self.tomb_order.front() {
            if seq >= slowest {
                break;
            }
            self.tomb_order.pop_front();
            if self.tombstones.get(&prefix) == Some(&seq) {
                self.tombstones.remove(&prefix);
            }
        }
    }

    /// Apply the pending changes to the table; returns them encoded (laid
    /// out by source) and the WITHDRAWs for single members. `seq`: the log
    /// position the changes get.
    fn commit(&mut self, seq: u64) -> (Chunked, BTreeMap<PeerIdx, [Vec<Nlri>; 2]>) {
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
                    self.tombstones.insert(prefix, seq);
                    self.tomb_order.push_back((seq, prefix));
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
                    self.tombstones.remove(&prefix);
                    self.fill(prefix, new);
                }
            }
        }
        (b.finish(&self.key.encode), only)
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
        // Exactly its size: the buffer grew by doubling (up to twice what
        // it holds), and a table stays alive while any member's writer is
        // still sending it: dozens at once while thousands of clients join.
        let buf = if out.capacity() > out.len() + out.len() / 8 {
            Bytes::copy_from_slice(&out)
        } else {
            out.freeze()
        };
        Chunked { buf, ranges }
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
        let Some(ps) = self.peers.get_mut(peer as usize) else {
            return;
        };
        ps.group = Some(gid);
        let deferred = ps.deferred;
        if !deferred {
            let fams = ps.info.as_ref().map_or(Families::NONE, |i| i.families);
            ps.dump = fams;
            ps.pending_eor = fams.iter().collect();
        }
        if let Some(g) = self.groups.get_mut(&gid) {
            g.members.insert(peer);
            if !deferred {
                g.waiting.insert(peer);
            }
        }
    }

    /// `peer` has something to be sent alone at the next flush (its table,
    /// End-of-RIB, its place in the log).
    pub(super) fn group_waits(&mut self, peer: PeerIdx) {
        let gid = self.peers.get(peer as usize).and_then(|p| p.group);
        if let Some(g) = gid.and_then(|g| self.groups.get_mut(&g)) {
            g.waiting.insert(peer);
        }
    }

    /// Take a peer out of its group (a group left empty goes).
    pub(super) fn leave_group(&mut self, peer: PeerIdx) {
        let Some(ps) = self.peers.get_mut(peer as usize) else {
            return;
        };
        ps.dump = Families::NONE;
        ps.pending_eor.clear();
        ps.in_log = false;
        let Some(gid) = ps.group.take() else { return };
        let empty = self.groups.get_mut(&gid).is_some_and(|g| {
            g.members.remove(&peer);
            g.waiting.remove(&peer);
            g.log.leave(peer);
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

    /// Each group's changes into its log, and what single members must
    /// hear into their private queues, in each member's order: its table
    /// (joining), its own WITHDRAWs, the group's changes, End-of-RIB.
    /// Members that enter a log (a new session, the end of a deferral)
    /// get their readers in `out.attach`; members too far behind are
    /// resynced.
    pub(super) fn flush_groups(&mut self, out: &mut Flushed) {
        let Rib {
            groups,
            peers,
            next_epoch,
            log_bound,
            ..
        } = self;
        for g in groups.values_mut() {
            // Joiners get the table before this flush's changes.
            let seq = g.log.end();
            let base = g.log.base();
            g.joined_table.retain(|_, (at, _)| *at >= base);
            let mut tables: HashMap<Families, Arc<Chunked>> = HashMap::new();
            let waiting = std::mem::take(&mut g.waiting);
            for &m in &waiting {
                let Some(ps) = peers.get_mut(m as usize) else {
                    continue;
                };
                if ps.deferred {
                    continue;
                }
                if !ps.in_log {
                    *next_epoch += 1;
                    // A new member may start from the last table encoded
                    // for joiners, then read the log from its position.
                    let earlier = g
                        .joined_table
                        .get(&ps.dump)
                        .filter(|(at, t)| {
                            *at < seq && !ps.dump.is_empty() && !t.ranges.contains_key(&m)
                        })
                        .cloned();
                    let (reader, early) = g.log.join_at(
                        m,
                        *next_epoch,
                        earlier.as_ref().map(|(at, _)| (*at, *log_bound / 2)),
                    );
                    out.attach.push((m, reader));
                    ps.in_log = true;
                    if let Some((at, t)) = earlier.filter(|_| early) {
                        ps.dump = Families::NONE;
                        t.for_member(m, |b| g.log.private(m, at, b, false));
                    }
                }
                if !ps.dump.is_empty() && !tables.contains_key(&ps.dump) {
                    let t = Arc::new(g.encode_table(ps.dump));
                    g.joined_table.insert(ps.dump, (seq, t.clone()));
                    tables.insert(ps.dump, t);
                }
            }
            let (changes, only) = if g.pending.is_empty() {
                (Chunked::default(), BTreeMap::new())
            } else {
                g.commit(seq)
            };
            let after = if changes.buf.is_empty() { seq } else { seq + 1 };
            let mut eor: [Option<Bytes>; 2] = [None, None];
            let visit: BTreeSet<PeerIdx> = waiting.iter().chain(only.keys()).copied().collect();
            for &m in &visit {
                let Some(ps) = peers.get_mut(m as usize) else {
                    continue;
                };
                if ps.deferred {
                    continue;
                }
                if let Some(t) = tables.get(&std::mem::take(&mut ps.dump)) {
                    t.for_member(m, |b| g.log.private(m, seq, b, false));
                }
                if let Some(w) = only.get(&m) {
                    let w = encode_withdraws(w.clone(), &g.key.encode);
                    g.log.private(m, seq, w, false);
                }
                for f in ps.pending_eor.drain(..) {
                    let e = eor[fam_idx(f)].get_or_insert_with(|| {
                        Message::Update(Update::eor(f)).to_bytes(&g.key.encode)
                    });
                    g.log.private(m, after, e.clone(), true);
                }
            }
            let changed = !changes.buf.is_empty() || !waiting.is_empty() || !only.is_empty();
            g.log.append(changes);
            // A member too far behind is resynced rather than holding the
            // log for everyone.
            let slow = g.log.too_far_behind(*log_bound);
            let resynced = !slow.is_empty();
            if resynced {
                let table = g.encode_table(g.key.families);
                for (m, from) in slow {
                    tracing::warn!(
                        peer = m,
                        "a member reads too slowly: resynced from the group's table"
                    );
                    let parts = g.resync_for(m, from, &table);
                    g.log.resync(m, parts);
                }
            }
            g.forget_tombstones();
            if changed || resynced {
                g.log.notify();
            }
        }
    }
}

/// WITHDRAWs of `w` (per family), sorted.
fn encode_withdraws(mut w: [Vec<Nlri>; 2], cx: &EncodeCx) -> Bytes {
    let mut b = BytesMut::new();
    for f in Family::ALL {
        let v = &mut w[fam_idx(f)];
        if !v.is_empty() {
            v.sort();
            encode_withdraw(f, v, cx, &mut b);
        }
    }
    b.freeze()
}
