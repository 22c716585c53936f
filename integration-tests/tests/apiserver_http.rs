//! The API test server at the HTTP level: Status shapes, discovery, patch
//! types, dry-run, tables, protobuf bodies, resourceVersion rules,
//! persistence across restarts (in-process and as the binary).

mod apiserver_support;

use std::time::Duration;

use apiserver_support::{api_err, bounded, client, raw, raw_tcp, raw_with, start, start_with};
use futures::StreamExt as _;
use integration_tests::apiserver::Config;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

fn body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("json")
}

async fn create_pod(c: &Client, name: &str) -> Value {
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
    let (code, v) = raw(
        c,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some("application/json"),
        body(p),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    v
}

#[tokio::test]
async fn errors_are_kubernetes_status_objects() {
    let server = start().await;
    let c = client(&server);
    let (code, s) = raw(
        &c,
        "GET",
        "/api/v1/namespaces/default/pods/nope",
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        s,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "pods \"nope\" not found", "reason": "NotFound",
               "details": {"name": "nope", "kind": "pods"}, "code": 404})
    );
    let (code, s) = raw(
        &c,
        "GET",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/x",
        None,
        vec![],
    )
    .await;
    assert_eq!(
        (code, s["details"]["group"].as_str()),
        (404, Some("networking.k8s.io"))
    );
    assert_eq!(
        s["message"],
        "networkpolicies.networking.k8s.io \"x\" not found"
    );

    let pod = create_pod(&c, "p").await;
    let mut stale = pod.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let (code, s) = raw(
        &c,
        "PUT",
        "/api/v1/namespaces/default/pods/p",
        Some("application/json"),
        body(stale),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(s["reason"], "Conflict");
    assert_eq!(
        s["message"],
        "Operation cannot be fulfilled on pods \"p\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (code, s) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some("application/json"),
        body(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"}})),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(s["details"]["kind"], "Pod");
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueInvalid");
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some("application/json"),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(code, 400);
    let (code, s) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some("application/json"),
        body(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "x"}})),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")));
    let mut renamed = pod.clone();
    renamed["metadata"]["name"] = json!("other");
    assert_eq!(
        raw(
            &c,
            "PUT",
            "/api/v1/namespaces/default/pods/p",
            Some("application/json"),
            body(renamed)
        )
        .await
        .0,
        400
    );
    let (code, s) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/pods/p",
        Some("application/json"),
        body(json!({})),
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );
    assert_eq!(
        raw(&c, "GET", "/api/v1/nodes/x/status", None, vec![])
            .await
            .0,
        404
    );
    assert_eq!(
        raw(&c, "GET", "/apis/nope.io/v1/things", None, vec![])
            .await
            .0,
        404
    );
    assert_eq!(
        raw(&c, "GET", "/api/v1/namespaces/default/nodes", None, vec![])
            .await
            .0,
        404,
        "cluster-scoped under a namespace"
    );
    // kube retries 504s, so this one goes over a bare connection.
    let (code, s) = raw_tcp(
        &server,
        "GET",
        "/api/v1/pods?resourceVersion=999999&resourceVersionMatch=Exact",
        "application/json",
        b"",
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (504, Some("Timeout")));
    let (code, s) = raw(&c, "GET", "/api/v1/pods?dryRun=Maybe", None, vec![]).await;
    assert_eq!(code, 200, "dryRun is ignored on reads: {s}");
    let (code, _) = raw(
        &c,
        "DELETE",
        "/api/v1/namespaces/default/pods/p?dryRun=Maybe",
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 400);
    let big = vec![b' '; 9 << 20];
    assert_eq!(
        raw_tcp(
            &server,
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            &big
        )
        .await
        .0,
        413
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn discovery_documents() {
    let server = start().await;
    let c = client(&server);
    let (code, v) = raw(&c, "GET", "/version", None, vec![]).await;
    assert_eq!(
        (code, v["major"].as_str(), v["minor"].as_str()),
        (200, Some("1"), Some("32"))
    );
    let (_, v) = raw(&c, "GET", "/api", None, vec![]).await;
    assert_eq!(
        (v["kind"].as_str(), v["versions"][0].as_str()),
        (Some("APIVersions"), Some("v1"))
    );
    let (_, v) = raw(&c, "GET", "/api/v1", None, vec![]).await;
    let pods = v["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "pods").cloned())
        .expect("pods listed");
    assert_eq!(pods["kind"], "Pod");
    assert_eq!(pods["singularName"], "pod");
    assert_eq!(pods["namespaced"], true);
    assert!(
        pods["verbs"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "watch"))
    );
    let (_, v) = raw(&c, "GET", "/apis/apps", None, vec![]).await;
    assert_eq!(
        (
            v["kind"].as_str(),
            v["preferredVersion"]["groupVersion"].as_str()
        ),
        (Some("APIGroup"), Some("apps/v1"))
    );
    let (_, v) = raw(
        &c,
        "GET",
        "/apis/rbac.authorization.k8s.io/v1",
        None,
        vec![],
    )
    .await;
    let names: Vec<&str> = v["resources"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    for want in [
        "clusterroles",
        "clusterrolebindings",
        "roles",
        "rolebindings",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    let (code, v) = raw(&c, "GET", "/openapi/v2", None, vec![]).await;
    assert_eq!(code, 200);
    assert_eq!(
        v["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]["x-kubernetes-group-version-kind"]
            ["kind"],
        "Pod"
    );
    assert_eq!(raw(&c, "GET", "/apis/nope.io", None, vec![]).await.0, 404);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn patch_types_dry_run_and_generate_name() {
    let server = start().await;
    let c = client(&server);
    let pod = create_pod(&c, "p").await;
    let path = "/api/v1/namespaces/default/pods/p";
    let (code, v) = raw(
        &c,
        "PATCH",
        path,
        Some("application/json-patch+json"),
        body(json!([
        {"op": "test", "path": "/spec/containers/0/image", "value": "a:1"},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "a:2"}])),
    )
    .await;
    assert_eq!(
        (code, v["spec"]["containers"][0]["image"].as_str()),
        (200, Some("a:2"))
    );
    let (code, _) = raw(
        &c,
        "PATCH",
        path,
        Some("application/json-patch+json"),
        body(json!([{"op": "test", "path": "/spec/containers/0/image", "value": "zzz"}])),
    )
    .await;
    assert_eq!(code, 422);
    // kubectl apply's strategic merge patch of one container keeps the other.
    let smp = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "b", "image": "b:2"}]}});
    let (code, v) = raw(
        &c,
        "PATCH",
        path,
        Some("application/strategic-merge-patch+json"),
        body(smp),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        v["spec"]["containers"],
        json!([{"name": "a", "image": "a:2"}, {"name": "b", "image": "b:2"}])
    );
    let (code, v) = raw(
        &c,
        "PATCH",
        path,
        Some("application/merge-patch+json"),
        body(json!({"metadata": {"labels": {"app": null, "x": "1"}}})),
    )
    .await;
    assert_eq!(
        (code, v["metadata"]["labels"].clone()),
        (200, json!({"x": "1"}))
    );
    let (code, v) = raw(
        &c,
        "PATCH",
        path,
        Some("application/apply-patch+yaml"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    assert_eq!(
        raw(&c, "PATCH", path, Some("text/plain"), b"{}".to_vec())
            .await
            .0,
        415
    );
    let (_, now) = raw(&c, "GET", path, None, vec![]).await;
    assert_eq!(now["metadata"]["uid"], pod["metadata"]["uid"]);
    assert_eq!(now["metadata"]["generation"], 3, "two spec changes");

    // dryRun=All answers without persisting, on every verb.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dry"}, "data": {"a": "1"}});
    let (code, v) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps?dryRun=All",
        Some("application/json"),
        body(cm.clone()),
    )
    .await;
    assert_eq!((code, v["metadata"]["name"].as_str()), (201, Some("dry")));
    assert_eq!(
        raw(
            &c,
            "GET",
            "/api/v1/namespaces/default/configmaps/dry",
            None,
            vec![]
        )
        .await
        .0,
        404
    );
    let rv_before = server_rv(&c).await;
    let (code, v) = raw(
        &c,
        "PATCH",
        &format!("{path}?dryRun=All"),
        Some("application/merge-patch+json"),
        body(json!({"metadata": {"labels": {"dry": "yes"}}})),
    )
    .await;
    assert_eq!(
        (code, v["metadata"]["labels"]["dry"].as_str()),
        (200, Some("yes"))
    );
    let (code, _) = raw(&c, "DELETE", &format!("{path}?dryRun=All"), None, vec![]).await;
    assert_eq!(code, 200);
    assert_eq!(server_rv(&c).await, rv_before, "dry runs change nothing");
    assert_eq!(raw(&c, "GET", path, None, vec![]).await.0, 200);

    // generateName.
    let (code, v) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/json"),
        body(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}}),
        ),
    )
    .await;
    assert_eq!(code, 201);
    assert!(
        v["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("gen-") && n.len() == 9),
        "{v}"
    );
    // deletecollection with a selector answers the deleted list.
    for (n, team) in [("dc1", "a"), ("dc2", "a"), ("dc3", "b")] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "labels": {"team": team}}});
        assert_eq!(
            raw(
                &c,
                "POST",
                "/api/v1/namespaces/default/configmaps",
                Some("application/json"),
                body(cm)
            )
            .await
            .0,
            201
        );
    }
    let (code, v) = raw(
        &c,
        "DELETE",
        "/api/v1/namespaces/default/configmaps?labelSelector=team%3Da",
        None,
        vec![],
    )
    .await;
    assert_eq!(
        (
            code,
            v["kind"].as_str(),
            v["items"].as_array().map(Vec::len)
        ),
        (200, Some("ConfigMapList"), Some(2))
    );
    let (_, v) = raw(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps?labelSelector=team",
        None,
        vec![],
    )
    .await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
    // YAML bodies are accepted too.
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/yaml"),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\n".to_vec(),
    )
    .await;
    assert_eq!(code, 201);
    server.shutdown().await.expect("shutdown");
}

async fn server_rv(c: &Client) -> String {
    let (_, v) = raw(c, "GET", "/api/v1/configmaps", None, vec![]).await;
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn table_and_metadata_only_output() {
    let server = start().await;
    let c = client(&server);
    create_pod(&c, "p").await;
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let (code, t) = raw_with(
        &c,
        "GET",
        "/api/v1/namespaces/default/pods",
        None,
        Some(accept),
        vec![],
    )
    .await;
    assert_eq!(
        (code, t["kind"].as_str(), t["apiVersion"].as_str()),
        (200, Some("Table"), Some("meta.k8s.io/v1"))
    );
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .map(|c| c.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(&cols[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(t["rows"][0]["cells"][0], "p");
    assert_eq!(t["rows"][0]["cells"][1], "0/2");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    let (_, t) = raw_with(&c, "GET", "/api/v1/namespaces", None, Some(accept), vec![]).await;
    assert_eq!(t["columnDefinitions"][1]["name"], "Status");
    let (_, l) = raw_with(
        &c,
        "GET",
        "/api/v1/pods",
        None,
        Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
        vec![],
    )
    .await;
    assert_eq!(l["kind"], "PartialObjectMetadataList");
    assert!(l["items"][0].get("spec").is_none());
    assert_eq!(l["items"][0]["metadata"]["name"], "p");
    let (code, _) = raw_with(
        &c,
        "GET",
        "/api/v1/pods",
        None,
        Some("application/vnd.kubernetes.protobuf"),
        vec![],
    )
    .await;
    assert_eq!(code, 406);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn protobuf_bodies_from_kubectl_create() {
    let server = start().await;
    let c = client(&server);
    // `kubectl create namespace demo` (kubectl 1.32.4), captured.
    let pb = b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x1c\n\x14\n\x04demo\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\n\x00\x1a\x00\"\x00".to_vec();
    let (code, v) = raw(
        &c,
        "POST",
        "/api/v1/namespaces",
        Some("application/vnd.kubernetes.protobuf"),
        pb,
    )
    .await;
    assert_eq!(
        (
            code,
            v["metadata"]["name"].as_str(),
            v["status"]["phase"].as_str()
        ),
        (201, Some("demo"), Some("Active"))
    );
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces",
        Some("application/vnd.kubernetes.protobuf"),
        b"k8s\x00\n\xff".to_vec(),
    )
    .await;
    assert_eq!(code, 400);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn resource_version_rules_for_lists() {
    let server = start().await;
    let c = client(&server);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let mk = |n: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(n.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &mk("a"))
        .await
        .expect("create");
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    cms.create(&PostParams::default(), &mk("b"))
        .await
        .expect("create");
    // Exact: the state at that revision.
    let (code, v) = raw(
        &c,
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"
        ),
        None,
        vec![],
    )
    .await;
    assert_eq!((code, v["items"].as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(v["metadata"]["resourceVersion"], rv.as_str());
    // NotOlderThan / legacy: current state.
    assert_eq!(
        cms.list(&ListParams::default().at(&rv))
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    assert_eq!(
        cms.list(&ListParams::default().at("0"))
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    // Every change gets a new, larger revision.
    let before: u64 = rv.parse().expect("numeric");
    let b = cms.get("b").await.expect("get");
    assert!(
        b.resource_version()
            .and_then(|r| r.parse::<u64>().ok())
            .is_some_and(|r| r > before)
    );
    server.compact().await.expect("compact");
    let e = api_err(
        cms.list(
            &ListParams::default()
                .at(&rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await,
    );
    assert_eq!(e.code, 410);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn persistence_keeps_objects_uids_and_revisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let cfg = || Config {
        state_file: Some(state.clone()),
        ..Config::default()
    };
    let server = start_with(cfg()).await;
    assert!(state.exists(), "a fresh state file is written at start");
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kept"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).expect("pod");
    let created = pods
        .create(&PostParams::default(), &p)
        .await
        .expect("create");
    let old_rv = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    server.shutdown().await.expect("shutdown");

    let server = start_with(cfg()).await;
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let again = pods.get("kept").await.expect("kept across restart");
    assert_eq!(
        (again.uid(), again.resource_version()),
        (created.uid(), created.resource_version())
    );
    let now_rv = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    assert_eq!(now_rv, old_rv, "the revision counter survives");
    let mut p2 = p.clone();
    p2.metadata.name = Some("new".into());
    let n = pods
        .create(&PostParams::default(), &p2)
        .await
        .expect("create");
    let newer = n
        .resource_version()
        .and_then(|r| r.parse::<u64>().ok())
        .expect("rv");
    assert!(newer > old_rv.parse::<u64>().expect("rv"));
    // History does not survive: resuming from before the restart is 410.
    let mut w = pods
        .watch(&WatchParams::default().timeout(2), "1")
        .await
        .expect("watch")
        .boxed();
    match bounded("410", w.next())
        .await
        .expect("an event")
        .expect("decodes")
    {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    server.shutdown().await.expect("shutdown");
    // A corrupt file is refused, not silently replaced.
    std::fs::write(&state, b"{oops").expect("write");
    assert!(
        integration_tests::apiserver::ApiServer::start(cfg())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn binary_serves_persists_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, addr_file, kubeconfig) = (
        dir.path().join("s.json"),
        dir.path().join("addr"),
        dir.path().join("kc"),
    );
    let run = || {
        let _ = std::fs::remove_file(&addr_file);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_margay-apiserver"))
            .args(["--listen", "127.0.0.1:0", "--latency-ms", "30"])
            .arg("--state")
            .arg(&state)
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn margay-apiserver")
    };
    async fn wait_addr(f: &std::path::Path) -> String {
        bounded("addr file", async {
            loop {
                if let Ok(s) = std::fs::read_to_string(f)
                    && s.ends_with('\n')
                {
                    return s.trim().to_string();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
    // As kubectl would: the kubeconfig the binary wrote (its CA, the
    // admin token); still valid after a restart from the same state.
    let kube_for = |addr: &str| {
        let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
        assert!(text.contains(&format!("server: https://{addr}")), "{text}");
        let kc: kube::config::Kubeconfig = serde_yaml_ng::from_str(&text).expect("kubeconfig yaml");
        async move {
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("config");
            Client::try_from(cfg).expect("client")
        }
    };
    let stop = |child: &tokio::process::Child| {
        let pid =
            nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    };

    let mut child = run();
    let addr = wait_addr(&addr_file).await;
    let c = kube_for(&addr).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("survivor".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let t0 = tokio::time::Instant::now();
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    assert!(
        t0.elapsed() >= Duration::from_millis(30),
        "--latency-ms applies"
    );
    stop(&child);
    let status = bounded("exit", child.wait()).await.expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status}");

    let mut child = run();
    let addr = wait_addr(&addr_file).await;
    let cms: Api<ConfigMap> = Api::namespaced(kube_for(&addr).await, "default");
    let got = cms.get("survivor").await.expect("survived the restart");
    assert_eq!(got.uid(), created.uid());
    stop(&child);
    assert!(bounded("exit", child.wait()).await.expect("wait").success());
}

/// managedFields as a real server records them: an entry per field manager
/// (from `fieldManager`) and subresource, changed fields moving to their
/// writer, carried by GETs and watch events alike.
#[tokio::test]
async fn writes_record_their_managers_in_managed_fields() {
    let server = start().await;
    let c = client(&server);
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "m", "labels": {"app": "a", "tier": "web"}},
        "spec": {"containers": [{"name": "c", "image": "i:1"}]}});
    let (code, made) = raw(
        &c,
        "POST",
        &format!("{pods}?fieldManager=creator"),
        Some("application/json"),
        body(pod),
    )
    .await;
    assert_eq!(code, 201, "{made}");
    let rv = made["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mf = &made["metadata"]["managedFields"];
    assert_eq!(mf[0]["manager"], "creator", "{mf}");
    assert_eq!(mf[0]["operation"], "Update");
    assert_eq!(
        mf[0]["fieldsV1"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"],
        json!({})
    );
    let path = format!("{pods}/m");
    let (code, _) = raw(
        &c,
        "PATCH",
        &format!("{path}?fieldManager=kubectl-label"),
        Some("application/merge-patch+json"),
        body(json!({"metadata": {"labels": {"tier": "cache"}}})),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = raw(
        &c,
        "PATCH",
        &format!("{path}/status?fieldManager=kubelet"),
        Some("application/merge-patch+json"),
        body(json!({"status": {"podIP": "198.19.0.9"}})),
    )
    .await;
    assert_eq!(code, 200);
    let (_, got) = raw(&c, "GET", &path, None, Vec::new()).await;
    let mf = got["metadata"]["managedFields"]
        .as_array()
        .expect("list")
        .clone();
    let who: Vec<(&str, &str)> = mf
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default(),
                e["subresource"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("creator", ""),
            ("kubectl-label", ""),
            ("kubelet", "status")
        ]
    );
    assert_eq!(
        mf[0]["fieldsV1"]["f:metadata"]["f:labels"],
        json!({".": {}, "f:app": {}}),
        "the changed label left the creator"
    );
    assert_eq!(
        mf[1]["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:tier": {}}}})
    );
    // A watch event carries them too.
    let api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mut w = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .expect("watch")
        .boxed();
    let ev = bounded("watch", w.next())
        .await
        .expect("event")
        .expect("ok");
    let WatchEvent::Modified(p) = ev else {
        panic!("{ev:?}")
    };
    let managers: Vec<String> = p
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.manager)
        .collect();
    assert_eq!(managers, ["creator", "kubectl-label"]);
    // The real server's limit on a manager's name.
    let long = "m".repeat(129);
    let (code, v) = raw(
        &c,
        "PATCH",
        &format!("{path}?fieldManager={long}"),
        Some("application/merge-patch+json"),
        body(json!({"metadata": {"labels": {"tier": "web"}}})),
    )
    .await;
    assert_eq!(code, 400, "{v}");
}
