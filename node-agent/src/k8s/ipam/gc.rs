//! IPAM housekeeping against the cluster, every period: releases leaked
//! allocations (pods gone for longer than the grace period, or whose node
//! is gone) and keeps the IPAM gauges current.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use super::view::IpamView;
use crate::k8s::cluster::Cluster;
use crate::status::metrics::{Metrics, PoolLabels};

/// Settings of [`maintain`].
#[derive(Debug, Clone)]
pub struct MaintainOptions {
    /// How often to run.
    pub interval: Duration,
    /// How long an allocation may be without its pod before it is released.
    pub gc_grace: Duration,
}

/// A Pod as the leak GC sees it (addresses left empty); None for a
/// hostNetwork pod, which holds no pod address.
pub fn live_pod(p: &Pod) -> Option<ipam::gc::LivePod> {
    let host_network = p.spec.as_ref().and_then(|s| s.host_network);
    (!host_network.unwrap_or(false)).then(|| ipam::gc::LivePod {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        node: p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        ips: Vec::new(),
    })
}

fn live_pods(cluster: &Cluster) -> Vec<ipam::gc::LivePod> {
    cluster
        .pods
        .state()
        .iter()
        .filter_map(|p| live_pod(p))
        .collect()
}

/// What [`maintain`] works with.
#[derive(Clone)]
pub struct Maintenance {
    /// The cluster view (pods, nodes).
    pub cluster: Cluster,
    /// The IPAM blocks.
    pub store: Arc<dyn ipam::Store>,
    /// The allocator that releases leaks.
    pub alloc: ipam::Allocator,
    /// This node's IPAM view.
    pub view: watch::Receiver<Arc<IpamView>>,
    /// This node's name.
    pub me: String,
    /// Gauges.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub opts: MaintainOptions,
}

/// Runs leak GC and the IPAM gauges every `opts.interval` until the cluster
/// view goes away. This node releases the leaks of its own allocations and
/// of nodes that no longer exist.
pub async fn maintain(m: Maintenance, mut pulse: crate::status::health::Pulse) {
    let Maintenance {
        cluster,
        store,
        alloc,
        view,
        me,
        metrics,
        opts,
    } = m;
    let grace_ms = u64::try_from(opts.gc_grace.as_millis()).unwrap_or(u64::MAX);
    let mut tracker = ipam::gc::LeakTracker::new(grace_ms, Some(me.clone()));
    let mut tick = tokio::time::interval(opts.interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Between rounds; a round that hangs (on the allocator, whose
            // status the gauges ask for) stops these turns.
            () = pulse.tick() => continue,
        }
        if !cluster.generations().all_synced() {
            continue; // never judge pods gone from a partial list
        }
        let v = view.borrow().clone();
        gauges(&cluster, &alloc, &v, &metrics).await;
        let blocks = match store.list_blocks().await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "leak GC skipped: cannot list blocks");
                continue;
            }
        };
        let nodes: HashSet<String> = cluster
            .nodes
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let ready = tracker.observe(&blocks, &live_pods(&cluster), &nodes, now_ms);
        if ready.is_empty() {
            continue;
        }
        // Re-validate against the API itself right before releasing.
        let pods_now = match kube::Api::<Pod>::all(cluster.client())
            .list(&Default::default())
            .await
        {
            Ok(l) => l
                .items
                .iter()
                .map(|p| ipam::gc::LivePod {
                    namespace: p.metadata.namespace.clone().unwrap_or_default(),
                    name: p.metadata.name.clone().unwrap_or_default(),
                    node: String::new(),
                    ips: Vec::new(),
                })
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::debug!(error = %e, "leak GC skipped: cannot re-read pods");
                continue;
            }
        };
        let details: std::collections::HashMap<ipam::ReleaseTarget, ipam::gc::LeakCandidate> =
            ready
                .iter()
                .map(|c| (c.target.clone(), c.clone()))
                .collect();
        let targets = tracker.confirm(ready, &pods_now);
        if targets.is_empty() {
            continue;
        }
        match alloc.release_targets(targets).await {
            Ok(released) => {
                for c in released.iter().filter_map(|t| details.get(t)) {
                    tracing::info!(ip = %c.ip, pod = %c.pod, node = ?c.node, reason = ?c.reason, handle = %c.target.handle, "released a leaked address");
                }
            }
            Err(e) => tracing::warn!(error = %e, "leak GC release failed; retrying next round"),
        }
    }
}

async fn gauges(cluster: &Cluster, alloc: &ipam::Allocator, view: &IpamView, metrics: &Metrics) {
    for p in cluster.pools.state().iter() {
        if let (Some(name), Ok(cidr)) = (&p.metadata.name, p.spec.cidr.0.parse::<ipam::Cidr>()) {
            metrics
                .ipam_pool_size
                .get_or_create(&PoolLabels { pool: name.clone() })
                .set(cidr.count().as_f64());
        }
    }
    let pools: Vec<(String, IpNetwork)> = cluster
        .pools
        .state()
        .iter()
        .filter_map(|p| Some((p.metadata.name.clone()?, p.spec.cidr.parse().ok()?)))
        .collect();
    let pool_of = |ip: IpAddr| {
        pools
            .iter()
            .find(|(_, c)| c.contains(ip))
            .map(|(n, _)| n.clone())
    };
    let mut blocks: BTreeMap<String, i64> = pools.iter().map(|(n, _)| (n.clone(), 0)).collect();
    let mut allocs = blocks.clone();
    for b in &view.affine_blocks {
        if let Some(p) = pool_of(b.network()) {
            *blocks.entry(p).or_default() += 1;
        }
    }
    for a in &view.local {
        if let Some(p) = pool_of(a.ip) {
            *allocs.entry(p).or_default() += 1;
        }
    }
    for (p, n) in blocks {
        metrics
            .ipam_blocks
            .get_or_create(&PoolLabels { pool: p })
            .set(n);
    }
    for (p, n) in allocs {
        metrics
            .ipam_allocations
            .get_or_create(&PoolLabels { pool: p })
            .set(n);
    }
    metrics.ipam_borrowed.set(view.borrowed().count() as i64);
    if let Ok(st) = alloc.status().await {
        for p in st.pools {
            let l = PoolLabels { pool: p.name };
            metrics
                .ipam_pool_used
                .get_or_create(&l)
                .set(i64::try_from(p.allocated).unwrap_or(i64::MAX));
        }
    }
}
