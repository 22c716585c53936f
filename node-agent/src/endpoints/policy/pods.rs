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
use crate::k8s::ipam::podips::Changed;
use crate::k8s::ipam::view::IpamView;

/// One pod as a source has it.
enum Source<'a> {
    /// A Pod object.
    Pod(&'a k8s_openapi::api::core::v1::Pod),
    /// Another node's PodEndpoint.
    Endpoint(&'a Arc<CachedEndpoint>),
}

impl<'a> Source<'a> {
    fn key(&self) -> Option<(&'a str, &'a str)> {
        match *self {
            Source::Pod(p) => Some((
                p.metadata.namespace.as_deref()?,
                p.metadata.name.as_deref()?,
            )),
            Source::Endpoint(e) => Some((e.namespace(), e.name())),
        }
    }

    fn resource_version(&self) -> &str {
        match self {
            Source::Pod(p) => p.metadata.resource_version.as_deref().unwrap_or_default(),
            Source::Endpoint(e) => &e.resource_version,
        }
    }

    fn info(&self) -> Result<Arc<PodInfo>, String> {
        match self {
            Source::Pod(p) => PodInfo::from_k8s(p)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
            Source::Endpoint(e) => e.pod_info().cloned(),
        }
    }
}

/// Whether policy takes this PodEndpoint for a pod of another node (see
/// the module doc): not this node's, not a pod in `local`, of a node in
/// `nodes` (the Nodes that exist).
pub fn takes_endpoint(
    me: &str,
    local: &HashSet<(&str, &str)>,
    nodes: &Nodes<'_>,
    e: &CachedEndpoint,
) -> bool {
    let node = e.node();
    node != me && !local.contains(&(&**e.namespace(), &**e.name())) && nodes.contains(node)
}

/// The names of the Nodes that exist: read from the Node cache, or, while
/// no Node event came since the last pass, the set that pass kept.
pub enum Nodes<'a> {
    /// From the cache, this pass.
    Read(HashSet<&'a str>),
    /// The last pass's.
    Kept(&'a HashSet<String>),
}

impl Nodes<'_> {
    fn contains(&self, node: &str) -> bool {
        match self {
            Nodes::Read(s) => s.contains(node),
            Nodes::Kept(s) => s.contains(node),
        }
    }
}

/// What a [`PodInfo`] was converted from: the source, the addresses IPAM
/// and EndpointUp added, and the `update` pass that last saw it in the
/// cluster. Kept for this node's pods and for the few pods of other nodes
/// that IPAM gives addresses their PodEndpoint does not list; a pod of
/// another node whose PodEndpoint has every address it has is held by the
/// engine as the cache's own `PodInfo` and has no record (a "plain" pod:
/// 150k of them at 5,000 nodes; docs/scale.md, "One PodInfo per pod").
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

    /// The PodEndpoint's own addresses (sorted, without repeats), when it
    /// is the source.
    fn own(&self) -> Option<&[IpAddr]> {
        match &self.from {
            Origin::Endpoint(e) => Some(e.addresses()),
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

/// What decides which PodEndpoints policy takes ([`takes_endpoint`]), as
/// the last pass saw it: while it is the same, a pass may visit only the
/// endpoints that changed.
#[derive(Default)]
pub(super) struct Context {
    me: String,
    nodes: HashSet<String>,
    local: HashSet<(String, String)>,
}

impl Context {
    fn of(me: &str, nodes: &HashSet<&str>, local: &HashSet<(&str, &str)>) -> Context {
        Context {
            me: me.to_string(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            local: local
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    fn same(&self, me: &str, nodes: &Nodes<'_>, local: &HashSet<(&str, &str)>) -> bool {
        let same_nodes = match nodes {
            Nodes::Kept(_) => true,
            Nodes::Read(nodes) => {
                self.nodes.len() == nodes.len() && nodes.iter().all(|n| self.nodes.contains(*n))
            }
        };
        self.me == me
            && same_nodes
            && self.local.len() == local.len()
            && local
                .iter()
                .all(|(a, b)| self.local.contains(&(a.to_string(), b.to_string())))
    }
}

/// One pass's inputs that every pod's visit reads.
struct PassCx<'a> {
    view: &'a IpamView,
    registered: HashMap<(&'a str, &'a str), Vec<IpAddr>>,
    ips_changed: Changed,
    pass: u32,
    extra: Vec<IpAddr>,
    ipam: Vec<IpAddr>,
}

impl PolicySync {
    /// Brings the engine's pods up to date (see the module doc).
    ///
    /// With PodEndpoints as the source, a pass visits only what changed
    /// since the last one when it can: the local Pods, the endpoints made
    /// or removed since (the cache numbers them,
    /// [`crate::k8s::endpointcache::EndpointCache::changes_since`]) and
    /// those whose IPAM addresses may have changed. It visits every pod
    /// (and drops what it did not see) when what decides which endpoints
    /// policy takes changed (this node, the Nodes, the local Pods), when
    /// the engine holds a pod the passes did not put there, or when the
    /// cache no longer has the removals since the last pass.
    ///
    /// `nodes_moved`: whether a Node event came since the last pass (if
    /// not, the last pass's set of Node names stands).
    pub(super) fn update_pods(
        &mut self,
        cluster: &Cluster,
        view: &IpamView,
        registry: &BTreeMap<String, Endpoint>,
        nodes_moved: bool,
    ) {
        // Endpoints registered by EndpointUp carry the freshest addresses.
        let mut registered: HashMap<(&str, &str), Vec<IpAddr>> = HashMap::new();
        for ep in registry.values().filter(|ep| !ep.standalone()) {
            registered
                .entry((&ep.namespace, &ep.pod))
                .or_default()
                .extend(ep.ips.iter().copied());
        }

        // Only compared for equality with the current pass, and every
        // entry a pass does not see is dropped at the end of a full one:
        // wrapping is harmless.
        self.pass = self.pass.wrapping_add(1);
        // Where the IPAM view's addresses are the same as last pass (the
        // pod's shard of them was not rewritten since), each pod's IPAM
        // addresses are the ones recorded then: no lookup in the
        // cluster-wide map.
        let last_ips = std::mem::replace(&mut self.pod_ips, view.pod_ips.clone());
        let ips_changed = view.pod_ips.changed_since(&last_ips);
        let mut cx = PassCx {
            view,
            registered,
            ips_changed,
            pass: self.pass,
            extra: Vec::new(),
            ipam: Vec::new(),
        };
        let pods = cluster.pods.state();
        let context = self.context.take();
        let node_objects = match (cluster.pod_source, &context) {
            (PodSource::Endpoints, Some(_)) if !nodes_moved => Vec::new(),
            (PodSource::Pods, _) => Vec::new(),
            (PodSource::Endpoints, _) => cluster.nodes.state(),
        };
        let nodes = match &context {
            Some(c) if !nodes_moved && cluster.pod_source == PodSource::Endpoints => {
                Nodes::Kept(&c.nodes)
            }
            _ => Nodes::Read(
                node_objects
                    .iter()
                    .filter_map(|n| n.metadata.name.as_deref())
                    .collect(),
            ),
        };
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

        let changes = match (cluster.pod_source, self.endpoint_seq, &context) {
            (PodSource::Endpoints, Some(seq), Some(c))
                if c.same(&me, &nodes, &local) && self.outside.is_empty() =>
            {
                cluster.pod_endpoints.changes_since(seq)
            }
            _ => None,
        };
        match changes {
            Some(ch) => {
                for p in &pods {
                    self.visit(&Source::Pod(p), &mut cx);
                }
                // Removed, and not back: gone from policy.
                for name in &ch.removed {
                    let (ns, n) = (&*name.namespace, &*name.name);
                    if cluster.pod_endpoints.get(ns, n).is_none() {
                        self.forget_endpoint(ns, n);
                    }
                }
                let mut revisit = ch.upserted;
                // EndpointUp's addresses are added to the pods they name
                // (now, or in the last pass).
                let registered: HashSet<(&str, &str)> = cx
                    .registered
                    .keys()
                    .copied()
                    .chain(
                        self.registered
                            .iter()
                            .map(|(a, b)| (a.as_str(), b.as_str())),
                    )
                    .collect();
                revisit.extend(
                    registered
                        .into_iter()
                        .filter_map(|(ns, n)| cluster.pod_endpoints.get(ns, n)),
                );
                if cx.ips_changed.any() {
                    revisit.extend(
                        view.pod_ips
                            .changed_pods(&last_ips)
                            .into_iter()
                            .filter_map(|p| cluster.pod_endpoints.get(&p.namespace, &p.name)),
                    );
                }
                for e in &revisit {
                    if takes_endpoint(&me, &local, &nodes, e) {
                        self.visit(&Source::Endpoint(e), &mut cx);
                    } else {
                        self.forget_endpoint(e.namespace(), e.name());
                    }
                }
                self.endpoint_seq = Some(ch.seq);
            }
            None => {
                let (endpoints, seq) = match cluster.pod_source {
                    PodSource::Pods => (Vec::new(), None),
                    PodSource::Endpoints => {
                        let (e, seq) = cluster.pod_endpoints.state_and_seq();
                        (e, Some(seq))
                    }
                };
                let sources = || {
                    pods.iter().map(|p| Source::Pod(p)).chain(
                        endpoints
                            .iter()
                            .filter(|e| takes_endpoint(&me, &local, &nodes, e))
                            .map(Source::Endpoint),
                    )
                };
                let mut seen = 0;
                for pod in sources() {
                    seen += usize::from(self.visit(&pod, &mut cx));
                }
                self.drop_unseen(seen, cx.pass, sources());
                self.endpoint_seq = seq;
                self.full_passes += 1;
            }
        }
        self.registered = cx
            .registered
            .keys()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let keep = context
            .as_ref()
            .is_some_and(|c| c.same(&me, &nodes, &local));
        let read = match &nodes {
            Nodes::Read(n) if !keep => Some(Context::of(&me, n, &local)),
            _ => None,
        };
        drop(nodes);
        self.context = match (keep, read, context) {
            (true, _, c) => c,
            (false, Some(c), _) => Some(c),
            // The same Nodes (no Node event), other local Pods.
            (false, None, Some(c)) => Some(Context {
                local: Context::of(&me, &HashSet::new(), &local).local,
                me,
                nodes: c.nodes,
            }),
            (false, None, None) => None,
        };
    }

    /// Brings one pod up to date; whether it is in the engine after.
    fn visit(&mut self, pod: &Source<'_>, cx: &mut PassCx<'_>) -> bool {
        let Some((ns, name)) = pod.key() else {
            return false;
        };
        let known = self.converted.get_mut(&(ns, name) as &dyn NamePair);
        // A plain pod the last pass left as it is now: the engine holds
        // this very entry's PodInfo, and its IPAM addresses (within the
        // entry's then) did not change.
        let unchanged_ips = !cx.ips_changed.may_differ(ns, name);
        let plain = match (pod, &known) {
            (Source::Endpoint(e), None) => self
                .engine
                .state()
                .pods
                .get(&e.pod.key)
                .is_some_and(|p| Arc::ptr_eq(p, &e.pod)),
            _ => false,
        };
        if plain && unchanged_ips && !cx.registered.contains_key(&(ns, name)) {
            return true;
        }
        let (ipam, extra) = (&mut cx.ipam, &mut cx.extra);
        ipam.clear();
        match &known {
            Some(c) if unchanged_ips => ipam.extend(c.ipam()),
            _ => ipam.extend(cx.view.pod_ips.get(ns, name).into_iter().flatten()),
        }
        extra.clear();
        extra.extend(ipam.iter());
        extra.extend(cx.registered.get(&(ns, name)).into_iter().flatten());
        extra.sort();
        extra.dedup();
        // Every converted pod is in the engine (both go together below).
        if let Some(c) = known
            && c.same_source(pod)
            && c.extra() == extra.as_slice()
        {
            c.pass = cx.pass;
            // Same union, other split (an address IPAM now records that
            // only EndpointUp had): the next pass that finds the pod's
            // shard unchanged reads this.
            if c.ipam() != ipam.as_slice() {
                c.set_addrs(extra, ipam);
            }
            return true;
        }
        // A plain pod: the entry's own PodInfo, shared, and no record.
        if let Source::Endpoint(e) = pod
            && e.invalid.is_none()
            && extra
                .iter()
                .all(|ip| e.addresses().binary_search(ip).is_ok())
        {
            if !plain {
                self.converted.remove(&(ns, name) as &dyn NamePair);
                self.outside.remove(&e.pod.key);
                self.engine.upsert_pod(Arc::clone(&e.pod));
            }
            return true;
        }
        let info = match pod.info() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "pod ignored by policy");
                // What the engine had of it no longer stands.
                self.forget(ns, name);
                return false;
            }
        };
        let mut info = Arc::unwrap_or_clone(info);
        for ip in extra.iter() {
            if !info.ips.contains(ip) {
                info.ips.push(*ip);
            }
        }
        info.ips.sort();
        self.outside.remove(&info.key);
        // A no-op when the engine already has it.
        self.engine.upsert_pod(info);
        let (key, from) = match pod {
            Source::Pod(_) => (
                PodName::new(ns, name),
                Origin::Pod(pod.resource_version().into()),
            ),
            Source::Endpoint(e) => (e.pod_name(), Origin::Endpoint(Arc::clone(e))),
        };
        self.converted
            .insert(key, Converted::new(from, extra, ipam, cx.pass));
        true
    }

    /// Whether the engine holds pod `key` as a plain pod of another node
    /// (put there by a pass, with no record: see [`Converted`]).
    fn plain(&self, key: &PodKey) -> bool {
        !self.outside.contains(key)
            && !self
                .converted
                .contains_key(&(&*key.namespace, &*key.name) as &dyn NamePair)
            && self.engine.state().pods.contains_key(key)
    }

    /// Drops pod `ns/name` from policy if it came from a PodEndpoint.
    fn forget_endpoint(&mut self, ns: &str, name: &str) {
        let from_endpoint = match self.converted.get(&(ns, name) as &dyn NamePair) {
            Some(c) => matches!(c.from, Origin::Endpoint(_)),
            None => self.plain(&PodKey::new(ns, name)),
        };
        if from_endpoint {
            self.forget(ns, name);
        }
    }

    /// Drops pod `ns/name` from policy (whoever put it in the engine).
    fn forget(&mut self, ns: &str, name: &str) {
        let key = PodKey::new(ns, name);
        self.converted.remove(&(ns, name) as &dyn NamePair);
        self.outside.remove(&key);
        self.engine.remove_pod(&key);
    }

    /// A pod put in the engine outside a pass (EndpointUp's): the next pass
    /// visits every pod, and drops it if no source has it.
    pub(super) fn put_outside(&mut self, key: &PodKey) {
        if !self
            .converted
            .contains_key(&(&*key.namespace, &*key.name) as &dyn NamePair)
        {
            self.outside.insert(key.clone());
        }
    }

    /// After a pass that visited every pod (`sources`, of which `seen` are
    /// in the engine after): drops the pods it did not see (gone from the
    /// cluster, or only ever known from EndpointUp); when the engine holds
    /// just the pods seen, nothing is.
    fn drop_unseen<'a>(
        &mut self,
        seen: usize,
        pass: u32,
        sources: impl Iterator<Item = Source<'a>>,
    ) {
        if seen != self.engine.state().pods.len() {
            let sources: HashSet<(&str, &str)> = sources.filter_map(|s| s.key()).collect();
            let gone: Vec<PodKey> = self
                .engine
                .state()
                .pods
                .keys()
                .filter(|k| !sources.contains(&(&*k.namespace, &*k.name)))
                .cloned()
                .collect();
            for key in &gone {
                self.engine.remove_pod(key);
            }
        }
        self.converted.retain(|_, c| c.pass == pass);
        self.outside.clear();
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

    /// The incremental pass leaves the engine exactly where a pass over
    /// every pod (a fresh PolicySync) does, under random endpoint writes,
    /// deletions, relists, Nodes coming and going, local Pods, IPAM
    /// addresses and EndpointUp registrations; and it is the one that ran
    /// for most of them (a pass that visits everything would hide bugs).
    #[tokio::test]
    async fn incremental_passes_agree_with_full_ones() {
        for seed in [0x9e37_79b9_7f4a_7c15, 7, 0xdead_beef, 12345] {
            incremental_agrees_with_full(seed);
        }
    }

    fn incremental_agrees_with_full(seed: u64) {
        let (cluster, mut w, mut ps, mut view, _) = endpoints_mode();
        let mut reg: BTreeMap<String, Endpoint> = BTreeMap::new();
        let mut plain = 0;
        let mut rng: u64 = seed;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let nodes = ["n1", "n2", "n3"];
        for n in &nodes[..2] {
            w.nodes.apply_watcher_event(&Event::Apply(node(n)));
        }
        let mut rv = 10;
        for step in 0..600 {
            rv += 1;
            let p = format!("p{}", next(12));
            let ip = format!("198.19.9.{}", next(20) + 1);
            match next(20) {
                0..=7 => {
                    let n = nodes[next(3) as usize];
                    let app = format!("a{}", next(3));
                    w.pod_endpoints.apply_watcher_event(&Event::Apply(endpoint(
                        &p,
                        n,
                        &rv.to_string(),
                        &app,
                        &ip,
                    )));
                }
                8..=10 => w
                    .pod_endpoints
                    .apply_watcher_event(&Event::Delete(endpoint(&p, "n2", "0", "x", &ip))),
                11 => {
                    // A relist that keeps some endpoints as they are and
                    // drops the others.
                    let keep: Vec<_> = cluster
                        .pod_endpoints
                        .state()
                        .into_iter()
                        .filter(|_| next(2) == 0)
                        .collect();
                    w.pod_endpoints.apply_watcher_event(&Event::Init);
                    for e in keep {
                        let mut obj = endpoint(
                            e.name(),
                            e.node(),
                            &e.resource_version,
                            e.pod.labels.get("app").unwrap_or("x"),
                            &e.addresses()[0].to_string(),
                        );
                        obj.spec.addresses = e.addresses().to_vec();
                        w.pod_endpoints.apply_watcher_event(&Event::InitApply(obj));
                    }
                    w.pod_endpoints.apply_watcher_event(&Event::InitDone);
                }
                12 => {
                    let n = nodes[next(3) as usize];
                    if next(2) == 0 {
                        w.nodes.apply_watcher_event(&Event::Apply(node(n)));
                    } else {
                        w.nodes.apply_watcher_event(&Event::Delete(node(n)));
                    }
                }
                13 => {
                    let mut local = pod(&p, &rv.to_string(), "local");
                    local.spec.as_mut().expect("spec").node_name = Some("n1".into());
                    if next(2) == 0 {
                        w.pods.apply_watcher_event(&Event::Apply(local));
                    } else {
                        w.pods.apply_watcher_event(&Event::Delete(local));
                    }
                }
                14..=16 => {
                    let name = super::PodName::new("ns", &p);
                    let addr: IpAddr = ip.parse().expect("ip");
                    if next(2) == 0 {
                        view.pod_ips.insert(&name, addr);
                    } else {
                        view.pod_ips.remove("ns", &p, addr);
                    }
                }
                17 => {
                    let key = format!("net.{p}");
                    if reg.remove(&key).is_none() {
                        reg.insert(
                            key.clone(),
                            crate::endpoints::Endpoint {
                                container_id: p.clone(),
                                namespace: "ns".into(),
                                pod: p.clone(),
                                host_if: format!("cali{p}"),
                                ips: vec![ip.parse().expect("ip")],
                                handle: key,
                                netns: String::new(),
                                ifname: "eth0".into(),
                            },
                        );
                    }
                }
                _ => {}
            }
            ps.update(&cluster, &view, &reg);
            let mut fresh = PolicySync::new("n1", Vec::new());
            fresh.update(&cluster, &view, &reg);
            assert_eq!(
                ps.engine.state().pods,
                fresh.engine.state().pods,
                "seed {seed} step {step}"
            );
            // A pod with no record is a plain one: the engine holds its
            // cache entry's own PodInfo.
            for (k, p) in &ps.engine.state().pods {
                let pair: &dyn super::NamePair = &(&*k.namespace, &*k.name);
                if !ps.converted.contains_key(pair) && !ps.outside.contains(k) {
                    let e = cluster.pod_endpoints.get(&k.namespace, &k.name);
                    assert!(
                        e.is_some_and(|e| Arc::ptr_eq(p, &e.pod)),
                        "seed {seed} step {step}: {k} has no record and is not its entry's"
                    );
                    plain += 1;
                }
            }
        }
        assert!(plain > 0, "seed {seed}: no pod was ever plain");
        assert!(
            ps.full_passes < 300,
            "seed {seed}: {} of 600 passes visited every pod",
            ps.full_passes
        );
    }

    /// A pass reads Namespaces, NetworkPolicies and Nodes only when their
    /// watch counted an event since the last pass: what a counted write
    /// changes reaches the engine, a pass with nothing counted does not
    /// read them (a write the watch did not count yet waits for its count).
    #[tokio::test]
    async fn kinds_are_read_when_their_watch_moved() {
        use crate::k8s::cluster::Kind;
        let (cluster, mut w, mut ps, view, reg) = endpoints_mode();
        let np = |name: &str, rv: &str| -> k8s_openapi::api::networking::v1::NetworkPolicy {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
            }))
            .expect("policy")
        };
        let nps = |ps: &PolicySync| ps.engine.policy_count();
        for n in ["n1", "n2"] {
            w.nodes.apply_watcher_event(&Event::Apply(node(n)));
            w.counted(Kind::Node);
        }
        w.policies.apply_watcher_event(&Event::Apply(np("a", "1")));
        w.counted(Kind::NetworkPolicy);
        ps.update(&cluster, &view, &reg);
        assert_eq!(nps(&ps), 1);
        // Written, not yet counted: not read.
        w.policies.apply_watcher_event(&Event::Apply(np("b", "2")));
        ps.update(&cluster, &view, &reg);
        assert_eq!(nps(&ps), 1);
        w.counted(Kind::NetworkPolicy);
        ps.update(&cluster, &view, &reg);
        assert_eq!(nps(&ps), 2);
        // A Node goes: its endpoints leave policy once the event counts.
        w.pod_endpoints.apply_watcher_event(&Event::Apply(endpoint(
            "b",
            "n2",
            "6",
            "x",
            "198.19.9.2",
        )));
        ps.update(&cluster, &view, &reg);
        assert!(ps.knows_pod(&PodKey::new("ns", "b")));
        w.nodes.apply_watcher_event(&Event::Delete(node("n2")));
        ps.update(&cluster, &view, &reg);
        assert!(ps.knows_pod(&PodKey::new("ns", "b")), "not counted yet");
        w.counted(Kind::Node);
        ps.update(&cluster, &view, &reg);
        assert!(!ps.knows_pod(&PodKey::new("ns", "b")));
    }

    /// A remote pod whose addresses are its PodEndpoint's own (IPAM's view
    /// agrees, or knows fewer) is plain: no record in the bookkeeping, and
    /// the engine holds the cache's own PodInfo; an address only IPAM
    /// knows is recorded and reaches policy, and when IPAM agrees again
    /// the record goes and the engine holds the cache's PodInfo again.
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
        let stored = |ps: &PolicySync| {
            ps.converted
                .get(&b)
                .map(|c| c.addrs.as_ref().map(|a| a.extra.to_vec()))
        };
        let ips = |ps: &PolicySync| ps.engine.state().pods[&PodKey::new("ns", "b")].ips.clone();
        let cached = |ps: &PolicySync, cluster: &Cluster| {
            let e = cluster.pod_endpoints.get("ns", "b").expect("cached");
            Arc::ptr_eq(&ps.engine.state().pods[&PodKey::new("ns", "b")], &e.pod)
        };
        ps.update(&cluster, &view, &reg);
        assert_eq!(stored(&ps), None, "IPAM knows none: plain");
        assert!(cached(&ps, &cluster));
        view.pod_ips.insert(&b, own);
        ps.update(&cluster, &view, &reg);
        assert_eq!(stored(&ps), None, "IPAM agrees with the endpoint");
        assert!(cached(&ps, &cluster));
        assert_eq!(ips(&ps), vec![own]);
        view.pod_ips.insert(&b, more);
        ps.update(&cluster, &view, &reg);
        assert_eq!(stored(&ps), Some(Some(vec![own, more])));
        assert!(!cached(&ps, &cluster));
        assert_eq!(ips(&ps), vec![own, more]);
        let mut agrees = IpamView {
            synced: true,
            ..IpamView::default()
        };
        agrees.pod_ips.insert(&b, own);
        ps.update(&cluster, &agrees, &reg);
        assert_eq!(stored(&ps), None);
        assert!(cached(&ps, &cluster));
        assert_eq!(ips(&ps), vec![own]);
    }

    /// A remote pod whose PodEndpoint did not change is not converted
    /// again: the engine holds the cache's entry's PodInfo itself (no copy
    /// of anything), a relist that finds it unchanged keeps it, and a new
    /// entry with the same labels shares the label set.
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
        let shares = |ps: &PolicySync, cluster: &Cluster| {
            let cached = cluster.pod_endpoints.get("ns", "b").expect("cached");
            let info = &ps.engine.state().pods[&PodKey::new("ns", "b")];
            ps.converted.is_empty() && Arc::ptr_eq(info, &cached.pod)
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
        let labels = |cluster: &Cluster| {
            cluster
                .pod_endpoints
                .get("ns", "b")
                .expect("b")
                .pod
                .labels
                .clone()
        };
        let before = labels(&cluster);
        ps.update(&cluster, &view, &reg);
        assert!(shares(&ps, &cluster));
        // A new address (same labels): a new entry, the label set shared.
        w.pod_endpoints.apply_watcher_event(&Event::Apply(endpoint(
            "b",
            "n2",
            "7",
            "x",
            "198.19.9.3",
        )));
        ps.update(&cluster, &view, &reg);
        assert!(shares(&ps, &cluster));
        assert!(policy::PodLabels::ptr_eq(&before, &labels(&cluster)));
        let b = &ps.engine.state().pods[&PodKey::new("ns", "b")];
        assert_eq!(b.ips, vec!["198.19.9.3".parse::<IpAddr>().expect("ip")]);
    }
}
