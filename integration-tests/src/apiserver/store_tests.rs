//! Store semantics without HTTP.

use serde_json::json;

use super::*;
use crate::apiserver::patch::PatchKind;
use crate::apiserver::write::DeleteOpts;

fn def(s: &Store, g: &str, v: &str, p: &str) -> Arc<ResourceDef> {
    s.registry
        .lookup(g, v, p)
        .unwrap_or_else(|| panic!("{p} not served"))
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn names(items: &[Obj]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i.value()["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn create_sets_metadata_and_rejects_duplicates() {
    let mut s = Store::new(100);
    let pods = def(&s, "", "v1", "pods");
    let w = s
        .create(&pods, Some("default"), pod("a", json!({})), false)
        .unwrap();
    assert_eq!(w.code, 201);
    let o = &w.body;
    assert_eq!(o["metadata"]["namespace"], "default");
    assert_eq!(o["metadata"]["generation"], 1);
    assert_eq!(o["status"], json!({"phase": "Pending"}));
    assert_eq!(o["metadata"]["uid"].as_str().map(str::len), Some(36));
    assert_eq!(rv(o), s.current_rv().to_string());
    assert_eq!(
        s.create(&pods, Some("default"), pod("a", json!({})), false)
            .unwrap_err()
            .reason,
        "AlreadyExists"
    );
    assert_eq!(
        s.create(&pods, Some("nope"), pod("b", json!({})), false)
            .unwrap_err()
            .code,
        404
    );
    assert_eq!(
        s.create(&pods, Some("default"), pod("Bad_Name", json!({})), false)
            .unwrap_err()
            .code,
        422
    );
    let mut g = pod("", json!({}));
    g["metadata"]["generateName"] = json!("web-");
    let w = s.create(&pods, Some("default"), g, false).unwrap();
    let n = w.body["metadata"]["name"].as_str().unwrap();
    assert!(n.starts_with("web-") && n.len() == 9, "{n}");
}

#[test]
fn stale_update_conflicts_and_generation_tracks_spec() {
    let mut s = Store::new(100);
    let pods = def(&s, "", "v1", "pods");
    let created = s
        .create(&pods, Some("default"), pod("a", json!({})), false)
        .unwrap()
        .body;
    let mut v1 = (*created).clone();
    v1["metadata"]["labels"] = json!({"x": "1"});
    let u1 = s
        .update(&pods, Some("default"), "a", v1, false, false)
        .unwrap()
        .body;
    assert_eq!(
        u1["metadata"]["generation"], 1,
        "metadata change keeps generation"
    );
    let mut stale = (*created).clone();
    stale["spec"]["containers"][0]["image"] = json!("j");
    let e = s
        .update(&pods, Some("default"), "a", stale.clone(), false, false)
        .unwrap_err();
    assert_eq!((e.code, e.reason), (409, "Conflict"));
    stale["metadata"]["resourceVersion"] = json!(rv(&u1));
    let u2 = s
        .update(&pods, Some("default"), "a", stale.clone(), false, false)
        .unwrap()
        .body;
    assert_eq!(u2["metadata"]["generation"], 2);
    // Status is ignored on the main resource, and only status counts on /status.
    let mut st = (*u2).clone();
    st["status"] = json!({"phase": "Running"});
    let u3 = s
        .update(&pods, Some("default"), "a", st.clone(), false, false)
        .unwrap()
        .body;
    assert_eq!(u3["status"]["phase"], "Pending");
    assert_eq!(rv(&u3), rv(&u2), "no-op update does not bump the revision");
    let u4 = s
        .update(&pods, Some("default"), "a", st, true, false)
        .unwrap()
        .body;
    assert_eq!(u4["status"]["phase"], "Running");
    assert_eq!(u4["metadata"]["generation"], 2);
    // Unconditional update (no resourceVersion) wins.
    let mut un = (*u4).clone();
    un["metadata"]["resourceVersion"] = json!("");
    un["metadata"]["labels"] = json!({"y": "2"});
    assert!(
        s.update(&pods, Some("default"), "a", un, false, false)
            .is_ok()
    );
}

#[test]
fn patches_and_dry_run() {
    let mut s = Store::new(100);
    let pods = def(&s, "", "v1", "pods");
    s.create(&pods, Some("default"), pod("a", json!({"k": "v"})), false)
        .unwrap();
    let before = s.current_rv();
    let p = json!({"metadata": {"labels": {"k": null, "n": "1"}}});
    let dry = s
        .patch(
            &pods,
            Some("default"),
            "a",
            PatchKind::Merge,
            &p,
            false,
            true,
        )
        .unwrap()
        .body;
    assert_eq!(dry["metadata"]["labels"], json!({"n": "1"}));
    assert_eq!(s.current_rv(), before, "dry run persists nothing");
    s.patch(
        &pods,
        Some("default"),
        "a",
        PatchKind::Merge,
        &p,
        false,
        false,
    )
    .unwrap();
    let jp = json!([{"op": "test", "path": "/metadata/labels/n", "value": "1"}, {"op": "add", "path": "/metadata/labels/m", "value": "2"}]);
    let o = s
        .patch(
            &pods,
            Some("default"),
            "a",
            PatchKind::Json,
            &jp,
            false,
            false,
        )
        .unwrap()
        .body;
    assert_eq!(o["metadata"]["labels"], json!({"n": "1", "m": "2"}));
    let bad = json!([{"op": "test", "path": "/metadata/labels/n", "value": "9"}]);
    assert_eq!(
        s.patch(
            &pods,
            Some("default"),
            "a",
            PatchKind::Json,
            &bad,
            false,
            false
        )
        .unwrap_err()
        .code,
        422
    );
    let stale = json!({"metadata": {"resourceVersion": "1", "labels": {"z": "1"}}});
    assert_eq!(
        s.patch(
            &pods,
            Some("default"),
            "a",
            PatchKind::Merge,
            &stale,
            false,
            false
        )
        .unwrap_err()
        .code,
        409
    );
    assert_eq!(
        s.patch(
            &pods,
            Some("default"),
            "a",
            PatchKind::Apply,
            &json!({}),
            false,
            false
        )
        .unwrap_err()
        .code,
        415
    );
}

#[test]
fn delete_preconditions_finalizers_and_namespace_cascade() {
    let mut s = Store::new(100);
    let (pods, nss) = (def(&s, "", "v1", "pods"), def(&s, "", "v1", "namespaces"));
    s.create(
        &nss,
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}}),
        false,
    )
    .unwrap();
    let ns = s.get(&nss, None, "t").unwrap();
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "t");
    assert_eq!(ns["status"]["phase"], "Active");
    let a = s
        .create(&pods, Some("t"), pod("a", json!({})), false)
        .unwrap()
        .body;
    let e = s
        .delete(
            &pods,
            Some("t"),
            "a",
            &DeleteOpts {
                uid: Some("other".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.code, 409);
    let e = s
        .delete(
            &pods,
            Some("t"),
            "a",
            &DeleteOpts {
                resource_version: Some("1".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.code, 409);
    let uid = a["metadata"]["uid"].as_str().map(str::to_string);
    assert!(
        s.delete(
            &pods,
            Some("t"),
            "a",
            &DeleteOpts {
                uid: uid.clone(),
                dry_run: true,
                ..Default::default()
            }
        )
        .is_ok()
    );
    assert!(s.get(&pods, Some("t"), "a").is_ok());
    assert!(
        s.delete(
            &pods,
            Some("t"),
            "a",
            &DeleteOpts {
                uid,
                ..Default::default()
            }
        )
        .is_ok()
    );
    assert_eq!(s.get(&pods, Some("t"), "a").unwrap_err().code, 404);

    // Finalizers hold the object until the last one is removed.
    let mut f = pod("f", json!({}));
    f["metadata"]["finalizers"] = json!(["margay.dev/x"]);
    s.create(&pods, Some("t"), f, false).unwrap();
    let held = s
        .delete(&pods, Some("t"), "f", &DeleteOpts::default())
        .unwrap()
        .body;
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    let mut more = (*held).clone();
    more["metadata"]["finalizers"] = json!(["margay.dev/x", "margay.dev/y"]);
    assert_eq!(
        s.update(&pods, Some("t"), "f", more, false, false)
            .unwrap_err()
            .code,
        422
    );
    let mut rel = (*held).clone();
    rel["metadata"]["finalizers"] = json!([]);
    s.update(&pods, Some("t"), "f", rel, false, false).unwrap();
    assert_eq!(s.get(&pods, Some("t"), "f").unwrap_err().code, 404);

    s.create(&pods, Some("t"), pod("b", json!({})), false)
        .unwrap();
    s.drain_outbox();
    s.delete(&nss, None, "t", &DeleteOpts::default()).unwrap();
    let evs = s.drain_outbox();
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| e.kind == EventType::Deleted));
    assert_eq!(evs[0].gr.plural, "pods");
    assert_eq!(s.get(&pods, Some("t"), "b").unwrap_err().code, 404);
}

#[test]
fn pagination_reads_a_consistent_snapshot() {
    let mut s = Store::new(1000);
    let pods = def(&s, "", "v1", "pods");
    for i in 0..10 {
        s.create(
            &pods,
            Some("default"),
            pod(&format!("p{i}"), json!({})),
            false,
        )
        .unwrap();
    }
    let o = ListOpts {
        limit: 4,
        ..Default::default()
    };
    let first = s.list(&pods, Some("default"), &o).unwrap();
    assert_eq!(names(&first.items), ["p0", "p1", "p2", "p3"]);
    assert_eq!(first.remaining, Some(6));
    // Changes after the first page must not show in later pages.
    s.delete(&pods, Some("default"), "p5", &DeleteOpts::default())
        .unwrap();
    s.create(&pods, Some("default"), pod("p45", json!({})), false)
        .unwrap();
    let mut p7 = (*s.get(&pods, Some("default"), "p7").unwrap()).clone();
    p7["metadata"]["labels"] = json!({"changed": "yes"});
    s.update(&pods, Some("default"), "p7", p7, false, false)
        .unwrap();
    let mut all = names(&first.items);
    let mut tok = first.continue_token.clone();
    while let Some(t) = tok {
        let page = s
            .list(
                &pods,
                Some("default"),
                &ListOpts {
                    limit: 4,
                    continue_token: t,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(page.rv, first.rv);
        for i in &page.items {
            assert!(
                i.value()["metadata"]
                    .get("labels")
                    .is_none_or(|l| l.get("changed").is_none()),
                "saw a later change"
            );
        }
        all.extend(names(&page.items));
        tok = page.continue_token;
    }
    assert_eq!(all, (0..10).map(|i| format!("p{i}")).collect::<Vec<_>>());
    // Compaction makes the token expire.
    let first = s.list(&pods, Some("default"), &o).unwrap();
    s.create(&pods, Some("default"), pod("late", json!({})), false)
        .unwrap();
    s.compact();
    let e = s
        .list(
            &pods,
            Some("default"),
            &ListOpts {
                continue_token: first.continue_token.unwrap(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!((e.code, e.reason), (410, "Expired"));
    let e = s
        .list(
            &pods,
            None,
            &ListOpts {
                continue_token: "garbage".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.code, 400);
}

#[test]
fn watch_replays_history_and_selectors_turn_changes_into_add_delete() {
    let mut s = Store::new(1000);
    let pods = def(&s, "", "v1", "pods");
    let start = s.current_rv();
    s.create(
        &pods,
        Some("default"),
        pod("a", json!({"app": "web"})),
        false,
    )
    .unwrap();
    let b = s
        .create(
            &pods,
            Some("default"),
            pod("b", json!({"app": "db"})),
            false,
        )
        .unwrap()
        .body;
    let mut b2 = (*b).clone();
    b2["metadata"]["labels"] = json!({"app": "web"});
    let b2 = s
        .update(&pods, Some("default"), "b", b2, false, false)
        .unwrap()
        .body;
    let mut b3 = (*b2).clone();
    b3["metadata"]["labels"] = json!({"app": "db"});
    s.update(&pods, Some("default"), "b", b3, false, false)
        .unwrap();
    let o = WatchOpts {
        list: ListOpts {
            label_selector: "app=web".into(),
            resource_version: start.to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    let w = s.watch(&pods, Some("default"), &o).unwrap();
    let seen: Vec<(EventType, String)> = w
        .initial
        .iter()
        .filter_map(|i| match i {
            Initial::Event(t, o) => Some((
                *t,
                o.value()["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )),
            Initial::InitialEventsEnd(_) => None,
        })
        .collect();
    assert_eq!(
        seen,
        [
            (EventType::Added, "a".into()),
            (EventType::Added, "b".into()),
            (EventType::Deleted, "b".into())
        ]
    );
    // RV 0: current state as ADDED.
    let w = s.watch(&pods, None, &WatchOpts::default()).unwrap();
    assert_eq!(w.initial.len(), 2);
    // Too old: 410.
    s.compact();
    let w = s
        .watch(
            &pods,
            None,
            &WatchOpts {
                list: ListOpts {
                    resource_version: start.to_string(),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(w.expired.map(|e| e.code), Some(410));
    // Streaming list needs NotOlderThan + bookmarks, and ends with the marker.
    let mut o = WatchOpts {
        send_initial_events: true,
        bookmarks: true,
        ..Default::default()
    };
    assert_eq!(s.watch(&pods, None, &o).unwrap_err().code, 422);
    o.list.resource_version_match = "NotOlderThan".into();
    let w = s.watch(&pods, None, &o).unwrap();
    assert!(matches!(w.initial.last(), Some(Initial::InitialEventsEnd(r)) if *r == s.current_rv()));
}

#[test]
fn crds_serve_and_clean_up() {
    let mut s = Store::new(1000);
    let crds = def(
        &s,
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
    );
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "blocks.margay.dev"},
        "spec": {"group": "margay.dev", "scope": "Cluster", "names": {"plural": "blocks", "kind": "Block"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                         {"name": "v1beta1", "served": true, "storage": false}]}});
    assert!(s.registry.lookup("margay.dev", "v1", "blocks").is_none());
    s.create(&crds, None, crd.clone(), true).unwrap();
    assert!(
        s.registry.lookup("margay.dev", "v1", "blocks").is_none(),
        "dry run serves nothing"
    );
    s.create(&crds, None, crd, false).unwrap();
    let blocks = def(&s, "margay.dev", "v1", "blocks");
    assert!(!blocks.namespaced);
    let b = json!({"apiVersion": "margay.dev/v1", "kind": "Block", "metadata": {"name": "b1"}, "spec": {"cidr": "198.19.0.0/26"}, "status": {"x": 1}});
    let created = s.create(&blocks, None, b, false).unwrap().body;
    assert!(
        created.get("status").is_none(),
        "status subresource drops status on create"
    );
    // As the real server: a write of the main resource keeps the stored
    // status; a status write keeps the stored spec (and the generation).
    let rv = |o: &Value| o["metadata"]["resourceVersion"].clone();
    let mut main = (*created).clone();
    main["spec"]["cidr"] = json!("198.19.0.64/26");
    main["status"] = json!({"x": 2});
    let u = s
        .update(&blocks, None, "b1", main, false, false)
        .unwrap()
        .body;
    assert_eq!(u["spec"]["cidr"], "198.19.0.64/26");
    assert!(
        u.get("status").is_none(),
        "status ignored on the main resource"
    );
    let mut st = (*u).clone();
    st["spec"]["cidr"] = json!("198.19.0.128/26");
    st["status"] = json!({"conditions": [{"type": "Accepted", "status": "True"}]});
    let w = s
        .update(&blocks, None, "b1", st.clone(), true, false)
        .unwrap()
        .body;
    assert_eq!(
        w["spec"]["cidr"], "198.19.0.64/26",
        "spec ignored on /status"
    );
    assert_eq!(w["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(w["metadata"]["generation"], u["metadata"]["generation"]);
    assert_ne!(rv(&w), rv(&u));
    // A status write on the old resourceVersion is a conflict.
    assert_eq!(
        s.update(&blocks, None, "b1", st, true, false)
            .unwrap_err()
            .code,
        409
    );
    let old = def(&s, "margay.dev", "v1beta1", "blocks");
    assert_eq!(
        s.get(&old, None, "b1").unwrap()["spec"]["cidr"],
        "198.19.0.64/26"
    );
    assert_eq!(
        s.patch(
            &blocks,
            None,
            "b1",
            PatchKind::Strategic,
            &json!({}),
            false,
            false
        )
        .unwrap_err()
        .code,
        415
    );
    s.drain_outbox();
    s.delete(&crds, None, "blocks.margay.dev", &DeleteOpts::default())
        .unwrap();
    assert!(s.registry.lookup("margay.dev", "v1", "blocks").is_none());
    assert_eq!(s.drain_outbox().len(), 2, "object then CRD deleted");
}

#[test]
fn snapshot_round_trip_keeps_rv_and_crd_objects() {
    let mut s = Store::new(1000);
    let crds = def(
        &s,
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
    );
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.margay.dev"},
        "spec": {"group": "margay.dev", "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
            "versions": [{"name": "v1", "served": true, "storage": true}]}});
    s.create(&crds, None, crd, false).unwrap();
    let things = def(&s, "margay.dev", "v1", "things");
    let t = s
        .create(
            &things,
            Some("default"),
            json!({"apiVersion": "margay.dev/v1", "kind": "Thing", "metadata": {"name": "t"}}),
            false,
        )
        .unwrap()
        .body;
    let snap = s.snapshot();
    let r = Store::from_snapshot(10, snap).unwrap();
    assert_eq!(r.current_rv(), s.current_rv());
    let things = def(&r, "margay.dev", "v1", "things");
    assert_eq!(r.get(&things, Some("default"), "t").unwrap(), t);
    assert_eq!(r.compacted_rv(), r.current_rv());
}

#[test]
fn deleting_an_unserved_crd_still_removes_its_objects() {
    let mut s = Store::new(100);
    let crds = def(
        &s,
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
    );
    let mut crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "pools.margay.dev"},
        "spec": {"group": "margay.dev", "scope": "Cluster", "names": {"plural": "pools", "kind": "Pool"},
            "versions": [{"name": "v1", "served": true, "storage": true}]}});
    s.create(&crds, None, crd.clone(), false).unwrap();
    let pools = def(&s, "margay.dev", "v1", "pools");
    s.create(
        &pools,
        None,
        json!({"apiVersion": "margay.dev/v1", "kind": "Pool", "metadata": {"name": "p"}}),
        false,
    )
    .unwrap();
    crd["spec"]["versions"][0]["served"] = json!(false);
    s.update(&crds, None, "pools.margay.dev", crd.clone(), false, false)
        .unwrap();
    assert!(s.registry.lookup("margay.dev", "v1", "pools").is_none());
    s.delete(&crds, None, "pools.margay.dev", &DeleteOpts::default())
        .unwrap();
    crd["spec"]["versions"][0]["served"] = json!(true);
    crd["metadata"] = json!({"name": "pools.margay.dev"});
    s.create(&crds, None, crd, false).unwrap();
    let pools = def(&s, "margay.dev", "v1", "pools");
    assert!(
        s.list(&pools, None, &ListOpts::default())
            .unwrap()
            .items
            .is_empty()
    );
}

#[test]
fn services_get_cluster_ips_as_the_real_server_fills_them() {
    let mut s = Store::new(100);
    let svcs = def(&s, "", "v1", "services");
    let svc = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec});
    let a = s
        .create(&svcs, Some("default"), svc("a", json!({})), false)
        .unwrap()
        .body;
    let ip = a["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.96."), "{ip}");
    assert_eq!(a["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(a["spec"]["type"], "ClusterIP");
    // A chosen clusterIP is kept, and clusterIPs follows it.
    let b = s
        .create(
            &svcs,
            Some("default"),
            svc("b", json!({"clusterIP": "198.19.250.10"})),
            false,
        )
        .unwrap()
        .body;
    assert_eq!(b["spec"]["clusterIPs"], json!(["198.19.250.10"]));
    let h = s
        .create(
            &svcs,
            Some("default"),
            svc("h", json!({"clusterIP": "None"})),
            false,
        )
        .unwrap()
        .body;
    assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
    // EndpointSlices are served as well.
    assert!(
        s.registry
            .lookup("discovery.k8s.io", "v1", "endpointslices")
            .is_some()
    );
}

#[test]
fn leases_are_namespaced_and_updates_are_compare_and_swap() {
    let mut s = Store::new(1000);
    let leases = def(&s, "coordination.k8s.io", "v1", "leases");
    assert!(leases.namespaced);
    let l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "margay-policy-status", "namespace": "default"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 15}});
    let c = s
        .create(&leases, Some("default"), l.clone(), false)
        .unwrap()
        .body;
    assert_eq!(
        s.create(&leases, Some("default"), l, false)
            .unwrap_err()
            .code,
        409,
        "one create wins"
    );
    let mut a = (*c).clone();
    a["spec"]["holderIdentity"] = json!("n2");
    let won = s
        .update(
            &leases,
            Some("default"),
            "margay-policy-status",
            a,
            false,
            false,
        )
        .unwrap()
        .body;
    assert_eq!(won["spec"]["holderIdentity"], "n2");
    let mut b = (*c).clone();
    b["spec"]["holderIdentity"] = json!("n3");
    assert_eq!(
        s.update(
            &leases,
            Some("default"),
            "margay-policy-status",
            b,
            false,
            false
        )
        .unwrap_err()
        .code,
        409,
        "an update on a stale resourceVersion loses"
    );
    assert!(
        s.get(&leases, Some("kube-system"), "margay-policy-status")
            .is_err()
    );
}
