//! Real container runtimes calling `margay` against the real agent:
//! Debian's containerd (`ctr run --rm --cni`) and podman (CNI backend), in
//! a lab node with the API test server and `margay-node`. Containers get
//! addresses from a Margay pool (IPAM blocks on the API server), two
//! containers on the node reach each other, and after they exit their
//! addresses are free again and no veth is left.
//!
//! Neither runtime passes a Kubernetes pod identity, so the agent serves
//! them as standalone workloads (routed and anti-spoofed, not subject to
//! NetworkPolicy); with containerd the agent is also restarted while the
//! first container runs, so the routes and anti-spoofing entries are
//! rebuilt from the IPAM blocks alone.
//!
//! Nothing global is changed: containerd runs with its own root, state and
//! socket; `ctr` runs in a private mount namespace where a tmpfs `/opt`
//! holds `/opt/cni/bin/margay` and the test's conflist directory is bound
//! over `/etc/cni/net.d`; podman gets its own `containers.conf`
//! (`CONTAINERS_CONF`), storage root and CNI directories. Containers use a
//! busybox rootfs directory (`--rootfs`), so no image is needed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::cni;
use integration_tests::k8s::{self, Agent};
use integration_tests::lab::{self, Lab, Netns};

const BUSYBOX: &str = "/bin/busybox";
const NETWORK: &str = "mgnet";

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    lab::wait_for("condition", timeout, || Ok(f().then_some(()))).is_ok()
}

/// A busybox root filesystem.
fn rootfs(dir: &Path) -> PathBuf {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir rootfs");
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).expect("copy busybox");
    for c in ["sh", "ip", "ping", "sleep", "test", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(c)).expect("symlink");
    }
    dir.to_path_buf()
}

/// The lab (one node, API server, agent) plus the runtime's directories.
struct Env {
    lab: Lab,
    _api: lab::Daemon,
    agent: Agent,
    dir: PathBuf,
}

impl Env {
    fn new() -> Self {
        let lab = Lab::builder().nodes(1).build().expect("lab");
        let api = k8s::start_apiserver(&lab).expect("apiserver");
        k8s::bootstrap(&lab, &[("v4", "198.19.0.0/16")]).expect("bootstrap");
        let agent = k8s::start_agent(&lab, "n1", &[]).expect("agent");
        let dir = lab.run_dir().join("runtime");
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        std::fs::create_dir_all(dir.join("net.d")).expect("mkdir");
        let margay = lab::workspace_bin("margay").expect("margay binary");
        std::fs::copy(margay, dir.join("bin/margay")).expect("copy margay");
        let env = Env {
            lab,
            _api: api,
            agent,
            dir,
        };
        env.write_conflist();
        env
    }

    fn write_conflist(&self) {
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "margay",
                "agent_socket": self.agent.socket,
                "journal_dir": self.agent.journal_dir(),
                "log_file": self.cni_log_path(),
                "log_level": "debug",
                "timeouts": {"connect_ms": 1000, "request_ms": 10000},
            }],
        });
        std::fs::write(self.path("net.d/10-mgnet.conflist"), conflist.to_string())
            .expect("write conflist");
    }

    fn node(&self) -> &Netns {
        &self.lab.node("n1").expect("n1").ns
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn cni_log_path(&self) -> PathBuf {
        self.lab.run_dir().join("cni.log")
    }

    fn logs(&self) -> String {
        format!(
            "plugin log:\n{}\nagent log (tail):\n{}",
            std::fs::read_to_string(self.cni_log_path()).unwrap_or_default(),
            tail(&self.agent.daemon.log(), 40)
        )
    }

    /// This network's allocations in the IPAM blocks: (handle, address).
    fn allocations(&self) -> Vec<(String, IpAddr)> {
        k8s::allocations(&self.lab)
            .expect("IPAM blocks")
            .into_iter()
            .filter(|(h, _)| h.starts_with(&format!("{NETWORK}.")))
            .collect()
    }

    fn cali_links(&self) -> Vec<String> {
        cni::host_veths(self.node()).expect("ip link")
    }

    /// Waits until `n` addresses of this network are allocated.
    fn wait_allocated(&self, n: usize) -> Vec<(String, IpAddr)> {
        let mut last = Vec::new();
        let ok = eventually(Duration::from_secs(20), || {
            last = self.allocations();
            last.len() == n
        });
        assert!(ok, "want {n} allocations, have {last:?}\n{}", self.logs());
        last
    }

    /// After every container exited: nothing held, nothing wired.
    fn assert_all_released(&self) {
        let ok = eventually(Duration::from_secs(10), || {
            self.allocations().is_empty() && self.cali_links().is_empty()
        });
        assert!(
            ok,
            "left behind: allocations {:?}, veths {:?}\n{}",
            self.allocations(),
            self.cali_links(),
            self.logs()
        );
    }

    fn restart_agent(&mut self) {
        self.agent.daemon.stop(Duration::from_secs(5));
        self.agent = k8s::start_agent(&self.lab, "n1", &[]).expect("agent again");
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
        let sock = socket.display().to_string();
        let ok = eventually(Duration::from_secs(15), || {
            Command::new("ctr")
                .args(["-a", &sock, "version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(ok, "containerd did not come up");
        Containerd { child, socket }
    }

    /// `ctr run --rm --cni` from the node namespace, with the plugin and
    /// conflist provided in a private mount namespace.
    fn run(&self, env: &Env, id: &str, rootfs: &Path, script: &str) -> Command {
        let inner = format!(
            "set -e; mount -t tmpfs tmpfs /opt; mkdir -p /opt/cni/bin; cp {bin} /opt/cni/bin/margay; \
             mount --bind {netd} /etc/cni/net.d; \
             exec ip netns exec {node} ctr -a {sock} run --rm --cni --rootfs {rootfs} {id} /bin/sh -c '{script}'",
            bin = env.path("bin/margay").display(),
            netd = env.path("net.d").display(),
            node = env.node().name(),
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

/// podman with the CNI backend and everything under the test's directory.
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
        .arg(format!("--net={}", env.node().path().display()))
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
            NETWORK,
            "--rootfs",
        ])
        .arg(rootfs)
        .args(["/bin/sh", "-c", script]);
    c
}

/// A waiting container, stopped through its stop file when dropped.
struct Stopper {
    child: Option<Child>,
    stop: PathBuf,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = std::fs::write(&self.stop, b"");
        let exited = eventually(Duration::from_secs(10), || {
            child.try_wait().is_ok_and(|s| s.is_some())
        });
        if !exited {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// Two containers: c1 waits, c2 pings it; both addresses come from the
/// pool and are free again once both exited. With `restart`, the agent is
/// restarted while c1 runs (before c2 starts).
fn two_containers(
    env: &mut Env,
    restart: bool,
    launch: impl Fn(&Env, &str, &Path, &str) -> Command,
) {
    let r1 = rootfs(&env.path("rootfs1"));
    let r2 = rootfs(&env.path("rootfs2"));
    // c1 waits until the test drops a stop file into its rootfs; the
    // guard does that even if the test fails, so no container outlives it.
    // Ids are unique per run (ctr's cgroup path is /default/<id>).
    let pid = std::process::id();
    let stop = r1.join("tmp/stop");
    let c1 = launch(
        env,
        &format!("mgc1-{pid}"),
        &r1,
        "ip -4 -o addr show dev eth0; while ! test -e /tmp/stop; do sleep 0.1; done",
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start c1");
    let mut c1 = Stopper {
        child: Some(c1),
        stop: stop.clone(),
    };
    let held = env.wait_allocated(1);
    let ip1 = held[0].1;
    assert!(ip1.to_string().starts_with("198.19."), "{ip1}");
    if restart {
        // The allocation shows before the ADD is over (the plugin asks
        // for addresses before it creates the veth); the restart under
        // test is of an agent whose pod is wired, so wait for the route
        // EndpointUp installs. Restarting sooner fails the ADD instead
        // (the plugin rolls back: right, but another test).
        let wired = eventually(Duration::from_secs(20), || {
            env.node()
                .ip(&["-4", "route", "show", &ip1.to_string()])
                .is_ok_and(|r| r.contains("dev cali"))
        });
        assert!(wired, "c1 never wired before the restart\n{}", env.logs());
        env.restart_agent();
        // The new agent knows c1 only from the IPAM blocks: once it has
        // synced its routes and policy, c1's route and anti-spoofing entry
        // must still be there (a wrong rebuild would remove them).
        let synced = eventually(Duration::from_secs(20), || {
            let log = env.agent.daemon.log();
            log.contains("local routes synced") && log.contains("policy committed full=true")
        });
        assert!(synced, "restarted agent never synced\n{}", env.logs());
        let routes = env
            .node()
            .ip(&["-4", "route", "show", &ip1.to_string()])
            .expect("routes");
        assert!(
            routes.contains("dev cali"),
            "c1's route gone after restart: {routes:?}"
        );
        let spoof = env
            .node()
            .exec(&["nft", "list", "set", "inet", "margay", "spoof4"])
            .expect("nft");
        let dev = routes
            .split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .unwrap_or_default();
        assert!(
            spoof.contains(&format!("\"{dev}\" . {ip1}")),
            "({dev}, {ip1}) not in spoof4 after restart: {spoof}"
        );
    }
    let out2 = launch(
        env,
        &format!("mgc2-{pid}"),
        &r2,
        &format!("ip -4 -o addr show dev eth0 && ping -c 3 -i 0.2 -w 6 {ip1}"),
    )
    .output()
    .expect("run c2");
    let so2 = String::from_utf8_lossy(&out2.stdout);
    assert!(
        out2.status.success(),
        "c2 failed: {so2}{}\n{}",
        String::from_utf8_lossy(&out2.stderr),
        env.logs()
    );
    assert!(
        so2.contains("inet 198.19."),
        "c2 has no Margay address: {so2}"
    );
    // busybox ping exits 0 only if replies came; check the summary too.
    assert!(
        so2.contains("packets received") && !so2.contains(" 0 packets received"),
        "{so2}"
    );
    std::fs::write(&stop, b"").expect("stop c1");
    let out1 = c1
        .child
        .take()
        .expect("c1")
        .wait_with_output()
        .expect("wait c1");
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
fn containerd_ctr_run_cni_through_the_agent() {
    integration_tests::require_root!();
    for p in ["containerd", "ctr", "runc", "unshare"] {
        if !have(p) {
            eprintln!("SKIP containerd_ctr_run_cni_through_the_agent: {p} not installed");
            return;
        }
    }
    let mut env = Env::new();
    let ctd = Containerd::start(&env.path("containerd"));
    two_containers(&mut env, true, |env, id, rootfs, script| {
        ctd.run(env, id, rootfs, script)
    });
    let log = env.logs();
    assert_eq!(log.matches("pod attached").count(), 2, "{log}");
    assert_eq!(log.matches("pod detached").count(), 2, "{log}");
}

#[test]
fn podman_cni_backend_through_the_agent() {
    integration_tests::require_root!();
    for p in ["podman", "nsenter", "runc"] {
        if !have(p) {
            eprintln!("SKIP podman_cni_backend_through_the_agent: {p} not installed");
            return;
        }
    }
    let mut env = Env::new();
    two_containers(&mut env, false, podman);
    let log = env.logs();
    assert_eq!(log.matches("pod attached").count(), 2, "{log}");
}
