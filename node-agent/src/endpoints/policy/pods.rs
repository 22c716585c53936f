//! The pod half of [`PolicySync::update`]: mirrors every pod of the
//! cluster into the engine, with the addresses IPAM recorded and EndpointUp
//! gave added to its own, converting only the pods whose object or
//! extra addresses changed since the last pass (this runs on every watched
//! change, over every pod of the cluster).
//!
//! Where the pods come from ([`PodSource`]): with `Pods`, every Pod object;
//! with `Endpoints`, this node's Pod objects (the Pod watch holds only
//! them) and, for the other nodes, their PodEndpoints. A PodEndpoint is
//! left out when it names this node or a pod that is here (the live Pod
//! object wins: no pod is counted twice), or when its node no longer exists
//! (a stale writer's object must not keep an address in policy; owner
//! garbage collection deletes it with its Pod).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use policy::{PodInfo, PodKey};

use super::PolicySync;
use crate::endpoints::Endpoint;
use crate::k8s::cluster::{Cluster, PodSource};
use crate::k8s::endpointcache::{CachedEndpoint, NamePair, PodName};
use crate::k8s::ipam::view::IpamView;

/// One pod as a source has it.
enum Source<'a> {
    /// A Pod object.
    Pod(&'a k8s_openapi::api::core::v1::Pod),
    /// Another node's PodEndpoint.
    Endpoint(&'a Arc<CachedEndpoint>),
}

impl Source<'_> {
    fn key(&self) -> Option<(&str, &str)> {
        match self {
            Source::Pod(p) => Some((
                p.metadata.namespace.as_deref()?,
                p.metadata.name.as_deref()?,
            )),
            Source::Endpoint(e) => Some((&e.namespace, &e.name)),
        }
    }

    fn resource_version(&self) -> &str {
        match self {
            Source::Pod(p) => p.metadata.resource_version.as_deref().unwrap_or_default(),
            Source::Endpoint(e) => &e.resource_version,
        }
    }

    fn info(&self) -> Result<PodInfo, String> {
        match self {
            Source::Pod(p) => PodInfo::from_k8s(p).map_err(|e| e.to_string()),
            Source::Endpoint(e) => e.to_pod_info(),
        }
    }
}

/// Whether policy takes this PodEndpoint for a pod of another node (see
/// the module doc): not this node's, not a pod in `local`, of a node in
/// `nodes` (the Nodes that exist).
pub fn takes_endpoint(
    me: &str,
    local: &HashSet<(&str, &str)>,
    nodes: &HashSet<&str>,
    e: &CachedEndpoint,
) -> bool {
    let node = &*e.node;
    node != me && !local.contains(&(&*e.namespace, &*e.name)) && nodes.contains(node)
}

/// What a [`PodInfo`] was converted from: the source, the addresses IPAM
/// and EndpointUp added, and the `update` pass that last saw it in the
/// cluster. One per pod of the cluster: kept small (docs/scale.md).
pub(super) struct Converted {
    from: Origin,
    /// The extra addresses, where they are not simply the PodEndpoint's
    /// own ([`Converted::own`]): for a remote pod they are, and then
    /// nothing is stored (150k such pods at 5,000 nodes).
    addrs: Option<Box<Addrs>>,
    pass: u32,
}

/// A pod's addresses beyond its object's.
#[derive(Debug, PartialEq, Eq)]
struct Addrs {
    /// IPAM's and EndpointUp's, sorted.
    extra: Box<[IpAddr]>,
    /// From the IPAM view, where it is not `extra` as it is (EndpointUp
    /// added some, or the view lists them in another order).
    ipam: Option<Box<[IpAddr]>>,
}

/// The object a pod was converted from.
enum Origin {
    /// A Pod, at this resourceVersion.
    Pod(Box<str>),
    /// A PodEndpoint: the cache's entry itself (the cache makes a new one
    /// when the object changes, and keeps this one while it does not).
    Endpoint(Arc<CachedEndpoint>),
}

impl Converted {
    fn new(from: Origin, extra: &[IpAddr], ipam: &[IpAddr], pass: u32) -> Converted {
        let mut c = Converted {
            from,
            addrs: None,
            pass,
        };
        c.set_addrs(extra, ipam);
        c
    }

    /// The PodEndpoint's own addresses, when it is the source and lists
    /// them sorted without repeats (as the writer does): what the extra
    /// and IPAM addresses of a remote pod are.
    fn own(&self) -> Option<&[IpAddr]> {
        match &self.from {
            Origin::Endpoint(e) if e.addresses.windows(2).all(|w| w[0] < w[1]) => {
                Some(&e.addresses)
            }
            _ => None,
        }
    }

    fn extra(&self) -> &[IpAddr] {
        match &self.addrs {
            Some(a) => &a.extra,
            None => self.own().unwrap_or_default(),
        }
    }

    fn ipam(&self) -> &[IpAddr] {
        match &self.addrs {
            Some(a) => a.ipam.as_deref().unwrap_or(&a.extra),
            None => self.own().unwrap_or_default(),
        }
    }

    fn set_addrs(&mut self, extra: &[IpAddr], ipam: &[IpAddr]) {
        self.addrs = if self.own() == Some(extra) && ipam == extra {
            None
        } else {
            Some(Box::new(Addrs {
                extra: extra.into(),
                ipam: (ipam != extra).then(|| ipam.into()),
            }))
        };
    }

    fn same_source(&self, src: &Source<'_>) -> bool {
        match (&self.from, src) {
            (Origin::Pod(rv), Source::Pod(_)) => **rv == *src.resource_version(),
            (Origin::Endpoint(a), Source::Endpoint(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl PolicySync {
    /// Brings the engine's pods up to date (see the module doc).
    pub(super) fn update_pods(
        &mut self,
        cluster: &Cluster,
        view: &IpamView,
        registry: &BTreeMap<String, Endpoint>,
    ) {
        // Endpoints registered by EndpointUp carry the freshest addresses.
        let mut registered: HashMap<(&str, &str), Vec<IpAddr>> = HashMap::new();
        for ep in registry.values().filter(|ep| !ep.standalone()) {
            registered
                .entry((&ep.namespace, &ep.pod))
                .or_default()
                .extend(ep.ips.iter().copied());
        }

        // Pods, with addresses from IPAM and EndpointUp as well. A pod whose
        // object and extra addresses are unchanged since the last pass is
        // neither converted nor copied again: this runs on every watched
        // change, over every pod of the cluster.
        // Only compared for equality with the current pass, and every
        // entry a pass does not see is dropped at its end: wrapping is
        // harmless.
        self.pass = self.pass.wrapping_add(1);
        let pass = self.pass;
        let mut extra: Vec<IpAddr> = Vec::new();
        let mut ipam: Vec<IpAddr> = Vec::new();
        let mut seen = 0;
        // Where the IPAM view's addresses are the same as last pass (the
        // pod's shard of them was not rewritten since), each pod's IPAM
        // addresses are the ones recorded then: no lookup in the
        // cluster-wide map.
        let last_ips = std::mem::replace(&mut self.pod_ips, view.pod_ips.clone());
        let ips_changed = view.pod_ips.changed_since(&last_ips);
        let pods = cluster.pods.state();
        let endpoints = match cluster.pod_source {
            PodSource::Pods => Vec::new(),
            PodSource::Endpoints => cluster.pod_endpoints.state(),
        };
        let node_objects = match cluster.pod_source {
            PodSource::Pods => Vec::new(),
            PodSource::Endpoints => cluster.nodes.state(),
        };
        let nodes: HashSet<&str> = node_objects
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let local: HashSet<(&str, &str)> = pods
            .iter()
            .filter_map(|p| {
                Some((
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?,
                ))
            })
            .collect();
        let me = self.engine.node().node_name.clone();
        // Sized once for what may come (a growing map holds its old and
        // new table at once: at 150k pods the first pass's peak).
        self.converted
            .reserve((pods.len() + endpoints.len()).saturating_sub(self.converted.len()));
        let sources = pods.iter().map(|p| Source::Pod(p)).chain(
            endpoints
                .iter()
                .filter(|e| takes_endpoint(&me, &local, &nodes, e))
                .map(Source::Endpoint),
        );
        for pod in sources {
            let Some((ns, name)) = pod.key() else {
                continue;
            };
            let known = self.converted.get_mut(&(ns, name) as &dyn NamePair);
            ipam.clear();
            match &known {
                Some(c) if !ips_changed.may_differ(ns, name) => ipam.extend(c.ipam()),
                _ => ipam.extend(view.pod_ips.get(ns, name).into_iter().flatten()),
            }
            extra.clear();
            extra.extend(&ipam);
            extra.extend(registered.get(&(ns, name)).into_iter().flatten());
            extra.sort();
            extra.dedup();
            seen += 1;
            // Every converted pod is in `pods` (both go together below).
            if let Some(c) = known
                && c.same_source(&pod)
                && c.extra() == extra.as_slice()
            {
                c.pass = pass;
                // Same union, other split (an address IPAM now records that
                // only EndpointUp had): the next pass that finds the pod's
                // shard unchanged reads this.
                if c.ipam() != ipam.as_slice() {
                    c.set_addrs(&extra, &ipam);
                }
                continue;
            }
            let mut info = match pod.info() {
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
            // A no-op when the engine already has it.
            self.engine.upsert_pod(info);
            let (key, from) = match &pod {
                Source::Pod(_) => (
                    PodName::new(ns, name),
                    Origin::Pod(pod.resource_version().into()),
                ),
                Source::Endpoint(e) => (e.pod_name(), Origin::Endpoint(Arc::clone(e))),
            };
            self.converted
                .insert(key, Converted::new(from, &extra, &ipam, pass));
        }
        // Gone from the cluster (or only ever known from EndpointUp); when
        // every known pod was seen, nothing is.
        if seen != self.engine.state().pods.len() || seen != self.converted.len() {
            let converted = &self.converted;
            let gone: Vec<PodKey> = self
                .engine
                .state()
                .pods
                .keys()
                .filter(|key| {
                    let pair: &dyn NamePair = &(&*key.namespace, &*key.name);
                    converted.get(pair).is_none_or(|c| c.pass != pass)
                })
                .cloned()
                .collect();
            for key in &gone {
                self.engine.remove_pod(key);
            }
            self.converted.retain(|_, c| c.pass == pass);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::PodSource;
    use crate::k8s::crd::PodEndpoint;
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
            .and_then(|p| p.labels.get("app").map(str::to_string))
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
        view.pod_ips.insert(
            &crate::k8s::endpointcache::PodName::new("ns", "a"),
            "198.19.0.44".parse().expect("ip"),
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
        view.pod_ips.insert(
            &crate::k8s::endpointcache::PodName::new("ns", "b"),
            "198.19.0.55".parse().expect("ip"),
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

    fn endpoint(name: &str, node: &str, rv: &str, app: &str, ip: &str) -> PodEndpoint {
        let mut e = PodEndpoint::new(
            name,
            crate::k8s::crd::PodEndpointSpec {
                node: node.into(),
                addresses: vec![ip.parse().expect("ip")],
                labels: [("app".to_string(), app.to_string())].into(),
                named_ports: Vec::new(),
            },
        );
        e.metadata.namespace = Some("ns".into());
        e.metadata.resource_version = Some(rv.into());
        e
    }

    fn node(name: &str) -> k8s_openapi::api::core::v1::Node {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("node")
    }

    /// A detached cluster in `--pod-source=endpoints`, node n1's
    /// PolicySync, a synced empty IPAM view and no registry.
    fn endpoints_mode() -> (
        Cluster,
        crate::k8s::cluster::DetachedWriters,
        PolicySync,
        IpamView,
        BTreeMap<String, Endpoint>,
    ) {
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("url"),
        ))
        .expect("client");
        let (mut cluster, w) = Cluster::detached(client);
        cluster.pod_source = PodSource::Endpoints;
        let view = IpamView {
            synced: true,
            ..IpamView::default()
        };
        (
            cluster,
            w,
            PolicySync::new("n1", Vec::new()),
            view,
            BTreeMap::new(),
        )
    }

    /// `--pod-source=endpoints`: local pods from their Pod objects, remote
    /// ones from PodEndpoints; an endpoint never overrides or doubles a
    /// local Pod, this node's own endpoints are ignored, and an endpoint
    /// whose node does not exist is left out (and dropped when its node
    /// goes).
    #[tokio::test]
    async fn endpoints_mode_takes_remote_pods_from_pod_endpoints() {
        let (mut cluster, mut w, mut ps, view, reg) = endpoints_mode();
        let mut local = pod("a", "1", "live");
        local.spec.as_mut().expect("spec").node_name = Some("n1".into());
        w.pods.apply_watcher_event(&Event::Apply(local));
        for n in ["n1", "n2"] {
            w.nodes.apply_watcher_event(&Event::Apply(node(n)));
        }
        for e in [
            // A stale endpoint of the local pod, written by another node.
            endpoint("a", "n2", "5", "stale", "198.19.9.1"),
            endpoint("b", "n2", "6", "x", "198.19.9.2"),
            // Node n3 does not exist.
            endpoint("c", "n3", "7", "x", "198.19.9.3"),
            // This node's own endpoint without a Pod (its writer deletes it).
            endpoint("d", "n1", "8", "x", "198.19.9.4"),
        ] {
            w.pod_endpoints.apply_watcher_event(&Event::Apply(e));
        }
        ps.update(&cluster, &view, &reg);
        assert_eq!(app_of(&ps, "a").as_deref(), Some("live"));
        let a = &ps.engine.state().pods[&PodKey::new("ns", "a")];
        assert_eq!(a.ips, vec!["198.19.0.9".parse::<IpAddr>().expect("ip")]);
        assert_eq!(app_of(&ps, "b").as_deref(), Some("x"));
        let b = &ps.engine.state().pods[&PodKey::new("ns", "b")];
        assert_eq!(b.ips, vec!["198.19.9.2".parse::<IpAddr>().expect("ip")]);
        assert_eq!(b.node_name.as_deref(), Some("n2"));
        assert!(!ps.knows_pod(&PodKey::new("ns", "c")));
        assert!(!ps.knows_pod(&PodKey::new("ns", "d")));
        assert_eq!(ps.engine.state().pods.len(), 2);
        // A remote label change.
        w.pod_endpoints.apply_watcher_event(&Event::Apply(endpoint(
            "b",
            "n2",
            "9",
            "y",
            "198.19.9.2",
        )));
        ps.update(&cluster, &view, &reg);
        assert_eq!(app_of(&ps, "b").as_deref(), Some("y"));
        // Node n3 appears: its endpoint counts; node n2 goes: b goes.
        w.nodes.apply_watcher_event(&Event::Apply(node("n3")));
        w.nodes.apply_watcher_event(&Event::Delete(node("n2")));
        ps.update(&cluster, &view, &reg);
        assert!(ps.knows_pod(&PodKey::new("ns", "c")));
        assert!(!ps.knows_pod(&PodKey::new("ns", "b")));
        // The local pod goes: its stale endpoint (n2, gone) does not
        // bring it back; the endpoint removed, the remote pod goes.
        w.pods
            .apply_watcher_event(&Event::Delete(pod("a", "1", "live")));
        w.pod_endpoints.apply_watcher_event(&Event::Delete(endpoint(
            "c",
            "n3",
            "7",
            "x",
            "198.19.9.3",
        )));
        ps.update(&cluster, &view, &reg);
        assert!(!ps.knows_pod(&PodKey::new("ns", "a")));
        assert!(!ps.knows_pod(&PodKey::new("ns", "c")));
        // In pods mode PodEndpoints are not read at all.
        cluster.pod_source = PodSource::Pods;
        w.nodes.apply_watcher_event(&Event::Apply(node("n2")));
        ps.update(&cluster, &view, &reg);
        assert!(ps.engine.state().pods.is_empty());
    }

    /// A remote pod whose addresses are its PodEndpoint's own (IPAM's view
    /// agrees) stores none of them in the bookkeeping; an address only
    /// IPAM knows is stored and reaches policy, and when IPAM agrees again
    /// the stored copy goes and policy has the endpoint's addresses.
    #[tokio::test]
    async fn a_remote_pods_own_addresses_are_not_stored_again() {
        let (cluster, mut w, mut ps, mut view, reg) = endpoints_mode();
        for n in ["n1", "n2"] {
            w.nodes.apply_watcher_event(&Event::Apply(node(n)));
        }
        w.pod_endpoints.apply_watcher_event(&Event::Apply(endpoint(
            "b",
            "n2",
            "6",
            "x",
            "198.19.9.2",
        )));
        let b = crate::k8s::endpointcache::PodName::new("ns", "b");
        let own: IpAddr = "198.19.9.2".parse().expect("ip");
        let more: IpAddr = "198.19.9.7".parse().expect("ip");
        let stored = |ps: &PolicySync| ps.converted[&b].addrs.as_ref().map(|a| a.extra.to_vec());
        let ips = |ps: &PolicySync| ps.engine.state().pods[&PodKey::new("ns", "b")].ips.clone();
        view.pod_ips.insert(&b, own);
        ps.update(&cluster, &view, &reg);
        assert_eq!(stored(&ps), None, "IPAM agrees with the endpoint");
        assert_eq!(ips(&ps), vec![own]);
        view.pod_ips.insert(&b, more);
        ps.update(&cluster, &view, &reg);
        assert_eq!(stored(&ps), Some(vec![own, more]));
        assert_eq!(ips(&ps), vec![own, more]);
        let mut agrees = IpamView {
            synced: true,
            ..IpamView::default()
        };
        agrees.pod_ips.insert(&b, own);
        ps.update(&cluster, &agrees, &reg);
        assert_eq!(stored(&ps), None);
        assert_eq!(ips(&ps), vec![own]);
    }

    /// A remote pod whose PodEndpoint did not change is not converted
    /// again: its bookkeeping holds the cache's entry itself (no copy of
    /// its namespace, name or resourceVersion), a relist that finds it
    /// unchanged keeps it, and policy keeps sharing the cache's label map.
    #[tokio::test]
    async fn unchanged_endpoints_are_not_converted_again() {
        let (cluster, mut w, mut ps, view, reg) = endpoints_mode();
        for n in ["n1", "n2"] {
            w.nodes.apply_watcher_event(&Event::Apply(node(n)));
        }
        w.pod_endpoints.apply_watcher_event(&Event::Apply(endpoint(
            "b",
            "n2",
            "6",
            "x",
            "198.19.9.2",
        )));
        let held = |ps: &PolicySync| match &ps.converted[&super::PodName::new("ns", "b")].from {
            super::Origin::Endpoint(e) => e.clone(),
            super::Origin::Pod(_) => panic!("b converted from a Pod"),
        };
        let shares = |ps: &PolicySync, cluster: &Cluster| {
            let cached = cluster.pod_endpoints.get("ns", "b").expect("cached");
            let info = &ps.engine.state().pods[&PodKey::new("ns", "b")];
            Arc::ptr_eq(&held(ps), &cached)
                && policy::PodLabels::ptr_eq(&info.labels, &cached.labels)
        };
        ps.update(&cluster, &view, &reg);
        assert!(shares(&ps, &cluster));
        // A relist that finds it at the same resourceVersion.
        w.pod_endpoints.apply_watcher_event(&Event::Init);
        w.pod_endpoints
            .apply_watcher_event(&Event::InitApply(endpoint(
                "b",
                "n2",
                "6",
                "x",
                "198.19.9.2",
            )));
        w.pod_endpoints.apply_watcher_event(&Event::InitDone);
        ps.update(&cluster, &view, &reg);
        assert!(shares(&ps, &cluster));
        // A new address (same labels): converted again, the map still shared.
        w.pod_endpoints.apply_watcher_event(&Event::Apply(endpoint(
            "b",
            "n2",
            "7",
            "x",
            "198.19.9.3",
        )));
        ps.update(&cluster, &view, &reg);
        assert!(shares(&ps, &cluster));
        let b = &ps.engine.state().pods[&PodKey::new("ns", "b")];
        assert_eq!(b.ips, vec!["198.19.9.3".parse::<IpAddr>().expect("ip")]);
    }
}
