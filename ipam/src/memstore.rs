//! An in-memory [`Store`] with fault injection, for tests and benchmarks.
//!
//! Faults: a fixed latency per call (a simulated API round trip), forced CAS
//! conflicts (the stored resourceVersion is bumped as if another writer won),
//! unavailability (every call fails), "ambiguous" writes (applied, but the
//! caller is told the store was unavailable) and random task yields before
//! each call so that a single-threaded test runtime explores different
//! interleavings for different seeds. Every call is counted.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::broadcast;

use crate::model::{IpamBlockSpec, PoolParams};
use crate::store::{BlockEvent, BlockObject, Kind, PoolObject, Store, StoreError, Versioned};

/// Counters of calls made to a [`MemStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `get_block` calls.
    pub gets: u64,
    /// `list_*` calls.
    pub lists: u64,
    /// `list_blocks` calls (also counted in `lists`).
    pub block_lists: u64,
    /// `create_block` calls (including failed ones).
    pub creates: u64,
    /// `update_block` calls (including failed ones).
    pub updates: u64,
    /// `delete_block` calls (including failed ones).
    pub deletes: u64,
    /// Conflicts returned (real and injected).
    pub conflicts: u64,
}

impl StoreStats {
    /// Write calls (create + update + delete), the API writes a real
    /// apiserver would see.
    pub fn writes(&self) -> u64 {
        self.creates + self.updates + self.deletes
    }
}

#[derive(Default)]
struct Faults {
    latency: Duration,
    conflict_rate: f64,
    ambiguous_rate: f64,
    yield_max: u32,
}

struct Inner {
    pools: BTreeMap<String, PoolObject>,
    blocks: BTreeMap<String, BlockObject>,
    rv: u64,
    faults: Faults,
    rng: SmallRng,
}

/// The in-memory store. Cheap to share behind an `Arc`.
pub struct MemStore {
    inner: Mutex<Inner>,
    unavailable: AtomicBool,
    events: broadcast::Sender<BlockEvent>,
    gets: AtomicU64,
    lists: AtomicU64,
    block_lists: AtomicU64,
    creates: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
    conflicts: AtomicU64,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new(0)
    }
}

impl MemStore {
    /// An empty store; `seed` drives injected faults and yields.
    pub fn new(seed: u64) -> Self {
        MemStore {
            inner: Mutex::new(Inner {
                pools: BTreeMap::new(),
                blocks: BTreeMap::new(),
                rv: 0,
                faults: Faults::default(),
                rng: SmallRng::seed_from_u64(seed),
            }),
            unavailable: AtomicBool::new(false),
            events: broadcast::channel(4096).0,
            gets: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            block_lists: AtomicU64::new(0),
            creates: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces a pool.
    pub fn put_pool(&self, name: &str, spec: PoolParams) {
        let mut g = self.lock();
        g.rv += 1;
        let rv = g.rv.to_string();
        g.pools.insert(
            name.to_string(),
            Versioned {
                name: name.to_string(),
                resource_version: rv,
                spec,
            },
        );
    }

    /// Removes a pool.
    pub fn remove_pool(&self, name: &str) {
        self.lock().pools.remove(name);
    }

    /// Sets the delay added to every call.
    pub fn set_latency(&self, d: Duration) {
        self.lock().faults.latency = d;
    }

    /// Probability that an update/delete fails with an injected conflict.
    pub fn set_conflict_rate(&self, p: f64) {
        self.lock().faults.conflict_rate = p.clamp(0.0, 1.0);
    }

    /// Probability that a successful write is reported as `Unavailable`.
    pub fn set_ambiguous_rate(&self, p: f64) {
        self.lock().faults.ambiguous_rate = p.clamp(0.0, 1.0);
    }

    /// Before each call, yield to the runtime a random 0..=n times.
    pub fn set_yield_max(&self, n: u32) {
        self.lock().faults.yield_max = n;
    }

    /// Makes every call fail with `Unavailable` (API server down).
    pub fn set_unavailable(&self, down: bool) {
        self.unavailable.store(down, Ordering::SeqCst);
    }

    /// Call counters so far.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            gets: self.gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            block_lists: self.block_lists.load(Ordering::Relaxed),
            creates: self.creates.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
        }
    }

    /// A snapshot of every block (no latency, not counted): for assertions.
    pub fn snapshot_blocks(&self) -> Vec<BlockObject> {
        self.lock().blocks.values().cloned().collect()
    }

    /// Latency, yields and the availability check shared by every call.
    async fn enter(&self) -> Result<(), StoreError> {
        let (latency, yields) = {
            let mut g = self.lock();
            let y = g.faults.yield_max;
            let n = if y > 0 { g.rng.random_range(0..=y) } else { 0 };
            (g.faults.latency, n)
        };
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected: store down"));
        }
        Ok(())
    }

    fn roll(g: &mut Inner, p: f64) -> bool {
        p > 0.0 && g.rng.random_bool(p)
    }

    fn conflict(&self, name: &str) -> StoreError {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
        StoreError::Conflict {
            kind: Kind::Block,
            name: name.to_string(),
        }
    }

    fn ambiguous(g: &mut Inner) -> Result<(), StoreError> {
        let p = g.faults.ambiguous_rate;
        if Self::roll(g, p) {
            return Err(StoreError::unavailable(
                "injected: write applied, reply lost",
            ));
        }
        Ok(())
    }
}

/// Round-trips a spec through JSON as a real store would, so serde problems
/// surface in tests.
fn through_json(spec: &IpamBlockSpec, name: &str) -> Result<IpamBlockSpec, StoreError> {
    serde_json::to_vec(spec)
        .and_then(|v| serde_json::from_slice(&v))
        .map_err(|e| StoreError::Invalid {
            kind: Kind::Block,
            name: name.to_string(),
            reason: e.to_string(),
        })
}

impl Store for MemStore {
    fn list_pools(&self) -> BoxFuture<'_, Result<Vec<PoolObject>, StoreError>> {
        Box::pin(async move {
            self.enter().await?;
            self.lists.fetch_add(1, Ordering::Relaxed);
            Ok(self.lock().pools.values().cloned().collect())
        })
    }

    fn list_blocks(&self) -> BoxFuture<'_, Result<Vec<BlockObject>, StoreError>> {
        Box::pin(async move {
            self.enter().await?;
            self.lists.fetch_add(1, Ordering::Relaxed);
            self.block_lists.fetch_add(1, Ordering::Relaxed);
            Ok(self.lock().blocks.values().cloned().collect())
        })
    }

    fn get_block<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BlockObject>, StoreError>> {
        Box::pin(async move {
            self.enter().await?;
            self.gets.fetch_add(1, Ordering::Relaxed);
            Ok(self.lock().blocks.get(name).cloned())
        })
    }

    fn create_block<'a>(
        &'a self,
        name: &'a str,
        spec: &'a IpamBlockSpec,
    ) -> BoxFuture<'a, Result<BlockObject, StoreError>> {
        Box::pin(async move {
            self.enter().await?;
            self.creates.fetch_add(1, Ordering::Relaxed);
            let spec = through_json(spec, name)?;
            let mut g = self.lock();
            if g.blocks.contains_key(name) {
                return Err(StoreError::AlreadyExists {
                    kind: Kind::Block,
                    name: name.to_string(),
                });
            }
            g.rv += 1;
            let obj = Versioned {
                name: name.to_string(),
                resource_version: g.rv.to_string(),
                spec,
            };
            g.blocks.insert(name.to_string(), obj.clone());
            let _ = self.events.send(BlockEvent::Applied(obj.clone()));
            Self::ambiguous(&mut g)?;
            Ok(obj)
        })
    }

    fn update_block<'a>(
        &'a self,
        obj: &'a BlockObject,
    ) -> BoxFuture<'a, Result<BlockObject, StoreError>> {
        Box::pin(async move {
            self.enter().await?;
            self.updates.fetch_add(1, Ordering::Relaxed);
            let spec = through_json(&obj.spec, &obj.name)?;
            let mut g = self.lock();
            let p = g.faults.conflict_rate;
            let inject = Self::roll(&mut g, p);
            g.rv += 1;
            let rv = g.rv.to_string();
            let Some(cur) = g.blocks.get_mut(&obj.name) else {
                return Err(StoreError::NotFound {
                    kind: Kind::Block,
                    name: obj.name.clone(),
                });
            };
            if cur.resource_version != obj.resource_version {
                return Err(self.conflict(&obj.name));
            }
            if inject {
                // As if another writer stored the same content first.
                cur.resource_version = rv;
                let ev = BlockEvent::Applied(cur.clone());
                let _ = self.events.send(ev);
                return Err(self.conflict(&obj.name));
            }
            cur.resource_version = rv;
            cur.spec = spec;
            let out = cur.clone();
            let _ = self.events.send(BlockEvent::Applied(out.clone()));
            Self::ambiguous(&mut g)?;
            Ok(out)
        })
    }

    fn delete_block<'a>(
        &'a self,
        name: &'a str,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.enter().await?;
            self.deletes.fetch_add(1, Ordering::Relaxed);
            let mut g = self.lock();
            let p = g.faults.conflict_rate;
            let inject = Self::roll(&mut g, p);
            let Some(cur) = g.blocks.get(name) else {
                return Err(StoreError::NotFound {
                    kind: Kind::Block,
                    name: name.to_string(),
                });
            };
            if cur.resource_version != resource_version || inject {
                return Err(self.conflict(name));
            }
            g.blocks.remove(name);
            let _ = self.events.send(BlockEvent::Deleted {
                name: name.to_string(),
            });
            Self::ambiguous(&mut g)?;
            Ok(())
        })
    }

    fn watch_blocks(&self) -> BoxStream<'static, Result<BlockEvent, StoreError>> {
        // Subscribe before taking the snapshot so no change falls between.
        let rx = self.events.subscribe();
        let snapshot = BlockEvent::Resync(self.snapshot_blocks());
        let rest = futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(ev) => Some((Ok(ev), Some(rx))),
                Err(broadcast::error::RecvError::Closed) => None,
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(StoreError::unavailable(format!(
                        "watch lagged by {n} events"
                    ))),
                    None,
                )),
            }
        });
        futures::stream::once(async move { Ok(snapshot) })
            .chain(rest)
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::block_name;

    #[tokio::test]
    async fn cas_semantics_and_watch() {
        let s = MemStore::new(0);
        let cidr = "198.19.0.0/30".parse().unwrap();
        let name = block_name(&cidr);
        let mut w = s.watch_blocks();
        assert!(matches!(w.next().await, Some(Ok(BlockEvent::Resync(v))) if v.is_empty()));
        let spec = IpamBlockSpec::new(cidr, None, 0);
        let a = s.create_block(&name, &spec).await.unwrap();
        assert!(matches!(
            s.create_block(&name, &spec).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        let mut b = a.clone();
        b.spec.sequence = 1;
        let b = s.update_block(&b).await.unwrap();
        assert_ne!(a.resource_version, b.resource_version);
        assert!(matches!(
            s.update_block(&a).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.delete_block(&name, &a.resource_version).await,
            Err(StoreError::Conflict { .. })
        ));
        s.delete_block(&name, &b.resource_version).await.unwrap();
        assert!(matches!(
            s.update_block(&b).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(s.get_block(&name).await.unwrap().is_none());
        assert!(matches!(w.next().await, Some(Ok(BlockEvent::Applied(o))) if o == a));
        assert!(matches!(w.next().await, Some(Ok(BlockEvent::Applied(o))) if o == b));
        assert!(matches!(w.next().await, Some(Ok(BlockEvent::Deleted { name: n })) if n == name));
        let st = s.stats();
        assert_eq!((st.creates, st.updates, st.deletes), (2, 3, 2));
        assert_eq!(st.conflicts, 2);
        s.set_unavailable(true);
        assert!(matches!(
            s.list_blocks().await,
            Err(StoreError::Unavailable { .. })
        ));
    }
}
