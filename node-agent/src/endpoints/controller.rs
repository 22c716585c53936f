//! The controller task: its loop (CNI commands first, then watched
//! changes, the reconcile timer and retries), the sync of routes and
//! policy, and EndpointUp / EndpointDown.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use policy::{PodInfo, PodKey};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::reconcile::{Seen, reconcile_endpoints, take_over};
use super::{Cmd, ControllerDeps, Endpoint, EndpointError, desired_routes};
use crate::dataplane::local_routes::{LocalRoute, LocalRoutes};
use crate::k8s::cluster::{Cluster, Kind};
use crate::k8s::ipam::view::IpamView;
use crate::status::health::Pulse;

/// A change seen by the watches is synced this much later, so a burst of
/// changes (a node's pods starting) is one sync, and an EndpointUp that
/// arrives meanwhile (the CNI waits for it) does not queue behind a sync
/// started by its own allocation's block write.
const SETTLE: Duration = Duration::from_millis(3);
/// A failed sync is retried after this long (or at the next change).
const RETRY: Duration = Duration::from_secs(1);

/// Runs the controller (on a runtime in the node's namespace) until its
/// queue's senders are gone.
pub async fn run(mut d: ControllerDeps, mut rx: mpsc::Receiver<Cmd>, mut pulse: Pulse) {
    // By IPAM handle; recorded ones first (a restart).
    let mut endpoints: BTreeMap<String, Endpoint> = d
        .records
        .load()
        .into_iter()
        .map(|ep| (ep.handle.clone(), ep))
        .collect();
    if !endpoints.is_empty() {
        tracing::info!(
            endpoints = endpoints.len(),
            "endpoints of the previous run loaded"
        );
    }
    let mut tracked = Seen {
        confirmed: endpoints
            .keys()
            .map(|h| (h.clone(), Instant::now()))
            .collect(),
        missing: BTreeSet::new(),
    };
    let node_nl = match cni_plugin::netlink::Nl::here() {
        Ok(nl) => Some(nl),
        Err(e) => {
            tracing::error!(error = %e, "no netlink socket: endpoint veths will not be checked or repaired");
            None
        }
    };
    let mut tick = tokio::time::interval(d.reconcile_interval);
    let mut gens = d.cluster.subscribe();
    let mut seen = gens.borrow().clone();
    // Something changed since the last sync was scheduled.
    let mut dirty = true;
    // When the next sync runs.
    let mut due: Option<Instant> = None;
    // Routes as last applied; None forces a full (dump and reconcile) sync.
    let mut applied: Option<BTreeSet<LocalRoute>> = None;
    loop {
        if std::mem::take(&mut dirty) {
            let soon = Instant::now() + SETTLE;
            due = Some(due.map_or(soon, |t| t.min(soon)));
        }
        if due.is_some_and(|t| t <= Instant::now()) {
            due = None;
            let v = d.view.borrow().clone();
            // Until both are synced, the change that completes them wakes us.
            if v.synced && seen.all_synced() && !sync(&mut d, &v, &endpoints, &mut applied).await {
                due = Some(Instant::now() + RETRY);
            }
        }
        tokio::select! {
            // CNI requests first: a sync can wait, a pod's ADD cannot.
            biased;
            cmd = rx.recv() => match cmd {
                None => return pulse.retire(),
                Some(Cmd::Prepare(ep)) => prepare(&mut d, &ep).await,
                Some(Cmd::Resync) => dirty = true,
                Some(Cmd::Trace(req, reply)) => {
                    let _ = reply.send(super::trace::plan(&d.policy, &endpoints, &req));
                }
                Some(Cmd::Up(ep, reply)) => {
                    let res = endpoint_up(&mut d, &ep, &mut endpoints).await;
                    let up = res.is_ok();
                    let _ = reply.send(res);
                    // The plugin waits for the answer, not for these: the
                    // record is for a restart (commands after this one see
                    // it written), and what the endpoint supersedes is
                    // only marked for the next sync.
                    if up {
                        recorded(&d, &ep);
                        tracked.confirmed.insert(ep.handle.clone(), Instant::now());
                        if take_over(&d, &ep, &mut endpoints) {
                            // The superseded endpoints' policy goes too.
                            dirty = true;
                        }
                    } else {
                        dirty = true;
                    }
                }
                Some(Cmd::Down { container_id, handle, reply }) => {
                    let keys: Vec<String> = endpoints
                        .iter()
                        .filter(|(h, ep)| {
                            if handle.is_empty() {
                                !container_id.is_empty() && ep.container_id == container_id
                            } else {
                                **h == handle
                            }
                        })
                        .map(|(h, _)| h.clone())
                        .collect();
                    let mut res = Ok(());
                    for k in keys {
                        if let Some(ep) = endpoints.remove(&k) {
                            forget(&d, &ep.handle);
                            tracked.forget(&k);
                            res = res.and(endpoint_down(&mut d, &ep, &endpoints).await);
                        }
                    }
                    // Whatever else pointed at it goes at the next sync.
                    dirty = true;
                    let _ = reply.send(res);
                }
            },
            changed = d.view.changed() => {
                if changed.is_err() {
                    return;
                }
                dirty = true;
            }
            changed = gens.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = gens.borrow().clone();
                if now.changed_since(&seen).iter().any(|k| matches!(k, Kind::Pod | Kind::PodEndpoint | Kind::Namespace | Kind::NetworkPolicy | Kind::IpPool | Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy | Kind::Node))
                    || now.all_synced() != seen.all_synced()
                {
                    dirty = true;
                }
                seen = now;
            }
            _ = tick.tick() => {
                // Periodically re-read the kernel: repairs routes someone
                // else changed, and veths that went missing.
                if let Some(nl) = &node_nl {
                    reconcile_endpoints(&mut d, nl, &mut endpoints, &mut tracked).await;
                }
                applied = None;
                dirty = true;
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
            () = pulse.tick() => {}
        }
    }
}

/// Full sync of routes and policy; true when both reached the kernel.
/// Applies only what changed since `applied`: one or two netlink messages
/// per event instead of a dump of every link and route.
async fn sync_incremental(
    routes: &LocalRoutes,
    desired: &BTreeSet<LocalRoute>,
    applied: &BTreeSet<LocalRoute>,
) -> Result<BTreeSet<LocalRoute>, crate::dataplane::local_routes::RouteError> {
    let mut now = applied.clone();
    for r in applied.difference(desired) {
        routes.remove(r).await?;
        now.remove(r);
    }
    for r in desired.difference(applied) {
        // A route whose veth does not exist yet stays pending.
        if routes.ensure(r).await? {
            now.insert(r.clone());
        }
    }
    Ok(now)
}

async fn sync(
    d: &mut ControllerDeps,
    v: &IpamView,
    endpoints: &BTreeMap<String, Endpoint>,
    applied: &mut Option<BTreeSet<LocalRoute>>,
) -> bool {
    let desired = desired_routes(v, endpoints);
    if let Some(prev) = applied.as_ref() {
        match sync_incremental(&d.routes, &desired, prev).await {
            Ok(now) => *applied = Some(now),
            Err(e) => {
                tracing::warn!(error = %crate::logging::chain(&e), "local route update failed; full sync next");
                *applied = None;
            }
        }
    }
    let routes_ok = applied.is_some()
        || match d.routes.sync(&desired).await {
            Ok(r) => {
                if r.written + r.removed > 0 {
                    tracing::info!(
                        written = r.written,
                        removed = r.removed,
                        kept = r.kept,
                        "local routes synced"
                    );
                } else {
                    tracing::debug!(kept = r.kept, "local routes synced");
                }
                if !r.missing_interfaces.is_empty() {
                    tracing::debug!(interfaces = ?r.missing_interfaces, "routes waiting for their veth");
                }
                // What is in the kernel now: all but routes waiting for a veth.
                let missing: BTreeSet<&str> =
                    r.missing_interfaces.iter().map(String::as_str).collect();
                *applied = Some(
                    desired
                        .iter()
                        .filter(|route| match route {
                            LocalRoute::Device { ifname, .. } => !missing.contains(ifname.as_str()),
                            LocalRoute::Blackhole { .. } => true,
                        })
                        .cloned()
                        .collect(),
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %crate::logging::chain(&e), "local route sync failed; retrying");
                false
            }
        };
    d.policy.update(&d.cluster, v, endpoints);
    let policy_ok = match d.policy.commit(&d.metrics) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "policy sync failed; retrying");
            false
        }
    };
    d.health.set_dataplane_programmed(routes_ok && policy_ok);
    d.health
        .set_status("policy_problems", serde_json::json!(d.policy.issues()));
    routes_ok && policy_ok
}

async fn endpoint_up(
    d: &mut ControllerDeps,
    ep: &Endpoint,
    endpoints: &mut BTreeMap<String, Endpoint>,
) -> Result<(), EndpointError> {
    let started = Instant::now();
    // A standalone workload has no Pod: no NetworkPolicy selects it.
    let info = if ep.standalone() {
        None
    } else {
        Some(pod_info(&d.cluster, ep).await?)
    };
    let looked_up = started.elapsed();
    ensure_routes(d, ep).await?;
    let routed = started.elapsed();
    let before = endpoints.insert(ep.handle.clone(), ep.clone());
    d.policy.endpoint_up(info, ep.local());
    if let Err(e) = d.policy.commit(&d.metrics) {
        match before {
            Some(b) => endpoints.insert(ep.handle.clone(), b),
            None => endpoints.remove(&ep.handle),
        };
        return Err(EndpointError::Policy(e.to_string()));
    }
    tracing::debug!(
        container = %ep.container_id,
        pod_us = looked_up.as_micros() as u64,
        route_us = (routed - looked_up).as_micros() as u64,
        policy_us = (started.elapsed() - routed).as_micros() as u64,
        "endpoint up: where the time went"
    );
    Ok(())
}

/// After a successful [`endpoint_up`] has been answered: the endpoint's
/// record (for a restarted agent) and the log line.
fn recorded(d: &ControllerDeps, ep: &Endpoint) {
    if let Err(e) = d.records.save(ep) {
        // Only a restart would miss it: the IPAM view still routes it.
        tracing::warn!(error = %e, "cannot record the endpoint; a restarted agent will not repair its veth");
    }
    if ep.standalone() {
        tracing::info!(container = %ep.container_id, handle = %ep.handle, host_if = %ep.host_if, ips = ?ep.ips, "standalone workload up (no pod identity: routed, anti-spoofed, not subject to NetworkPolicy)");
    } else {
        tracing::info!(pod = %PodKey::new(ep.namespace.clone(), ep.pod.clone()), container = %ep.container_id, host_if = %ep.host_if, ips = ?ep.ips, "endpoint up: route and policy programmed");
    }
}

/// The endpoint's pod, for its policy: from the watch cache, or from the
/// API if the watch has not delivered it yet; an error rather than a pod
/// started unpoliced.
async fn pod_info(cluster: &Cluster, ep: &Endpoint) -> Result<PodInfo, EndpointError> {
    let who = format!("{}/{}", ep.namespace, ep.pod);
    let cached = cluster
        .pods
        .get(&kube::runtime::reflector::ObjectRef::new(&ep.pod).within(&ep.namespace));
    let pod: Pod = match cached {
        Some(p) => (*p).clone(),
        None => {
            let api: kube::Api<Pod> = kube::Api::namespaced(cluster.client(), &ep.namespace);
            match api.get_opt(&ep.pod).await {
                Ok(Some(p)) => p,
                Ok(None) => return Err(EndpointError::PodUnknown(who, "no such Pod".into())),
                Err(e) => return Err(EndpointError::PodUnknown(who, e.to_string())),
            }
        }
    };
    PodInfo::from_k8s(&pod).map_err(|e| EndpointError::PodUnknown(who, e.to_string()))
}

/// [`Cmd::Prepare`]: the endpoint's policy, from the cached Pod only (an
/// API read here would only delay the EndpointUp queued behind it).
async fn prepare(d: &mut ControllerDeps, ep: &Endpoint) {
    // The Allocate answer that sent this is still on its way out (the
    // connection's task writes it): let it go first, the plugin waits for
    // it and not for this.
    tokio::task::yield_now().await;
    let started = std::time::Instant::now();
    let info = if ep.standalone() {
        None
    } else {
        let cached = d
            .cluster
            .pods
            .get(&kube::runtime::reflector::ObjectRef::new(&ep.pod).within(&ep.namespace));
        let Some(info) = cached.and_then(|p| PodInfo::from_k8s(&p).ok()) else {
            return;
        };
        Some(info)
    };
    d.policy.endpoint_up(info, ep.local());
    match d.policy.commit(&d.metrics) {
        Ok(()) => {
            tracing::debug!(container = %ep.container_id, elapsed_us = started.elapsed().as_micros() as u64, "endpoint policy prepared at allocation")
        }
        Err(e) => {
            tracing::debug!(container = %ep.container_id, error = %e, "preparing policy failed; EndpointUp retries")
        }
    }
}

/// Forgets `handle`'s record.
pub(super) fn forget(d: &ControllerDeps, handle: &str) {
    if let Err(e) = d.records.remove(handle) {
        tracing::warn!(error = %e, "cannot remove an endpoint record");
    }
}

async fn ensure_routes(d: &mut ControllerDeps, ep: &Endpoint) -> Result<(), EndpointError> {
    for ip in &ep.ips {
        if !d
            .routes
            .ensure(&LocalRoute::to_pod(*ip, &ep.host_if))
            .await?
        {
            return Err(EndpointError::NoInterface(ep.host_if.clone()));
        }
    }
    Ok(())
}

async fn endpoint_down(
    d: &mut ControllerDeps,
    ep: &Endpoint,
    endpoints: &BTreeMap<String, Endpoint>,
) -> Result<(), EndpointError> {
    for ip in &ep.ips {
        d.routes
            .remove(&LocalRoute::to_pod(*ip, &ep.host_if))
            .await?;
    }
    let v = d.view.borrow().clone();
    d.policy.update(&d.cluster, &v, endpoints);
    d.policy
        .commit(&d.metrics)
        .map_err(|e| EndpointError::Policy(e.to_string()))?;
    tracing::info!(pod = %format!("{}/{}", ep.namespace, ep.pod), container = %ep.container_id, "endpoint down");
    Ok(())
}
