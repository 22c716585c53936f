//! Every pod's IPAM addresses, cluster-wide, by (namespace, name): the map
//! the IPAM view publishes with each new view.
//!
//! It is kept up to date in place, one block's allocations at a time, and
//! held in shards that copies share: a new view after one block changed
//! copies the shards that block's pods fall in (1/1024th of the map each),
//! not 150k entries, and a reader can tell which shards changed since the
//! copy it kept ([`PodIps::same_shard`]). Rebuilding the whole map for
//! every block event cost, at 150k pods, tens of milliseconds and two
//! copies of the map per event (docs/scale.md, "The IPAM view").

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::IpAddr;
use std::sync::Arc;

use crate::k8s::endpointcache::{NamePair, PodName};

/// Shards: enough that a block event copies and a reader compares little
/// (~150 pods per shard at 150k; with 64 shards, copying and comparing a
/// changed shard's 2,300 pods was a third of the agent's CPU in pod
/// churn, docs/scale.md), few enough that a copy of the shard list (8 KB)
/// is cheap.
const SHARDS: usize = 1024;

type Shard = HashMap<PodName, Box<[IpAddr]>>;

/// The addresses of every pod with an IPAM allocation.
#[derive(Clone)]
pub struct PodIps {
    shards: Arc<[Arc<Shard>]>,
}

impl Default for PodIps {
    fn default() -> Self {
        PodIps {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::new())).collect(),
        }
    }
}

impl std::fmt::Debug for PodIps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIps").field("pods", &self.len()).finish()
    }
}

impl PartialEq for PodIps {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shards, &other.shards)
            || self
                .shards
                .iter()
                .zip(other.shards.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}
impl Eq for PodIps {}

/// The shards of a [`PodIps`] that changed since a copy of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed([u64; SHARDS / 64]);

impl Default for Changed {
    fn default() -> Self {
        Changed([0; SHARDS / 64])
    }
}

impl Changed {
    /// Whether any shard changed.
    pub fn any(&self) -> bool {
        self.0.iter().any(|w| *w != 0)
    }

    /// Whether pod `namespace/name`'s addresses may differ (false: they
    /// are certainly the same).
    pub fn may_differ(&self, namespace: &str, name: &str) -> bool {
        let i = shard_of(namespace, name);
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

const _: () = assert!(SHARDS.is_multiple_of(64), "Changed holds one bit per shard");

/// The shard of a pod: a fixed hash (not the maps' random one), so that
/// every copy puts a pod in the same shard.
fn shard_of(namespace: &str, name: &str) -> usize {
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one((namespace, name));
    (h % SHARDS as u64) as usize
}

impl PodIps {
    /// The addresses of pod `namespace/name`, sorted.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&[IpAddr]> {
        self.shards[shard_of(namespace, name)]
            .get(&(namespace, name) as &dyn NamePair)
            .map(|v| &v[..])
    }

    /// Pods with at least one address.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Whether no pod has an address.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.is_empty())
    }

    /// Whether `self` is `other` unchanged (a copy of the same map).
    pub fn same_as(&self, other: &PodIps) -> bool {
        Arc::ptr_eq(&self.shards, &other.shards)
            || self
                .shards
                .iter()
                .zip(other.shards.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Whether pod `namespace/name`'s addresses are certainly the same in
    /// `self` and `other`: its shard was not copied since (false says
    /// only "look it up").
    pub fn same_shard(&self, other: &PodIps, namespace: &str, name: &str) -> bool {
        let i = shard_of(namespace, name);
        Arc::ptr_eq(&self.shards[i], &other.shards[i])
    }

    /// The shards that differ from `other`'s, for many pods asked at once
    /// ([`Changed::may_differ`]): nothing is hashed per pod when no shard
    /// changed.
    pub fn changed_since(&self, other: &PodIps) -> Changed {
        let mut mask = [0u64; SHARDS / 64];
        for (i, (a, b)) in self.shards.iter().zip(other.shards.iter()).enumerate() {
            if !Arc::ptr_eq(a, b) {
                mask[i / 64] |= 1 << (i % 64);
            }
        }
        Changed(mask)
    }

    /// The pods whose addresses differ between `before` (an older copy)
    /// and `self`, in no particular order: only the shards that were
    /// copied since are compared.
    pub fn changed_pods<'a>(&'a self, before: &'a PodIps) -> Vec<&'a PodName> {
        let mut out = Vec::new();
        for (new, old) in self.shards.iter().zip(before.shards.iter()) {
            if Arc::ptr_eq(new, old) {
                continue;
            }
            out.extend(
                new.iter()
                    .filter(|(k, v)| old.get(*k) != Some(*v))
                    .map(|(k, _)| k),
            );
            out.extend(old.keys().filter(|k| !new.contains_key(*k)));
        }
        out
    }

    /// Every pod and its addresses, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&PodName, &[IpAddr])> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (k, &v[..])))
    }

    fn shard_mut(&mut self, i: usize) -> &mut Shard {
        // Copy the shard list when a reader still holds it (cheap: SHARDS
        // pointers), then the one shard if a reader holds that.
        if Arc::get_mut(&mut self.shards).is_none() {
            self.shards = self.shards.iter().cloned().collect();
        }
        let shards = Arc::get_mut(&mut self.shards).expect("just made unique");
        Arc::make_mut(&mut shards[i])
    }

    /// Records `ip` for `pod` (once).
    pub fn insert(&mut self, pod: &PodName, ip: IpAddr) {
        let i = shard_of(&pod.namespace, &pod.name);
        if self.shards[i]
            .get(pod)
            .is_some_and(|v| v.binary_search(&ip).is_ok())
        {
            return;
        }
        let shard = self.shard_mut(i);
        let v = shard.entry(pod.clone()).or_default();
        let mut ips = std::mem::take(v).into_vec();
        let at = ips.binary_search(&ip).unwrap_or_else(|at| at);
        ips.insert(at, ip);
        *v = ips.into_boxed_slice();
    }

    /// Forgets `ip` of pod `namespace/name` (the pod when it has no other).
    pub fn remove(&mut self, namespace: &str, name: &str, ip: IpAddr) {
        let i = shard_of(namespace, name);
        let key: &dyn NamePair = &(namespace, name);
        if self.shards[i]
            .get(key)
            .is_none_or(|v| v.binary_search(&ip).is_err())
        {
            return;
        }
        let shard = self.shard_mut(i);
        let Some(v) = shard.get_mut(key) else { return };
        let ips: Box<[IpAddr]> = v.iter().copied().filter(|a| *a != ip).collect();
        if ips.is_empty() {
            shard.remove(key);
        } else {
            *v = ips;
        }
    }

    /// Empties the map (a copy others hold keeps its contents).
    pub fn clear(&mut self) {
        *self = PodIps::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn insert_remove_and_lookup_by_borrowed_names() {
        let mut m = PodIps::default();
        let a = PodName::new("ns", "a");
        m.insert(&a, ip("2001:db8::1"));
        m.insert(&a, ip("198.19.0.1"));
        m.insert(&a, ip("198.19.0.1"));
        m.insert(&PodName::new("ns", "b"), ip("198.19.0.2"));
        assert_eq!(
            m.get("ns", "a"),
            Some(&[ip("198.19.0.1"), ip("2001:db8::1")][..])
        );
        assert_eq!(m.len(), 2);
        m.remove("ns", "a", ip("198.19.0.1"));
        assert_eq!(m.get("ns", "a"), Some(&[ip("2001:db8::1")][..]));
        m.remove("ns", "a", ip("2001:db8::1"));
        assert_eq!(m.get("ns", "a"), None);
        m.remove("ns", "a", ip("2001:db8::1"));
        assert_eq!(m.len(), 1);
        assert_eq!(m.iter().count(), 1);
    }

    #[test]
    fn changed_pods_are_those_whose_addresses_differ() {
        let mut a = PodIps::default();
        for i in 0..200u8 {
            a.insert(
                &PodName::new("ns", &format!("p{i}")),
                IpAddr::from([198, 19, 1, i]),
            );
        }
        let before = a.clone();
        assert!(a.changed_pods(&before).is_empty());
        a.insert(&PodName::new("ns", "p1"), IpAddr::from([198, 19, 2, 1]));
        a.remove("ns", "p2", IpAddr::from([198, 19, 1, 2]));
        a.insert(&PodName::new("ns", "new"), IpAddr::from([198, 19, 3, 1]));
        // Removed and put back: the same as before.
        a.remove("ns", "p3", IpAddr::from([198, 19, 1, 3]));
        a.insert(&PodName::new("ns", "p3"), IpAddr::from([198, 19, 1, 3]));
        let mut got: Vec<&str> = a.changed_pods(&before).iter().map(|p| &*p.name).collect();
        got.sort();
        assert_eq!(got, ["new", "p1", "p2"]);
    }

    #[test]
    fn a_copy_keeps_its_contents_and_shares_the_shards_not_written() {
        let mut m = PodIps::default();
        for i in 0..1000 {
            m.insert(&PodName::new("ns", &format!("p{i}")), ip("198.19.0.1"));
        }
        let before = m.clone();
        assert!(m.same_as(&before));
        m.insert(&PodName::new("ns", "p7"), ip("198.19.0.9"));
        assert!(!m.same_as(&before));
        assert_ne!(m, before);
        assert_eq!(before.get("ns", "p7"), Some(&[ip("198.19.0.1")][..]));
        assert_eq!(
            m.get("ns", "p7"),
            Some(&[ip("198.19.0.1"), ip("198.19.0.9")][..])
        );
        assert!(!m.same_shard(&before, "ns", "p7"));
        let changed = m.changed_since(&before);
        assert!(changed.may_differ("ns", "p7"));
        assert!(!m.changed_since(&m.clone()).may_differ("ns", "p7"));
        assert_eq!(
            (0..1000)
                .filter(|i| !changed.may_differ("ns", &format!("p{i}")))
                .count(),
            (0..1000)
                .filter(|i| m.same_shard(&before, "ns", &format!("p{i}")))
                .count()
        );
        // Only p7's shard was copied: every pod of another shard is
        // known unchanged without a lookup.
        let unchanged = (0..1000)
            .filter(|i| m.same_shard(&before, "ns", &format!("p{i}")))
            .count();
        let shard_size = (0..1000)
            .filter(|i| shard_of("ns", &format!("p{i}")) == shard_of("ns", "p7"))
            .count();
        assert_eq!(unchanged, 1000 - shard_size);
        // Writing nothing new copies nothing.
        let again = m.clone();
        m.insert(&PodName::new("ns", "p7"), ip("198.19.0.9"));
        m.remove("ns", "nobody", ip("198.19.0.9"));
        assert!(m.same_as(&again));
        // Equal contents in different shards compare equal.
        let mut x = PodIps::default();
        let mut y = PodIps::default();
        x.insert(&PodName::new("a", "b"), ip("198.19.0.3"));
        y.insert(&PodName::new("a", "b"), ip("198.19.0.3"));
        assert!(!x.same_as(&y));
        assert_eq!(x, y);
    }
}
