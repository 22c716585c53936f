use std::net::IpAddr;
use std::sync::Arc;

use kube::runtime::watcher::Event;

use super::*;
use crate::k8s::crd::{NamedPort, PodEndpoint, PodEndpointSpec};
use policy::PodLabels;

fn endpoint(ns: &str, name: &str, node: &str, rv: &str, app: &str, ip: &str) -> PodEndpoint {
    let mut e = PodEndpoint::new(
        name,
        PodEndpointSpec {
            node: node.into(),
            addresses: vec![ip.parse().expect("ip")],
            labels: [("app".to_string(), app.to_string())].into(),
            named_ports: vec![NamedPort {
                name: "http".into(),
                protocol: "TCP".into(),
                port: 8080,
            }],
        },
    );
    e.metadata.namespace = Some(ns.into());
    e.metadata.resource_version = Some(rv.into());
    e
}

/// [`endpoint`] from `"namespace name node resourceVersion app ip"`.
fn ep(fields: &str) -> PodEndpoint {
    let f: Vec<&str> = fields.split_whitespace().collect();
    endpoint(f[0], f[1], f[2], f[3], f[4], f[5])
}

fn names(c: &EndpointCache) -> Vec<String> {
    let mut v: Vec<String> = c
        .state()
        .iter()
        .map(|e| format!("{}/{}@{}", e.namespace(), e.name(), e.resource_version))
        .collect();
    v.sort();
    v
}

#[test]
fn apply_and_delete_change_the_map_at_once() {
    let (c, mut w) = cache();
    assert!(c.is_empty());
    w.apply_watcher_event(&Event::Apply(ep("ns a n1 1 x 198.19.0.1")));
    w.apply_watcher_event(&Event::Apply(ep("ns b n2 2 x 2001:db8::2")));
    assert_eq!(names(&c), ["ns/a@1", "ns/b@2"]);
    // An update replaces the entry.
    w.apply_watcher_event(&Event::Apply(ep("ns a n1 3 y 198.19.0.9")));
    let a = c.get("ns", "a").expect("a");
    assert_eq!(&*a.resource_version, "3");
    assert_eq!(a.pod.labels.get("app"), Some("y"));
    assert_eq!(a.addresses(), ["198.19.0.9".parse::<IpAddr>().expect("ip")]);
    assert_eq!(a.node(), "n1");
    // A delete by namespace and name (whatever the object's other fields).
    w.apply_watcher_event(&Event::Delete(endpoint(
        "ns",
        "b",
        "",
        "",
        "",
        "198.19.0.0",
    )));
    assert_eq!(names(&c), ["ns/a@3"]);
    assert!(c.get("ns", "b").is_none());
    // The same name in another namespace is another pod.
    w.apply_watcher_event(&Event::Apply(ep("other a n1 4 x 198.19.0.4")));
    assert_eq!(c.len(), 2);
    // An object without a namespace is not cached.
    let mut bad = ep("ns c n1 5 x 198.19.0.5");
    bad.metadata.namespace = None;
    w.apply_watcher_event(&Event::Apply(bad));
    assert_eq!(c.len(), 2);
}

/// A relist is invisible until `InitDone`, then replaces the map whole:
/// what the list no longer has is gone, what it has is current.
#[test]
fn a_relist_replaces_the_map_at_init_done() {
    let (c, mut w) = cache();
    w.apply_watcher_event(&Event::Init);
    w.apply_watcher_event(&Event::InitApply(ep("ns a n1 1 x 198.19.0.1")));
    // The first list: nothing until it is complete.
    assert!(c.is_empty());
    w.apply_watcher_event(&Event::InitApply(ep("ns b n1 2 x 198.19.0.2")));
    w.apply_watcher_event(&Event::InitDone);
    assert_eq!(names(&c), ["ns/a@1", "ns/b@2"]);
    // A relist (after a watch error): b gone, a changed, c new. Until
    // InitDone readers see the map as it was.
    w.apply_watcher_event(&Event::Init);
    w.apply_watcher_event(&Event::InitApply(ep("ns a n2 7 y 198.19.0.1")));
    w.apply_watcher_event(&Event::InitApply(ep("ns c n2 8 x 198.19.0.3")));
    assert_eq!(names(&c), ["ns/a@1", "ns/b@2"]);
    w.apply_watcher_event(&Event::InitDone);
    assert_eq!(names(&c), ["ns/a@7", "ns/c@8"]);
    assert_eq!(c.get("ns", "a").expect("a").node(), "n2");
    // A relist of nothing empties it.
    w.apply_watcher_event(&Event::Init);
    w.apply_watcher_event(&Event::InitDone);
    assert!(c.is_empty());
    // Unused interned names are dropped with their last entry.
    assert!(w.nodes.is_empty() && w.namespaces.is_empty());
    assert!(w.labels.is_empty(), "{:?}", w.labels.len());
}

/// An entry a relist finds at the same resourceVersion is the one held
/// before (not a new copy); labels that did not change keep their set, and
/// pods with the same labels share one set; namespace and node names and
/// port lists are one allocation each; the PodInfo policy gets is the
/// entry's own.
#[test]
fn unchanged_entries_and_labels_are_shared() {
    let (c, mut w) = cache();
    w.apply_watcher_event(&Event::Apply(ep("ns a n1 1 x 198.19.0.1")));
    w.apply_watcher_event(&Event::Apply(ep("ns b n1 1 x 198.19.0.2")));
    let a1 = c.get("ns", "a").expect("a");
    let b1 = c.get("ns", "b").expect("b");
    assert!(Arc::ptr_eq(a1.namespace(), b1.namespace()));
    let node = |e: &CachedEndpoint| e.pod.node_name.clone().expect("node");
    assert!(Arc::ptr_eq(&node(&a1), &node(&b1)));
    let (pa, pb) = (&a1.pod.ports, &b1.pod.ports);
    assert!(Arc::ptr_eq(pa, pb), "same ports, one list");
    assert!(
        PodLabels::ptr_eq(&a1.pod.labels, &b1.pod.labels),
        "same labels, one set"
    );
    let info = a1.pod_info().expect("info").clone();
    assert!(
        Arc::ptr_eq(&info, &a1.pod),
        "policy gets the entry's PodInfo"
    );
    // A new resourceVersion with the same labels (an address moved): the
    // label map stays the one policy holds.
    w.apply_watcher_event(&Event::Apply(ep("ns a n1 2 x 198.19.0.8")));
    let a2 = c.get("ns", "a").expect("a");
    assert!(PodLabels::ptr_eq(&a2.pod.labels, &info.labels));
    assert_eq!(
        a2.addresses(),
        ["198.19.0.8".parse::<IpAddr>().expect("ip")]
    );
    // New labels: a new set.
    w.apply_watcher_event(&Event::Apply(ep("ns a n1 3 z 198.19.0.8")));
    assert!(!PodLabels::ptr_eq(
        &c.get("ns", "a").expect("a").pod.labels,
        &info.labels
    ));
    // A relist: b unchanged is the same entry; a at a new version is new.
    w.apply_watcher_event(&Event::Init);
    w.apply_watcher_event(&Event::InitApply(ep("ns a n1 4 z 198.19.0.8")));
    w.apply_watcher_event(&Event::InitApply(ep("ns b n1 1 x 198.19.0.2")));
    w.apply_watcher_event(&Event::InitDone);
    assert!(Arc::ptr_eq(&c.get("ns", "b").expect("b"), &b1));
    assert_eq!(&*c.get("ns", "a").expect("a").resource_version, "4");
    // Interned values no entry uses any more go at a relist.
    let mut other = ep("ns c n2 1 x 198.19.0.3");
    other.spec.named_ports[0].port = 9999;
    w.apply_watcher_event(&Event::Apply(other));
    assert_eq!((w.nodes.len(), w.ports.len()), (2, 2));
    w.apply_watcher_event(&Event::Init);
    w.apply_watcher_event(&Event::InitApply(ep("ns b n1 1 x 198.19.0.2")));
    w.apply_watcher_event(&Event::InitDone);
    assert_eq!((w.nodes.len(), w.ports.len()), (1, 1));
}

/// Label churn does not grow the interner without bound: every pod
/// relabelled again and again with values never seen before (a unique
/// label per pod, as `pod-template-hash` can be), the interner holds at
/// most a bounded multiple of what the cache uses; and once the pods are
/// gone a relist leaves it empty.
#[test]
fn label_churn_frees_unused_interned_labels() {
    let (c, mut w) = cache();
    let pods = 200;
    let mut peak = 0;
    for round in 0..100 {
        for p in 0..pods {
            w.apply_watcher_event(&Event::Apply(ep(&format!(
                "ns p{p} n1 {round} v{round}-{p} 198.19.3.1"
            ))));
        }
        let (sets, strings) = w.labels.len();
        peak = peak.max(sets + strings);
    }
    assert_eq!(c.len(), pods);
    // Live: 200 sets, 200 pairs, 200 values and the key "app"; without
    // freeing, 100 rounds would leave 60,000 sets, pairs and strings.
    assert!(peak <= 2 * (3 * pods + 1) + 1024, "peak {peak}");
    for p in 0..pods {
        w.apply_watcher_event(&Event::Delete(ep(&format!("ns p{p} n1 x x 198.19.3.1"))));
    }
    w.apply_watcher_event(&Event::Init);
    w.apply_watcher_event(&Event::InitDone);
    assert!(w.labels.is_empty(), "{:?}", w.labels.len());
}

/// What readers get from the cache is what they got from kube's
/// reflector store of the same objects: the same PodInfo for policy, and
/// the same (namespace, name, node, addresses) set.
#[test]
fn readers_see_what_the_reflector_store_held() {
    let (c, mut w) = cache();
    let (store, mut sw) = kube::runtime::reflector::store::<PodEndpoint>();
    let mut objects = Vec::new();
    for i in 0..50u8 {
        let mut e = endpoint(
            &format!("ns{}", i % 4),
            &format!("p{i}"),
            &format!("n{}", i % 7),
            &format!("{}", 100 + u32::from(i)),
            &format!("a{}", i % 3),
            &format!("198.19.1.{i}"),
        );
        if i % 5 == 0 {
            e.spec
                .addresses
                .push(format!("2001:db8::{i}").parse().expect("ip"));
            e.spec.named_ports.clear();
        }
        objects.push(e);
    }
    let events = std::iter::once(Event::Init)
        .chain(objects.iter().cloned().map(Event::InitApply))
        .chain([
            Event::InitDone,
            Event::Delete(objects[3].clone()),
            Event::Apply(ep("ns1 p9 n3 999 q 198.19.2.9")),
        ]);
    for ev in events {
        w.apply_watcher_event(&ev);
        sw.apply_watcher_event(&ev);
    }
    let mut from_store: Vec<_> = store
        .state()
        .iter()
        .map(|e| e.to_pod_info().expect("info"))
        .collect();
    let mut from_cache: Vec<_> = c
        .state()
        .iter()
        .map(|e| PodInfo::clone(e.pod_info().expect("info")))
        .collect();
    from_store.sort_by(|a, b| a.key.cmp(&b.key));
    from_cache.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(from_store.len(), 49, "50 listed, one deleted, one updated");
    assert_eq!(from_cache, from_store);
    for e in store.state() {
        let mine = c
            .get(
                e.metadata.namespace.as_deref().expect("ns"),
                e.metadata.name.as_deref().expect("name"),
            )
            .expect("cached");
        assert_eq!(
            Some(&*mine.resource_version),
            e.metadata.resource_version.as_deref()
        );
        assert_eq!(mine.node(), e.spec.node);
        let mut addresses = e.spec.addresses.clone();
        addresses.sort();
        assert_eq!(mine.addresses(), addresses.as_slice());
        assert_eq!(
            &*mine.pod.ports,
            crate::k8s::crd::container_ports(&e.spec.named_ports)
                .expect("ports")
                .as_slice()
        );
    }
    // A named port policy cannot parse is an error, as from the object.
    let mut bad = ep("ns bad n1 1 x 198.19.0.1");
    bad.spec.named_ports[0].protocol = "GRE".into();
    w.apply_watcher_event(&Event::Apply(bad.clone()));
    let err = c
        .get("ns", "bad")
        .expect("bad")
        .pod_info()
        .map(|p| PodInfo::clone(p));
    assert_eq!(err, bad.to_pod_info());
    assert!(err.is_err());
    assert!(
        c.find(|e| e.addresses().contains(&"198.19.2.9".parse().expect("ip")))
            .is_some()
    );
}

/// `changes_since` gives exactly the entries made and the pods removed
/// after a number: updates, deletions, a relist that keeps one entry as
/// it is, drops one and changes one; nothing at all when nothing changed;
/// and None once the removals that old are no longer kept.
#[test]
fn changes_since_a_number_are_what_was_written_after_it() {
    let (c, mut w) = cache();
    for f in [
        "ns a n1 1 x 198.19.0.1",
        "ns b n1 1 x 198.19.0.2",
        "ns c n1 1 x 198.19.0.3",
    ] {
        w.apply_watcher_event(&Event::Apply(ep(f)));
    }
    let (all, s0) = c.state_and_seq();
    assert_eq!(all.len(), 3);
    let ch = c.changes_since(s0).expect("kept");
    assert!(ch.upserted.is_empty() && ch.removed.is_empty());
    assert_eq!(ch.seq, s0);
    // The same resourceVersion again is no change.
    w.apply_watcher_event(&Event::Apply(ep("ns a n1 1 x 198.19.0.1")));
    assert!(c.changes_since(s0).expect("kept").upserted.is_empty());
    w.apply_watcher_event(&Event::Apply(ep("ns a n1 2 y 198.19.0.1")));
    w.apply_watcher_event(&Event::Delete(ep("ns b n1 1 x 198.19.0.2")));
    let ch = c.changes_since(s0).expect("kept");
    let names = |v: &[Arc<CachedEndpoint>]| {
        let mut n: Vec<String> = v.iter().map(|e| e.name().to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&ch.upserted), ["a"]);
    assert_eq!(
        ch.removed.iter().map(|p| &*p.name).collect::<Vec<_>>(),
        ["b"]
    );
    let s1 = ch.seq;
    // A relist: a unchanged, c gone, d new.
    w.apply_watcher_event(&Event::Init);
    w.apply_watcher_event(&Event::InitApply(ep("ns a n1 2 y 198.19.0.1")));
    w.apply_watcher_event(&Event::InitApply(ep("ns d n1 5 x 198.19.0.4")));
    w.apply_watcher_event(&Event::InitDone);
    let ch = c.changes_since(s1).expect("kept");
    assert_eq!(names(&ch.upserted), ["d"]);
    assert_eq!(
        ch.removed.iter().map(|p| &*p.name).collect::<Vec<_>>(),
        ["c"]
    );
    // More removals than are kept: a reader that far behind reads all.
    let s2 = ch.seq;
    for i in 0..=CHANGES_KEPT {
        w.apply_watcher_event(&Event::Apply(ep(&format!("ns e n1 {i} x 198.19.0.5"))));
        w.apply_watcher_event(&Event::Delete(ep("ns e n1 0 x 198.19.0.5")));
    }
    assert!(c.changes_since(s2).is_none());
    let (_, now) = c.state_and_seq();
    assert!(c.changes_since(now).is_some());
}
