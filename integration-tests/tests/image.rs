//! The shipped image is the tested image: `scripts/image` builds it here
//! with podman (no registry), and it runs what the DaemonSet runs — the
//! agent's `--version`, margayctl, the CNI binary's VERSION, and the
//! `install-cni` init container with the DaemonSet's own CNI configuration,
//! writing the plugins the conflist chains and the conflist into (stand-in)
//! host directories.
//!
//! podman runs with a private storage root (vfs) under a temporary
//! directory, so the machine's image store is not touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use integration_tests::lab;

/// podman with this test's private storage.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn opts(&self) -> String {
        let d = self.dir.path();
        format!(
            "--root {} --runroot {} --storage-driver vfs",
            d.join("storage").display(),
            d.join("run").display()
        )
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.args(self.opts().split(' '));
        c
    }

    /// `podman run --rm` with the ulimits this machine needs.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut c = self.cmd();
        c.args([
            "run",
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--network",
            "none",
        ])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("podman run");
        if let Some(input) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        let out = child.wait_with_output().expect("podman run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The conflist the DaemonSet's ConfigMap carries.
fn shipped_conflist() -> String {
    let text =
        std::fs::read_to_string(integration_tests::k8s::deploy_manifest()).expect("manifest");
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).expect("yaml");
        if v["kind"] == "ConfigMap"
            && let Some(c) = v["data"]["cni_network_config"].as_str()
        {
            return c.to_string();
        }
    }
    panic!("deploy/margay.yaml has no cni_network_config");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_image_builds_offline_and_runs_what_the_daemonset_runs() {
    integration_tests::require_root!();
    let podman = Podman {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let bins = lab::workspace_bin("margay-node")
        .expect("margay-node built")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let tag = format!("localhost/margay:test-{}", std::process::id());
    let started = std::time::Instant::now();
    let out = Command::new(repo_root().join("scripts/image"))
        .arg("--prebuilt")
        .arg(&bins)
        .args(["--tag", &tag])
        .env("PODMAN_OPTS", podman.opts())
        .output()
        .expect("scripts/image");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/image failed:\n{log}");
    println!("{}built in {:.1?}", log, started.elapsed());

    let (ok, v, e) = podman.run(&[&tag, "--version"], None);
    assert!(ok && v.starts_with("margay-node "), "{v}{e}");
    let (ok, v, e) = podman.run(&["--entrypoint", "margayctl", &tag, "--version"], None);
    assert!(ok && v.starts_with("margayctl "), "{v}{e}");
    let (ok, v, e) = podman.run(
        &[
            "-i",
            "-e",
            "CNI_COMMAND=VERSION",
            "--entrypoint",
            "/opt/margay/cni/margay",
            &tag,
        ],
        Some(r#"{"cniVersion":"1.1.0"}"#),
    );
    let version: serde_json::Value = serde_json::from_str(&v).unwrap_or_default();
    assert!(ok, "{v}{e}");
    assert!(
        version["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "1.1.0")),
        "{v}"
    );
    // The agent needs nft in the image.
    let (ok, v, e) = podman.run(&["--entrypoint", "nft", &tag, "--version"], None);
    assert!(ok && v.contains("nftables"), "{v}{e}");

    // The init container, as the DaemonSet runs it.
    let host = tempfile::tempdir().expect("host dirs");
    let (bin_dir, net_d) = (host.path().join("opt-cni-bin"), host.path().join("net.d"));
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    std::fs::create_dir_all(&net_d).expect("mkdir");
    let conflist = shipped_conflist();
    let (ok, v, e) = podman.run(
        &[
            "-v",
            &format!("{}:/host/opt/cni/bin", bin_dir.display()),
            "-v",
            &format!("{}:/host/etc/cni/net.d", net_d.display()),
            "-e",
            &format!("CNI_NETWORK_CONFIG={conflist}"),
            &tag,
            "install-cni",
            "--bin-dir=/host/opt/cni/bin",
            "--conf-dir=/host/etc/cni/net.d",
        ],
        None,
    );
    assert!(ok, "install-cni failed: {v}{e}");
    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(net_d.join("10-margay.conflist")).expect("conflist written"),
    )
    .expect("conflist json");
    for p in written["plugins"].as_array().expect("plugins") {
        let t = p["type"].as_str().expect("type");
        let f = bin_dir.join(t);
        assert!(
            f.exists(),
            "the conflist chains {t}, install-cni did not install it"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&f).expect("stat").permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{t} is executable");
    }
    // The installed margay runs on the host.
    let out = Command::new(bin_dir.join("margay"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .expect("run installed margay");
    assert!(out.status.success(), "{out:?}");

    let _ = podman.cmd().args(["rmi", "-f", &tag]).output();
}
