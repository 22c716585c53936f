//! A pod's labels, compact: [`PodLabels`] is a shared, sorted slice of
//! shared (key, value) pairs whose strings are shared too, and a
//! [`LabelInterner`] hands out one copy of each string, of each pair and of
//! each whole label set.
//!
//! Every agent holds the labels of every pod of the cluster (the
//! PodEndpoint cache and the policy engine share them). A
//! `BTreeMap<String, String>` of 3-4 labels is one B-tree node of ~0.5 KB
//! plus a heap string per key and value; most keys and values repeat across
//! pods (`app`, `tier`, `version` and their values), and so do whole
//! pairs (`app=web`), so interned a label costs one pointer in its set.
//! What a pod's set of 4 labels costs then: the slice (16 B of counts + 8 B
//! per label) when no other pod has the same set, and the pairs and
//! strings that are its own (docs/scale.md, section 1).
//!
//! Matching is the selector's ([`crate::selector::Selector::matches`]
//! through [`LabelLookup`]): a key has at most one value, as in a map.
//!
//! The interner frees what no set uses any more: a string, pair or set held
//! only by the interner is dropped at its next collection, which runs when
//! the interner has grown to twice what was live after the last one (so
//! its cost is amortised over the insertions and its size stays within
//! twice the live sets, pairs and strings under any churn).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::model::Labels;
use crate::selector::LabelLookup;

/// One label, shared by every set that has it.
type Pair = Arc<(Arc<str>, Arc<str>)>;

/// A pod's labels: sorted by key, keys unique, cheap to clone (shared).
/// Equal label sets compare equal however they were made (interned or
/// not).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct PodLabels(Arc<[Pair]>);

impl PodLabels {
    /// The labels of `map`, with strings of their own (not interned: see
    /// [`LabelInterner::intern`] for shared ones).
    pub fn from_map(map: &Labels) -> PodLabels {
        map.iter()
            .map(|(k, v)| Arc::new((Arc::from(k.as_str()), Arc::from(v.as_str()))))
            .collect::<Vec<Pair>>()
            .into()
    }

    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|p| (*p.0).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Whether label `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// (key, value) pairs, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|p| (&*p.0, &*p.1))
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As a map (new strings).
    pub fn to_map(&self) -> Labels {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Whether the two are the same shared set (not only equal).
    pub fn ptr_eq(a: &PodLabels, b: &PodLabels) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// These labels with `key` set to `value` (a new set).
    pub fn with(&self, key: &str, value: &str) -> PodLabels {
        let mut v: Vec<Pair> = self.0.to_vec();
        let pair = Arc::new((key.into(), value.into()));
        match v.binary_search_by(|p| (*p.0).cmp(key)) {
            Ok(i) => v[i] = pair,
            Err(i) => v.insert(i, pair),
        }
        PodLabels(v.into())
    }

    /// Whether these are the labels of `map`.
    pub fn eq_map(&self, map: &Labels) -> bool {
        self.len() == map.len()
            && self
                .iter()
                .zip(map.iter())
                .all(|((k, v), (mk, mv))| k == mk && v == mv)
    }
}

/// Sorted by key, the last value of a repeated key kept (as a map would).
impl From<Vec<Pair>> for PodLabels {
    fn from(mut v: Vec<Pair>) -> PodLabels {
        // Stable: of equal keys, the last one given wins after the reverse
        // dedup below keeps the first of each run.
        v.reverse();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        PodLabels(v.into())
    }
}

impl From<&Labels> for PodLabels {
    fn from(map: &Labels) -> PodLabels {
        PodLabels::from_map(map)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for PodLabels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> PodLabels {
        iter.into_iter()
            .map(|(k, v)| Arc::new((Arc::from(k.as_ref()), Arc::from(v.as_ref()))))
            .collect::<Vec<Pair>>()
            .into()
    }
}

impl LabelLookup for PodLabels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl fmt::Debug for PodLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Hands out shared label sets: one copy of each distinct key or value
/// string, of each distinct pair and of each distinct set (see the module
/// doc for when unused ones are freed).
#[derive(Default)]
pub struct LabelInterner {
    strings: HashSet<Arc<str>>,
    pairs: HashSet<Pair>,
    sets: HashSet<Arc<[Pair]>>,
    /// Sets + pairs + strings held after the last collection.
    live: usize,
}

/// Fewest sets + pairs + strings before a collection is worth its scan.
const MIN_COLLECT: usize = 1024;

impl LabelInterner {
    /// An empty interner.
    pub fn new() -> LabelInterner {
        LabelInterner::default()
    }

    /// The shared set equal to `map`.
    pub fn intern(&mut self, map: &Labels) -> PodLabels {
        // A map is sorted by key: the pairs are in the set's order.
        let pairs: Vec<Pair> = map.iter().map(|(k, v)| self.pair(k, v)).collect();
        self.set(pairs)
    }

    /// The shared set equal to `labels` (`labels` itself when it is
    /// the interned one).
    pub fn intern_labels(&mut self, labels: &PodLabels) -> PodLabels {
        if let Some(s) = self.sets.get(&*labels.0) {
            return PodLabels(s.clone());
        }
        let pairs: Vec<Pair> = labels.iter().map(|(k, v)| self.pair(k, v)).collect();
        self.set(pairs)
    }

    fn string(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.strings.insert(a.clone());
        a
    }

    fn pair(&mut self, k: &str, v: &str) -> Pair {
        let probe = (self.string(k), self.string(v));
        if let Some(p) = self.pairs.get(&probe) {
            return p.clone();
        }
        let p = Arc::new(probe);
        self.pairs.insert(p.clone());
        p
    }

    fn set(&mut self, pairs: Vec<Pair>) -> PodLabels {
        if let Some(s) = self.sets.get(pairs.as_slice()) {
            return PodLabels(s.clone());
        }
        let s: Arc<[Pair]> = pairs.into();
        self.sets.insert(s.clone());
        if self.held() >= (2 * self.live).max(MIN_COLLECT) {
            self.collect();
        }
        PodLabels(s)
    }

    fn held(&self) -> usize {
        self.sets.len() + self.pairs.len() + self.strings.len()
    }

    /// Drops the sets, pairs and strings only the interner holds.
    pub fn collect(&mut self) {
        // Sets first, then pairs: what they hold is then held by live
        // ones only.
        self.sets.retain(|s| Arc::strong_count(s) > 1);
        self.pairs.retain(|p| Arc::strong_count(p) > 1);
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.sets.shrink_to(self.sets.len() * 2);
        self.pairs.shrink_to(self.pairs.len() * 2);
        self.strings.shrink_to(self.strings.len() * 2);
        self.live = self.held();
    }

    /// (sets, pairs + strings) held, live or not yet collected.
    pub fn len(&self) -> (usize, usize) {
        (self.sets.len(), self.pairs.len() + self.strings.len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.held() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;

    fn map(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn lookup_order_and_equality_follow_the_map() {
        let m = map(&[("tier", "web"), ("app", "a"), ("version", "v1")]);
        let l = PodLabels::from_map(&m);
        assert_eq!(l.get("app"), Some("a"));
        assert_eq!(l.get("tier"), Some("web"));
        assert_eq!(l.get("zone"), None);
        assert!(l.contains_key("version"));
        let keys: Vec<&str> = l.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["app", "tier", "version"]);
        assert_eq!(l.to_map(), m);
        assert!(l.eq_map(&m));
        assert!(!l.eq_map(&map(&[("app", "a")])));
        let mut i = LabelInterner::new();
        assert_eq!(i.intern(&m), l);
        assert_eq!(l.with("app", "b").get("app"), Some("b"));
        assert_eq!(l.with("b", "x").to_map().len(), 4);
        let dup: PodLabels = [("k", "1"), ("k", "2")].into_iter().collect();
        assert_eq!(dup.to_map(), map(&[("k", "2")]));
    }

    #[test]
    fn selectors_match_as_on_the_map() {
        let sels = [
            "app=a",
            "app!=a",
            "app in (a, b), tier",
            "!tier",
            "version notin (v1)",
            "zone",
            "",
        ];
        let maps = [
            map(&[]),
            map(&[("app", "a")]),
            map(&[("app", "b"), ("tier", "web"), ("version", "v1")]),
            map(&[("zone", ""), ("version", "v2")]),
        ];
        for s in sels {
            let sel: Selector = s.parse().unwrap();
            for m in &maps {
                assert_eq!(
                    sel.matches(&PodLabels::from_map(m)),
                    sel.matches(m),
                    "{s} on {m:?}"
                );
            }
        }
    }

    #[test]
    fn identical_sets_and_strings_are_shared() {
        let mut i = LabelInterner::new();
        let a = i.intern(&map(&[("app", "a"), ("tier", "web")]));
        let b = i.intern(&map(&[("app", "a"), ("tier", "web")]));
        assert!(PodLabels::ptr_eq(&a, &b));
        let c = i.intern(&map(&[("app", "a"), ("tier", "db")]));
        assert!(!PodLabels::ptr_eq(&a, &c));
        assert!(Arc::ptr_eq(&a.0[0].0, &c.0[0].0), "key app shared");
        assert!(Arc::ptr_eq(&a.0[0].1, &c.0[0].1), "value a shared");
        assert!(Arc::ptr_eq(&a.0[0], &c.0[0]), "pair app=a shared");
        assert!(Arc::ptr_eq(&a.0[1].0, &c.0[1].0), "key tier shared");
        // Strings app, a, tier, web, db; pairs app=a, tier=web, tier=db.
        assert_eq!(i.len(), (2, 8));
        let own = PodLabels::from_map(&map(&[("app", "a"), ("tier", "web")]));
        assert!(PodLabels::ptr_eq(&i.intern_labels(&own), &a));
    }

    #[test]
    fn unused_sets_and_strings_are_freed_under_churn() {
        let mut i = LabelInterner::new();
        let mut held: Vec<PodLabels> = (0..100)
            .map(|p| i.intern(&map(&[("app", "a"), ("hash", &format!("h{p}"))])))
            .collect();
        let mut peak = 0;
        // Every round relabels every pod with a value never seen before:
        // without collection the interner would grow by 200 per round.
        for round in 0..200 {
            for (p, l) in held.iter_mut().enumerate() {
                *l = i.intern(&map(&[("app", "a"), ("hash", &format!("h{round}-{p}"))]));
            }
            let (sets, strings) = i.len();
            peak = peak.max(sets + strings);
        }
        // Live: 100 sets, 100 hashes, "app", "a", "hash", and 101 pairs.
        assert!(peak <= 2 * 304 + MIN_COLLECT, "peak {peak}");
        drop(held);
        i.collect();
        assert!(i.is_empty(), "{:?}", i.len());
    }
}
