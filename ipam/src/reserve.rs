//! Pre-reserved addresses: an Allocate with no write on its path.
//!
//! The node keeps a few *units* allocated ahead of demand: each unit is one
//! address per family (what a plain pod Allocate would get), recorded in
//! the node's blocks under its own handle `margay-reserve.<node>.<id>` and
//! no pod attributes. A refill allocates the missing units together, so
//! group commit writes them in one CAS per block.
//!
//! ```text
//!  take(pod handle) ── a unit from `ready` ──► answer at once (no write)
//!        │                                   the unit moves to `taken`
//!        └─► mover: Allocator::move_handle(unit → pod handle, pod attrs)
//!                   (one CAS per block for every move pending)
//!  refill: below the low-water mark, allocate units up to the target
//!  drop_ineligible: release ready units whose pool no longer serves the
//!                   node (disabled, deleted, selector), before each refill
//! ```
//!
//! Why no address is both given out and free: a unit's addresses are
//! allocated in the datastore before the unit is `ready`, and stay
//! allocated under the unit's handle until the move rewrites the handle
//! in the same slot (one CAS). A unit is released only by [`Reserve::release`]
//! of the pod that took it, or as a never-taken unit.
//!
//! Why none leaks: a taken unit is either moved (then it is the pod's
//! allocation, released by the pod's DEL or by leak GC), or released by
//! the pod's DEL while still taken. After a restart the in-memory map is
//! gone: [`Reserve::recover`] maps each unit to the pod that holds its
//! addresses (the agent's endpoint records) and moves it; the others are
//! ready again. A pod whose ADD was cut by the restart (answered from a
//! unit, no endpoint yet) fails at EndpointUp, since the restarted agent
//! finds its addresses held by no one but the reserve
//! ([`Reserve::holds`] says unknown, the allocator's handle is empty): the
//! plugin rolls back and the runtime retries. Units of a node that is gone
//! are released by leak GC like its other pod-less allocations.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::alloc::{AllocRequest, Allocator, Assigned};
use crate::cidr::Family;
use crate::error::IpamError;
use crate::model::AllocationAttrs;

/// Every reserve handle starts with this.
pub const RESERVE_HANDLE_PREFIX: &str = "margay-reserve.";

/// The handle prefix of `node`'s reserve units.
pub fn reserve_prefix(node: &str) -> String {
    format!("{RESERVE_HANDLE_PREFIX}{node}.")
}

/// Whether `handle` is a reserve unit's (of any node).
pub fn is_reserve_handle(handle: &str) -> bool {
    handle.starts_with(RESERVE_HANDLE_PREFIX)
}

/// How many units to keep.
#[derive(Clone, Debug)]
pub struct ReserveOptions {
    /// Units kept ready (one address per family each). 0: no reserve.
    pub size: usize,
    /// Refill when fewer than this many are ready (clamped to 1..=size).
    pub low_water: usize,
    /// Wait after a failed refill or move before the next attempt.
    pub retry: Duration,
}

impl ReserveOptions {
    /// `size` units, refilled below half of them.
    pub fn with_size(size: usize) -> Self {
        ReserveOptions {
            size,
            low_water: size.div_ceil(2),
            retry: Duration::from_secs(1),
        }
    }
}

/// A reserved unit: its handle and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// `margay-reserve.<node>.<id>`.
    pub handle: String,
    /// One per family, sorted.
    pub addresses: Vec<Assigned>,
}

impl Unit {
    fn ips(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(|a| a.ip).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the mover.
    Pending,
    /// The move is in flight.
    Moving,
    /// The move failed for good: the unit stays reserved (so its addresses
    /// are not free) until the pod is released.
    Failed(String),
}

struct Taken {
    unit: Unit,
    attrs: AllocationAttrs,
    phase: Phase,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Unit>,
    /// Pod handle → the unit it took, until the move is done.
    taken: HashMap<String, Taken>,
    filling: usize,
    /// Units of pools that no longer serve this node, to release.
    dropping: Vec<Unit>,
    /// Recovery done: refills may start.
    recovered: bool,
}

/// Reserve figures (counters are monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReserveMetrics {
    /// Units ready now.
    pub ready: u64,
    /// Units taken whose move is not done.
    pub moves_pending: u64,
    /// Allocates answered from the reserve.
    pub takes: u64,
    /// Allocates the reserve could not answer (no fitting unit).
    pub fallbacks: u64,
    /// Units allocated by refills.
    pub refilled: u64,
    /// Refill allocations that failed.
    pub refill_failures: u64,
    /// Moves done.
    pub moves: u64,
    /// Ready units released because their pool no longer serves this
    /// node (disabled, deleted, not for workloads, selector).
    pub dropped: u64,
    /// Moves that failed for good.
    pub move_failures: u64,
}

#[derive(Default)]
struct Counters {
    takes: AtomicU64,
    fallbacks: AtomicU64,
    refilled: AtomicU64,
    refill_failures: AtomicU64,
    moves: AtomicU64,
    move_failures: AtomicU64,
    dropped: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

struct Shared {
    alloc: Allocator,
    opts: ReserveOptions,
    prefix: String,
    state: Mutex<State>,
    /// Wakes the refill and mover tasks.
    wake: Notify,
    /// Told whenever a move ends.
    moved: Notify,
    counters: Counters,
    next_id: AtomicU64,
}

/// The node's reserve; cheap to clone. Background tasks run from
/// [`Reserve::start`] until the last clone is dropped.
#[derive(Clone)]
pub struct Reserve {
    shared: Arc<Shared>,
}

/// An address in use by a pod, for [`Reserve::recover`].
#[derive(Clone, Debug)]
pub struct InUse {
    /// The pod's IPAM handle.
    pub handle: String,
    /// The pod's attributes.
    pub attrs: AllocationAttrs,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

impl Reserve {
    /// A reserve over `alloc`; nothing runs until [`Reserve::start`].
    pub fn new(alloc: Allocator, opts: ReserveOptions) -> Reserve {
        let prefix = reserve_prefix(alloc.node());
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Reserve {
            shared: Arc::new(Shared {
                alloc,
                opts,
                prefix,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                moved: Notify::new(),
                counters: Counters::default(),
                // Ids unique across restarts: the start time, then a count.
                next_id: AtomicU64::new(epoch.saturating_mul(1000)),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The allocator it serves from.
    pub fn allocator(&self) -> &Allocator {
        &self.shared.alloc
    }

    /// The unit pod `handle` took, while its move is not done.
    pub fn taken_by(&self, handle: &str) -> Option<Vec<Assigned>> {
        self.lock()
            .taken
            .get(handle)
            .map(|t| t.unit.addresses.clone())
    }

    /// Whether the reserve is on (size > 0).
    pub fn enabled(&self) -> bool {
        self.shared.opts.size > 0
    }

    /// Whether [`Reserve::recover`] has sorted the units found at start
    /// (always, with the reserve off).
    pub fn recovered(&self) -> bool {
        !self.enabled() || self.lock().recovered
    }

    /// Recovers from the datastore (see the module doc), then runs the
    /// refill and mover tasks; the returned task ends when every clone of
    /// this reserve is dropped. `in_use`: the pods of this node and their
    /// addresses, as the agent last recorded them.
    pub fn start(&self, in_use: Vec<InUse>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            // Recovery, retried until the allocator has listed the store.
            loop {
                let Some(shared) = weak.upgrade() else { return };
                let r = Reserve { shared };
                match r.recover(&in_use).await {
                    Ok(()) => break,
                    Err(e) => {
                        debug!(error = %e, "reserve recovery waits for the allocator");
                        let retry = r.shared.opts.retry;
                        drop(r);
                        tokio::time::sleep(retry).await;
                    }
                }
            }
            loop {
                let Some(shared) = weak.upgrade() else { return };
                let r = Reserve { shared };
                let woken = r.shared.clone();
                let notified = woken.wake.notified();
                r.drop_ineligible().await;
                // Both in one round of the allocator when they coincide.
                let ((), moves_left) = tokio::join!(r.refill(), r.move_pending());
                let retry = r.shared.opts.retry;
                drop(r);
                if moves_left {
                    // Something failed for now: try again later.
                    let _ = tokio::time::timeout(retry, notified).await;
                } else {
                    // Wake at least every period, so that a failed refill
                    // is retried; a weak handle does not keep us alive, so
                    // check back now and then.
                    let _ =
                        tokio::time::timeout(retry.max(Duration::from_millis(100)), notified).await;
                }
                drop(woken);
            }
        })
    }

    /// Sorts the units found in the allocator's cache: those whose
    /// addresses a pod in `in_use` holds are queued to move to it, the
    /// others are ready. Fails until the allocator is synced.
    pub async fn recover(&self, in_use: &[InUse]) -> Result<(), IpamError> {
        let status = self.shared.alloc.status().await?;
        if !status.ready {
            return Err(IpamError::Unavailable {
                reason: format!("allocator not ready: {}", status.message),
                source: None,
            });
        }
        let units = self
            .shared
            .alloc
            .handles_with_prefix(&self.shared.prefix)
            .await?;
        let (mut moving, mut ready) = (0usize, 0usize);
        {
            let mut st = self.lock();
            for h in units {
                if h.addresses.is_empty() {
                    continue;
                }
                let unit = Unit {
                    handle: h.handle,
                    addresses: h.addresses,
                };
                let known = st.taken.values().any(|t| t.unit.handle == unit.handle)
                    || st.ready.iter().any(|u| u.handle == unit.handle);
                if known {
                    continue;
                }
                let owner = in_use
                    .iter()
                    .find(|p| unit.addresses.iter().any(|a| p.ips.contains(&a.ip)));
                match owner {
                    Some(p) if !st.taken.contains_key(&p.handle) => {
                        moving += 1;
                        st.taken.insert(
                            p.handle.clone(),
                            Taken {
                                unit,
                                attrs: p.attrs.clone(),
                                phase: Phase::Pending,
                            },
                        );
                    }
                    _ => {
                        ready += 1;
                        st.ready.push_back(unit);
                    }
                }
            }
            st.recovered = true;
        }
        if moving + ready > 0 {
            info!(
                moving,
                ready, "reserve recovered: units in use move to their pods, the others serve again"
            );
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// A unit for pod `handle` with no write, if one fits: `families`
    /// empty (every family the unit has) or exactly the unit's, and every
    /// address in `pool_hints` (a pool name or CIDR; empty: any). The move
    /// to `handle` runs in the background. A handle that took a unit gets
    /// the same one again.
    pub fn take(
        &self,
        handle: &str,
        attrs: &AllocationAttrs,
        families: &[Family],
        pool_hints: &[String],
    ) -> Option<Vec<Assigned>> {
        if !self.enabled()
            || crate::alloc::check_name("handle", handle, true).is_err()
            || is_reserve_handle(handle)
        {
            return None;
        }
        let mut st = self.lock();
        if let Some(t) = st.taken.get(handle) {
            return Some(t.unit.addresses.clone());
        }
        let pos = st.ready.iter().position(|u| fits(u, families, pool_hints));
        let Some(unit) = pos.and_then(|i| st.ready.remove(i)) else {
            bump(&self.shared.counters.fallbacks, 1);
            drop(st);
            self.shared.wake.notify_one();
            return None;
        };
        let out = unit.addresses.clone();
        st.taken.insert(
            handle.to_string(),
            Taken {
                unit,
                attrs: attrs.clone(),
                phase: Phase::Pending,
            },
        );
        drop(st);
        bump(&self.shared.counters.takes, 1);
        self.shared.wake.notify_one();
        Some(out)
    }

    /// Whether pod `handle` took a unit with exactly `ips` (any order):
    /// None if it took none (or its move is done), Some(false) if it took
    /// other addresses or its move failed for good.
    pub fn holds(&self, handle: &str, ips: &[IpAddr]) -> Option<bool> {
        let st = self.lock();
        let t = st.taken.get(handle)?;
        let mut have = t.unit.ips();
        let mut given = ips.to_vec();
        have.sort();
        given.sort();
        Some(have == given && !matches!(t.phase, Phase::Failed(_)))
    }

    /// Releases what pod `handle` holds: the unit it took if its move is
    /// not done (waiting for a move in flight), and what the allocator has
    /// under `handle`. Returns the addresses released.
    pub async fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        // Before recovery, a pod's unit from before a restart is not known
        // to be the pod's yet: releasing only the pod's handle would free
        // nothing, and recovery would then move the unit to a pod that is
        // gone. The caller retries (the plugin journals the DEL).
        if !self.recovered() {
            return Err(IpamError::Unavailable {
                reason: format!(
                    "the IPAM reserve has not recovered its units since the agent started; release of {handle} deferred"
                ),
                source: None,
            });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let unit = loop {
            let moved = self.shared.moved.notified();
            {
                let mut st = self.lock();
                match st.taken.get(handle).map(|t| &t.phase) {
                    None => break None,
                    Some(Phase::Moving) => {}
                    Some(Phase::Pending | Phase::Failed(_)) => {
                        break st.taken.remove(handle).map(|t| t.unit);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return Err(IpamError::Unavailable {
                    reason: format!("the reserve move to {handle} did not end in time"),
                    source: None,
                });
            }
        };
        let mut out = Vec::new();
        if let Some(u) = unit {
            debug!(handle, unit = %u.handle, "released before its move");
            out.extend(self.shared.alloc.release(&u.handle).await?);
        }
        out.extend(self.shared.alloc.release(handle).await?);
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Figures for metrics.
    pub fn metrics(&self) -> ReserveMetrics {
        let (ready, pending) = {
            let st = self.lock();
            (st.ready.len() as u64, st.taken.len() as u64)
        };
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.shared.counters;
        ReserveMetrics {
            ready,
            moves_pending: pending,
            takes: g(&c.takes),
            fallbacks: g(&c.fallbacks),
            refilled: g(&c.refilled),
            refill_failures: g(&c.refill_failures),
            moves: g(&c.moves),
            dropped: g(&c.dropped),
            move_failures: g(&c.move_failures),
        }
    }

    /// Releases the ready units an Allocate could no longer be given (the
    /// pool was disabled or deleted, or stopped selecting this node), so
    /// that pods get addresses from the pools that serve now; the refill
    /// then allocates from those. Taken units are the pods' and stay.
    pub async fn drop_ineligible(&self) {
        let ips: Vec<IpAddr> = {
            let st = self.lock();
            if !st.recovered || (st.ready.is_empty() && st.dropping.is_empty()) {
                return;
            }
            st.ready.iter().flat_map(Unit::ips).collect()
        };
        let bad = match self.shared.alloc.ineligible(ips).await {
            Ok(Some(bad)) => bad,
            Ok(None) => Vec::new(),
            Err(e) => {
                debug!(error = %e, "reserve: pool check skipped");
                Vec::new()
            }
        };
        let gone: Vec<Unit> = {
            let mut st = self.lock();
            let (keep, gone): (VecDeque<Unit>, VecDeque<Unit>) = std::mem::take(&mut st.ready)
                .into_iter()
                .partition(|u| !u.addresses.iter().any(|a| bad.contains(&a.ip)));
            st.ready = keep;
            let mut gone = Vec::from(gone);
            gone.append(&mut st.dropping);
            gone
        };
        for u in gone {
            match self.shared.alloc.release(&u.handle).await {
                Ok(_) => {
                    bump(&self.shared.counters.dropped, 1);
                    info!(unit = %u.handle, ips = ?u.ips(), "reserve unit released: its pool no longer serves this node");
                }
                // Out of `ready` (no pod gets it); retried next period.
                Err(e) => {
                    warn!(unit = %u.handle, error = %e, "reserve unit of a pool that no longer serves this node could not be released; retrying");
                    self.lock().dropping.push(u);
                }
            }
        }
    }

    /// Allocates units up to the target when below the low-water mark
    /// (all in one round of the allocator: one CAS per block).
    pub async fn refill(&self) {
        let opts = &self.shared.opts;
        let n = {
            let mut st = self.lock();
            let have = st.ready.len() + st.filling;
            let low = opts.low_water.clamp(1, opts.size.max(1));
            if !st.recovered || opts.size == 0 || have >= low {
                return;
            }
            let n = opts.size - have;
            st.filling += n;
            n
        };
        let reqs: Vec<AllocRequest> = (0..n)
            .map(|_| AllocRequest {
                handle: format!(
                    "{}{}",
                    self.shared.prefix,
                    self.shared.next_id.fetch_add(1, Ordering::Relaxed)
                ),
                ..Default::default()
            })
            .collect();
        let results = futures::future::join_all(reqs.iter().map(|r| {
            let r = r.clone();
            async move { self.shared.alloc.allocate(r).await }
        }))
        .await;
        let mut st = self.lock();
        st.filling -= n;
        for (r, res) in reqs.into_iter().zip(results) {
            match res {
                Ok(addresses) if !addresses.is_empty() => {
                    bump(&self.shared.counters.refilled, 1);
                    st.ready.push_back(Unit {
                        handle: r.handle,
                        addresses,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    bump(&self.shared.counters.refill_failures, 1);
                    warn!(error = %e, "reserve refill failed; Allocates take the write path meanwhile");
                }
            }
        }
    }

    /// Moves every pending unit to its pod (concurrently: one round of
    /// the allocator). Returns whether some are left to try again.
    pub async fn move_pending(&self) -> bool {
        let batch: Vec<(String, Unit, AllocationAttrs)> = {
            let mut st = self.lock();
            st.taken
                .iter_mut()
                .filter(|(_, t)| t.phase == Phase::Pending)
                .map(|(h, t)| {
                    t.phase = Phase::Moving;
                    (h.clone(), t.unit.clone(), t.attrs.clone())
                })
                .collect()
        };
        if batch.is_empty() {
            return false;
        }
        let results = futures::future::join_all(
            batch
                .iter()
                .map(|(h, u, attrs)| self.move_one(h, u, attrs.clone())),
        )
        .await;
        let mut left = false;
        {
            let mut st = self.lock();
            for ((h, u, _), res) in batch.into_iter().zip(results) {
                let Some(t) = st.taken.get_mut(&h).filter(|t| t.unit.handle == u.handle) else {
                    continue;
                };
                match res {
                    Ok(_) => {
                        st.taken.remove(&h);
                        bump(&self.shared.counters.moves, 1);
                    }
                    Err(
                        e @ (IpamError::Unavailable { .. }
                        | IpamError::Aborted { .. }
                        | IpamError::Stopped),
                    ) => {
                        debug!(handle = %h, error = %e, "reserve move failed; retrying");
                        t.phase = Phase::Pending;
                        left = true;
                    }
                    Err(e) => {
                        warn!(handle = %h, unit = %u.handle, error = %e,
                            "reserve move failed; the unit stays reserved until the pod is released");
                        t.phase = Phase::Failed(e.to_string());
                        bump(&self.shared.counters.move_failures, 1);
                    }
                }
            }
        }
        self.shared.moved.notify_waiters();
        left
    }
}

impl Reserve {
    /// Moves `u` to pod `handle`. Should the unit's record be gone (an
    /// operator released it), the addresses are recorded for the pod
    /// afresh if still free: the pod uses them.
    async fn move_one(
        &self,
        handle: &str,
        u: &Unit,
        attrs: AllocationAttrs,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let alloc = &self.shared.alloc;
        match alloc.move_handle(&u.handle, handle, attrs.clone()).await {
            Err(e @ IpamError::InvalidArgument { .. }) => {
                let gone = alloc.get_handle(&u.handle).await?.is_none()
                    && alloc.get_handle(handle).await?.is_none();
                if !gone {
                    return Err(e);
                }
                warn!(handle, unit = %u.handle, "the reserve unit's record is gone; recording its addresses for the pod");
                let got = alloc
                    .allocate(AllocRequest {
                        handle: handle.to_string(),
                        attrs,
                        requested_ips: u.ips(),
                        ..Default::default()
                    })
                    .await?;
                Ok(got.iter().map(|a| a.ip).collect())
            }
            r => r,
        }
    }
}

/// Whether `u` answers a request for `families` from `hints`.
fn fits(u: &Unit, families: &[Family], hints: &[String]) -> bool {
    if !families.is_empty() {
        let mut want = families.to_vec();
        want.sort();
        want.dedup();
        let mut have: Vec<Family> = u.addresses.iter().map(|a| Family::of(a.ip)).collect();
        have.sort();
        if want != have {
            return false;
        }
    }
    hints.is_empty()
        || u.addresses.iter().all(|a| {
            hints.iter().any(|h| {
                *h == a.pool
                    || h.parse::<crate::cidr::Cidr>()
                        .is_ok_and(|c| c.contains(a.ip))
            })
        })
}
