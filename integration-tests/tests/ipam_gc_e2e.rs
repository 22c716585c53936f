//! The agent's IPAM around the CNI: a Pod's `margay.dev/ip-addrs`
//! annotation chooses its address, a leaked allocation (the Pod deleted
//! without a CNI DEL) is released after the GC grace period while live
//! pods keep theirs, and the IPAM gauges and request counters are exported.

use std::time::Duration;

use integration_tests::cni;
use integration_tests::k8s;
use integration_tests::lab::{self, Lab};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};

/// The pods' handles (not the agent's reserve units).
fn handles(lab: &Lab) -> Vec<String> {
    let mut h = k8s::handles(lab).expect("IPAM handles");
    h.retain(|h| !ipam::reserve::is_reserve_handle(h));
    h
}

#[test]
fn annotation_chooses_the_address_and_leaks_are_collected() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    // A big IPv6 pool, disabled (no allocations from it): only its gauge.
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<node_agent::k8s::crd::IPPool>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "IPPool",
                "metadata": {"name": "v6"}, "spec": {"cidr": "2001:db8:100::/48", "disabled": true}}),
        )
        .await
        .expect("v6 pool");
    })
    .expect("client");
    let agent = k8s::start_agent(
        &lab,
        "n1",
        &["--ipam-gc-grace", "2s", "--ipam-gc-interval", "500ms"],
    )
    .expect("agent");

    // A pod that asks for its address.
    k8s::with_client(lab.tor(), |c| async move {
        k8s::create_pod(&c, "x", "fixed", "n1", &[], &[]).await.expect("pod");
        let patch = serde_json::json!({"metadata": {"annotations": {"margay.dev/ip-addrs": "[\"198.19.7.77\"]"}}});
        Api::<Pod>::namespaced(c, "x")
            .patch("fixed", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
    })
    .expect("annotated pod");
    std::thread::sleep(Duration::from_millis(300)); // the agent's pod watch
    let fixed = cni::add_pod(&lab, &agent, "x", "fixed", &[], &[]).expect("fixed");
    assert!(fixed.result.ok, "{:?}", fixed.result.stdout);
    assert_eq!(
        fixed.ipv4().map(|i| i.to_string()).as_deref(),
        Some("198.19.7.77")
    );

    let keep = cni::add_pod(&lab, &agent, "x", "keep", &[], &[]).expect("keep");
    assert!(keep.result.ok);
    let leak = cni::add_pod(&lab, &agent, "x", "leak", &[], &[]).expect("leak");
    assert!(leak.result.ok);
    assert_eq!(handles(&lab).len(), 3);

    // The Pod object goes; its sandbox is never torn down (a lost DEL).
    k8s::with_client(lab.tor(), |c| async move {
        Api::<Pod>::namespaced(c, "x")
            .delete("leak", &DeleteParams::default())
            .await
            .expect("delete pod");
    })
    .expect("delete");
    // Not before the grace period...
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        handles(&lab).iter().any(|h| h.ends_with("ctr-leak")),
        "released before its grace"
    );
    // ...but after it.
    lab::wait_for("leak released", Duration::from_secs(15), || {
        Ok((!handles(&lab).iter().any(|h| h.ends_with("ctr-leak"))).then_some(()))
    })
    .expect("the leaked address is released");
    let left = handles(&lab);
    assert!(
        left.iter().any(|h| h.ends_with("ctr-keep"))
            && left.iter().any(|h| h.ends_with("ctr-fixed")),
        "{left:?}"
    );

    // Gauges and counters.
    let url = format!("{}/metrics", k8s::AGENT_HEALTH);
    lab::wait_for("gauges", Duration::from_secs(5), || {
        let m = lab.node("n1")?.ns.exec(&["curl", "-sf", &url])?;
        Ok(m.contains("margay_ipam_allocations{pool=\"v4\"} 2")
            .then_some(m))
    })
    .map(|m| {
        assert!(
            m.contains(r#"margay_cni_requests_total{op="allocate",result="ok"} 3"#),
            "{m}"
        );
        assert!(m.contains(r#"margay_ipam_blocks{pool="v4"}"#), "{m}");
        assert!(
            m.contains(r#"margay_ipam_pool_size{pool="v4"} 65536"#),
            "{m}"
        );
        // An IPv6 /48 holds 2^80 addresses: a float, not a saturated i64.
        let v6: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix(r#"margay_ipam_pool_size{pool="v6"} "#))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no v6 pool size:\n{m}"));
        assert_eq!(v6, 2f64.powi(80), "{m}");
    })
    .expect("metrics");
}
