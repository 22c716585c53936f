//! Pre-reserved addresses (`ipam::reserve`) against the in-memory store:
//! take, refill, move, release, restart recovery, and races.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipam::memstore::MemStore;
use ipam::model::{AllocationAttrs, IpamConfig, PoolParams};
use ipam::reserve::{InUse, Reserve, ReserveOptions, is_reserve_handle};
use ipam::{Allocator, AllocatorOptions, Clock, Family, IpamError, NodeInfo, Store, SystemClock};

fn pool(cidr: &str, block: u8) -> PoolParams {
    let mut p = PoolParams::new(cidr.parse().expect("cidr"));
    p.block_size = Some(block);
    p
}

fn dual_stack() -> Arc<MemStore> {
    let store = Arc::new(MemStore::new(3));
    store.put_pool("p4", pool("198.19.0.0/16", 26));
    store.put_pool("p6", pool("2001:db8::/48", 122));
    store
}

async fn allocator(store: &Arc<MemStore>) -> Allocator {
    Allocator::start(
        store.clone() as Arc<dyn Store>,
        NodeInfo {
            name: "n1".into(),
            labels: Default::default(),
        },
        IpamConfig::default(),
        AllocatorOptions {
            seed: Some(1),
            ..Default::default()
        },
        Arc::new(SystemClock) as Arc<dyn Clock>,
    )
    .await
    .expect("allocator")
}

fn attrs(pod: &str) -> AllocationAttrs {
    AllocationAttrs {
        pod: Some(pod.into()),
        namespace: Some("default".into()),
        node: None,
    }
}

fn opts(size: usize) -> ReserveOptions {
    ReserveOptions {
        size,
        low_water: size.div_ceil(2),
        retry: Duration::from_millis(20),
    }
}

/// Every allocation in the store: address → (handle, pod).
fn allocations(store: &MemStore) -> HashMap<IpAddr, (String, Option<String>)> {
    let mut out = HashMap::new();
    for b in store.snapshot_blocks() {
        for a in &b.spec.allocations {
            let ip = b.spec.ip_of(a.ordinal).expect("ordinal in block");
            let prev = out.insert(ip, (a.handle.clone(), a.attrs.pod.clone()));
            assert!(prev.is_none(), "{ip} recorded twice");
        }
    }
    out
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn ips(a: &[ipam::Assigned]) -> Vec<IpAddr> {
    a.iter().map(|x| x.ip).collect()
}

#[tokio::test]
async fn take_answers_without_a_write_and_the_move_records_the_pod() {
    let store = dual_stack();
    let alloc = allocator(&store).await;
    let r = Reserve::new(alloc.clone(), opts(4));
    let _task = r.start(Vec::new());
    until("the first refill", || r.metrics().ready == 4).await;
    // Four units, two families: group commit wrote each family's block
    // (created) once, not once per unit.
    let units: HashSet<String> = allocations(&store)
        .values()
        .map(|(h, _)| h.clone())
        .collect();
    assert_eq!(units.len(), 4, "{units:?}");
    assert!(units.iter().all(|h| h.starts_with("margay-reserve.n1.")));
    assert!(
        store.stats().writes() <= 2,
        "refill took {} writes",
        store.stats().writes()
    );

    // A take answers from memory: no store call on its path.
    let writes = store.stats().writes();
    let got = r
        .take("net.p1", &attrs("p1"), &[], &[])
        .expect("a unit fits");
    assert_eq!(store.stats().writes(), writes, "take must not write");
    assert_eq!(got.len(), 2, "one address per family: {got:?}");
    assert_eq!(r.holds("net.p1", &ips(&got)), Some(true));
    // The same handle again: the same unit (a retried Allocate).
    assert_eq!(
        r.take("net.p1", &attrs("p1"), &[], &[]).map(|a| ips(&a)),
        Some(ips(&got))
    );
    assert!(r.holds("net.p1", &[got[0].ip]) == Some(false));

    until("the move", || r.metrics().moves == 1).await;
    let all = allocations(&store);
    for a in &got {
        assert_eq!(
            all.get(&a.ip),
            Some(&("net.p1".to_string(), Some("p1".to_string()))),
            "{} must be recorded for the pod",
            a.ip
        );
    }
    assert_eq!(
        r.holds("net.p1", &ips(&got)),
        None,
        "moved: no longer the reserve's"
    );
    let h = alloc
        .get_handle("net.p1")
        .await
        .expect("get")
        .expect("held");
    assert_eq!(ips(&h.addresses), ips(&got));

    // Below the low-water mark, a refill tops the reserve up again.
    for p in ["net.p2", "net.p3"] {
        assert!(r.take(p, &attrs(p), &[], &[]).is_some());
    }
    until("the refill", || r.metrics().ready == 4).await;
    until("the moves", || r.metrics().moves_pending == 0).await;
    assert_eq!(r.metrics().refilled, 4 + 3);
    let m = r.metrics();
    assert_eq!((m.takes, m.moves, m.move_failures), (3, 3, 0));
}

#[tokio::test]
async fn requests_the_reserve_cannot_answer_fall_back() {
    let store = dual_stack();
    let alloc = allocator(&store).await;
    let r = Reserve::new(alloc, opts(2));
    let _task = r.start(Vec::new());
    until("the first refill", || r.metrics().ready == 2).await;
    assert!(r.take("net.a", &attrs("a"), &[Family::V4], &[]).is_none());
    assert!(
        r.take("net.b", &attrs("b"), &[], &["p4".into()]).is_none(),
        "a v6 address is not in pool p4"
    );
    assert!(
        r.take(
            "net.c",
            &attrs("c"),
            &[Family::V6, Family::V4],
            &["p4".into(), "2001:db8::/48".into()]
        )
        .is_some()
    );
    assert!(
        r.take("margay-reserve.n1.x", &attrs("x"), &[], &[])
            .is_none()
    );
    assert_eq!(r.metrics().fallbacks, 2);
    let r0 = Reserve::new(allocator(&store).await, opts(0));
    assert!(
        r0.take("net.d", &attrs("d"), &[], &[]).is_none(),
        "size 0: off"
    );
}

#[tokio::test]
async fn concurrent_takes_never_share_an_address_even_racing_refills() {
    let store = dual_stack();
    store.set_latency(Duration::from_millis(2));
    let alloc = allocator(&store).await;
    let r = Reserve::new(alloc.clone(), opts(6));
    let _task = r.start(Vec::new());
    until("the first refill", || r.metrics().ready == 6).await;
    let mut given: HashMap<String, Vec<IpAddr>> = HashMap::new();
    // Waves of concurrent takes; refills run between and during them.
    for wave in 0..6 {
        let tasks: Vec<_> = (0..5)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move {
                    let h = format!("net.w{wave}-{i}");
                    let got = r.take(&h, &attrs(&h), &[], &[]);
                    (h, got)
                })
            })
            .collect();
        for t in tasks {
            let (h, got) = t.await.expect("join");
            if let Some(a) = got {
                given.insert(h, ips(&a));
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(
        given.len() >= 10,
        "only {} takes were answered",
        given.len()
    );
    let mut seen = HashSet::new();
    for a in given.values().flatten() {
        assert!(seen.insert(*a), "{a} given twice");
    }
    until("every move", || r.metrics().moves_pending == 0).await;
    alloc.wait_idle().await.expect("idle");
    let all = allocations(&store);
    for (h, a) in &given {
        for ip in a {
            assert_eq!(all.get(ip).map(|x| &x.0), Some(h), "{ip} of {h}");
        }
    }
    // Ready units are disjoint from everything given.
    let reserved: Vec<&IpAddr> = all
        .iter()
        .filter(|(_, (h, _))| is_reserve_handle(h))
        .map(|(ip, _)| ip)
        .collect();
    assert!(reserved.iter().all(|ip| !seen.contains(*ip)));
    assert_eq!(reserved.len() as u64, 2 * r.metrics().ready);
}

#[tokio::test]
async fn release_before_the_move_frees_the_units_addresses() {
    let store = dual_stack();
    let alloc = allocator(&store).await;
    // No background tasks: the move never runs, as if it were still queued.
    let r = Reserve::new(alloc.clone(), opts(3));
    r.recover(&[]).await.expect("recover");
    r.refill().await;
    assert_eq!(r.metrics().ready, 3);
    let got = ips(&r.take("net.p1", &attrs("p1"), &[], &[]).expect("unit"));
    let released = r.release("net.p1").await.expect("release");
    assert_eq!(released, got);
    let all = allocations(&store);
    assert!(got.iter().all(|ip| !all.contains_key(ip)), "{all:?}");
    assert_eq!(r.holds("net.p1", &got), None);
    assert_eq!(r.metrics().moves_pending, 0);
    // The mover finds nothing left to move.
    assert!(!r.move_pending().await);

    // A release while the move is in flight waits for it, then releases
    // the pod's handle: the addresses end free either way.
    store.set_latency(Duration::from_millis(40));
    let got = ips(&r.take("net.p2", &attrs("p2"), &[], &[]).expect("unit"));
    let mover = {
        let r = r.clone();
        tokio::spawn(async move { r.move_pending().await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let released = r.release("net.p2").await.expect("release");
    assert!(!mover.await.expect("join"));
    assert_eq!(released, got);
    let all = allocations(&store);
    assert!(got.iter().all(|ip| !all.contains_key(ip)), "{all:?}");
    assert_eq!(r.metrics().moves, 1);
}

#[tokio::test]
async fn a_restart_moves_units_in_use_to_their_pods_and_serves_the_rest() {
    let store = dual_stack();
    let (p1, p2) = {
        let alloc = allocator(&store).await;
        let r = Reserve::new(alloc.clone(), opts(4));
        r.recover(&[]).await.expect("recover");
        r.refill().await;
        let p1 = ips(&r.take("net.p1", &attrs("p1"), &[], &[]).expect("unit"));
        let p2 = ips(&r.take("net.p2", &attrs("p2"), &[], &[]).expect("unit"));
        // The agent dies before any move.
        alloc.abort();
        (p1, p2)
    };
    let before = allocations(&store);
    for ip in p1.iter().chain(&p2) {
        assert!(is_reserve_handle(&before[ip].0), "{ip} still the reserve's");
    }

    // The restarted agent knows p1 (its endpoint went up), not p2 (its
    // ADD was cut before EndpointUp).
    let alloc = allocator(&store).await;
    let r = Reserve::new(alloc.clone(), opts(4));
    let _task = r.start(vec![InUse {
        handle: "net.p1".into(),
        attrs: attrs("p1"),
        ips: p1.clone(),
    }]);
    until("p1's move", || r.metrics().moves == 1).await;
    // p2's unit and the two never taken: above the low-water mark.
    until("the reserve", || r.metrics().ready == 3).await;
    let all = allocations(&store);
    for ip in &p1 {
        assert_eq!(all[ip], ("net.p1".to_string(), Some("p1".to_string())));
    }
    // p2's unit serves again; p2 holds nothing, so its EndpointUp fails.
    for ip in &p2 {
        assert!(is_reserve_handle(&all[ip].0), "{ip}: {:?}", all[ip]);
    }
    assert_eq!(r.holds("net.p2", &p2), None);
    assert!(alloc.get_handle("net.p2").await.expect("get").is_none());
    // Every reserve address is a ready unit's: nothing leaked.
    let reserved = all.values().filter(|(h, _)| is_reserve_handle(h)).count();
    assert_eq!(reserved, 2 * 3);
    assert_eq!(all.len(), 2 * 3 + 2);
}

#[tokio::test]
async fn a_release_before_recovery_is_deferred_and_frees_the_unit_after() {
    let store = dual_stack();
    let p1 = {
        let alloc = allocator(&store).await;
        let r = Reserve::new(alloc.clone(), opts(2));
        r.recover(&[]).await.expect("recover");
        r.refill().await;
        let p1 = ips(&r.take("net.p1", &attrs("p1"), &[], &[]).expect("unit"));
        // The agent dies before the move; p1's DEL comes while it is away.
        alloc.abort();
        p1
    };
    let alloc = allocator(&store).await;
    let r = Reserve::new(alloc.clone(), opts(2));
    // The journaled DEL replayed before recovery: refused, nothing freed.
    let e = r.release("net.p1").await.expect_err("deferred");
    assert!(matches!(e, IpamError::Unavailable { .. }), "{e:?}");
    assert!(p1.iter().all(|ip| allocations(&store).contains_key(ip)));
    // Recovery knows p1 from its endpoint record; the retried release
    // frees the unit's addresses (not just p1's empty handle).
    r.recover(&[InUse {
        handle: "net.p1".into(),
        attrs: attrs("p1"),
        ips: p1.clone(),
    }])
    .await
    .expect("recover");
    let released = r.release("net.p1").await.expect("release");
    assert_eq!(released, p1);
    let all = allocations(&store);
    assert!(p1.iter().all(|ip| !all.contains_key(ip)), "{all:?}");
}

#[tokio::test]
async fn a_move_is_idempotent_and_refuses_a_handle_that_has_the_family() {
    let store = dual_stack();
    let alloc = allocator(&store).await;
    let r = Reserve::new(alloc.clone(), opts(1));
    r.recover(&[]).await.expect("recover");
    r.refill().await;
    let unit = alloc
        .handles_with_prefix("margay-reserve.n1.")
        .await
        .expect("list");
    assert_eq!(unit.len(), 1);
    let from = unit[0].handle.clone();
    let want = ips(&unit[0].addresses);
    // Taken (no mover runs here), then moved by hand.
    let took = r.take("net.q", &attrs("q"), &[], &[]).expect("unit");
    assert_eq!(ips(&took), want);
    let moved = alloc
        .move_handle(&from, "net.q", attrs("q"))
        .await
        .expect("move");
    assert_eq!(moved, want);
    // Again (a retry whose first reply was lost): already done.
    let again = alloc
        .move_handle(&from, "net.q", attrs("q"))
        .await
        .expect("again");
    assert_eq!(again, want);
    // Nothing to move to a handle that holds nothing.
    let e = alloc
        .move_handle("margay-reserve.n1.none", "net.z", attrs("z"))
        .await
        .expect_err("nothing to move");
    assert!(matches!(e, IpamError::InvalidArgument { .. }), "{e}");
    // A target that already holds the family: refused, nothing changes.
    r.refill().await;
    let next = alloc
        .handles_with_prefix("margay-reserve.n1.")
        .await
        .expect("list");
    assert_eq!(next.len(), 1);
    let e = alloc
        .move_handle(&next[0].handle, "net.q", attrs("q"))
        .await
        .expect_err("q already has v4 and v6");
    assert!(e.to_string().contains("already holds"), "{e}");
    let all = allocations(&store);
    for a in &next[0].addresses {
        assert_eq!(all[&a.ip].0, next[0].handle);
    }
}

#[tokio::test]
async fn ready_units_of_a_pool_that_stops_serving_are_released_and_refilled_elsewhere() {
    let store = Arc::new(MemStore::new(3));
    store.put_pool("a", pool("198.19.0.0/24", 28));
    let alloc = allocator(&store).await;
    let r = Reserve::new(alloc.clone(), opts(2));
    let _task = r.start(Vec::new());
    until("the first refill", || r.metrics().ready == 2).await;
    // A pod takes a unit from pool a before the pool is disabled: it keeps it.
    let kept = ips(&r.take("net.p1", &attrs("p1"), &[], &[]).expect("a unit"));
    let in_a = |ip: &IpAddr| {
        "198.19.0.0/24"
            .parse::<ipam::cidr::Cidr>()
            .expect("cidr")
            .contains(*ip)
    };
    assert!(kept.iter().all(in_a), "{kept:?}");

    store.put_pool("b", pool("198.19.1.0/24", 28));
    let mut a = pool("198.19.0.0/24", 28);
    a.disabled = true;
    store.put_pool("a", a);
    alloc.refresh().await.expect("refresh");

    until("the units of pool a to be released", || {
        r.metrics().dropped >= 1
    })
    .await;
    until("the refill from pool b", || r.metrics().ready == 2).await;
    let now = allocations(&store);
    let reserve_ips: Vec<IpAddr> = now
        .iter()
        .filter(|(_, (h, _))| is_reserve_handle(h))
        .map(|(ip, _)| *ip)
        .collect();
    // Every unit left is ready in pool b, except the one the pod took
    // (moved to it, or still under its reserve handle while moving).
    assert!(
        reserve_ips.iter().all(|ip| !in_a(ip) || kept.contains(ip)),
        "units of the disabled pool still reserved: {reserve_ips:?}"
    );
    let got = ips(&r.take("net.p2", &attrs("p2"), &[], &[]).expect("a unit"));
    assert!(
        got.iter().all(|ip| !in_a(ip)),
        "a new pod got {got:?} from the disabled pool"
    );
    until("the pod's move", || r.metrics().moves_pending == 0).await;
    let now = allocations(&store);
    for ip in &kept {
        assert_eq!(
            now.get(ip).map(|(h, _)| h.as_str()),
            Some("net.p1"),
            "the pod keeps the address it took from pool a"
        );
    }
}
