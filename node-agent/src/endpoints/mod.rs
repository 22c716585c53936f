//! This node's pods (endpoints) and the local dataplane controller: the one
//! owner of this node's local routes and of its nftables policy (`table
//! inet margay`). The task is in `controller.rs`, its periodic look at the
//! veths in `reconcile.rs`; [`policy`] feeds the policy engine, and
//! [`attachments`] keeps the endpoint records and knows which sandbox
//! supersedes which.
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
//! their addresses released ([`attachments`]). EndpointDown forgets
//! only its own attachment. Each reconcile period the controller re-reads
//! the kernel: routes that went missing are put back, an endpoint whose
//! veth is missing at two rounds in a row while its sandbox and pod live is
//! re-wired, and one
//! whose veth another attachment owns, or whose addresses were released,
//! is forgotten.

pub mod attachments;
mod controller;
pub mod policy;
mod reconcile;
pub mod releaser;
pub mod trace;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ::policy::LocalEndpoint;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dataplane::local_routes::{LocalRoute, LocalRoutes, RouteError};
use crate::k8s::cluster::Cluster;
use crate::k8s::ipam::view::IpamView;
use crate::status::health::Health;
use crate::status::metrics::Metrics;
use policy::PolicySync;

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

    /// What the CNI plugin wired for it (to put a missing veth back).
    pub fn attachment(&self) -> crate::dataplane::veth::Attachment<'_> {
        crate::dataplane::veth::Attachment {
            host_if: &self.host_if,
            ifname: &self.ifname,
            netns: &self.netns,
            ips: &self.ips,
            handle: &self.handle,
        }
    }

    /// The policy engine's view of it.
    pub fn local(&self) -> LocalEndpoint {
        let (pod, standalone) = policy::endpoint_key(&self.namespace, &self.pod, &self.handle);
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
    /// `policy trace --dataplane`: resolve the pods and walk the ruleset.
    Trace(
        trace::TraceRequest,
        oneshot::Sender<Result<trace::TracePlan, trace::TraceError>>,
    ),
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
    // A reserve unit has no veth: its address is routed once a pod has
    // it (by its endpoint, below).
    for a in view
        .local
        .iter()
        .filter(|a| !ipam::reserve::is_reserve_handle(&a.handle))
    {
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
    pub records: crate::endpoints::attachments::Records,
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

/// Room in the controller's queue ([`ControllerHandle::channel`]).
pub const QUEUE: usize = 1024;

pub use controller::run;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::veth::VethName;
    use crate::k8s::ipam::view::LocalAllocation;

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
                host_if: VethName::for_pod("default", "nginx").into(),
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
