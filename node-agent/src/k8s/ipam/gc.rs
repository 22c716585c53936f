//! IPAM housekeeping against the cluster, every period: releases leaked
//! allocations (pods gone for longer than the grace period, or whose node
//! is gone) and keeps the IPAM gauges current.
//!
//! The live pods are the Pod cache's and, with `--pod-source=endpoints`
//! (where the Pod cache holds only this node's Pods), every PodEndpoint's
//! as well, whatever its node: so a pod of another node, or one left on a
//! node that is gone, is live exactly as it is in `pods` mode. Right before
//! releasing, each candidate's pod is looked up in the API itself (in
//! `endpoints` mode by name, one GET per candidate pod, instead of a list of
//! every Pod of the cluster), so a pod that exists is never released even
//! if no PodEndpoint was written for it.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use super::view::IpamView;
use crate::k8s::cluster::{Cluster, PodSource};
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

/// Whether the leak GC counts pod `namespace/name` as live (see the module
/// doc): a lookup in the caches, so that no list of the cluster's pods is
/// built for each round.
pub fn is_live(cluster: &Cluster, namespace: &str, name: &str) -> bool {
    let pod = kube::runtime::reflector::ObjectRef::<Pod>::new(name).within(namespace);
    if cluster
        .pods
        .get(&pod)
        .is_some_and(|p| live_pod(&p).is_some())
    {
        return true;
    }
    cluster.pod_source == PodSource::Endpoints
        && cluster.pod_endpoints.get(namespace, name).is_some()
}

/// The candidates' pods that exist in the API now: every Pod (one list) in
/// `pods` mode, a GET per candidate pod in `endpoints` mode.
async fn pods_now(
    cluster: &Cluster,
    ready: &[ipam::gc::LeakCandidate],
) -> Result<Vec<ipam::gc::LivePod>, kube::Error> {
    let live = |ns: &str, name: &str| ipam::gc::LivePod {
        namespace: ns.to_string(),
        name: name.to_string(),
        node: String::new(),
        ips: Vec::new(),
    };
    if cluster.pod_source == PodSource::Pods {
        let l = kube::Api::<Pod>::all(cluster.client())
            .list(&Default::default())
            .await?;
        return Ok(l
            .items
            .iter()
            .map(|p| {
                live(
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                )
            })
            .collect());
    }
    let wanted: std::collections::BTreeSet<(&str, &str)> =
        ready.iter().filter_map(|c| c.pod.split_once('/')).collect();
    let mut out = Vec::new();
    for (ns, name) in wanted {
        if kube::Api::<Pod>::namespaced(cluster.client(), ns)
            .get_opt(name)
            .await?
            .is_some()
        {
            out.push(live(ns, name));
        }
    }
    Ok(out)
}

/// What [`maintain`] works with.
#[derive(Clone)]
pub struct Maintenance {
    /// The cluster view (pods, nodes).
    pub cluster: Cluster,
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
        let nodes: Arc<HashSet<String>> = Arc::new(
            cluster
                .nodes
                .state()
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
        );
        // The allocations to judge, from the allocator's cache (it follows
        // the block watch): this node's and those of nodes that are gone.
        // Listing every block instead cost each agent the whole IPAMBlock
        // list (31 MB of JSON at 5,000 nodes in bench_scale) every round;
        // the cache keeps other nodes' blocks summarised, and reads whole
        // only those holding allocations of a node that is gone.
        let (mine, known) = (me.clone(), Arc::clone(&nodes));
        let blocks = match alloc
            .blocks_made_by(move |n: Option<&str>| {
                n.is_some_and(|n| n == mine || !known.contains(n))
            })
            .await
        {
            Ok(Some(b)) => b,
            Ok(None) => {
                tracing::debug!("leak GC skipped: the block cache is not synced");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "leak GC skipped: allocator stopped or a block read failed");
                continue;
            }
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let ready = tracker.observe_with(
            &blocks,
            |ns, name| is_live(&cluster, ns, name),
            &nodes,
            now_ms,
        );
        if ready.is_empty() {
            continue;
        }
        // Re-validate against the API itself right before releasing.
        let pods_now = match pods_now(&cluster, &ready).await {
            Ok(p) => p,
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
    // Reserve units are counted by `ipam_reserve_units`.
    for a in view
        .local
        .iter()
        .filter(|a| !ipam::reserve::is_reserve_handle(&a.handle))
    {
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

#[cfg(test)]
mod tests {
    use super::*;
    use ipam::model::{Allocation, AllocationAttrs, IpamBlockSpec, block_name};
    use kube::runtime::watcher::Event;

    fn block(allocs: &[(u32, &str, &str)]) -> ipam::store::BlockObject {
        let cidr: ipam::Cidr = "198.19.7.0/26".parse().expect("cidr");
        let mut spec = IpamBlockSpec::new(cidr, Some("host:n1".into()), 0);
        for (o, pod, node) in allocs {
            spec.take_specific(*o).expect("free ordinal");
            spec.insert_allocation(Allocation {
                ordinal: *o,
                handle: format!("net.{pod}"),
                sequence: 1,
                attrs: AllocationAttrs {
                    namespace: Some("ns".into()),
                    pod: Some(pod.to_string()),
                    node: Some(node.to_string()),
                },
            });
        }
        ipam::store::Versioned {
            name: block_name(&cidr),
            spec,
            resource_version: "1".into(),
        }
    }

    /// `--pod-source=endpoints`: the Pod cache has only this node's pods.
    /// A live pod of another node (known from its PodEndpoint) whose
    /// allocation the GC considers — its node is gone, or the allocation
    /// is this node's (a name used again elsewhere) — is never released;
    /// without the PodEndpoints it would be (at once for the gone node).
    #[tokio::test]
    async fn endpoints_mode_never_releases_a_live_remote_pod() {
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("url"),
        ))
        .expect("client");
        let (mut cluster, mut w) = Cluster::detached(client);
        cluster.pod_source = PodSource::Endpoints;
        let local: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"nodeName": "n1", "containers": []}
        }))
        .expect("pod");
        w.pods.apply_watcher_event(&Event::Apply(local));
        for (name, node) in [("b", "gone"), ("c", "n2")] {
            let mut e = crate::k8s::crd::PodEndpoint::new(
                name,
                crate::k8s::crd::PodEndpointSpec {
                    node: node.into(),
                    addresses: vec!["198.19.7.9".parse().expect("ip")],
                    ..Default::default()
                },
            );
            e.metadata.namespace = Some("ns".into());
            w.pod_endpoints.apply_watcher_event(&Event::Apply(e));
        }
        // a: this node's, live here; b: a node that is gone, its pod still
        // exists (PodEndpoint); c: allocated here, the pod now lives on n2;
        // d: allocated here, no pod anywhere (the only leak).
        let blocks = [block(&[
            (1, "a", "n1"),
            (2, "b", "gone"),
            (3, "c", "n1"),
            (4, "d", "n1"),
        ])];
        let nodes: HashSet<String> = ["n1".to_string(), "n2".to_string()].into();
        let grace = 1000;
        let mut t = ipam::gc::LeakTracker::new(grace, Some("n1".into()));
        let live = |ns: &str, name: &str| is_live(&cluster, ns, name);
        assert!(t.observe_with(&blocks, live, &nodes, 0).is_empty());
        let ready = t.observe_with(&blocks, live, &nodes, 2 * grace);
        let pods: Vec<&str> = ready.iter().map(|c| c.pod.as_str()).collect();
        assert_eq!(pods, vec!["ns/d"]);
        // The same cluster without the PodEndpoints (what the Pod cache
        // alone says in this mode) would release b at once and c later.
        cluster.pod_source = PodSource::Pods;
        let mut t = ipam::gc::LeakTracker::new(grace, Some("n1".into()));
        let alone = |ns: &str, name: &str| is_live(&cluster, ns, name);
        let now: Vec<String> = t
            .observe_with(&blocks, alone, &nodes, 0)
            .into_iter()
            .map(|c| c.pod)
            .collect();
        assert_eq!(now, vec!["ns/b".to_string()]);
        let later = t.observe_with(&blocks, alone, &nodes, 2 * grace);
        assert_eq!(later.len(), 3, "{later:?}");
    }
}
