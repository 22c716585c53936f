//! Kubernetes in the lab: the API test server in the ToR namespace
//! (198.18.0.1:6443, reachable from every node), a client for it from a
//! thread inside that namespace, Margay's CRDs, Node objects, and
//! `margay-node` agents running in node namespaces.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use serde::Deserialize as _;

use crate::lab::{self, Daemon, Lab, LabError, Netns, Result, TOR_IPV4};

/// The agent's health endpoint as seen from inside its node's namespace
/// (the shipped default: loopback, port 9647).
pub const AGENT_HEALTH: &str = "http://127.0.0.1:9647";

/// Port of the lab's API server.
pub const API_PORT: u16 = 6443;

/// The lab's API server URL (as nodes and the ToR see it).
pub fn api_url() -> String {
    format!("https://{TOR_IPV4}:{API_PORT}")
}

/// Starts `margay-apiserver` in the ToR namespace, state in
/// `<run_dir>/apiserver.json` (kept across restarts of the process), a
/// kubeconfig in `<run_dir>/kubeconfig`. Returns when it accepts connections.
pub fn start_apiserver(lab: &Lab) -> Result<Daemon> {
    start_apiserver_with(lab, &[])
}

/// [`start_apiserver`] with more `margay-apiserver` flags (e.g.
/// `--latency-ms 3 --watch-delay-ms 2` for a real server's latencies).
pub fn start_apiserver_with(lab: &Lab, extra: &[&str]) -> Result<Daemon> {
    let bin = lab::workspace_bin("margay-apiserver")?;
    let dir = lab.run_dir();
    let addr_file = dir.join("apiserver.addr");
    let _ = std::fs::remove_file(&addr_file);
    let args = [
        path_str(&bin)?.to_string(),
        "--listen".into(),
        format!("{TOR_IPV4}:{API_PORT}"),
        "--state".into(),
        path_str(&dir.join("apiserver.json"))?.to_string(),
        "--addr-file".into(),
        path_str(&addr_file)?.to_string(),
        "--kubeconfig".into(),
        path_str(&kubeconfig_path(lab))?.to_string(),
    ];
    let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
    argv.extend_from_slice(extra);
    let mut d = Daemon::spawn(lab.tor(), "apiserver", &argv, &dir.join("apiserver.log"))?;
    lab::wait_for("API server listening", Duration::from_secs(20), || {
        if !d.is_running() {
            return Err(LabError::Invalid(format!(
                "margay-apiserver exited: {}",
                d.log()
            )));
        }
        Ok(addr_file.exists().then_some(()))
    })?;
    Ok(d)
}

/// Where [`start_apiserver`] writes the kubeconfig.
pub fn kubeconfig_path(lab: &Lab) -> PathBuf {
    lab.run_dir().join("kubeconfig")
}

/// Runs `f(client)` on a current-thread runtime in a thread that entered
/// `ns` (so its connections to the API server originate there).
pub fn with_client<F, Fut, R>(ns: &Netns, f: F) -> Result<R>
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: Future<Output = R>,
    R: Send + 'static,
{
    ns.enter(move || -> Result<R> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::io("tokio runtime", e))?;
        rt.block_on(async move {
            let uri = api_url()
                .parse::<http::Uri>()
                .map_err(|e| LabError::Invalid(e.to_string()))?;
            let client = Client::try_from(crate::apiserver::insecure_admin_config(uri))
                .map_err(|e| LabError::Invalid(format!("kube client: {e}")))?;
            Ok(f(client).await)
        })
    })?
}

/// Every IPAM allocation on the lab's API server: (handle, address).
pub fn allocations(lab: &Lab) -> Result<Vec<(String, IpAddr)>> {
    with_client(lab.tor(), |c| async move {
        Api::<node_agent::k8s::crd::IPAMBlock>::all(c)
            .list(&Default::default())
            .await
            .map(|blocks| {
                blocks
                    .items
                    .into_iter()
                    .flat_map(|b| {
                        let spec = b.spec.0;
                        spec.allocations
                            .iter()
                            .filter_map(|a| Some((a.handle.clone(), spec.ip_of(a.ordinal)?)))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            })
    })?
    .map_err(|e| LabError::Invalid(format!("listing IPAM blocks: {e}")))
}

/// The handles of every IPAM allocation on the lab's API server.
pub fn handles(lab: &Lab) -> Result<Vec<String>> {
    Ok(allocations(lab)?.into_iter().map(|(h, _)| h).collect())
}

/// Creates Margay's CRDs and waits until their resources are served.
pub async fn install_crds(client: &Client) -> std::result::Result<(), kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in node_agent::k8s::crd::all() {
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    // Served when a list of each works (the last error is returned).
    let mut last = Ok(());
    for _ in 0..100 {
        last = served(client).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

async fn served(client: &Client) -> std::result::Result<(), kube::Error> {
    use node_agent::k8s::crd::{BGPConfiguration, BGPPeer, IPAMBlock, IPPool};
    let lp = kube::api::ListParams::default();
    Api::<IPPool>::all(client.clone()).list(&lp).await?;
    Api::<IPAMBlock>::all(client.clone()).list(&lp).await?;
    Api::<BGPConfiguration>::all(client.clone())
        .list(&lp)
        .await?;
    Api::<BGPPeer>::all(client.clone()).list(&lp).await?;
    Ok(())
}

/// Creates (or keeps) a Node object with an InternalIP and labels.
pub async fn create_node(
    client: &Client,
    name: &str,
    internal_ip: IpAddr,
    labels: &[(&str, &str)],
) -> std::result::Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .chain([("kubernetes.io/hostname".to_string(), name.to_string())])
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: internal_ip.to_string(),
            }]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    };
    match api.create(&PostParams::default(), &node).await {
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await,
        other => other,
    }
}

/// An agent (`margay-node`) running in a lab node.
pub struct Agent {
    /// The process.
    pub daemon: Daemon,
    /// Its CNI socket.
    pub socket: PathBuf,
    /// Node name.
    pub node: String,
    /// Its state directory (`--state-dir`): endpoint records, and the CNI
    /// release journal in `cni-journal/`.
    pub state_dir: PathBuf,
}

impl Agent {
    /// Where the CNI plugin journals releases for this agent.
    pub fn journal_dir(&self) -> PathBuf {
        self.state_dir.join("cni-journal")
    }
}

/// Starts `margay-node` in `node`'s namespace against the lab API server,
/// with its socket at `<run_dir>/<node>.sock`; returns once the socket
/// exists (IPAM is up). `extra` flags are appended.
pub fn start_agent(lab: &Lab, node: &str, extra: &[&str]) -> Result<Agent> {
    let mut agent = spawn_agent(lab, node, extra)?;
    let socket = agent.socket.clone();
    lab::wait_for(
        &format!("margay-node on {node}"),
        Duration::from_secs(30),
        || {
            if !agent.daemon.is_running() {
                return Err(LabError::Invalid(format!(
                    "margay-node exited:\n{}",
                    agent.daemon.log()
                )));
            }
            Ok(socket.exists().then_some(()))
        },
    )?;
    Ok(agent)
}

/// [`start_agent`] without waiting for anything: returns as soon as the
/// process runs (benchmarks time its start-up themselves).
pub fn spawn_agent(lab: &Lab, node: &str, extra: &[&str]) -> Result<Agent> {
    let n = lab.node(node)?;
    let bin = lab::workspace_bin("margay-node")?;
    let socket = lab.run_dir().join(format!("{node}.sock"));
    let _ = std::fs::remove_file(&socket);
    let state_dir = lab.run_dir().join(format!("{node}-state"));
    let kubeconfig = agent_kubeconfig(lab)?;
    let mut args: Vec<String> = vec![
        path_str(&bin)?.into(),
        "--node-name".into(),
        node.into(),
        // Its own identity only: the ServiceAccount of deploy/margay.yaml.
        "--kubeconfig".into(),
        path_str(&kubeconfig)?.into(),
        "--socket".into(),
        path_str(&socket)?.into(),
        "--ip-autodetection".into(),
        "interface=eth0".into(),
        "--ip6-autodetection".into(),
        "interface=eth0".into(),
        "--startup-grace".into(),
        "10s".into(),
        "--state-dir".into(),
        path_str(&state_dir)?.into(),
    ];
    // Debug logs by default (they are the test's record), unless the caller
    // chooses a level.
    if !extra.contains(&"--log-level") {
        args.extend([
            "--log-level".into(),
            "info,margay=debug,node_agent=debug".into(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = lab.run_dir().join(format!("{node}-agent.log"));
    let mut cmd = n.ns.command(argv[0]);
    cmd.args(&argv[1..]).envs(shipped_agent_env()?);
    let daemon = Daemon::spawn_command(cmd, &format!("{node}-agent"), &log)?;
    Ok(Agent {
        daemon,
        socket,
        node: node.to_string(),
        state_dir,
    })
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| LabError::Invalid(format!("non-UTF-8 path {}", p.display())))
}

/// Margay's CRDs, a Node object for every lab node (InternalIP = its
/// underlay address) and the given pools `(name, cidr)`.
pub fn bootstrap(lab: &Lab, pools: &[(&str, &str)]) -> Result<()> {
    let nodes: Vec<(String, IpAddr)> = lab
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), IpAddr::V4(n.ipv4)))
        .collect();
    let pools: Vec<(String, String)> = pools
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect();
    with_client(lab.tor(), move |c| async move {
        install_crds(&c).await?;
        for (name, ip) in &nodes {
            create_node(&c, name, *ip, &[]).await?;
        }
        let api: Api<node_agent::k8s::crd::IPPool> = Api::all(c.clone());
        for (name, cidr) in &pools {
            let pool = node_agent::k8s::crd::IPPool::new(
                name,
                node_agent::k8s::crd::IPPoolSpec {
                    cidr: node_agent::k8s::crd::Cidr(cidr.clone()),
                    block_size: None,
                    node_selector: None,
                    disabled: false,
                    allowed_uses: vec![],
                    disable_bgp_export: false,
                    nat_outgoing: None,
                    vxlan_mode: None,
                },
            );
            match api.create(&PostParams::default(), &pool).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })?
    .map_err(|e| LabError::Invalid(format!("bootstrapping the cluster: {e}")))
}

/// The shipped manifest of the agent (`deploy/margay.yaml`).
pub fn deploy_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/margay.yaml")
}

/// The environment the shipped DaemonSet (`deploy/margay.yaml`) gives the
/// `margay-node` container as literal values (`value:`; those taken from
/// the API, `valueFrom:`, are the agent's flags here): the lab's agents run
/// with it, so tests and benchmarks see the process a cluster runs.
pub fn shipped_agent_env() -> Result<Vec<(String, String)>> {
    let agent = shipped_manifest()?.into_iter().find_map(|v| {
        if v.get("kind").and_then(serde_json::Value::as_str) != Some("DaemonSet") {
            return None;
        }
        v.pointer("/spec/template/spec/containers")?
            .as_array()?
            .iter()
            .find(|c| c.get("name").and_then(serde_json::Value::as_str) == Some("margay-node"))
            .cloned()
    });
    let Some(agent) = agent else {
        return Err(LabError::Invalid(format!(
            "{}: no DaemonSet with a margay-node container",
            deploy_manifest().display()
        )));
    };
    Ok(agent
        .get("env")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.get("name")?.as_str()?;
            let value = e.get("value")?.as_str()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect())
}

/// The `margay` plugin's entry of the conflist the shipped ConfigMap
/// (`cni_network_config` in `deploy/margay.yaml`) has install-cni write.
pub fn shipped_plugin_conf() -> Result<serde_json::Value> {
    let path = deploy_manifest();
    let conflist = shipped_manifest()?
        .into_iter()
        .find_map(|v| {
            if v.get("kind").and_then(serde_json::Value::as_str) != Some("ConfigMap") {
                return None;
            }
            v.pointer("/data/cni_network_config")?
                .as_str()
                .map(str::to_string)
        })
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "{}: no ConfigMap with cni_network_config",
                path.display()
            ))
        })?;
    let conflist: serde_json::Value = serde_json::from_str(&conflist)
        .map_err(|e| LabError::Invalid(format!("{}: cni_network_config: {e}", path.display())))?;
    conflist
        .get("plugins")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("type").and_then(serde_json::Value::as_str) == Some("margay"))
        .cloned()
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "{}: cni_network_config has no margay plugin",
                path.display()
            ))
        })
}

/// Every document of `deploy/margay.yaml`, as JSON values.
fn shipped_manifest() -> Result<Vec<serde_json::Value>> {
    let path = deploy_manifest();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            serde_json::Value::deserialize(doc)
                .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))
        })
        .collect()
}

/// The objects of `deploy/margay.yaml`, as shipped, that make up the
/// agent's identity: its Namespace, ServiceAccount, (Cluster)Roles and
/// (Cluster)RoleBindings.
pub fn agent_identity_objects() -> Result<Vec<serde_json::Value>> {
    Ok(shipped_manifest()?
        .into_iter()
        .filter(|v| {
            matches!(
                v.get("kind").and_then(serde_json::Value::as_str),
                Some(
                    "Namespace"
                        | "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .collect())
}

/// Creates (or replaces) an object of a built-in kind whose plural is its
/// lower-cased kind + "s" (Namespace, ServiceAccount, the RBAC kinds),
/// namespaced or not.
pub async fn apply_object(
    client: &Client,
    obj: &serde_json::Value,
) -> std::result::Result<(), kube::Error> {
    use kube::api::{ApiResource, DynamicObject};
    let s = |k: &str| {
        obj.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (s("apiVersion"), s("kind"));
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.clone()),
    };
    let plural = format!("{}s", kind.to_lowercase());
    let ar = ApiResource {
        group,
        version,
        api_version,
        kind,
        plural,
    };
    let typed: DynamicObject =
        serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
    let api: Api<DynamicObject> = match typed.metadata.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let name = typed.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), &typed).await {
        Err(kube::Error::Api(st)) if st.code == 409 => {
            let cur = api.get(&name).await?;
            let mut next = typed;
            next.metadata.resource_version = cur.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &next).await?;
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// A token for ServiceAccount `namespace/name` from the TokenRequest API.
pub async fn service_account_token(
    client: &Client,
    namespace: &str,
    name: &str,
    seconds: u64,
) -> std::result::Result<String, kube::Error> {
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": seconds},
    });
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?)
    .map_err(kube::Error::HttpError)?;
    let out: serde_json::Value = client.request(req).await?;
    Ok(out
        .pointer("/status/token")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string())
}

/// The agent's identity in this lab, as an operator would set it up: the
/// RBAC of `deploy/margay.yaml` applied as shipped, and a kubeconfig
/// (`<run_dir>/margay-node.kubeconfig`) carrying a token of the
/// `margay-system/margay-node` ServiceAccount. Made once per lab.
pub fn agent_kubeconfig(lab: &Lab) -> Result<PathBuf> {
    let path = lab.run_dir().join("margay-node.kubeconfig");
    if path.exists() {
        return Ok(path);
    }
    let objects = agent_identity_objects()?;
    let token = with_client(lab.tor(), move |c| async move {
        for o in &objects {
            apply_object(&c, o).await?;
        }
        service_account_token(&c, "margay-system", "margay-node", 30 * 86_400).await
    })?
    .map_err(|e| LabError::Invalid(format!("the agent's identity from deploy/margay.yaml: {e}")))?;
    // The cluster's CA, from the admin kubeconfig the server wrote.
    let admin = std::fs::read_to_string(kubeconfig_path(lab))
        .map_err(|e| LabError::io("reading the admin kubeconfig", e))?;
    let (_, ca) = crate::apiserver::kubeconfig_cluster(&admin)
        .ok_or_else(|| LabError::Invalid("the admin kubeconfig names no CA".into()))?;
    std::fs::write(&path, crate::apiserver::kubeconfig(&api_url(), &ca, &token))
        .map_err(|e| LabError::io("writing the agent's kubeconfig", e))?;
    Ok(path)
}

/// Creates (or replaces) a cluster object from JSON in the lab API server.
pub async fn apply_json<K>(
    client: &Client,
    obj: serde_json::Value,
) -> std::result::Result<K, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
    K::DynamicType: Default,
{
    let typed: K = serde_json::from_value(obj).map_err(kube::Error::SerdeError)?;
    let api: Api<K> = Api::all(client.clone());
    match api.create(&PostParams::default(), &typed).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let name = typed.meta().name.clone().unwrap_or_default();
            let mut cur = api.get(&name).await?;
            let rv = cur.meta().resource_version.clone();
            cur = typed;
            cur.meta_mut().resource_version = rv;
            api.replace(&name, &PostParams::default(), &cur).await
        }
        other => other,
    }
}

/// Creates the Namespace (if missing) and a Pod bound to `node`, as the
/// scheduler and kubelet would before the runtime calls the CNI plugin.
/// `ports` are container ports `(name, port, protocol)`.
pub async fn create_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    ports: &[(&str, u16, &str)],
) -> std::result::Result<k8s_openapi::api::core::v1::Pod, kube::Error> {
    use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec};
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match nss.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            containers: vec![Container {
                name: "main".into(),
                image: Some("busybox".into()),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .iter()
                        .map(|(n, p, proto)| ContainerPort {
                            name: Some(n.to_string()),
                            container_port: i32::from(*p),
                            protocol: Some(proto.to_string()),
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &pod).await {
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await,
        other => other,
    }
}
