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
use crate::k8s::cluster::Cluster;
use crate::k8s::ipam::view::IpamView;
use crate::status::metrics::Metrics;

mod admin;

/// A commit that did not reach the kernel.
#[derive(Debug, thiserror::Error)]
#[error("policy commit failed: {0}")]
pub struct CommitError(String);

/// The Pod a [`PodInfo`] was converted from: its resourceVersion and the
/// addresses IPAM and EndpointUp added, and the `update` pass that last saw
/// it in the cluster.
struct Converted {
    rv: String,
    /// From the IPAM view.
    ipam: Vec<IpAddr>,
    /// IPAM's and EndpointUp's, sorted.
    extra: Vec<IpAddr>,
    pass: u64,
}

/// The policy half of the dataplane.
pub struct PolicySync {
    engine: Engine,
    sink: FastSink,
    pods: BTreeMap<PodKey, PodInfo>,
    /// What each pod was last converted from.
    converted: HashMap<PodKey, Converted>,
    /// Passes of `update` so far.
    pass: u64,
    /// The IPAM view's addresses the last pass used.
    pod_ips: Arc<BTreeMap<(String, String), Vec<IpAddr>>>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    policies: BTreeMap<PolicyKey, String>,
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
            pods: BTreeMap::new(),
            converted: HashMap::new(),
            pass: 0,
            pod_ips: Arc::default(),
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
        // Outgoing NAT, from the IPPools (same table, same transaction).
        self.engine.set_nat(nat_outgoing(&cluster.pools.state()));

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
        // neither converted nor copied again: this runs on every watched
        // change, over every pod of the cluster.
        self.pass += 1;
        let pass = self.pass;
        let mut extra: Vec<IpAddr> = Vec::new();
        let mut ipam: Vec<IpAddr> = Vec::new();
        let mut ipam_key = (String::new(), String::new());
        let mut seen = 0;
        // The same IPAM view as last pass: each pod's IPAM addresses are the
        // ones recorded then (no lookup in the cluster-wide map).
        let same_view = Arc::ptr_eq(&view.pod_ips, &self.pod_ips);
        self.pod_ips = view.pod_ips.clone();
        for pod in cluster.pods.state() {
            let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                continue;
            };
            let key = PodKey::new(ns.clone(), name.clone());
            let known = self.converted.get_mut(&key);
            ipam.clear();
            match &known {
                Some(c) if same_view => ipam.extend(&c.ipam),
                _ => {
                    ipam_key.0.clone_from(ns);
                    ipam_key.1.clone_from(name);
                    ipam.extend(view.pod_ips.get(&ipam_key).into_iter().flatten());
                }
            }
            extra.clear();
            extra.extend(&ipam);
            extra.extend(registered.get(&key).into_iter().flatten());
            extra.sort();
            extra.dedup();
            let rv = pod.metadata.resource_version.as_deref().unwrap_or_default();
            seen += 1;
            // Every converted pod is in `pods` (both go together below).
            if let Some(c) = known
                && c.rv == rv
                && c.extra == extra
            {
                c.pass = pass;
                // Same union, other split (an address IPAM now records that
                // only EndpointUp had): the next same-view pass reads this.
                if !same_view && c.ipam != ipam {
                    c.ipam.clone_from(&ipam);
                }
                continue;
            }
            let mut info = match PodInfo::from_k8s(&pod) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(error = %e, "pod ignored by policy");
                    seen -= 1;
                    continue;
                }
            };
            for ip in &extra {
                if !info.ips.contains(ip) {
                    info.ips.push(*ip);
                }
            }
            info.ips.sort();
            if self.pods.get(&key) != Some(&info) {
                self.engine.upsert_pod(info.clone());
                self.pods.insert(key.clone(), info);
            }
            self.converted.insert(
                key,
                Converted {
                    rv: rv.to_string(),
                    ipam: ipam.clone(),
                    extra: extra.clone(),
                    pass,
                },
            );
        }
        // Gone from the cluster (or only ever known from EndpointUp); when
        // every known pod was seen, nothing is.
        if seen != self.pods.len() || seen != self.converted.len() {
            let (engine, converted) = (&mut self.engine, &self.converted);
            self.pods.retain(|key, _| {
                let keep = converted.get(key).is_some_and(|c| c.pass == pass);
                if !keep {
                    engine.remove_pod(key);
                }
                keep
            });
            self.converted.retain(|_, c| c.pass == pass);
        }

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

        // AdminNetworkPolicies, the BaselineAdminNetworkPolicy, and the
        // Nodes their `nodes` peers select.
        self.admin.update(&mut self.engine, cluster);

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
/// from allocation on), then the Pod cache's `status.podIPs` (a scan per
/// logged packet: the log is rate-limited).
pub struct PodsByIp {
    pub pods: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>,
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
            .map(|((ns, name), _)| PodKey::new(ns, name));
        from_ipam.or_else(|| {
            let text = ip.to_string();
            self.pods.state().iter().find_map(|p| {
                let st = p.status.as_ref()?;
                let host = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false);
                let has = st.pod_ips.iter().flatten().any(|a| a.ip == text);
                (has && !host).then(|| {
                    PodKey::new(
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                        p.metadata.name.as_deref().unwrap_or_default(),
                    )
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::watcher::Event;

    fn pod(name: &str, rv: &str, app: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "labels": {"app": app}},
            "spec": {"nodeName": "n2", "containers": [{"name": "c"}]},
            "status": {"podIP": "198.19.0.9", "podIPs": [{"ip": "198.19.0.9"}]}
        }))
        .expect("pod")
    }

    fn app_of(ps: &PolicySync, name: &str) -> Option<String> {
        ps.engine
            .state()
            .pods
            .get(&PodKey::new("ns", name))
            .and_then(|p| p.labels.get("app").cloned())
    }

    /// The incremental pass agrees with the cluster: new, changed, gone,
    /// and EndpointUp-only pods (not in the watch) are dropped, as before.
    #[tokio::test]
    async fn update_follows_the_pod_store_incrementally() {
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("url"),
        ))
        .expect("client");
        let (cluster, mut w) = Cluster::detached(client);
        let mut ps = PolicySync::new("n1", Vec::new());
        let mut view = IpamView {
            synced: true,
            ..IpamView::default()
        };
        let reg = BTreeMap::new();
        for n in ["a", "b", "c"] {
            w.pods.apply_watcher_event(&Event::Apply(pod(n, "1", "x")));
        }
        ps.update(&cluster, &view, &reg);
        assert_eq!(app_of(&ps, "b").as_deref(), Some("x"));
        // Unchanged: nothing re-sent, still known.
        ps.update(&cluster, &view, &reg);
        assert!(
            ["a", "b", "c"]
                .iter()
                .all(|n| ps.knows_pod(&PodKey::new("ns", *n)))
        );
        // A label change (new resourceVersion) and a deletion.
        w.pods
            .apply_watcher_event(&Event::Apply(pod("b", "2", "y")));
        w.pods
            .apply_watcher_event(&Event::Delete(pod("c", "1", "x")));
        ps.update(&cluster, &view, &reg);
        assert_eq!(app_of(&ps, "b").as_deref(), Some("y"));
        assert!(!ps.knows_pod(&PodKey::new("ns", "c")));
        // An IPAM address for an unchanged pod reaches it.
        std::sync::Arc::make_mut(&mut view.pod_ips).insert(
            ("ns".into(), "a".into()),
            vec!["198.19.0.44".parse().expect("ip")],
        );
        ps.update(&cluster, &view, &reg);
        let ips = &ps.engine.state().pods[&PodKey::new("ns", "a")].ips;
        assert!(ips.contains(&"198.19.0.44".parse().expect("ip")), "{ips:?}");
        // An address EndpointUp gave, then IPAM records it too (same union),
        // then the endpoint goes: the address stays, it is IPAM's now.
        let ep = crate::endpoints::Endpoint {
            container_id: "cb".into(),
            namespace: "ns".into(),
            pod: "b".into(),
            host_if: "cali0000000000b".into(),
            ips: vec!["198.19.0.55".parse().expect("ip")],
            handle: "net.cb".into(),
            netns: String::new(),
            ifname: "eth0".into(),
        };
        let with_ep: BTreeMap<String, crate::endpoints::Endpoint> =
            [("net.cb".to_string(), ep)].into();
        ps.update(&cluster, &view, &with_ep);
        std::sync::Arc::make_mut(&mut view.pod_ips).insert(
            ("ns".into(), "b".into()),
            vec!["198.19.0.55".parse().expect("ip")],
        );
        ps.update(&cluster, &view, &with_ep);
        ps.update(&cluster, &view, &reg);
        let ips = &ps.engine.state().pods[&PodKey::new("ns", "b")].ips;
        assert!(ips.contains(&"198.19.0.55".parse().expect("ip")), "{ips:?}");
        // Known only from EndpointUp (the watch has not delivered it): the
        // next full pass drops it, as it always did.
        let extra = PodInfo::from_k8s(&pod("d", "1", "z")).expect("info");
        ps.upsert_pod(extra);
        assert!(ps.knows_pod(&PodKey::new("ns", "d")));
        ps.update(&cluster, &view, &reg);
        assert!(!ps.knows_pod(&PodKey::new("ns", "d")));
        assert!(ps.knows_pod(&PodKey::new("ns", "a")));
    }
}
