//! The worker task: owns the [`View`], runs rounds of group commit.
//!
//! One round: take every ready request (up to `max_batch`), plan them all
//! against working copies of the blocks they touch, write each touched block
//! once (in parallel), then acknowledge the requests whose writes all
//! succeeded. Blocks whose write failed are re-read; their requests are
//! planned again in a later round after a jittered backoff, up to
//! `max_attempts`.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use futures::future::join_all;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use crate::cidr::Family;
use crate::error::IpamError;
use crate::model::{AllowedUse, IpamConfig};
use crate::store::{BlockEvent, Store, StoreError};

use super::plan::{Planner, Tent, WorkSet};
use super::state::{Slot, View, fnv1a};
use super::{
    AllocRequest, AllocatorOptions, Assigned, Clock, Cmd, Counters, NodeInfo, PoolStatus,
    ReleaseTarget, Reply, StatusInfo,
};

/// Longest handle / attribute accepted.
const MAX_NAME_LEN: usize = 512;

enum Kind {
    Alloc {
        req: AllocRequest,
        use_: AllowedUse,
        families: Option<Vec<Family>>,
        done: Vec<Slot>,
        reply: Reply<Vec<Assigned>>,
        picked: Option<super::Picked>,
    },
    Release {
        released: Vec<IpAddr>,
        reply: Reply<Vec<IpAddr>>,
    },
    Targets {
        remaining: Vec<ReleaseTarget>,
        released: Vec<ReleaseTarget>,
        reply: Option<Reply<Vec<ReleaseTarget>>>,
    },
    /// Rewrites every address of handle `from` to the op's handle (one CAS
    /// per block; the addresses are never free in between).
    Move {
        from: String,
        attrs: crate::model::AllocationAttrs,
        moved: Vec<IpAddr>,
        reply: Reply<Vec<IpAddr>>,
    },
}

struct Op {
    id: u64,
    handle: String,
    kind: Kind,
    attempts: u32,
    not_before: Instant,
    deadline: Instant,
    refreshed: bool,
    tents: Vec<Tent>,
    /// Why the last attempt failed (for the final error).
    last_failure: Option<Failure>,
}

#[derive(Clone, Debug)]
enum Failure {
    Conflict(String),
    Unavailable(String),
}

enum Outcome {
    Planned,
    Finished,
    Failed(IpamError),
    /// Decided from a possibly stale cache: re-list and plan again, or fail
    /// with this error if a re-list just proved useless.
    Refresh(IpamError),
    /// Requested address in use per the cache: re-read that block and plan
    /// again.
    Reread(String),
    /// The plan writes to blocks the cache holds only summarised: read them
    /// whole from the store (pinned while the op is pending) and plan again.
    Fetch(Vec<String>),
}

pub(crate) struct Worker {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    opts: AllocatorOptions,
    view: View,
    counters: Arc<Counters>,
    rng: SmallRng,
    needs_resync: bool,
    /// Waiting for the block watch's first list (`blocks_from_watch`).
    awaiting_seed: bool,
    /// Pools were listed or given since the start.
    pools_known: bool,
    /// The watch's first list came before any pools: ready once they do.
    seeded_without_pools: bool,
    /// When the idle worker retries a failed listing.
    resync_due: Option<Instant>,
    /// When a re-list last failed to turn up a pool or an address.
    futile_relist: Option<Instant>,
    next_id: u64,
    /// Blocks pinned whole ([`View::pinned`]), with the op that needs them
    /// (unpinned when no pending op does).
    pins: Vec<(String, u64)>,
    idle_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

pub(crate) fn status_of(v: &View) -> StatusInfo {
    let pools = v
        .pools
        .iter()
        .map(|p| PoolStatus {
            name: p.name.clone(),
            cidr: p.spec.cidr,
            capacity: u64::try_from(p.spec.cidr.size()).unwrap_or(u64::MAX),
            allocated: v
                .blocks
                .values()
                .filter(|b| p.spec.cidr.contains_cidr(&b.spec.cidr))
                .map(|b| b.spec.allocations.len() as u64)
                .sum::<u64>()
                + v.summaries
                    .values()
                    .filter(|b| p.spec.cidr.contains_cidr(&b.cidr))
                    .map(|b| u64::from(b.allocated))
                    .sum::<u64>(),
            disabled: p.spec.disabled,
        })
        .collect();
    StatusInfo {
        ready: v.ready,
        node: v.node.name.clone(),
        pools,
        message: v
            .last_error
            .iter()
            .chain(v.pool_errors.iter())
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The allocator's rule for handles and pod attributes (the reserve uses
/// it too, so that what it answers the allocator would accept).
pub(crate) fn check_name(what: &str, s: &str, required: bool) -> Result<(), IpamError> {
    if required && s.is_empty() {
        return Err(IpamError::InvalidArgument {
            reason: format!("{what} is empty"),
        });
    }
    if s.len() > MAX_NAME_LEN || s.chars().any(char::is_control) {
        return Err(IpamError::InvalidArgument {
            reason: format!("{what} is too long or has control characters"),
        });
    }
    Ok(())
}

fn validate_request(req: &AllocRequest) -> Result<(), IpamError> {
    check_name("handle", &req.handle, true)?;
    for s in [&req.attrs.pod, &req.attrs.namespace].into_iter().flatten() {
        check_name("pod attribute", s, false)?;
    }
    if req.pool_hints.len() > 64 || req.requested_ips.len() > 2 {
        return Err(IpamError::InvalidArgument {
            reason: "too many pool hints or requested addresses".into(),
        });
    }
    for h in &req.pool_hints {
        check_name("pool hint", h, true)?;
    }
    let mut seen = HashSet::new();
    for ip in &req.requested_ips {
        if !seen.insert(Family::of(*ip)) {
            return Err(IpamError::InvalidArgument {
                reason: "at most one requested address per family".into(),
            });
        }
        if !req.families.is_empty() && !req.families.contains(&Family::of(*ip)) {
            return Err(IpamError::InvalidArgument {
                reason: format!("requested {ip} is not of a requested family"),
            });
        }
    }
    Ok(())
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        node: NodeInfo,
        config: IpamConfig,
        opts: AllocatorOptions,
        clock: Arc<dyn Clock>,
        counters: Arc<Counters>,
    ) -> Self {
        let seed = opts
            .seed
            .unwrap_or_else(|| fnv1a(&[&node.name]) ^ clock.now_ms());
        let awaiting_seed = opts.blocks_from_watch;
        Worker {
            store,
            opts,
            view: View::new(node, config),
            counters,
            rng: SmallRng::seed_from_u64(seed),
            clock,
            needs_resync: true,
            awaiting_seed,
            pools_known: false,
            seeded_without_pools: false,
            resync_due: None,
            futile_relist: None,
            idle_waiters: Vec::new(),
            next_id: 0,
            pins: Vec::new(),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.view.node.name
    }

    /// The store and the time limit of one call.
    pub fn store(&self) -> (Arc<dyn Store>, std::time::Duration) {
        (self.store.clone(), self.opts.store_timeout)
    }

    fn store_failed(&mut self, e: &StoreError) {
        self.view.ready = false;
        self.view.last_error = Some(e.to_string());
    }

    fn store_succeeded(&mut self) {
        self.view.ready = !self.needs_resync;
        self.view.last_error = None;
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        super::timed(self.opts.store_timeout, f).await
    }

    /// Re-lists pools and blocks (only pools while the blocks are to come
    /// from the watch's first list: then it fails with `Unavailable`).
    pub async fn resync(&mut self) -> Result<(), IpamError> {
        // Blocks seeded from the watch lack only the pools.
        let with_blocks = !self.awaiting_seed && !self.seeded_without_pools;
        // Waiting for the watch with the pools known: nothing to list.
        let list_pools = with_blocks || !self.pools_known;
        Counters::add(
            &self.counters.reads,
            u64::from(with_blocks) + u64::from(list_pools),
        );
        let store = self.store.clone();
        let res = async {
            let pools = match list_pools {
                true => Some(self.timed(store.list_pools()).await?),
                false => None,
            };
            let blocks = match with_blocks {
                true => Some(self.timed(store.list_blocks()).await?),
                false => None,
            };
            Ok::<_, StoreError>((pools, blocks))
        }
        .await;
        match res {
            Ok((pools, Some(blocks))) => {
                if let Some(pools) = pools {
                    self.view.set_pools(pools);
                }
                self.pools_known = true;
                self.seeded_without_pools = false;
                self.view.set_all_blocks(blocks);
                self.needs_resync = false;
                self.store_succeeded();
                Ok(())
            }
            Ok((pools, None)) => {
                if let Some(pools) = pools {
                    self.view.set_pools(pools);
                }
                self.pools_known = true;
                if std::mem::take(&mut self.seeded_without_pools) {
                    self.needs_resync = false;
                    self.store_succeeded();
                    return Ok(());
                }
                self.store_succeeded();
                let reason = "waiting for the first list of the IPAM block watch";
                self.view.last_error = Some(reason.into());
                Err(IpamError::Unavailable {
                    reason: reason.into(),
                    source: None,
                })
            }
            Err(e) => {
                self.needs_resync = true;
                self.store_failed(&e);
                Err(IpamError::Unavailable {
                    reason: "listing pools and blocks".into(),
                    source: Some(e),
                })
            }
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut pending: Vec<Op> = Vec::new();
        let mut open = true;
        loop {
            if pending.is_empty() {
                for w in self.idle_waiters.drain(..) {
                    let _ = w.send(());
                }
                if !open {
                    break;
                }
            }
            let now = Instant::now();
            if !pending.iter().any(|o| o.not_before <= now) {
                let wake = pending.iter().map(|o| o.not_before).min();
                // While unsynced and idle, retry the listing every second
                // (a deadline kept across commands: a caller polling the
                // status must not postpone it forever).
                let resync_at = if self.needs_resync && pending.is_empty() {
                    Some(
                        *self
                            .resync_due
                            .get_or_insert(now + std::time::Duration::from_secs(1)),
                    )
                } else {
                    self.resync_due = None;
                    None
                };
                tokio::select! {
                    cmd = rx.recv(), if open => match cmd {
                        Some(c) => self.accept(c, &mut pending).await,
                        None => open = false,
                    },
                    _ = sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
                    _ = sleep_until(resync_at.unwrap_or(now)), if resync_at.is_some() => {
                        self.resync_due = None;
                        let _ = self.resync().await;
                    }
                    else => {}
                }
            }
            let mut n = 0;
            while open && n < self.opts.max_batch {
                match rx.try_recv() {
                    Ok(c) => {
                        self.accept(c, &mut pending).await;
                        n += 1;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            let now = Instant::now();
            if pending.iter().any(|o| o.not_before <= now) {
                self.round(&mut pending).await;
            }
        }
        debug!(node = %self.view.node.name, "allocator stopped");
    }

    fn new_op(&mut self, handle: String, kind: Kind) -> Op {
        self.next_id += 1;
        let now = Instant::now();
        Op {
            id: self.next_id,
            handle,
            kind,
            attempts: 0,
            not_before: now,
            deadline: now + self.opts.request_timeout,
            refreshed: false,
            tents: Vec::new(),
            last_failure: None,
        }
    }

    async fn accept(&mut self, cmd: Cmd, pending: &mut Vec<Op>) {
        match cmd {
            Cmd::Allocate(mut req, reply, picked) => {
                if let Err(e) = validate_request(&req) {
                    let _ = reply.send(Err(e));
                    return;
                }
                req.attrs.node = Some(self.view.node.name.clone());
                let use_ = req.use_.unwrap_or(AllowedUse::Workload);
                let handle = req.handle.clone();
                let op = self.new_op(
                    handle,
                    Kind::Alloc {
                        req,
                        use_,
                        families: None,
                        done: Vec::new(),
                        reply,
                        picked,
                    },
                );
                pending.push(op);
            }
            Cmd::Release(handle, reply) => {
                if let Err(e) = check_name("handle", &handle, true) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let op = self.new_op(
                    handle,
                    Kind::Release {
                        released: Vec::new(),
                        reply,
                    },
                );
                pending.push(op);
            }
            Cmd::ReleaseTargets(targets, reply) => {
                // One op per handle keeps per-handle ordering simple.
                let mut by_handle: BTreeMap<String, Vec<ReleaseTarget>> = BTreeMap::new();
                for t in targets {
                    by_handle.entry(t.handle.clone()).or_default().push(t);
                }
                if by_handle.len() == 1 {
                    if let Some((h, ts)) = by_handle.into_iter().next() {
                        let op = self.new_op(
                            h,
                            Kind::Targets {
                                remaining: ts,
                                released: Vec::new(),
                                reply: Some(reply),
                            },
                        );
                        pending.push(op);
                    }
                    return;
                }
                // Several handles: run them as independent ops and join.
                let (txs, rxs): (Vec<_>, Vec<_>) = by_handle
                    .keys()
                    .map(|_| tokio::sync::oneshot::channel())
                    .unzip();
                for ((h, ts), tx) in by_handle.into_iter().zip(txs) {
                    let op = self.new_op(
                        h,
                        Kind::Targets {
                            remaining: ts,
                            released: Vec::new(),
                            reply: Some(tx),
                        },
                    );
                    pending.push(op);
                }
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for rx in rxs {
                        match rx.await {
                            Ok(Ok(v)) => out.extend(v),
                            Ok(Err(e)) => {
                                let _ = reply.send(Err(e));
                                return;
                            }
                            Err(_) => {
                                let _ = reply.send(Err(IpamError::Stopped));
                                return;
                            }
                        }
                    }
                    let _ = reply.send(Ok(out));
                });
            }
            Cmd::Move(from, to, mut attrs, reply) => {
                if let Err(e) =
                    check_name("handle", &from, true).and_then(|()| check_name("handle", &to, true))
                {
                    let _ = reply.send(Err(e));
                    return;
                }
                attrs.node = Some(self.view.node.name.clone());
                let op = self.new_op(
                    to,
                    Kind::Move {
                        from,
                        attrs,
                        moved: Vec::new(),
                        reply,
                    },
                );
                pending.push(op);
            }
            Cmd::Inspect(f) => f(&self.view),
            Cmd::Idle(w) => self.idle_waiters.push(w),
            Cmd::Refresh(reply) => {
                let r = self.resync().await;
                let _ = reply.send(r);
            }
            Cmd::SetConfig(c) => self.view.config = c,
            Cmd::SetLabels(l) => self.view.node.labels = l,
            Cmd::SetPools(p) => {
                self.view.set_pools(p);
                self.pools_known = true;
                if std::mem::take(&mut self.seeded_without_pools) {
                    self.needs_resync = false;
                    self.store_succeeded();
                }
            }
            Cmd::Event(ev) => self.apply_event(ev),
        }
    }

    fn apply_event(&mut self, ev: BlockEvent) {
        match ev {
            BlockEvent::Applied(obj) => {
                let newer = self
                    .view
                    .cached_version(&obj.name)
                    .is_none_or(|(rv, seq)| rv != obj.resource_version && obj.spec.sequence >= seq);
                if newer {
                    self.view.put_block(obj);
                }
            }
            BlockEvent::Deleted { name } => self.view.remove_block(&name),
            // The watch's first list is the cache (`blocks_from_watch`):
            // synced once the pools are known too.
            BlockEvent::Resync(all) if self.awaiting_seed => {
                self.view.set_all_blocks(all);
                self.awaiting_seed = false;
                if self.pools_known {
                    self.needs_resync = false;
                    self.store_succeeded();
                } else {
                    self.seeded_without_pools = true;
                    self.view.last_error = Some("waiting for the list of IPPools".into());
                }
            }
            // The watch's relist may predate our own writes: merge, never
            // roll back (see View::merge_all_blocks).
            BlockEvent::Resync(all) => self.view.merge_all_blocks(all),
        }
    }

    fn backoff(&mut self, attempts: u32) -> std::time::Duration {
        let exp = attempts.saturating_sub(1).min(16);
        let d = self
            .opts
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.opts.backoff_max);
        d.mul_f64(self.rng.random_range(0.5..=1.0))
    }
}

mod round;
