//! The real `margay` CNI binary against the real agent, invoked as a
//! runtime invokes it, in a lab node: ADD gives an address from a Margay
//! pool with the host route already in place, pods reach each other, DEL
//! (twice, the second without a netns) frees the address, and ADD with the
//! agent down fails with "try again later" (11) leaving nothing behind.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::cni::{self, Attachment};
use integration_tests::k8s;
use integration_tests::lab::{self, Lab, Netns, Proto};
use node_agent::dataplane::local_routes::LOCAL_ROUTE_PROTO;

fn handles(lab: &Lab) -> Vec<String> {
    k8s::handles(lab).expect("IPAM handles")
}

fn cali_links(node: &Netns) -> Vec<String> {
    cni::host_veths(node).expect("ip link")
}

#[test]
fn cni_add_del_through_the_real_agent() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let mut agent = k8s::start_agent(&lab, "n1", &[]).expect("agent");
    let node = &lab.node("n1").expect("n1").ns;
    let conf = cni::margay_conf(&agent, &lab.run_dir().join("cni.log"));

    let pa = cni::add_pod(&lab, &agent, "x", "a", &[], &[]).expect("pod a");
    let add_a = &pa.result;
    assert!(
        add_a.ok,
        "ADD a failed: {:?} {}",
        add_a.stdout, add_a.stderr
    );
    let ip_a = add_a.ips()[0].clone();
    // The agent's host route is there the moment ADD returns.
    let routes = node
        .ip(&[
            "-4",
            "route",
            "show",
            "proto",
            &LOCAL_ROUTE_PROTO.to_string(),
        ])
        .expect("routes");
    assert!(routes.contains(&format!("{ip_a} dev cali")), "{routes}");
    let pb = cni::add_pod(&lab, &agent, "x", "b", &[], &[]).expect("pod b");
    let (add_b, b) = (&pb.result, pb.attachment.clone());
    assert!(
        add_b.ok,
        "ADD b failed: {:?} {}",
        add_b.stdout, add_b.stderr
    );
    let ip_b = add_b.ips()[0].clone();
    assert_ne!(ip_a, ip_b);
    assert!(ip_a.starts_with("198.19.") && ip_b.starts_with("198.19."));

    let _srv = lab.serve(&pb.ns, "b", &[80], &[]).expect("server in b");
    let to_b = SocketAddr::new(ip_b.parse().expect("ip"), 80);
    let reached = lab::wait_reachable(&pa.ns, to_b, Proto::Tcp, Duration::from_secs(5));
    assert!(reached.reached(), "a -> b: {reached:?}");

    let with_prev = cni::with_prev_result(&conf, &add_b.stdout);
    let check = cni::invoke(node, "CHECK", &with_prev, &b).expect("run CHECK");
    assert!(check.ok, "CHECK b: {:?} {}", check.stdout, check.stderr);

    // DEL b twice; the second as containerd sends it after the sandbox died.
    let del = cni::invoke(node, "DEL", &with_prev, &b).expect("run DEL");
    assert!(del.ok, "DEL b: {:?} {}", del.stdout, del.stderr);
    drop(pb);
    let gone = Attachment {
        netns: String::new(),
        ..b.clone()
    };
    let del2 = cni::invoke(node, "DEL", &conf, &gone).expect("run DEL again");
    assert!(del2.ok, "second DEL b: {:?} {}", del2.stdout, del2.stderr);
    let held = handles(&lab);
    assert!(!held.iter().any(|h| h.ends_with("ctr-b")), "{held:?}");
    assert!(held.iter().any(|h| h.ends_with("ctr-a")), "{held:?}");

    // Agent down: ADD says "try again later" and leaves nothing.
    agent.daemon.stop(Duration::from_secs(5));
    let links_before = cali_links(node);
    let pc = cni::add_pod(&lab, &agent, "x", "c", &[], &[]).expect("pod c");
    let add_c = &pc.result;
    assert!(!add_c.ok);
    assert_eq!(add_c.error_code(), Some(11), "{:?}", add_c.stdout);
    assert_eq!(cali_links(node), links_before, "no veth leaked");
    assert!(!handles(&lab).iter().any(|h| h.ends_with("ctr-c")));
    drop(pa);
}
