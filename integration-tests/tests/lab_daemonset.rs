//! The shipped artefacts, run as a cluster runs them: `deploy/margay.yaml`
//! applied to the API server, the image built by `scripts/image`, and on
//! each lab node the DaemonSet's own pod (init container, then the agent,
//! with the manifest's security context, volumes, env and probes) started
//! by the kubelet stand-in ([`integration_tests::kubelet`]). Pods are then
//! made through the conflist the init container wrote, by a runtime
//! stand-in, and reach each other across nodes. A broken manifest fails
//! with a message that names what is wrong.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::cni::{Attachment, NodeRuntime};
use integration_tests::k8s;
use integration_tests::kubelet::{self, Manifest, PodContext};
use integration_tests::lab::{self, Lab, Netns, Proto};

struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn opts(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            "--root".into(),
            d.join("storage").display().to_string(),
            "--runroot".into(),
            d.join("run").display().to_string(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }
}

/// The image, from the binaries the suite built, in a private store.
fn build_image(store: &Store) -> String {
    let bins = lab::workspace_bin("margay-node")
        .expect("margay-node built")
        .parent()
        .expect("dir")
        .to_path_buf();
    let tag = format!("localhost/margay:ds-{}", std::process::id());
    let out = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/image"),
    )
    .arg("--prebuilt")
    .arg(&bins)
    .args(["--tag", &tag])
    .env("PODMAN_OPTS", store.opts().join(" "))
    .output()
    .expect("scripts/image");
    assert!(
        out.status.success(),
        "scripts/image: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tag
}

/// Applies deploy/margay.yaml as shipped and returns it parsed, with what
/// a pod of its DaemonSet needs from the cluster.
fn install(lab: &Lab, image: &str, store: &Store) -> (Manifest, PodContext) {
    let text = std::fs::read_to_string(k8s::deploy_manifest()).expect("manifest");
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .collect();
    k8s::with_client(lab.tor(), move |c| async move {
        for d in &docs {
            k8s::apply_object(&c, d).await.expect("apply");
        }
    })
    .expect("client");
    (
        Manifest::parse(&text).expect("manifest"),
        kubelet::pod_context(lab, image, store.opts()).expect("pod context"),
    )
}

/// Removes the lab's containers even when the test fails.
struct Containers<'a>(&'a Lab, Vec<String>);

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        kubelet::remove_all(self.0.prefix(), &self.1);
    }
}

fn pod(lab: &Lab, rt: &NodeRuntime, node: &str, name: &str) -> (Netns, std::net::IpAddr) {
    let (ns_, pod_, node_) = ("demo".to_string(), name.to_string(), node.to_string());
    k8s::with_client(lab.tor(), move |c| async move {
        k8s::create_pod(&c, &ns_, &pod_, &node_, &[], &[]).await
    })
    .expect("client")
    .expect("pod object");
    let ns = Netns::create(&lab.pod_ns_name("demo", name)).expect("netns");
    let a = Attachment {
        container_id: format!("ctr-{name}"),
        netns: ns.path().display().to_string(),
        ifname: "eth0".into(),
        pod_namespace: "demo".into(),
        pod_name: name.into(),
    };
    let out = rt.add(&a).expect("ADD");
    assert!(
        out.ok,
        "ADD {name} through the conflist: {:?} {}",
        out.stdout, out.stderr
    );
    let ip = out.ips()[0].parse().expect("ip");
    (ns, ip)
}

#[test]
fn the_daemonset_runs_from_the_image_and_pods_come_up_through_its_conflist() {
    integration_tests::require_root!();
    let store = Store {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let image = build_image(&store);
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let _guard = Containers(&lab, store.opts());
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let (manifest, cx) = install(&lab, &image, &store);

    // Every node's kubelet starts its pod at once (a mesh peer is only up
    // when both ends are), then each waits for its probes.
    let pods: Vec<kubelet::NodePod> = ["n1", "n2"]
        .iter()
        .map(|node| kubelet::start(&lab, node, &manifest, &cx).expect("the DaemonSet's pod"))
        .collect();
    for p in &pods {
        let report = p
            .wait_ready(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        println!("{}", report.join("\n"));
        assert!(
            report.iter().any(|l| l.contains("startupProbe")),
            "{report:?}"
        );
        // install-cni wrote the plugins and the conflist into the node.
        for f in [
            "opt/cni/bin/margay",
            "opt/cni/bin/portmap",
            "etc/cni/net.d/10-margay.conflist",
        ] {
            assert!(p.root.join(f).exists(), "{}: {f} missing", p.node);
        }
    }
    let rt = |p: &kubelet::NodePod| NodeRuntime {
        node_ns: p.ns.name().to_string(),
        root: p.root.clone(),
    };
    let (a_ns, _) = pod(&lab, &rt(&pods[0]), "n1", "a");
    let (b_ns, b_ip) = pod(&lab, &rt(&pods[1]), "n2", "b");
    let _srv = lab.serve(&b_ns, "b", &[80], &[]).expect("serve");
    let reached = lab::wait_reachable(
        &a_ns,
        SocketAddr::new(b_ip, 80),
        Proto::Tcp,
        Duration::from_secs(20),
    );
    assert!(reached.reached(), "a (n1) -> b (n2): {reached:?}");
}

#[test]
fn a_broken_manifest_fails_with_a_message_that_names_it() {
    integration_tests::require_root!();
    let store = Store {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let image = build_image(&store);
    let lab = Lab::builder().nodes(1).build().expect("lab");
    let _guard = Containers(&lab, store.opts());
    let _api = k8s::start_apiserver(&lab).expect("apiserver");
    k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
    let (manifest, cx) = install(&lab, &image, &store);

    // The agent without its privileges: it cannot program the kernel, the
    // pod never gets ready, and the lab says so with the agent's own words.
    let mut unprivileged = manifest.clone();
    let c = &mut unprivileged
        .daemonset
        .spec
        .template
        .spec
        .as_mut()
        .expect("spec")
        .containers[0];
    c.security_context = None;
    let mut fast = unprivileged.clone();
    for c in &mut fast
        .daemonset
        .spec
        .template
        .spec
        .as_mut()
        .expect("spec")
        .containers
    {
        if let Some(p) = &mut c.readiness_probe {
            p.period_seconds = Some(1);
        }
    }
    let p = kubelet::start(&lab, "n1", &fast, &cx).expect("started");
    let e = p
        .wait_ready(Duration::from_secs(15))
        .expect_err("an unprivileged agent must not get ready")
        .to_string();
    println!("{e}");
    assert!(
        e.contains("readinessProbe of margay-node") && e.contains("fail: dataplane programmed"),
        "{e}"
    );
    // ...and the agent's log, which the message carries, says why.
    assert!(e.contains("Operation not permitted"), "{e}");
    kubelet::remove_all(lab.prefix(), &store.opts());

    // A volume mount that names no volume: refused before anything runs.
    let mut typo = manifest.clone();
    let c = &mut typo
        .daemonset
        .spec
        .template
        .spec
        .as_mut()
        .expect("spec")
        .containers[0];
    c.volume_mounts.as_mut().expect("mounts")[0].name = "run-margai".into();
    let e = kubelet::start(&lab, "n1", &typo, &cx)
        .expect_err("bad mount")
        .to_string();
    assert!(e.contains("\"run-margai\" names no volume"), "{e}");

    // The agent's socket not on the node: pods cannot be made, and the CNI
    // error names the socket.
    let mut no_socket = manifest.clone();
    let c = &mut no_socket
        .daemonset
        .spec
        .template
        .spec
        .as_mut()
        .expect("spec")
        .containers[0];
    c.volume_mounts
        .as_mut()
        .expect("mounts")
        .retain(|m| m.mount_path != "/var/run/margay");
    let p = kubelet::start(&lab, "n1", &no_socket, &cx).expect("started");
    p.wait_ready(Duration::from_secs(60))
        .expect("ready all the same");
    let rt = NodeRuntime {
        node_ns: p.ns.name().to_string(),
        root: p.root.clone(),
    };
    let ns = Netns::create(&lab.pod_ns_name("demo", "x")).expect("netns");
    let out = rt
        .add(&Attachment {
            container_id: "ctr-x".into(),
            netns: ns.path().display().to_string(),
            ifname: "eth0".into(),
            pod_namespace: "demo".into(),
            pod_name: "x".into(),
        })
        .expect("ADD ran");
    assert!(!out.ok);
    assert!(
        out.stdout
            .to_string()
            .contains("/var/run/margay/margay.sock"),
        "{:?}",
        out.stdout
    );
}
