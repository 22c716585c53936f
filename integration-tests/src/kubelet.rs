//! A kubelet stand-in for the lab: runs the pod of `deploy/margay.yaml`'s
//! DaemonSet on a lab node from the built image, with podman, the way a
//! kubelet would — so that what the lab runs is what an operator applies.
//!
//! ```text
//!  DaemonSet + ConfigMap (read back from the API server, as applied)
//!   ├─ init containers, in order, to completion ── podman run --rm
//!   └─ containers ─────────────────────────────── podman run -d
//!        --network ns:/run/netns/<node>        hostNetwork: true
//!        --privileged / --cap-add / --cap-drop  securityContext, as written
//!        -v <node root><hostPath>:<mountPath>   hostPath volumes (one "host" per node)
//!        -e ...                                 env: value, fieldRef, configMapKeyRef
//!        -v <sa dir>:/var/run/secrets/kubernetes.io/serviceaccount  token, ca.crt, namespace
//!  probes: startup, then readiness and liveness, polled over HTTP from the node
//! ```
//!
//! Every lab node is a "host" of its own: a hostPath `/X` is `<node root>/X`
//! on this machine (so three nodes' `/var/run/margay` do not collide), but
//! for `/var/run/netns`, which is this machine's (the lab's pod namespaces
//! live there). The ServiceAccount token comes from the TokenRequest API and
//! the API server is reached at the lab's address (`KUBERNETES_SERVICE_HOST`,
//! as kube-proxy would make the `kubernetes` Service reach it). The lab runs
//! containers with this machine's podman quirks (`--ulimit`, see TESTBED).
//!
//! Anything the manifest asks that this stand-in does not implement is an
//! error naming it, never silently skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Probe, Volume};

use crate::lab::{Lab, LabError, Netns, Result};

/// Where pods' ServiceAccount credentials are mounted.
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Container label: the lab (prefix) a container belongs to.
pub const LABEL: &str = "margay-lab";

/// The DaemonSet and ConfigMap of `deploy/margay.yaml`.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The DaemonSet.
    pub daemonset: DaemonSet,
    /// ConfigMaps by name.
    pub configmaps: BTreeMap<String, ConfigMap>,
}

impl Manifest {
    /// Parses a multi-document manifest (its DaemonSet and ConfigMaps).
    pub fn parse(text: &str) -> Result<Manifest> {
        use serde::Deserialize as _;
        let mut daemonset = None;
        let mut configmaps = BTreeMap::new();
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let v = serde_json::Value::deserialize(doc)
                .map_err(|e| LabError::Invalid(format!("manifest: {e}")))?;
            let bad = |e: serde_json::Error| LabError::Invalid(format!("manifest: {e}"));
            match v.get("kind").and_then(serde_json::Value::as_str) {
                Some("DaemonSet") => daemonset = Some(serde_json::from_value(v).map_err(bad)?),
                Some("ConfigMap") => {
                    let cm: ConfigMap = serde_json::from_value(v).map_err(bad)?;
                    configmaps.insert(cm.metadata.name.clone().unwrap_or_default(), cm);
                }
                _ => {}
            }
        }
        Ok(Manifest {
            daemonset: daemonset
                .ok_or_else(|| LabError::Invalid("manifest: no DaemonSet".into()))?,
            configmaps,
        })
    }
}

impl Manifest {
    /// Reads the ConfigMaps the pod uses back from the API server, as the
    /// kubelet does (an operator may have changed them since the file).
    pub fn refresh_configmaps(&mut self, lab: &Lab) -> Result<()> {
        let ns = self
            .daemonset
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let names: Vec<String> = self.configmaps.keys().cloned().collect();
        let got = crate::k8s::with_client(lab.tor(), move |c| async move {
            let api: kube::Api<ConfigMap> = kube::Api::namespaced(c, &ns);
            let mut out = Vec::new();
            for n in names {
                out.push(api.get(&n).await?);
            }
            Ok::<_, kube::Error>(out)
        })?
        .map_err(|e| LabError::Invalid(format!("reading the pod's ConfigMaps: {e}")))?;
        for cm in got {
            self.configmaps
                .insert(cm.metadata.name.clone().unwrap_or_default(), cm);
        }
        Ok(())
    }
}

/// One node's pod of the DaemonSet.
#[derive(Debug)]
pub struct NodePod {
    /// Node name.
    pub node: String,
    /// The node's namespace.
    pub ns: Netns,
    /// The node's "host" file system root.
    pub root: PathBuf,
    /// The running containers (podman names), by container name.
    pub containers: BTreeMap<String, String>,
    /// (container, probe kind, probe).
    probes: Vec<(String, String, Probe)>,
    podman_opts: Vec<String>,
}

fn podman(opts: &[String]) -> Command {
    let mut c = Command::new("podman");
    c.args(opts);
    c
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| LabError::io(format!("running podman ({what})"), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Invalid(format!(
            "{what} failed:\n{}",
            text.trim()
        )))
    }
}

/// The node's path for a hostPath.
fn host_path(root: &Path, path: &str) -> PathBuf {
    if path == "/var/run/netns" || path == "/run/netns" {
        PathBuf::from("/run/netns")
    } else {
        root.join(path.trim_start_matches('/'))
    }
}

impl NodePod {
    /// The path on this machine of the node's `path`.
    pub fn host(&self, path: &str) -> PathBuf {
        host_path(&self.root, path)
    }

    /// A container's log (`podman logs`).
    pub fn logs(&self, container: &str) -> String {
        let Some(name) = self.containers.get(container) else {
            return String::new();
        };
        podman(&self.podman_opts)
            .args(["logs", name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// One probe, as the kubelet makes it (an HTTP GET from the node).
    pub fn probe_once(&self, p: &Probe) -> std::result::Result<(), String> {
        let Some(get) = &p.http_get else {
            return Err("only httpGet probes are implemented here".into());
        };
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
                return Err(format!("named probe port {s:?} is not implemented here"));
            }
        };
        let host = get.host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let url = format!(
            "http://{host}:{port}{}",
            get.path.clone().unwrap_or_else(|| "/".into())
        );
        // As the kubelet: 200-399 is success; otherwise say what answered.
        let out = self
            .ns
            .exec(&["curl", "-s", "-m", "1", "-w", "\n%{http_code}", &url])
            .map_err(|e| format!("GET {url}: {e}"))?;
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        match code.parse::<u16>() {
            Ok(c) if (200..400).contains(&c) => Ok(()),
            Ok(c) => Err(format!(
                "GET {url}: HTTP {c}: {}",
                body.trim().replace('\n', "; ")
            )),
            Err(_) => Err(format!("GET {url}: no answer")),
        }
    }

    /// Polls the startup probe, then readiness, as the kubelet does, until
    /// ready. The startup probe fails the pod once it has failed for
    /// `initialDelaySeconds + failureThreshold x periodSeconds` (the kubelet
    /// would restart the container); readiness may take up to `timeout`.
    /// The liveness probe must pass at the end. Probes are polled every
    /// half second (the lab wants to know at once), failures judged by the
    /// manifest's periods. Returns one line per probe.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Vec<String>> {
        let t0 = Instant::now();
        let mut report = Vec::new();
        for kind in ["startupProbe", "readinessProbe"] {
            for (container, k, probe) in self.probes.iter().filter(|(_, k, _)| k == kind) {
                let budget = if k == "startupProbe" {
                    let period = probe.period_seconds.unwrap_or(10).max(1) as u64;
                    let threshold = probe.failure_threshold.unwrap_or(3).max(1) as u64;
                    let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
                    Duration::from_secs(delay + period * threshold)
                } else {
                    timeout
                };
                let started = Instant::now();
                loop {
                    match self.probe_once(probe) {
                        Ok(()) => {
                            report.push(format!(
                                "{}: {k} of {container} passed after {:.1} s",
                                self.node,
                                t0.elapsed().as_secs_f64()
                            ));
                            break;
                        }
                        Err(why) if started.elapsed() > budget => {
                            let what = if k == "startupProbe" {
                                "the kubelet would restart the container"
                            } else {
                                "the pod never becomes ready"
                            };
                            return Err(LabError::Invalid(format!(
                                "{}: {k} of {container} still failing after {:.0?} ({why}): {what}. Its log:\n{}",
                                self.node,
                                started.elapsed(),
                                tail(&self.logs(container), 30)
                            )));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(500)),
                    }
                }
            }
        }
        for (container, _, probe) in self.probes.iter().filter(|(_, k, _)| k == "livenessProbe") {
            self.probe_once(probe).map_err(|why| {
                LabError::Invalid(format!(
                    "{}: livenessProbe of {container} fails: {why}",
                    self.node
                ))
            })?;
            report.push(format!(
                "{}: livenessProbe of {container} passes",
                self.node
            ));
        }
        Ok(report)
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the kubelet needs from the cluster to start a node's pod.
#[derive(Debug, Clone)]
pub struct PodContext {
    /// The image every container of the manifest runs (the manifest names
    /// a registry image; the lab's is built locally).
    pub image: String,
    /// The API server address a pod reaches (`KUBERNETES_SERVICE_HOST`).
    pub api_host: String,
    /// Its port.
    pub api_port: u16,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// A token of the DaemonSet's ServiceAccount.
    pub token: String,
    /// podman's global options (e.g. a private store for tests).
    pub podman_opts: Vec<String>,
}

/// Starts the DaemonSet's pod on lab node `node` (see the module doc).
pub fn start(lab: &Lab, node: &str, m: &Manifest, cx: &PodContext) -> Result<NodePod> {
    let n = lab.node(node)?;
    let ds = &m.daemonset;
    let ns_name = ds
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = ds
        .spec
        .template
        .spec
        .as_ref()
        .ok_or_else(|| LabError::Invalid("DaemonSet has no pod template spec".into()))?;
    if spec.host_network != Some(true) {
        return Err(LabError::Invalid(
            "the DaemonSet's pod is not hostNetwork: the lab runs it in the node's namespace"
                .into(),
        ));
    }
    let root = lab.run_dir().join(format!("{node}-host"));
    let pod_name = format!("{}-{node}", ds.metadata.name.clone().unwrap_or_default());
    // The projected ServiceAccount volume.
    let sa = root.join("kubelet/serviceaccount");
    std::fs::create_dir_all(&sa).map_err(|e| LabError::io(&sa, e))?;
    for (f, c) in [
        ("token", cx.token.as_str()),
        ("ca.crt", cx.ca_pem.as_str()),
        ("namespace", ns_name.as_str()),
    ] {
        std::fs::write(sa.join(f), c).map_err(|e| LabError::io(sa.join(f), e))?;
    }
    let volumes: BTreeMap<String, &Volume> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.clone(), v))
        .collect();
    let base = |c: &Container| -> Result<Vec<String>> {
        let mut a: Vec<String> = vec![
            "--label".into(),
            format!("{LABEL}={}", lab.prefix()),
            "--network".into(),
            format!("ns:{}", n.ns.path().display()),
            // This machine's podman needs these (TESTBED.md).
            "--ulimit".into(),
            "nofile=1024:1024".into(),
            "--ulimit".into(),
            "nproc=4096:4096".into(),
            "-v".into(),
            format!("{}:{SA_MOUNT}:ro", sa.display()),
            "-e".into(),
            format!("KUBERNETES_SERVICE_HOST={}", cx.api_host),
            "-e".into(),
            format!("KUBERNETES_SERVICE_PORT={}", cx.api_port),
        ];
        a.extend(security_args(c)?);
        for vm in c.volume_mounts.iter().flatten() {
            let v = volumes.get(&vm.name).ok_or_else(|| {
                LabError::Invalid(format!(
                    "container {}: volumeMount {:?} names no volume",
                    c.name, vm.name
                ))
            })?;
            let hp = v.host_path.as_ref().ok_or_else(|| {
                LabError::Invalid(format!(
                    "volume {:?}: only hostPath volumes are implemented here",
                    v.name
                ))
            })?;
            let src = host_path(&root, &hp.path);
            match hp.type_.as_deref() {
                Some("DirectoryOrCreate") | None | Some("") => {
                    std::fs::create_dir_all(&src).map_err(|e| LabError::io(&src, e))?
                }
                Some("Directory") if src.is_dir() => {}
                Some(t) => {
                    return Err(LabError::Invalid(format!(
                        "volume {:?}: hostPath type {t} is not implemented here (or {} is missing)",
                        v.name,
                        src.display()
                    )));
                }
            }
            let mut opts = vec![];
            if vm.read_only == Some(true) {
                opts.push("ro");
            }
            match vm.mount_propagation.as_deref() {
                Some("HostToContainer") => opts.push("rslave"),
                Some("Bidirectional") => opts.push("rshared"),
                _ => {}
            }
            let opts = if opts.is_empty() {
                String::new()
            } else {
                format!(":{}", opts.join(","))
            };
            a.push("-v".into());
            a.push(format!("{}:{}{opts}", src.display(), vm.mount_path));
        }
        for e in c.env.iter().flatten() {
            a.push("-e".into());
            a.push(format!(
                "{}={}",
                e.name,
                env_value(e, node, &ns_name, &pod_name, n.ipv4, m)?
            ));
        }
        if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(LabError::Invalid(format!(
                "container {}: envFrom is not implemented here",
                c.name
            )));
        }
        // command replaces the entrypoint, args the image's cmd.
        if let Some(cmd) = &c.command {
            let (first, rest) = cmd
                .split_first()
                .ok_or_else(|| LabError::Invalid(format!("container {}: empty command", c.name)))?;
            a.push("--entrypoint".into());
            a.push(first.clone());
            a.push(cx.image.clone());
            a.extend(rest.iter().cloned());
        } else {
            a.push(cx.image.clone());
        }
        a.extend(c.args.iter().flatten().cloned());
        Ok(a)
    };
    let mut pod = NodePod {
        node: node.to_string(),
        ns: Netns::existing(n.ns.name()),
        root: root.clone(),
        containers: BTreeMap::new(),
        probes: Vec::new(),
        podman_opts: cx.podman_opts.clone(),
    };
    for c in spec.init_containers.iter().flatten() {
        let cname = format!("{}-{}-{}", lab.prefix(), node, c.name);
        let mut cmd = podman(&cx.podman_opts);
        cmd.args(["run", "--rm", "--name", &cname]).args(base(c)?);
        run(&mut cmd, &format!("init container {} on {node}", c.name))?;
    }
    for c in &spec.containers {
        let cname = format!("{}-{}-{}", lab.prefix(), node, c.name);
        let _ = podman(&cx.podman_opts).args(["rm", "-f", &cname]).output();
        let mut cmd = podman(&cx.podman_opts);
        cmd.args(["run", "-d", "--name", &cname]).args(base(c)?);
        run(&mut cmd, &format!("container {} on {node}", c.name))?;
        pod.containers.insert(c.name.clone(), cname);
        for (kind, p) in [
            ("startupProbe", &c.startup_probe),
            ("readinessProbe", &c.readiness_probe),
            ("livenessProbe", &c.liveness_probe),
        ] {
            if let Some(p) = p {
                pod.probes
                    .push((c.name.clone(), kind.to_string(), p.clone()));
            }
        }
    }
    Ok(pod)
}

fn security_args(c: &Container) -> Result<Vec<String>> {
    let mut a = Vec::new();
    let Some(sc) = &c.security_context else {
        return Ok(a);
    };
    if sc.privileged == Some(true) {
        a.push("--privileged".into());
    }
    if let Some(caps) = &sc.capabilities {
        for c in caps.drop.iter().flatten() {
            a.push("--cap-drop".into());
            a.push(c.clone());
        }
        for c in caps.add.iter().flatten() {
            a.push("--cap-add".into());
            a.push(c.clone());
        }
    }
    if sc.allow_privilege_escalation == Some(false) {
        a.push("--security-opt".into());
        a.push("no-new-privileges".into());
    }
    if sc.read_only_root_filesystem == Some(true) {
        a.push("--read-only".into());
    }
    if let Some(u) = sc.run_as_user {
        a.push("--user".into());
        a.push(u.to_string());
    }
    if sc.se_linux_options.is_some()
        || sc.seccomp_profile.is_some()
        || sc.app_armor_profile.is_some()
    {
        return Err(LabError::Invalid(format!(
            "container {}: SELinux/seccomp/AppArmor options are not implemented here",
            c.name
        )));
    }
    Ok(a)
}

/// An env var's value as the kubelet resolves it.
fn env_value(
    e: &EnvVar,
    node: &str,
    namespace: &str,
    pod: &str,
    node_ip: std::net::Ipv4Addr,
    m: &Manifest,
) -> Result<String> {
    if let Some(v) = &e.value {
        return Ok(v.clone());
    }
    let src = e
        .value_from
        .as_ref()
        .ok_or_else(|| LabError::Invalid(format!("env {}: neither value nor valueFrom", e.name)))?;
    if let Some(f) = &src.field_ref {
        // hostNetwork: the pod's IP is the node's.
        return match f.field_path.as_str() {
            "spec.nodeName" => Ok(node.to_string()),
            "metadata.namespace" => Ok(namespace.to_string()),
            "metadata.name" => Ok(pod.to_string()),
            "status.podIP" | "status.hostIP" => Ok(node_ip.to_string()),
            other => Err(LabError::Invalid(format!(
                "env {}: fieldRef {other} is not implemented here",
                e.name
            ))),
        };
    }
    if let Some(r) = &src.config_map_key_ref {
        let cm = m.configmaps.get(&r.name).ok_or_else(|| {
            LabError::Invalid(format!("env {}: no ConfigMap {:?}", e.name, r.name))
        })?;
        return cm
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .cloned()
            .ok_or_else(|| {
                LabError::Invalid(format!(
                    "env {}: ConfigMap {:?} has no key {:?}",
                    e.name, r.name, r.key
                ))
            });
    }
    Err(LabError::Invalid(format!(
        "env {}: this valueFrom is not implemented here",
        e.name
    )))
}

/// Removes every container of lab `prefix` (also after a crash).
pub fn remove_all(prefix: &str, podman_opts: &[String]) {
    let out = podman(podman_opts)
        .args(["ps", "-aq", "--filter", &format!("label={LABEL}={prefix}")])
        .output();
    if let Ok(o) = out {
        for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = podman(podman_opts)
                .args(["rm", "-f", "-t", "2", id])
                .output();
        }
    }
}

/// What pods of `margay-system/margay-node` need from the lab's cluster:
/// a token from the TokenRequest API and the cluster CA (from the admin
/// kubeconfig the API server wrote). `deploy/margay.yaml` must be applied.
pub fn pod_context(lab: &Lab, image: &str, podman_opts: Vec<String>) -> Result<PodContext> {
    let token = crate::k8s::with_client(lab.tor(), |c| async move {
        crate::k8s::service_account_token(&c, "margay-system", "margay-node", 86_400).await
    })?
    .map_err(|e| LabError::Invalid(format!("a token for margay-system/margay-node: {e}")))?;
    let admin = std::fs::read_to_string(crate::k8s::kubeconfig_path(lab))
        .map_err(|e| LabError::io(crate::k8s::kubeconfig_path(lab), e))?;
    let (_, ca) = crate::apiserver::kubeconfig_cluster(&admin)
        .ok_or_else(|| LabError::Invalid("the admin kubeconfig names no CA".into()))?;
    use base64::Engine as _;
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(ca)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| LabError::Invalid("the admin kubeconfig's CA is not base64 PEM".into()))?;
    Ok(PodContext {
        image: image.to_string(),
        api_host: crate::lab::TOR_IPV4.to_string(),
        api_port: crate::k8s::API_PORT,
        ca_pem,
        token,
        podman_opts,
    })
}
