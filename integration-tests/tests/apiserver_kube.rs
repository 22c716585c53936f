//! The API test server driven by the `kube` crate: typed CRUD, CRDs derived
//! with `CustomResource`, compare-and-swap races, selectors, pagination.

mod apiserver_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use apiserver_support::{api_err, bounded, client, eventually, start};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions,
    PropagationPolicy,
};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Barrier;

fn pod(name: &str, labels: &[(&str, &str)], node: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": node},
    }))
    .expect("pod")
}

#[tokio::test]
async fn typed_crud_of_nodes_pods_and_network_policies() {
    let server = start().await;
    let c = client(&server);

    // Node (cluster-scoped), with status kept on create as kubelets rely on.
    let nodes: Api<Node> = Api::all(c.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.11"}]}
    }))
    .expect("node");
    let n = nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    assert_eq!(n.metadata.generation, Some(1));
    assert!(n.metadata.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert_eq!(
        n.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(Vec::len),
        Some(1)
    );
    let e = api_err(nodes.create(&PostParams::default(), &node).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        e.details
            .as_ref()
            .map(|d| (d.name.as_str(), d.kind.as_str())),
        Some(("n1", "nodes"))
    );

    // Pod in a namespace; 404 for a namespace that does not exist.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let p = pods
        .create(
            &PostParams::default(),
            &pod("p1", &[("app", "web")], Some("n1")),
        )
        .await
        .expect("create pod");
    assert_eq!(p.namespace().as_deref(), Some("default"));
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    let e = api_err(
        Api::<Pod>::namespaced(c.clone(), "nope")
            .create(&PostParams::default(), &pod("x", &[], None))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));

    // get / list / replace / patch / status.
    let got = pods.get("p1").await.expect("get");
    assert_eq!(got.uid(), p.metadata.uid);
    let list = pods.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    let mut changed = got.clone();
    changed.labels_mut().insert("tier".into(), "fe".into());
    let replaced = pods
        .replace("p1", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_ne!(replaced.resource_version(), got.resource_version());
    assert_eq!(
        replaced.metadata.generation,
        Some(1),
        "labels are metadata: generation unchanged"
    );
    let patched = pods
        .patch(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": null}}})),
        )
        .await
        .expect("merge patch");
    assert!(!patched.labels().contains_key("tier"));
    let strategic = pods
        .patch(
            "p1",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}),
            ),
        )
        .await
        .expect("strategic patch");
    assert_eq!(strategic.spec.as_ref().map(|s| s.containers.len()), Some(1));
    assert_eq!(
        strategic
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].image.as_deref()),
        Some("busybox:2")
    );
    assert_eq!(strategic.metadata.generation, Some(2));
    let st = pods
        .patch_status(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "198.19.0.2"}})),
        )
        .await
        .expect("status patch");
    assert_eq!(
        st.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        Some("198.19.0.2")
    );
    let e = api_err(
        pods.patch("p1", &PatchParams::apply("test"), &Patch::Apply(json!({})))
            .await,
    );
    assert_eq!(e.code, 415);

    // NetworkPolicy round trip keeps the spec.
    let nps: Api<NetworkPolicy> = Api::namespaced(c.clone(), "default");
    let np: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-web"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": "198.19.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 80}]}]}
    }))
    .expect("np");
    let created = nps
        .create(&PostParams::default(), &np)
        .await
        .expect("create np");
    assert_eq!(created.spec, np.spec);
    assert_eq!(
        nps.list(&ListParams::default())
            .await
            .expect("list np")
            .items
            .len(),
        1
    );

    // Delete: preconditions, then the real thing; then 404.
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_err(pods.delete("p1", &dp).await).code, 409);
    let dp = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    pods.delete("p1", &dp).await.expect("dry-run delete");
    assert!(
        pods.get_opt("p1").await.expect("get_opt").is_some(),
        "dry run deletes nothing"
    );
    pods.delete("p1", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(pods.get_opt("p1").await.expect("get_opt").is_none());
    let e = api_err(pods.get("p1").await);
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (404, "NotFound", "pods \"p1\" not found")
    );
    nps.delete("allow-web", &DeleteParams::default())
        .await
        .expect("delete np");
    nodes
        .delete("n1", &DeleteParams::default())
        .await
        .expect("delete node");

    // Namespace deletion removes what is inside.
    let nss: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}),
    )
    .expect("ns");
    let ns = nss
        .create(&PostParams::default(), &ns)
        .await
        .expect("create ns");
    assert_eq!(
        ns.labels()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("team-a")
    );
    let in_ns: Api<Pod> = Api::namespaced(c.clone(), "team-a");
    in_ns
        .create(&PostParams::default(), &pod("q", &[], None))
        .await
        .expect("create in ns");
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..Default::default()
    };
    nss.delete("team-a", &dp).await.expect("delete ns");
    assert!(
        in_ns
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    server.shutdown().await.expect("shutdown");
}

/// A CRD defined the way Margay defines its own.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "test.margay.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd"
)]
pub struct WidgetSpec {
    size: u32,
    cidr: String,
}

/// Status of a [`Widget`].
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Default)]
pub struct WidgetStatus {
    ready: bool,
}

/// A cluster-scoped CRD.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(group = "test.margay.dev", version = "v1alpha1", kind = "Gadget")]
pub struct GadgetSpec {
    owner: String,
}

#[tokio::test]
async fn derived_crds_become_served_resources() {
    let server = start().await;
    let c = client(&server);
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let widgets: Api<Widget> = Api::namespaced(c.clone(), "default");
    assert_eq!(
        api_err(widgets.list(&ListParams::default()).await).code,
        404,
        "not served before the CRD"
    );

    for crd in [Widget::crd(), Gadget::crd()] {
        let created = crds
            .create(&PostParams::default(), &crd)
            .await
            .expect("create crd");
        let conds = created
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        assert!(
            conds
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{conds:?}"
        );
    }
    let w = Widget::new(
        "w1",
        WidgetSpec {
            size: 3,
            cidr: "198.19.0.0/26".into(),
        },
    );
    let created = widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create widget");
    assert_eq!(created.spec, w.spec);
    assert_eq!(created.status, None);
    let st = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await
        .expect("status");
    assert_eq!(st.status, Some(WidgetStatus { ready: true }));
    // Main-resource writes cannot change status; spec changes bump generation.
    let mut upd = st.clone();
    upd.spec.size = 4;
    upd.status = Some(WidgetStatus { ready: false });
    let upd = widgets
        .replace("w1", &PostParams::default(), &upd)
        .await
        .expect("replace");
    assert_eq!(
        (upd.spec.size, upd.status.clone(), upd.metadata.generation),
        (4, Some(WidgetStatus { ready: true }), Some(2))
    );
    // Strategic merge patch is not allowed on custom resources (as in Kubernetes).
    let e = api_err(
        widgets
            .patch(
                "w1",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"size": 1}})),
            )
            .await,
    );
    assert_eq!(e.code, 415);

    let gadgets: Api<Gadget> = Api::all(c.clone());
    gadgets
        .create(
            &PostParams::default(),
            &Gadget::new("g1", GadgetSpec { owner: "me".into() }),
        )
        .await
        .expect("create gadget");
    assert_eq!(
        gadgets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    // Discovery lists the new resources with their scope.
    let (code, doc) =
        apiserver_support::raw(&c, "GET", "/apis/test.margay.dev/v1", None, vec![]).await;
    assert_eq!(code, 200);
    let res = doc["resources"].as_array().cloned().unwrap_or_default();
    assert!(
        res.iter().any(|r| r["name"] == "widgets"
            && r["namespaced"] == true
            && r["shortNames"][0] == "wd"),
        "{doc}"
    );
    assert!(res.iter().any(|r| r["name"] == "widgets/status"));
    let (_, groups) = apiserver_support::raw(&c, "GET", "/apis", None, vec![]).await;
    let g = groups["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "test.margay.dev").cloned())
        .expect("group listed");
    assert_eq!(
        g["preferredVersion"]["version"], "v1",
        "GA preferred over v1alpha1"
    );

    // kube's discovery finds them, aggregated (one request per root) and legacy.
    let gvk = kube::api::GroupVersionKind::gvk("test.margay.dev", "v1", "Widget");
    for aggregated in [true, false] {
        let d = kube::Discovery::new(c.clone());
        let d = if aggregated {
            d.run_aggregated().await
        } else {
            d.run().await
        }
        .expect("discovery");
        let (ar, caps) = d.resolve_gvk(&gvk).expect("Widget discovered");
        assert_eq!(
            (ar.plural.as_str(), caps.scope.clone()),
            ("widgets", kube::discovery::Scope::Namespaced)
        );
        let pods = kube::api::GroupVersionKind::gvk("", "v1", "Pod");
        assert!(
            d.resolve_gvk(&pods).is_some_and(|(_, caps)| caps
                .subresources
                .iter()
                .any(|(s, _)| s.plural == "pods/status" || s.plural == "status")),
            "aggregated={aggregated}"
        );
    }

    // Deleting the CRD deletes its objects and stops serving them.
    crds.delete("widgets.test.margay.dev", &DeleteParams::default())
        .await
        .expect("delete crd");
    assert_eq!(api_err(widgets.get("w1").await).code, 404);
    crds.create(&PostParams::default(), &Widget::crd())
        .await
        .expect("re-create crd");
    assert!(
        widgets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "objects went with the CRD"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_updates_exactly_one_wins() {
    let server = start().await;
    let c = client(&server);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "counter"}, "data": {"n": "0"}}))
        .expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    const ROUNDS: usize = 100;
    for round in 0..ROUNDS {
        let base = cms.get("counter").await.expect("get");
        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = Vec::new();
        for who in ["a", "b"] {
            let (cms, barrier, mut mine) = (cms.clone(), barrier.clone(), base.clone());
            mine.data = Some(BTreeMap::from([
                ("n".to_string(), format!("{}", round + 1)),
                ("by".to_string(), who.to_string()),
            ]));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                (
                    who,
                    cms.replace("counter", &PostParams::default(), &mine).await,
                )
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (who, r) = bounded("cas task", t).await.expect("task");
            match r {
                Ok(_) => winners.push(who),
                Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict" => {}
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let now = cms.get("counter").await.expect("get");
        let data = now.data.unwrap_or_default();
        assert_eq!(
            data.get("by").map(String::as_str),
            Some(winners[0]),
            "round {round}: the stored value is the winner's"
        );
        assert_eq!(
            data.get("n").map(String::as_str),
            Some(format!("{}", round + 1).as_str())
        );
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn label_and_field_selectors() {
    let server = start().await;
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    type Spec<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let specs: [Spec<'_>; 4] = [
        ("a", &[("app", "web"), ("tier", "fe")], Some("n1")),
        ("b", &[("app", "web")], Some("n2")),
        ("c", &[("app", "db"), ("tier", "be")], Some("n1")),
        ("d", &[], None),
    ];
    for (n, l, node) in specs {
        pods.create(&PostParams::default(), &pod(n, l, node))
            .await
            .expect("create");
    }
    pods.patch_status(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("status");
    let names = |lp: ListParams| {
        let pods = pods.clone();
        async move {
            let mut v: Vec<String> = pods
                .list(&lp)
                .await
                .expect("list")
                .items
                .iter()
                .map(|p| p.name_any())
                .collect();
            v.sort();
            v
        }
    };
    let l = |s: &str| ListParams::default().labels(s);
    let f = |s: &str| ListParams::default().fields(s);
    assert_eq!(names(l("app=web")).await, ["a", "b"]);
    assert_eq!(names(l("app==web")).await, ["a", "b"]);
    assert_eq!(names(l("app!=web")).await, ["c", "d"]);
    assert_eq!(names(l("app in (db,web),tier")).await, ["a", "c"]);
    assert_eq!(names(l("app notin (web)")).await, ["c", "d"]);
    assert_eq!(names(l("!tier")).await, ["b", "d"]);
    assert_eq!(names(f("spec.nodeName=n1")).await, ["a", "c"]);
    assert_eq!(names(f("spec.nodeName!=n1")).await, ["b", "d"]);
    assert_eq!(names(f("spec.nodeName=")).await, ["d"]);
    assert_eq!(names(f("status.phase=Running")).await, ["c"]);
    assert_eq!(
        names(f("metadata.name=b,metadata.namespace=default")).await,
        ["b"]
    );
    assert_eq!(names(f("spec.nodeName=n1").labels("tier=be")).await, ["c"]);
    let all: Api<Pod> = Api::all(c.clone());
    assert_eq!(
        all.list(&f("metadata.namespace=default"))
            .await
            .expect("list")
            .items
            .len(),
        4
    );
    let e = api_err(pods.list(&f("spec.bogus=1")).await);
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    assert!(
        e.message.contains("field label not supported"),
        "{}",
        e.message
    );
    assert_eq!(api_err(pods.list(&l("app in (")).await).code, 400);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn pagination_is_consistent_and_expires_after_compaction() {
    let server = start().await;
    let c = client(&server);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for i in 0..25 {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("cm{i:02}")),
                ..Default::default()
            },
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let first = cms
        .list(&ListParams::default().limit(10))
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(15));
    let snapshot_rv = first.metadata.resource_version.clone();
    // Changes after the first page do not show in later pages.
    cms.delete("cm15", &DeleteParams::default())
        .await
        .expect("delete");
    let extra = ConfigMap {
        metadata: ObjectMeta {
            name: Some("cm12a".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &extra)
        .await
        .expect("create");
    let mut seen: Vec<String> = first.items.iter().map(|i| i.name_any()).collect();
    let mut token = first.metadata.continue_.clone();
    let mut pages = 1;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = cms
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .expect("next page");
        assert_eq!(
            page.metadata.resource_version, snapshot_rv,
            "every page is the same snapshot"
        );
        seen.extend(page.items.iter().map(|i| i.name_any()));
        token = page.metadata.continue_;
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (0..25).map(|i| format!("cm{i:02}")).collect::<Vec<_>>()
    );
    // A continue token from before a compaction is gone (410), like etcd's.
    let first = cms
        .list(&ListParams::default().limit(5))
        .await
        .expect("page 1");
    cms.delete("cm00", &DeleteParams::default())
        .await
        .expect("delete");
    server.compact().await.expect("compact");
    let t = first.metadata.continue_.expect("token");
    let e = api_err(
        cms.list(&ListParams::default().limit(5).continue_token(&t))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
    eventually("list works again", || async {
        cms.list(&ListParams::default()).await.is_ok()
    })
    .await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn kube_runtime_events_are_stored() {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::Resource as _;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let server = start().await;
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &pod("evented", &[], None))
        .await
        .expect("create");
    let recorder = Recorder::new(
        c.clone(),
        Reporter {
            controller: "margay-test".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Allocated".into(),
        note: Some("block 198.19.0.0/26".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    let reference = p.object_ref(&());
    recorder
        .publish(&ev, &reference)
        .await
        .expect("first publish creates");
    recorder
        .publish(&ev, &reference)
        .await
        .expect("second publish patches the series");
    let events: Api<K8sEvent> = Api::namespaced(c.clone(), "default");
    let list = events
        .list(&ListParams::default())
        .await
        .expect("list events");
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("Allocated"));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("evented")
    );
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    server.shutdown().await.expect("shutdown");
}
