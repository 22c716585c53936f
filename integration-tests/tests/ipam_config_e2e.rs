//! IPAM settings come from the `default` IPAMConfiguration, live: with
//! strictAffinity and maxBlocksPerHost 1 a node that has filled its one
//! block fails the next ADD (with a message saying why) instead of borrowing;
//! turning strictAffinity off lets the same ADD borrow from another node's
//! block, without restarting anything. A configuration not named `default`
//! is refused by the API server.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use integration_tests::cni;
use integration_tests::k8s;
use integration_tests::lab::Lab;
use ipnetwork::IpNetwork;
use kube::Api;
use kube::api::{Patch, PatchParams};
use node_agent::k8s::crd::IPAMConfiguration;

fn block_of(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, 30)
        .and_then(|n| IpNetwork::new(n.network(), 30))
        .expect("block")
}

#[test]
fn strict_affinity_and_max_blocks_come_from_the_crd_and_apply_live() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[]).expect("bootstrap");
    k8s::with_client(lab.tor(), |c| async move {
        k8s::apply_json::<node_agent::k8s::crd::IPPool>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "IPPool",
                "metadata": {"name": "small"},
                "spec": {"cidr": "198.19.0.0/24", "blockSize": 30}}),
        )
        .await
        .expect("pool");
        k8s::apply_json::<IPAMConfiguration>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "IPAMConfiguration",
                "metadata": {"name": "default"},
                "spec": {"strictAffinity": true, "maxBlocksPerHost": 1}}),
        )
        .await
        .expect("ipam configuration");
        let err = k8s::apply_json::<IPAMConfiguration>(
            &c,
            serde_json::json!({"apiVersion": "crd.margay.dev/v1", "kind": "IPAMConfiguration",
                "metadata": {"name": "other"}, "spec": {}}),
        )
        .await
        .expect_err("only `default` is accepted");
        assert!(err.to_string().contains("must be named default"), "{err}");
    })
    .expect("client");
    // No reserve: the test counts a block's free addresses exactly (a
    // reserve unit would hand out one of n1's addresses the test expects
    // to be gone).
    let n1 = k8s::start_agent(&lab, "n1", &["--ipam-reserve", "0"]).expect("agent n1");
    let n2 = k8s::start_agent(&lab, "n2", &["--ipam-reserve", "0"]).expect("agent n2");

    // n2 claims a block of its own.
    let other = cni::add_pod(&lab, &n2, "x", "on-n2", &[], &[]).expect("n2 pod");
    assert!(other.result.ok, "{:?}", other.result.stdout);
    let n2_block = block_of(other.ipv4().expect("n2 pod address"));

    // n1 fills its one block, then is refused.
    let mut n1_addrs = Vec::new();
    let refused = loop {
        let p = cni::add_pod(&lab, &n1, "x", &format!("p{}", n1_addrs.len()), &[], &[])
            .expect("n1 pod");
        if !p.result.ok {
            break p;
        }
        n1_addrs.push(p.ipv4().expect("address"));
        assert!(
            n1_addrs.len() <= 4,
            "more addresses than one /30 holds: {n1_addrs:?}"
        );
    };
    assert!(!n1_addrs.is_empty(), "{:?}", refused.result.stdout);
    let n1_block = block_of(n1_addrs[0]);
    assert!(
        n1_addrs.iter().all(|a| n1_block.contains(*a)),
        "maxBlocksPerHost 1: every address from one block: {n1_addrs:?}"
    );
    assert_ne!(n1_block, n2_block);
    let why = refused.result.stdout.to_string();
    println!("refused as expected: {why}");
    assert!(
        why.contains("strictAffinity forbids borrowing") && why.contains("maxBlocksPerHost (1)"),
        "the refusal says why: {why} {}",
        refused.result.stderr
    );

    // Off with strict affinity: the same ADD borrows from n2's block.
    k8s::with_client(lab.tor(), |c| async move {
        Api::<IPAMConfiguration>::all(c)
            .patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"strictAffinity": false}})),
            )
            .await
            .expect("patch");
    })
    .expect("client");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    let borrowed = loop {
        attempt += 1;
        let name = format!("borrow{attempt}");
        let p = cni::add_pod(&lab, &n1, "x", &name, &[], &[]).expect("n1 pod");
        if p.result.ok {
            break p.ipv4().expect("address");
        }
        assert!(
            Instant::now() < deadline,
            "still refused 10 s after strictAffinity went off: {:?}",
            p.result.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !n1_block.contains(borrowed),
        "n1 had no free address in its own block: {borrowed}"
    );
    assert_eq!(
        block_of(borrowed),
        n2_block,
        "borrowed from n2's block (the only other one; maxBlocksPerHost still 1)"
    );
}
