//! Property test: random interleavings of allocate / release (which claim,
//! borrow, reclaim and release blocks) from 16 simulated nodes sharing one
//! in-memory store, with injected CAS conflicts, lost write replies, random
//! task yields and nodes crashing mid-batch and restarting from the store.
//!
//! Checked after every batch, against the store itself:
//! - no address is held by two handles, and no address is acknowledged to a
//!   handle while another handle that is not being released holds it;
//! - every acknowledged allocation is in the store under its handle;
//! - the store holds exactly the handles the callers believe they hold
//!   (failed requests leave nothing: dual-stack is both or neither);
//! - released addresses can be allocated again (explicitly requested), and
//!   at the end, with everything released, the whole pool is allocatable.
//!
//! Cases default to 256 (a few seconds in debug); `PROPTEST_CASES=N` raises it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipam::memstore::MemStore;
use ipam::model::{AllocationAttrs, IpamConfig, PoolParams};
use ipam::{
    AllocRequest, Allocator, AllocatorOptions, Assigned, Clock, Family, IpamError, ManualClock,
    NodeInfo, Store,
};
use proptest::prelude::*;

const NODES: usize = 16;
const V4_POOL: &str = "198.19.0.0/26";
const V6_POOL: &str = "2001:db8::/122";

#[derive(Clone, Debug)]
enum Step {
    Alloc { node: usize, dual: bool },
    Specific { node: usize, offset: u8 },
    Release { pick: usize },
    Crash { node: usize, after_yields: u8 },
}

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    strict: bool,
    max_blocks: u32,
    conflict: f64,
    ambiguous: f64,
    yields: u32,
    /// Nodes also follow the store's block watch.
    watch: bool,
    batches: Vec<Vec<Step>>,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..NODES, any::<bool>()).prop_map(|(node, dual)| Step::Alloc { node, dual }),
        1 => (0..NODES, 0u8..64).prop_map(|(node, offset)| Step::Specific { node, offset }),
        3 => any::<usize>().prop_map(|pick| Step::Release { pick }),
        1 => (0..NODES, 0u8..40).prop_map(|(node, after_yields)| Step::Crash { node, after_yields }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        any::<bool>(),
        0u32..3,
        prop_oneof![Just(0.0), 0.0..0.4],
        prop_oneof![Just(0.0), 0.0..0.15],
        0u32..4,
        any::<bool>(),
        prop::collection::vec(prop::collection::vec(step(), 1..14), 1..10),
    )
        .prop_map(
            |(seed, strict, max_blocks, conflict, ambiguous, yields, watch, batches)| Case {
                seed,
                strict,
                max_blocks,
                conflict,
                ambiguous,
                yields,
                watch,
                batches,
            },
        )
}

enum Event {
    Allocated(String, Vec<Assigned>),
    AllocFailed(String, IpamError),
    Released(String, Result<Vec<IpAddr>, IpamError>),
}

struct Sim {
    store: Arc<MemStore>,
    clock: Arc<ManualClock>,
    cfg: IpamConfig,
    seed: u64,
    watch: bool,
    faults: f64,
    nodes: Vec<Allocator>,
    /// handle → (node, dual, addresses) the callers believe they hold.
    held: BTreeMap<String, (usize, bool, Vec<IpAddr>)>,
    owner: HashMap<IpAddr, String>,
    next: u64,
}

fn req(handle: &str, fams: &[Family], ips: Vec<IpAddr>) -> AllocRequest {
    AllocRequest {
        handle: handle.to_string(),
        attrs: AllocationAttrs {
            pod: Some(handle.to_string()),
            namespace: Some("ns".into()),
            node: None,
        },
        families: fams.to_vec(),
        requested_ips: ips,
        ..Default::default()
    }
}

fn fams(dual: bool) -> Vec<Family> {
    if dual {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

impl Sim {
    async fn start_node(&self, i: usize) -> Result<Allocator, String> {
        let opts = AllocatorOptions {
            seed: Some(self.seed ^ i as u64),
            backoff_base: Duration::from_millis(1),
            // Every "no address" answer may re-list here, so the liveness
            // checks see the truth (the re-list rate limit has its own test).
            min_relist_interval: Duration::ZERO,
            ..Default::default()
        };
        let a = Allocator::start(
            self.store.clone() as Arc<dyn Store>,
            NodeInfo {
                name: format!("node{i}"),
                labels: Default::default(),
            },
            self.cfg.clone(),
            opts,
            self.clock.clone() as Arc<dyn Clock>,
        )
        .await
        .map_err(|e| format!("start node{i}: {e}"))?;
        if self.watch {
            // The task ends by itself when the allocator stops.
            drop(a.follow_block_watch(self.store.clone() as Arc<dyn Store>));
        }
        Ok(a)
    }

    fn handle(&mut self) -> String {
        self.next += 1;
        format!("net.h{}", self.next)
    }

    /// Records an acknowledged allocation, checking it against current owners.
    fn ack(
        &mut self,
        h: &str,
        node: usize,
        dual: bool,
        got: &[Assigned],
        releasing: &HashSet<String>,
    ) -> Result<(), String> {
        let want = fams(dual);
        let mut have: Vec<Family> = got.iter().map(|a| Family::of(a.ip)).collect();
        have.sort();
        if have != want {
            return Err(format!("{h}: got families {have:?}, asked {want:?}"));
        }
        for a in got {
            if let Some(o) = self.owner.get(&a.ip)
                && o != h
                && !releasing.contains(o)
            {
                return Err(format!("{} acknowledged to {h} while held by {o}", a.ip));
            }
            self.owner.insert(a.ip, h.to_string());
        }
        self.held.insert(
            h.to_string(),
            (node, dual, got.iter().map(|a| a.ip).collect()),
        );
        Ok(())
    }

    fn drop_handle(&mut self, h: &str) -> Vec<IpAddr> {
        let Some((_, _, ips)) = self.held.remove(h) else {
            return Vec::new();
        };
        for ip in &ips {
            if self.owner.get(ip).map(String::as_str) == Some(h) {
                self.owner.remove(ip);
            }
        }
        ips
    }

    /// Store ground truth: handle → addresses; fails on malformed blocks or
    /// an address recorded twice.
    fn truth(&self) -> Result<BTreeMap<String, Vec<IpAddr>>, String> {
        let mut by_ip: HashMap<IpAddr, String> = HashMap::new();
        let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for b in self.store.snapshot_blocks() {
            b.spec.validate().map_err(|e| e.to_string())?;
            for a in &b.spec.allocations {
                let ip = b.spec.ip_of(a.ordinal).ok_or("ordinal outside block")?;
                if let Some(o) = by_ip.insert(ip, a.handle.clone()) {
                    return Err(format!("{ip} recorded for {o} and {}", a.handle));
                }
                out.entry(a.handle.clone()).or_default().push(ip);
            }
        }
        Ok(out)
    }

    async fn idle(&self) -> Result<(), String> {
        for (i, n) in self.nodes.iter().enumerate() {
            n.wait_idle()
                .await
                .map_err(|e| format!("node{i} idle: {e}"))?;
        }
        Ok(())
    }

    async fn batch(&mut self, steps: &[Step]) -> Result<(), String> {
        let log: Arc<Mutex<Vec<(usize, bool, Event)>>> = Arc::default();
        let mut tasks = Vec::new();
        let mut releasing = HashSet::new();
        let mut crashed = HashSet::new();
        let mut unknown_allocs: Vec<(String, usize, bool)> = Vec::new();
        let mut released_ips: Vec<IpAddr> = Vec::new();
        let mut retry_releases: Vec<String> = Vec::new();
        for s in steps {
            match *s {
                Step::Alloc { node, dual } => {
                    let h = self.handle();
                    let a = self.nodes[node].clone();
                    let log = log.clone();
                    tasks.push(tokio::spawn(async move {
                        let r = a.allocate(req(&h, &fams(dual), vec![])).await;
                        let ev = match r {
                            Ok(v) => Event::Allocated(h, v),
                            Err(e) => Event::AllocFailed(h, e),
                        };
                        log.lock().unwrap().push((node, dual, ev));
                    }));
                }
                Step::Specific { node, offset } => {
                    let h = self.handle();
                    let ip = v4_nth(offset);
                    let a = self.nodes[node].clone();
                    let log = log.clone();
                    tasks.push(tokio::spawn(async move {
                        let r = a.allocate(req(&h, &[Family::V4], vec![ip])).await;
                        let ev = match r {
                            Ok(v) => Event::Allocated(h, v),
                            Err(e) => Event::AllocFailed(h, e),
                        };
                        log.lock().unwrap().push((node, false, ev));
                    }));
                }
                Step::Release { pick } => {
                    let cands: Vec<String> = self
                        .held
                        .keys()
                        .filter(|h| !releasing.contains(*h))
                        .cloned()
                        .collect();
                    if cands.is_empty() {
                        continue;
                    }
                    let h = cands[pick % cands.len()].clone();
                    releasing.insert(h.clone());
                    let (node, dual, _) = self.held[&h];
                    let a = self.nodes[node].clone();
                    let log = log.clone();
                    tasks.push(tokio::spawn(async move {
                        let r = a.release(&h).await;
                        log.lock()
                            .unwrap()
                            .push((node, dual, Event::Released(h, r)));
                    }));
                }
                Step::Crash { node, after_yields } => {
                    if !crashed.insert(node) {
                        continue;
                    }
                    let a = self.nodes[node].clone();
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..after_yields {
                            tokio::task::yield_now().await;
                        }
                        a.abort();
                    }));
                }
            }
        }
        for t in tasks {
            t.await.map_err(|e| format!("task: {e}"))?;
        }
        let events = std::mem::take(&mut *log.lock().unwrap());
        for (node, dual, ev) in events {
            match ev {
                Event::Allocated(h, v) => self.ack(&h, node, dual, &v, &releasing)?,
                Event::AllocFailed(h, IpamError::Stopped) => unknown_allocs.push((h, node, dual)),
                Event::AllocFailed(_, _) => {}
                Event::Released(h, Ok(ips)) => {
                    let mut had = self.drop_handle(&h);
                    let mut got = ips.clone();
                    had.sort();
                    got.sort();
                    if had != got {
                        return Err(format!("release {h}: released {got:?}, held {had:?}"));
                    }
                    released_ips.extend(ips);
                }
                // Unknown outcome (crash, retries exhausted): the runtime
                // retries DEL; so do we, below.
                Event::Released(h, Err(_)) => retry_releases.push(h),
            }
        }
        // Crashed nodes restart from the store.
        for &n in &crashed {
            self.nodes[n] = self.start_node(n).await?;
        }
        self.idle().await?;
        for h in retry_releases {
            let Some(&(node, _, _)) = self.held.get(&h) else {
                continue;
            };
            let mut last = None;
            for _ in 0..5 {
                match self.nodes[node].release(&h).await {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(format!("release of {h} keeps failing: {e}"));
            }
            self.drop_handle(&h);
        }
        // Allocations cut by a crash: the caller retries with the same
        // handle (as the runtime would), getting all families or nothing.
        for (h, node, dual) in unknown_allocs {
            match self.nodes[node]
                .allocate(req(&h, &fams(dual), vec![]))
                .await
            {
                Ok(v) => self.ack(&h, node, dual, &v, &HashSet::new())?,
                // Gave up under injected faults: must leave nothing behind
                // (checked against the store below).
                Err(
                    IpamError::Exhausted { .. }
                    | IpamError::Aborted { .. }
                    | IpamError::Unavailable { .. },
                ) => {}
                Err(e) => return Err(format!("retry of {h} after crash: {e}")),
            }
        }
        self.idle().await?;
        let truth = self.truth()?;
        for (h, (_, _, ips)) in &self.held {
            let mut a = ips.clone();
            a.sort();
            let mut b = truth.get(h).cloned().unwrap_or_default();
            b.sort();
            if a != b {
                return Err(format!("{h}: callers hold {a:?}, store has {b:?}"));
            }
        }
        if let Some(h) = truth.keys().find(|h| !self.held.contains_key(*h)) {
            return Err(format!(
                "store holds {h} ({:?}) which no caller holds",
                truth[h]
            ));
        }
        // Released addresses are allocatable again (checked without injected
        // conflicts: under them a request may legitimately give up).
        let faults = self.faults;
        self.store.set_conflict_rate(0.0);
        let r = self.reallocate(released_ips).await;
        self.store.set_conflict_rate(faults);
        r
    }

    async fn reallocate(&mut self, released_ips: Vec<IpAddr>) -> Result<(), String> {
        for ip in released_ips {
            if self.owner.contains_key(&ip) || !ip.is_ipv4() {
                continue;
            }
            let node = self.affine_node_of(ip).unwrap_or(0);
            let h = self.handle();
            let v = self.nodes[node]
                .allocate(req(&h, &[Family::V4], vec![ip]))
                .await
                .map_err(|e| format!("re-allocating released {ip} on node{node}: {e}"))?;
            self.ack(&h, node, false, &v, &HashSet::new())?;
            break;
        }
        Ok(())
    }

    fn affine_node_of(&self, ip: IpAddr) -> Option<usize> {
        let b = self
            .store
            .snapshot_blocks()
            .into_iter()
            .find(|b| b.spec.cidr.contains(ip))?;
        b.spec.affine_node()?.strip_prefix("node")?.parse().ok()
    }

    async fn finale(&mut self) -> Result<(), String> {
        let hs: Vec<(String, usize)> = self.held.iter().map(|(h, v)| (h.clone(), v.0)).collect();
        for (h, node) in hs {
            self.nodes[node]
                .release(&h)
                .await
                .map_err(|e| format!("final release of {h}: {e}"))?;
            self.drop_handle(&h);
        }
        self.idle().await?;
        if !self.truth()?.is_empty() {
            return Err("store not empty after releasing everything".into());
        }
        // The whole v4 pool (8 blocks of 8) is allocatable again.
        let mut seen = HashSet::new();
        for node in 0..8 {
            for _ in 0..8 {
                let h = self.handle();
                let v = self.nodes[node]
                    .allocate(req(&h, &[Family::V4], vec![]))
                    .await
                    .map_err(|e| format!("final allocation {} on node{node}: {e}", seen.len()))?;
                if !seen.insert(v[0].ip) {
                    return Err(format!("{} allocated twice", v[0].ip));
                }
            }
        }
        match self.nodes[8]
            .allocate(req("net.last", &[Family::V4], vec![]))
            .await
        {
            Err(IpamError::Exhausted { .. }) => Ok(()),
            other => Err(format!("65th address: {other:?}")),
        }
    }
}

/// The `n`-th address of the v4 pool.
fn v4_nth(n: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, n % 64))
}

fn run(c: &Case) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = Arc::new(MemStore::new(c.seed));
        let mut p4 = PoolParams::new(V4_POOL.parse().unwrap());
        p4.block_size = Some(29);
        let mut p6 = PoolParams::new(V6_POOL.parse().unwrap());
        p6.block_size = Some(125);
        store.put_pool("v4", p4);
        store.put_pool("v6", p6);
        let cfg = IpamConfig {
            strict_affinity: c.strict,
            max_blocks_per_host: c.max_blocks,
            min_reclaim_age_ms: 0,
            ..Default::default()
        };
        let mut sim = Sim {
            store: store.clone(),
            clock: Arc::new(ManualClock::new(1_000_000)),
            cfg,
            seed: c.seed,
            watch: c.watch,
            faults: c.conflict,
            nodes: Vec::new(),
            held: BTreeMap::new(),
            owner: HashMap::new(),
            next: 0,
        };
        for i in 0..NODES {
            let n = sim.start_node(i).await?;
            sim.nodes.push(n);
        }
        store.set_conflict_rate(c.conflict);
        store.set_ambiguous_rate(c.ambiguous);
        store.set_yield_max(c.yields);
        for (i, b) in c.batches.iter().enumerate() {
            sim.batch(b).await.map_err(|e| format!("batch {i}: {e}"))?;
        }
        // The finale checks liveness, so faults are turned off.
        store.set_conflict_rate(0.0);
        store.set_ambiguous_rate(0.0);
        sim.finale().await.map_err(|e| format!("finale: {e}"))
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn no_duplicates_all_or_nothing_and_release_makes_room(c in case()) {
        let r = run(&c);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
