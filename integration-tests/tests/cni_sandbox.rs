//! What a real runtime does to a pod's network, through the real agent:
//! containerd re-creates a pod's sandbox (new container ID, same pod, same
//! host veth name) and then removes the old one, whose DELs come late,
//! with the old namespace or none, and repeated; DELs run while the agent
//! is down; something outside Margay deletes a pod's veth or route.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::cni::{self, Attachment, Outcome};
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{self, Lab, Netns, Proto};
use node_agent::dataplane::local_routes::LOCAL_ROUTE_PROTO;

fn ok(what: &str, o: &Outcome) {
    assert!(o.ok, "{what}: {:?} {}", o.stdout, o.stderr);
}

fn alias(node: &Netns, ifname: &str) -> Option<String> {
    node.ip(&["-d", "link", "show", ifname])
        .ok()?
        .lines()
        .find_map(|l| l.trim().strip_prefix("alias ").map(str::to_string))
}

fn pod_routes(node: &Netns) -> String {
    node.ip(&[
        "-4",
        "route",
        "show",
        "proto",
        &LOCAL_ROUTE_PROTO.to_string(),
    ])
    .expect("routes")
}

fn held(lab: &Lab) -> Vec<(String, std::net::IpAddr)> {
    k8s::allocations(lab).expect("allocations")
}

/// A lab node with its agent (reconciling every second) and a server pod
/// the tests reach.
fn setup(lab: &Lab) -> (Agent, cni::WiredPod) {
    k8s::bootstrap(lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let agent = k8s::start_agent(lab, "n1", &["--reconcile-interval", "1s"]).expect("agent");
    let server = cni::add_pod(lab, &agent, "demo", "server", &[], &[]).expect("server");
    ok("ADD server", &server.result);
    (agent, server)
}

#[test]
fn a_new_sandbox_takes_over_and_old_dels_leave_it_alone() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let (agent, server) = setup(&lab);
    let _srv = lab.serve(&server.ns, "server", &[80], &[]).expect("serve");
    let to_server = SocketAddr::new(server.ipv4().expect("v4"), 80);
    let node = &lab.node("n1").expect("n1").ns;
    let conf = cni::margay_conf(&agent, &lab.run_dir().join("cni.log"));

    // The first sandbox of demo/web.
    let old = cni::add_pod(&lab, &agent, "demo", "web", &[], &[]).expect("web");
    ok("ADD web (sandbox 1)", &old.result);
    let host_if = old.result.stdout["interfaces"][0]["name"]
        .as_str()
        .expect("host if")
        .to_string();
    let old_ip = old.ipv4().expect("v4");
    let old_handle = format!("k8s-pod-network.{}", old.attachment.container_id);
    assert_eq!(alias(node, &host_if).as_deref(), Some(old_handle.as_str()));

    // containerd re-creates the sandbox: same pod, new container and
    // namespace; the old namespace still exists.
    let new_ns = Netns::create(&format!("{}-web2", lab.prefix())).expect("netns");
    let new = Attachment {
        container_id: "ctr-web-2".into(),
        netns: new_ns.path().display().to_string(),
        ..old.attachment.clone()
    };
    let add = cni::invoke(node, "ADD", &conf, &new).expect("ADD");
    ok("ADD web (sandbox 2)", &add);
    let new_ip: std::net::IpAddr = add.ips()[0].parse().expect("ip");
    let new_handle = "k8s-pod-network.ctr-web-2".to_string();
    assert_eq!(alias(node, &host_if).as_deref(), Some(new_handle.as_str()));
    // The new sandbox took the pod over: the old one's address is released
    // by the agent without waiting for the old sandbox's DEL.
    lab::wait_for(
        "old sandbox's address released",
        Duration::from_secs(10),
        || {
            let h = held(&lab);
            Ok((!h.iter().any(|(handle, _)| *handle == old_handle)).then_some(()))
        },
    )
    .expect("takeover releases the old allocation");
    assert!(held(&lab).contains(&(new_handle.clone(), new_ip)));

    let reached = lab::wait_reachable(&new_ns, to_server, Proto::Tcp, Duration::from_secs(5));
    assert!(reached.reached(), "new sandbox -> server: {reached:?}");

    // Now containerd removes the old sandbox: DEL with its namespace, then
    // without (it is gone), repeated.
    let with_ns = old.attachment.clone();
    let without = Attachment {
        netns: String::new(),
        ..old.attachment.clone()
    };
    for (what, a) in [
        ("DEL old with netns", &with_ns),
        ("DEL old, empty netns", &without),
        ("DEL old again", &without),
    ] {
        let d = cni::invoke(node, "DEL", &conf, a).expect("DEL");
        ok(what, &d);
        assert_eq!(
            alias(node, &host_if).as_deref(),
            Some(new_handle.as_str()),
            "{what} touched the new sandbox's veth"
        );
        let routes = pod_routes(node);
        assert!(
            routes.contains(&format!("{new_ip} dev {host_if}")),
            "{what} removed the new sandbox's route: {routes}"
        );
    }
    drop(old);
    assert!(!pod_routes(node).contains(&format!("{old_ip} ")));
    let reached = lab::wait_reachable(&new_ns, to_server, Proto::Tcp, Duration::from_secs(5));
    assert!(reached.reached(), "after the old DELs: {reached:?}");
    assert!(held(&lab).contains(&(new_handle.clone(), new_ip)));

    // Something outside Margay deletes the pod's route, then its veth:
    // the agent's reconcile puts them back while the pod runs.
    node.ip(&["route", "del", &format!("{new_ip}/32")])
        .expect("route del");
    lab::wait_for("route repaired", Duration::from_secs(10), || {
        Ok(pod_routes(node)
            .contains(&format!("{new_ip} dev {host_if}"))
            .then_some(()))
    })
    .expect("the agent restores a deleted pod route");
    node.ip(&["link", "del", &host_if]).expect("link del");
    lab::wait_for("veth repaired", Duration::from_secs(10), || {
        Ok(
            (alias(node, &host_if).as_deref() == Some(new_handle.as_str())
                && pod_routes(node).contains(&format!("{new_ip} dev {host_if}")))
            .then_some(()),
        )
    })
    .expect("the agent re-wires a pod whose veth went missing");
    let reached = lab::wait_reachable(&new_ns, to_server, Proto::Tcp, Duration::from_secs(10));
    assert!(reached.reached(), "after the repair: {reached:?}");

    // The new sandbox's own DEL clears everything of the pod.
    let d = cni::invoke(node, "DEL", &conf, &new).expect("DEL");
    ok("DEL new", &d);
    assert!(alias(node, &host_if).is_none(), "veth gone");
    assert!(!pod_routes(node).contains(&format!("{new_ip} ")));
    assert!(!held(&lab).iter().any(|(h, _)| h.contains("ctr-web")));
    // And the agent does not "repair" what was deleted on purpose.
    std::thread::sleep(Duration::from_secs(2));
    assert!(alias(node, &host_if).is_none(), "a deleted pod came back");
}

#[test]
fn dels_while_the_agent_is_down_succeed_and_are_replayed_at_its_start() {
    integration_tests::require_root!();
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let (mut agent, _server) = setup(&lab);
    let node = &lab.node("n1").expect("n1").ns;
    let conf = cni::margay_conf(&agent, &lab.run_dir().join("cni.log"));
    let web = cni::add_pod(&lab, &agent, "demo", "web", &[], &[]).expect("web");
    ok("ADD web", &web.result);
    let ip = web.ipv4().expect("v4");
    let host_if = web.result.stdout["interfaces"][0]["name"]
        .as_str()
        .expect("host if")
        .to_string();
    let handle = format!("k8s-pod-network.{}", web.attachment.container_id);

    // The agent dies; the runtime removes the sandbox meanwhile.
    agent
        .daemon
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    agent.daemon.wait_exit(Duration::from_secs(5));
    let gone = Attachment {
        netns: String::new(),
        ..web.attachment.clone()
    };
    for (what, a) in [("DEL", &web.attachment), ("DEL again", &gone)] {
        let d = cni::invoke(node, "DEL", &conf, a).expect("DEL");
        ok(what, &d);
    }
    assert!(alias(node, &host_if).is_none(), "veth torn down locally");
    assert!(!pod_routes(node).contains(&format!("{ip} ")));
    let journal = cni_plugin::journal::entries(&agent.journal_dir()).expect("journal");
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert!(
        held(&lab).iter().any(|(h, _)| *h == handle),
        "nothing could release it yet"
    );

    // The agent comes back and replays the journal: released, entry gone.
    let agent = k8s::start_agent(&lab, "n1", &["--reconcile-interval", "1s"]).expect("agent");
    lab::wait_for("journal replayed", Duration::from_secs(15), || {
        let released = !held(&lab).iter().any(|(h, _)| *h == handle);
        let empty = cni_plugin::journal::entries(&agent.journal_dir())
            .map(|e| e.is_empty())
            .unwrap_or(false);
        Ok((released && empty).then_some(()))
    })
    .expect("the agent replays DELs it missed");
    assert!(
        agent
            .daemon
            .log()
            .contains("replayed a DEL the agent missed"),
        "{}",
        agent.daemon.log()
    );
    // The server pod's allocation was not touched.
    assert!(held(&lab).iter().any(|(h, _)| h.ends_with("ctr-server")));
}

/// The same re-creation driven through containerd's CRI, as a kubelet
/// does: RunPodSandbox for a pod, RunPodSandbox again (attempt 1: a new
/// sandbox, a new container ID, the same pod), then StopPodSandbox and
/// RemovePodSandbox of the first. containerd makes every CNI call itself.
#[test]
fn containerd_cri_sandbox_recreation() {
    integration_tests::require_root!();
    if let Some(tool) = integration_tests::cri::missing_tools() {
        panic!("{tool} is missing: scripts/install-deps installs it");
    }
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    let (agent, server) = setup(&lab);
    let node = &lab.node("n1").expect("n1").ns;
    k8s::with_client(lab.tor(), |c| async move {
        k8s::create_pod(&c, "demo", "web", "n1", &[], &[]).await
    })
    .expect("client")
    .expect("pod web");

    // The runtime's CNI directories: margay (+ loopback, which containerd
    // sets up first) and the conflist.
    let dir = lab.run_dir().join("cri");
    let (bin, netd) = (dir.join("bin"), dir.join("net.d"));
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::create_dir_all(&netd).expect("mkdir");
    std::fs::copy(
        lab::workspace_bin("margay").expect("margay"),
        bin.join("margay"),
    )
    .expect("copy margay");
    std::fs::copy("/usr/lib/cni/loopback", bin.join("loopback")).expect("copy loopback");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [{
            "type": "margay",
            "agent_socket": agent.socket,
            "journal_dir": agent.journal_dir(),
            "log_file": lab.run_dir().join("cni.log"),
            "log_level": "debug",
            "mtu": 1500,
        }],
    });
    std::fs::write(netd.join("10-margay.conflist"), conflist.to_string()).expect("conflist");
    let cri = integration_tests::cri::Cri::start(node, &dir.join("containerd"), &bin, &netd)
        .expect("containerd with CRI");

    let first = cri
        .run_pod_sandbox("demo", "web", "uid-web", 0)
        .unwrap_or_else(|s| panic!("RunPodSandbox: {s}\n{}", cri.log()));
    let ip1 = cri.sandbox_ip(&first).expect("status").expect("first ip");
    let h1 = format!("k8s-pod-network.{first}");
    let host_if = integration_tests::lab::host_ifname("demo", "web");
    assert_eq!(alias(node, &host_if).as_deref(), Some(h1.as_str()));

    let second = cri
        .run_pod_sandbox("demo", "web", "uid-web", 1)
        .unwrap_or_else(|s| panic!("RunPodSandbox again: {s}\n{}", cri.log()));
    let ip2 = cri.sandbox_ip(&second).expect("status").expect("second ip");
    let h2 = format!("k8s-pod-network.{second}");
    assert_ne!(ip1, ip2);
    assert_eq!(alias(node, &host_if).as_deref(), Some(h2.as_str()));
    println!("CRI sandboxes of demo/web: {first} ({ip1}), then {second} ({ip2})");

    // The kubelet removes the old sandbox; containerd sends its DELs.
    cri.stop_pod_sandbox(&first).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&first).expect("RemovePodSandbox");
    assert_eq!(
        alias(node, &host_if).as_deref(),
        Some(h2.as_str()),
        "removing the old sandbox took the new one's veth"
    );
    assert!(pod_routes(node).contains(&format!("{ip2} dev {host_if}")));
    lab::wait_for("old address released", Duration::from_secs(10), || {
        let h = held(&lab);
        Ok(
            (!h.iter().any(|(handle, _)| *handle == h1) && h.contains(&(h2.clone(), ip2)))
                .then_some(()),
        )
    })
    .expect("the old sandbox's address is released, the new one's kept");
    // The new sandbox answers from the server pod.
    let (ok_, out) = match server
        .ns
        .exec(&["ping", "-c", "1", "-W", "2", &ip2.to_string()])
    {
        Ok(o) => (true, o),
        Err(e) => (false, e.to_string()),
    };
    assert!(ok_, "server -> new sandbox: {out}");

    // The pod goes: everything of it goes.
    cri.stop_pod_sandbox(&second).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&second).expect("RemovePodSandbox");
    assert!(alias(node, &host_if).is_none());
    assert!(!held(&lab).iter().any(|(h, _)| *h == h1 || *h == h2));
}
