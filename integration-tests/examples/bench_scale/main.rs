//! Scale benchmark (not a test; needs root): ONE real `margay-node` as one
//! node of a simulated cluster of N nodes, M pods and K NetworkPolicies
//! held by the Kubernetes API test server.
//!
//! ```text
//! cargo build --release -p node-agent -p integration-tests --bins
//! cargo run --release -p integration-tests --example bench_scale -- \
//!     [--size small|medium|large|tiny|N/M/K]... [--churn-secs 30] [--rate 100]
//!     [--mesh-secs 10] [--ready-timeout 900] [--family v6|v4] [--keep-logs DIR]
//!     [--pod-source endpoints|pods] [--ipam-churn] [--node-churn R]
//! ```
//! `--pod-source` (default `endpoints`, the design of docs/scale.md §4) is
//! the agent's flag: with `endpoints` every simulated node's pods also
//! have their PodEndpoints (written by the loader as each node's agent
//! would, and patched with the Pod during the churn), and the agent
//! watches only its own node's Pods; `pods` is the cluster-wide Pod watch.
//! Sizes: tiny 20/200/20 (CI), small 100/3000/100 (default), medium
//! 1000/30000/1000, large 5000/150000/10000; several `--size` give one
//! table. For each size, in a fresh lab (one node, `n1`, and the ToR):
//!
//! 1. `margay-apiserver` in the ToR (no state file: nothing is persisted
//!    during the run) is loaded over its API with the cluster
//!    ([`objects`]): Nodes, Namespaces, Pods (created, then Running with
//!    their address, as the kubelet reports them), 10 NetworkPolicies per
//!    namespace, the IPPool and every node's IPAM blocks with the
//!    allocations of its pods. The node-to-node mesh is off (a cluster of
//!    this size peers with route reflectors or ToRs; the mesh is measured
//!    in step 5).
//! 2. `margay-node` starts in `n1` (real nftables and routes): wall time,
//!    CPU seconds and peak RSS (VmHWM) until its /readyz answers 200, the
//!    bytes the API server sent it (counted at the server per user,
//!    `/margay/traffic`), the nftables ruleset's size.
//! 3. Churn: `--rate` label changes per second cluster-wide on remote pods
//!    (tier web <-> cache) for `--churn-secs`. A change of a pod in a
//!    namespace whose web tier a policy of `n1`'s pods admits MUST change
//!    `n1`'s sets: its latency is from the PATCH to the first nftables netlink
//!    notification in `n1` carrying the pod's address. The agent's CPU and API bytes over the
//!    window per event. With `--ipam-churn` each event also writes a
//!    remote node's IPAM block (an allocation added or removed in turn, as
//!    a pod starting or stopping there), which every agent's block watch
//!    delivers: pod churn as a real cluster makes it, not labels alone.
//!    With `--node-churn R`, R remote Node status writes per second go
//!    along (kubelets' reports, to `/status` as `kubelet`: ~17/s at 5,000
//!    nodes with node leases), which every agent's Node watch delivers.
//!    Pods are labelled as a Deployment's are (one `pod-template-hash` per
//!    ReplicaSet); `--unique-pod-labels` gives every pod a label value of
//!    its own (a cluster of StatefulSets: no two pods share a label set).
//! 4. The benchmark fails (no table) if the agent never becomes ready, or
//!    if any such change does not reach nftables within 10 s.
//! 5. Mesh (`--mesh-secs`, 0 to skip): the mesh is switched on; time until
//!    the agent runs N-1 sessions, its RSS and CPU with them.
//!
//! Each figure is printed beside the goal of issue 17 for 5k/150k/10k (a
//! target, not an assertion). Pod addresses are IPv6 by default: the lab's
//! IPv4 pod range (a /16) cannot hold 150,000 pods.

mod breakdown;
mod load;
mod objects;
mod probe;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use integration_tests::apiserver::traffic::user_totals;
use integration_tests::k8s;
use integration_tests::lab::{self, Daemon, Lab, LabError, Netns};
use objects::{Family, Layout};
use probe::{NftCounts, ProcStats};

const AGENT_USER: &str = "system:serviceaccount:margay-system:margay-node";
const MB: f64 = 1024.0 * 1024.0;

struct Args {
    sizes: Vec<(usize, usize, usize)>,
    churn_secs: f64,
    rate: f64,
    mesh_secs: u64,
    ready_timeout: Duration,
    family: Family,
    keep_logs: Option<PathBuf>,
    log_level: String,
    breakdown: Option<usize>,
    /// `--pod-source` of the agent: true for `endpoints`.
    endpoints: bool,
    /// `--ipam-churn`: each churn event also writes a remote node's IPAM
    /// block (a pod starting or stopping there).
    ipam_churn: bool,
    /// `--node-churn R`: R Node status writes per second cluster-wide
    /// during the churn (kubelets' reports; ~17/s at 5,000 nodes).
    node_churn: f64,
    /// `--unique-pod-labels`: no two pods share a label set (every pod its
    /// own `pod-template-hash`), instead of a ReplicaSet's pods sharing one.
    unique_pod_labels: bool,
}

fn size(s: &str) -> Result<(usize, usize, usize)> {
    Ok(match s {
        "tiny" => (20, 200, 20),
        "small" => (100, 3_000, 100),
        "medium" => (1_000, 30_000, 1_000),
        "large" => (5_000, 150_000, 10_000),
        other => {
            let v: Vec<usize> = other
                .split('/')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| anyhow!("--size {other:?}: expected tiny|small|medium|large|N/M/K"))?;
            match v.as_slice() {
                [n, m, k] => (*n, *m, *k),
                _ => bail!("--size {other:?}: expected N/M/K"),
            }
        }
    })
}

/// What `--help` prints (the module doc has the details).
const USAGE: &str = "usage: bench_scale [--size tiny|small|medium|large|N/M/K]... [--churn-secs 30] [--rate 100]
    [--mesh-secs 10] [--ready-timeout 900] [--family v6|v4] [--keep-logs DIR] [--agent-log-level warn]
    [--breakdown N] [--pod-source endpoints|pods] [--ipam-churn] [--node-churn R] [--unique-pod-labels]
sizes: tiny 20/200/20, small 100/3000/100 (default), medium 1000/30000/1000, large 5000/150000/10000
(needs root; the other binaries are found next to this one: cargo build --release -p node-agent -p integration-tests --bins)";

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            sizes: Vec::new(),
            churn_secs: 30.0,
            rate: 100.0,
            mesh_secs: 10,
            ready_timeout: Duration::from_secs(900),
            family: Family::V6,
            keep_logs: None,
            log_level: "warn".into(),
            breakdown: None,
            endpoints: true,
            ipam_churn: false,
            node_churn: 0.0,
            unique_pod_labels: false,
        };
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("{flag} needs a value"))
            };
            let num = |v: String| -> Result<f64> {
                v.parse::<f64>()
                    .map_err(|_| anyhow!("{flag}: {v:?} is not a number"))
            };
            match flag.as_str() {
                "--size" | "--sizes" => {
                    for s in val()?.split(',') {
                        a.sizes.push(size(s)?);
                    }
                }
                "--churn-secs" => a.churn_secs = num(val()?)?,
                "--rate" => a.rate = num(val()?)?.max(1.0),
                "--mesh-secs" => a.mesh_secs = num(val()?)? as u64,
                "--ready-timeout" => a.ready_timeout = Duration::from_secs_f64(num(val()?)?),
                "--family" => {
                    a.family = match val()?.as_str() {
                        "v4" => Family::V4,
                        "v6" => Family::V6,
                        f => bail!("--family {f:?}: v4 or v6"),
                    }
                }
                "--keep-logs" => a.keep_logs = Some(PathBuf::from(val()?)),
                "--agent-log-level" => a.log_level = val()?,
                "--breakdown" => a.breakdown = Some(num(val()?)? as usize),
                "--ipam-churn" => a.ipam_churn = true,
                "--unique-pod-labels" => a.unique_pod_labels = true,
                "--node-churn" => a.node_churn = num(val()?)?.max(0.0),
                "--pod-source" => {
                    a.endpoints = match val()?.as_str() {
                        "endpoints" => true,
                        "pods" => false,
                        f => bail!("--pod-source {f:?}: endpoints or pods"),
                    }
                }
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown flag {other}\n{USAGE}"),
            }
        }
        if a.sizes.is_empty() {
            a.sizes.push(size("small")?);
        }
        Ok(a)
    }
}

/// What one size measured.
struct Row {
    layout: Layout,
    objects: usize,
    load_secs: f64,
    pod_bytes: usize,
    api_after_load: ProcStats,
    api_end: ProcStats,
    ready_secs: f64,
    ready: ProcStats,
    ready_bytes: u64,
    ready_by: BTreeMap<String, (u64, u64)>,
    nft: NftCounts,
    churn: Churn,
    after_churn: ProcStats,
    mesh: Option<Mesh>,
}

struct Churn {
    sent: usize,
    secs: f64,
    /// From the first to the last reading of CPU and bytes.
    window_secs: f64,
    observable: usize,
    lat_ms: Vec<f64>,
    cpu: f64,
    idle_cpu_per_sec: f64,
    bytes: u64,
    by: BTreeMap<String, (u64, u64)>,
    nft_txns: u64,
    nft_lines: u64,
    syncs: f64,
    sync_secs: f64,
}

struct Mesh {
    peers: usize,
    configure_secs: f64,
    rss_before: u64,
    rss_after: u64,
    cpu_cores: f64,
    secs: u64,
}

/// Starts `margay-apiserver` in the ToR without a state file.
fn start_apiserver(lab: &Lab) -> Result<Daemon> {
    let bin = lab::workspace_bin("margay-apiserver")?;
    let dir = lab.run_dir();
    let addr_file = dir.join("apiserver.addr");
    let s = |p: &std::path::Path| p.display().to_string();
    let argv = [
        s(&bin),
        "--listen".into(),
        format!("{}:{}", lab::TOR_IPV4, k8s::API_PORT),
        "--addr-file".into(),
        s(&addr_file),
        "--kubeconfig".into(),
        s(&k8s::kubeconfig_path(lab)),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
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

/// Bytes per "resource verb" (the two counters `user_totals` keeps per key).
type TrafficByKey = BTreeMap<String, (u64, u64)>;

/// The agent's traffic so far: (bytes per "resource verb", total bytes).
fn traffic(lab: &Lab) -> Result<(TrafficByKey, u64)> {
    let raw = k8s::with_client(lab.tor(), |c| async move {
        load::call(&c, "GET", "/margay/traffic", "application/json", Vec::new()).await
    })??;
    let v: serde_json::Value = serde_json::from_slice(&raw)?;
    Ok(user_totals(&v, AGENT_USER))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn run_size(a: &Args, (n, m, k): (usize, usize, usize)) -> Result<Row> {
    let lab = Lab::builder().nodes(1).build()?;
    let node_ip = lab.node(objects::LAB_NODE)?.ipv4;
    let mut layout = Layout::new(n, m, k, a.family, node_ip)?;
    layout.unique_pod_labels = a.unique_pod_labels;
    println!(
        "\n-- {n} nodes / {m} pods / {} policies in {} namespaces ({:?} pods, {} per node); lab {}",
        layout.policies,
        layout.namespaces,
        a.family,
        m.div_ceil(n),
        lab.prefix()
    );
    let api = start_apiserver(&lab)?;
    k8s::bootstrap(&lab, &[])?;
    k8s::agent_kubeconfig(&lab)?;

    // 1. Load.
    let t = Instant::now();
    let l2 = layout.clone();
    let endpoints = a.endpoints;
    let objects = k8s::with_client(lab.tor(), move |c| async move {
        load::load(&c, &l2, endpoints).await
    })??;
    let load_secs = t.elapsed().as_secs_f64();
    let first = layout.pod(0);
    let path = format!("/api/v1/namespaces/{}/pods/{}", first.namespace, first.name);
    let pod_bytes = k8s::with_client(lab.tor(), move |c| async move {
        load::call(&c, "GET", &path, "application/json", Vec::new()).await
    })??
    .len();
    let api_after_load = probe::proc_stats(api.pid())?;
    println!(
        "loaded {objects} objects in {load_secs:.1} s ({:.0}/s); a pod is {pod_bytes} bytes of JSON; API server RSS {:.0} MB",
        objects as f64 / load_secs,
        api_after_load.rss as f64 / MB
    );

    // 2. The agent, to ready.
    let node = Netns::existing(lab.node(objects::LAB_NODE)?.ns.name());
    let t0 = Instant::now();
    let source = if a.endpoints { "endpoints" } else { "pods" };
    let mut agent = k8s::spawn_agent(
        &lab,
        objects::LAB_NODE,
        &["--log-level", &a.log_level, "--pod-source", source],
    )?;
    let pid = agent.daemon.pid();
    let ready = probe::wait_ready(&node, t0, a.ready_timeout, move || alive(pid));
    let ready_secs = match ready {
        Ok(d) => d.as_secs_f64(),
        Err(e) => {
            keep_logs(a, &lab);
            return Err(e.context(format!("agent log: {}", agent.daemon.log_path().display())));
        }
    };
    let ready_stats = probe::proc_stats(pid)?;
    let (ready_by, ready_bytes) = traffic(&lab)?;
    let nft = probe::nft_counts(&node)?;
    println!(
        "agent ready in {ready_secs:.1} s, {:.1} CPU s, peak RSS {:.0} MB, {:.1} MB from the API; nft {} sets / {} elements, {} rules",
        ready_stats.cpu,
        ready_stats.hwm as f64 / MB,
        ready_bytes as f64 / MB,
        nft.sets + nft.maps,
        nft.elements,
        nft.rules
    );

    // 3. Churn, 5. mesh; the logs are kept (--keep-logs) also when they fail.
    let rest = (|| -> Result<_> {
        let churn = run_churn(a, &lab, &node, &layout, pid)?;
        let after_churn = probe::proc_stats(pid)?;
        let mesh = if a.mesh_secs > 0 && n > 1 {
            Some(run_mesh(a, &lab, &node, n, pid)?)
        } else {
            None
        };
        Ok((churn, after_churn, mesh))
    })();
    let (churn, after_churn, mesh) = match rest {
        Ok(r) => r,
        Err(e) => {
            keep_logs(a, &lab);
            return Err(e.context(format!("agent log: {}", agent.daemon.log_path().display())));
        }
    };
    let api_end = probe::proc_stats(api.pid())?;
    keep_logs(a, &lab);
    agent.daemon.stop(Duration::from_secs(5));
    drop(api);
    Ok(Row {
        layout,
        objects,
        load_secs,
        pod_bytes,
        api_after_load,
        api_end,
        ready_secs,
        ready: ready_stats,
        ready_bytes,
        ready_by,
        nft,
        churn,
        after_churn,
        mesh,
    })
}

fn keep_logs(a: &Args, lab: &Lab) {
    if let Some(dir) = &a.keep_logs {
        let _ = std::fs::create_dir_all(dir);
        for f in ["apiserver.log", "n1-agent.log"] {
            let _ = std::fs::copy(
                lab.run_dir().join(f),
                dir.join(format!("{}-{f}", lab.prefix())),
            );
        }
    }
}

fn sync_metrics(node: &Netns) -> (f64, f64) {
    let m = probe::agent_metrics(node).unwrap_or_default();
    (
        probe::metric(&m, "margay_policy_sync_seconds_count").unwrap_or(0.0),
        probe::metric(&m, "margay_policy_sync_seconds_sum").unwrap_or(0.0),
    )
}

fn run_churn(a: &Args, lab: &Lab, node: &Netns, l: &Layout, pid: i32) -> Result<Churn> {
    let mut targets = load::targets(l);
    // The agent idle, as the baseline of its CPU.
    let idle0 = probe::proc_stats(pid)?;
    std::thread::sleep(Duration::from_secs(3));
    let idle_cpu_per_sec = (probe::proc_stats(pid)?.cpu - idle0.cpu) / 3.0;
    let ips: Vec<_> = targets.iter().map(|t| t.pod.ip).collect();
    let monitor = probe::Monitor::start(node, &ips)?;
    let before = probe::proc_stats(pid)?;
    let (by0, bytes0) = traffic(lab)?;
    let window = Instant::now();
    let (syncs0, sync_s0) = sync_metrics(node);
    let (rate, secs, endpoints) = (a.rate, a.churn_secs, a.endpoints);
    let ipam = a.ipam_churn.then(|| load::IpamChurn::new(l));
    let nodes = (a.node_churn > 0.0).then(|| load::NodeChurn::new(l, a.node_churn, rate));
    let t = Instant::now();
    let sent = k8s::with_client(lab.tor(), move |c| async move {
        load::churn(&c, &mut targets, rate, secs, endpoints, ipam, nodes).await
    })??;
    let send_secs = t.elapsed().as_secs_f64();
    // Wait for every change that must show, up to 10 s after the last.
    let deadline = Instant::now() + Duration::from_secs(10);
    let next_same: Vec<Option<Instant>> = (0..sent.len())
        .map(|i| {
            sent[i + 1..]
                .iter()
                .find(|s| s.ip == sent[i].ip)
                .map(|s| s.at)
        })
        .collect();
    let mut lat_ms = Vec::new();
    let mut missing = Vec::new();
    for (i, s) in sent.iter().enumerate().filter(|(_, s)| s.observable) {
        loop {
            if let Some(seen) = monitor.first_seen(s.ip, s.at, next_same[i]) {
                lat_ms.push((seen - s.at).as_secs_f64() * 1e3);
                break;
            }
            if Instant::now() > deadline {
                missing.push(s.ip);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let after = probe::proc_stats(pid)?;
    let (by1, bytes1) = traffic(lab)?;
    let window_secs = window.elapsed().as_secs_f64();
    let (syncs1, sync_s1) = sync_metrics(node);
    let mc = monitor.counts();
    let (txns, lines) = (mc.transactions, mc.element_msgs);
    drop(monitor);
    let observable = sent.iter().filter(|s| s.observable).count();
    if observable == 0 {
        bail!(
            "no churned pod is one this node's policies select: no latency to measure (a bigger size?)"
        );
    }
    if mc.overflows > 0 {
        bail!(
            "the nftables listener dropped notifications {} times (socket buffer full): latencies would be missing",
            mc.overflows
        );
    }
    if !missing.is_empty() {
        bail!(
            "{} of {observable} label changes that this node's policies select never reached its nftables (within 10 s of the last change); first: {:?}; meanwhile the agent (alive: {}) used {:.1} CPU s, made {} policy syncs ({:.2} s), received {} bytes; the kernel announced {txns} nftables transactions, {lines} element messages",
            missing.len(),
            &missing[..missing.len().min(5)],
            alive(pid),
            after.cpu - before.cpu,
            syncs1 - syncs0,
            sync_s1 - sync_s0,
            bytes1 - bytes0,
        );
    }
    let by = by1
        .iter()
        .map(|(k, (b, f))| {
            let (b0, f0) = by0.get(k).copied().unwrap_or((0, 0));
            (k.clone(), (b - b0, f - f0))
        })
        .filter(|(_, (b, _))| *b > 0)
        .collect();
    Ok(Churn {
        sent: sent.len(),
        secs: send_secs,
        window_secs,
        observable,
        lat_ms,
        cpu: after.cpu - before.cpu,
        idle_cpu_per_sec,
        bytes: bytes1 - bytes0,
        by,
        nft_txns: txns,
        nft_lines: lines,
        syncs: syncs1 - syncs0,
        sync_secs: sync_s1 - sync_s0,
    })
}

fn run_mesh(a: &Args, lab: &Lab, node: &Netns, n: usize, pid: i32) -> Result<Mesh> {
    let before = probe::proc_stats(pid)?;
    k8s::with_client(lab.tor(), |c| async move {
        load::call(
            &c,
            "PATCH",
            "/apis/crd.margay.dev/v1/bgpconfigurations/default",
            "application/merge-patch+json",
            br#"{"spec":{"nodeToNodeMeshEnabled":true}}"#.to_vec(),
        )
        .await
    })??;
    let t = Instant::now();
    let want = n - 1;
    let peers = loop {
        let m = probe::agent_metrics(node).unwrap_or_default();
        let peers = probe::series_count(&m, "margay_bgp_session_established{");
        if peers >= want || t.elapsed() > Duration::from_secs(120) {
            break peers;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let configure_secs = t.elapsed().as_secs_f64();
    let c0 = probe::proc_stats(pid)?;
    std::thread::sleep(Duration::from_secs(a.mesh_secs));
    let c1 = probe::proc_stats(pid)?;
    if peers < want {
        bail!("mesh: the agent configured {peers} of {want} peers within 120 s");
    }
    Ok(Mesh {
        peers,
        configure_secs,
        rss_before: before.rss,
        rss_after: c1.rss,
        cpu_cores: (c1.cpu - c0.cpu) / a.mesh_secs as f64,
        secs: a.mesh_secs,
    })
}

fn main() -> Result<()> {
    let a = Args::parse()?;
    if let Some(pods) = a.breakdown {
        return breakdown::run(pods.max(1));
    }
    lab::can_run().map_err(|why| anyhow!("cannot run: {why}"))?;
    if cfg!(debug_assertions) {
        println!("debug build: the figures mean nothing (use --release)");
    }
    let mut rows = Vec::new();
    for s in a.sizes.clone() {
        rows.push(run_size(&a, s).with_context(|| format!("size {}/{}/{}", s.0, s.1, s.2))?);
    }
    report::print(&a, &rows);
    Ok(())
}

mod report;
