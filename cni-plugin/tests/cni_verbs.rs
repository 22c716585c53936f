//! The built `margay` binary run exactly as a runtime runs it, against a
//! fake agent, in namespaces this test creates: every verb, every version.

mod common;

use common::*;
use serde_json::{Value, json};

fn sha_name(key: &str) -> String {
    cni_plugin::wiring::host_veth_name(key)
}

#[test]
fn version_needs_no_environment() {
    // podman calls VERSION with dummy values; no namespace needed.
    for v in VERSIONS.iter().chain(["0.2.0"].iter()) {
        let mut c = Call::bare("VERSION", json!({"cniVersion": v}).to_string().as_bytes());
        c.netns = Some("/nonexistent".into());
        c.ifname = Some("dummy/with/slash".into());
        c.container_id = Some("--not valid--".into());
        let r = c.exec(MARGAY);
        let j = r.ok();
        assert_eq!(j["cniVersion"], *v);
        let sup: Vec<&str> = j["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(sup, VERSIONS);
    }
    // Garbage on stdin is not an error for VERSION.
    let r = Call::bare("VERSION", b"not json").exec(MARGAY);
    assert_eq!(r.ok()["cniVersion"], "1.1.0");
}

#[test]
fn request_errors_have_the_right_codes() {
    let dummy = |cmd: &str, stdin: &[u8]| {
        let mut c = Call::bare(cmd, stdin);
        c.container_id = Some("c1".into());
        c.ifname = Some("eth0".into());
        c.netns = Some("/run/netns/none".into());
        c.exec(MARGAY)
    };
    // 6: malformed JSON.
    let e = dummy("ADD", b"{\"cniVersion\": \"1.0.0\", ").err(6);
    assert!(e["details"].as_str().unwrap().contains("decode"));
    // 1: unknown version, echoed back when well-formed.
    let e = dummy(
        "ADD",
        br#"{"cniVersion":"9.9.9","name":"n","type":"margay"}"#,
    )
    .err(1);
    assert_eq!(e["cniVersion"], "9.9.9");
    dummy(
        "DEL",
        br#"{"cniVersion":"0.2.0","name":"n","type":"margay"}"#,
    )
    .err(1);
    // 1: verbs the version lacks.
    dummy(
        "CHECK",
        br#"{"cniVersion":"0.3.1","name":"n","type":"margay"}"#,
    )
    .err(1);
    Call::bare(
        "GC",
        br#"{"cniVersion":"1.0.0","name":"n","type":"margay"}"#,
    )
    .exec(MARGAY)
    .err(1);
    Call::bare(
        "STATUS",
        br#"{"cniVersion":"0.4.0","name":"n","type":"margay"}"#,
    )
    .exec(MARGAY)
    .err(1);
    // 7: invalid configuration.
    let e = dummy("ADD", br#"{"cniVersion":"1.0.0","type":"margay"}"#).err(7);
    assert_eq!(e["cniVersion"], "1.0.0");
    dummy(
        "ADD",
        br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#,
    )
    .err(7);
    Call::bare("GC", br#"{"cniVersion":"1.1.0","name":"n"}"#)
        .exec(MARGAY)
        .err(7);
    // 4: environment, naming the variable.
    let mut c = Call::bare("ADD", br#"{"cniVersion":"1.0.0","name":"n"}"#);
    c.ifname = Some("eth0".into());
    let e = c.exec(MARGAY).err(4);
    let d = e["details"].as_str().unwrap();
    assert!(
        d.contains("CNI_CONTAINERID") && d.contains("CNI_NETNS"),
        "{d}"
    );
    Call::bare("FROB", b"{}").exec(MARGAY).err(4);
    let mut c = Call::bare("", b"{}");
    c.cmd = String::new();
    c.exec(MARGAY).err(4);
    let mut c = Call::bare("DEL", br#"{"cniVersion":"1.0.0","name":"n"}"#);
    c.container_id = Some("c1".into());
    c.ifname = Some("this-name-is-too-long".into());
    assert!(
        c.exec(MARGAY).err(4)["details"]
            .as_str()
            .unwrap()
            .contains("CNI_IFNAME")
    );
}

fn assert_wired(node: &Node, pod: &Netns, result: &Value, version: &str, v6: bool) {
    assert_eq!(result["cniVersion"], version);
    let ifs = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 2, "{result}");
    let host_if = ifs[0]["name"].as_str().unwrap();
    assert!(host_if.starts_with("cali") && host_if.len() == 15);
    assert_eq!(ifs[0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert!(ifs[0].get("sandbox").is_none());
    assert_eq!(ifs[1]["name"], "eth0");
    assert_eq!(ifs[1]["sandbox"], pod.path());
    assert_eq!(ifs[1].get("mtu").is_some(), version == "1.1.0");
    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), if v6 { 2 } else { 1 });
    for ip in ips {
        assert_eq!(ip["interface"], 1);
        let addr = ip["address"].as_str().unwrap();
        let fam = if addr.contains(':') { "6" } else { "4" };
        if version < "1.0.0" {
            assert_eq!(ip["version"], fam, "{ip}");
        } else {
            assert!(ip.get("version").is_none(), "{ip}");
        }
        assert!(addr.ends_with(if fam == "4" { "/32" } else { "/128" }));
        // In the pod, on eth0.
        let (a, _) = addr.split_once('/').unwrap();
        let shown = pod.ip(&["-o", "addr", "show", "dev", "eth0"]);
        assert!(shown.contains(addr), "{addr} not on eth0: {shown}");
        assert!(!shown.contains("tentative"), "DAD ran: {shown}");
        // The agent's host route, in place when ADD returned.
        let routes = node.routes(fam == "6");
        assert!(
            routes
                .lines()
                .any(|l| l.starts_with(a) && l.contains(host_if)),
            "no host route {a} dev {host_if}: {routes}"
        );
    }
    let pr4 = pod.ip(&["-4", "-o", "route", "show"]);
    assert!(pr4.contains("default via 169.254.1.1 dev eth0"), "{pr4}");
    assert!(
        pr4.lines()
            .any(|l| l.starts_with("169.254.1.1 dev eth0") && l.contains("scope link")),
        "{pr4}"
    );
    if !v6 {
        let ll = pod.ip(&["-6", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            ll.trim().is_empty(),
            "IPv4-only pod has IPv6 addresses: {ll}"
        );
    }
    if v6 {
        let pr6 = pod.ip(&["-6", "-o", "route", "show"]);
        assert!(
            pr6.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
            "{pr6}"
        );
        let hll = node.ns.ip(&["-6", "-o", "addr", "show", "dev", host_if]);
        assert!(
            hll.contains("fe80::ecee:eeff:feee:eeee/64") && !hll.contains("tentative"),
            "{hll}"
        );
    }
    let host = node.ns.ip(&["-d", "link", "show", host_if]);
    assert!(
        host.contains("ee:ee:ee:ee:ee:ee") && host.contains("veth") && host.contains(",UP"),
        "{host}"
    );
    let (_, sysctl) = node.ns.exec(&[
        "sysctl",
        "-n",
        &format!("net.ipv4.conf.{host_if}.proxy_arp"),
        &format!("net.ipv4.neigh.{host_if}.proxy_delay"),
        &format!("net.ipv4.conf.{host_if}.forwarding"),
    ]);
    assert_eq!(
        sysctl.split_whitespace().collect::<Vec<_>>(),
        ["1", "0", "1"]
    );
    if v6 {
        let (_, s6) = node.ns.exec(&[
            "sysctl",
            "-n",
            &format!("net.ipv6.conf.{host_if}.proxy_ndp"),
            &format!("net.ipv6.conf.{host_if}.accept_ra"),
            &format!("net.ipv6.conf.{host_if}.forwarding"),
        ]);
        assert_eq!(s6.split_whitespace().collect::<Vec<_>>(), ["1", "0", "1"]);
    }
}

#[test]
fn add_check_del_in_every_version() {
    if !root_or_skip("add_check_del_in_every_version") {
        return;
    }
    let node = Node::new();
    for (i, v) in VERSIONS.iter().enumerate() {
        let pod = Netns::new("p");
        let cid = format!("ctr{i}");
        let conf = node.conf(v);
        let res = node.cni(&Call::attach("ADD", &cid, Some(&pod), &conf)).ok();
        assert_wired(&node, &pod, &res, v, true);
        // Host veth name: sha1("<namespace>.<pod>").
        assert_eq!(
            res["interfaces"][0]["name"],
            sha_name(&format!("default.pod-{cid}"))
        );
        assert_eq!(node.agent().held().len(), 1);
        assert!(node.agent().held().contains_key(&format!("mgnet.{cid}")));
        if *v >= "0.4.0" {
            node.cni(&Call::attach(
                "CHECK",
                &cid,
                Some(&pod),
                &with_prev(&conf, &res),
            ))
            .ok();
        }
        let del = Call::attach("DEL", &cid, Some(&pod), &with_prev(&conf, &res));
        assert_eq!(node.cni(&del).ok(), Value::Null, "DEL prints nothing");
        assert!(
            node.cali_links().is_empty(),
            "veth left: {:?}",
            node.cali_links()
        );
        assert!(!pod.links().contains(&"eth0".to_string()));
        assert!(node.agent().held().is_empty());
        assert!(node.agent().state().endpoints.is_empty());
        // DEL again: still success.
        node.cni(&del).ok();
    }
    let log = std::fs::read_to_string(node.log()).expect("log file written");
    assert!(
        log.contains("pod attached") && log.contains("pod detached"),
        "{log}"
    );
}

#[test]
fn del_without_netns_or_prev_result() {
    if !root_or_skip("del_without_netns_or_prev_result") {
        return;
    }
    let node = Node::new();
    let pod = Netns::new("p");
    let conf = node.conf("1.0.0");
    node.cni(&Call::attach("ADD", "c1", Some(&pod), &conf)).ok();
    assert_eq!(node.cali_links().len(), 1);
    // containerd after the container exited: empty CNI_NETNS, no prevResult.
    let del = Call::attach("DEL", "c1", None, &conf);
    node.cni(&del).ok();
    assert!(node.cali_links().is_empty());
    assert!(node.agent().held().is_empty());
    node.cni(&del).ok();
    // DEL of something never added.
    node.cni(&Call::attach("DEL", "never", None, &conf)).ok();
    let calls = node.agent().state().calls.clone();
    assert_eq!(
        calls.iter().filter(|c| **c == "Release").count(),
        3,
        "{calls:?}"
    );
    // A DEL whose CNI_ARGS differ from the ADD's (so another host veth name)
    // and without prevResult still removes the pair through the pod side.
    let pod2 = Netns::new("p");
    node.cni(&Call::attach("ADD", "c2", Some(&pod2), &conf))
        .ok();
    let mut del2 = Call::attach("DEL", "c2", Some(&pod2), &conf);
    del2.args = None;
    node.cni(&del2).ok();
    assert!(node.cali_links().is_empty(), "{:?}", node.cali_links());
    assert!(!pod2.links().contains(&"eth0".to_string()));
    assert!(node.agent().held().is_empty());
}

#[test]
fn add_with_agent_down_is_try_again_and_leaks_nothing() {
    if !root_or_skip("add_with_agent_down_is_try_again_and_leaks_nothing") {
        return;
    }
    let node = Node::with(1500, None);
    let pod = Netns::new("p");
    let e = node
        .cni(&Call::attach("ADD", "c1", Some(&pod), &node.conf("1.0.0")))
        .err(11);
    assert!(
        e["details"].as_str().unwrap().contains("margay.sock"),
        "{e}"
    );
    assert!(node.cali_links().is_empty());
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    // DEL while the agent is down succeeds (the runtime would otherwise
    // retry it forever); the release waits in the journal for the agent.
    node.cni(&Call::attach("DEL", "c1", None, &node.conf("1.0.0")))
        .ok();
    assert_eq!(
        node.journaled(),
        vec![("mgnet.c1".to_string(), "c1".to_string())]
    );
}

#[test]
fn del_with_the_agent_gone_tears_down_locally_and_journals_the_release() {
    if !root_or_skip("del_with_the_agent_gone_tears_down_locally_and_journals_the_release") {
        return;
    }
    let mut node = Node::new();
    let pod = Netns::new("p");
    let conf = node.conf("1.0.0");
    let res = node.cni(&Call::attach("ADD", "c1", Some(&pod), &conf)).ok();
    let v4 = res["ips"][0]["address"].as_str().unwrap().to_string();
    let v4 = v4.split('/').next().unwrap().to_string();
    assert_eq!(node.cali_links().len(), 1);
    assert!(
        node.journaled().is_empty(),
        "nothing journaled while the agent answers"
    );
    node.agent.as_mut().unwrap().stop();
    // With its namespace, and again without (the sandbox gone), and again.
    node.cni(&Call::attach("DEL", "c1", Some(&pod), &conf)).ok();
    assert!(node.cali_links().is_empty(), "{:?}", node.cali_links());
    assert!(!pod.links().contains(&"eth0".to_string()));
    assert!(!node.routes(false).contains(&v4), "{}", node.routes(false));
    for _ in 0..2 {
        node.cni(&Call::attach("DEL", "c1", None, &conf)).ok();
    }
    assert_eq!(
        node.journaled(),
        vec![("mgnet.c1".to_string(), "c1".to_string())],
        "one entry per handle, however many DELs"
    );
    // A journal that cannot be written: nothing recorded, so the runtime
    // must retry (code 11).
    let mut bad = conf.clone();
    bad["journal_dir"] = serde_json::json!("/proc/margay-journal");
    node.cni(&Call::attach("DEL", "c2", None, &bad)).err(11);
}

#[test]
fn failure_after_allocation_rolls_back() {
    if !root_or_skip("failure_after_allocation_rolls_back") {
        return;
    }
    let node = Node::new();
    let pod = Netns::new("p");
    node.agent().state().fail_endpoint_up = Some(tonic::Code::Unavailable);
    let conf = node.conf("1.1.0");
    node.cni(&Call::attach("ADD", "c1", Some(&pod), &conf))
        .err(11);
    assert!(node.cali_links().is_empty(), "veth leaked");
    assert_eq!(pod.links(), vec!["lo".to_string()], "pod side leaked");
    assert!(node.agent().held().is_empty(), "allocation leaked");
    let calls = node.agent().state().calls.clone();
    assert_eq!(calls, ["Allocate", "EndpointUp", "EndpointDown", "Release"]);
    // The runtime retries later: works once the agent is healthy.
    node.agent().state().fail_endpoint_up = None;
    node.cni(&Call::attach("ADD", "c1", Some(&pod), &conf)).ok();
}

#[test]
fn pool_exhausted_and_duplicate_add() {
    if !root_or_skip("pool_exhausted_and_duplicate_add") {
        return;
    }
    let node = Node::with(
        1500,
        Some(FakeAgentOptions {
            v4: Some("198.19.7.0/30".parse().unwrap()), // one /30 block: 4 addresses
            v6: None,
            node_netns: None,
        }),
    );
    let conf = node.conf("1.0.0");
    let pods: Vec<Netns> = (0..5).map(|_| Netns::new("p")).collect();
    for (i, p) in pods[..4].iter().enumerate() {
        node.cni(&Call::attach("ADD", &format!("a{i}"), Some(p), &conf))
            .ok();
    }
    let e = node
        .cni(&Call::attach("ADD", "c", Some(&pods[4]), &conf))
        .err(100);
    assert!(e["details"].as_str().unwrap().contains("exhausted"), "{e}");
    assert_eq!(node.cali_links().len(), 4);
    assert_eq!(pods[4].links(), vec!["lo".to_string()]);
    // A second ADD for a live attachment: the spec's "interface exists" error,
    // and the live attachment is untouched.
    node.cni(&Call::attach("ADD", "a0", Some(&pods[0]), &conf))
        .err(103);
    assert_eq!(node.agent().held().len(), 4);
    assert_eq!(node.cali_links().len(), 4);
    // A freed address is usable again at once.
    node.cni(&Call::attach("DEL", "a1", None, &conf)).ok();
    // ... but not for a pod that already has an eth0 of someone else's:
    // "interface exists", and what ADD allocated for it is released.
    let other = Netns::new("o");
    assert!(other.ip_ok(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"]));
    node.cni(&Call::attach("ADD", "o", Some(&other), &conf))
        .err(103);
    assert_eq!(
        node.agent().held().len(),
        3,
        "the fresh allocation is released"
    );
    node.cni(&Call::attach("ADD", "c", Some(&pods[4]), &conf))
        .ok();
}

/// A second ADD for a live attachment finds the pod's interface when it
/// creates the veth: whatever the agent answers, the live attachment keeps
/// its veth, its addresses and its allocation, and the agent is asked for
/// no EndpointDown or Release.
#[test]
fn duplicate_add_leaves_the_live_attachment_alone_whatever_the_agent_says() {
    if !root_or_skip("duplicate_add_leaves_the_live_attachment_alone_whatever_the_agent_says") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let pod = Netns::new("p");
    let res = node.cni(&Call::attach("ADD", "a", Some(&pod), &conf)).ok();
    let host_if = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    let before = pod.ip(&["-o", "addr", "show", "eth0"]);
    for fail in [
        None,
        Some(tonic::Code::Unavailable),
        Some(tonic::Code::Internal),
    ] {
        node.agent().state().fail_allocate = fail;
        node.agent().state().calls.clear();
        node.cni(&Call::attach("ADD", "a", Some(&pod), &conf))
            .err(103);
        assert_eq!(node.cali_links(), vec![host_if.clone()], "{fail:?}");
        assert_eq!(pod.ip(&["-o", "addr", "show", "eth0"]), before, "{fail:?}");
        assert_eq!(node.agent().held().len(), 1, "{fail:?}");
        let calls = node.agent().state().calls.clone();
        assert_eq!(calls, ["Allocate"], "{fail:?}");
    }
}

#[test]
fn ipv4_only_and_detected_mtu() {
    if !root_or_skip("ipv4_only_and_detected_mtu") {
        return;
    }
    let node = Node::with(
        1400,
        Some(FakeAgentOptions {
            v6: None,
            ..Default::default()
        }),
    );
    let pod = Netns::new("p");
    let res = node
        .cni(&Call::attach("ADD", "c1", Some(&pod), &node.conf("1.1.0")))
        .ok();
    assert_wired(&node, &pod, &res, "1.1.0", false);
    assert_eq!(res["interfaces"][1]["mtu"], 1400);
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1400"));
    // Configured MTU wins.
    let pod2 = Netns::new("p");
    let mut conf = node.conf("1.1.0");
    conf["mtu"] = json!(1300);
    let res = node
        .cni(&Call::attach("ADD", "c2", Some(&pod2), &conf))
        .ok();
    assert_eq!(res["interfaces"][1]["mtu"], 1300);
    let host_if = res["interfaces"][0]["name"].as_str().unwrap();
    assert!(node.ns.ip(&["link", "show", host_if]).contains("mtu 1300"));
}

#[test]
fn cni_args_in_any_order_and_second_interface() {
    if !root_or_skip("cni_args_in_any_order_and_second_interface") {
        return;
    }
    let node = Node::new();
    let pod = Netns::new("p");
    let conf = node.conf("1.0.0");
    let mut add = Call::attach("ADD", "c1", Some(&pod), &conf);
    add.args = Some("K8S_POD_UID=1234;FOO=bar;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_NAMESPACE=shop;".into());
    let res = node.cni(&add).ok();
    assert_eq!(res["interfaces"][0]["name"], sha_name("shop.web-0"));
    // A second interface of the same pod: own handle, own veth.
    let mut add2 = add.clone();
    add2.ifname = Some("net1".into());
    let res2 = node.cni(&add2).ok();
    assert_eq!(res2["interfaces"][0]["name"], sha_name("shop.web-0.net1"));
    assert_eq!(res2["interfaces"][1]["name"], "net1");
    let st = node.agent().held().keys().cloned().collect::<Vec<_>>();
    assert_eq!(st, ["mgnet.c1", "mgnet.c1.net1"]);
    let held = node.agent().handle("mgnet.c1").expect("held");
    assert_eq!(held.attrs.namespace.as_deref(), Some("shop"));
    assert_eq!(held.attrs.pod.as_deref(), Some("web-0"));
    // No pod identity at all (plain `ctr run`): named after the handle.
    let pod3 = Netns::new("p");
    let mut add3 = Call::attach("ADD", "c3", Some(&pod3), &conf);
    add3.args = None;
    let res3 = node.cni(&add3).ok();
    assert_eq!(res3["interfaces"][0]["name"], sha_name("mgnet.c3"));
}

#[test]
fn check_names_what_is_wrong() {
    if !root_or_skip("check_names_what_is_wrong") {
        return;
    }
    let node = Node::new();
    let pod = Netns::new("p");
    let conf = node.conf("1.0.0");
    let res = node.cni(&Call::attach("ADD", "c1", Some(&pod), &conf)).ok();
    let check = Call::attach("CHECK", "c1", Some(&pod), &with_prev(&conf, &res));
    node.cni(&check).ok();
    let v4 = res["ips"][0]["address"].as_str().unwrap().to_string();
    let v6 = res["ips"][1]["address"].as_str().unwrap().to_string();
    let host_if = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    let details = |r: &Reply| r.err(106)["details"].as_str().unwrap().to_string();

    pod.ip(&["addr", "del", &v4, "dev", "eth0"]);
    let d = details(&node.cni(&check));
    assert!(d.contains(&format!("address {v4} missing")), "{d}");
    // Removing the last IPv4 address flushed the routes through eth0 too.
    assert!(
        d.contains("route 0.0.0.0/0 via 169.254.1.1 dev eth0 missing"),
        "{d}"
    );
    pod.ip(&["addr", "add", &v4, "dev", "eth0"]);
    pod.ip(&[
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    let d = details(&node.cni(&check));
    assert!(
        !d.contains("address") && d.contains("route 0.0.0.0/0"),
        "{d}"
    );
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    node.cni(&check).ok();

    pod.ip(&["-6", "route", "del", "default"]);
    let d = details(&node.cni(&check));
    assert!(
        d.contains("route ::/0 via fe80::ecee:eeff:feee:eeee dev eth0 missing"),
        "{d}"
    );
    // A later plugin in the chain took the default routes over (and out of
    // the result): not our business any more.
    let mut moved = res.clone();
    moved["routes"] = json!([]);
    node.cni(&Call::attach(
        "CHECK",
        "c1",
        Some(&pod),
        &with_prev(&conf, &moved),
    ))
    .ok();
    pod.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fe80::ecee:eeff:feee:eeee",
        "dev",
        "eth0",
    ]);
    node.cni(&check).ok();

    let (a6, _) = v6.split_once('/').unwrap();
    node.ns.ip(&["-6", "route", "del", a6, "dev", &host_if]);
    let d = details(&node.cni(&check));
    assert!(d.contains("host route") && d.contains(a6), "{d}");
    node.ns.ip(&["-6", "route", "add", a6, "dev", &host_if]);
    node.cni(&check).ok();

    // Another sandbox's mark on the host veth: not this attachment's.
    node.ns.ip(&["link", "set", &host_if, "alias", "mgnet.c9"]);
    let d = details(&node.cni(&check));
    assert!(
        d.contains(&format!("host veth {host_if} belongs to \"mgnet.c9\""))
            && d.contains("(mgnet.c1)"),
        "{d}"
    );
    node.ns.ip(&["link", "set", &host_if, "alias", "mgnet.c1"]);
    node.cni(&check).ok();

    node.agent().release("mgnet.c1");
    let d = details(&node.cni(&check));
    assert!(d.contains("allocation mgnet.c1 is not held"), "{d}");

    node.ns.ip(&["link", "del", &host_if]);
    let d = details(&node.cni(&check));
    assert!(
        d.contains(&format!("host veth {host_if} missing")) && d.contains("interface eth0 missing"),
        "{d}"
    );

    // Without prevResult CHECK cannot know what to check.
    node.cni(&Call::attach("CHECK", "c1", Some(&pod), &conf))
        .err(7);
}

#[test]
fn gc_releases_attachments_not_listed() {
    if !root_or_skip("gc_releases_attachments_not_listed") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.1.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("p")).collect();
    for (i, p) in pods.iter().enumerate() {
        node.cni(&Call::attach("ADD", &format!("c{i}"), Some(p), &conf))
            .ok();
    }
    // Another network's allocation must survive this network's GC.
    assert_eq!(node.agent().allocate("othernet.c9").len(), 2);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "c0", "ifname": "eth0"},
        {"containerID": "c2", "ifname": "eth0"},
    ]);
    assert_eq!(
        node.cni(&Call::bare("GC", gc.to_string().as_bytes())).ok(),
        Value::Null
    );
    let held: Vec<String> = node.agent().held().into_keys().collect();
    assert_eq!(held, ["mgnet.c0", "mgnet.c2", "othernet.c9"]);
    let st = node.agent().state();
    assert!(!st.endpoints.contains_key("mgnet.c1"));
    assert!(st.endpoints.contains_key("mgnet.c0"));
    // The collected attachment's veth pair is gone too; the others stay.
    assert_eq!(node.cali_links().len(), 2, "{:?}", node.cali_links());
    assert!(!pods[1].links().contains(&"eth0".to_string()));
    assert!(pods[0].links().contains(&"eth0".to_string()));
}

#[test]
fn status_reports_agent_and_pools() {
    if !root_or_skip("status_reports_agent_and_pools") {
        return;
    }
    let node = Node::with(
        1500,
        Some(FakeAgentOptions {
            v4: Some("198.19.8.0/30".parse().unwrap()),
            v6: None,
            node_netns: None,
        }),
    );
    let conf = node.conf("1.1.0");
    let status = || node.cni(&Call::bare("STATUS", conf.to_string().as_bytes()));
    assert_eq!(status().ok(), Value::Null);
    node.agent().set_ready(false);
    let e = status().err(50);
    assert!(e["details"].as_str().unwrap().contains("not ready"), "{e}");
    node.agent().set_ready(true);
    status().ok();
    // Fill the pool (one /30 block, 4 addresses): not available.
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("p")).collect();
    for (i, p) in pods.iter().enumerate() {
        node.cni(&Call::attach("ADD", &format!("s{i}"), Some(p), &conf))
            .ok();
        if i == 0 {
            status().ok();
        }
    }
    assert!(
        status().err(50)["details"]
            .as_str()
            .unwrap()
            .contains("full")
    );
    // A family no pool serves.
    let mut v6 = conf.clone();
    v6["ipam"] = json!({"families": ["ipv6"]});
    node.cni(&Call::bare("STATUS", v6.to_string().as_bytes()))
        .err(50);
    // Agent gone.
    let dead = Node::with(1500, None);
    dead.cni(&Call::bare(
        "STATUS",
        dead.conf("1.1.0").to_string().as_bytes(),
    ))
    .err(50);
}

#[test]
fn two_pods_on_one_node_reach_each_other() {
    if !root_or_skip("two_pods_on_one_node_reach_each_other") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0");
    let a = Netns::new("p");
    let b = Netns::new("p");
    let ra = node.cni(&Call::attach("ADD", "a", Some(&a), &conf)).ok();
    let rb = node.cni(&Call::attach("ADD", "b", Some(&b), &conf)).ok();
    for i in 0..2 {
        let dst = rb["ips"][i]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let ok = eventually(std::time::Duration::from_secs(5), || {
            a.exec(&["ping", "-c1", "-W1", &dst]).0
        });
        assert!(ok, "a cannot ping b at {dst}");
        let back = ra["ips"][i]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        assert!(
            b.exec(&["ping", "-c1", "-W1", &back]).0,
            "b cannot ping a at {back}"
        );
    }
}
