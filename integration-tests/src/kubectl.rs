//! `kubectl` against the API test server, as an operator runs it: a
//! kubeconfig the server wrote, a throwaway `HOME` (kubectl caches discovery
//! there), stdin for manifests. For tests that check what kubectl says.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::apiserver::ApiServer;

/// One kubectl configuration (kubeconfig + HOME).
#[derive(Clone, Debug)]
pub struct Kubectl {
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    /// Whether `kubectl` runs on this machine (scripts/install-deps installs it).
    pub fn installed() -> bool {
        Command::new("kubectl")
            .arg("version")
            .arg("--client")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// kubectl for `server`, with its files in `dir`.
    pub fn for_server(server: &ApiServer, dir: &Path) -> std::io::Result<Self> {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig())?;
        Ok(Kubectl {
            kubeconfig,
            home: dir.to_path_buf(),
        })
    }

    /// Runs `kubectl ARGS` (with `stdin` piped in): success and
    /// stdout+stderr.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.home)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => return (false, format!("kubectl: {e}")),
        };
        if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
            // A kubectl that exits early closes the pipe; its output says why.
            let _ = i.write_all(text.as_bytes());
        }
        match child.wait_with_output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("kubectl: {e}")),
        }
    }

    /// [`Kubectl::run`] off the async runtime (the in-process API server
    /// must keep answering while kubectl waits).
    pub async fn run_async(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let (me, args, stdin) = (
            self.clone(),
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            stdin.map(str::to_string),
        );
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            me.run(&a, stdin.as_deref())
        })
        .await
        .unwrap_or_else(|e| (false, format!("kubectl thread: {e}")))
    }

    /// Waits (up to 5 s) until `kubectl get RESOURCE` works: a CRD's
    /// resource is served shortly after the CRD is created.
    pub async fn wait_served(&self, resource: &str) -> bool {
        for _ in 0..50 {
            if self.run_async(&["get", resource], None).await.0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}
