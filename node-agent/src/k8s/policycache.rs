//! The NetworkPolicy cache: each policy compiled where it arrives, its
//! object dropped.
//!
//! The policy engine plans with compiled policies only; a reflector store
//! kept every object besides (at 10,000 policies ~31 MB of the agent's
//! heap, most of it the B-tree nodes of one-entry `matchLabels` maps: see
//! docs/scale.md). This cache keeps per policy its key, its
//! resourceVersion and its [`PreparedPolicy`], fed by the same kube watcher
//! (list/watch, resourceVersion, relists, backoff) with a reflector's
//! semantics: `Apply` and `Delete` change the map at once, a (re)list is
//! collected aside and swapped in at `InitDone`, and an entry a relist or
//! an update finds at the same resourceVersion is kept as it is (the same
//! preparation: the engine then has nothing to do).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::Event;
use policy::{PolicyKey, PreparedPolicy};

/// One NetworkPolicy as the cache keeps it.
#[derive(Debug)]
pub struct CachedPolicy {
    /// Namespace and name.
    pub key: PolicyKey,
    /// The object's resourceVersion.
    pub resource_version: Box<str>,
    /// The policy compiled (or why it could not be).
    pub prepared: PreparedPolicy,
}

type Map = BTreeMap<PolicyKey, Arc<CachedPolicy>>;

/// Read side (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct PolicyCache {
    map: Arc<RwLock<Map>>,
}

impl PolicyCache {
    /// Every policy, in key order.
    pub fn state(&self) -> Vec<Arc<CachedPolicy>> {
        self.read().values().cloned().collect()
    }

    /// The policy `key`, if cached.
    pub fn get(&self, key: &PolicyKey) -> Option<Arc<CachedPolicy>> {
        self.read().get(key).cloned()
    }

    /// How many policies are cached.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        // A writer that panicked left a whole map (every change is one
        // insert, remove or swap): read it.
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Write side: the watch loop's.
#[derive(Debug)]
pub struct PolicyCacheWriter {
    cache: PolicyCache,
    /// A (re)list being collected (`Init` .. `InitDone`).
    relist: Option<Map>,
}

/// A cache and its writer.
pub fn cache() -> (PolicyCache, PolicyCacheWriter) {
    let cache = PolicyCache::default();
    (
        cache.clone(),
        PolicyCacheWriter {
            cache,
            relist: None,
        },
    )
}

impl PolicyCacheWriter {
    /// Applies one event of kube's watcher.
    pub fn apply_watcher_event(&mut self, event: &Event<NetworkPolicy>) {
        match event {
            Event::Apply(np) => {
                if let Some(e) = self.entry(np, None) {
                    self.write().insert(e.key.clone(), e);
                }
            }
            Event::Delete(np) => {
                if let Some(key) = PolicyKey::of(np) {
                    let old = self.write().remove(&key);
                    drop(old);
                }
            }
            Event::Init => self.relist = Some(Map::new()),
            Event::InitApply(np) => {
                let mut relist = self.relist.take().unwrap_or_default();
                if let Some(e) = self.entry(np, Some(&relist)) {
                    relist.insert(e.key.clone(), e);
                }
                self.relist = Some(relist);
            }
            Event::InitDone => {
                let relist = self.relist.take().unwrap_or_default();
                // The old map is dropped outside the lock.
                let old = std::mem::replace(&mut *self.write(), relist);
                drop(old);
            }
        }
    }

    /// The entry for `np`: the one already cached (or already collected by
    /// this relist) when its resourceVersion is the same, else `np`
    /// compiled. `None` for an object without a namespace or name.
    fn entry(&self, np: &NetworkPolicy, relist: Option<&Map>) -> Option<Arc<CachedPolicy>> {
        let key = PolicyKey::of(np)?;
        let rv = np.metadata.resource_version.as_deref().unwrap_or_default();
        let kept = relist
            .and_then(|r| r.get(&key).cloned())
            .or_else(|| self.cache.get(&key))
            .filter(|e| !rv.is_empty() && *e.resource_version == *rv);
        Some(kept.unwrap_or_else(|| {
            Arc::new(CachedPolicy {
                prepared: PreparedPolicy::compile(&key, np),
                key,
                resource_version: rv.into(),
            })
        }))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Map> {
        self.cache
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::build::{NetPol, sel};

    fn np(ns: &str, name: &str, rv: &str, app: &str) -> NetworkPolicy {
        let mut p = NetPol::new(ns, name).select(sel(&[("app", app)])).build();
        p.metadata.resource_version = Some(rv.into());
        p
    }

    fn compiled(c: &PolicyCache, ns: &str, name: &str) -> Arc<policy::compile::CompiledPolicy> {
        c.get(&PolicyKey::new(ns, name))
            .and_then(|e| e.prepared.compiled.clone())
            .expect("cached and valid")
    }

    #[test]
    fn applies_deletes_and_keeps_an_unchanged_policy_as_it_was() {
        let (c, mut w) = cache();
        w.apply_watcher_event(&Event::Apply(np("a", "p", "1", "x")));
        w.apply_watcher_event(&Event::Apply(np("b", "q", "2", "y")));
        assert_eq!(c.len(), 2);
        let first = c.get(&PolicyKey::new("a", "p")).unwrap();
        // The same resourceVersion again (a relist, a resync): the same
        // entry, so the engine sees the same preparation.
        w.apply_watcher_event(&Event::Apply(np("a", "p", "1", "x")));
        assert!(Arc::ptr_eq(
            &first,
            &c.get(&PolicyKey::new("a", "p")).unwrap()
        ));
        // A change: compiled anew, from the new object.
        w.apply_watcher_event(&Event::Apply(np("a", "p", "3", "z")));
        let now = c.get(&PolicyKey::new("a", "p")).unwrap();
        assert!(!now.prepared.same(&first.prepared));
        assert_eq!(
            compiled(&c, "a", "p").pod_selector,
            policy::selector::Selector::compile(&sel(&[("app", "z")])).unwrap()
        );
        w.apply_watcher_event(&Event::Delete(np("b", "q", "2", "y")));
        assert_eq!(c.len(), 1);
        assert!(c.get(&PolicyKey::new("b", "q")).is_none());
    }

    #[test]
    fn a_relist_is_invisible_until_done_then_replaces_the_map() {
        let (c, mut w) = cache();
        w.apply_watcher_event(&Event::Apply(np("a", "p", "1", "x")));
        w.apply_watcher_event(&Event::Apply(np("a", "gone", "1", "x")));
        let kept = c.get(&PolicyKey::new("a", "p")).unwrap();
        w.apply_watcher_event(&Event::Init);
        w.apply_watcher_event(&Event::InitApply(np("a", "p", "1", "x")));
        w.apply_watcher_event(&Event::InitApply(np("a", "new", "5", "y")));
        let keys = |c: &PolicyCache| -> Vec<String> {
            c.state().iter().map(|e| e.key.to_string()).collect()
        };
        assert_eq!(keys(&c), ["a/gone", "a/p"]);
        w.apply_watcher_event(&Event::InitDone);
        assert_eq!(keys(&c), ["a/new", "a/p"]);
        assert!(Arc::ptr_eq(
            &kept,
            &c.get(&PolicyKey::new("a", "p")).unwrap()
        ));
    }

    #[test]
    fn an_invalid_policy_is_cached_with_its_error() {
        let (c, mut w) = cache();
        let mut p = np("a", "bad", "1", "x");
        p.spec = None;
        w.apply_watcher_event(&Event::Apply(p));
        let e = c.get(&PolicyKey::new("a", "bad")).unwrap();
        assert!(e.prepared.compiled.is_none());
        assert_eq!(e.prepared.errors.len(), 1);
    }
}
