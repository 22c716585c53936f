//! margay-node end to end in the lab: the API test server in the ToR
//! namespace, the agent in a node namespace, IPAM and Endpoints over its
//! unix socket, routes in the node's kernel, state in IPAMBlock objects.

use std::time::Duration;

use cni_proto::proto::{
    AllocateRequest, EndpointDownRequest, EndpointUpRequest, Family, ReleaseRequest, StatusRequest,
};
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{self, Lab, PodSpec};
use kube::Api;
use node_agent::dataplane::local_routes::LOCAL_ROUTE_PROTO;
use node_agent::k8s::crd::IPAMBlock;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn local_routes(lab: &Lab, node: &str) -> String {
    let ns = &lab.node(node).expect("node").ns;
    let p = LOCAL_ROUTE_PROTO.to_string();
    let v4 = ns.ip(&["-4", "route", "show", "proto", &p]).expect("ip");
    let v6 = ns.ip(&["-6", "route", "show", "proto", &p]).expect("ip");
    format!("{v4}{v6}")
}

#[test]
fn agent_allocates_from_crds_programs_routes_and_keeps_them_across_shutdown() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(
        &lab,
        // The lower half: the "late" pool below takes 198.19.200.0/24.
        &[("v4", "198.19.0.0/17"), ("v6", "2001:db8:100::/48")],
    )
    .expect("bootstrap");

    // A short loop period (200 ms: a loop that has not turned for 0.8 s
    // fails /livez), so that a quiet stretch below proves every loop turns
    // on its own.
    let Agent {
        mut daemon, socket, ..
    } = k8s::start_agent(&lab, "n1", &["--loop-period", "200ms"]).expect("agent");
    let rt = rt();

    // Status, then a dual-stack allocation through the socket.
    let (status, addrs) = rt.block_on(async {
        let mut ipam = cni_proto::uds::connect_uds(&socket).await.expect("connect");
        let status = ipam
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let reply = ipam
            .allocate(AllocateRequest {
                handle: "k8s-pod-network.c1".into(),
                pod_namespace: "x".into(),
                pod_name: "a".into(),
                families: vec![Family::Ipv4 as i32, Family::Ipv6 as i32],
                container_id: "c1".into(),
                ifname: "eth0".into(),
                ..AllocateRequest::default()
            })
            .await
            .expect("allocate")
            .into_inner();
        (status, reply.addresses)
    });
    assert!(status.ready, "{status:?}");
    assert_eq!(status.node, "n1");
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    let v4: std::net::Ipv4Addr = addrs
        .iter()
        .find_map(|a| a.ip.parse().ok())
        .expect("an IPv4 address");
    let v6: std::net::Ipv6Addr = addrs
        .iter()
        .find_map(|a| a.ip.parse().ok())
        .expect("an IPv6 address");
    assert!(
        "198.19.0.0/16"
            .parse::<ipnetwork::Ipv4Network>()
            .expect("net")
            .contains(v4),
        "{v4}"
    );
    let block4 = addrs
        .iter()
        .find(|a| a.ip == v4.to_string())
        .map(|a| a.block.clone())
        .expect("block");

    // The allocation is recorded in an IPAMBlock affine to n1.
    let blocks = k8s::with_client(lab.tor(), |c| async move {
        Api::<IPAMBlock>::all(c)
            .list(&Default::default())
            .await
            .expect("list blocks")
            .items
    })
    .expect("blocks");
    let b = blocks
        .iter()
        .find(|b| b.spec.0.cidr.to_string() == block4)
        .expect("the v4 block exists");
    assert_eq!(b.spec.0.affinity.as_deref(), Some("host:n1"));
    assert!(
        b.spec
            .0
            .allocations
            .iter()
            .any(|a| a.handle == "k8s-pod-network.c1" && a.attrs.pod.as_deref() == Some("a")),
        "{:?}",
        b.spec.0.allocations
    );

    // The agent blackholes its blocks.
    lab::wait_for("blackhole for the block", Duration::from_secs(10), || {
        Ok(local_routes(&lab, "n1")
            .contains(&format!("blackhole {block4}"))
            .then_some(()))
    })
    .expect("blackhole");

    // The Pod exists before its sandbox is wired (as with kubelet).
    k8s::with_client(lab.tor(), |c| async move {
        k8s::create_pod(&c, "x", "a", "n1", &[], &[])
            .await
            .expect("pod object");
    })
    .expect("pod");
    // Wire the pod (as the CNI would), then EndpointUp: routes in place on return.
    let pod = lab
        .add_pod(
            "n1",
            &PodSpec {
                namespace: "x".into(),
                name: "a".into(),
                ipv4: Some(v4),
                ipv6: Some(v6),
            },
        )
        .expect("pod");
    rt.block_on(async {
        let mut eps = cni_proto::uds::connect_endpoints_uds(&socket)
            .await
            .expect("connect");
        eps.endpoint_up(EndpointUpRequest {
            container_id: "c1".into(),
            pod_namespace: "x".into(),
            pod_name: "a".into(),
            host_ifname: pod.host_if.clone(),
            ifname: "eth0".into(),
            netns: pod.ns.path().display().to_string(),
            ips: vec![v4.to_string(), v6.to_string()],
            handle: "k8s-pod-network.c1".into(),
        })
        .await
        .expect("endpoint up");
        // A bad request is refused with a clear status, not a crash.
        let err = eps
            .endpoint_up(EndpointUpRequest {
                host_ifname: "eth0".into(),
                ..EndpointUpRequest::default()
            })
            .await
            .expect_err("invalid");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    });
    let routes = local_routes(&lab, "n1");
    assert!(
        routes.contains(&format!("{v4} dev {} scope link", pod.host_if)),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("{v6} dev {}", pod.host_if)),
        "{routes}"
    );

    // Liveness means every task's loop turns, not that something happened
    // lately: nothing changes for 3 s (15 periods, 4 deadlines) and every
    // loop, the FIB's and the quiet watches' included, stays live.
    let n1 = lab.node("n1").expect("n1");
    let livez = format!("{}/livez", k8s::AGENT_HEALTH);
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        let body = n1
            .ns
            .exec(&["curl", "-sf", "-m", "1", &livez])
            .unwrap_or_else(|e| panic!("/livez failed on a quiet agent: {e}"));
        for lp in [
            "fib",
            "routing",
            "dataplane controller",
            "watch pods",
            "ipam view",
        ] {
            assert!(body.contains(&format!("ok: {lp} loop turned")), "{body}");
        }
    }

    // Health and status answer on the node's loopback only; Prometheus
    // reaches /metrics (and nothing else) from another host.
    let tor = lab.tor();
    assert!(
        tor.exec(&["curl", "-sf", "-m", "1", "http://198.18.0.11:9647/livez"])
            .is_err(),
        "the health port is not on the node's address"
    );
    let m = tor
        .exec(&["curl", "-sf", "-m", "2", "http://198.18.0.11:9648/metrics"])
        .expect("metrics from the ToR");
    assert!(m.contains("margay_"), "{m}");
    assert!(
        tor.exec(&["curl", "-sf", "-m", "2", "http://198.18.0.11:9648/status"])
            .is_err(),
        "only /metrics on the metrics port"
    );

    // Graceful shutdown: the socket goes, the routes stay for the next start.
    daemon
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("sigterm");
    let st = daemon
        .wait_exit(Duration::from_secs(15))
        .expect("agent exits");
    assert!(st.success(), "exit {st:?}\n{}", daemon.log());
    assert!(!socket.exists(), "socket removed on shutdown");
    let after = local_routes(&lab, "n1");
    assert!(
        after.contains(&format!("{v4} dev {}", pod.host_if)),
        "{after}"
    );

    // A new agent resyncs without removing what is right; release + down work.
    let agent = k8s::start_agent(&lab, "n1", &[]).expect("agent again");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(local_routes(&lab, "n1"), after, "restart changed nothing");
    rt.block_on(async {
        let mut ipam = cni_proto::uds::connect_uds(&agent.socket)
            .await
            .expect("connect");
        let rel = ipam
            .release(ReleaseRequest {
                handle: "k8s-pod-network.c1".into(),
            })
            .await
            .expect("release")
            .into_inner();
        assert_eq!(rel.released_ips.len(), 2, "{rel:?}");
        let again = ipam
            .release(ReleaseRequest {
                handle: "k8s-pod-network.c1".into(),
            })
            .await
            .expect("release is idempotent")
            .into_inner();
        assert!(again.released_ips.is_empty());
        let mut eps = cni_proto::uds::connect_endpoints_uds(&agent.socket)
            .await
            .expect("connect");
        for _ in 0..2 {
            eps.endpoint_down(EndpointDownRequest {
                container_id: "c1".into(),
                pod_namespace: "x".into(),
                pod_name: "a".into(),
                host_ifname: pod.host_if.clone(),
                handle: "k8s-pod-network.c1".into(),
            })
            .await
            .expect("endpoint down (twice)");
        }
    });
    lab::wait_for("pod routes gone", Duration::from_secs(10), || {
        Ok((!local_routes(&lab, "n1").contains(&pod.host_if)).then_some(()))
    })
    .expect("routes removed");

    // A pool created while the agent runs is usable at once.
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<node_agent::k8s::crd::IPPool>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "IPPool",
                "metadata": {"name": "late"}, "spec": {"cidr": "198.19.200.0/24", "blockSize": 28}}),
        )
        .await
        .expect("late pool");
    })
    .expect("pool");
    let late = rt.block_on(async {
        let mut ipam = cni_proto::uds::connect_uds(&agent.socket)
            .await
            .expect("connect");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = ipam
                .allocate(AllocateRequest {
                    handle: "k8s-pod-network.c2".into(),
                    pod_namespace: "x".into(),
                    pod_name: "b".into(),
                    families: vec![Family::Ipv4 as i32],
                    pool_hints: vec!["late".into()],
                    ..AllocateRequest::default()
                })
                .await;
            match r {
                Ok(r) => break r.into_inner().addresses,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the late pool never became usable: {e}"),
            }
        }
    });
    assert!(late[0].ip.starts_with("198.19.200."), "{late:?}");
    assert_eq!(late[0].pool, "late");

    // The agent published the address it chose on its Node (a merge patch of
    // its own annotations: RBAC grants it patch on nodes, not update).
    let ann = k8s::with_client(lab.tor(), |c| async move {
        Api::<k8s_openapi::api::core::v1::Node>::all(c)
            .get("n1")
            .await
            .expect("node")
            .metadata
            .annotations
            .unwrap_or_default()
    })
    .expect("node annotations");
    assert_eq!(
        ann.get("margay.dev/ipv4-address").map(String::as_str),
        Some("198.18.0.11/24")
    );
    assert_eq!(
        ann.get("margay.dev/ipv6-address").map(String::as_str),
        Some("2001:db8:ffff::b/64")
    );

    // BGPConfiguration's logSeverityScreen changes the running agent's level.
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<node_agent::k8s::crd::BGPConfiguration>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {"logSeverityScreen": "Warning"}}),
        )
        .await
        .expect("bgp configuration");
    })
    .expect("config");
    lab::wait_for("log level applied", Duration::from_secs(10), || {
        Ok(agent
            .daemon
            .log()
            .contains("log level set from BGPConfiguration level=warn")
            .then_some(()))
    })
    .expect("the agent applies logSeverityScreen");
}
