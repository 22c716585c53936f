//! The agent's cache of every PodEndpoint of the cluster, compact: of each
//! object only what its readers use — namespace, name, resourceVersion,
//! node, addresses, labels and named ports — in a set of entries looked up
//! by (namespace, name). Every agent holds one entry per pod of the cluster
//! (docs/scale.md, "the heap by cache"): kube's reflector store kept the
//! whole object (an `ObjectMeta` of ~0.3 KB even trimmed, the object's
//! `ObjectRef` key with its own copies of the name and namespace), about
//! 1.5 KB per pod at 5k nodes / 150k pods. An entry's pod is policy's
//! `PodInfo` itself, made once here: the policy engine holds the same
//! `Arc` for every pod of another node whose addresses IPAM adds nothing
//! to (docs/scale.md, "One PodInfo per pod").
//!
//! ```text
//!  API server ──list/watch──► kube watcher ──Event<PodEndpoint>──► EndpointCacheWriter
//!                             (relists, resourceVersion,              │ (converted, interned)
//!                              bookmarks, backoff: kube's)            ▼
//!                                         readers ◄── EndpointCache (Arc<RwLock<map>>)
//! ```
//!
//! Fed by kube's watcher, with the reflector's semantics: `Apply` and
//! `Delete` change the map at once; a (re)list (`Init`, `InitApply`…,
//! `InitDone`) is collected aside and replaces the map whole at `InitDone`,
//! so readers never see a partial list (the agent's "synced" signal is the
//! same `InitDone`, counted by `cluster::watch_loop` after this store has
//! applied it). Namespace and node names are interned (150k pods share a few
//! thousand of each); a pod's labels are a [`PodLabels`] set from the
//! writer's [`LabelInterner`] (label keys and values, and identical sets,
//! stored once however many pods have them; unused ones freed), kept
//! across an update that leaves the labels as they were; an entry a relist
//! finds unchanged (same resourceVersion) is kept as it is.

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use kube::runtime::watcher::Event;
use policy::{ContainerPort, LabelInterner, PodInfo};

use crate::k8s::crd::PodEndpoint;

/// One PodEndpoint, as the agent keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEndpoint {
    /// The pod as policy's engine holds it: namespace and name, the node
    /// (interned), the addresses (sorted, without repeats), the labels
    /// (interned) and the named container ports (interned: the pods of one
    /// workload have the same list). One per pod, shared: the engine holds
    /// this very `Arc` for a pod of another node whose addresses IPAM adds
    /// nothing to (docs/scale.md, "One PodInfo per pod"). Its ports are
    /// empty when `invalid`.
    pub pod: Arc<PodInfo>,
    /// The object's resourceVersion.
    pub resource_version: Box<str>,
    /// Why policy cannot use the pod (a named port it cannot read), if so.
    pub invalid: Option<Arc<str>>,
    /// When the writer made this entry: a number from one counter per
    /// cache, larger for every new entry and removal
    /// ([`EndpointCache::changes_since`]).
    pub seq: u64,
}

impl CachedEndpoint {
    /// The pod's namespace (interned).
    pub fn namespace(&self) -> &Arc<str> {
        &self.pod.key.namespace
    }

    /// The pod's name.
    pub fn name(&self) -> &Arc<str> {
        &self.pod.key.name
    }

    /// The node the pod runs on.
    pub fn node(&self) -> &str {
        self.pod.node_name.as_deref().unwrap_or_default()
    }

    /// The pod's addresses (sorted, without repeats).
    pub fn addresses(&self) -> &[IpAddr] {
        &self.pod.ips
    }

    /// The pod's namespace and name (sharing the entry's strings).
    pub fn pod_name(&self) -> PodName {
        PodName {
            namespace: self.namespace().clone(),
            name: self.name().clone(),
        }
    }

    /// The policy crate's view of the pod, shared (the same as
    /// [`PodEndpoint::to_pod_info`] of the object it was made from), or why
    /// policy cannot use it.
    pub fn pod_info(&self) -> Result<&Arc<PodInfo>, String> {
        match &self.invalid {
            None => Ok(&self.pod),
            Some(e) => Err(crate::k8s::crd::invalid_ports(
                self.namespace(),
                self.name(),
                e,
            )),
        }
    }
}

/// A pod's namespace and name, owned (a map key that costs no copy of
/// strings an entry already holds); a map keyed by it is looked up with
/// borrowed strings, `map.get(&(ns, name) as &dyn NamePair)`, without
/// allocating.
#[derive(Debug, Clone)]
pub struct PodName {
    /// The namespace.
    pub namespace: Arc<str>,
    /// The name.
    pub name: Arc<str>,
}

impl PodName {
    /// `namespace/name` (new allocations; see [`CachedEndpoint::pod_name`]
    /// for one that shares the cache's).
    pub fn new(namespace: &str, name: &str) -> PodName {
        PodName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// (namespace, name) of a pod, however held: what a map keyed by
/// [`PodName`] is looked up with.
pub trait NamePair {
    /// (namespace, name).
    fn pair(&self) -> (&str, &str);
}

impl NamePair for PodName {
    fn pair(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl NamePair for (&str, &str) {
    fn pair(&self) -> (&str, &str) {
        *self
    }
}

// One hash and equality for the owned key and every borrowed form: the
// pair's (the map's `Borrow` contract).
impl std::hash::Hash for dyn NamePair + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.pair().hash(h);
    }
}
impl PartialEq for dyn NamePair + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.pair() == other.pair()
    }
}
impl Eq for dyn NamePair + '_ {}
/// Hash and equality of a [`NamePair`] type by its pair, and a map keyed
/// by it looked up with any borrowed pair.
macro_rules! keyed_by_pair {
    ($t:ty) => {
        impl std::hash::Hash for $t {
            fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
                self.pair().hash(h);
            }
        }
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.pair() == other.pair()
            }
        }
        impl Eq for $t {}
        impl<'a> std::borrow::Borrow<dyn NamePair + 'a> for $t {
            fn borrow(&self) -> &(dyn NamePair + 'a) {
                self
            }
        }
    };
}
keyed_by_pair!(PodName);

/// An entry of the map, hashed and compared by its pod's (namespace,
/// name): the map is a set of entries, with no key beside each (a key of
/// its own was 32 B a pod more, ~8 MB at 150k pods).
#[derive(Clone)]
struct Entry(Arc<CachedEndpoint>);

impl NamePair for Entry {
    fn pair(&self) -> (&str, &str) {
        (self.0.namespace(), self.0.name())
    }
}
keyed_by_pair!(Entry);

type Map = HashSet<Entry>;

/// Read access to the cache (cheap to clone; every clone sees the same map).
#[derive(Clone, Default)]
pub struct EndpointCache {
    map: Arc<RwLock<Inner>>,
}

/// The map, and what a reader needs to follow it by changes.
#[derive(Default)]
struct Inner {
    map: Map,
    /// The last entry's or removal's number.
    seq: u64,
    /// Changes, oldest first, with their numbers: a pod whose entry was
    /// made (`false`) or that was removed (`true`).
    log: VecDeque<(u64, PodName, bool)>,
    /// Changes numbered up to this were dropped from `log`.
    floor: u64,
}

/// Changes kept for readers that follow the cache by them; one that falls
/// further behind reads the whole map again.
const CHANGES_KEPT: usize = 8_192;

/// What changed in the cache since a number ([`EndpointCache::changes_since`]).
pub struct Changes {
    /// Entries made since (new pods and changed ones).
    pub upserted: Vec<Arc<CachedEndpoint>>,
    /// Pods removed since (one may be back: then it is in `upserted`).
    pub removed: Vec<PodName>,
    /// The number to ask from next time.
    pub seq: u64,
}

impl EndpointCache {
    /// Every entry, in no particular order (a snapshot: the writer goes on
    /// while the caller reads it).
    pub fn state(&self) -> Vec<Arc<CachedEndpoint>> {
        self.read(|m| m.iter().map(|e| e.0.clone()).collect())
    }

    /// [`EndpointCache::state`], and the number to ask
    /// [`EndpointCache::changes_since`] from next.
    pub fn state_and_seq(&self) -> (Vec<Arc<CachedEndpoint>>, u64) {
        self.read_inner(|i| (i.map.iter().map(|e| e.0.clone()).collect(), i.seq))
    }

    /// What changed since `seq` (a number this cache gave): the entries
    /// made since and the pods removed since, read at one instant (from
    /// the change log: the cost is the changes', not the map's). None
    /// when changes that old are no longer kept: read the whole map.
    pub fn changes_since(&self, seq: u64) -> Option<Changes> {
        self.read_inner(|i| {
            if seq < i.floor {
                return None;
            }
            let mut upserted = Vec::new();
            let mut removed = Vec::new();
            // Newest first: the log is in number order.
            for (n, pod, gone) in i.log.iter().rev().take_while(|(n, _, _)| *n > seq) {
                if *gone {
                    removed.push(pod.clone());
                } else if let Some(Entry(e)) = i.map.get(pod as &dyn NamePair)
                    && e.seq == *n
                {
                    // The entry this change made, still there (a later
                    // change of the same pod is taken at its own number).
                    upserted.push(e.clone());
                }
            }
            Some(Changes {
                upserted,
                removed,
                seq: i.seq,
            })
        })
    }

    /// The entry of pod `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedEndpoint>> {
        self.read(|m| {
            m.get(&(namespace, name) as &dyn NamePair)
                .map(|e| e.0.clone())
        })
    }

    /// The first entry (in no particular order) that `f` accepts, without a
    /// snapshot of the whole map.
    pub fn find(&self, f: impl Fn(&CachedEndpoint) -> bool) -> Option<Arc<CachedEndpoint>> {
        self.read(|m| m.iter().find(|e| f(&e.0)).map(|e| e.0.clone()))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.read(HashSet::len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read<T>(&self, f: impl FnOnce(&Map) -> T) -> T {
        self.read_inner(|i| f(&i.map))
    }

    fn read_inner<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        // A panic while the writer held the lock leaves a map that is
        // whole (every write is one insert, remove or swap).
        f(&self.map.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Feeds an [`EndpointCache`] from watcher events (one per cache).
pub struct EndpointCacheWriter {
    cache: EndpointCache,
    /// A (re)list being collected (between `Init` and `InitDone`).
    relist: Option<Map>,
    namespaces: HashSet<Arc<str>>,
    nodes: HashSet<Arc<str>>,
    ports: HashSet<Arc<[ContainerPort]>>,
    labels: LabelInterner,
    /// The last number given to an entry or a removal.
    seq: u64,
}

impl Inner {
    fn log_removal(&mut self, seq: u64, pod: &PodName) {
        self.log_change(seq, pod, true);
    }

    fn log_change(&mut self, seq: u64, pod: &PodName, removed: bool) {
        // Strings of its own: the writer frees interned names no entry
        // holds (a removed pod's, say) and the log must not keep them.
        self.log
            .push_back((seq, PodName::new(&pod.namespace, &pod.name), removed));
        while self.log.len() > CHANGES_KEPT {
            if let Some((n, _, _)) = self.log.pop_front() {
                self.floor = n;
            }
        }
    }
}

/// An empty cache and its writer.
pub fn cache() -> (EndpointCache, EndpointCacheWriter) {
    let cache = EndpointCache::default();
    let writer = EndpointCacheWriter {
        cache: cache.clone(),
        relist: None,
        namespaces: HashSet::new(),
        nodes: HashSet::new(),
        ports: HashSet::new(),
        labels: LabelInterner::new(),
        seq: 0,
    };
    (cache, writer)
}

/// One interned copy of `s` in `set`.
fn intern<T: ?Sized + Eq + std::hash::Hash>(set: &mut HashSet<Arc<T>>, s: &T) -> Arc<T>
where
    for<'a> &'a T: Into<Arc<T>>,
{
    if let Some(a) = set.get(s) {
        return a.clone();
    }
    let a: Arc<T> = s.into();
    set.insert(a.clone());
    a
}

impl EndpointCacheWriter {
    /// Applies one watcher event (see the module doc for the semantics).
    pub fn apply_watcher_event(&mut self, event: &Event<PodEndpoint>) {
        match event {
            Event::Apply(obj) => {
                if let Some(entry) = self.convert(obj, None) {
                    self.write(|i| {
                        let seq = entry.seq;
                        let pod = entry.pod_name();
                        let old = i.map.replace(Entry(entry));
                        if old.is_none_or(|o| o.0.seq != seq) {
                            i.log_change(seq, &pod, false);
                        }
                    });
                }
            }
            Event::Delete(obj) => {
                if let (Some(ns), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name) {
                    self.seq += 1;
                    let seq = self.seq;
                    self.write(|i| {
                        if let Some(Entry(e)) =
                            i.map.take(&(ns.as_str(), name.as_str()) as &dyn NamePair)
                        {
                            i.log_removal(seq, &e.pod_name());
                        }
                    });
                }
            }
            Event::Init => self.relist = Some(Map::new()),
            Event::InitApply(obj) => {
                let mut relist = self.relist.take().unwrap_or_default();
                if let Some(entry) = self.convert(obj, Some(&relist)) {
                    relist.replace(Entry(entry));
                }
                self.relist = Some(relist);
            }
            Event::InitDone => {
                let relist = self.relist.take().unwrap_or_default();
                // The old map is dropped outside the lock.
                let mut seq = self.seq;
                let old = self.write(|i| {
                    let old = std::mem::replace(&mut i.map, relist);
                    let gone: Vec<&Entry> = old.iter().filter(|e| !i.map.contains(*e)).collect();
                    // Entries the relist made (not kept from before), in
                    // number order.
                    let mut made: Vec<(u64, &Entry)> = i
                        .map
                        .iter()
                        .filter(|e| old.get(*e).is_none_or(|o| !Arc::ptr_eq(&o.0, &e.0)))
                        .map(|e| (e.0.seq, e))
                        .collect();
                    seq += gone.len() as u64;
                    if gone.len() + made.len() > CHANGES_KEPT {
                        // More than a reader could be told (the first
                        // list): every reader reads the whole map.
                        i.log.clear();
                        i.floor = seq;
                    } else {
                        let mut n = seq - gone.len() as u64;
                        let gone: Vec<PodName> = gone.into_iter().map(|e| e.0.pod_name()).collect();
                        made.sort_by_key(|(n, _)| *n);
                        let made: Vec<(u64, PodName)> =
                            made.into_iter().map(|(n, e)| (n, e.0.pod_name())).collect();
                        // The relist's entries were numbered before its
                        // removals: the log stays in number order.
                        for (n, k) in &made {
                            i.log_change(*n, k, false);
                        }
                        for k in &gone {
                            n += 1;
                            i.log_removal(n, k);
                        }
                    }
                    i.seq = i.seq.max(seq);
                    old
                });
                self.seq = seq;
                drop(old);
                // Names no entry uses any more (each is held by the set
                // and by every entry naming it).
                self.namespaces.retain(|a| Arc::strong_count(a) > 1);
                self.nodes.retain(|a| Arc::strong_count(a) > 1);
                self.ports.retain(|a| Arc::strong_count(a) > 1);
                self.labels.collect();
            }
        }
    }

    /// The entry for `obj`: the one the cache (or `relist`) has when its
    /// resourceVersion is the same, else a new one, keeping the current
    /// label set when the labels did not change. None (and a warning) for
    /// an object without namespace or name, which no reader can use.
    fn convert(&mut self, obj: &PodEndpoint, relist: Option<&Map>) -> Option<Arc<CachedEndpoint>> {
        let (Some(ns), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name) else {
            tracing::warn!(name = ?obj.metadata.name, "PodEndpoint without namespace or name: not cached");
            return None;
        };
        let rv = obj.metadata.resource_version.as_deref().unwrap_or_default();
        let pair: &dyn NamePair = &(ns.as_str(), name.as_str());
        let have = relist
            .and_then(|r| r.get(pair).map(|e| e.0.clone()))
            .or_else(|| self.cache.read(|m| m.get(pair).map(|e| e.0.clone())));
        if let Some(have) = &have
            && &*have.resource_version == rv
            && !rv.is_empty()
        {
            return Some(have.clone());
        }
        let namespace = intern(&mut self.namespaces, ns);
        let name: Arc<str> = match &have {
            Some(h) => h.name().clone(),
            None => name.as_str().into(),
        };
        let spec = &obj.spec;
        let labels = match &have {
            Some(h) if h.pod.labels.eq_map(&spec.labels) => h.pod.labels.clone(),
            _ => self.labels.intern(&spec.labels),
        };
        let (ports, invalid) = match crate::k8s::crd::container_ports(&spec.named_ports) {
            Ok(p) => (intern(&mut self.ports, p.as_slice()), None),
            Err(e) => (intern(&mut self.ports, &[][..]), Some(e.into())),
        };
        let pod = crate::k8s::crd::pod_view(
            &namespace,
            &name,
            &intern(&mut self.nodes, &spec.node),
            &spec.addresses,
            &labels,
            &ports,
        );
        self.seq += 1;
        let entry = CachedEndpoint {
            seq: self.seq,
            pod: Arc::new(pod),
            resource_version: rv.into(),
            invalid,
        };
        Some(Arc::new(entry))
    }

    fn write<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self
            .cache
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut inner);
        inner.seq = inner.seq.max(self.seq);
        out
    }
}

#[cfg(test)]
mod tests;
