//! The allocator's configuration from the cluster: the IPPools (oldest
//! first, so every node resolves overlaps alike), the `default`
//! IPAMConfiguration and this node's labels (for pools' node selectors),
//! applied as they change — a new, changed or disabled pool applies at
//! once, not at the next failed allocation.

use std::sync::Arc;

use crate::k8s::cluster::{Cluster, Kind};
use crate::k8s::crd::IPPool;
use crate::status::health::Pulse;

/// Hands the `default` IPAMConfiguration (or the defaults without one) to
/// the allocator.
async fn apply_ipam_config(cluster: &Cluster, alloc: &ipam::Allocator) -> Result<(), ()> {
    let config = cluster
        .ipam_configs
        .get(&kube::runtime::reflector::ObjectRef::new(
            crate::k8s::crd::IPAM_CONFIGURATION_NAME,
        ))
        .map(|c| c.spec.clone())
        .unwrap_or_default();
    tracing::info!(?config, "IPAM configuration");
    alloc.set_config(config.to_model()).await.map_err(|_| ())
}

/// The cluster's IPPools as the allocator takes them, oldest first
/// (invalid ones left out with a warning).
fn pool_objects(cluster: &Cluster) -> Vec<ipam::PoolObject> {
    oldest_first(cluster.pools.state())
        .iter()
        .filter_map(|p| match super::store::pool_to_model(p) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring invalid IPPool");
                None
            }
        })
        .collect()
}

/// Keeps the allocator's pools and node labels current: a new, changed or
/// disabled IPPool, or a relabelled Node, applies at once (not at the next
/// failed allocation).
pub async fn feed_allocator(
    cluster: Cluster,
    alloc: ipam::Allocator,
    me: String,
    mut pulse: Pulse,
) {
    let mut gens = cluster.subscribe();
    let mut seen = gens.borrow().clone();
    // The configuration listed before this task started; changes follow.
    if apply_ipam_config(&cluster, &alloc).await.is_err() {
        return;
    }
    // So are the pools, once their watch has listed: without them the
    // allocator, whose blocks come from the block watch, would list pools
    // and every block of the cluster itself (31 MB at 5,000 nodes) a
    // second after its seed, for want of pools alone.
    if seen.synced(Kind::IpPool) && alloc.set_pools(pool_objects(&cluster)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            changed = gens.changed() => if changed.is_err() { return pulse.retire() },
            () = pulse.tick() => continue,
        }
        let now = gens.borrow().clone();
        let moved = now.changed_since(&seen);
        seen = now;
        if moved.contains(&Kind::IpamConfiguration)
            && apply_ipam_config(&cluster, &alloc).await.is_err()
        {
            return;
        }
        if moved.contains(&Kind::IpPool) {
            let pools = pool_objects(&cluster);
            tracing::info!(pools = pools.len(), "IP pools changed");
            if alloc.set_pools(pools).await.is_err() {
                return;
            }
        }
        if moved.contains(&Kind::Node) {
            let labels = cluster
                .nodes
                .get(&kube::runtime::reflector::ObjectRef::new(&me))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            if alloc
                .set_node_labels(labels.into_iter().collect())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Pools in creation order (then by name): where two overlap, the IPAM keeps
/// the first and reports the other, so every node must see them in the same
/// order, and the pool that was there first keeps serving.
fn oldest_first(mut pools: Vec<Arc<IPPool>>) -> Vec<Arc<IPPool>> {
    pools.sort_by(|a, b| {
        let key = |p: &IPPool| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone(),
            )
        };
        // Objects without a timestamp (never from a real server) sort last.
        match (key(a), key(b)) {
            ((Some(x), n), (Some(y), m)) => x.cmp(&y).then(n.cmp(&m)),
            ((Some(_), _), (None, _)) => std::cmp::Ordering::Less,
            ((None, _), (Some(_), _)) => std::cmp::Ordering::Greater,
            ((None, n), (None, m)) => n.cmp(&m),
        }
    });
    pools
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::oldest_first;
    use crate::k8s::crd::{IPPool, IPPoolSpec};

    fn pool(name: &str, created: Option<i64>) -> Arc<IPPool> {
        let mut p = IPPool::new(
            name,
            serde_json::from_value::<IPPoolSpec>(serde_json::json!({"cidr": "198.19.0.0/16"}))
                .expect("spec"),
        );
        p.metadata.creation_timestamp =
            created.map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("time")));
        Arc::new(p)
    }

    #[test]
    fn overlapping_pools_are_ordered_the_same_on_every_node() {
        let a = pool("zz-old", Some(100));
        let b = pool("aa-new", Some(200));
        let c = pool("bb-new", Some(200));
        let d = pool("no-time", None);
        for input in [
            vec![b.clone(), d.clone(), a.clone(), c.clone()],
            vec![d.clone(), c.clone(), b.clone(), a.clone()],
        ] {
            let names: Vec<_> = oldest_first(input)
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
            assert_eq!(names, ["zz-old", "aa-new", "bb-new", "no-time"]);
        }
    }
}
