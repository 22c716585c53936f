//! Test fixtures: uniquely named network namespaces removed on drop (also
//! on panic), a node namespace with an uplink and forwarding, and a runner
//! that executes the built `margay` binary exactly as a runtime does
//! (environment + JSON on stdin) from inside the node namespace.

#![allow(dead_code)]

pub mod fake_agent;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use fake_agent::{FakeAgent, FakeAgentOptions};

/// The plugin under test (set by cargo for integration tests; examples
/// that include this module pass their own binary path instead).
pub const MARGAY: &str = match option_env!("CARGO_BIN_EXE_margay") {
    Some(p) => p,
    None => "margay",
};
/// Every version the plugin supports.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// True when the test may touch namespaces; prints why not otherwise.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        ipam::testsupport::skip(&format!("{test}: needs root for network namespaces"));
        false
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh unique suffix: `mgt<pid>-<n>`.
pub fn unique(tag: &str) -> String {
    format!(
        "mgt{}-{}{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panics with its output if it fails.
pub fn sh(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and reports whether it succeeded.
pub fn sh_ok(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates `mgt<pid>-<n><tag>`.
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        sh("ip", &["netns", "add", &name]);
        Netns { name }
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <name> ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// `ip -n <name> ARGS`, success only.
    pub fn ip_ok(&self, args: &[&str]) -> bool {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        sh_ok("ip", &a)
    }

    /// `ip netns exec <name> ARGS` (output, success).
    pub fn exec(&self, args: &[&str]) -> (bool, String) {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        let out = Command::new("ip")
            .args(&a)
            .output()
            .expect("spawn ip netns exec");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-j", "link", "show"]);
        let v: Value = serde_json::from_str(&out).expect("ip -j link");
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `f` on a thread that has entered this namespace (children it
    /// spawns are born in it).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let f_ns = File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&f_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A node: a namespace with forwarding on and an uplink carrying the
/// default route (proxy-ARP answers only when the route to the target
/// leaves through another interface), and a fake agent serving it.
pub struct Node {
    /// The node namespace.
    pub ns: Netns,
    /// Directory for the agent socket and logs.
    pub dir: tempfile::TempDir,
    /// The agent (None when a test runs without one).
    pub agent: Option<FakeAgent>,
}

impl Node {
    /// A node with uplink MTU `mtu` and a dual-stack fake agent.
    pub fn new() -> Self {
        Self::with(1500, Some(FakeAgentOptions::default()))
    }

    /// A node with the given uplink MTU and agent (None: no agent).
    pub fn with(mtu: u32, agent: Option<FakeAgentOptions>) -> Self {
        let ns = Netns::new("n");
        let mtu = mtu.to_string();
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&[
            "link", "add", "up0", "mtu", &mtu, "type", "veth", "peer", "name", "up1", "mtu", &mtu,
        ]);
        ns.ip(&["link", "set", "up0", "up"]);
        ns.ip(&["link", "set", "up1", "up"]);
        ns.ip(&["addr", "add", "198.18.0.1/30", "dev", "up0"]);
        ns.ip(&["route", "add", "default", "via", "198.18.0.2", "dev", "up0"]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:ffff::1/64",
            "dev",
            "up0",
            "nodad",
        ]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:ffff::2",
            "dev",
            "up0",
        ]);
        let (ok, out) = ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        assert!(ok, "sysctl: {out}");
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = agent.map(|mut o| {
            o.node_netns = Some(PathBuf::from(ns.path()));
            FakeAgent::start(&dir.path().join("margay.sock"), o).expect("fake agent")
        });
        Node { ns, dir, agent }
    }

    /// The agent socket path (whether or not an agent listens).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("margay.sock")
    }

    /// The release journal DEL writes when the agent is away.
    pub fn journal(&self) -> PathBuf {
        self.dir.path().join("cni-journal")
    }

    /// The journal's entries (handle, container id).
    pub fn journaled(&self) -> Vec<(String, String)> {
        cni_plugin::journal::entries(&self.journal())
            .expect("journal")
            .into_iter()
            .map(|(_, e)| {
                let e = e.expect("entry");
                (e.handle, e.container_id)
            })
            .collect()
    }

    /// The plugin log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("cni.log")
    }

    /// The fake agent.
    pub fn agent(&self) -> &FakeAgent {
        self.agent.as_ref().expect("node has an agent")
    }

    /// A plugin configuration for this node.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "mgnet",
            "type": "margay",
            "agent_socket": self.socket(),
            "journal_dir": self.journal(),
            "log_file": self.log(),
            "log_level": "debug",
            "timeouts": {"connect_ms": 1000, "request_ms": 5000},
        })
    }

    /// Runs the plugin in this node's namespace.
    pub fn cni(&self, call: &Call) -> Reply {
        self.ns.run(|| call.exec(MARGAY))
    }

    /// Runs another plugin binary (e.g. `/usr/lib/cni/portmap`) the same way.
    pub fn plugin(&self, bin: &str, call: &Call) -> Reply {
        self.ns.run(|| call.exec(bin))
    }

    /// Links of the node whose name starts with `cali`.
    pub fn cali_links(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("cali"))
            .collect()
    }

    /// `ip -o route show` output for a family.
    pub fn routes(&self, v6: bool) -> String {
        self.ns
            .ip(&[if v6 { "-6" } else { "-4" }, "-o", "route", "show"])
    }
}

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct Call {
    /// CNI_COMMAND.
    pub cmd: String,
    /// CNI_CONTAINERID.
    pub container_id: Option<String>,
    /// CNI_NETNS.
    pub netns: Option<String>,
    /// CNI_IFNAME.
    pub ifname: Option<String>,
    /// CNI_ARGS.
    pub args: Option<String>,
    /// stdin.
    pub stdin: Vec<u8>,
}

impl Call {
    /// An attachment call (ADD, DEL, CHECK) for `pod` with the usual args.
    pub fn attach(cmd: &str, container_id: &str, pod: Option<&Netns>, conf: &Value) -> Self {
        Call {
            cmd: cmd.into(),
            container_id: Some(container_id.into()),
            netns: pod.map(Netns::path),
            ifname: Some("eth0".into()),
            args: Some(format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{container_id};K8S_POD_INFRA_CONTAINER_ID={container_id}"
            )),
            stdin: serde_json::to_vec(conf).expect("json"),
        }
    }

    /// A call with only CNI_COMMAND (GC, STATUS, VERSION).
    pub fn bare(cmd: &str, stdin: &[u8]) -> Self {
        Call {
            cmd: cmd.into(),
            container_id: None,
            netns: None,
            ifname: None,
            args: None,
            stdin: stdin.to_vec(),
        }
    }

    /// Runs `bin` with this call in the calling thread's namespace.
    pub fn exec(&self, bin: &str) -> Reply {
        let mut c = Command::new(bin);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", &self.cmd)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in [
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
        ] {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        let start = Instant::now();
        let mut child = c.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(&self.stdin);
        }
        let out = child.wait_with_output().expect("wait plugin");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Reply {
            success: out.status.success(),
            json: serde_json::from_str(stdout.trim()).ok(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }
}

/// What a plugin printed and how it exited.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Exit status 0.
    pub success: bool,
    /// stdout parsed as JSON, if it is.
    pub json: Option<Value>,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// Exec to exit.
    pub elapsed: Duration,
}

impl Reply {
    /// Asserts success and returns the JSON result (or Null if none).
    pub fn ok(&self) -> Value {
        assert!(
            self.success,
            "plugin failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.json.clone().unwrap_or(Value::Null)
    }

    /// Asserts failure with CNI error `code`; returns the error JSON.
    pub fn err(&self, code: u64) -> Value {
        assert!(
            !self.success,
            "plugin succeeded, expected code {code}: {}",
            self.stdout
        );
        let j = self
            .json
            .clone()
            .unwrap_or_else(|| panic!("error is not JSON: {:?}", self.stdout));
        assert_eq!(j["code"].as_u64(), Some(code), "wrong code: {j}");
        assert!(
            j["msg"].is_string() && j["cniVersion"].is_string(),
            "error shape: {j}"
        );
        j
    }
}

/// Adds a `prevResult` to a configuration.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Does `path` exist?
pub fn exists(path: &Path) -> bool {
    path.exists()
}
