//! NetworkPolicy for the dataplane controller: mirrors the cluster (pods,
//! namespaces, policies) and this node's endpoints into the incremental
//! [`policy::Engine`], as per-object upserts and removals, and commits one
//! nftables transaction at a time.
//!
//! Pod addresses are the union of what the IPAM blocks record (known the
//! moment an address is allocated, before kubelet reports `podIPs`), what
//! EndpointUp said, and `status.podIPs`; so a new pod is in every selector
//! set before its CNI ADD returns.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use policy::{Engine, LocalEndpoint, NamespaceInfo, NodeContext, PodInfo, PodKey, PolicyKey};

use crate::cluster::Cluster;
use crate::controller::Endpoint;
use crate::dataplane::{FastSink, NftSession};
use crate::ipamview::IpamView;
use crate::metrics::Metrics;

/// A commit that did not reach the kernel.
#[derive(Debug, thiserror::Error)]
#[error("policy commit failed: {0}")]
pub struct CommitError(String);

/// The policy half of the dataplane.
pub struct PolicySync {
    engine: Engine,
    sink: FastSink,
    pods: BTreeMap<PodKey, PodInfo>,
    /// resourceVersion and extra addresses each pod was converted with.
    converted: BTreeMap<PodKey, (String, Vec<IpAddr>)>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    policies: BTreeMap<PolicyKey, String>,
    endpoints: BTreeMap<PodKey, LocalEndpoint>,
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
            pods: BTreeMap::new(),
            converted: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            policies: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            issues: Vec::new(),
        }
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
        // Namespaces.
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

        // Endpoints registered by EndpointUp carry the freshest addresses.
        let mut registered: BTreeMap<PodKey, Vec<IpAddr>> = BTreeMap::new();
        for ep in registry.values().filter(|ep| !ep.standalone()) {
            registered
                .entry(PodKey::new(ep.namespace.clone(), ep.pod.clone()))
                .or_default()
                .extend(ep.ips.iter().copied());
        }

        // Pods, with addresses from IPAM and EndpointUp as well. A pod whose
        // object and extra addresses are unchanged since the last pass is
        // not converted again (this runs on every watch change).
        let mut seen = BTreeMap::new();
        let mut converted = BTreeMap::new();
        for pod in cluster.pods.state() {
            let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                continue;
            };
            let key = PodKey::new(ns.clone(), name.clone());
            let mut extra: Vec<IpAddr> = view
                .pod_ips
                .get(&(ns.clone(), name.clone()))
                .into_iter()
                .flatten()
                .chain(registered.get(&key).into_iter().flatten())
                .copied()
                .collect();
            extra.sort();
            extra.dedup();
            let rv = pod.metadata.resource_version.clone().unwrap_or_default();
            if let (Some((old_rv, old_extra)), Some(info)) =
                (self.converted.get(&key), self.pods.get(&key))
                && *old_rv == rv
                && *old_extra == extra
            {
                seen.insert(key.clone(), info.clone());
                converted.insert(key, (rv, extra));
                continue;
            }
            let mut info = match PodInfo::from_k8s(&pod) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(error = %e, "pod ignored by policy");
                    continue;
                }
            };
            for ip in &extra {
                if !info.ips.contains(ip) {
                    info.ips.push(*ip);
                }
            }
            info.ips.sort();
            converted.insert(key.clone(), (rv, extra));
            seen.insert(key, info);
        }
        for (key, info) in &seen {
            if self.pods.get(key) != Some(info) {
                self.engine.upsert_pod(info.clone());
            }
        }
        for key in self.pods.keys() {
            if !seen.contains_key(key) {
                self.engine.remove_pod(key);
            }
        }
        self.pods = seen;
        self.converted = converted;

        // Policies (compared by resourceVersion; the engine compares specs).
        let mut seen = BTreeMap::new();
        for np in cluster.policies.state() {
            let Some(key) = PolicyKey::of(&np) else {
                continue;
            };
            let rv = np.metadata.resource_version.clone().unwrap_or_default();
            if self.policies.get(&key) != Some(&rv) {
                self.engine.upsert_policy(key.clone(), (*np).clone());
            }
            seen.insert(key, rv);
        }
        for key in self.policies.keys() {
            if !seen.contains_key(key) {
                self.engine.remove_policy(key);
            }
        }
        self.policies = seen;

        // Local endpoints: EndpointUp's, and (after a restart) IPAM's.
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
        if self.pods.get(&info.key) != Some(&info) {
            self.engine.upsert_pod(info.clone());
            self.pods.insert(info.key.clone(), info);
        }
    }

    /// EndpointUp's targeted update: this pod (with the addresses the CNI
    /// gave it) and its endpoint, nothing else; the next full `update`
    /// agrees with it.
    pub fn endpoint_up(&mut self, mut info: PodInfo, ep: LocalEndpoint) {
        for ip in &ep.ips {
            if !info.ips.contains(ip) {
                info.ips.push(*ip);
            }
        }
        info.ips.sort();
        self.upsert_pod(info);
        if self.endpoints.get(&ep.pod) != Some(&ep) {
            self.engine.upsert_endpoint(ep.clone());
            self.endpoints.insert(ep.pod.clone(), ep);
        }
    }

    /// EndpointUp of a standalone workload: its endpoint only (no pod).
    pub fn standalone_up(&mut self, ep: LocalEndpoint) {
        if self.endpoints.get(&ep.pod) != Some(&ep) {
            self.engine.upsert_endpoint(ep.clone());
            self.endpoints.insert(ep.pod.clone(), ep);
        }
    }

    /// Whether the engine knows this pod.
    pub fn knows_pod(&self, key: &PodKey) -> bool {
        self.pods.contains_key(key)
    }

    /// Applies pending changes to the kernel in one transaction.
    pub fn commit(&mut self, metrics: &Metrics) -> Result<(), CommitError> {
        let started = Instant::now();
        let native_before = self.sink.native;
        let res = tokio::task::block_in_place(|| self.engine.commit(&mut self.sink));
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
                let issues: Vec<String> = self.engine.issues().map(|i| format!("{i:?}")).collect();
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
