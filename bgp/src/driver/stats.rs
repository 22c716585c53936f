//! Where the speaker's time goes: cumulative counters its tasks bump as
//! they work (relaxed atomics, one update per batch, not per route), read
//! without a round trip through the RIB task ([`super::Speaker::stats`]).
//! For status displays and the load benchmark's phase breakdown.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The shared counters.
#[derive(Debug, Default)]
pub(super) struct Counters {
    decode_ns: AtomicU64,
    updates: AtomicU64,
    to_rib_wait_ns: AtomicU64,
    rib_ns: AtomicU64,
    export_ns: AtomicU64,
    to_fib_wait_ns: AtomicU64,
    fib_batches: AtomicU64,
    fib_changes: AtomicU64,
    fib_routes: AtomicU64,
    generation: AtomicU64,
    backlog: AtomicU64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Counters {
    /// `n` messages decoded (and run through the session) in `d`.
    pub(super) fn decoded(&self, n: u64, d: Duration) {
        self.updates.fetch_add(n, Relaxed);
        self.decode_ns.fetch_add(ns(d), Relaxed);
    }
    /// A peer task waited `d` for room in the RIB task's queue.
    pub(super) fn to_rib_waited(&self, d: Duration) {
        self.to_rib_wait_ns.fetch_add(ns(d), Relaxed);
    }
    /// The RIB task applied messages (decision process included) for `d`.
    pub(super) fn rib(&self, d: Duration) {
        self.rib_ns.fetch_add(ns(d), Relaxed);
    }
    /// The RIB task collected its effects (UPDATEs encoded) in `d`.
    pub(super) fn export(&self, d: Duration) {
        self.export_ns.fetch_add(ns(d), Relaxed);
    }
    /// The RIB task handed `changes` FIB changes over after waiting `d`
    /// for room in the FIB queue.
    pub(super) fn to_fib(&self, changes: usize, d: Duration) {
        self.fib_batches.fetch_add(1, Relaxed);
        self.fib_changes.fetch_add(changes as u64, Relaxed);
        self.to_fib_wait_ns.fetch_add(ns(d), Relaxed);
    }

    /// The RIB task's state after a round: its generation and how many
    /// destinations have kernel next hops.
    pub(super) fn rib_state(&self, generation: u64, fib_routes: usize, backlog: usize) {
        self.generation.store(generation, Relaxed);
        self.fib_routes.store(fib_routes as u64, Relaxed);
        self.backlog.store(backlog as u64, Relaxed);
    }

    pub(super) fn snapshot(&self) -> SpeakerStats {
        let s = |a: &AtomicU64| Duration::from_nanos(a.load(Relaxed));
        SpeakerStats {
            decode: s(&self.decode_ns),
            messages: self.updates.load(Relaxed),
            to_rib_wait: s(&self.to_rib_wait_ns),
            rib: s(&self.rib_ns),
            export: s(&self.export_ns),
            to_fib_wait: s(&self.to_fib_wait_ns),
            fib_batches: self.fib_batches.load(Relaxed),
            fib_changes: self.fib_changes.load(Relaxed),
            fib_routes: self.fib_routes.load(Relaxed),
            generation: self.generation.load(Relaxed),
            backlog: self.backlog.load(Relaxed),
        }
    }
}

/// Cumulative time per phase since the speaker started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpeakerStats {
    /// Peer tasks decoding messages and running them through the session.
    pub decode: Duration,
    /// Messages decoded.
    pub messages: u64,
    /// Peer tasks waiting for room in the RIB task's queue (the RIB is
    /// behind).
    pub to_rib_wait: Duration,
    /// The RIB task applying UPDATEs and commands (decision process).
    pub rib: Duration,
    /// The RIB task encoding UPDATEs for peers.
    pub export: Duration,
    /// The RIB task waiting for room in the FIB queue (the kernel writer
    /// is behind).
    pub to_fib_wait: Duration,
    /// FIB change batches handed over.
    pub fib_batches: u64,
    /// FIB changes handed over.
    pub fib_changes: u64,
    /// Destinations whose selection has kernel next hops (what the FIB
    /// holds once every change handed over is applied).
    pub fib_routes: u64,
    /// The RIB's generation: changes with every change to the RIB (the
    /// one [`super::Speaker::routes`] compares).
    pub generation: u64,
    /// Commands for peers whose queue is full, waiting in the RIB task now
    /// (a peer that reads slower than the RIB exports).
    pub backlog: u64,
}
