//! Allocator behaviour against the in-memory store.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipam::memstore::MemStore;
use ipam::model::{AllocationAttrs, IpamConfig, PoolParams};
use ipam::{
    AllocRequest, Allocator, AllocatorOptions, BlockEvent, Clock, Family, IpamError, ManualClock,
    NodeInfo, Store,
};

fn pool(cidr: &str, block: u8) -> PoolParams {
    let mut p = PoolParams::new(cidr.parse().unwrap());
    p.block_size = Some(block);
    p
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        labels: Default::default(),
    }
}

fn req(handle: &str, fams: &[Family]) -> AllocRequest {
    AllocRequest {
        handle: handle.into(),
        attrs: AllocationAttrs {
            pod: Some(format!("pod-{handle}")),
            namespace: Some("default".into()),
            node: None,
        },
        families: fams.to_vec(),
        ..Default::default()
    }
}

async fn start(
    store: &Arc<MemStore>,
    name: &str,
    config: IpamConfig,
    clock: &Arc<ManualClock>,
) -> Allocator {
    let opts = AllocatorOptions {
        seed: Some(1),
        ..Default::default()
    };
    Allocator::start(
        store.clone() as Arc<dyn Store>,
        node(name),
        config,
        opts,
        clock.clone() as Arc<dyn Clock>,
    )
    .await
    .unwrap()
}

/// An allocator whose blocks come from the block watch
/// (`blocks_from_watch`), as the agent runs it: it lists no blocks itself.
fn spawn_from_watch(store: &Arc<MemStore>, name: &str, clock: &Arc<ManualClock>) -> Allocator {
    Allocator::spawn(
        store.clone() as Arc<dyn Store>,
        node(name),
        IpamConfig::default(),
        AllocatorOptions {
            seed: Some(1),
            blocks_from_watch: true,
            ..Default::default()
        },
        clock.clone() as Arc<dyn Clock>,
    )
}

fn setup(pools: &[(&str, &str, u8)]) -> (Arc<MemStore>, Arc<ManualClock>) {
    let store = Arc::new(MemStore::new(7));
    for (name, cidr, bs) in pools {
        store.put_pool(name, pool(cidr, *bs));
    }
    (store, Arc::new(ManualClock::new(1_000_000)))
}

const V4: &[Family] = &[Family::V4];

#[tokio::test]
async fn allocates_from_an_affine_block_and_is_idempotent_per_handle() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    let x = a.allocate(req("net.c1", V4)).await.unwrap();
    assert_eq!(x.len(), 1);
    assert!(!x[0].borrowed);
    assert_eq!(x[0].pool, "p4");
    let y = a.allocate(req("net.c2", V4)).await.unwrap();
    assert_eq!(x[0].block, y[0].block, "second address from the same block");
    assert_ne!(x[0].ip, y[0].ip);
    // Same handle again: same address, no write.
    let writes = store.stats().writes();
    assert_eq!(a.allocate(req("net.c1", V4)).await.unwrap(), x);
    assert_eq!(store.stats().writes(), writes);
    let blocks = store.snapshot_blocks();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].spec.affinity.as_deref(), Some("host:n1"));
    let h = a.get_handle("net.c1").await.unwrap().unwrap();
    assert_eq!(h.addresses, x);
    assert_eq!(h.attrs.pod.as_deref(), Some("pod-net.c1"));
    assert_eq!(h.attrs.node.as_deref(), Some("n1"));
    // Release is idempotent.
    assert_eq!(a.release("net.c1").await.unwrap(), vec![x[0].ip]);
    assert!(a.release("net.c1").await.unwrap().is_empty());
    assert!(a.get_handle("net.c1").await.unwrap().is_none());
}

#[tokio::test]
async fn allocate_notify_announces_the_addresses_before_the_answer() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26), ("p6", "2001:db8::/48", 122)]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    let both = &[Family::V4, Family::V6];
    let (tx, rx) = tokio::sync::oneshot::channel();
    let got = a.allocate_notify(req("net.c1", both), tx).await.unwrap();
    let mut picked = rx.await.expect("picked announced");
    picked.sort();
    let mut fin: Vec<IpAddr> = got.iter().map(|x| x.ip).collect();
    fin.sort();
    assert_eq!(picked, fin);
    assert_eq!(picked.len(), 2);
    // The handle already holds its addresses: no write, nothing announced.
    let (tx, rx) = tokio::sync::oneshot::channel();
    assert_eq!(
        a.allocate_notify(req("net.c1", both), tx).await.unwrap(),
        got
    );
    assert!(rx.await.is_err());
    // A failing request announces nothing either.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut bad = req("net.c2", V4);
    bad.requested_ips = vec!["203.0.113.9".parse().unwrap()];
    assert!(a.allocate_notify(bad, tx).await.is_err());
    assert!(rx.await.is_err());
}

#[tokio::test]
async fn dual_stack_gets_both_or_neither() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    let both = [Family::V4, Family::V6];
    let e = a.allocate(req("net.c1", &both)).await.unwrap_err();
    assert!(
        matches!(
            e,
            IpamError::NoPool {
                family: Family::V6,
                ..
            }
        ),
        "{e}"
    );
    assert!(store.snapshot_blocks().iter().all(|b| b.spec.is_empty()));
    // A large IPv6 pool (2^74 possible /122 blocks).
    store.put_pool("p6", pool("2001:db8::/48", 122));
    // A re-list just proved useless, so the allocator does not re-list again
    // for a second (the agent's pool watch calls set_pools / refresh).
    let lists = store.stats().lists;
    let e = a.allocate(req("net.c1", &both)).await.unwrap_err();
    assert!(
        matches!(
            e,
            IpamError::NoPool {
                family: Family::V6,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(store.stats().lists, lists, "no re-list storm");
    a.refresh().await.unwrap();
    let x = a.allocate(req("net.c1", &both)).await.unwrap();
    let fams: Vec<Family> = x.iter().map(|a| Family::of(a.ip)).collect();
    assert_eq!(fams, vec![Family::V4, Family::V6]);
    // Empty families = every family with an eligible pool.
    let y = a.allocate(req("net.c2", &[])).await.unwrap();
    assert_eq!(y.len(), 2);
    // A specific address far into the large pool.
    let far: IpAddr = "2001:db8:0:ffff::5".parse().unwrap();
    let mut r = req("net.c3", &[]);
    r.requested_ips = vec![far];
    let z = a.allocate(r).await.unwrap();
    assert_eq!(
        (z[0].ip, z[0].block.to_string()),
        (far, "2001:db8:0:ffff::/122".into())
    );
}

#[tokio::test]
async fn dual_stack_rolls_back_when_second_family_is_exhausted() {
    // One /30 v6 block: 4 addresses.
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26), ("p6", "2001:db8::/126", 126)]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    let both = [Family::V4, Family::V6];
    for i in 0..4 {
        a.allocate(req(&format!("net.c{i}"), &both)).await.unwrap();
    }
    let e = a.allocate(req("net.c9", &both)).await.unwrap_err();
    assert!(
        matches!(
            e,
            IpamError::Exhausted {
                family: Family::V6,
                ..
            }
        ),
        "{e}"
    );
    let v4_allocated: usize = store
        .snapshot_blocks()
        .iter()
        .filter(|b| b.spec.cidr.family() == Family::V4)
        .map(|b| b.spec.allocations.len())
        .sum();
    assert_eq!(
        v4_allocated, 4,
        "no v4 address left behind by the failed request"
    );
}

#[tokio::test]
async fn concurrent_requests_share_writes() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    store.set_latency(Duration::from_millis(2));
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    let before = store.stats().writes();
    let reqs = (0..128).map(|i| {
        let a = a.clone();
        tokio::spawn(async move { a.allocate(req(&format!("net.c{i}"), V4)).await })
    });
    let mut ips = HashSet::new();
    for r in futures::future::join_all(reqs).await {
        for x in r.unwrap().unwrap() {
            assert!(ips.insert(x.ip), "{} handed out twice", x.ip);
        }
    }
    assert_eq!(ips.len(), 128);
    let writes = store.stats().writes() - before;
    // 128 addresses need at least two /26 blocks; coalescing keeps the
    // writes far below one per allocation.
    assert!(writes <= 16, "{writes} writes for 128 allocations");
    assert!(a.metrics().rounds < 128);
}

#[tokio::test]
async fn borrows_when_it_may_not_claim_unless_strict() {
    // /28 pool with /30 blocks: 4 blocks of 4 addresses.
    let (store, clock) = setup(&[("p4", "198.19.0.0/28", 30)]);
    let cfg = IpamConfig {
        max_blocks_per_host: 1,
        ..Default::default()
    };
    let a = start(&store, "n1", cfg.clone(), &clock).await;
    let b = start(&store, "n2", cfg.clone(), &clock).await;
    let bx = b.allocate(req("net.b0", V4)).await.unwrap();
    for i in 0..4 {
        let x = a.allocate(req(&format!("net.a{i}"), V4)).await.unwrap();
        assert!(!x[0].borrowed);
    }
    let x = a.allocate(req("net.a4", V4)).await.unwrap();
    assert!(x[0].borrowed, "fifth address is borrowed");
    assert_eq!(x[0].block, bx[0].block);
    // Strict affinity: no borrowing.
    a.set_config(IpamConfig {
        strict_affinity: true,
        ..cfg
    })
    .await
    .unwrap();
    let e = a.allocate(req("net.a5", V4)).await.unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    // The owner sees the borrowed address and does not hand it out.
    let mut seen: HashSet<IpAddr> = [x[0].ip, bx[0].ip].into();
    for i in 1..3 {
        let y = b.allocate(req(&format!("net.b{i}"), V4)).await.unwrap();
        assert!(seen.insert(y[0].ip));
    }
}

#[tokio::test]
async fn specific_addresses() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    let ip: IpAddr = "198.19.7.9".parse().unwrap();
    let mut r = req("net.c1", &[]);
    r.requested_ips = vec![ip];
    let x = a.allocate(r.clone()).await.unwrap();
    assert_eq!(x[0].ip, ip);
    assert_eq!(x[0].block.to_string(), "198.19.7.0/26");
    // Idempotent for the same handle, in use for another.
    assert_eq!(a.allocate(r.clone()).await.unwrap(), x);
    r.handle = "net.c2".into();
    let e = a.allocate(r.clone()).await.unwrap_err();
    assert!(matches!(e, IpamError::InUse { .. }), "{e}");
    r.requested_ips = vec!["10.0.0.1".parse().unwrap()];
    let e = a.allocate(r).await.unwrap_err();
    assert!(matches!(e, IpamError::NoPool { .. }), "{e}");
}

#[tokio::test]
async fn releases_empty_blocks_that_are_not_the_last() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/24", 30)]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    for i in 0..5 {
        a.allocate(req(&format!("net.c{i}"), V4)).await.unwrap();
    }
    assert_eq!(store.snapshot_blocks().len(), 2);
    // Free the full first block: the second has room, so the first goes.
    for i in 0..4 {
        a.release(&format!("net.c{i}")).await.unwrap();
    }
    assert_eq!(store.snapshot_blocks().len(), 1);
    // The last block is kept even when empty.
    a.release("net.c4").await.unwrap();
    let blocks = store.snapshot_blocks();
    assert_eq!(blocks.len(), 1);
    assert!(blocks[0].spec.is_empty());
}

#[tokio::test]
async fn reclaims_other_nodes_empty_blocks_only_after_min_age() {
    // /29 with /30 blocks: two blocks.
    let (store, clock) = setup(&[("p4", "198.19.0.0/29", 30)]);
    let cfg = IpamConfig {
        strict_affinity: true,
        min_reclaim_age_ms: 60_000,
        ..Default::default()
    };
    let n1 = start(&store, "n1", cfg.clone(), &clock).await;
    let n2 = start(&store, "n2", cfg.clone(), &clock).await;
    n1.allocate(req("net.a", V4)).await.unwrap();
    n2.allocate(req("net.b", V4)).await.unwrap();
    n2.release("net.b").await.unwrap();
    for i in 0..3 {
        n1.allocate(req(&format!("net.a{i}"), V4)).await.unwrap();
    }
    // n1's block is full; n2's is empty but young.
    let e = n1.allocate(req("net.x", V4)).await.unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    clock.advance(61_000);
    let x = n1.allocate(req("net.x", V4)).await.unwrap();
    assert!(!x[0].borrowed, "reclaimed block is now affine to n1");
    let owners: HashSet<Option<String>> = store
        .snapshot_blocks()
        .iter()
        .map(|b| b.spec.affinity.clone())
        .collect();
    assert_eq!(owners, HashSet::from([Some("host:n1".to_string())]));
}

#[tokio::test]
async fn cooldown_delays_reuse() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/30", 30)]);
    let cfg = IpamConfig {
        reuse_cooldown_ms: 30_000,
        strict_affinity: true,
        ..Default::default()
    };
    let a = start(&store, "n1", cfg, &clock).await;
    let mut ips = Vec::new();
    for i in 0..4 {
        ips.push(a.allocate(req(&format!("net.c{i}"), V4)).await.unwrap()[0].ip);
    }
    a.release("net.c1").await.unwrap();
    a.release("net.c3").await.unwrap();
    let e = a.allocate(req("net.d", V4)).await.unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    clock.advance(30_000);
    // The longest-free address (released first) comes back first.
    assert_eq!(a.allocate(req("net.d", V4)).await.unwrap()[0].ip, ips[1]);
    assert_eq!(a.allocate(req("net.e", V4)).await.unwrap()[0].ip, ips[3]);
}

#[tokio::test]
async fn store_down_gives_unavailable_not_a_hang() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    store.set_unavailable(true);
    let r = tokio::time::timeout(Duration::from_secs(10), a.allocate(req("net.c1", V4))).await;
    let e = r.expect("bounded").unwrap_err();
    assert!(matches!(e, IpamError::Unavailable { .. }), "{e}");
    assert!(!a.status().await.unwrap().ready);
    store.set_unavailable(false);
    let x = a.allocate(req("net.c1", V4)).await.unwrap();
    assert_eq!(x.len(), 1);
    assert!(a.status().await.unwrap().ready);
}

#[tokio::test]
async fn ambiguous_writes_do_not_duplicate_or_lose_addresses() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    store.set_ambiguous_rate(0.3);
    store.set_conflict_rate(0.2);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    let reqs = (0..100).map(|i| {
        let a = a.clone();
        tokio::spawn(async move { (i, a.allocate(req(&format!("net.c{i}"), V4)).await) })
    });
    let mut acked = Vec::new();
    for r in futures::future::join_all(reqs).await {
        let (i, r) = r.unwrap();
        match r {
            Ok(x) => acked.push((format!("net.c{i}"), x[0].ip)),
            Err(IpamError::Aborted { .. } | IpamError::Unavailable { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // Every acknowledged address is recorded under its handle; no address
    // is in two allocations.
    let mut held = std::collections::HashMap::new();
    for b in store.snapshot_blocks() {
        for al in &b.spec.allocations {
            let ip = b.spec.ip_of(al.ordinal).unwrap();
            assert!(held.insert(ip, al.handle.clone()).is_none());
        }
    }
    for (h, ip) in &acked {
        assert_eq!(held.get(ip), Some(h), "{ip} acknowledged to {h}");
    }
}

#[tokio::test]
async fn restart_rebuilds_handles_from_the_store() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    let x = a.allocate(req("net.c1", V4)).await.unwrap();
    drop(a);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    assert_eq!(a.get_handle("net.c1").await.unwrap().unwrap().addresses, x);
    // Garbage collection keeps valid handles only.
    a.allocate(req("net.c2", V4)).await.unwrap();
    a.allocate(req("other.c3", V4)).await.unwrap();
    let gone = a
        .garbage_collect("net", HashSet::from(["net.c2".to_string()]))
        .await
        .unwrap();
    assert_eq!(gone, vec!["net.c1".to_string()]);
    assert!(a.get_handle("other.c3").await.unwrap().is_some());
}

#[tokio::test]
async fn rejects_bad_requests() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    for r in [
        req("", V4),
        req(&"x".repeat(600), V4),
        AllocRequest {
            requested_ips: vec!["198.19.0.1".parse().unwrap(), "198.19.0.2".parse().unwrap()],
            ..req("net.c", &[])
        },
        AllocRequest {
            requested_ips: vec!["2001:db8::1".parse().unwrap()],
            ..req("net.c", V4)
        },
    ] {
        let e = a.allocate(r).await.unwrap_err();
        assert!(matches!(e, IpamError::InvalidArgument { .. }), "{e}");
    }
    let mut r = req("net.c", V4);
    r.pool_hints = vec!["nope".into()];
    assert!(matches!(
        a.allocate(r).await.unwrap_err(),
        IpamError::NoPool { .. }
    ));
}

/// An allocator spawned (not started) while the store is down.
fn spawn_while_down(store: &Arc<MemStore>, clock: &Arc<ManualClock>) -> Allocator {
    store.set_unavailable(true);
    Allocator::spawn(
        store.clone() as Arc<dyn Store>,
        node("n1"),
        IpamConfig::default(),
        AllocatorOptions::default(),
        clock.clone() as Arc<dyn Clock>,
    )
}

#[tokio::test]
async fn spawn_serves_unavailable_until_the_store_answers() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a = spawn_while_down(&store, &clock);
    let s = a.status().await.unwrap();
    assert!(!s.ready);
    let e = a.allocate(req("net.c1", V4)).await.unwrap_err();
    assert!(matches!(e, IpamError::Unavailable { .. }), "{e}");
    assert!(!a.status().await.unwrap().message.is_empty());
    store.set_unavailable(false);
    assert_eq!(a.allocate(req("net.c1", V4)).await.unwrap().len(), 1);
    assert!(a.status().await.unwrap().ready);
}

#[tokio::test]
async fn block_watch_keeps_other_nodes_view_fresh() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let n1 = start(&store, "n1", IpamConfig::default(), &clock).await;
    let n2 = start(&store, "n2", IpamConfig::default(), &clock).await;
    let watch = n2.follow_block_watch(store.clone() as Arc<dyn Store>);
    for i in 0..3 {
        n1.allocate(req(&format!("net.c{i}"), V4)).await.unwrap();
    }
    // n2 never touched n1's block; only the watch can tell it about it.
    let mut seen = 0;
    for _ in 0..100 {
        seen = n2.status().await.unwrap().pools[0].allocated;
        if seen == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 3);
    n1.release("net.c0").await.unwrap();
    let mut seen = 0;
    for _ in 0..100 {
        seen = n2.status().await.unwrap().pools[0].allocated;
        if seen == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 2);
    drop(n2);
    tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("watch task ends with the allocator")
        .unwrap();
}

#[tokio::test]
async fn set_pools_and_labels_change_eligibility() {
    let (store, clock) = setup(&[]);
    let a = start(&store, "n1", IpamConfig::default(), &clock).await;
    let mut p = pool("198.19.0.0/16", 26);
    p.node_selector = "zone=a".parse().unwrap();
    a.set_pools(vec![ipam::Versioned {
        name: "zoned".into(),
        resource_version: "1".into(),
        spec: p,
    }])
    .await
    .unwrap();
    // Not in the store, so the refresh before failing drops it again: the
    // agent's pool watch is what keeps set_pools current. Put it there too.
    let e = a.allocate(req("net.c1", V4)).await.unwrap_err();
    assert!(matches!(e, IpamError::NoPool { .. }), "{e}");
    let mut p = pool("198.19.0.0/16", 26);
    p.node_selector = "zone=a".parse().unwrap();
    store.put_pool("zoned", p);
    a.refresh().await.unwrap();
    let e = a.allocate(req("net.c1", V4)).await.unwrap_err();
    assert!(
        matches!(e, IpamError::NoPool { .. }),
        "selector does not match: {e}"
    );
    a.set_node_labels([("zone".to_string(), "a".to_string())].into())
        .await
        .unwrap();
    assert_eq!(
        a.allocate(req("net.c1", V4)).await.unwrap()[0].pool,
        "zoned"
    );
}

/// The in-memory analogue of the API-server acceptance test: 16
/// nodes allocate 1,000 addresses each, concurrently, from one /16 pool with
/// /26 blocks; every address is distinct and recorded once under its handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_nodes_allocate_a_thousand_each() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let mut nodes = Vec::new();
    for n in 0..16 {
        nodes.push(start(&store, &format!("n{n}"), IpamConfig::default(), &clock).await);
    }
    let mut tasks = Vec::new();
    for (n, a) in nodes.iter().enumerate() {
        for i in 0..1000 {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let h = format!("net.n{n}-{i}");
                let r = a.allocate(req(&h, V4)).await;
                (h, r)
            }));
        }
    }
    let mut acked = std::collections::HashMap::new();
    for t in futures::future::join_all(tasks).await {
        let (h, r) = t.unwrap();
        let ip = r.unwrap_or_else(|e| panic!("{h}: {e}"))[0].ip;
        assert!(acked.insert(ip, h).is_none(), "{ip} handed out twice");
    }
    assert_eq!(acked.len(), 16_000);
    let mut recorded = 0;
    for b in store.snapshot_blocks() {
        for al in &b.spec.allocations {
            let ip = b.spec.ip_of(al.ordinal).unwrap();
            assert_eq!(acked.get(&ip), Some(&al.handle), "{ip}");
            recorded += 1;
        }
    }
    assert_eq!(recorded, 16_000);
    let writes: u64 = nodes.iter().map(|a| a.metrics().writes).sum();
    eprintln!("16 nodes x 1,000 allocations: {writes} store writes");
    assert!(
        writes < 16_000,
        "group commit: {writes} writes for 16,000 allocations"
    );
}

/// A watch relist (Resync) can be delivered after writes this allocator made
/// since the list was taken — found by the 16-process test against the API
/// server, where the watch's initial list raced the first allocations. The
/// stale snapshot must not roll the cache back: no conflict, no lost block.
#[tokio::test]
async fn a_stale_resync_does_not_roll_back_the_allocators_own_writes() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let n1 = start(&store, "n1", IpamConfig::default(), &clock).await;
    // The list the watch would have taken before n1 claimed anything…
    let stale_empty = store.list_blocks().await.unwrap();
    n1.allocate(req("net.c0", V4)).await.unwrap();
    // …and one taken after the first allocation.
    let stale_one = store.list_blocks().await.unwrap();
    n1.allocate(req("net.c1", V4)).await.unwrap();
    // Both arrive late, oldest last.
    n1.apply_block_event(BlockEvent::Resync(stale_one))
        .await
        .unwrap();
    n1.apply_block_event(BlockEvent::Resync(stale_empty))
        .await
        .unwrap();
    let before = n1.metrics();
    let got = n1.allocate(req("net.c2", V4)).await.unwrap();
    let after = n1.metrics();
    assert_eq!(
        after.conflicts, before.conflicts,
        "a write on a rolled-back cache conflicts"
    );
    assert_eq!(got.len(), 1);
    // The three addresses are distinct and all in the one block n1 claimed.
    let blocks = store.list_blocks().await.unwrap();
    assert_eq!(
        blocks.len(),
        1,
        "no second block claimed: the first was not forgotten"
    );
    assert_eq!(blocks[0].spec.allocations.len(), 3);
    assert_eq!(n1.status().await.unwrap().pools[0].allocated, 3);
}

#[tokio::test]
async fn blocks_from_watch_lists_no_blocks_and_serves_once_the_watch_listed() {
    use futures::StreamExt as _;
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    // Another node's addresses: n2 can know of them only from the watch.
    let n1 = start(&store, "n1", IpamConfig::default(), &clock).await;
    let mut theirs = HashSet::new();
    for i in 0..3 {
        let got = n1.allocate(req(&format!("net.c{i}"), V4)).await.unwrap();
        theirs.extend(got.into_iter().map(|a| a.ip));
    }
    let block_lists = store.stats().block_lists;
    let n2 = spawn_from_watch(&store, "n2", &clock);
    let e = n2.allocate(req("net.x", V4)).await.unwrap_err();
    assert!(matches!(e, IpamError::Unavailable { .. }), "{e}");
    let st = n2.status().await.unwrap();
    assert!(!st.ready);
    assert!(st.message.contains("block watch"), "{}", st.message);

    // The watch's first list seeds the cache.
    let mut watch = (store.clone() as Arc<dyn Store>).watch_blocks();
    let first = watch.next().await.expect("an event").expect("no error");
    assert!(matches!(first, BlockEvent::Resync(_)));
    n2.apply_block_event(first).await.unwrap();
    for _ in 0..200 {
        if n2.status().await.unwrap().ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = n2.status().await.unwrap();
    assert!(st.ready, "{}", st.message);
    assert_eq!(
        st.pools[0].allocated, 3,
        "n1's addresses came with the watch's list"
    );
    let mine = n2.allocate(req("net.x", V4)).await.unwrap();
    assert!(
        mine.iter().all(|a| !theirs.contains(&a.ip)),
        "{mine:?} vs {theirs:?}"
    );
    assert_eq!(
        store.stats().block_lists,
        block_lists,
        "n2 listed blocks instead of taking the watch's list"
    );
}

#[tokio::test]
async fn an_idle_allocator_polled_for_its_status_still_retries_its_listing() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a = spawn_while_down(&store, &clock);
    assert!(!a.status().await.unwrap().ready);
    store.set_unavailable(false);
    // A status poll every 10 ms (as a readiness wait does) must not keep
    // postponing the once-a-second retry.
    let mut ready = false;
    for _ in 0..400 {
        if a.status().await.unwrap().ready {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "never retried the listing while polled");
}

/// The leak GC's scan: the cached blocks trimmed to the allocations asked
/// for (another node's too, once the cache has them), without free lists;
/// nothing while the cache cannot be trusted (last store call failed).
#[tokio::test]
async fn blocks_made_by_trims_the_cache_and_refuses_an_unready_one() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a1 = start(&store, "n1", IpamConfig::default(), &clock).await;
    let a2 = start(&store, "n2", IpamConfig::default(), &clock).await;
    a1.allocate(req("net.a", V4)).await.unwrap();
    a1.allocate(req("net.b", V4)).await.unwrap();
    let c = a2.allocate(req("net.c", V4)).await.unwrap();
    a1.refresh().await.unwrap();
    let of = |node: &'static str| move |n: Option<&str>| n == Some(node);
    let theirs = a1.blocks_made_by(of("n2")).await.unwrap().expect("synced");
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    let handles: Vec<&str> = theirs[0]
        .spec
        .allocations
        .iter()
        .map(|x| x.handle.as_str())
        .collect();
    assert_eq!(handles, ["net.c"]);
    assert!(theirs[0].spec.free.is_empty());
    assert_eq!(
        theirs[0].spec.ip_of(theirs[0].spec.allocations[0].ordinal),
        Some(c[0].ip)
    );
    let mine = a1.blocks_made_by(of("n1")).await.unwrap().expect("synced");
    let mut handles: Vec<&str> = mine
        .iter()
        .flat_map(|b| b.spec.allocations.iter().map(|x| x.handle.as_str()))
        .collect();
    handles.sort();
    assert_eq!(handles, ["net.a", "net.b"]);
    assert!(
        a1.blocks_made_by(|_| false)
            .await
            .unwrap()
            .expect("synced")
            .is_empty()
    );
    // A failed store call makes the cache untrustworthy until it succeeds.
    store.set_unavailable(true);
    let _ = a1.allocate(req("net.d", V4)).await;
    assert!(a1.blocks_made_by(of("n1")).await.unwrap().is_none());
    store.set_unavailable(false);
    a1.refresh().await.unwrap();
    assert!(a1.blocks_made_by(of("n1")).await.unwrap().is_some());
}

/// The handle index holds this node's allocations (and every one in its own
/// blocks), not the cluster's: another node's handle is unknown here, and a
/// release of it by this node touches nothing of that node's.
#[tokio::test]
async fn another_nodes_handles_are_not_indexed_here() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let a1 = start(&store, "n1", IpamConfig::default(), &clock).await;
    let a2 = start(&store, "n2", IpamConfig::default(), &clock).await;
    a1.allocate(req("net.a", V4)).await.unwrap();
    let c = a2.allocate(req("net.c", V4)).await.unwrap();
    a1.refresh().await.unwrap();
    assert!(a1.get_handle("net.a").await.unwrap().is_some());
    assert!(a1.get_handle("net.c").await.unwrap().is_none());
    assert!(a1.release("net.c").await.unwrap().is_empty());
    let held = a2
        .get_handle("net.c")
        .await
        .unwrap()
        .expect("n2 still holds it");
    assert_eq!(held.addresses[0].ip, c[0].ip);
    // Still there in the store after n1's futile release, and n2 frees it.
    assert_eq!(a2.release("net.c").await.unwrap(), vec![c[0].ip]);
}

/// Blocks seeded from the watch before the pools are known: what is
/// missing is the pools, and the retry lists only them, not every block of
/// the cluster again.
#[tokio::test]
async fn a_seed_before_the_pools_lists_only_the_pools() {
    use futures::StreamExt as _;
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let n1 = start(&store, "n1", IpamConfig::default(), &clock).await;
    n1.allocate(req("net.c0", V4)).await.unwrap();
    let mut watch = (store.clone() as Arc<dyn Store>).watch_blocks();
    let first = watch.next().await.expect("an event").expect("no error");
    assert!(matches!(first, BlockEvent::Resync(_)));
    let block_lists = store.stats().block_lists;
    // The pools cannot be listed yet.
    store.set_unavailable(true);
    let n2 = spawn_from_watch(&store, "n2", &clock);
    n2.apply_block_event(first).await.unwrap();
    assert!(!n2.status().await.unwrap().ready);
    store.set_unavailable(false);
    // The idle allocator retries its listing every second.
    let mut ready = false;
    for _ in 0..500 {
        if n2.status().await.unwrap().ready {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "{}", n2.status().await.unwrap().message);
    assert_eq!(n2.status().await.unwrap().pools[0].allocated, 1);
    assert_eq!(
        store.stats().block_lists,
        block_lists,
        "n2 listed every block for want of the pools"
    );
}

/// An allocator fed from the block watch, seeded with what the store holds
/// now (the watch's first list) and then told nothing more: its view of
/// other nodes' blocks goes stale as they write.
async fn seeded_from_watch(
    store: &Arc<MemStore>,
    name: &str,
    clock: &Arc<ManualClock>,
) -> Allocator {
    let a = spawn_from_watch(store, name, clock);
    a.apply_block_event(BlockEvent::Resync(store.snapshot_blocks()))
        .await
        .unwrap();
    a.refresh().await.unwrap();
    assert!(a.status().await.unwrap().ready);
    a
}

/// n2's allocations as the store holds them: (ordinal, handle, sequence).
fn allocations_of(store: &MemStore, node: &str) -> Vec<(u32, String, u64)> {
    store
        .snapshot_blocks()
        .iter()
        .flat_map(|b| b.spec.allocations.iter())
        .filter(|a| a.attrs.node.as_deref() == Some(node))
        .map(|a| (a.ordinal, a.handle.clone(), a.sequence))
        .collect()
}

/// The cache keeps another node's block only summarised. Borrowing from
/// it reads it whole first and writes the whole block: the owner's
/// allocations stay as they were, the free list stays consistent.
#[tokio::test]
async fn borrowing_from_a_summarised_block_writes_the_whole_block() {
    // One /28 pool of one /28 block: n1 cannot claim, only borrow.
    let (store, clock) = setup(&[("p4", "198.19.0.0/28", 28)]);
    let n2 = start(&store, "n2", IpamConfig::default(), &clock).await;
    for i in 0..3 {
        n2.allocate(req(&format!("net.b{i}"), V4)).await.unwrap();
    }
    let theirs = allocations_of(&store, "n2");
    let n1 = seeded_from_watch(&store, "n1", &clock).await;
    let (gets, lists) = (store.stats().gets, store.stats().block_lists);
    let got = n1.allocate(req("net.a0", V4)).await.unwrap();
    assert!(got[0].borrowed, "{got:?}");
    assert_eq!(
        store.stats().gets,
        gets + 1,
        "the summarised block was read whole before the write"
    );
    assert_eq!(store.stats().block_lists, lists, "no re-list");
    assert_eq!(allocations_of(&store, "n2"), theirs, "the owner's kept");
    let blocks = store.snapshot_blocks();
    assert_eq!(blocks.len(), 1);
    blocks[0]
        .spec
        .validate()
        .expect("a whole, consistent block");
    assert_eq!(blocks[0].spec.allocations.len(), 4);
    assert_eq!(blocks[0].spec.usable_count(0, 0), 12);
    // n1 now holds the block whole (its allocation is in it): the next
    // borrow needs no read, and its handle is known.
    let gets = store.stats().gets;
    let again = n1.allocate(req("net.a1", V4)).await.unwrap();
    assert!(again[0].borrowed);
    assert_eq!(store.stats().gets, gets);
    assert_eq!(
        n1.get_handle("net.a0").await.unwrap().unwrap().addresses,
        got
    );
    // Releasing both leaves the owner's allocations alone.
    assert_eq!(n1.release("net.a0").await.unwrap(), vec![got[0].ip]);
    assert_eq!(n1.release("net.a1").await.unwrap(), vec![again[0].ip]);
    assert_eq!(allocations_of(&store, "n2"), theirs);
    assert_eq!(n1.status().await.unwrap().pools[0].allocated, 3);
}

/// A summary that went stale (the owner allocated since, and no watch
/// event came) is not written from: the block is read from the store, and
/// the borrow lands on the first try, next to the owner's new addresses.
/// A summary that says there is room when there is none ends in the
/// ordinary answer, not in a lost address.
#[tokio::test]
async fn a_stale_summary_is_read_again_before_a_borrow() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/28", 28)]);
    let n2 = start(&store, "n2", IpamConfig::default(), &clock).await;
    for i in 0..4 {
        n2.allocate(req(&format!("net.b{i}"), V4)).await.unwrap();
    }
    let n1 = seeded_from_watch(&store, "n1", &clock).await;
    // n1 hears nothing of these.
    for i in 4..8 {
        n2.allocate(req(&format!("net.b{i}"), V4)).await.unwrap();
    }
    let theirs = allocations_of(&store, "n2");
    let conflicts = store.stats().conflicts;
    let got = n1.allocate(req("net.a0", V4)).await.unwrap();
    assert_eq!(
        store.stats().conflicts,
        conflicts,
        "written from the store's block"
    );
    assert_eq!(allocations_of(&store, "n2"), theirs);
    let ord = got[0].ip.to_string();
    assert!(
        !theirs
            .iter()
            .any(|(o, _, _)| format!("198.19.0.{o}") == ord),
        "{ord} is one of n2's"
    );
    // n2 fills the block; n1's summary (n1 holds it whole now, so drop
    // that: a fresh n3) still says there is room.
    let n3 = seeded_from_watch(&store, "n3", &clock).await;
    for i in 8..15 {
        n2.allocate(req(&format!("net.b{i}"), V4)).await.unwrap();
    }
    assert_eq!(store.snapshot_blocks()[0].spec.free.len(), 0);
    let before = store.snapshot_blocks();
    let e = n3.allocate(req("net.c0", V4)).await.unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    assert_eq!(store.snapshot_blocks(), before, "nothing written");
}

/// The leak GC's scan on a cache that keeps other nodes' blocks
/// summarised: the blocks holding allocations of a node that is gone are
/// read from the store, and releasing them reads the block whole before
/// the write (a summarised block must not pass for one that no longer
/// holds the target).
#[tokio::test]
async fn the_leak_gc_reads_and_releases_a_gone_nodes_allocations() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/16", 26)]);
    let gone = start(&store, "gone", IpamConfig::default(), &clock).await;
    let n2 = start(&store, "n2", IpamConfig::default(), &clock).await;
    for i in 0..3 {
        gone.allocate(req(&format!("net.g{i}"), V4)).await.unwrap();
    }
    n2.allocate(req("net.b0", V4)).await.unwrap();
    let n1 = seeded_from_watch(&store, "n1", &clock).await;
    n1.allocate(req("net.a0", V4)).await.unwrap();
    let gets = store.stats().gets;
    let blocks = n1
        .blocks_made_by(|n| n.is_some_and(|n| n == "n1" || n == "gone"))
        .await
        .unwrap()
        .expect("synced");
    assert_eq!(
        store.stats().gets,
        gets + 1,
        "only the gone node's block read"
    );
    let mut handles: Vec<&str> = blocks
        .iter()
        .flat_map(|b| b.spec.allocations.iter().map(|a| a.handle.as_str()))
        .collect();
    handles.sort();
    assert_eq!(handles, ["net.a0", "net.g0", "net.g1", "net.g2"]);
    let target = blocks
        .iter()
        .flat_map(|b| {
            b.spec.allocations.iter().map(|a| ipam::ReleaseTarget {
                block: b.name.clone(),
                ordinal: a.ordinal,
                handle: a.handle.clone(),
                sequence: a.sequence,
            })
        })
        .find(|t| t.handle == "net.g1")
        .expect("target");
    let released = n1.release_targets(vec![target.clone()]).await.unwrap();
    assert_eq!(released, vec![target]);
    let left: Vec<String> = allocations_of(&store, "gone")
        .into_iter()
        .map(|(_, h, _)| h)
        .collect();
    assert_eq!(left, ["net.g0", "net.g2"]);
    assert_eq!(allocations_of(&store, "n2").len(), 1);
    let blocks = store.snapshot_blocks();
    for b in &blocks {
        b.spec.validate().expect("consistent");
    }
}

/// A dual-stack borrow from two summarised blocks (one per family): the
/// op is planned one family at a time, so the first block read must stay
/// whole while the second is read (unpinning it went round for ever).
#[tokio::test]
async fn a_dual_stack_borrow_reads_both_summarised_blocks() {
    let (store, clock) = setup(&[("p4", "198.19.0.0/28", 28), ("p6", "2001:db8::/124", 124)]);
    let both = [Family::V4, Family::V6];
    let n2 = start(&store, "n2", IpamConfig::default(), &clock).await;
    n2.allocate(req("net.b0", &both)).await.unwrap();
    let n1 = seeded_from_watch(&store, "n1", &clock).await;
    let gets = store.stats().gets;
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        n1.allocate(req("net.a0", &both)),
    )
    .await
    .expect("the borrow finished")
    .unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|a| a.borrowed), "{got:?}");
    assert_eq!(store.stats().gets, gets + 2, "each block read once");
    for b in store.snapshot_blocks() {
        b.spec.validate().expect("consistent");
        assert_eq!(b.spec.allocations.len(), 2, "{}", b.name);
    }
}
