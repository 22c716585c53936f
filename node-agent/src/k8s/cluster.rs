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
//!
//! PodEndpoints (one per pod of the cluster) are not in a reflector store
//! but in the compact [`EndpointCache`], fed by the same kube watcher with
//! the same semantics.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, reflector as reflect};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::k8s::crd::{
    BGPConfiguration, BGPFilter, BGPPeer, IPAMConfiguration, IPPool, RawAdminNetworkPolicy,
    RawBaselineAdminNetworkPolicy,
};
use crate::k8s::endpointcache::{self, EndpointCache, EndpointCacheWriter};
use crate::k8s::pod::Cached;
use crate::k8s::policycache::{self, PolicyCache, PolicyCacheWriter};
use crate::status::health::Pulse;
use crate::status::metrics::{ApiLabels, Metrics};

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
    /// crd.margay.dev PodEndpoint (all namespaces; watched only with
    /// [`PodSource::Endpoints`], empty and synced otherwise).
    PodEndpoint,
}

/// Where the agent learns the pods of other nodes (`--pod-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PodSource {
    /// Every Pod of the cluster (the Pod watch is cluster-wide). The
    /// default: during a rolling upgrade, nodes still on a version that
    /// does not publish PodEndpoints keep their pods in everyone's policy.
    #[default]
    Pods,
    /// This node's Pods (field selector `spec.nodeName`), and the other
    /// nodes' pods from their PodEndpoints (docs/scale.md §4). Flip to it
    /// once every node runs a version that publishes PodEndpoints.
    Endpoints,
}

impl Kind {
    /// All kinds, in a fixed order.
    pub const ALL: [Kind; 14] = [
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
        Kind::PodEndpoint,
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
            Kind::PodEndpoint => "podendpoints",
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
    /// Pods: all namespaces; with [`PodSource::Endpoints`] only this
    /// node's (see [`Cluster::pod_source`]).
    pub pods: Store<Pod>,
    /// PodEndpoints, all namespaces (empty unless [`PodSource::Endpoints`]),
    /// compact (see [`EndpointCache`]).
    pub pod_endpoints: EndpointCache,
    /// Where the pods of other nodes come from.
    pub pod_source: PodSource,
    /// Namespaces.
    pub namespaces: Store<Namespace>,
    /// NetworkPolicies, all namespaces, compiled (see [`PolicyCache`]).
    pub policies: PolicyCache,
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
    pub policies: PolicyCacheWriter,
    /// PodEndpoints (read when the view's `pod_source` is `Endpoints`).
    pub pod_endpoints: EndpointCacheWriter,
    /// Nodes.
    pub nodes: reflector::store::Writer<Node>,
    generations: watch::Sender<Generations>,
}

impl DetachedWriters {
    /// Counts one event of `kind`, as the watch loop does after its cache
    /// applied it (a detached cluster's writers count nothing on their
    /// own; readers then treat every kind as moved).
    pub fn counted(&self, kind: Kind) {
        self.generations
            .send_modify(|g| g.counts[kind.index()] += 1);
    }
}

/// One kind's reflector loop, not yet started: the caller runs it (the
/// agent's supervisor) with a pulse that keeps its liveness.
pub struct Watcher {
    /// The task's name (`watch <resource>`).
    pub name: String,
    /// The loop.
    pub run: Box<dyn FnOnce(Pulse) -> BoxFuture<'static, ()> + Send>,
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
    /// tests of what reads it): Pods, Namespaces, NetworkPolicies,
    /// PodEndpoints and Nodes through the returned writers, the other kinds
    /// empty, every kind reported
    /// synced. `client` is only handed out by [`Cluster::client`].
    pub fn detached(client: Client) -> (Cluster, DetachedWriters) {
        let all = Generations {
            synced: [true; Kind::ALL.len()],
            ..Generations::default()
        };
        let (tx, rx) = watch::channel(all);
        let (pods, pods_w) = reflector::store();
        let (namespaces, namespaces_w) = reflector::store();
        let (policies, policies_w) = policycache::cache();
        let (pod_endpoints, pod_endpoints_w) = endpointcache::cache();
        let (nodes, nodes_w) = reflector::store();
        let cluster = Cluster {
            nodes,
            pods,
            pod_endpoints,
            pod_source: PodSource::Pods,
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
                pod_endpoints: pod_endpoints_w,
                nodes: nodes_w,
                generations: tx,
            },
        )
    }

    /// One reflector per kind against `client`: the view, and the loops
    /// that fill it (to be run by the caller). With
    /// [`PodSource::Endpoints`] the Pod watch is limited to `node`'s Pods
    /// and PodEndpoints are watched; otherwise PodEndpoints are not
    /// watched (their kind is synced and empty).
    pub fn start(
        client: Client,
        metrics: Arc<Metrics>,
        pod_source: PodSource,
        node: &str,
    ) -> (Cluster, Vec<Watcher>) {
        let mut first = Generations::default();
        if pod_source == PodSource::Pods {
            first.synced[Kind::PodEndpoint.index()] = true;
        }
        let (tx, rx) = watch::channel(first);
        let tx = Arc::new(tx);
        let mut w = Vec::new();
        let c = &client;
        let m = &metrics;
        let all = watcher::Config::default;
        let (pod_watch, pod_endpoints) = match pod_source {
            PodSource::Pods => (all(), EndpointCache::default()),
            PodSource::Endpoints => (
                all().fields(&format!("spec.nodeName={node}")),
                compact_cache(
                    Api::all(c.clone()),
                    Kind::PodEndpoint,
                    endpointcache::cache(),
                    EndpointCacheWriter::apply_watcher_event,
                    &tx,
                    m,
                    &mut w,
                ),
            ),
        };
        let cluster = Cluster {
            nodes: reflector_of(Api::all(c.clone()), Kind::Node, &tx, m, &mut w),
            pods: reflector_with(Api::all(c.clone()), pod_watch, Kind::Pod, &tx, m, &mut w),
            pod_endpoints,
            pod_source,
            namespaces: reflector_of(Api::all(c.clone()), Kind::Namespace, &tx, m, &mut w),
            policies: compact_cache(
                Api::all(c.clone()),
                Kind::NetworkPolicy,
                policycache::cache(),
                PolicyCacheWriter::apply_watcher_event,
                &tx,
                m,
                &mut w,
            ),
            pools: reflector_of(Api::all(c.clone()), Kind::IpPool, &tx, m, &mut w),
            bgp_peers: reflector_of(Api::all(c.clone()), Kind::BgpPeer, &tx, m, &mut w),
            bgp_configs: reflector_of(Api::all(c.clone()), Kind::BgpConfiguration, &tx, m, &mut w),
            bgp_filters: reflector_of(Api::all(c.clone()), Kind::BgpFilter, &tx, m, &mut w),
            services: reflector_of(Api::all(c.clone()), Kind::Service, &tx, m, &mut w),
            endpoint_slices: reflector_of(Api::all(c.clone()), Kind::EndpointSlice, &tx, m, &mut w),
            ipam_configs: reflector_of(
                Api::all(c.clone()),
                Kind::IpamConfiguration,
                &tx,
                m,
                &mut w,
            ),
            admin_policies: reflector_of(
                Api::all(c.clone()),
                Kind::AdminNetworkPolicy,
                &tx,
                m,
                &mut w,
            ),
            baseline_policies: reflector_of(
                Api::all(c.clone()),
                Kind::BaselineAdminNetworkPolicy,
                &tx,
                m,
                &mut w,
            ),
            generations: rx,
            client,
        };
        (cluster, w)
    }
}

/// The store of `kind`, and (pushed to `watchers`) the loop that fills it.
fn reflector_of<K>(
    api: Api<K>,
    kind: Kind,
    tx: &Arc<watch::Sender<Generations>>,
    metrics: &Arc<Metrics>,
    watchers: &mut Vec<Watcher>,
) -> Store<K>
where
    K: Resource + Cached + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    reflector_with(api, watcher::Config::default(), kind, tx, metrics, watchers)
}

/// [`reflector_of`] with a watch configuration (selectors).
fn reflector_with<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    tx: &Arc<watch::Sender<Generations>>,
    metrics: &Arc<Metrics>,
    watchers: &mut Vec<Watcher>,
) -> Store<K>
where
    K: Resource + Cached + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // An update that changes nothing the cache keeps (Cached::unchanged)
    // is applied (the new resourceVersion) but marked, so that the loop
    // moves no generation for it.
    let unchanged = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, mark) = (reader.clone(), Arc::clone(&unchanged));
    let trimmed = watcher::watcher(api, config)
        .modify(K::trim)
        .inspect_ok(move |ev| {
            let same = match ev {
                Event::Apply(new) => seen
                    .get(&reflector::ObjectRef::from_obj(new))
                    .is_some_and(|old| new.unchanged(&old)),
                _ => false,
            };
            mark.store(same, std::sync::atomic::Ordering::Relaxed);
        });
    let stream = reflect(writer, trimmed).default_backoff();
    let tx = tx.clone();
    let metrics = metrics.clone();
    watchers.push(Watcher {
        name: format!("watch {}", kind.resource()),
        run: Box::new(move |pulse| {
            Box::pin(watch_loop(
                stream,
                kind,
                tx,
                metrics,
                pulse,
                Some(unchanged),
            ))
        }),
    });
    reader
}

/// A compact cache (`reader`, `writer`: the PodEndpoint or the
/// NetworkPolicy cache) and, pushed to `watchers`, the loop of `kind` that
/// fills it: kube's watcher (list/watch, relists, default backoff) as for
/// the other kinds, each event handed to `apply` on the writer instead of
/// a reflector store.
fn compact_cache<K, R, W>(
    api: Api<K>,
    kind: Kind,
    (reader, mut writer): (R, W),
    apply: fn(&mut W, &Event<K>),
    tx: &Arc<watch::Sender<Generations>>,
    metrics: &Arc<Metrics>,
    watchers: &mut Vec<Watcher>,
) -> R
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
    W: Send + 'static,
{
    let stream = watcher::watcher(api, watcher::Config::default())
        .inspect_ok(move |ev| apply(&mut writer, ev))
        .default_backoff();
    let (tx, metrics) = (tx.clone(), metrics.clone());
    watchers.push(Watcher {
        name: format!("watch {}", kind.resource()),
        run: Box::new(move |pulse| Box::pin(watch_loop(stream, kind, tx, metrics, pulse, None))),
    });
    reader
}

/// One kind's loop: counts generations, reports errors once per streak.
async fn watch_loop<S, K>(
    stream: S,
    kind: Kind,
    tx: Arc<watch::Sender<Generations>>,
    metrics: Arc<Metrics>,
    // A watch may deliver nothing for hours; the pulse keeps the loop turning.
    mut pulse: Pulse,
    // Set for an event that changed nothing kept (see reflector_with).
    unchanged: Option<Arc<std::sync::atomic::AtomicBool>>,
) where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
{
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
                let same = unchanged
                    .as_ref()
                    .is_some_and(|u| u.swap(false, std::sync::atomic::Ordering::Relaxed));
                // An Apply that changed nothing kept moves no generation.
                let redundant = same && matches!(ev, Event::Apply(_));
                let counts = !(matches!(ev, Event::Init) || redundant);
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
