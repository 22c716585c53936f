//! The local dataplane controller: the one owner of this node's local routes
//! and of its nftables policy (`table inet margay`).
//!
//! ```text
//!  EndpointsService ──Cmd::Up/Down + oneshot──┐
//!  cluster (Pods, Namespaces, NetworkPolicies)─┤
//!  IPAM view (watch) ──────── changed ────────┼──► controller task ──► LocalRoutes (netlink)
//!  reconcile timer (30 s) ────────────────────┘          │         ├─► PolicySync (nft, 1 txn)
//!                                                          │         ├─► endpoint records (state dir)
//!                                                          │         └─► releases ──► releaser task (IPAM)
//!                                                          └──► Health: dataplane programmed
//! ```
//!
//! Desired local routes = a blackhole per block affine to this node + a /32
//! (/128) per local pod address to its `cali*` veth, where local pod
//! addresses come from the IPAM view (so a restarted agent rebuilds them
//! without any other state) and from EndpointUp (which can run before the
//! block watch has delivered the allocation). `EndpointUp` installs its
//! routes and its policy and answers only once both are in the kernel; a pod
//! whose Pod object cannot be read is refused (fail closed) rather than
//! started without policy.
//!
//! Endpoints are keyed by IPAM handle (one per attachment: a sandbox and
//! an interface) and recorded on disk, so a restarted agent knows them.
//! An EndpointUp takes over the pod's slot from older sandboxes of the pod
//! (the runtime re-created the sandbox): their endpoints are forgotten and
//! their addresses released ([`crate::attachments`]). EndpointDown forgets
//! only its own attachment. Each reconcile period the controller re-reads
//! the kernel: routes that went missing are put back, an endpoint whose
//! veth is missing at two rounds in a row while its sandbox and pod live is
//! re-wired, and one
//! whose veth another attachment owns, or whose addresses were released,
//! is forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use policy::{LocalEndpoint, PodInfo, PodKey};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::cluster::{Cluster, Kind};
use crate::health::Health;
use crate::ipamview::IpamView;
use crate::localroutes::{LocalRoute, LocalRoutes, RouteError};
use crate::metrics::Metrics;
use crate::policyctl::PolicySync;

/// A pod attached to this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// Container (sandbox) id.
    pub container_id: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Host-side veth.
    pub host_if: String,
    /// Pod addresses.
    pub ips: Vec<IpAddr>,
    /// The IPAM handle.
    pub handle: String,
    /// The sandbox's network namespace (CNI_NETNS); empty if unknown.
    #[serde(default)]
    pub netns: String,
    /// The container-side interface (CNI_IFNAME); empty if unknown.
    #[serde(default)]
    pub ifname: String,
}

impl Endpoint {
    /// A container a runtime started outside Kubernetes (no pod identity
    /// in CNI_ARGS): routed and anti-spoofed, not subject to NetworkPolicy.
    pub fn standalone(&self) -> bool {
        self.namespace.is_empty() && self.pod.is_empty()
    }

    /// The policy engine's view of it.
    pub fn local(&self) -> LocalEndpoint {
        let (pod, standalone) =
            crate::policyctl::endpoint_key(&self.namespace, &self.pod, &self.handle);
        let mut ips = self.ips.clone();
        ips.sort();
        LocalEndpoint {
            standalone,
            pod,
            iface: self.host_if.clone(),
            ips,
        }
    }
}

/// Why an endpoint request failed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The host veth does not exist (the CNI must create it first).
    #[error("host interface {0} does not exist")]
    NoInterface(String),
    /// Programming the kernel failed.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The policy could not be programmed.
    #[error("{0}")]
    Policy(String),
    /// The pod's object could not be read, so its policy is unknown.
    #[error("pod {0} unknown to the API server or unreachable: {1}")]
    PodUnknown(String, String),
    /// The controller is gone (agent shutting down).
    #[error("dataplane controller stopped")]
    Stopped,
}

/// Requests to the controller.
pub enum Cmd {
    /// An address was just allocated for this endpoint-to-be: program its
    /// policy now (no route: the veth may not exist yet), so that the
    /// EndpointUp that follows finds it in place. Best effort, no answer;
    /// nothing is registered, so a CNI that never calls EndpointUp leaves
    /// nothing behind beyond what its IPAM allocation implies.
    Prepare(Endpoint),
    /// Bring routes and policy back to what the cluster and IPAM say (after
    /// a prepared allocation failed).
    Resync,
    /// Program an endpoint; answer when its routes (and policy) are in place.
    Up(Endpoint, oneshot::Sender<Result<(), EndpointError>>),
    /// Forget an attachment and remove its routes: the one with this
    /// handle, or without a handle (GC knows only the handle; an old
    /// plugin only the container) every attachment of the container.
    Down {
        /// Container id.
        container_id: String,
        /// IPAM handle.
        handle: String,
        /// Answer.
        reply: oneshot::Sender<Result<(), EndpointError>>,
    },
}

/// Handle for sending commands.
#[derive(Clone)]
pub struct ControllerHandle {
    tx: mpsc::Sender<Cmd>,
}

impl ControllerHandle {
    /// A handle and the receiving end of its queue (the controller task's
    /// input; tests read it directly).
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Cmd>) {
        let (tx, rx) = mpsc::channel(capacity);
        (ControllerHandle { tx }, rx)
    }

    /// Programs `ep`, waiting for the kernel.
    pub async fn up(&self, ep: Endpoint) -> Result<(), EndpointError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Up(ep, tx))
            .await
            .map_err(|_| EndpointError::Stopped)?;
        rx.await.map_err(|_| EndpointError::Stopped)?
    }

    /// Queues [`Cmd::Prepare`] without waiting (dropped if the queue is
    /// full: EndpointUp does the work then).
    pub fn prepare(&self, ep: Endpoint) {
        let _ = self.tx.try_send(Cmd::Prepare(ep));
    }

    /// An allocation whose addresses were prepared failed: re-derive the
    /// policy from the cluster and IPAM state (drops what was prepared).
    pub fn forget_prepared(&self) {
        let _ = self.tx.try_send(Cmd::Resync);
    }

    /// Removes an endpoint found by container id or handle (idempotent).
    pub async fn down(&self, container_id: String, handle: String) -> Result<(), EndpointError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Down {
                container_id,
                handle,
                reply: tx,
            })
            .await
            .map_err(|_| EndpointError::Stopped)?;
        rx.await.map_err(|_| EndpointError::Stopped)?
    }
}

pub use crate::ipamview::host_ifname;

/// The routes this node should have.
pub fn desired_routes(
    view: &IpamView,
    endpoints: &BTreeMap<String, Endpoint>,
) -> BTreeSet<LocalRoute> {
    let mut out: BTreeSet<LocalRoute> = view
        .affine_blocks
        .iter()
        .map(|b| LocalRoute::Blackhole { dst: *b })
        .collect();
    for a in &view.local {
        out.insert(LocalRoute::to_pod(a.ip, &a.host_if));
    }
    for ep in endpoints.values() {
        for ip in &ep.ips {
            out.insert(LocalRoute::to_pod(*ip, &ep.host_if));
        }
    }
    out
}

/// What the controller works with.
pub struct ControllerDeps {
    /// Where endpoints are recorded across restarts.
    pub records: crate::attachments::Records,
    /// Handles whose addresses a re-created sandbox superseded: to release.
    pub releases: mpsc::UnboundedSender<String>,
    /// How often the kernel is re-read and endpoints reconciled.
    pub reconcile_interval: Duration,
    /// Local routes (netlink in the node's namespace).
    pub routes: LocalRoutes,
    /// Policy engine and nft session.
    pub policy: PolicySync,
    /// The cluster view.
    pub cluster: Cluster,
    /// IPAM view updates.
    pub view: watch::Receiver<Arc<IpamView>>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The pods' MTU (0: not known), for a re-wired veth.
    pub pod_mtu: watch::Receiver<u32>,
}

/// Starts the controller on the current runtime (in the node's namespace).
pub fn start(deps: ControllerDeps) -> (ControllerHandle, tokio::task::JoinHandle<()>) {
    let (handle, rx) = ControllerHandle::channel(1024);
    let task = tokio::spawn(run(deps, rx));
    (handle, task)
}

/// A change seen by the watches is synced this much later, so a burst of
/// changes (a node's pods starting) is one sync, and an EndpointUp that
/// arrives meanwhile (the CNI waits for it) does not queue behind a sync
/// started by its own allocation's block write.
const SETTLE: Duration = Duration::from_millis(3);
/// A failed sync is retried after this long (or at the next change).
const RETRY: Duration = Duration::from_secs(1);

/// An endpoint whose handle the IPAM view does not show is forgotten only
/// after this long (the block watch may lag an EndpointUp).
const UNALLOCATED_GRACE: Duration = Duration::from_secs(60);

async fn run(mut d: ControllerDeps, mut rx: mpsc::Receiver<Cmd>) {
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
    let mut pulse = d.health.pulse("dataplane controller");
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
                Some(Cmd::Up(ep, reply)) => {
                    let res = endpoint_up(&mut d, &ep, &mut endpoints).await;
                    match &res {
                        Ok(()) => {
                            tracked.confirmed.insert(ep.handle.clone(), Instant::now());
                            if take_over(&d, &ep, &mut endpoints) {
                                // The superseded endpoints' policy goes too.
                                dirty = true;
                            }
                        }
                        Err(_) => dirty = true,
                    }
                    let _ = reply.send(res);
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
                if now.changed_since(&seen).iter().any(|k| matches!(k, Kind::Pod | Kind::Namespace | Kind::NetworkPolicy | Kind::IpPool | Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy | Kind::Node))
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
) -> Result<BTreeSet<LocalRoute>, crate::localroutes::RouteError> {
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
    // A standalone workload has no Pod: no NetworkPolicy selects it.
    let info = if ep.standalone() {
        None
    } else {
        Some(pod_info(&d.cluster, ep).await?)
    };
    ensure_routes(d, ep).await?;
    let before = endpoints.insert(ep.handle.clone(), ep.clone());
    d.policy.endpoint_up(info, ep.local());
    if let Err(e) = d.policy.commit(&d.metrics) {
        match before {
            Some(b) => endpoints.insert(ep.handle.clone(), b),
            None => endpoints.remove(&ep.handle),
        };
        return Err(EndpointError::Policy(e.to_string()));
    }
    if let Err(e) = d.records.save(ep) {
        // Only a restart would miss it: the IPAM view still routes it.
        tracing::warn!(error = %e, "cannot record the endpoint; a restarted agent will not repair its veth");
    }
    if ep.standalone() {
        tracing::info!(container = %ep.container_id, handle = %ep.handle, host_if = %ep.host_if, ips = ?ep.ips, "standalone workload up (no pod identity: routed, anti-spoofed, not subject to NetworkPolicy)");
    } else {
        tracing::info!(pod = %PodKey::new(ep.namespace.clone(), ep.pod.clone()), container = %ep.container_id, host_if = %ep.host_if, ips = ?ep.ips, "endpoint up: route and policy programmed");
    }
    Ok(())
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
fn forget(d: &ControllerDeps, handle: &str) {
    if let Err(e) = d.records.remove(handle) {
        tracing::warn!(error = %e, "cannot remove an endpoint record");
    }
}

/// `ep` was just brought up on its pod's host veth: older sandboxes of the
/// pod on the same slot are superseded. Their endpoints are forgotten (the
/// next sync drops their routes and policy) and their addresses released.
/// True if an endpoint was forgotten.
fn take_over(
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
    for a in crate::attachments::superseded_allocations(ep, &v.local) {
        tracing::info!(handle = %a.handle, ip = %a.ip, by = %ep.handle, pod = %format!("{}/{}", ep.namespace, ep.pod), "releasing an older sandbox's address: the pod has a new sandbox");
        let _ = d.releases.send(a.handle.clone());
    }
}

/// What the reconcile remembers between rounds, by handle.
struct Seen {
    /// When each endpoint was last known to hold its allocation.
    confirmed: BTreeMap<String, Instant>,
    /// Endpoints whose veth was missing at the last round. A veth is put
    /// back only when it is missing at two rounds in a row: a DEL deletes
    /// the veth and tells the agent at the same time, and a round that
    /// falls between the two must not re-create what the DEL removes.
    missing: BTreeSet<String>,
}

impl Seen {
    fn forget(&mut self, handle: &str) {
        self.confirmed.remove(handle);
        self.missing.remove(handle);
    }
}

/// The periodic look at each endpoint's veth (see the module doc).
async fn reconcile_endpoints(
    d: &mut ControllerDeps,
    nl: &cni_plugin::netlink::Nl,
    endpoints: &mut BTreeMap<String, Endpoint>,
    seen: &mut Seen,
) {
    use crate::attachments::{RepairError, VethState, rewire, veth_state};
    let v = d.view.borrow().clone();
    let now = Instant::now();
    let mut gone: Vec<(String, String)> = Vec::new();
    let mut missing = BTreeSet::new();
    for (h, ep) in endpoints.iter() {
        if v.synced {
            if v.local.iter().any(|a| a.handle == *h) {
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
        match veth_state(nl, ep).await {
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
                match rewire(nl, ep, mtu).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipamview::LocalAllocation;

    #[test]
    fn host_ifname_matches_the_cni_plugins_naming() {
        // `printf default.nginx | sha1sum` = c440f455693b...
        assert_eq!(host_ifname("default", "nginx"), "calic440f455693");
    }

    #[test]
    fn desired_routes_join_blocks_ipam_and_endpoint_up() {
        let view = IpamView {
            synced: true,
            affine_blocks: ["198.19.0.0/26".parse().expect("net")].into(),
            local: vec![LocalAllocation {
                ip: "198.19.0.2".parse().expect("ip"),
                namespace: "default".into(),
                pod: "nginx".into(),
                handle: "net.c1".into(),
                borrowed: false,
                host_if: host_ifname("default", "nginx"),
            }],
            pod_ips: Default::default(),
            ..Default::default()
        };
        let eps: BTreeMap<String, Endpoint> = [(
            "c2".to_string(),
            Endpoint {
                container_id: "c2".into(),
                namespace: "x".into(),
                pod: "y".into(),
                host_if: "cali0123456789a".into(),
                ips: vec!["198.19.0.3".parse().expect("ip")],
                handle: "net.c2".into(),
                netns: String::new(),
                ifname: "eth0".into(),
            },
        )]
        .into();
        let want: BTreeSet<LocalRoute> = [
            LocalRoute::Blackhole {
                dst: "198.19.0.0/26".parse().expect("net"),
            },
            LocalRoute::to_pod("198.19.0.2".parse().expect("ip"), "calic440f455693"),
            LocalRoute::to_pod("198.19.0.3".parse().expect("ip"), "cali0123456789a"),
        ]
        .into();
        assert_eq!(desired_routes(&view, &eps), want);
    }
}
