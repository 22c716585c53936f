//! Each agent publishes its node's pods as compact `PodEndpoint`s
//! (docs/scale.md §4), under the RBAC of `deploy/margay.yaml`: a pod's
//! endpoint appears with the addresses its CNI ADD got (before any kubelet
//! reports them), its labels, named ports, node and an owner
//! reference to the Pod; follows a label change; goes with the Pod. An
//! endpoint someone deletes is put back and a stray one naming this node
//! is removed, at once; another node's endpoints are left alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::lab::{self, Lab};
use integration_tests::{cni, k8s};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use node_agent::k8s::crd::{NODE_FIELD, PodEndpoint, PodEndpointSpec};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

/// The endpoint `ns/name`, if any.
fn endpoint(lab: &Lab, ns: &str, name: &str) -> Option<PodEndpoint> {
    let (ns, name) = (ns.to_string(), name.to_string());
    k8s::with_client(lab.tor(), move |c| async move {
        Api::<PodEndpoint>::namespaced(c, &ns).get_opt(&name).await
    })
    .expect("client")
    .expect("get")
}

#[test]
fn agents_publish_their_pods_as_compact_endpoints() {
    integration_tests::require_root!();
    let t0 = Instant::now();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(
        &lab,
        &[("v4", "198.19.0.0/16"), ("v6", "2001:db8:100::/48")],
    )
    .expect("bootstrap");
    let a1 = k8s::start_agent(&lab, "n1", &[]).expect("agent n1");
    let _a2 = k8s::start_agent(&lab, "n2", &[]).expect("agent n2");
    let web = cni::add_pod(
        &lab,
        &a1,
        "demo",
        "web",
        &[("app", "web")],
        &[("http", 8080, "TCP")],
    )
    .expect("pod");
    assert!(web.result.ok, "{:?}", web.result);
    let mut want_addrs: Vec<std::net::IpAddr> =
        [web.ipv4(), web.ipv6()].into_iter().flatten().collect();
    want_addrs.sort();
    let pod_uid = {
        k8s::with_client(lab.tor(), |c| async move {
            Api::<Pod>::namespaced(c, "demo").get("web").await
        })
        .expect("client")
        .expect("pod")
        .metadata
        .uid
        .expect("uid")
    };

    // Published, from IPAM's addresses (no kubelet here reports them).
    let ep = lab::wait_for("demo/web's endpoint", T, || {
        Ok(endpoint(&lab, "demo", "web").filter(|e| e.spec.addresses == want_addrs))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", endpoint(&lab, "demo", "web")));
    println!(
        "published {:.1} s after the start: {:?}",
        t0.elapsed().as_secs_f64(),
        ep.spec
    );
    assert_eq!(ep.spec.node, "n1");
    assert_eq!(
        ep.spec.labels,
        BTreeMap::from([("app".into(), "web".into())])
    );
    assert_eq!(ep.spec.named_ports.len(), 1);
    assert_eq!(
        (
            ep.spec.named_ports[0].name.as_str(),
            ep.spec.named_ports[0].port
        ),
        ("http", 8080)
    );
    assert_eq!(ep.metadata.labels, None, "the node is spec.node, no label");
    // Listed by the node's field selector, as the publisher does.
    let listed = k8s::with_client(lab.tor(), |c| async move {
        Api::<PodEndpoint>::all(c)
            .list(&kube::api::ListParams::default().fields(&format!("{NODE_FIELD}=n1")))
            .await
            .map(|l| l.items.len())
    })
    .expect("client")
    .expect("list by spec.node");
    assert!(listed >= 1, "n1's endpoints by field selector: {listed}");
    let owner = &ep.metadata.owner_references.clone().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Pod", pod_uid.as_str())
    );
    // What policy reads of it is the pod.
    let info = ep.to_pod_info().expect("pod info");
    assert_eq!(info.ips, want_addrs);
    assert_eq!(info.node_name.as_deref(), Some("n1"));

    // A label change follows.
    k8s::with_client(lab.tor(), |c| async move {
        Api::<Pod>::namespaced(c, "demo")
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": "web2"}}})),
            )
            .await
            .map(drop)
    })
    .expect("client")
    .expect("relabel");
    lab::wait_for("the new label on the endpoint", T, || {
        Ok(endpoint(&lab, "demo", "web")
            .filter(|e| e.spec.labels.get("app").map(String::as_str) == Some("web2")))
    })
    .expect("relabelled");

    // Deleted by someone: put back. A stray endpoint of n1 (spec.node) and
    // no pod: removed. One of n2's: left alone (n2 has no such pod either,
    // but it is n2's to judge; n1 must not touch it — so it is written
    // with n2 as its node after n2's agent is gone).
    let stray = |name: &str, node: &str| PodEndpoint {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("demo".into()),
            ..Default::default()
        },
        spec: PodEndpointSpec {
            node: node.into(),
            addresses: vec!["198.19.250.1".parse().expect("ip")],
            ..Default::default()
        },
    };
    drop(_a2);
    let (ghost, other) = (stray("ghost", "n1"), stray("other", "n2"));
    k8s::with_client(lab.tor(), |c| async move {
        let api = Api::<PodEndpoint>::namespaced(c, "demo");
        api.delete("web", &DeleteParams::default()).await?;
        api.create(&PostParams::default(), &ghost).await?;
        api.create(&PostParams::default(), &other).await.map(drop)
    })
    .expect("client")
    .expect("tamper");
    lab::wait_for("web put back, ghost removed", T, || {
        Ok(
            (endpoint(&lab, "demo", "web").is_some() && endpoint(&lab, "demo", "ghost").is_none())
                .then_some(()),
        )
    })
    .expect("repaired");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        endpoint(&lab, "demo", "other").is_some(),
        "n2's endpoint is n2's"
    );

    // The pod goes: so does its endpoint.
    k8s::with_client(lab.tor(), |c| async move {
        Api::<Pod>::namespaced(c, "demo")
            .delete("web", &DeleteParams::default())
            .await
            .map(drop)
    })
    .expect("client")
    .expect("delete pod");
    lab::wait_for("web's endpoint gone", T, || {
        Ok(endpoint(&lab, "demo", "web").is_none().then_some(()))
    })
    .expect("endpoint deleted");
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
}
