//! The per-node allocator: block affinity, claiming, borrowing, release, and
//! group commit of concurrent requests.
//!
//! ```text
//!  gRPC handlers ──Cmd──► mpsc ──► worker task (owns View: pools, block cache,
//!  (Allocator clones)                │            handle index)
//!        ▲                           │ round: drain queue → plan every ready op
//!        └──── oneshot reply ◄───────┤        against working copies → one CAS
//!                                    │        write per touched block (parallel)
//!                                    ▼        → ack ops whose writes all succeeded
//!                                 Store       → re-read conflicted blocks, retry
//! ```
//!
//! An address is acknowledged only after the write that records it has
//! succeeded. Ops that touch the same block in one round share one write.
//! Ops for the same handle run in arrival order (a later op waits while an
//! earlier one is in flight or backing off).

mod plan;
mod state;
mod worker;

pub(crate) use worker::check_name;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use crate::cidr::{Cidr, Family};
use crate::error::IpamError;
use crate::model::{Allocation, AllocationAttrs, AllowedUse, IpamBlockSpec, IpamConfig};
use crate::store::{BlockEvent, BlockObject, PoolObject, Store, Versioned};

pub(crate) use state::View;

/// Wall clock in unix milliseconds (a trait so tests can move time).
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms since the unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Starts at `ms`.
    pub fn new(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }
    /// Moves time forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The node this allocator serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name (affinity `host:<name>`).
    pub name: String,
    /// Node labels, matched against pools' node selectors.
    pub labels: BTreeMap<String, String>,
}

/// Tuning of retries and batching.
#[derive(Clone, Debug)]
pub struct AllocatorOptions {
    /// Attempts per request before giving up (ABORTED / UNAVAILABLE).
    pub max_attempts: u32,
    /// First retry backoff; doubles per attempt, jittered to 50–100 %.
    pub backoff_base: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// Time limit for one store call (then it counts as Unavailable).
    pub store_timeout: Duration,
    /// A request still not done after this long fails at its next retry.
    pub request_timeout: Duration,
    /// Before failing a request for want of a pool or an address, the
    /// allocator re-lists pools and blocks in case its cache was stale;
    /// after a re-list that did not help, it fails such requests without
    /// re-listing for this long (protects the API server from a storm of
    /// retries against an exhausted pool).
    pub min_relist_interval: Duration,
    /// Most requests taken into one round.
    pub max_batch: usize,
    /// Group commit on (default). Off = one write per request (the
    /// "Calico" baseline for benchmarks).
    pub group_commit: bool,
    /// Seed for backoff jitter (None: from the node name and the clock).
    pub seed: Option<u64>,
    /// The blocks come from the caller's block watch: the first
    /// [`BlockEvent::Resync`] given to [`Allocator::apply_block_event`]
    /// fills the cache, and the allocator lists only pools until then (not
    /// ready meanwhile: requests fail with `Unavailable`). Later re-lists
    /// (a stale cache found by a conflict or a futile search) list blocks
    /// as usual. The agent, whose IPAM view watches every block anyway,
    /// saves one list of the cluster's blocks per start.
    pub blocks_from_watch: bool,
}

impl Default for AllocatorOptions {
    fn default() -> Self {
        AllocatorOptions {
            max_attempts: 8,
            backoff_base: Duration::from_millis(2),
            backoff_max: Duration::from_millis(250),
            store_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            min_relist_interval: Duration::from_secs(1),
            max_batch: 512,
            group_commit: true,
            seed: None,
            blocks_from_watch: false,
        }
    }
}

/// One allocation request.
#[derive(Clone, Debug, Default)]
pub struct AllocRequest {
    /// Handle, `<network>.<containerID>[.<ifname>]`.
    pub handle: String,
    /// Pod name / namespace (the node attribute is filled in).
    pub attrs: AllocationAttrs,
    /// Families wanted. Empty: those of `requested_ips`, or else every
    /// family with an eligible pool.
    pub families: Vec<Family>,
    /// Pool names or CIDRs to choose from (empty: any eligible).
    pub pool_hints: Vec<String>,
    /// Specific addresses (at most one per family).
    pub requested_ips: Vec<IpAddr>,
    /// What the address is for.
    pub use_: Option<AllowedUse>,
}

/// An address handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: Cidr,
    /// Its pool (empty if the pool is gone).
    pub pool: String,
    /// The block is not affine to this node.
    pub borrowed: bool,
}

/// What a handle holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleInfo {
    /// The handle.
    pub handle: String,
    /// Its addresses.
    pub addresses: Vec<Assigned>,
    /// Owner attributes of the first address.
    pub attrs: AllocationAttrs,
}

/// An exact address to release (used by leak GC and rollback): released
/// only if the slot still holds `handle` with this allocation `sequence`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReleaseTarget {
    /// Block object name.
    pub block: String,
    /// Ordinal in the block.
    pub ordinal: u32,
    /// Expected handle.
    pub handle: String,
    /// Expected allocation sequence.
    pub sequence: u64,
}

/// Per-pool figures for `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// Pool name.
    pub name: String,
    /// Pool CIDR.
    pub cidr: Cidr,
    /// Addresses in the pool (saturating).
    pub capacity: u64,
    /// Addresses allocated in cached blocks of the pool.
    pub allocated: u64,
    /// Disabled flag.
    pub disabled: bool,
}

/// Allocator health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusInfo {
    /// Last store call succeeded and the cache is synced.
    pub ready: bool,
    /// Node served.
    pub node: String,
    /// Pools.
    pub pools: Vec<PoolStatus>,
    /// Why not ready; invalid pools.
    pub message: String,
}

/// Counters (monotonic) for benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorMetrics {
    /// Rounds run.
    pub rounds: u64,
    /// Store writes issued (create + update + delete).
    pub writes: u64,
    /// Store reads issued (get + list).
    pub reads: u64,
    /// Addresses acknowledged.
    pub allocated: u64,
    /// Addresses released.
    pub released: u64,
    /// Write conflicts seen.
    pub conflicts: u64,
    /// Requests re-queued for another attempt.
    pub retries: u64,
    /// Requests that failed.
    pub failed: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub rounds: AtomicU64,
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub allocated: AtomicU64,
    pub released: AtomicU64,
    pub conflicts: AtomicU64,
    pub retries: AtomicU64,
    pub failed: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

type Reply<T> = oneshot::Sender<Result<T, IpamError>>;

/// Most block reads [`Allocator::blocks_made_by`] has in flight.
const GET_CONCURRENCY: usize = 8;

/// A store call bounded by `limit` (a timeout is `Unavailable`).
pub(crate) async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, crate::store::StoreError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(crate::store::StoreError::unavailable(format!(
            "store call timed out after {limit:?}"
        ))),
    }
}

/// `b` with only the allocations whose node `select` accepts, and no free
/// list; None if it has none.
fn trimmed(b: &BlockObject, select: impl Fn(Option<&str>) -> bool) -> Option<BlockObject> {
    let allocations: Vec<Allocation> = b
        .spec
        .allocations
        .iter()
        .filter(|a| select(a.attrs.node.as_deref()))
        .cloned()
        .collect();
    (!allocations.is_empty()).then(|| Versioned {
        name: b.name.clone(),
        resource_version: b.resource_version.clone(),
        spec: IpamBlockSpec {
            cidr: b.spec.cidr,
            affinity: b.spec.affinity.clone(),
            allocations,
            free: Vec::new(),
            sequence: b.spec.sequence,
            created_at: b.spec.created_at,
        },
    })
}

/// Told the addresses an allocation has chosen, before the write that makes
/// them durable (see [`Allocator::allocate_notify`]).
pub type Picked = oneshot::Sender<Vec<IpAddr>>;
pub(crate) type Inspect = Box<dyn FnOnce(&View) + Send>;

pub(crate) enum Cmd {
    Allocate(AllocRequest, Reply<Vec<Assigned>>, Option<Picked>),
    Release(String, Reply<Vec<IpAddr>>),
    ReleaseTargets(Vec<ReleaseTarget>, Reply<Vec<ReleaseTarget>>),
    /// from, to, the new owner attributes.
    Move(String, String, AllocationAttrs, Reply<Vec<IpAddr>>),
    Inspect(Inspect),
    Idle(oneshot::Sender<()>),
    Refresh(Reply<()>),
    SetConfig(IpamConfig),
    SetLabels(BTreeMap<String, String>),
    SetPools(Vec<PoolObject>),
    Event(BlockEvent),
}

/// Aborts the worker task when the last [`Allocator`] clone goes away.
struct TaskGuard(tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handle to a running allocator; cheap to clone. The worker task is
/// aborted when the last clone is dropped (requests still queued then get
/// [`IpamError::Stopped`]; use [`Allocator::wait_idle`] first to drain).
#[derive(Clone)]
pub struct Allocator {
    tx: mpsc::Sender<Cmd>,
    counters: Arc<Counters>,
    node: Arc<str>,
    task: Arc<TaskGuard>,
    /// For reads outside the worker ([`Allocator::blocks_made_by`]).
    store: Arc<dyn Store>,
    store_timeout: Duration,
}

impl Allocator {
    /// Lists pools and blocks from `store` and starts the worker task (on
    /// the current tokio runtime). Fails with `Unavailable` if the store
    /// cannot be listed.
    pub async fn start(
        store: Arc<dyn Store>,
        node: NodeInfo,
        config: IpamConfig,
        opts: AllocatorOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Allocator, IpamError> {
        let counters = Arc::new(Counters::default());
        let mut w = worker::Worker::new(store, node, config, opts, clock, counters.clone());
        w.resync().await?;
        Ok(Self::launch(w, counters))
    }

    /// Starts the worker without waiting for the store: until the first
    /// listing succeeds (retried every second in the background, and before
    /// every request) [`Allocator::status`] says not ready and requests fail
    /// with `Unavailable` — what the CNI reports as "try again later" while
    /// the agent starts or the API server is away.
    pub fn spawn(
        store: Arc<dyn Store>,
        node: NodeInfo,
        config: IpamConfig,
        opts: AllocatorOptions,
        clock: Arc<dyn Clock>,
    ) -> Allocator {
        let counters = Arc::new(Counters::default());
        let w = worker::Worker::new(store, node, config, opts, clock, counters.clone());
        Self::launch(w, counters)
    }

    fn launch(w: worker::Worker, counters: Arc<Counters>) -> Allocator {
        let name: Arc<str> = w.node_name().into();
        let (store, store_timeout) = w.store();
        let (tx, rx) = mpsc::channel(4096);
        let task = tokio::spawn(w.run(rx)).abort_handle();
        Allocator {
            tx,
            counters,
            node: name,
            task: Arc::new(TaskGuard(task)),
            store,
            store_timeout,
        }
    }

    /// Follows `store.watch_blocks()` in a background task, feeding every
    /// event into the cache (re-subscribing with backoff when the watch
    /// breaks). Optional: it makes conflicts rarer, not correctness. The
    /// task ends when the allocator stops or the handle is aborted.
    pub fn follow_block_watch(&self, store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
        // A sender does not keep the worker alive (the last Allocator clone
        // aborts it), and `closed()` tells when it is gone.
        let tx = self.tx.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut delay = Duration::from_millis(200);
            loop {
                let mut events = store.watch_blocks();
                loop {
                    let ev = tokio::select! {
                        ev = events.next() => ev,
                        _ = tx.closed() => return,
                    };
                    match ev {
                        Some(Ok(ev)) => {
                            delay = Duration::from_millis(200);
                            if tx.send(Cmd::Event(ev)).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "block watch broke; re-subscribing");
                            break;
                        }
                        None => break,
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tx.closed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        })
    }

    /// Stops the worker at once, as a crash would: requests in flight get
    /// [`IpamError::Stopped`]; writes already sent may or may not have landed.
    pub fn abort(&self) {
        self.task.0.abort();
    }

    /// Waits until no request is queued or being retried (rollbacks of
    /// failed requests included).
    pub async fn wait_idle(&self) -> Result<(), IpamError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Idle(tx))
            .await
            .map_err(|_| IpamError::Stopped)?;
        rx.await.map_err(|_| IpamError::Stopped)
    }

    /// The node served.
    pub fn node(&self) -> &str {
        &self.node
    }

    async fn call<T>(&self, f: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, IpamError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| IpamError::Stopped)?;
        rx.await.map_err(|_| IpamError::Stopped)?
    }

    /// Allocates for a handle (idempotent per handle: returns what the
    /// handle already holds).
    pub async fn allocate(&self, req: AllocRequest) -> Result<Vec<Assigned>, IpamError> {
        self.call(|r| Cmd::Allocate(req, r, None)).await
    }

    /// [`Allocator::allocate`], and `picked` is sent the chosen addresses
    /// as soon as they are planned, while the block write that makes them
    /// durable is still in flight; the caller may prepare the dataplane in
    /// parallel. They are tentative: the final answer is the return value
    /// (a lost write race re-plans, possibly other addresses, and is not
    /// announced again; a failure returns an error). Nothing is sent when
    /// the handle already holds addresses (no write, or a top-up whose
    /// announcement would be partial).
    pub async fn allocate_notify(
        &self,
        req: AllocRequest,
        picked: Picked,
    ) -> Result<Vec<Assigned>, IpamError> {
        self.call(|r| Cmd::Allocate(req, r, Some(picked))).await
    }

    /// Releases everything a handle holds; unknown handle → empty list.
    pub async fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let h = handle.to_string();
        self.call(|r| Cmd::Release(h, r)).await
    }

    /// Releases exact slots (only those still matching handle and sequence);
    /// returns those released.
    pub async fn release_targets(
        &self,
        targets: Vec<ReleaseTarget>,
    ) -> Result<Vec<ReleaseTarget>, IpamError> {
        self.call(|r| Cmd::ReleaseTargets(targets, r)).await
    }

    /// Moves every address of handle `from` to handle `to` (owner
    /// attributes `attrs`) in one CAS per block: the addresses stay
    /// allocated throughout. Ordered with the other ops on `to`. Returns
    /// the addresses moved; `to` already holding them (a retried move whose
    /// reply was lost) counts as moved. Fails if `from` holds nothing and
    /// `to` holds nothing, or if `to` already holds an address of a family
    /// `from` has.
    pub async fn move_handle(
        &self,
        from: &str,
        to: &str,
        attrs: AllocationAttrs,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let (f, t) = (from.to_string(), to.to_string());
        self.call(|r| Cmd::Move(f, t, attrs, r)).await
    }

    /// Every handle whose name starts with `prefix`, with its addresses
    /// (from the cache; sorted by handle).
    pub async fn handles_with_prefix(&self, prefix: &str) -> Result<Vec<HandleInfo>, IpamError> {
        let prefix = prefix.to_string();
        self.inspect(move |v| {
            let mut out: Vec<HandleInfo> = v
                .index
                .iter()
                .filter(|(h, _)| h.starts_with(&prefix))
                .map(|(h, slots)| {
                    let mut addresses: Vec<Assigned> = slots
                        .iter()
                        .filter_map(|s| v.assigned(&v.blocks.get(&s.block)?.spec, s.ordinal))
                        .collect();
                    addresses.sort_by_key(|a| a.ip);
                    let attrs = slots
                        .iter()
                        .find_map(|s| v.blocks.get(&s.block)?.spec.allocation(s.ordinal))
                        .map(|a| a.attrs.clone())
                        .unwrap_or_default();
                    HandleInfo {
                        handle: h.clone(),
                        addresses,
                        attrs,
                    }
                })
                .collect();
            out.sort_by(|a, b| a.handle.cmp(&b.handle));
            out
        })
        .await
    }

    /// The blocks holding allocations made by the nodes `select` accepts
    /// (`None`: an allocation naming no node), trimmed to those
    /// allocations, for a scan over the cluster's allocations (the leak GC:
    /// this node's, and those of nodes that are gone) without a store
    /// listing. Blocks with no such allocation are left out and no free
    /// list is copied, so the answer is as small as what was asked for.
    ///
    /// The cache follows the block watch but keeps another node's block
    /// whole only while it holds this node's allocations; of the others it
    /// knows which nodes made their allocations, and those where `select`
    /// accepts one are read from the store (one GET each; at most
    /// `GET_CONCURRENCY` at a time). None while the cache is not synced or
    /// the last store call failed (a partial or stale cache must not be
    /// judged); an error if a read fails.
    pub async fn blocks_made_by(
        &self,
        select: impl Fn(Option<&str>) -> bool + Send + Sync + 'static,
    ) -> Result<Option<Vec<BlockObject>>, IpamError> {
        let select = Arc::new(select);
        let sel = Arc::clone(&select);
        let found = self
            .inspect(move |v| {
                if !v.ready {
                    return None;
                }
                let whole: Vec<BlockObject> = v
                    .blocks
                    .values()
                    .filter_map(|b| trimmed(b, |n| sel(n)))
                    .collect();
                let summarised: Vec<String> = v
                    .summaries
                    .iter()
                    .filter(|(_, s)| s.makers.iter().any(|m| sel(Some(m))))
                    .map(|(n, _)| n.clone())
                    .collect();
                Some((whole, summarised))
            })
            .await?;
        let Some((mut out, names)) = found else {
            return Ok(None);
        };
        if names.is_empty() {
            return Ok(Some(out));
        }
        use futures::StreamExt as _;
        Counters::add(&self.counters.reads, names.len() as u64);
        let limit = self.store_timeout;
        // Owned names and store handles: a future borrowing from the
        // iterator is not Send for every lifetime (the caller spawns this).
        let mut reads = futures::stream::iter(names)
            .map(|n| {
                let store = Arc::clone(&self.store);
                async move { timed(limit, store.get_block(&n)).await }
            })
            .buffered(GET_CONCURRENCY);
        while let Some(r) = reads.next().await {
            match r {
                // Deleted since: nothing of it to judge.
                Ok(None) => {}
                Ok(Some(b)) => out.extend(trimmed(&b, |n| select(n))),
                Err(e) => {
                    return Err(IpamError::Unavailable {
                        reason: "reading blocks for the leak GC".into(),
                        source: Some(e),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(out))
    }

    /// Runs `f` on the worker's view between rounds.
    pub(crate) async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&View) -> T + Send + 'static,
    ) -> Result<T, IpamError> {
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd::Inspect(Box::new(move |v| {
            let _ = tx.send(f(v));
        }));
        self.tx.send(cmd).await.map_err(|_| IpamError::Stopped)?;
        rx.await.map_err(|_| IpamError::Stopped)
    }

    /// Which of `ips` a new pod Allocate could no longer be given: the
    /// pool holding it is gone, disabled, not for workloads, or no longer
    /// selects this node (from the cache; no store call). None until the
    /// cache is synced.
    pub async fn ineligible(&self, ips: Vec<IpAddr>) -> Result<Option<Vec<IpAddr>>, IpamError> {
        self.inspect(move |v| {
            if !v.ready {
                return None;
            }
            let out = ips
                .into_iter()
                .filter(|ip| {
                    !v.pools.iter().any(|p| {
                        p.spec.cidr.contains(*ip)
                            && !p.spec.disabled
                            && p.spec.allowed_uses.contains(&AllowedUse::Workload)
                            && p.spec.node_selector.matches(&v.node.labels)
                    })
                })
                .collect();
            Some(out)
        })
        .await
    }

    /// What a handle holds, from the cache.
    pub async fn get_handle(&self, handle: &str) -> Result<Option<HandleInfo>, IpamError> {
        let h = handle.to_string();
        self.inspect(move |v| {
            let slots = v.index.get(&h)?;
            let mut addresses = Vec::new();
            let mut attrs = None;
            for s in slots {
                let b = v.blocks.get(&s.block)?;
                if let Some(a) = b.spec.allocation(s.ordinal) {
                    attrs.get_or_insert_with(|| a.attrs.clone());
                }
                addresses.extend(v.assigned(&b.spec, s.ordinal));
            }
            addresses.sort_by_key(|a| a.ip);
            Some(HandleInfo {
                handle: h,
                addresses,
                attrs: attrs.unwrap_or_default(),
            })
        })
        .await
    }

    /// CNI GC: releases every handle made by this node whose name starts
    /// with `<network>.` and is not in `valid`. Returns the released handles.
    pub async fn garbage_collect(
        &self,
        network: &str,
        valid: HashSet<String>,
    ) -> Result<Vec<String>, IpamError> {
        let prefix = format!("{network}.");
        let node = self.node.to_string();
        let mut victims = self
            .inspect(move |v| {
                v.index
                    .iter()
                    .filter(|(h, _)| h.starts_with(&prefix) && !valid.contains(*h))
                    .filter(|(_, slots)| {
                        slots.iter().any(|s| {
                            v.blocks
                                .get(&s.block)
                                .and_then(|b| b.spec.allocation(s.ordinal))
                                .is_some_and(|a| a.attrs.node.as_deref() == Some(node.as_str()))
                        })
                    })
                    .map(|(h, _)| h.clone())
                    .collect::<Vec<_>>()
            })
            .await?;
        victims.sort();
        let results = futures::future::join_all(victims.iter().map(|h| self.release(h))).await;
        let mut out = Vec::new();
        for (h, r) in victims.into_iter().zip(results) {
            if !r?.is_empty() {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// Health and pool usage.
    pub async fn status(&self) -> Result<StatusInfo, IpamError> {
        self.call(|r| {
            Cmd::Inspect(Box::new(move |v: &View| {
                let _ = r.send(Ok(worker::status_of(v)));
            }))
        })
        .await
    }

    /// Re-lists pools and blocks from the store.
    pub async fn refresh(&self) -> Result<(), IpamError> {
        self.call(Cmd::Refresh).await
    }

    /// Replaces the IPAM configuration.
    pub async fn set_config(&self, config: IpamConfig) -> Result<(), IpamError> {
        self.tx
            .send(Cmd::SetConfig(config))
            .await
            .map_err(|_| IpamError::Stopped)
    }

    /// Replaces the node's labels (pool selectors are re-evaluated).
    pub async fn set_node_labels(&self, labels: BTreeMap<String, String>) -> Result<(), IpamError> {
        self.tx
            .send(Cmd::SetLabels(labels))
            .await
            .map_err(|_| IpamError::Stopped)
    }

    /// Replaces the pools (from the agent's `IPPool` watch); pools are
    /// otherwise re-listed on [`Allocator::refresh`] and before a request
    /// fails for want of a pool or an address.
    pub async fn set_pools(&self, pools: Vec<PoolObject>) -> Result<(), IpamError> {
        self.tx
            .send(Cmd::SetPools(pools))
            .await
            .map_err(|_| IpamError::Stopped)
    }

    /// Feeds a block watch event into the cache (optional: the cache heals
    /// through CAS conflicts anyway, a watch just makes it fresher).
    pub async fn apply_block_event(&self, ev: BlockEvent) -> Result<(), IpamError> {
        self.tx
            .send(Cmd::Event(ev))
            .await
            .map_err(|_| IpamError::Stopped)
    }

    /// Counters so far.
    pub fn metrics(&self) -> AllocatorMetrics {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        AllocatorMetrics {
            rounds: g(&c.rounds),
            writes: g(&c.writes),
            reads: g(&c.reads),
            allocated: g(&c.allocated),
            released: g(&c.released),
            conflicts: g(&c.conflicts),
            retries: g(&c.retries),
            failed: g(&c.failed),
        }
    }
}
