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

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::IpAddr;
use std::sync::Arc;

use crate::k8s::endpointcache::PodName;

/// Shards: enough that a block event copies and a reader compares little
/// (~150 pods per shard at 150k; with 64 shards, copying and comparing a
/// changed shard's 2,300 pods was a third of the agent's CPU in pod
/// churn, docs/scale.md), few enough that a copy of the shard list (8 KB)
/// is cheap.
const SHARDS: usize = 1024;

/// One shard: its pods and their addresses, sorted by (namespace, name).
/// A sorted `Vec`, not a hash map: ~150 pods a shard at 150k, looked up by
/// binary search, and no table a third empty beside them (the maps' tables
/// were 12.6 MB at 150k pods; docs/scale.md, "The IPAM view's address map").
#[derive(Clone, Default, PartialEq, Eq)]
struct Shard(Vec<(PodName, Box<[IpAddr]>)>);

impl Shard {
    fn find(&self, namespace: &str, name: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(k, _)| (&*k.namespace, &*k.name).cmp(&(namespace, name)))
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&[IpAddr]> {
        self.find(namespace, name).ok().map(|i| &*self.0[i].1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&PodName, &[IpAddr])> {
        self.0.iter().map(|(k, v)| (k, &v[..]))
    }

    /// Adds `pod` at `at` (where [`Shard::find`] said), growing by an
    /// eighth at a time: a shard filled one pod at a time keeps little
    /// room to spare (doubling would leave up to half of it empty).
    fn insert_at(&mut self, at: usize, pod: PodName, ips: Box<[IpAddr]>) {
        if self.0.len() == self.0.capacity() {
            self.0.reserve_exact((self.0.len() / 8).max(4));
        }
        self.0.insert(at, (pod, ips));
    }
}

/// The addresses of every pod with an IPAM allocation.
#[derive(Clone)]
pub struct PodIps {
    shards: Arc<[Arc<Shard>]>,
}

impl Default for PodIps {
    fn default() -> Self {
        PodIps {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
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
        self.shards[shard_of(namespace, name)].get(namespace, name)
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
                    .filter(|(k, v)| old.get(&k.namespace, &k.name) != Some(*v))
                    .map(|(k, _)| k),
            );
            out.extend(
                old.iter()
                    .filter(|(k, _)| new.find(&k.namespace, &k.name).is_err())
                    .map(|(k, _)| k),
            );
        }
        out
    }

    /// Every pod and its addresses, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&PodName, &[IpAddr])> {
        self.shards.iter().flat_map(|s| s.iter())
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
            .get(&pod.namespace, &pod.name)
            .is_some_and(|v| v.binary_search(&ip).is_ok())
        {
            return;
        }
        let shard = self.shard_mut(i);
        match shard.find(&pod.namespace, &pod.name) {
            Ok(j) => {
                let v = &mut shard.0[j].1;
                let mut ips = std::mem::take(v).into_vec();
                let at = ips.binary_search(&ip).unwrap_or_else(|at| at);
                ips.insert(at, ip);
                *v = ips.into_boxed_slice();
            }
            Err(j) => shard.insert_at(j, pod.clone(), Box::new([ip])),
        }
    }

    /// Forgets `ip` of pod `namespace/name` (the pod when it has no other).
    pub fn remove(&mut self, namespace: &str, name: &str, ip: IpAddr) {
        let i = shard_of(namespace, name);
        if self.shards[i]
            .get(namespace, name)
            .is_none_or(|v| v.binary_search(&ip).is_err())
        {
            return;
        }
        let shard = self.shard_mut(i);
        let Ok(j) = shard.find(namespace, name) else {
            return;
        };
        let ips: Box<[IpAddr]> = shard.0[j].1.iter().copied().filter(|a| *a != ip).collect();
        if ips.is_empty() {
            shard.0.remove(j);
        } else {
            shard.0[j].1 = ips;
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

    /// Random inserts and removals over a few thousand pods agree with a
    /// plain map: lookups, counts, iteration (each shard's list stays
    /// sorted, or its binary searches would miss).
    #[test]
    fn agrees_with_a_map_under_random_writes() {
        use std::collections::{BTreeMap, BTreeSet};
        let mut m = PodIps::default();
        let mut want: BTreeMap<(String, String), BTreeSet<IpAddr>> = BTreeMap::new();
        let mut r: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..40_000 {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            let (ns, name) = (
                format!("ns{}", (r >> 8) % 3),
                format!("p{}", (r >> 16) % 3000),
            );
            let ip = IpAddr::from([198, 19, ((r >> 40) % 3) as u8, ((r >> 48) % 3) as u8]);
            if !r.is_multiple_of(3) {
                m.insert(&PodName::new(&ns, &name), ip);
                want.entry((ns, name)).or_default().insert(ip);
            } else {
                m.remove(&ns, &name, ip);
                if let Some(s) = want.get_mut(&(ns.clone(), name.clone())) {
                    s.remove(&ip);
                    if s.is_empty() {
                        want.remove(&(ns, name));
                    }
                }
            }
        }
        assert_eq!(m.len(), want.len());
        assert_eq!(m.iter().count(), want.len());
        for ((ns, name), ips) in &want {
            let ips: Vec<IpAddr> = ips.iter().copied().collect();
            assert_eq!(m.get(ns, name), Some(&ips[..]), "{ns}/{name}");
        }
        assert_eq!(m.get("ns0", "p3000"), None);
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
