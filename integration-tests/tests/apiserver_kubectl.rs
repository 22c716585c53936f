//! kubectl against the API test server: kubectl 1.32 (the machine's
//! `/usr/bin/kubectl`) and kubectl 1.20 (Debian's `kubernetes-client`,
//! fetched with `apt-get download` and unpacked into a temp dir, never
//! installed). Each run gets its own kubeconfig, cache and HOME.

mod apiserver_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use apiserver_support::{bounded, client, eventually, start};
use integration_tests::apiserver::ApiServer;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// One kubectl binary with a private kubeconfig, cache and HOME.
struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

const PER_COMMAND: Duration = Duration::from_secs(60);

impl Kubectl {
    fn new(bin: PathBuf, server: &ApiServer) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig()).expect("kubeconfig");
        Kubectl { bin, dir }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("cache").display()
            ))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs to completion; (success, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(PER_COMMAND, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs and insists on success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }

    fn file(&self, name: &str, content: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write manifest");
        p.display().to_string()
    }
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: demo\n  labels: {app: web}\nspec:\n  containers:\n  - {name: c, image: busybox}\n";
const NETPOL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-web, namespace: demo}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n";
const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.margay.dev}
spec:
  group: test.margay.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
"#;
const WIDGET: &str = "apiVersion: test.margay.dev/v1\nkind: Widget\nmetadata: {name: w1, namespace: demo}\nspec: {size: 3}\n";

fn app(a: &str, b: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: demo\nspec:\n  containers:\n  - {{name: a, image: \"{a}\"}}\n  - {{name: b, image: \"{b}\"}}\n"
    )
}

fn images(p: &Pod) -> Vec<String> {
    p.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .filter_map(|c| c.image.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The scenario every kubectl version must pass.
async fn scenario(k: &Kubectl, server: &ApiServer) {
    let c = client(server);
    let v: Value =
        serde_json::from_str(&k.ok(&["version", "-o", "json"]).await).expect("version json");
    println!(
        "kubectl {} against {}",
        v["clientVersion"]["gitVersion"], v["serverVersion"]["gitVersion"]
    );
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.32.0-margay");

    // Create: a namespace (protobuf body), a pod, a network policy, a CRD and one object of it.
    assert!(
        k.ok(&["create", "namespace", "demo"])
            .await
            .contains("namespace/demo created")
    );
    for (name, content) in [
        ("pod.yaml", POD),
        ("np.yaml", NETPOL),
        ("crd.yaml", CRD),
        ("w.yaml", WIDGET),
    ] {
        let f = k.file(name, content);
        let out = k.ok(&["create", "--validate=false", "-f", &f]).await;
        assert!(out.contains("created"), "{out}");
    }
    let (ok, _, err) = k
        .run(&["create", "--validate=false", "-f", &k.file("pod.yaml", POD)])
        .await;
    assert!(!ok && err.contains("AlreadyExists"), "{err}");
    let ns: Api<Namespace> = Api::all(c.clone());
    assert!(ns.get_opt("demo").await.expect("get").is_some());
    let pods: Api<Pod> = Api::namespaced(c.clone(), "demo");
    assert!(pods.get_opt("web").await.expect("get").is_some());
    let nps: Api<NetworkPolicy> = Api::namespaced(c.clone(), "demo");
    assert!(nps.get_opt("deny-web").await.expect("get").is_some());

    // Get / list, as JSON and as tables.
    let list: Value =
        serde_json::from_str(&k.ok(&["get", "pods", "-n", "demo", "-o", "json"]).await)
            .expect("json");
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    let one: Value = serde_json::from_str(
        &k.ok(&["get", "pod", "web", "-n", "demo", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(one["status"]["phase"], "Pending");
    let table = k.ok(&["get", "pods", "-n", "demo"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("Pending")),
        "{table}"
    );
    let table = k.ok(&["get", "networkpolicies", "-n", "demo"]).await;
    assert!(
        table.contains("POD-SELECTOR") && table.contains("app=web"),
        "{table}"
    );
    let table = k.ok(&["get", "widgets", "-n", "demo"]).await;
    assert!(
        table.contains("SIZE")
            && table
                .lines()
                .any(|l| l.starts_with("w1 ") && l.contains('3')),
        "{table}"
    );
    assert!(
        k.ok(&["get", "wd", "-n", "demo", "-o", "name"])
            .await
            .contains("widget.test.margay.dev/w1")
    );
    assert!(
        k.ok(&["get", "crd"])
            .await
            .contains("widgets.test.margay.dev")
    );
    assert!(
        k.ok(&["get", "pods", "-A", "-l", "app=web", "-o", "name"])
            .await
            .contains("pod/web")
    );

    // apply: create, then update the same object; server dry run changes nothing.
    let f = k.file("app.yaml", &app("a:1", "b:1"));
    assert!(
        k.ok(&["apply", "--validate=false", "-f", &f])
            .await
            .contains("pod/app created")
    );
    let f = k.file("app.yaml", &app("a:1", "b:2"));
    assert!(
        k.ok(&["apply", "--validate=false", "-f", &f])
            .await
            .contains("pod/app configured")
    );
    assert_eq!(images(&pods.get("app").await.expect("get")), ["a:1", "b:2"]);
    let f = k.file("app.yaml", &app("a:9", "b:9"));
    let out = k
        .ok(&["apply", "--validate=false", "--dry-run=server", "-f", &f])
        .await;
    assert!(out.contains("server dry run"), "{out}");
    assert_eq!(
        images(&pods.get("app").await.expect("get")),
        ["a:1", "b:2"],
        "dry run persisted nothing"
    );
    let out = k
        .ok(&[
            "apply",
            "--validate=false",
            "--dry-run=server",
            "-f",
            &k.file("np.yaml", NETPOL),
        ])
        .await;
    assert!(out.contains("server dry run"), "{out}");
    assert!(
        k.ok(&[
            "apply",
            "--validate=false",
            "-f",
            &k.file("w.yaml", &WIDGET.replace("size: 3", "size: 5"))
        ])
        .await
        .contains("configured")
    );
    let w: Value = serde_json::from_str(
        &k.ok(&["get", "widget", "w1", "-n", "demo", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(w["spec"]["size"], 5);
    assert!(
        k.ok(&["label", "pod", "web", "-n", "demo", "tier=fe"])
            .await
            .contains("labeled")
    );

    // get --watch sees an ADDED object, within a bounded time.
    let mut watch = k
        .command(&[
            "get",
            "pods",
            "-n",
            "demo",
            "--watch",
            "--output-watch-events",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    bounded("kubectl watch initial list", async {
        while let Ok(Some(l)) = lines.next_line().await {
            let has_web = l.contains("web");
            seen.push(l);
            if has_web {
                break;
            }
        }
    })
    .await;
    let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "watched"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).expect("pod");
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create watched");
    bounded("kubectl watch sees the new pod", async {
        while let Ok(Some(l)) = lines.next_line().await {
            let hit = l.contains("watched");
            seen.push(l);
            if hit {
                return;
            }
        }
        panic!("watch ended early: {seen:?}");
    })
    .await;
    assert!(
        seen.iter()
            .any(|l| l.contains("ADDED") && l.contains("watched")),
        "{seen:?}"
    );
    let _ = watch.kill().await;

    // Delete them all.
    assert!(
        k.ok(&["delete", "pod", "web", "-n", "demo"])
            .await
            .contains("pod \"web\" deleted")
    );
    assert!(
        k.ok(&["delete", "-f", &k.file("w.yaml", WIDGET)])
            .await
            .contains("deleted")
    );
    assert!(
        k.ok(&["delete", "networkpolicy", "deny-web", "-n", "demo"])
            .await
            .contains("deleted")
    );
    assert!(
        k.ok(&["delete", "crd", "widgets.test.margay.dev"])
            .await
            .contains("deleted")
    );
    assert!(
        k.ok(&["delete", "namespace", "demo"])
            .await
            .contains("deleted")
    );
    eventually("demo is gone with its pods", || async {
        ns.get_opt("demo").await.ok().flatten().is_none()
            && Api::<Pod>::all(c.clone())
                .list(&ListParams::default())
                .await
                .is_ok_and(|l| l.items.is_empty())
    })
    .await;
    let (ok, _, err) = k.run(&["get", "widgets", "-A"]).await;
    assert!(!ok, "widgets are no longer served: {err}");
}

#[tokio::test]
async fn kubectl_1_32() {
    let bin = PathBuf::from("/usr/bin/kubectl");
    if !bin.exists() {
        integration_tests::lab::skip(
            "/usr/bin/kubectl is not installed (scripts/install-deps installs it)",
        );
        return;
    }
    let server = start().await;
    let k = Kubectl::new(bin, &server);
    scenario(&k, &server).await;
    server.shutdown().await.expect("shutdown");
}

/// Downloads Debian's kubernetes-client into `dir` and unpacks it; the path
/// of its kubectl, or why not.
async fn fetch_kubectl_1_20(dir: &Path) -> Result<PathBuf, String> {
    let run = |prog: &str, args: Vec<String>| {
        let mut c = tokio::process::Command::new(prog);
        c.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    };
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        run(
            "apt-get",
            vec!["download".into(), "kubernetes-client".into()],
        )
        .output(),
    )
    .await
    .map_err(|_| "apt-get download timed out".to_string())?
    .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "apt-get download kubernetes-client failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let deb = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("no .deb downloaded")?;
    let x = dir.join("x");
    let out = run(
        "dpkg",
        vec![
            "-x".into(),
            deb.display().to_string(),
            x.display().to_string(),
        ],
    )
    .output()
    .await
    .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "dpkg -x failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let bin = x.join("usr/bin/kubectl");
    if bin.exists() {
        Ok(bin)
    } else {
        Err("the package has no usr/bin/kubectl".into())
    }
}

#[tokio::test]
async fn kubectl_1_20() {
    let dl = tempfile::tempdir().expect("tempdir");
    let bin = match fetch_kubectl_1_20(dl.path()).await {
        Ok(b) => b,
        Err(why) => {
            integration_tests::lab::skip(&format!("kubectl 1.20 unavailable: {why}"));
            return;
        }
    };
    let server = start().await;
    let k = Kubectl::new(bin, &server);
    let client_version = k.ok(&["version", "--client", "--short"]).await;
    assert!(client_version.contains("v1.20"), "{client_version}");
    scenario(&k, &server).await;
    server.shutdown().await.expect("shutdown");
}
