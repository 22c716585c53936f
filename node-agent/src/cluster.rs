//! The agent's view of the cluster: one reflector per watched kind, each
//! owned by its own task, and a generation counter per kind that controllers
//! wait on.
//!
//! ```text
//!  API server ──watch──► reflector task (per kind) ──► Store<K> (read by anyone)
//!                               │
//!                               └──bump──► watch::Sender<Generations> ──► controllers
//!                                                                       (policy, routing, ipam)
//! ```
//!
//! Level-triggered: a controller wakes on `changed()`, reads the stores, and
//! compares generations to know which kinds moved; ten pod events in a burst
//! cost one recomputation. Watch errors, `410 Gone` and API-server restarts
//! are handled by kube's watcher (relist) with backoff; each error is counted
//! in `margay_api_errors_total` and logged once per streak.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, reflector as reflect};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::crd::{
    BGPConfiguration, BGPFilter, BGPPeer, IPAMConfiguration, IPPool, RawAdminNetworkPolicy,
    RawBaselineAdminNetworkPolicy,
};
use crate::health::Health;
use crate::metrics::{ApiLabels, Metrics};

/// Watched kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// core/v1 Node.
    Node,
    /// core/v1 Pod (all namespaces).
    Pod,
    /// core/v1 Namespace.
    Namespace,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
    /// IPPool.
    IpPool,
    /// BGPPeer.
    BgpPeer,
    /// BGPConfiguration.
    BgpConfiguration,
    /// BGPFilter.
    BgpFilter,
    /// core/v1 Service (all namespaces).
    Service,
    /// discovery.k8s.io/v1 EndpointSlice (all namespaces).
    EndpointSlice,
    /// IPAMConfiguration.
    IpamConfiguration,
    /// policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy (optional API).
    AdminNetworkPolicy,
    /// policy.networking.k8s.io/v1alpha1 BaselineAdminNetworkPolicy (optional API).
    BaselineAdminNetworkPolicy,
}

impl Kind {
    /// All kinds, in a fixed order.
    pub const ALL: [Kind; 13] = [
        Kind::Node,
        Kind::Pod,
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::IpPool,
        Kind::BgpPeer,
        Kind::BgpConfiguration,
        Kind::BgpFilter,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::IpamConfiguration,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// An API a cluster may not serve (its CRDs are installed separately):
    /// while the server answers 404 the kind counts as synced and empty, and
    /// the watch keeps retrying, so that installing the CRDs later is picked
    /// up without a restart.
    pub fn optional(self) -> bool {
        matches!(
            self,
            Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy
        )
    }

    /// Resource name as the API uses it (for metrics and logs).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Namespace => "namespaces",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::IpPool => "ippools",
            Kind::BgpPeer => "bgppeers",
            Kind::BgpConfiguration => "bgpconfigurations",
            Kind::BgpFilter => "bgpfilters",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::IpamConfiguration => "ipamconfigurations",
            Kind::AdminNetworkPolicy => "adminnetworkpolicies",
            Kind::BaselineAdminNetworkPolicy => "baselineadminnetworkpolicies",
        }
    }
}

/// How often each kind changed (and whether its first list is complete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generations {
    counts: [u64; Kind::ALL.len()],
    synced: [bool; Kind::ALL.len()],
}

impl Generations {
    /// Changes of `kind` seen so far.
    pub fn of(&self, kind: Kind) -> u64 {
        self.counts[kind.index()]
    }

    /// Whether `kind` has been listed completely at least once.
    pub fn synced(&self, kind: Kind) -> bool {
        self.synced[kind.index()]
    }

    /// Whether every kind has been listed.
    pub fn all_synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// Kinds whose count differs from `before`.
    pub fn changed_since(&self, before: &Generations) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| self.of(*k) != before.of(*k))
            .collect()
    }
}

/// Read access to everything the agent watches.
#[derive(Clone)]
pub struct Cluster {
    /// Nodes.
    pub nodes: Store<Node>,
    /// Pods, all namespaces.
    pub pods: Store<Pod>,
    /// Namespaces.
    pub namespaces: Store<Namespace>,
    /// NetworkPolicies, all namespaces.
    pub policies: Store<NetworkPolicy>,
    /// IP pools.
    pub pools: Store<IPPool>,
    /// BGP peers.
    pub bgp_peers: Store<BGPPeer>,
    /// BGP configurations.
    pub bgp_configs: Store<BGPConfiguration>,
    /// BGP filters.
    pub bgp_filters: Store<BGPFilter>,
    /// Services, all namespaces (for per-Service advertisement).
    pub services: Store<Service>,
    /// EndpointSlices, all namespaces (where a Service has ready endpoints).
    pub endpoint_slices: Store<EndpointSlice>,
    /// IPAM configuration.
    pub ipam_configs: Store<IPAMConfiguration>,
    /// AdminNetworkPolicies (empty where the API is not installed).
    pub admin_policies: Store<RawAdminNetworkPolicy>,
    /// BaselineAdminNetworkPolicies (empty where the API is not installed).
    pub baseline_policies: Store<RawBaselineAdminNetworkPolicy>,
    generations: watch::Receiver<Generations>,
    client: Client,
}

/// What feeds a [`Cluster::detached`].
pub struct DetachedWriters {
    /// Pods (`apply_watcher_event(&Event::Apply(pod))`).
    pub pods: reflector::store::Writer<Pod>,
    /// Namespaces.
    pub namespaces: reflector::store::Writer<Namespace>,
    /// NetworkPolicies.
    pub policies: reflector::store::Writer<NetworkPolicy>,
    _generations: watch::Sender<Generations>,
}

/// The running reflector tasks; dropping it stops them.
pub struct Watchers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    /// The client the watchers use (for writes elsewhere in the agent).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A receiver of generation changes (one per controller).
    pub fn subscribe(&self) -> watch::Receiver<Generations> {
        self.generations.clone()
    }

    /// The current generations.
    pub fn generations(&self) -> Generations {
        self.generations.borrow().clone()
    }

    /// Waits until every kind has been listed once.
    pub async fn wait_synced(&self) {
        let mut rx = self.subscribe();
        // The sender lives as long as the watchers; if they are gone there is
        // nothing more to wait for.
        let _ = rx.wait_for(Generations::all_synced).await;
    }

    /// A cluster view the caller feeds instead of watches (benchmarks, and
    /// tests of what reads it): Pods, Namespaces and NetworkPolicies through
    /// the returned writers, the other kinds empty, every kind reported
    /// synced. `client` is only handed out by [`Cluster::client`].
    pub fn detached(client: Client) -> (Cluster, DetachedWriters) {
        let all = Generations {
            synced: [true; Kind::ALL.len()],
            ..Generations::default()
        };
        let (tx, rx) = watch::channel(all);
        let (pods, pods_w) = reflector::store();
        let (namespaces, namespaces_w) = reflector::store();
        let (policies, policies_w) = reflector::store();
        let cluster = Cluster {
            nodes: reflector::store().0,
            pods,
            namespaces,
            policies,
            pools: reflector::store().0,
            bgp_peers: reflector::store().0,
            bgp_configs: reflector::store().0,
            bgp_filters: reflector::store().0,
            services: reflector::store().0,
            endpoint_slices: reflector::store().0,
            ipam_configs: reflector::store().0,
            admin_policies: reflector::store().0,
            baseline_policies: reflector::store().0,
            generations: rx,
            client,
        };
        (
            cluster,
            DetachedWriters {
                pods: pods_w,
                namespaces: namespaces_w,
                policies: policies_w,
                _generations: tx,
            },
        )
    }

    /// Starts one reflector per kind against `client`.
    pub fn start(
        client: Client,
        metrics: Arc<Metrics>,
        health: &Arc<Health>,
    ) -> (Cluster, Watchers) {
        let (tx, rx) = watch::channel(Generations::default());
        let tx = Arc::new(tx);
        let mut tasks = Vec::new();
        let mut spawn = |t: JoinHandle<()>| tasks.push(t);
        let nodes = run::<Node>(
            Api::all(client.clone()),
            Kind::Node,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let pods = run::<Pod>(
            Api::all(client.clone()),
            Kind::Pod,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let namespaces = run::<Namespace>(
            Api::all(client.clone()),
            Kind::Namespace,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let policies = run::<NetworkPolicy>(
            Api::all(client.clone()),
            Kind::NetworkPolicy,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let pools = run::<IPPool>(
            Api::all(client.clone()),
            Kind::IpPool,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let bgp_peers = run::<BGPPeer>(
            Api::all(client.clone()),
            Kind::BgpPeer,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let bgp_configs = run::<BGPConfiguration>(
            Api::all(client.clone()),
            Kind::BgpConfiguration,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let bgp_filters = run::<BGPFilter>(
            Api::all(client.clone()),
            Kind::BgpFilter,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let services = run::<Service>(
            Api::all(client.clone()),
            Kind::Service,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let endpoint_slices = run::<EndpointSlice>(
            Api::all(client.clone()),
            Kind::EndpointSlice,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let ipam_configs = run::<IPAMConfiguration>(
            Api::all(client.clone()),
            Kind::IpamConfiguration,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let admin_policies = run::<RawAdminNetworkPolicy>(
            Api::all(client.clone()),
            Kind::AdminNetworkPolicy,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        let baseline_policies = run::<RawBaselineAdminNetworkPolicy>(
            Api::all(client.clone()),
            Kind::BaselineAdminNetworkPolicy,
            &tx,
            &metrics,
            health,
            &mut spawn,
        );
        (
            Cluster {
                nodes,
                pods,
                namespaces,
                policies,
                pools,
                bgp_peers,
                bgp_configs,
                bgp_filters,
                services,
                endpoint_slices,
                ipam_configs,
                admin_policies,
                baseline_policies,
                generations: rx,
                client,
            },
            Watchers { tasks },
        )
    }
}

/// What of an object the agent keeps in its cache: all of it, except
/// for Pods (see [`trim_pod`]).
trait Cached {
    fn trim(&mut self) {}
}
impl Cached for Node {}
impl Cached for Namespace {}
impl Cached for NetworkPolicy {}
impl Cached for IPPool {}
impl Cached for BGPPeer {}
impl Cached for BGPConfiguration {}
impl Cached for BGPFilter {}
impl Cached for Service {}
impl Cached for EndpointSlice {}
impl Cached for IPAMConfiguration {}
impl Cached for RawAdminNetworkPolicy {}
impl Cached for RawBaselineAdminNetworkPolicy {}
impl Cached for Pod {
    fn trim(&mut self) {
        trim_pod(self);
    }
}

/// Drops what the agent never reads of a Pod before it is cached: it keeps
/// name, namespace, uid, resourceVersion, labels, deletionTimestamp,
/// Margay's own annotation, the node, hostNetwork, each container's name
/// and ports, the phase and the addresses (what policy, IPAM and the
/// endpoint checks read). A full Pod as kube decodes it is ~25 KB of
/// memory, all of it held for every pod of the cluster (docs/scale.md).
pub fn trim_pod(p: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    let m = &mut p.metadata;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == crate::ipam_ops::ANN_IP_ADDRS);
    }
    if m.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        m.annotations = None;
    }
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    m.creation_timestamp = None;
    if let Some(spec) = p.spec.take() {
        p.spec = Some(PodSpec {
            node_name: spec.node_name,
            host_network: spec.host_network,
            containers: spec
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        });
    }
    if let Some(st) = p.status.take() {
        p.status = Some(PodStatus {
            phase: st.phase,
            pod_ip: st.pod_ip,
            pod_ips: st.pod_ips,
            ..PodStatus::default()
        });
    }
}

fn run<K>(
    api: Api<K>,
    kind: Kind,
    tx: &Arc<watch::Sender<Generations>>,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    spawn: &mut impl FnMut(JoinHandle<()>),
) -> Store<K>
where
    K: Resource + Cached + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflect(
        writer,
        watcher::watcher(api, watcher::Config::default()).modify(K::trim),
    )
    .default_backoff();
    let tx = tx.clone();
    let metrics = metrics.clone();
    // A watch may deliver nothing for hours; the pulse keeps the loop turning.
    let mut pulse = health.pulse(format!("watch {}", kind.resource()));
    spawn(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = pulse.tick() => continue,
            };
            // kube's watcher retries forever; it ends only if dropped.
            let Some(item) = item else {
                return pulse.retire();
            };
            match item {
                Ok(ev) => {
                    if failing {
                        tracing::info!(resource = kind.resource(), "watch recovered");
                        failing = false;
                    }
                    let synced = matches!(ev, Event::InitDone);
                    let counts = !matches!(ev, Event::Init);
                    tx.send_modify(|g| {
                        if counts {
                            g.counts[kind.index()] += 1;
                        }
                        if synced {
                            g.synced[kind.index()] = true;
                        }
                    });
                }
                Err(e) if kind.optional() && not_served(&e) => {
                    let first = tx.borrow().synced[kind.index()];
                    if !first {
                        tracing::info!(
                            resource = kind.resource(),
                            "API not served by this cluster (CRDs not installed): nothing to enforce; watching for it"
                        );
                        tx.send_modify(|g| g.synced[kind.index()] = true);
                    }
                }
                Err(e) => {
                    metrics
                        .api_errors
                        .get_or_create(&ApiLabels {
                            resource: kind.resource().into(),
                            verb: "watch".into(),
                        })
                        .inc();
                    if !failing {
                        tracing::warn!(resource = kind.resource(), error = %e, "watch failed; retrying with backoff (objects stay as last seen)");
                        failing = true;
                    } else {
                        tracing::debug!(resource = kind.resource(), error = %e, "watch still failing");
                    }
                }
            }
        }
    }));
    reader
}

/// The API client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--api-server` is not a URL.
    #[error("--api-server {url:?} is not a URL: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// kube could not configure a client.
    #[error("cannot configure the Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
}

/// Where the agent (or margayctl) finds the API server and its credentials.
#[derive(Debug, Clone, Default)]
pub struct ApiAccess {
    /// A kubeconfig file: the server and the credentials (the identity).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The server URL; with a kubeconfig it overrides the kubeconfig's
    /// server (as kubectl's `--server`), without one it is used with no
    /// credentials.
    pub api_server: Option<String>,
}

/// Builds a client from `access`; with neither a kubeconfig nor a URL, from
/// the in-cluster config (the DaemonSet's ServiceAccount) or `$KUBECONFIG`.
pub async fn client(access: &ApiAccess) -> Result<Client, ClientError> {
    let url = |u: &str| {
        u.parse::<http::Uri>().map_err(|e| ClientError::BadUrl {
            url: u.to_string(),
            reason: e.to_string(),
        })
    };
    match (&access.kubeconfig, &access.api_server) {
        (Some(path), server) => {
            let kc_err = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(kc_err)?;
            let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(kc_err)?;
            if let Some(u) = server {
                cfg.cluster_url = url(u)?;
            }
            Ok(Client::try_from(cfg)?)
        }
        (None, Some(u)) => Ok(Client::try_from(kube::Config::new(url(u)?))?),
        (None, None) => Ok(Client::try_default().await?),
    }
}

/// Whether a watch failed because the server does not serve the resource.
fn not_served(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s,
        _ => return false,
    };
    api.code == 404
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trimmed_pod_keeps_what_the_agent_reads() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"}, "deletionTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {crate::ipam_ops::ANN_IP_ADDRS: "[\"198.19.0.5\"]", "big": "x"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u2"}]},
            "spec": {"nodeName": "n1", "hostNetwork": false, "serviceAccountName": "default",
                "containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": "198.19.0.5", "podIPs": [{"ip": "198.19.0.5"}],
                "hostIP": "198.18.0.11", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("pod");
        let mut t = pod.clone();
        trim_pod(&mut t);
        assert_eq!(
            policy::PodInfo::from_k8s(&t).expect("trimmed"),
            policy::PodInfo::from_k8s(&pod).expect("full")
        );
        assert_eq!(
            crate::ipam_ops::requested_by_annotation(&t),
            crate::ipam_ops::requested_by_annotation(&pod)
        );
        assert_eq!(
            crate::ipam_ops::live_pod(&t).map(|l| (l.namespace, l.name, l.node)),
            crate::ipam_ops::live_pod(&pod).map(|l| (l.namespace, l.name, l.node))
        );
        assert!(t.metadata.deletion_timestamp.is_some());
        assert_eq!(t.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(t.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
        assert!(t.metadata.owner_references.is_none());
        let spec = t.spec.as_ref().expect("spec");
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(t.status.as_ref().and_then(|s| s.host_ip.clone()), None);
    }

    #[test]
    fn generations_report_what_changed_and_sync() {
        let mut g = Generations::default();
        let before = g.clone();
        g.counts[Kind::Pod.index()] += 2;
        g.counts[Kind::Node.index()] += 1;
        assert_eq!(g.changed_since(&before), vec![Kind::Node, Kind::Pod]);
        assert!(!g.all_synced());
        g.synced = [true; Kind::ALL.len()];
        assert!(g.all_synced());
        assert_eq!(Kind::ALL.len(), g.counts.len());
    }
}
