//! What the controller does between syncs: a new sandbox of a pod takes
//! over the pod's slot from older ones ([`take_over`]), and each reconcile
//! period every endpoint's veth is looked at ([`reconcile_endpoints`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::controller::forget;
use super::{ControllerDeps, Endpoint};
use crate::k8s::cluster::Cluster;

/// An endpoint whose handle the IPAM view does not show is forgotten only
/// after this long (the block watch may lag an EndpointUp).
const UNALLOCATED_GRACE: Duration = Duration::from_secs(60);

/// `ep` was just brought up on its pod's host veth: older sandboxes of the
/// pod on the same slot are superseded. Their endpoints are forgotten (the
/// next sync drops their routes and policy) and their addresses released.
/// True if an endpoint was forgotten.
pub(super) fn take_over(
    d: &ControllerDeps,
    ep: &Endpoint,
    endpoints: &mut BTreeMap<String, Endpoint>,
) -> bool {
    let old: Vec<String> = endpoints
        .iter()
        .filter(|(h, e)| **h != ep.handle && e.host_if == ep.host_if)
        .map(|(h, _)| h.clone())
        .collect();
    let forgot = !old.is_empty();
    for h in old {
        endpoints.remove(&h);
        forget(d, &h);
        tracing::info!(handle = %h, by = %ep.handle, host_if = %ep.host_if, "endpoint superseded by a new sandbox of the pod");
    }
    release_superseded(d, ep);
    forgot
}

/// Queues the release of the allocations `ep`'s sandbox supersedes.
fn release_superseded(d: &ControllerDeps, ep: &Endpoint) {
    let v = d.view.borrow().clone();
    for a in super::attachments::superseded_allocations(ep, &v.local) {
        tracing::info!(handle = %a.handle, ip = %a.ip, by = %ep.handle, pod = %format!("{}/{}", ep.namespace, ep.pod), "releasing an older sandbox's address: the pod has a new sandbox");
        let _ = d.releases.send(a.handle.clone());
    }
}

/// What the reconcile remembers between rounds, by handle.
pub(super) struct Seen {
    /// When each endpoint was last known to hold its allocation.
    pub(super) confirmed: BTreeMap<String, Instant>,
    /// Endpoints whose veth was missing at the last round. A veth is put
    /// back only when it is missing at two rounds in a row: a DEL deletes
    /// the veth and tells the agent at the same time, and a round that
    /// falls between the two must not re-create what the DEL removes.
    pub(super) missing: BTreeSet<String>,
}

impl Seen {
    pub(super) fn forget(&mut self, handle: &str) {
        self.confirmed.remove(handle);
        self.missing.remove(handle);
    }
}

/// The periodic look at each endpoint's veth (see the module doc).
pub(super) async fn reconcile_endpoints(
    d: &mut ControllerDeps,
    nl: &cni_plugin::netlink::Nl,
    endpoints: &mut BTreeMap<String, Endpoint>,
    seen: &mut Seen,
) {
    use crate::dataplane::veth::{RepairError, VethState, rewire, veth_state};
    let v = d.view.borrow().clone();
    let now = Instant::now();
    let mut gone: Vec<(String, String)> = Vec::new();
    let mut missing = BTreeSet::new();
    for (h, ep) in endpoints.iter() {
        if v.synced {
            // Its addresses are its own, or still a reserve unit's (taken
            // from the reserve, moved to the pod's handle in the background).
            if v.local.iter().any(|a| {
                a.handle == *h
                    || (ipam::reserve::is_reserve_handle(&a.handle) && ep.ips.contains(&a.ip))
            }) {
                seen.confirmed.insert(h.clone(), now);
            } else if seen
                .confirmed
                .get(h)
                .is_none_or(|t| now.saturating_duration_since(*t) > UNALLOCATED_GRACE)
            {
                gone.push((h.clone(), "its addresses are no longer allocated".into()));
                continue;
            }
        }
        match veth_state(nl, &ep.host_if, &ep.handle).await {
            Ok(VethState::Owned) => release_superseded(d, ep),
            Ok(VethState::Foreign(owner)) => {
                gone.push((h.clone(), format!("its veth now belongs to {owner}")))
            }
            Ok(VethState::Unmarked) => {}
            Ok(VethState::Missing) => {
                if !ep.standalone() && !pod_runs(&d.cluster, ep) {
                    continue; // the pod is going: its DEL will come
                }
                missing.insert(h.clone());
                if !seen.missing.contains(h) {
                    continue; // again at the next round, unless a DEL came
                }
                let mtu = *d.pod_mtu.borrow();
                match rewire(nl, &ep.attachment(), mtu).await {
                    Ok(()) => {
                        tracing::warn!(pod = %format!("{}/{}", ep.namespace, ep.pod), container = %ep.container_id, host_if = %ep.host_if, ips = ?ep.ips, "endpoint repaired: its veth had gone missing while the pod runs")
                    }
                    Err(RepairError::SandboxGone(ns)) => {
                        tracing::debug!(handle = %h, netns = %ns, "veth missing and sandbox gone; waiting for its DEL")
                    }
                    Err(e) => {
                        tracing::warn!(handle = %h, host_if = %ep.host_if, error = %e, "cannot repair the endpoint's missing veth")
                    }
                }
            }
            Err(e) => {
                tracing::debug!(host_if = %ep.host_if, error = %e, "cannot read the endpoint's veth")
            }
        }
    }
    seen.missing = missing;
    for (h, why) in gone {
        endpoints.remove(&h);
        seen.forget(&h);
        forget(d, &h);
        tracing::info!(handle = %h, reason = %why, "endpoint forgotten");
    }
}

/// The endpoint's Pod exists and is not being deleted.
fn pod_runs(cluster: &Cluster, ep: &Endpoint) -> bool {
    cluster
        .pods
        .get(&kube::runtime::reflector::ObjectRef::new(&ep.pod).within(&ep.namespace))
        .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
}
