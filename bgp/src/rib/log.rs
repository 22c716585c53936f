//! An update group's outbound log: the encoded UPDATEs of every flush,
//! appended once and read by every member at its own pace.
//!
//! Each flush that changes the group's Adj-RIB-Out appends one entry (its
//! changes, laid out by source: see [`Chunked`]). A member holds only a
//! read position; its connection's writer pulls what lies past it when
//! its socket takes more ([`LogReader::read`]). What one member alone must
//! hear (its table when it joins or asks for a refresh, a WITHDRAW when it
//! becomes the source of a route it had, End-of-RIB) waits in the
//! member's private queue, each item tagged with the position it goes out
//! at, so a member's stream is always: the entries before the item, the
//! item, the entries after.
//!
//! Entries every member has read are dropped (the log is trimmed up to
//! the slowest position). A member that falls more than
//! [`LOG_BOUND`] bytes behind would hold the log for everyone: it is moved
//! to the end of the log and sent a resync instead of what it skipped (the
//! group builds it from its Adj-RIB-Out: WITHDRAWs for what was withdrawn
//! since its position, then the table), so the log's memory is bounded by
//! `LOG_BOUND` plus one table per resyncing member, whatever a member does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::decision::PeerIdx;
use super::intern::FastState;

/// Buffers one [`LogReader::read`] hands out at most (about; whole entries):
/// a writer waiting on a full socket holds them (and their slices), 5,000
/// writers at once in a large reflector.
const READ_MAX_PARTS: usize = 64;

/// Bytes of entries a member may be behind before it is resynced instead.
pub const LOG_BOUND: usize = 4 << 20;

/// Messages in one buffer, the routes of each source together.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    pub(super) buf: Bytes,
    /// Where each source's routes are in `buf`.
    pub(super) ranges: HashMap<PeerIdx, (usize, usize), FastState>,
}

impl Chunked {
    /// What `member` is sent: the buffer without its own routes (none,
    /// one or two slices).
    pub(super) fn for_member(&self, member: PeerIdx, mut out: impl FnMut(Bytes)) {
        let (s, e) = self.ranges.get(&member).copied().unwrap_or((0, 0));
        if s == e {
            if !self.buf.is_empty() {
                out(self.buf.clone());
            }
            return;
        }
        if s > 0 {
            out(self.buf.slice(..s));
        }
        if e < self.buf.len() {
            out(self.buf.slice(e..));
        }
    }
}

/// One member's place in the log.
#[derive(Debug)]
struct Cursor {
    /// Which session (a stale reader of an earlier one reads nothing).
    epoch: u64,
    /// The next entry to read.
    pos: u64,
    /// Items for this member alone, in order.
    private: VecDeque<Item>,
    notify: Arc<Notify>,
    /// Resynced, and the resync not read yet: the position the member's
    /// routes are still as of (a second resync must start from there).
    resync_from: Option<u64>,
}

/// Something for one member alone.
#[derive(Debug)]
struct Item {
    /// The position it goes out at (after the entries before it).
    at: u64,
    bytes: Bytes,
    /// An End-of-RIB (kept through a resync).
    eor: bool,
    /// Part of a resync.
    resync: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<Chunked>,
    /// Bytes of `entries`.
    bytes: usize,
    /// Byte offset of each entry from the log's start (same length as
    /// `entries`), to tell how far behind a member is.
    offsets: VecDeque<u64>,
    /// Bytes ever appended.
    total: u64,
    members: HashMap<PeerIdx, Cursor, FastState>,
    /// Members per position (the first key is the slowest).
    at: BTreeMap<u64, u32>,
    /// Members per `resync_from`.
    pinned: BTreeMap<u64, u32>,
}

fn count(m: &mut BTreeMap<u64, u32>, from: Option<u64>, to: Option<u64>) {
    if let Some(from) = from
        && let Some(n) = m.get_mut(&from)
    {
        *n -= 1;
        if *n == 0 {
            m.remove(&from);
        }
    }
    if let Some(to) = to {
        *m.entry(to).or_default() += 1;
    }
}

impl State {
    fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    fn offset(&self, pos: u64) -> u64 {
        usize::try_from(pos - self.base)
            .ok()
            .and_then(|i| self.offsets.get(i).copied())
            .unwrap_or(self.total)
    }

    fn moved(&mut self, from: u64, to: Option<u64>) {
        count(&mut self.at, Some(from), to);
        self.trim();
    }

    /// Drop the entries every member has read.
    fn trim(&mut self) {
        let min = self.at.keys().next().copied().unwrap_or_else(|| self.end());
        while self.base < min {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.offsets.pop_front();
            self.bytes -= e.buf.len();
            self.base += 1;
        }
    }
}

/// The log of one group (the RIB's handle; readers hold another).
#[derive(Debug, Default, Clone)]
pub(super) struct Log {
    state: Arc<Mutex<State>>,
}

/// What one member's writer reads with.
#[derive(Debug, Clone)]
pub struct LogReader {
    state: Arc<Mutex<State>>,
    member: PeerIdx,
    epoch: u64,
    notify: Arc<Notify>,
}

/// The member's session is no longer in the group (it went down, or a
/// newer session of the same peer took its place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session left its update group")]
pub struct Left;

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves consistent data (no invariant
    // spans an await or a user callback): keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogReader {
    /// Append to `out` what is there for the member, in order, up to
    /// about `max_bytes` or a few hundred buffers (whole entries: at least
    /// one if any); returns the bytes appended (0: nothing waits).
    pub fn read(&self, max_bytes: usize, out: &mut Vec<Bytes>) -> Result<usize, Left> {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let Some(c) = st.members.get_mut(&self.member) else {
            return Err(Left);
        };
        if c.epoch != self.epoch {
            return Err(Left);
        }
        let from = c.pos;
        let mut n = 0;
        let mut resynced = false;
        loop {
            while c.private.front().is_some_and(|i| i.at <= c.pos) {
                if let Some(i) = c.private.pop_front() {
                    resynced |= i.resync;
                    n += i.bytes.len();
                    out.push(i.bytes);
                }
            }
            if n >= max_bytes || out.len() >= READ_MAX_PARTS {
                break;
            }
            let Some(e) = usize::try_from(c.pos - st.base)
                .ok()
                .and_then(|i| st.entries.get(i))
            else {
                break;
            };
            e.for_member(self.member, |b| {
                n += b.len();
                out.push(b);
            });
            c.pos += 1;
        }
        let to = c.pos;
        let unpinned = if resynced { c.resync_from.take() } else { None };
        if unpinned.is_some() {
            count(&mut st.pinned, unpinned, None);
        }
        if to != from {
            st.moved(from, Some(to));
        }
        Ok(n)
    }

    /// Wait until something may be there to read (spurious wake-ups are
    /// possible; a notice given while nobody waited is kept).
    pub async fn readable(&self) {
        self.notify.notified().await
    }

    /// The member this reader is for.
    pub fn member(&self) -> PeerIdx {
        self.member
    }
}

impl Log {
    /// Put `member` in the log (a new session of it replaces the old
    /// one's place): at the end, or at position `from` if the log still
    /// holds the entries from there, they are at most `max_bytes` and
    /// `member` is the source of none of them (so that what it reads from
    /// there is what it would be sent had it been a member since: nothing
    /// of its own, no route it should have been told to forget). Returns
    /// the reader and whether it starts at `from` (else at the end).
    pub(super) fn join_at(
        &self,
        member: PeerIdx,
        epoch: u64,
        from: Option<(u64, usize)>,
    ) -> (LogReader, bool) {
        let mut st = lock(&self.state);
        let early = from.filter(|&(pos, max_bytes)| {
            pos >= st.base
                && pos <= st.end()
                && st.total - st.offset(pos) <= max_bytes as u64
                && st
                    .entries
                    .iter()
                    .skip((pos - st.base) as usize)
                    .all(|e| !e.ranges.contains_key(&member))
        });
        let end = early.map_or_else(|| st.end(), |(pos, _)| pos);
        let notify = Arc::new(Notify::new());
        let old = st.members.insert(
            member,
            Cursor {
                epoch,
                pos: end,
                private: VecDeque::new(),
                notify: notify.clone(),
                resync_from: None,
            },
        );
        if let Some(old) = old {
            count(&mut st.pinned, old.resync_from, None);
            st.moved(old.pos, Some(end));
        } else {
            count(&mut st.at, None, Some(end));
        }
        (
            LogReader {
                state: self.state.clone(),
                member,
                epoch,
                notify,
            },
            early.is_some(),
        )
    }

    /// The oldest position whose entry is still held.
    pub(super) fn base(&self) -> u64 {
        lock(&self.state).base
    }

    /// Take `member` out (what it has not read is dropped with it).
    pub(super) fn leave(&self, member: PeerIdx) {
        let mut st = lock(&self.state);
        if let Some(c) = st.members.remove(&member) {
            c.notify.notify_one();
            count(&mut st.pinned, c.resync_from, None);
            st.moved(c.pos, None);
        }
    }

    /// The position the next entry gets.
    pub(super) fn end(&self) -> u64 {
        lock(&self.state).end()
    }

    /// Queue `bytes` for `member` alone, to go out after the entries
    /// before position `at` and before the others.
    pub(super) fn private(&self, member: PeerIdx, at: u64, bytes: Bytes, eor: bool) {
        if bytes.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        if let Some(c) = st.members.get_mut(&member) {
            c.private.push_back(Item {
                at,
                bytes,
                eor,
                resync: false,
            });
        }
    }

    /// Append one flush's changes (nothing if empty).
    pub(super) fn append(&self, e: Chunked) {
        if e.buf.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        let off = st.total;
        st.offsets.push_back(off);
        st.total += e.buf.len() as u64;
        st.bytes += e.buf.len();
        st.entries.push_back(e);
    }

    /// Wake every member that has something to read.
    pub(super) fn notify(&self) {
        let st = lock(&self.state);
        let end = st.end();
        for c in st.members.values() {
            if c.pos < end || !c.private.is_empty() {
                c.notify.notify_one();
            }
        }
    }

    /// Members more than `bound` bytes behind the newest entry (which
    /// every member may not have read yet, however large), with the
    /// position their routes are as of (where they were when first
    /// resynced, if they have not read that resync yet).
    pub(super) fn too_far_behind(&self, bound: usize) -> Vec<(PeerIdx, u64)> {
        let st = lock(&self.state);
        if st.bytes <= bound {
            return Vec::new();
        }
        let newest = st.offsets.back().copied().unwrap_or(st.total);
        st.members
            .iter()
            .filter(|(_, c)| newest.saturating_sub(st.offset(c.pos)) > bound as u64)
            .map(|(m, c)| (*m, c.resync_from.unwrap_or(c.pos)))
            .collect()
    }

    /// Move `member` to the end of the log, dropping what it had not read
    /// but the End-of-RIB items among it, and queue `resync` (what brings
    /// it from where it was to the group's table as it stands) before
    /// those.
    pub(super) fn resync(&self, member: PeerIdx, resync: Vec<Bytes>) {
        let mut st = lock(&self.state);
        let at = st.end();
        let Some(c) = st.members.get_mut(&member) else {
            return;
        };
        let from = c.pos;
        c.pos = at;
        let pinned = c.resync_from.is_none().then_some(from);
        if pinned.is_some() {
            c.resync_from = pinned;
        }
        let old = std::mem::take(&mut c.private);
        c.private.extend(resync.into_iter().map(|bytes| Item {
            at,
            bytes,
            eor: false,
            resync: true,
        }));
        c.private
            .extend(old.into_iter().filter(|i| i.eor).map(|i| Item { at, ..i }));
        c.notify.notify_one();
        count(&mut st.pinned, None, pinned);
        st.moved(from, Some(at));
    }

    /// The first position whose WITHDRAWs a member may still need: the
    /// slowest read position, or a resync's start (the end if none).
    pub(super) fn slowest(&self) -> u64 {
        let st = lock(&self.state);
        let read = st.at.keys().next().copied().unwrap_or_else(|| st.end());
        st.pinned.keys().next().map_or(read, |p| read.min(*p))
    }

    /// Bytes of the entries held.
    pub(super) fn entry_bytes(&self) -> usize {
        lock(&self.state).bytes
    }

    /// Bytes held: entries plus private items.
    pub(super) fn bytes(&self) -> usize {
        let st = lock(&self.state);
        st.bytes
            + st.members
                .values()
                .flat_map(|c| c.private.iter())
                .map(|i| i.bytes.len())
                .sum::<usize>()
    }
}
