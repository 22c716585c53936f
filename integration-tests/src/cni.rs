//! Runs the `margay` CNI binary exactly as a container runtime does —
//! environment variables plus the network configuration on stdin — inside a
//! lab node's namespace (so the host side of the veth lands in the node).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::lab::{self, LabError, Netns, Result, netns};

/// One CNI invocation's identity.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Sandbox (container) id.
    pub container_id: String,
    /// `CNI_NETNS`; empty for a DEL after the sandbox is gone.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Pod namespace (K8S_POD_NAMESPACE).
    pub pod_namespace: String,
    /// Pod name (K8S_POD_NAME).
    pub pod_name: String,
}

/// What the plugin answered.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit status success.
    pub ok: bool,
    /// Parsed stdout (a result or a CNI error object); `Null` if empty.
    pub stdout: Value,
    /// stderr, for failure messages.
    pub stderr: String,
}

impl Outcome {
    /// The CNI error code, if the plugin failed with one.
    pub fn error_code(&self) -> Option<u64> {
        self.stdout.get("code").and_then(Value::as_u64)
    }

    /// The addresses of a successful ADD ("198.19.0.2", ...), without prefix.
    pub fn ips(&self) -> Vec<String> {
        self.stdout["ips"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|ip| ip["address"].as_str())
                    .filter_map(|s| s.split('/').next())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A single-plugin network configuration for `margay` talking to `agent`
/// (its socket and its release journal). No `mtu`, as the shipped
/// conflist: the pods get the MTU the agent reports.
pub fn margay_conf(agent: &crate::k8s::Agent, log_file: &Path) -> String {
    margay_conf_at(agent, log_file, "debug")
}

/// [`margay_conf`] with the plugin logging at `log_level` (e.g. the
/// shipped conflist's, `k8s::shipped_plugin_conf`).
pub fn margay_conf_at(agent: &crate::k8s::Agent, log_file: &Path, log_level: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "margay",
        "agent_socket": agent.socket,
        "journal_dir": agent.journal_dir(),
        "log_file": log_file,
        "log_level": log_level,
        "timeouts": {"connect_ms": 1000, "request_ms": 10000},
    })
    .to_string()
}

/// Runs `margay` with `command` (ADD, DEL, CHECK, ...) in `node`.
pub fn invoke(node: &Netns, command: &str, conf: &str, a: &Attachment) -> Result<Outcome> {
    let bin = lab::workspace_bin("margay")?;
    let mut cmd: Command = node.command(
        bin.to_str()
            .ok_or_else(|| LabError::Invalid("non-UTF-8 path".into()))?,
    );
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &a.container_id)
        .env("CNI_NETNS", &a.netns)
        .env("CNI_IFNAME", &a.ifname)
        .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                a.pod_namespace, a.pod_name, a.container_id
            ),
        );
    let out = netns::run_raw(&mut cmd, conf.as_bytes())?;
    Ok(Outcome {
        ok: out.status.success(),
        stdout: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The pod veths (`cali…`) on a node.
pub fn host_veths(node: &Netns) -> Result<Vec<String>> {
    Ok(node
        .ip(&["-br", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(['@', ' ']).next())
        .filter(|n| n.starts_with("cali"))
        .map(str::to_string)
        .collect())
}

/// `conf` with `prevResult` set, as a runtime sends CHECK and DEL.
pub fn with_prev_result(conf: &str, prev: &Value) -> String {
    let mut v: Value = serde_json::from_str(conf).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("prevResult".into(), prev.clone());
    }
    v.to_string()
}

/// A pod made the way Kubernetes makes one: its Pod object (bound to the
/// node, as the scheduler does), its network namespace, then CNI ADD through
/// the node's agent (as the runtime does).
pub struct WiredPod {
    /// The pod's network namespace (removed on drop).
    pub ns: crate::lab::Netns,
    /// How the runtime identified it.
    pub attachment: Attachment,
    /// What ADD answered (check `result.ok`).
    pub result: Outcome,
    /// How long the ADD took, exec to exit (including `ip netns exec`).
    pub add_time: std::time::Duration,
}

impl WiredPod {
    /// The IPv4 address ADD assigned.
    pub fn ipv4(&self) -> Option<std::net::IpAddr> {
        self.addrs().into_iter().find(std::net::IpAddr::is_ipv4)
    }

    /// The IPv6 address ADD assigned.
    pub fn ipv6(&self) -> Option<std::net::IpAddr> {
        self.addrs().into_iter().find(std::net::IpAddr::is_ipv6)
    }

    fn addrs(&self) -> Vec<std::net::IpAddr> {
        self.result
            .ips()
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}

/// Who runs CNI ADD for a pod of the lab.
#[derive(Clone, Copy)]
pub enum Runtime<'a> {
    /// The workspace's `margay` binary, configured for a test agent
    /// ([`margay_conf`]).
    Agent(&'a crate::k8s::Agent),
    /// A node running the DaemonSet's pod: its conflist and plugins.
    Node(&'a NodeRuntime),
}

/// Creates Pod `namespace/name` on `agent`'s node with `labels` and
/// container `ports` `(name, port, protocol)`, its namespace
/// `<prefix>-<namespace>-<name>`, and runs `margay` ADD for it.
pub fn add_pod(
    lab: &crate::lab::Lab,
    agent: &crate::k8s::Agent,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    ports: &[(&str, u16, &str)],
) -> Result<WiredPod> {
    add_pod_on(
        lab,
        &agent.node,
        Runtime::Agent(agent),
        namespace,
        name,
        labels,
        ports,
    )
}

/// [`add_pod`] on `node`, ADD run by `runtime`.
pub fn add_pod_on(
    lab: &crate::lab::Lab,
    node: &str,
    runtime: Runtime<'_>,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    ports: &[(&str, u16, &str)],
) -> Result<WiredPod> {
    let (ns_, pod, node_) = (namespace.to_string(), name.to_string(), node.to_string());
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ports: Vec<(String, u16, String)> = ports
        .iter()
        .map(|(n, p, proto)| (n.to_string(), *p, proto.to_string()))
        .collect();
    crate::k8s::with_client(lab.tor(), move |c| async move {
        let l: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let p: Vec<(&str, u16, &str)> = ports
            .iter()
            .map(|(n, port, proto)| (n.as_str(), *port, proto.as_str()))
            .collect();
        crate::k8s::create_pod(&c, &ns_, &pod, &node_, &l, &p).await
    })?
    .map_err(|e| LabError::Invalid(format!("creating Pod {namespace}/{name}: {e}")))?;
    let ns = crate::lab::Netns::create(&lab.pod_ns_name(namespace, name))?;
    let attachment = Attachment {
        container_id: format!("ctr-{name}"),
        netns: ns.path().display().to_string(),
        ifname: "eth0".into(),
        pod_namespace: namespace.into(),
        pod_name: name.into(),
    };
    let started = std::time::Instant::now();
    let result = match runtime {
        Runtime::Agent(agent) => {
            let conf = margay_conf(agent, &lab.run_dir().join("cni.log"));
            invoke(&lab.node(node)?.ns, "ADD", &conf, &attachment)?
        }
        Runtime::Node(rt) => rt.add(&attachment)?,
    };
    Ok(WiredPod {
        ns,
        attachment,
        result,
        add_time: started.elapsed(),
    })
}

/// A lab node's container runtime, as the DaemonSet lab emulates one: it
/// runs the plugin chain of the first conflist in the node's
/// `/etc/cni/net.d` (the one install-cni wrote), each plugin from the
/// node's `/opt/cni/bin`, as libcni does (ADD in order with each result as
/// the next one's `prevResult`; DEL in reverse with the ADD's result).
///
/// Every lab node is a host of its own ([`crate::kubelet`]): a plugin runs
/// in the node's network namespace and chrooted into the node's root, with
/// this machine's `/usr`, `/lib*`, `/etc`, `/proc`, `/sys`, `/dev` and
/// `/run/netns` bound in (a private mount namespace per call), so the
/// conflist's `/var/run/margay/margay.sock` is that node's agent socket.
#[derive(Debug, Clone)]
pub struct NodeRuntime {
    /// The node's network namespace.
    pub node_ns: String,
    /// The node's root.
    pub root: std::path::PathBuf,
}

impl NodeRuntime {
    /// The conflist the runtime loads (first `*.conflist` by name).
    pub fn conflist(&self) -> Result<Value> {
        let dir = self.root.join("etc/cni/net.d");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| LabError::io(dir.display().to_string(), e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
            .collect();
        names.sort();
        let first = names.first().ok_or_else(|| {
            LabError::Invalid(format!(
                "no conflist in {} (install-cni did not run?)",
                dir.display()
            ))
        })?;
        let text =
            std::fs::read(first).map_err(|e| LabError::io(first.display().to_string(), e))?;
        serde_json::from_slice(&text)
            .map_err(|e| LabError::Invalid(format!("{}: {e}", first.display())))
    }

    /// Runs one plugin binary of the node as the runtime would.
    fn exec(&self, plugin: &str, command: &str, conf: &Value, a: &Attachment) -> Result<Outcome> {
        if plugin.is_empty() || plugin.contains('/') {
            return Err(LabError::Invalid(format!("plugin type {plugin:?}")));
        }
        let r = self.root.display().to_string();
        for d in [
            "usr",
            "lib",
            "lib64",
            "bin",
            "sbin",
            "etc",
            "proc",
            "sys",
            "dev",
            "run/netns",
        ] {
            std::fs::create_dir_all(self.root.join(d))
                .map_err(|e| LabError::io(format!("{r}/{d}"), e))?;
        }
        // Bind what a host has; the node's own /opt, /var are in the root.
        let mut script = String::from("set -e\n");
        for d in ["usr", "lib", "lib64", "bin", "sbin", "etc", "sys", "dev"] {
            if std::path::Path::new("/").join(d).exists() {
                script.push_str(&format!("mount --rbind /{d} {r}/{d}\n"));
            }
        }
        script.push_str(&format!(
            "mount -t proc proc {r}/proc\nmount --rbind /run/netns {r}/run/netns\n\
             exec nsenter --net=/run/netns/{ns} chroot {r} /opt/cni/bin/{plugin}\n",
            ns = self.node_ns
        ));
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    a.pod_namespace, a.pod_name, a.container_id
                ),
            );
        let out = netns::run_raw(&mut cmd, conf.to_string().as_bytes())?;
        Ok(Outcome {
            ok: out.status.success(),
            stdout: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// The per-plugin configurations of the conflist (name, cniVersion and
    /// the plugin's own keys), as libcni builds them.
    fn plugins(list: &Value) -> Result<Vec<(String, Value)>> {
        let name = list["name"].clone();
        let version = list["cniVersion"].clone();
        list["plugins"]
            .as_array()
            .ok_or_else(|| LabError::Invalid("conflist without plugins".into()))?
            .iter()
            .map(|p| {
                let t = p["type"].as_str().unwrap_or_default().to_string();
                let mut c = p.clone();
                c["name"] = name.clone();
                c["cniVersion"] = version.clone();
                Ok((t, c))
            })
            .collect()
    }

    /// ADD through the whole chain; the last plugin's result is the
    /// attachment's. Stops at the first failure (its outcome is returned).
    pub fn add(&self, a: &Attachment) -> Result<Outcome> {
        let list = self.conflist()?;
        let mut prev: Option<Value> = None;
        let mut last = None;
        for (t, mut c) in Self::plugins(&list)? {
            if let Some(p) = &prev {
                c["prevResult"] = p.clone();
            }
            let out = self.exec(&t, "ADD", &c, a)?;
            if !out.ok {
                return Ok(out);
            }
            prev = Some(out.stdout.clone());
            last = Some(out);
        }
        last.ok_or_else(|| LabError::Invalid("empty plugin chain".into()))
    }

    /// DEL through the chain in reverse, with the ADD's result.
    pub fn del(&self, a: &Attachment, add_result: Option<&Value>) -> Result<Outcome> {
        let list = self.conflist()?;
        let mut last = None;
        for (t, mut c) in Self::plugins(&list)?.into_iter().rev() {
            if let Some(p) = add_result {
                c["prevResult"] = p.clone();
            }
            let out = self.exec(&t, "DEL", &c, a)?;
            if !out.ok {
                return Ok(out);
            }
            last = Some(out);
        }
        last.ok_or_else(|| LabError::Invalid("empty plugin chain".into()))
    }
}
