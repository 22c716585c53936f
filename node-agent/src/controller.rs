//! The local dataplane controller: the one owner of this node's local routes
//! (and, as it lands, of its nftables policy).
//!
//! ```text
//!  EndpointsService ──Cmd::Up/Down + oneshot──┐
//!  IPAM view (watch) ──────── changed ────────┼──► controller task ──► LocalRoutes (netlink)
//!  resync timer (30 s) ───────────────────────┘          │
//!                                                          └──► Health: dataplane programmed
//! ```
//!
//! Desired local routes = a blackhole per block affine to this node + a /32
//! (/128) per local pod address to its `cali*` veth, where local pod
//! addresses come from the IPAM view (so a restarted agent rebuilds them
//! without any other state) and from EndpointUp (which can run before the
//! block watch has delivered the allocation). `EndpointUp` installs its
//! routes directly and answers only once they are in the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::health::Health;
use crate::ipamview::IpamView;
use crate::localroutes::{LocalRoute, LocalRoutes, RouteError};

/// A pod attached to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The controller is gone (agent shutting down).
    #[error("dataplane controller stopped")]
    Stopped,
}

/// Requests to the controller.
pub enum Cmd {
    /// Program an endpoint; answer when its routes (and policy) are in place.
    Up(Endpoint, oneshot::Sender<Result<(), EndpointError>>),
    /// Forget an endpoint and remove its routes. Either key may be empty
    /// (GC knows only the handle).
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
    /// Programs `ep`, waiting for the kernel.
    pub async fn up(&self, ep: Endpoint) -> Result<(), EndpointError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Up(ep, tx))
            .await
            .map_err(|_| EndpointError::Stopped)?;
        rx.await.map_err(|_| EndpointError::Stopped)?
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

/// The host-side interface name of a pod: `cali` + 11 hex of
/// sha1("<namespace>.<pod>") (what the CNI plugin creates).
pub fn host_ifname(namespace: &str, pod: &str) -> String {
    use sha1::Digest as _;
    let digest = sha1::Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    format!("cali{}", &hex::encode(digest)[..11])
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
    for a in &view.local {
        out.insert(LocalRoute::to_pod(a.ip, &host_ifname(&a.namespace, &a.pod)));
    }
    for ep in endpoints.values() {
        for ip in &ep.ips {
            out.insert(LocalRoute::to_pod(*ip, &ep.host_if));
        }
    }
    out
}

/// Starts the controller on the current runtime (in the node's namespace).
pub fn start(
    routes: LocalRoutes,
    view: watch::Receiver<Arc<IpamView>>,
    health: Arc<Health>,
) -> (ControllerHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(run(routes, view, rx, health));
    (ControllerHandle { tx }, task)
}

async fn run(
    routes: LocalRoutes,
    mut view: watch::Receiver<Arc<IpamView>>,
    mut rx: mpsc::Receiver<Cmd>,
    health: Arc<Health>,
) {
    let mut endpoints: BTreeMap<String, Endpoint> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let mut dirty = true;
    loop {
        health.heartbeat("dataplane", Duration::from_secs(90));
        if dirty {
            let v = view.borrow().clone();
            if v.synced {
                let desired = desired_routes(&v, &endpoints);
                match routes.sync(&desired).await {
                    Ok(r) => {
                        if r.written + r.removed > 0 {
                            tracing::info!(
                                written = r.written,
                                removed = r.removed,
                                kept = r.kept,
                                "local routes synced"
                            );
                        }
                        if !r.missing_interfaces.is_empty() {
                            tracing::debug!(interfaces = ?r.missing_interfaces, "routes waiting for their veth");
                        }
                        health.set_dataplane_programmed(true);
                        dirty = false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "local route sync failed; retrying");
                        health.set_dataplane_programmed(false);
                    }
                }
            }
        }
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => return,
                Some(Cmd::Up(ep, reply)) => {
                    let res = endpoint_up(&routes, &ep).await;
                    if res.is_ok() {
                        endpoints.insert(ep.container_id.clone(), ep);
                    }
                    let _ = reply.send(res);
                }
                Some(Cmd::Down { container_id, handle, reply }) => {
                    let key = endpoints
                        .iter()
                        .find(|(id, ep)| {
                            (!container_id.is_empty() && **id == container_id)
                                || (!handle.is_empty() && ep.handle == handle)
                        })
                        .map(|(id, _)| id.clone());
                    let res = match key.and_then(|k| endpoints.remove(&k)) {
                        Some(ep) => endpoint_down(&routes, &ep).await,
                        None => Ok(()),
                    };
                    // Whatever else pointed at it goes at the next sync.
                    dirty = true;
                    let _ = reply.send(res);
                }
            },
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
                dirty = true;
            }
            _ = tick.tick() => dirty = true,
        }
    }
}

async fn endpoint_up(routes: &LocalRoutes, ep: &Endpoint) -> Result<(), EndpointError> {
    for ip in &ep.ips {
        if !routes.ensure(&LocalRoute::to_pod(*ip, &ep.host_if)).await? {
            return Err(EndpointError::NoInterface(ep.host_if.clone()));
        }
    }
    tracing::info!(pod = %format!("{}/{}", ep.namespace, ep.pod), container = %ep.container_id, host_if = %ep.host_if, ips = ?ep.ips, "endpoint up");
    Ok(())
}

async fn endpoint_down(routes: &LocalRoutes, ep: &Endpoint) -> Result<(), EndpointError> {
    for ip in &ep.ips {
        routes.remove(&LocalRoute::to_pod(*ip, &ep.host_if)).await?;
    }
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
            }],
            pod_ips: BTreeMap::new(),
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
