//! Watch semantics through kube-runtime: watcher + reflector, recovery from
//! 410 Gone by relisting, streaming lists, selector transitions, bookmarks.

mod apiserver_support;

use std::time::Duration;

use apiserver_support::{bounded, client, eventually, raw, start, start_with};
use futures::{StreamExt as _, TryStreamExt as _};
use integration_tests::apiserver::Config;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .expect("pod")
}

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Runs a watcher into a channel of short descriptions (`init`, `apply:x`, ...).
fn spawn_watcher(
    c: Client,
    cfg: watcher::Config,
) -> (mpsc::UnboundedReceiver<String>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let api: Api<Pod> = Api::namespaced(c, "default");
    let h = tokio::spawn(async move {
        let mut s = watcher(api, cfg).boxed();
        while let Some(ev) = s.next().await {
            let d = match ev {
                Ok(watcher::Event::Init) => "init".to_string(),
                Ok(watcher::Event::InitApply(p)) => format!("initapply:{}", p.name_any()),
                Ok(watcher::Event::InitDone) => "initdone".to_string(),
                Ok(watcher::Event::Apply(p)) => format!("apply:{}", p.name_any()),
                Ok(watcher::Event::Delete(p)) => format!("delete:{}", p.name_any()),
                Err(e) => format!("error:{e}"),
            };
            if tx.send(d).is_err() {
                return;
            }
        }
    });
    (rx, h)
}

async fn expect_next(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) {
    loop {
        let got = bounded(want, rx.recv()).await.expect("watcher alive");
        if got == want {
            return;
        }
        // Transient errors and re-inits are allowed while waiting.
        assert!(
            got.starts_with("error:") || got == "init" || got.starts_with("init"),
            "wanted {want}, got {got}"
        );
    }
}

#[tokio::test]
async fn reflector_follows_adds_modifies_deletes() {
    let server = start().await;
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &pod("pre", "web"))
        .await
        .expect("create");

    let (reader, writer) = reflector::store::<Pod>();
    let stream =
        reflector(writer, watcher(pods.clone(), watcher::Config::default())).applied_objects();
    let handle = tokio::spawn(stream.try_for_each(|_| async { Ok(()) }));
    bounded("store ready", reader.wait_until_ready())
        .await
        .expect("ready");
    assert_eq!(reader.state().len(), 1);

    pods.create(&PostParams::default(), &pod("a", "web"))
        .await
        .expect("create a");
    eventually("a in the store", || async {
        reader.state().iter().any(|p| p.name_any() == "a")
    })
    .await;
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
    )
    .await
    .expect("patch");
    eventually("a modified in the store", || async {
        reader
            .state()
            .iter()
            .any(|p| p.name_any() == "a" && p.labels().get("v").is_some_and(|v| v == "2"))
    })
    .await;
    pods.delete("pre", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("pre gone from the store", || async {
        reader.state().iter().all(|p| p.name_any() != "pre")
    })
    .await;
    handle.abort();
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn watcher_recovers_from_410_by_relisting() {
    let server = start().await;
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &pod("keep", "web"))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &pod("gone", "web"))
        .await
        .expect("create");

    // Short watches and no bookmarks: between reconnects the watcher's
    // resourceVersion stays at its last pod event, as with a quiet resource.
    let cfg = watcher::Config::default().timeout(1).disable_bookmarks();
    let (reader, writer) = reflector::store::<Pod>();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = reflector(writer, watcher(pods.clone(), cfg));
    let h = tokio::spawn(stream.for_each(move |ev| {
        let d = match ev {
            Ok(watcher::Event::Init) => "init".to_string(),
            Ok(watcher::Event::InitApply(p)) => format!("initapply:{}", p.name_any()),
            Ok(watcher::Event::InitDone) => "initdone".to_string(),
            Ok(watcher::Event::Apply(p)) => format!("apply:{}", p.name_any()),
            Ok(watcher::Event::Delete(p)) => format!("delete:{}", p.name_any()),
            Err(e) => format!("error:{e}"),
        };
        let _ = tx.send(d);
        async {}
    }));
    for want in ["init", "initapply:gone", "initapply:keep", "initdone"] {
        expect_next(&mut rx, want).await;
    }
    pods.create(&PostParams::default(), &pod("live", "web"))
        .await
        .expect("create");
    expect_next(&mut rx, "apply:live").await;

    // Other resources move the revision on; compaction leaves the pod
    // watcher's revision behind. Its next reconnect gets 410 Gone and it
    // must list again from scratch.
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("noise{i}")))
            .await
            .expect("noise");
    }
    server.compact().await.expect("compact");
    let mut saw_gone = false;
    loop {
        let got = bounded("410 then relist", rx.recv())
            .await
            .expect("watcher alive");
        if got.starts_with("error:") {
            assert!(
                got.contains("too old resource version"),
                "unexpected error {got}"
            );
            saw_gone = true;
        } else if got == "initdone" {
            assert!(saw_gone, "relisted without a 410");
            break;
        } else {
            assert!(
                saw_gone && (got == "init" || got.starts_with("initapply:")),
                "unexpected {got}"
            );
        }
    }
    // After the relist, live events flow again and the store matches the server.
    pods.delete("gone", &DeleteParams::default())
        .await
        .expect("delete");
    expect_next(&mut rx, "delete:gone").await;
    eventually("reflector matches the server", || async {
        let mut names: Vec<String> = reader.state().iter().map(|p| p.name_any()).collect();
        names.sort();
        names == ["keep", "live"]
    })
    .await;
    h.abort();
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn streaming_list_watcher_works() {
    let server = start().await;
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &pod("one", "web"))
        .await
        .expect("create");
    let (mut rx, h) = spawn_watcher(c.clone(), watcher::Config::default().streaming_lists());
    for want in ["init", "initapply:one", "initdone"] {
        expect_next(&mut rx, want).await;
    }
    pods.create(&PostParams::default(), &pod("two", "web"))
        .await
        .expect("create");
    expect_next(&mut rx, "apply:two").await;
    h.abort();
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn raw_watch_semantics() {
    let server = start_with(Config {
        bookmark_interval: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let start_rv = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");

    // Replay from a resourceVersion, with a label selector: a pod that stops
    // matching is DELETED for this watcher, one that starts matching ADDED.
    pods.create(&PostParams::default(), &pod("x", "web"))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &pod("y", "db"))
        .await
        .expect("create");
    pods.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .expect("patch");
    pods.patch(
        "y",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await
    .expect("patch");
    let wp = WatchParams::default()
        .labels("app=web")
        .timeout(2)
        .disable_bookmarks();
    let events: Vec<String> = pods
        .watch(&wp, &start_rv)
        .await
        .expect("watch")
        .map(|e| match e.expect("event") {
            WatchEvent::Added(p) => format!("ADDED {}", p.name_any()),
            WatchEvent::Modified(p) => format!("MODIFIED {}", p.name_any()),
            WatchEvent::Deleted(p) => format!("DELETED {}", p.name_any()),
            WatchEvent::Bookmark(_) => "BOOKMARK".into(),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        })
        .collect()
        .await;
    assert_eq!(events, ["ADDED x", "DELETED x", "ADDED y"]);

    // Bookmarks carry the latest revision when asked for.
    let last = pods
        .get("y")
        .await
        .expect("get")
        .resource_version()
        .expect("rv");
    let wp = WatchParams::default().timeout(1);
    let mut s = pods.watch(&wp, &last).await.expect("watch").boxed();
    let ev = bounded("bookmark", s.next())
        .await
        .expect("an event")
        .expect("decodes");
    match ev {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, last),
        other => panic!("expected a bookmark, got {other:?}"),
    }

    // A deleted object comes with the revision of its deletion.
    let mut s = pods
        .watch(
            &WatchParams::default().timeout(2).disable_bookmarks(),
            &last,
        )
        .await
        .expect("watch")
        .boxed();
    pods.delete("y", &DeleteParams::default())
        .await
        .expect("delete");
    let now = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    match bounded("deleted", s.next())
        .await
        .expect("event")
        .expect("decodes")
    {
        WatchEvent::Deleted(p) => assert_eq!(p.resource_version(), Some(now)),
        other => panic!("expected DELETED, got {other:?}"),
    }

    // Too old after compaction: one ERROR event with a 410 Status.
    server.compact().await.expect("compact");
    let mut s = pods
        .watch(
            &WatchParams::default().timeout(2).disable_bookmarks(),
            &start_rv,
        )
        .await
        .expect("watch")
        .boxed();
    match bounded("error", s.next())
        .await
        .expect("event")
        .expect("decodes")
    {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    assert!(bounded("stream ends", s.next()).await.is_none());

    // timeoutSeconds ends a quiet watch.
    let t0 = tokio::time::Instant::now();
    let n = pods
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await
        .expect("watch")
        .count()
        .await;
    assert_eq!(n, 1, "only the synthetic ADDED for x");
    assert!(t0.elapsed() >= Duration::from_millis(900));

    // The watch path form (`?watch=1` on a named object) works too.
    let (code, _) = raw(
        &c,
        "GET",
        "/api/v1/namespaces/default/pods/x?watch=1&timeoutSeconds=1",
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn slow_watcher_is_closed_not_buffered() {
    // A tiny broadcast buffer: a watcher that does not read falls behind.
    let server = start_with(Config {
        watch_buffer: 16,
        ..Config::default()
    })
    .await;
    let c = client(&server);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut s = cms
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();
    // Large objects fill the socket and body buffers so the producer blocks.
    let big = "x".repeat(128 * 1024);
    for i in 0..400 {
        let mut m = cm(&format!("c{i}"));
        m.data = Some([("k".to_string(), big.clone())].into());
        cms.create(&PostParams::default(), &m)
            .await
            .expect("create");
    }
    let mut n = 0;
    while let Some(ev) = bounded("drain", s.next()).await {
        if ev.is_ok() {
            n += 1;
        }
    }
    println!("slow watcher got {n} of 400 events before it was closed");
    assert!(n < 400, "the stream was not closed (got all {n} events)");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn node_scoped_pod_watch_follows_spec_node_name() {
    // What a node agent does: watch only the pods bound to its node.
    let server = start().await;
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let (mut rx, h) = spawn_watcher(
        c.clone(),
        watcher::Config::default().fields("spec.nodeName=n1"),
    );
    for want in ["init", "initdone"] {
        expect_next(&mut rx, want).await;
    }
    pods.create(&PostParams::default(), &pod("elsewhere", "web"))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &pod("mine", "web"))
        .await
        .expect("create");
    // Binding to the node makes it appear; status updates are seen; unbinding
    // or deleting makes it go.
    pods.patch(
        "mine",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nodeName": "n1"}})),
    )
    .await
    .expect("bind");
    expect_next(&mut rx, "apply:mine").await;
    pods.patch_status(
        "mine",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"podIP": "198.19.0.9"}})),
    )
    .await
    .expect("status");
    expect_next(&mut rx, "apply:mine").await;
    pods.delete("mine", &DeleteParams::default())
        .await
        .expect("delete");
    expect_next(&mut rx, "delete:mine").await;
    pods.delete("elsewhere", &DeleteParams::default())
        .await
        .expect("delete");
    pods.create(&PostParams::default(), &pod("last", "web"))
        .await
        .expect("create");
    pods.patch(
        "last",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nodeName": "n1"}})),
    )
    .await
    .expect("bind");
    // Nothing about "elsewhere" may have come through in between.
    expect_next(&mut rx, "apply:last").await;
    h.abort();
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn reflector_survives_a_server_outage_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let server = start_with(Config {
        state_file: Some(state.clone()),
        ..Config::default()
    })
    .await;
    let addr = server.addr();
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &pod("before", "web"))
        .await
        .expect("create");

    let (reader, writer) = reflector::store::<Pod>();
    let stream = reflector(
        writer,
        watcher(pods.clone(), watcher::Config::default()).default_backoff(),
    );
    let h = tokio::spawn(stream.for_each(|_| async {}));
    bounded("store ready", reader.wait_until_ready())
        .await
        .expect("ready");
    assert_eq!(reader.state().len(), 1);

    // Outage: every connection and watch is cut, the state file is written.
    server.shutdown().await.expect("shutdown");
    assert!(
        pods.list(&ListParams::default()).await.is_err(),
        "the server is down"
    );

    // Back on the same address with the same state; changes made after the
    // restart reach the reflector (by resuming or by relisting after 410).
    let server = integration_tests::apiserver::ApiServer::start(Config {
        listen: addr,
        state_file: Some(state),
        ..Config::default()
    })
    .await
    .expect("restart on the same address");
    pods.create(&PostParams::default(), &pod("after", "web"))
        .await
        .expect("create");
    pods.delete("before", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("reflector caught up after the restart", || async {
        let names: Vec<String> = reader.state().iter().map(|p| p.name_any()).collect();
        names == ["after"]
    })
    .await;
    h.abort();
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn metadata_watcher_sees_partial_objects() {
    let server = start().await;
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &pod("m1", "web"))
        .await
        .expect("create");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = tokio::spawn(
        watcher(
            Api::<kube::core::PartialObjectMeta<Pod>>::namespaced(c.clone(), "default"),
            watcher::Config::default(),
        )
        .for_each(move |ev| {
            let d = match ev {
                Ok(watcher::Event::InitApply(m) | watcher::Event::Apply(m)) => {
                    format!("apply:{}", m.name_any())
                }
                Ok(watcher::Event::Delete(m)) => format!("delete:{}", m.name_any()),
                Ok(watcher::Event::Init) => "init".into(),
                Ok(watcher::Event::InitDone) => "initdone".into(),
                Err(e) => format!("error:{e}"),
            };
            let _ = tx.send(d);
            async {}
        }),
    );
    for want in ["init", "apply:m1", "initdone"] {
        assert_eq!(bounded(want, rx.recv()).await.as_deref(), Some(want));
    }
    pods.create(&PostParams::default(), &pod("m2", "web"))
        .await
        .expect("create");
    assert_eq!(bounded("m2", rx.recv()).await.as_deref(), Some("apply:m2"));
    pods.delete("m1", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(
        bounded("m1 deleted", rx.recv()).await.as_deref(),
        Some("delete:m1")
    );
    h.abort();
    server.shutdown().await.expect("shutdown");
}

/// `watch_delay` holds each change back from watchers by that long after
/// its commit (a real server's watch cache), and no longer: two changes
/// committed together arrive together, not one delay after the other.
#[tokio::test]
async fn watch_events_arrive_the_configured_delay_after_their_commit() {
    let delay = Duration::from_millis(300);
    let server = start_with(Config {
        watch_delay: delay,
        ..Config::default()
    })
    .await;
    let c = client(&server);
    let api: Api<ConfigMap> = Api::namespaced(c, "default");
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    let committed = std::time::Instant::now();
    api.create(&PostParams::default(), &cm("a"))
        .await
        .expect("create a");
    api.create(&PostParams::default(), &cm("b"))
        .await
        .expect("create b");
    let mut arrivals = Vec::new();
    while arrivals.len() < 2 {
        match bounded("watch event", stream.try_next())
            .await
            .expect("watch event")
        {
            Some(WatchEvent::Added(o)) => arrivals.push((o.name_any(), committed.elapsed())),
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(arrivals[0].0, "a");
    assert!(arrivals[0].1 >= delay, "{arrivals:?}");
    assert!(
        arrivals[1].1 - arrivals[0].1 < delay,
        "the delay is per event from its commit, not cumulative: {arrivals:?}"
    );
    server.shutdown().await.expect("shutdown");
}
