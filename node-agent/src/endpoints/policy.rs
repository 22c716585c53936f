//! NetworkPolicy for the dataplane controller: mirrors the cluster (pods,
//! namespaces, policies) and this node's endpoints into the incremental
//! [`policy::Engine`], as per-object upserts and removals, and commits one
//! nftables transaction at a time.
//!
//! Pod addresses are the union of what the IPAM blocks record (known the
//! moment an address is allocated, before kubelet reports `podIPs`), what
//! EndpointUp said, and `status.podIPs`; so a new pod is in every selector
//! set before its CNI ADD returns.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use policy::{Engine, LocalEndpoint, NamespaceInfo, NodeContext, PodInfo, PodKey, PolicyKey};

use crate::dataplane::{FastSink, NftSession};
use crate::endpoints::Endpoint;
use crate::k8s::cluster::{Cluster, Kind};
use crate::k8s::ipam::view::IpamView;
use crate::k8s::policycache::CachedPolicy;
use crate::status::metrics::Metrics;

mod admin;
mod pods;

/// A commit that did not reach the kernel.
#[derive(Debug, thiserror::Error)]
#[error("policy commit failed: {0}")]
pub struct CommitError(String);

/// The policy half of the dataplane.
pub struct PolicySync {
    engine: Engine,
    sink: FastSink,
    // The pods are the engine's (`engine.state().pods`): one copy of each
    // PodInfo, not a mirror beside it (docs/scale.md, "Where the memory goes").
    /// What each pod was last converted from (not kept for plain pods of
    /// other nodes: see `pods::Converted`).
    converted: HashMap<crate::k8s::endpointcache::PodName, pods::Converted>,
    /// Pods put in the engine outside a pass (by EndpointUp) that no pass
    /// has converted since.
    outside: std::collections::HashSet<PodKey>,
    /// Passes of `update` so far.
    pass: u32,
    /// The PodEndpoint cache's number the last pass read up to (None:
    /// the next pass reads every endpoint).
    endpoint_seq: Option<u64>,
    /// What decided which endpoints the last pass took.
    context: Option<pods::Context>,
    /// Passes that visited every pod.
    full_passes: u64,
    /// The pods EndpointUp gave addresses for at the last pass.
    registered: std::collections::HashSet<(String, String)>,
    /// The cluster's watch generations the last pass read.
    generations: Option<crate::k8s::cluster::Generations>,
    /// The IPAM view's addresses the last pass used.
    pod_ips: crate::k8s::ipam::podips::PodIps,
    namespaces: BTreeMap<String, NamespaceInfo>,
    /// The policy cache's entries the last pass handed to the engine (the
    /// cache makes a new entry exactly when a policy changes).
    policies: BTreeMap<PolicyKey, Arc<CachedPolicy>>,
    endpoints: BTreeMap<PodKey, LocalEndpoint>,
    /// AdminNetworkPolicies, BaselineAdminNetworkPolicies and Nodes last
    /// passed on, by name, with their resourceVersions.
    admin: admin::Seen,
    issues: Vec<String>,
}

impl PolicySync {
    /// An engine for `node` with its own addresses (always allowed to and
    /// from local pods).
    pub fn new(node: &str, node_addrs: Vec<IpAddr>) -> PolicySync {
        let mut engine = Engine::new(NodeContext::new(node));
        engine.set_node_addrs(node_addrs);
        PolicySync {
            engine,
            // Opened here, in the node's namespace, like the nft session.
            sink: FastSink::new(NftSession::new()),
            converted: HashMap::new(),
            outside: Default::default(),
            pass: 0,
            endpoint_seq: None,
            context: None,
            full_passes: 0,
            registered: Default::default(),
            generations: None,
            pod_ips: Default::default(),
            namespaces: BTreeMap::new(),
            policies: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            admin: admin::Seen::default(),
            issues: Vec::new(),
        }
    }

    /// Turns denied-flow logging on (log rules before every drop, read by
    /// `dataplane::nflog`). Call before the first update: the engine starts
    /// over.
    pub fn set_deny_log(&mut self, log: Option<policy::flowlog::DenyLog>) {
        let mut ctx = self.engine.node().clone();
        ctx.deny_log = log;
        self.engine = Engine::new(ctx);
    }

    /// Brings the engine's view up to date with the cluster, the IPAM view
    /// and the endpoints EndpointUp registered. Cheap when little changed:
    /// only differing objects are passed on.
    pub fn update(
        &mut self,
        cluster: &Cluster,
        view: &IpamView,
        registry: &BTreeMap<String, Endpoint>,
    ) {
        // Which kinds moved since the last pass (read before the caches:
        // what they hold then includes every change counted). A kind whose
        // count is 0 has had no watch event counted at all (a detached
        // cluster in tests is fed without counting): always read.
        let gens = cluster.generations();
        let last = self.generations.take();
        let moved =
            |k: Kind| gens.of(k) == 0 || last.as_ref().is_none_or(|g| g.of(k) != gens.of(k));

        // Outgoing NAT, from the IPPools (same table, same transaction).
        self.engine.set_nat(nat_outgoing(&cluster.pools.state()));

        // Namespaces.
        if moved(Kind::Namespace) {
            self.update_namespaces(cluster);
        }

        // Pods, with the addresses IPAM and EndpointUp know.
        self.update_pods(cluster, view, registry, moved(Kind::Node));

        // Policies (compared by resourceVersion; the engine compares specs).
        if moved(Kind::NetworkPolicy) {
            self.update_policies(cluster);
        }

        // AdminNetworkPolicies, the BaselineAdminNetworkPolicy, and the
        // Nodes their `nodes` peers select.
        self.admin.update(
            &mut self.engine,
            cluster,
            [
                moved(Kind::AdminNetworkPolicy),
                moved(Kind::BaselineAdminNetworkPolicy),
                moved(Kind::Node),
            ],
        );
        self.generations = Some(gens);

        self.update_endpoints(view, registry);
    }

    fn update_namespaces(&mut self, cluster: &Cluster) {
        let mut seen = BTreeMap::new();
        for ns in cluster.namespaces.state() {
            match NamespaceInfo::from_k8s(&ns) {
                Ok(info) => {
                    seen.insert(info.name.clone(), info);
                }
                Err(e) => tracing::warn!(error = %e, "namespace ignored by policy"),
            }
        }
        for (name, info) in &seen {
            if self.namespaces.get(name) != Some(info) {
                self.engine.upsert_namespace(info.clone());
            }
        }
        for name in self.namespaces.keys() {
            if !seen.contains_key(name) {
                self.engine.remove_namespace(name);
            }
        }
        self.namespaces = seen;
    }

    fn update_policies(&mut self, cluster: &Cluster) {
        let mut seen = BTreeMap::new();
        for e in cluster.policies.state() {
            if !self
                .policies
                .get(&e.key)
                .is_some_and(|old| Arc::ptr_eq(old, &e))
            {
                self.engine
                    .upsert_prepared(e.key.clone(), e.prepared.clone());
            }
            seen.insert(e.key.clone(), e);
        }
        for key in self.policies.keys() {
            if !seen.contains_key(key) {
                self.engine.remove_policy(key);
            }
        }
        self.policies = seen;
    }

    /// Local endpoints: EndpointUp's, and (after a restart) IPAM's.
    fn update_endpoints(&mut self, view: &IpamView, registry: &BTreeMap<String, Endpoint>) {
        let mut eps: BTreeMap<PodKey, LocalEndpoint> = BTreeMap::new();
        for a in &view.local {
            let (pod, standalone) = endpoint_key(&a.namespace, &a.pod, &a.handle);
            let e = eps.entry(pod.clone()).or_insert_with(|| LocalEndpoint {
                standalone,
                iface: a.host_if.clone(),
                pod,
                ips: Vec::new(),
            });
            if !e.ips.contains(&a.ip) {
                e.ips.push(a.ip);
            }
        }
        for ep in registry.values() {
            let (pod, standalone) = endpoint_key(&ep.namespace, &ep.pod, &ep.handle);
            let e = eps.entry(pod.clone()).or_insert_with(|| LocalEndpoint {
                standalone,
                iface: ep.host_if.clone(),
                pod,
                ips: Vec::new(),
            });
            e.iface = ep.host_if.clone();
            for ip in &ep.ips {
                if !e.ips.contains(ip) {
                    e.ips.push(*ip);
                }
            }
        }
        for e in eps.values_mut() {
            e.ips.sort();
        }
        for (key, ep) in &eps {
            if self.endpoints.get(key) != Some(ep) {
                self.engine.upsert_endpoint(ep.clone());
            }
        }
        for key in self.endpoints.keys() {
            if !eps.contains_key(key) {
                self.engine.remove_endpoint(key);
            }
        }
        self.endpoints = eps;
    }

    /// Adds one pod as EndpointUp describes it (Pod object fetched by the
    /// caller if the watch has not delivered it yet).
    pub fn upsert_pod(&mut self, info: PodInfo) {
        let key = info.key.clone();
        // A no-op when the engine already has it.
        self.engine.upsert_pod(info);
        self.put_outside(&key);
    }

    /// EndpointUp's targeted update: this pod (with the addresses the CNI
    /// gave it) and its endpoint, nothing else; the next full `update`
    /// agrees with it. A standalone workload (`info` None) has no pod.
    pub fn endpoint_up(&mut self, info: Option<PodInfo>, ep: LocalEndpoint) {
        if let Some(mut info) = info {
            for ip in &ep.ips {
                if !info.ips.contains(ip) {
                    info.ips.push(*ip);
                }
            }
            info.ips.sort();
            self.upsert_pod(info);
        }
        if self.endpoints.get(&ep.pod) != Some(&ep) {
            self.engine.upsert_endpoint(ep.clone());
            self.endpoints.insert(ep.pod.clone(), ep);
        }
    }

    /// Whether the engine knows this pod.
    pub fn knows_pod(&self, key: &PodKey) -> bool {
        self.engine.state().pods.contains_key(key)
    }

    /// Applies pending changes to the kernel in one transaction.
    pub fn commit(&mut self, metrics: &Metrics) -> Result<(), CommitError> {
        let started = Instant::now();
        let native_before = self.sink.native;
        // A heavy commit (a full render, many endpoints) leaves the worker
        // thread to the runtime's other tasks; a light one (a pod's
        // endpoint, a few elements: tens of microseconds) is not worth the
        // hand-over, which wakes or starts another thread.
        let res = if self.engine.commit_is_heavy() {
            tokio::task::block_in_place(|| self.engine.commit(&mut self.sink))
        } else {
            self.engine.commit(&mut self.sink)
        };
        metrics
            .policy_native_batches
            .inc_by(self.sink.native - native_before);
        match res {
            Ok(stats) => {
                if !stats.noop {
                    metrics
                        .policy_sync_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(
                        full = stats.full,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "policy committed"
                    );
                }
                metrics.policy_endpoints.set(self.endpoints.len() as i64);
                let issues: Vec<String> = self
                    .engine
                    .issues()
                    .map(|i| format!("{i:?}"))
                    .chain(self.admin.unreadable())
                    .collect();
                if issues != self.issues {
                    for i in &issues {
                        tracing::warn!(issue = %i, "policy problem");
                    }
                    self.issues = issues;
                }
                Ok(())
            }
            Err(e) => {
                metrics.policy_sync_failures.inc();
                Err(CommitError(crate::logging::chain(&e)))
            }
        }
    }

    /// Current policy problems (invalid selectors, bad interfaces, ...).
    pub fn issues(&self) -> &[String] {
        &self.issues
    }

    /// The engine (its ruleset, node, pods), for `policy trace`.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Outgoing NAT as the IPPools say: the pools with `natOutgoing` (by their
/// family's default when unset) masquerade to destinations outside every
/// pool, disabled pools included. A pool whose CIDR does not parse is left
/// out of both (and reported by the IPAM side).
pub fn nat_outgoing(pools: &[std::sync::Arc<crate::k8s::crd::IPPool>]) -> policy::NatOutgoing {
    let mut nat = policy::NatOutgoing::default();
    for p in pools {
        let Ok(net) = p.spec.cidr.parse() else {
            continue;
        };
        nat.pools.push(net);
        // A disabled pool's existing pods keep their NAT.
        if p.spec.effective_nat_outgoing() {
            nat.sources.push(net);
        }
    }
    nat
}

/// The policy engine's key of a local endpoint: its pod, or for a
/// standalone workload (no pod identity) `("", handle)`, which no Pod can
/// have (a namespace name is never empty).
pub fn endpoint_key(namespace: &str, pod: &str, handle: &str) -> (PodKey, bool) {
    if namespace.is_empty() && pod.is_empty() {
        (PodKey::new("", handle), true)
    } else {
        (PodKey::new(namespace, pod), false)
    }
}

/// Pod names for denied-flow records: the IPAM view's addresses (known
/// from allocation on), then the Pod cache's `status.podIPs`, then the
/// PodEndpoints' addresses (with `--pod-source=endpoints` the Pod cache
/// holds this node's pods only; otherwise there are no PodEndpoints). A
/// scan per logged packet: the log is rate-limited.
pub struct PodsByIp {
    /// The Pod cache.
    pub pods: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>,
    /// The PodEndpoint cache.
    pub endpoints: crate::k8s::endpointcache::EndpointCache,
    /// The IPAM view.
    pub view: tokio::sync::watch::Receiver<Arc<IpamView>>,
}

impl policy::flowlog::PodResolver for PodsByIp {
    fn pod_of(&self, ip: IpAddr) -> Option<PodKey> {
        let from_ipam = self
            .view
            .borrow()
            .pod_ips
            .iter()
            .find(|(_, ips)| ips.contains(&ip))
            .map(|(pod, _)| PodKey::new(&*pod.namespace, &*pod.name));
        let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            PodKey::new(
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default(),
            )
        };
        from_ipam
            .or_else(|| {
                let text = ip.to_string();
                self.pods.state().iter().find_map(|p| {
                    let st = p.status.as_ref()?;
                    let host = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.host_network)
                        .unwrap_or(false);
                    let has = st.pod_ips.iter().flatten().any(|a| a.ip == text);
                    (has && !host).then(|| key(&p.metadata))
                })
            })
            .or_else(|| {
                self.endpoints
                    .find(|e| e.addresses().contains(&ip))
                    .map(|e| e.pod.key.clone())
            })
    }
}

#[cfg(test)]
mod pods_by_ip_tests {
    use super::*;
    use kube::runtime::watcher::Event;
    use policy::flowlog::PodResolver as _;

    /// A remote pod known only from its PodEndpoint is named; a local Pod
    /// is found from its status.
    #[test]
    fn resolves_local_pods_and_remote_endpoints() {
        let (pods, mut pods_w) = kube::runtime::reflector::store();
        let (endpoints, mut eps_w) = crate::k8s::endpointcache::cache();
        let (_tx, view) = tokio::sync::watch::channel(Arc::new(IpamView::default()));
        let local: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "here", "namespace": "ns"},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIPs": [{"ip": "198.19.0.3"}]}
        }))
        .expect("pod");
        pods_w.apply_watcher_event(&Event::Apply(local));
        let mut ep = crate::k8s::crd::PodEndpoint::new(
            "there",
            crate::k8s::crd::PodEndpointSpec {
                node: "n2".into(),
                addresses: vec!["2001:db8::7".parse().expect("ip")],
                ..Default::default()
            },
        );
        ep.metadata.namespace = Some("ns".into());
        eps_w.apply_watcher_event(&Event::Apply(ep));
        let r = PodsByIp {
            pods,
            endpoints,
            view,
        };
        assert_eq!(
            r.pod_of("198.19.0.3".parse().expect("ip")),
            Some(PodKey::new("ns", "here"))
        );
        assert_eq!(
            r.pod_of("2001:db8::7".parse().expect("ip")),
            Some(PodKey::new("ns", "there"))
        );
        assert_eq!(r.pod_of("198.19.0.99".parse().expect("ip")), None);
    }
}
