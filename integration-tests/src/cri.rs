//! containerd's CRI, driven the way a kubelet drives it: a private
//! containerd (its own root, state and socket, the CRI plugin on, its CNI
//! directories the test's) started inside a lab node's network namespace,
//! so the sandboxes' host veths land in that node; a pause image built
//! locally from busybox (no registry); and a small gRPC client of the
//! sandbox calls (`proto/cri_sandbox.proto`).
//!
//! Whatever the test does, dropping [`Cri`] stops and removes the
//! sandboxes it created (so containerd runs their CNI DELs and removes
//! their network namespaces) and then stops containerd.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::lab::{self, LabError, Netns, Result};

/// The generated client.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("runtime.v1");
}

use proto::runtime_service_client::RuntimeServiceClient;

/// The sandbox image the private containerd uses.
pub const PAUSE_IMAGE: &str = "localhost/margay-pause:test";
const K8S_NAMESPACE: &str = "k8s.io";

/// The programs the CRI tests need, or which one is missing.
pub fn missing_tools() -> Option<&'static str> {
    [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "umoci",
        "skopeo",
    ]
    .into_iter()
    .find(|p| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| LabError::io(format!("running {what}"), e))?;
    if !out.status.success() {
        return Err(LabError::Invalid(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running private containerd with the CRI plugin, and its client.
pub struct Cri {
    child: Child,
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    sandboxes: Mutex<Vec<String>>,
}

impl Cri {
    /// Starts containerd in `node`'s namespace with state under `dir`,
    /// CNI plugins from `bin_dir` and configuration from `conf_dir`, and
    /// imports the pause image into it.
    pub fn start(node: &Netns, dir: &Path, bin_dir: &Path, conf_dir: &Path) -> Result<Cri> {
        let d = |p: &str| dir.join(p);
        std::fs::create_dir_all(d("root")).map_err(|e| LabError::io("mkdir", e))?;
        let conf = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  restrict_oom_score_adj = true\n  \
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    snapshotter = \"native\"\n  \
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"{bin}\"\n    conf_dir = \"{conf}\"\n    max_conf_num = 1\n",
            root = d("root").display(),
            state = d("state").display(),
            sock = d("c.sock").display(),
            bin = bin_dir.display(),
            conf = conf_dir.display(),
        );
        std::fs::write(d("config.toml"), conf).map_err(|e| LabError::io("containerd config", e))?;
        let log = std::fs::File::create(d("containerd.log"))
            .map_err(|e| LabError::io("containerd log", e))?;
        let err = log.try_clone().map_err(|e| LabError::io("dup", e))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg("containerd")
            .arg("--config")
            .arg(d("config.toml"))
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| LabError::io("starting containerd", e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::io("tokio runtime", e))?;
        let sock = d("c.sock");
        let dial = sock.clone();
        let client = rt.block_on(async move {
            let connector = tower::service_fn(move |_: Uri| {
                let dial = dial.clone();
                async move { UnixStream::connect(dial).await.map(TokioIo::new) }
            });
            Endpoint::from_static("http://containerd.invalid")
                .timeout(Duration::from_secs(60))
                .connect_with_connector_lazy(connector)
        });
        let mut cri = Cri {
            child,
            dir: dir.to_path_buf(),
            rt,
            client: RuntimeServiceClient::new(client),
            sandboxes: Mutex::new(Vec::new()),
        };
        lab::wait_for("containerd's CRI", Duration::from_secs(20), || {
            if let Ok(Some(st)) = cri.child.try_wait() {
                return Err(LabError::Invalid(format!(
                    "containerd exited ({st}): {}",
                    cri.log()
                )));
            }
            let mut c = cri.client.clone();
            Ok(cri
                .rt
                .block_on(c.version(proto::VersionRequest::default()))
                .ok()
                .map(|_| ()))
        })?;
        cri.import_pause_image()?;
        Ok(cri)
    }

    /// containerd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.dir.join("c.sock"))
            .args(["-n", K8S_NAMESPACE]);
        c
    }

    /// Builds a pause image (busybox sleeping as PID 1) with umoci,
    /// converts it with skopeo and imports it: no registry involved.
    fn import_pause_image(&self) -> Result<()> {
        let d = |p: &str| self.dir.join(p);
        let layout = d("oci");
        let image = format!("{}:pause", layout.display());
        run(
            Command::new("umoci")
                .args(["init", "--layout"])
                .arg(&layout),
            "umoci init",
        )?;
        run(
            Command::new("umoci").args(["new", "--image", &image]),
            "umoci new",
        )?;
        run(
            Command::new("umoci")
                .args(["unpack", "--image", &image])
                .arg(d("bundle")),
            "umoci unpack",
        )?;
        let bin = d("bundle/rootfs/bin");
        std::fs::create_dir_all(&bin).map_err(|e| LabError::io("mkdir", e))?;
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .map_err(|e| LabError::io("copy busybox", e))?;
        run(
            Command::new("umoci")
                .args(["repack", "--image", &image])
                .arg(d("bundle")),
            "umoci repack",
        )?;
        run(
            Command::new("umoci").args([
                "config",
                "--image",
                &image,
                "--config.entrypoint",
                "/bin/busybox",
                "--config.cmd",
                "sleep",
                "--config.cmd",
                "2147483647",
            ]),
            "umoci config",
        )?;
        let tar = d("pause.tar");
        run(
            Command::new("skopeo").args([
                "copy",
                &format!("oci:{image}"),
                &format!("docker-archive:{}:{PAUSE_IMAGE}", tar.display()),
            ]),
            "skopeo copy",
        )?;
        run(
            self.ctr().args(["images", "import"]).arg(&tar),
            "ctr images import",
        )?;
        Ok(())
    }

    /// RunPodSandbox for pod `namespace/name` (its `attempt`-th sandbox):
    /// containerd creates the namespace and runs CNI ADD. Returns the id.
    pub fn run_pod_sandbox(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        attempt: u32,
    ) -> std::result::Result<String, tonic::Status> {
        let req = proto::RunPodSandboxRequest {
            config: Some(proto::PodSandboxConfig {
                metadata: Some(proto::PodSandboxMetadata {
                    name: name.into(),
                    uid: uid.into(),
                    namespace: namespace.into(),
                    attempt,
                }),
                hostname: name.into(),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        };
        let mut c = self.client.clone();
        let id = self
            .rt
            .block_on(c.run_pod_sandbox(req))?
            .into_inner()
            .pod_sandbox_id;
        self.sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.clone());
        Ok(id)
    }

    /// The sandbox's IP as the runtime reports it (from the CNI result).
    pub fn sandbox_ip(&self, id: &str) -> std::result::Result<Option<IpAddr>, tonic::Status> {
        let mut c = self.client.clone();
        let st = self
            .rt
            .block_on(c.pod_sandbox_status(proto::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            }))?
            .into_inner();
        Ok(st
            .status
            .and_then(|s| s.network)
            .and_then(|n| n.ip.parse().ok()))
    }

    /// StopPodSandbox: containerd runs CNI DEL and removes the namespace.
    pub fn stop_pod_sandbox(&self, id: &str) -> std::result::Result<(), tonic::Status> {
        let mut c = self.client.clone();
        self.rt
            .block_on(c.stop_pod_sandbox(proto::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub fn remove_pod_sandbox(&self, id: &str) -> std::result::Result<(), tonic::Status> {
        let mut c = self.client.clone();
        self.rt
            .block_on(c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))?;
        self.sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s != id);
        Ok(())
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        let left: Vec<String> = self
            .sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for id in left {
            let _ = self.stop_pod_sandbox(&id);
            let _ = self.remove_pod_sandbox(&id);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims whose containerd is gone (a failed removal) hold sandboxes.
        let _ = Command::new("pkill")
            .args(["-9", "-f"])
            .arg(format!(
                "containerd-shim.*{}",
                self.dir.join("c.sock").display()
            ))
            .status();
    }
}
