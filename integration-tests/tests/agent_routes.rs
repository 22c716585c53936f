//! The agent's local routes (pod /32s to cali*, blackholes for affine
//! blocks) against a real kernel, in a lab node.

use std::collections::BTreeSet;

use integration_tests::lab::{Lab, PodSpec};
use node_agent::dataplane::local_routes::{LOCAL_ROUTE_PROTO, LocalRoute, LocalRoutes, SyncReport};

fn in_node<R: Send + 'static>(
    lab: &Lab,
    f: impl FnOnce(&LocalRoutes, &tokio::runtime::Runtime) -> R + Send + 'static,
) -> R {
    lab.node("n1")
        .expect("n1")
        .ns
        .enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let routes = rt
                .block_on(async { LocalRoutes::connect() })
                .expect("netlink");
            f(&routes, &rt)
        })
        .expect("enter n1")
}

fn ours(lab: &Lab) -> String {
    let ns = &lab.node("n1").expect("n1").ns;
    let p = LOCAL_ROUTE_PROTO.to_string();
    let v4 = ns
        .ip(&["-4", "route", "show", "proto", &p])
        .expect("ip route");
    let v6 = ns
        .ip(&["-6", "route", "show", "proto", &p])
        .expect("ip route");
    format!("{v4}{v6}")
}

#[test]
fn sync_converges_on_the_desired_set_and_leaves_foreign_routes_alone() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let pod = lab
        .add_pod(
            "n1",
            &PodSpec {
                namespace: "x".into(),
                name: "a".into(),
                ipv4: Some("198.19.1.2".parse().expect("ip")),
                ipv6: Some("2001:db8:1::2".parse().expect("ip")),
            },
        )
        .expect("pod");
    let node = &lab.node("n1").expect("n1").ns;
    // Someone else's route in the same range must survive every sync.
    node.ip(&[
        "route",
        "add",
        "blackhole",
        "198.19.99.0/24",
        "proto",
        "static",
    ])
    .expect("foreign route");

    let host_if = pod.host_if.clone();
    let desired: BTreeSet<LocalRoute> = [
        LocalRoute::to_pod("198.19.1.2".parse().expect("ip"), &host_if),
        LocalRoute::to_pod("2001:db8:1::2".parse().expect("ip"), &host_if),
        LocalRoute::Blackhole {
            dst: "198.19.1.0/26".parse().expect("net"),
        },
        LocalRoute::Blackhole {
            dst: "2001:db8:1::/122".parse().expect("net"),
        },
        // A pod whose veth is already gone: skipped and reported, no error.
        LocalRoute::to_pod("198.19.1.3".parse().expect("ip"), "cali00000000000"),
    ]
    .into();
    let d = desired.clone();
    let (first, second, current) = in_node(&lab, move |r, rt| {
        rt.block_on(async {
            let first = r.sync(&d).await.expect("sync");
            let second = r.sync(&d).await.expect("sync again");
            (first, second, r.current().await.expect("current"))
        })
    });
    // The harness wired the pod with plain routes to the same /32 and /128:
    // ours replace them.
    assert_eq!(first.written, 4, "{first:?}");
    assert_eq!(
        first.missing_interfaces,
        vec!["cali00000000000".to_string()]
    );
    assert_eq!(
        second,
        SyncReport {
            kept: 4,
            missing_interfaces: vec!["cali00000000000".to_string()],
            ..SyncReport::default()
        },
        "a second sync changes nothing"
    );
    assert_eq!(current.len(), 4);
    let shown = ours(&lab);
    for want in [
        format!("198.19.1.2 dev {host_if} scope link"),
        "blackhole 198.19.1.0/26".to_string(),
        format!("2001:db8:1::2 dev {host_if}"),
        "blackhole 2001:db8:1::/122".to_string(),
    ] {
        assert!(shown.contains(&want), "missing {want:?} in:\n{shown}");
    }

    // Shrink: the pod leaves; only the blackholes stay; the foreign route too.
    let only_blocks: BTreeSet<LocalRoute> = desired
        .iter()
        .filter(|r| matches!(r, LocalRoute::Blackhole { .. }))
        .cloned()
        .collect();
    let report = in_node(&lab, move |r, rt| {
        rt.block_on(r.sync(&only_blocks)).expect("sync")
    });
    assert_eq!((report.removed, report.kept), (2, 2), "{report:?}");
    let shown = ours(&lab);
    assert!(!shown.contains(&host_if), "{shown}");
    let all = node.ip(&["route", "show"]).expect("ip route");
    assert!(
        all.contains("blackhole 198.19.99.0/24 proto static"),
        "{all}"
    );
}

#[test]
fn ensure_and_remove_are_idempotent() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let pod = lab
        .add_pod(
            "n1",
            &PodSpec {
                namespace: "x".into(),
                name: "b".into(),
                ipv4: Some("198.19.1.9".parse().expect("ip")),
                ipv6: None,
            },
        )
        .expect("pod");
    // A veth not brought up yet (the CNI plugin ups it, then EndpointUp).
    let node = &lab.node("n1").expect("n1").ns;
    node.ip(&[
        "link",
        "add",
        "calidown000000",
        "type",
        "veth",
        "peer",
        "name",
        "calidown000001",
    ])
    .expect("down veth");
    let r = LocalRoute::to_pod("198.19.1.9".parse().expect("ip"), &pod.host_if);
    let missing = LocalRoute::to_pod("198.19.1.10".parse().expect("ip"), "califfffffffff0");
    let down = LocalRoute::to_pod("198.19.1.11".parse().expect("ip"), "calidown000000");
    let (r2, r3) = (r.clone(), r.clone());
    let (a, b, c, d) = in_node(&lab, move |routes, rt| {
        rt.block_on(async {
            let a = routes.ensure(&r).await.expect("ensure");
            let b = routes.ensure(&r).await.expect("ensure twice");
            let c = routes
                .ensure(&missing)
                .await
                .expect("missing interface is not an error");
            let d = routes
                .ensure(&down)
                .await
                .expect("a link not up is not an error");
            (a, b, c, d)
        })
    });
    assert!(a && b && !c && !d, "{a} {b} {c} {d}");
    let shown = ours(&lab);
    assert_eq!(
        shown.trim(),
        format!("198.19.1.9 dev {} scope link", pod.host_if),
        "one route of ours, in the main table"
    );
    in_node(&lab, move |routes, rt| {
        rt.block_on(async {
            routes.remove(&r2).await.expect("remove");
            routes.remove(&r3).await.expect("remove twice");
        })
    });
    assert_eq!(ours(&lab), "");
}
