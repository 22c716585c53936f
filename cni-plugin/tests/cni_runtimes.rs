//! Real container runtimes calling `margay`: Debian's containerd
//! (`ctr run --rm --cni`) and podman (CNI backend), inside a node namespace
//! this test creates, with the fake agent serving that node. Two containers
//! on the node reach each other; once they exit their addresses are free.
//!
//! Nothing global is changed: containerd runs with its own root, state and
//! socket; `ctr` runs in a private mount namespace where a tmpfs `/opt`
//! holds `/opt/cni/bin/margay` and the test's conflist directory is bound
//! over `/etc/cni/net.d`; podman gets its own `containers.conf`
//! (`CONTAINERS_CONF`), storage root and CNI directories. Containers use a
//! busybox rootfs directory (`--rootfs`), so no image is needed.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const BUSYBOX: &str = "/bin/busybox";

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A busybox root filesystem.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.to_path_buf();
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir rootfs");
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    for c in ["sh", "ip", "ping", "sleep", "test", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).expect("symlink");
    }
    root
}

/// The per-test runtime environment: directories, the plugin, the conflist.
struct Env {
    dir: tempfile::TempDir,
    node: Node,
}

impl Env {
    fn new() -> Self {
        let node = Node::new();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("net.d")).expect("mkdir");
        std::fs::copy(MARGAY, dir.path().join("bin/margay")).expect("copy margay");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "mgnet",
            "plugins": [{
                "type": "margay",
                "agent_socket": node.socket(),
                "log_file": node.log(),
                "log_level": "debug",
            }],
        });
        std::fs::write(
            dir.path().join("net.d/10-mgnet.conflist"),
            conflist.to_string(),
        )
        .expect("write conflist");
        Env { dir, node }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn rootfs(&self, name: &str) -> PathBuf {
        rootfs(&self.path(name))
    }

    /// Waits until the agent has `n` live endpoints; returns their IPv4s.
    fn endpoints(&self, n: usize) -> Vec<IpAddr> {
        let ok = eventually(Duration::from_secs(20), || {
            self.node.agent().state().endpoints.len() == n
        });
        assert!(ok, "agent never saw {n} endpoints; log: {}", self.log());
        self.node
            .agent()
            .state()
            .endpoints
            .values()
            .flat_map(|e| e.ips.iter().filter_map(|s| s.parse::<IpAddr>().ok()))
            .filter(IpAddr::is_ipv4)
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.node.log()).unwrap_or_default()
    }

    /// After every container exited: nothing held, nothing wired.
    fn assert_all_released(&self) {
        let ok = eventually(Duration::from_secs(10), || {
            self.node.agent().held().is_empty()
        });
        assert!(ok, "addresses still held: {:?}", self.node.agent().held());
        assert!(self.node.agent().state().endpoints.is_empty());
        assert!(
            self.node.cali_links().is_empty(),
            "veths left: {:?}",
            self.node.cali_links()
        );
    }
}

/// A containerd of our own.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(base: &Path) -> Self {
        let d = |p: &str| base.join(p);
        std::fs::create_dir_all(d("root")).expect("mkdir");
        let conf = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n",
            d("root").display(),
            d("state").display(),
            d("c.sock").display(),
            d("c.sock.ttrpc").display(),
        );
        std::fs::write(d("config.toml"), conf).expect("write containerd config");
        let log = std::fs::File::create(d("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d("config.toml"))
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let socket = d("c.sock");
        let ok = eventually(Duration::from_secs(15), || {
            sh_ok(
                "ctr",
                &["-a", socket.to_str().unwrap_or_default(), "version"],
            )
        });
        assert!(ok, "containerd did not come up");
        Containerd { child, socket }
    }

    /// `ctr run --rm --cni` from the node namespace, as TESTBED.md describes,
    /// with the plugin and conflist provided in a private mount namespace.
    fn run(&self, env: &Env, id: &str, rootfs: &Path, script: &str) -> Command {
        let inner = format!(
            "set -e; mount -t tmpfs tmpfs /opt; mkdir -p /opt/cni/bin; cp {bin} /opt/cni/bin/margay; \
             mount --bind {netd} /etc/cni/net.d; \
             exec ip netns exec {node} ctr -a {sock} run --rm --cni --rootfs {rootfs} {id} /bin/sh -c '{script}'",
            bin = env.path("bin/margay").display(),
            netd = env.path("net.d").display(),
            node = env.node.ns.name,
            sock = self.socket.display(),
            rootfs = rootfs.display(),
        );
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "slave", "sh", "-c", &inner]);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// podman with the CNI backend and everything under `base`.
fn podman(env: &Env, id: &str, rootfs: &Path, script: &str) -> Command {
    let base = env.path("podman");
    for d in ["root", "runroot", "tmp"] {
        std::fs::create_dir_all(base.join(d)).expect("mkdir");
    }
    let conf = base.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"{}\"\n[engine]\ntmp_dir = \"{}\"\n",
            env.path("bin").display(),
            env.path("net.d").display(),
            base.join("tmp").display()
        ),
    )
    .expect("containers.conf");
    let mut c = Command::new("nsenter");
    c.env("CONTAINERS_CONF", &conf)
        .arg(format!("--net={}", env.node.ns.path()))
        .args(["podman", "--root"])
        .arg(base.join("root"))
        .arg("--runroot")
        .arg(base.join("runroot"))
        .args([
            "--storage-driver",
            "vfs",
            "run",
            "--rm",
            "--name",
            id,
            "--network",
            "mgnet",
            "--rootfs",
        ])
        .arg(rootfs)
        .args(["/bin/sh", "-c", script]);
    c
}

/// Runs the two-container scenario with `launch(id, rootfs, script)`.
fn two_containers(env: &Env, launch: impl Fn(&str, &Path, &str) -> Command) {
    let r1 = env.rootfs("rootfs1");
    let r2 = env.rootfs("rootfs2");
    // c1 waits until the test drops a stop file into its rootfs.
    let stop = r1.join("tmp/stop");
    let c1 = launch(
        "mgc1",
        &r1,
        "ip -4 -o addr show dev eth0; while ! test -e /tmp/stop; do sleep 0.1; done",
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start c1");
    let ip1 = env.endpoints(1)[0];
    assert!(ip1.to_string().starts_with("198.19.0."), "{ip1}");
    let out2 = launch(
        "mgc2",
        &r2,
        &format!("ip -4 -o addr show dev eth0 && ping -c 3 -i 0.2 -w 6 {ip1}"),
    )
    .output()
    .expect("run c2");
    let so2 = String::from_utf8_lossy(&out2.stdout);
    assert!(
        out2.status.success(),
        "c2 failed: {so2}{}\nplugin log: {}",
        String::from_utf8_lossy(&out2.stderr),
        env.log()
    );
    assert!(
        so2.contains("inet 198.19.0."),
        "c2 has no Margay address: {so2}"
    );
    // busybox ping exits 0 only if replies came; check the summary too.
    assert!(
        so2.contains("packets received") && !so2.contains(" 0 packets received"),
        "{so2}"
    );
    std::fs::write(&stop, b"").expect("stop c1");
    let out1 = c1.wait_with_output().expect("wait c1");
    let so1 = String::from_utf8_lossy(&out1.stdout);
    assert!(
        out1.status.success(),
        "c1 failed: {so1}{}",
        String::from_utf8_lossy(&out1.stderr)
    );
    assert!(so1.contains(&format!("inet {ip1}/32")), "{so1}");
    env.assert_all_released();
}

#[test]
fn containerd_ctr_run_cni() {
    if !root_or_skip("containerd_ctr_run_cni") {
        return;
    }
    for p in ["containerd", "ctr", "runc", "unshare"] {
        if !have(p) {
            eprintln!("SKIP containerd_ctr_run_cni: {p} not installed");
            return;
        }
    }
    let env = Env::new();
    let ctd = Containerd::start(&env.path("containerd"));
    two_containers(&env, |id, rootfs, script| ctd.run(&env, id, rootfs, script));
    let log = env.log();
    assert_eq!(log.matches("pod attached").count(), 2, "{log}");
    assert_eq!(log.matches("pod detached").count(), 2, "{log}");
}

#[test]
fn podman_cni_backend() {
    if !root_or_skip("podman_cni_backend") {
        return;
    }
    for p in ["podman", "nsenter", "runc"] {
        if !have(p) {
            eprintln!("SKIP podman_cni_backend: {p} not installed");
            return;
        }
    }
    let env = Env::new();
    two_containers(&env, |id, rootfs, script| podman(&env, id, rootfs, script));
    let log = env.log();
    assert_eq!(log.matches("pod attached").count(), 2, "{log}");
}
