//! Corners: a stale host veth from an earlier incarnation, a missing
//! namespace, requested addresses, a hung agent.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn stale_host_veth_of_the_same_pod_is_replaced() {
    if !root_or_skip("stale_host_veth_of_the_same_pod_is_replaced") {
        return;
    }
    let node = Node::new();
    let old_pod = Netns::new("p");
    let conf = node.conf("1.0.0");
    // First incarnation; its DEL never comes and its netns stays.
    let r1 = node
        .cni(&Call::attach("ADD", "old", Some(&old_pod), &conf))
        .ok();
    let host_if = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    // Same pod name, new sandbox.
    let new_pod = Netns::new("p");
    let mut add = Call::attach("ADD", "new", Some(&new_pod), &conf);
    add.args = Some("K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-old".into());
    let r2 = node.cni(&add).ok();
    assert_eq!(r2["interfaces"][0]["name"], host_if.as_str());
    assert!(new_pod.links().contains(&"eth0".to_string()));
    assert!(
        !old_pod.links().contains(&"eth0".to_string()),
        "stale pair not removed"
    );
    assert_eq!(node.cali_links(), vec![host_if]);
}

#[test]
fn missing_namespace_is_an_error_before_allocating() {
    if !root_or_skip("missing_namespace_is_an_error_before_allocating") {
        return;
    }
    let node = Node::new();
    let mut add = Call::attach("ADD", "c1", None, &node.conf("1.0.0"));
    add.netns = Some("/run/netns/mgt-does-not-exist".into());
    let e = node.cni(&add).err(104);
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .contains("mgt-does-not-exist")
    );
    // Not a namespace at all.
    add.netns = Some("/etc/hostname".into());
    node.cni(&add).err(104);
    assert!(
        node.agent().state().calls.is_empty(),
        "agent called: {:?}",
        node.agent().state().calls
    );
}

#[test]
fn requested_addresses_from_args_and_runtime_config() {
    if !root_or_skip("requested_addresses_from_args_and_runtime_config") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let p1 = Netns::new("p");
    let mut add = Call::attach("ADD", "c1", Some(&p1), &conf);
    add.args = Some("IgnoreUnknown=1;IP=198.19.0.77".into());
    let r = node.cni(&add).ok();
    assert_eq!(r["ips"][0]["address"], "198.19.0.77/32");
    let p2 = Netns::new("p");
    let mut c2 = conf.clone();
    c2["runtimeConfig"] = json!({"ips": ["198.19.0.77/32"]});
    let e = node
        .cni(&Call::attach("ADD", "c2", Some(&p2), &c2))
        .err(102);
    assert!(e["details"].as_str().unwrap().contains("198.19.0.77"));
    c2["runtimeConfig"] = json!({"ips": ["10.1.2.3"]});
    node.cni(&Call::attach("ADD", "c2", Some(&p2), &c2))
        .err(101);
    c2["runtimeConfig"] = json!({"ips": ["not-an-ip"]});
    node.cni(&Call::attach("ADD", "c2", Some(&p2), &c2)).err(7);
    assert_eq!(node.cali_links().len(), 1);
    assert_eq!(p2.links(), vec!["lo".to_string()]);
}

#[test]
fn hung_agent_is_try_again_within_the_timeout() {
    if !root_or_skip("hung_agent_is_try_again_within_the_timeout") {
        return;
    }
    let node = Node::with(1500, None);
    // Accepts connections and never answers.
    let listener = std::os::unix::net::UnixListener::bind(node.socket()).expect("bind");
    let _holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let pod = Netns::new("p");
    let mut conf = node.conf("1.0.0");
    conf["timeouts"] = json!({"connect_ms": 300, "request_ms": 500});
    let t = Instant::now();
    let e = node
        .cni(&Call::attach("ADD", "c1", Some(&pod), &conf))
        .err(11);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    eprintln!("hung agent: {} after {:?}", e["details"], t.elapsed());
    assert!(node.cali_links().is_empty());
    assert_eq!(pod.links(), vec!["lo".to_string()]);
}

/// containerd re-creates a pod's sandbox (new container ID, same pod, so
/// the same host veth name), then removes the old sandbox: its DELs, with
/// the old namespace and then with an empty CNI_NETNS, repeated, must leave
/// the new sandbox's veth alone.
#[test]
fn del_of_an_old_sandbox_leaves_the_new_sandboxs_veth() {
    if !root_or_skip("del_of_an_old_sandbox_leaves_the_new_sandboxs_veth") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let old_ns = Netns::new("p");
    let args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0";
    let mut add_old = Call::attach("ADD", "sandbox-1", Some(&old_ns), &conf);
    add_old.args = Some(args.into());
    node.cni(&add_old).ok();
    let new_ns = Netns::new("p");
    let mut add_new = Call::attach("ADD", "sandbox-2", Some(&new_ns), &conf);
    add_new.args = Some(args.into());
    let r = node.cni(&add_new).ok();
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let owner = |n: &Node| {
        n.ns.ip(&["-d", "link", "show", &host_if])
            .lines()
            .find_map(|l| l.trim().strip_prefix("alias ").map(str::to_string))
    };
    assert_eq!(owner(&node).as_deref(), Some("mgnet.sandbox-2"));
    for netns in [Some(&old_ns), None, None] {
        let mut del = Call::attach("DEL", "sandbox-1", netns, &conf);
        del.args = Some(args.into());
        node.cni(&del).ok();
        assert_eq!(
            node.cali_links(),
            vec![host_if.clone()],
            "the new veth stays"
        );
        assert!(new_ns.links().contains(&"eth0".to_string()));
    }
    assert_eq!(owner(&node).as_deref(), Some("mgnet.sandbox-2"));
    // The new sandbox's own DEL removes it.
    let mut del = Call::attach("DEL", "sandbox-2", None, &conf);
    del.args = Some(args.into());
    node.cni(&del).ok();
    assert!(node.cali_links().is_empty());
}

/// The pod's socket is opened on the caller's thread (setns there and
/// back): it sees the other namespace's links, and the thread is back in
/// its own namespace afterwards (sysctls and new sockets are the node's).
#[test]
fn a_socket_opened_inline_is_in_the_pod_and_the_thread_comes_back() {
    if !root_or_skip("a_socket_opened_inline_is_in_the_pod_and_the_thread_comes_back") {
        return;
    }
    let node = Netns::new("n");
    let pod = Netns::new("p");
    assert!(pod.ip_ok(&[
        "link",
        "add",
        "only-in-pod",
        "type",
        "veth",
        "peer",
        "name",
        "its-peer"
    ]));
    let pod_path = pod.path();
    node.run(move || {
        let own = || {
            std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        };
        let before = own().expect("own namespace");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let ns = std::fs::File::open(&pod_path).expect("open pod netns");
            let nl = cni_plugin::netlink::Nl::in_netns_inline(&ns).expect("socket in pod");
            assert_eq!(
                own().expect("own namespace"),
                before,
                "the thread is back home"
            );
            assert!(
                nl.link("only-in-pod").await.expect("get link").is_some(),
                "the socket talks to the pod's namespace"
            );
            let here = cni_plugin::netlink::Nl::here().expect("socket here");
            assert!(
                here.link("only-in-pod").await.expect("get link").is_none(),
                "a new socket on the thread is the node's"
            );
        });
    });
}
