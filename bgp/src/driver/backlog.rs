//! What the RIB task has for a peer whose command queue is full.
//!
//! The RIB task never waits for one peer. A peer whose task is busy (its
//! session's own work, a stuck router) fills its command queue; a RIB task
//! that awaited room there would stop deciding and exporting for every
//! other peer too, and stop taking new connections. And a peer task may
//! itself be waiting to hand the RIB an UPDATE (the RIB's queue is small
//! and shared by every peer), so awaiting that peer could be a cycle that
//! never ends.
//!
//! So the RIB task hands a peer's commands over with `try_send`; what does
//! not fit waits here, in order, and goes out as room frees (the RIB task
//! calls [`Backlog::drain`] on every turn, and polls every millisecond while
//! anything waits). A session that goes down or comes up takes its backlog
//! with it: what was meant for the old session must not reach the new one.
//! UPDATEs do not come this way: a peer's writer pulls them from its update
//! group's log (`rib::log`), so what waits here is a few commands (a log
//! reader to attach, a max-prefix notice), not the peer's updates; the
//! backlog is still logged at every doubling from 4,096 commands and shown
//! in `SpeakerStats::backlog`.

use std::collections::{HashMap, VecDeque};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::PeerCmd;
use crate::rib::decision::PeerIdx;

/// Commands waiting for room in their peer's queue.
#[derive(Default)]
pub(super) struct Backlog {
    queues: HashMap<PeerIdx, VecDeque<PeerCmd>>,
    waiting: usize,
}

impl Backlog {
    /// Hands `cmd` to the peer now if nothing of the peer's waits and its
    /// queue has room; else queues it behind the peer's earlier commands.
    pub(super) fn send(
        &mut self,
        peer: PeerIdx,
        name: &str,
        tx: &mpsc::Sender<PeerCmd>,
        cmd: PeerCmd,
    ) {
        if let Some(q) = self.queues.get_mut(&peer) {
            q.push_back(cmd);
            self.waiting += 1;
            if q.len() >= 4096 && q.len().is_power_of_two() {
                tracing::warn!(
                    peer = %name,
                    waiting = q.len(),
                    "the peer reads slower than the RIB exports: its updates wait in memory"
                );
            }
            return;
        }
        match tx.try_send(cmd) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(cmd)) => {
                self.queues.entry(peer).or_default().push_back(cmd);
                self.waiting += 1;
            }
        }
    }

    /// Moves what fits into each peer's queue, oldest first. `tx_of` gives
    /// a peer's queue (None: the peer is gone, and so is its backlog).
    pub(super) fn drain<'a>(
        &mut self,
        mut tx_of: impl FnMut(PeerIdx) -> Option<&'a mpsc::Sender<PeerCmd>>,
    ) {
        let mut waiting = self.waiting;
        self.queues.retain(|peer, q| {
            let Some(tx) = tx_of(*peer) else {
                waiting -= q.len();
                return false;
            };
            while let Some(cmd) = q.pop_front() {
                match tx.try_send(cmd) {
                    Ok(()) => waiting -= 1,
                    Err(TrySendError::Closed(_)) => {
                        waiting -= 1 + q.len();
                        q.clear();
                    }
                    Err(TrySendError::Full(cmd)) => {
                        q.push_front(cmd);
                        break;
                    }
                }
            }
            !q.is_empty()
        });
        self.waiting = waiting;
    }

    /// Drops what waits for `peer` (its session went down or restarted).
    pub(super) fn forget(&mut self, peer: PeerIdx) {
        if let Some(q) = self.queues.remove(&peer) {
            self.waiting -= q.len();
        }
    }

    /// Nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Commands waiting, all peers.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Family;

    fn sent(rx: &mut mpsc::Receiver<PeerCmd>) -> Vec<u8> {
        let mut v = Vec::new();
        while let Ok(c) = rx.try_recv() {
            if let PeerCmd::MaxPrefix(_, n) = c {
                v.push(n as u8);
            }
        }
        v
    }

    /// A command told apart by its number.
    fn cmd(n: u8) -> PeerCmd {
        PeerCmd::MaxPrefix(Family::Ipv4Unicast, n.into())
    }

    #[test]
    fn a_full_queue_never_blocks_and_nothing_is_lost_or_reordered() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut b = Backlog::default();
        for n in 0..5 {
            b.send(7, "p7", &tx, cmd(n));
        }
        assert_eq!(b.waiting(), 3);
        assert_eq!(sent(&mut rx), vec![0, 1]);
        // Room for two more: the oldest waiting go first.
        b.drain(|p| (p == 7).then_some(&tx));
        assert_eq!(b.waiting(), 1);
        // A new command queues behind the waiting one, even with room.
        assert_eq!(sent(&mut rx), vec![2, 3]);
        b.send(7, "p7", &tx, cmd(5));
        assert_eq!(b.waiting(), 2);
        b.drain(|p| (p == 7).then_some(&tx));
        assert_eq!(sent(&mut rx), vec![4, 5]);
        assert!(b.is_empty());
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn one_full_peer_does_not_hold_up_another() {
        let (slow, _slow_rx) = mpsc::channel(1);
        let (fast, mut fast_rx) = mpsc::channel(8);
        let mut b = Backlog::default();
        for n in 0..4 {
            b.send(1, "slow", &slow, cmd(n));
            b.send(2, "fast", &fast, cmd(n));
        }
        assert_eq!(sent(&mut fast_rx), vec![0, 1, 2, 3]);
        assert_eq!(b.waiting(), 3);
    }

    #[test]
    fn a_session_change_or_a_gone_peer_drops_its_backlog() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut b = Backlog::default();
        for n in 0..3 {
            b.send(1, "p1", &tx, cmd(n));
        }
        b.forget(1);
        assert!(b.is_empty());
        assert_eq!(b.waiting(), 0);
        assert_eq!(sent(&mut rx), vec![0]);
        for n in 0..3 {
            b.send(2, "p2", &tx, cmd(n));
        }
        b.drain(|_| None);
        assert!(b.is_empty());
        assert_eq!(b.waiting(), 0);
        // A closed queue: the peer task ended; its backlog goes.
        let (tx3, rx3) = mpsc::channel(1);
        b.send(3, "p3", &tx3, cmd(0));
        b.send(3, "p3", &tx3, cmd(1));
        drop(rx3);
        b.drain(|_| Some(&tx3));
        assert!(b.is_empty());
        assert_eq!(b.waiting(), 0);
    }
}
