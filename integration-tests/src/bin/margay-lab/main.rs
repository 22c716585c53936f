//! `margay-lab`: Margay on one machine, in network namespaces.
//!
//! ```text
//! margay-lab up [--nodes 3] [--pods 2]   API server + BIRD ToR + margay-node on every node,
//!                                        pods made by the real CNI, policy demo
//! margay-lab status                      agents' BGP status, ToR routes, reachability
//! margay-lab kubectl get pods -A         kubectl against the lab's API server
//! margay-lab margayctl n1 node status    margayctl on a node
//! margay-lab exec n1 -- ip route         any command in tor, a node, or a pod
//! margay-lab down                        remove everything (also after a crash)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use integration_tests::cni;
use integration_tests::k8s;
use integration_tests::kubelet;
use integration_tests::lab::{self, Lab, Netns, Probe, Proto, TorBgp, probe_many, tor_bird_config};
use serde::{Deserialize, Serialize};

mod report;
use report::{print_matrix, status};

const DEFAULT_PREFIX: &str = "mglab";
const RUN_ROOT: &str = "/run/margay-lab";
/// The ToR's MD5 password: the one `deploy/examples/bgppeer.yaml` puts in
/// its Secret, so the lab runs the example as shipped.
const TOR_PASSWORD: &str = "change-me";

#[derive(Parser)]
#[command(version, about = "Margay's network-namespace lab")]
struct Cli {
    /// Namespace prefix of the lab.
    #[arg(long, global = true, default_value = DEFAULT_PREFIX)]
    prefix: String,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The lab's underlay (`up --topology`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Topology {
    /// One subnet.
    Flat,
    /// The last node behind the ToR in a second subnet; pools in CrossSubnet.
    CrossSubnet,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring the lab up: API server, BIRD ToR, margay-node on every node,
    /// pods through the CNI, a policy demo; print how to look around.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node (alternately role=server and role=client).
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Repository root (for deploy/ manifests).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Run each node's agent as the DaemonSet of deploy/margay.yaml says,
        /// from this image (built by scripts/image), with a kubelet
        /// stand-in; pods are made through the conflist its init container
        /// wrote. Without it, the agents are started as processes.
        #[arg(long)]
        image: Option<String>,
        /// `flat`: every node on the ToR's subnet. `cross-subnet`: the last
        /// node in a second underlay subnet, one routed hop away, and the
        /// pools in `vxlanMode: CrossSubnet` (VXLAN to it, plain routes
        /// between the others).
        #[arg(long, value_enum, default_value_t = Topology::Flat)]
        topology: Topology,
    },
    /// Remove the lab: kill its processes, delete its namespaces and state.
    Down,
    /// Agents' BGP status, the ToR's routes and the reachability matrix.
    Status,
    /// Run kubectl against the lab's API server.
    Kubectl {
        /// kubectl arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run margayctl on a node (its agent and the lab's API server).
    Margayctl {
        /// Node (n1, n2, ...).
        node: String,
        /// margayctl arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command in `tor`, a node (`n1`) or a pod (`demo/n1-a` or `n1-a`).
    Exec {
        /// Where.
        target: String,
        /// The command.
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
    /// (internal) Probe server: answer TCP connections and UDP datagrams.
    Serve {
        /// Name to answer with.
        #[arg(long)]
        name: String,
        /// TCP ports.
        #[arg(long)]
        tcp: Vec<u16>,
        /// UDP ports.
        #[arg(long)]
        udp: Vec<u16>,
        /// File to create once all ports are bound.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Probe ADDR:PORT from the current namespace; exit 0 if it answered.
    Probe {
        /// Target.
        to: SocketAddr,
        /// udp instead of tcp.
        #[arg(long)]
        udp: bool,
        /// Timeout in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

/// What `up` leaves for the other commands.
#[derive(Serialize, Deserialize)]
struct State {
    prefix: String,
    run_dir: PathBuf,
    tor_ns: String,
    bird_ctl: PathBuf,
    kubeconfig: PathBuf,
    api_url: String,
    nodes: Vec<NodeState>,
    pods: Vec<PodState>,
}

#[derive(Serialize, Deserialize)]
struct NodeState {
    name: String,
    ns: String,
    ipv4: String,
    ipv6: String,
    agent_url: String,
    socket: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct PodState {
    namespace: String,
    name: String,
    node: String,
    role: String,
    ns: String,
    ipv4: String,
    ipv6: String,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("margay-lab: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            name,
            tcp,
            udp,
            ready_file,
        } => Ok(lab::probe::serve(&name, &tcp, &udp, ready_file.as_deref())?),
        Cmd::Probe {
            to,
            udp,
            timeout_ms,
        } => {
            let proto = if udp { Proto::Udp } else { Proto::Tcp };
            let o = lab::probe::probe_here(to, proto, Duration::from_millis(timeout_ms));
            println!("{o:?}");
            if o.reached() {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Cmd::Up {
            nodes,
            pods,
            repo,
            image,
            topology,
        } => up(&cli.prefix, nodes, pods, &repo, image.as_deref(), topology),
        Cmd::Down => down(&cli.prefix),
        Cmd::Status => status(&load_state(&cli.prefix)?),
        Cmd::Kubectl { args } => {
            let st = load_state(&cli.prefix)?;
            passthrough(&st.tor_ns, "kubectl", &kubectl_args(&st, &args))
        }
        Cmd::Margayctl { node, args } => {
            let st = load_state(&cli.prefix)?;
            let n = st
                .nodes
                .iter()
                .find(|n| n.name == node)
                .with_context(|| format!("no node {node} in the lab"))?;
            let bin = lab::workspace_bin("margayctl")?;
            let mut a = vec![
                "--agent".to_string(),
                n.agent_url.clone(),
                "--kubeconfig".to_string(),
                st.kubeconfig.display().to_string(),
            ];
            a.extend(args);
            passthrough(&n.ns, path_str(&bin)?, &a)
        }
        Cmd::Exec { target, argv } => exec(&load_state(&cli.prefix)?, &target, &argv),
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn run_dir(prefix: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(prefix)
}

fn state_path(prefix: &str) -> PathBuf {
    run_dir(prefix).join("state.json")
}

fn load_state(prefix: &str) -> anyhow::Result<State> {
    let p = state_path(prefix);
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("no lab `{prefix}` is up ({} missing)", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

fn kubectl_args(st: &State, args: &[String]) -> Vec<String> {
    let mut a = vec![
        "--kubeconfig".to_string(),
        st.kubeconfig.display().to_string(),
    ];
    a.extend(args.iter().cloned());
    a
}

/// kubectl in the ToR namespace; its output, or an error with it.
fn kubectl(tor: &Netns, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut argv = vec!["kubectl", "--kubeconfig", path_str(kubeconfig)?];
    argv.extend_from_slice(args);
    Ok(tor.exec(&argv)?)
}

fn up(
    prefix: &str,
    n_nodes: usize,
    pods_per_node: usize,
    repo: &Path,
    image: Option<&str>,
    topology: Topology,
) -> anyhow::Result<()> {
    lab::can_run().map_err(anyhow::Error::msg)?;
    let existing: Vec<String> = lab::netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    if !existing.is_empty() || state_path(prefix).exists() {
        bail!(
            "a lab `{prefix}` is already up ({} namespaces); run `scripts/lab down` first",
            existing.len()
        );
    }
    if !(1..=50).contains(&n_nodes) || !(1..=20).contains(&pods_per_node) {
        bail!("--nodes must be 1..=50 and --pods 1..=20");
    }
    let deploy = repo.join("deploy");
    if !deploy.join("crds.yaml").is_file() {
        bail!(
            "{} not found (run from the repository root or pass --repo)",
            deploy.display()
        );
    }
    let t0 = Instant::now();
    let dir = run_dir(prefix);
    println!(
        "==> lab `{prefix}`: ToR + {n_nodes} nodes in network namespaces, state in {}",
        dir.display()
    );
    let mut subnets = vec![0u8; n_nodes];
    if topology == Topology::CrossSubnet {
        if n_nodes < 2 {
            bail!("--topology cross-subnet needs at least 2 nodes");
        }
        subnets[n_nodes - 1] = 1;
    }
    let mut lab = Lab::builder()
        .prefix(prefix)
        .subnets(&subnets)
        .run_dir(&dir)
        .build()?;
    for n in lab.nodes() {
        println!(
            "    {}  {} / {}  (br{} on the ToR)",
            n.name, n.ipv4, n.ipv6, n.subnet
        );
    }

    println!(
        "==> Kubernetes API test server on {} (in the ToR namespace)",
        k8s::api_url()
    );
    let mut api = k8s::start_apiserver(&lab)?;
    let kc = k8s::kubeconfig_path(&lab);
    let tor = Netns::existing(lab.tor().name());

    println!("==> BIRD on the ToR: route reflector for 198.18.0.0/16, AS 64512, MD5");
    let mut bird = lab.start_tor_bird(&tor_bird_config(&TorBgp {
        password: Some(TOR_PASSWORD.into()),
        ..TorBgp::default()
    }))?;

    println!("==> kubectl apply: CRDs, IPPools, BGPConfiguration (mesh off), BGPPeer (the ToR)");
    let apply = |f: &str| -> anyhow::Result<()> {
        let out = kubectl(&tor, &kc, &["apply", "-f", path_str(&deploy.join(f))?])?;
        for l in out.lines() {
            println!("    {l}");
        }
        Ok(())
    };
    apply("crds.yaml")?;
    lab::wait_for("CRDs served", Duration::from_secs(10), || {
        Ok(kubectl(
            &tor,
            &kc,
            &["get", "ippools,ipamblocks,bgppeers,bgpconfigurations"],
        )
        .ok()
        .map(|_| ()))
    })?;
    // As an operator installs it: the agent's namespace, identity, RBAC
    // and configuration (the DaemonSet object is inert here: the lab runs
    // the agents itself).
    apply("margay.yaml")?;
    // The lab is dual-stack: nodes get an IPv6 address too (the shipped
    // default is IPv4 only), as an operator would set it.
    kubectl(
        &tor,
        &kc,
        &[
            "-n",
            "margay-system",
            "patch",
            "configmap",
            "margay-config",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"ip6_autodetection_method":"first-found"}}"#,
        ],
    )?;
    println!(
        "    configmap/margay-config patched: ip6_autodetection_method=first-found (a dual-stack lab)"
    );
    for f in [
        "examples/ippool.yaml",
        "examples/bgpconfiguration.yaml",
        "examples/bgppeer.yaml",
    ] {
        apply(f)?;
    }
    if topology == Topology::CrossSubnet {
        for pool in ["default-ipv4", "default-ipv6"] {
            kubectl(
                &tor,
                &kc,
                &[
                    "patch",
                    "ippool",
                    pool,
                    "--type",
                    "merge",
                    "-p",
                    r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#,
                ],
            )?;
            println!("    ippool/{pool} patched: vxlanMode=CrossSubnet");
        }
    }

    println!("==> Node objects and margay-node on every node");
    let nodes: Vec<(String, IpAddr)> = lab
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), IpAddr::V4(n.ipv4)))
        .collect();
    k8s::with_client(lab.tor(), move |c| async move {
        for (name, ip) in &nodes {
            k8s::create_node(&c, name, *ip, &[("margay.dev/lab", "true")]).await?;
        }
        Ok::<(), kube::Error>(())
    })??;
    // Containers of a lab that failed to come up go with it.
    struct Containers<'a>(&'a str, bool);
    impl Drop for Containers<'_> {
        fn drop(&mut self) {
            if self.1 {
                kubelet::remove_all(self.0, &[]);
            }
        }
    }
    let mut containers = Containers(prefix, image.is_some());
    let mut agents = Vec::new();
    let mut node_pods = Vec::new();
    let mut node_states = Vec::new();
    match image {
        Some(image) => {
            let (manifest, cx) = daemonset_context(&lab, &deploy, image)?;
            println!(
                "    the DaemonSet {} of deploy/margay.yaml, image {image}, on every node (kubelet stand-in: podman in the node's namespace)",
                manifest.daemonset.metadata.name.clone().unwrap_or_default()
            );
            // Every node's kubelet at once, as a cluster would.
            for n in lab.nodes() {
                node_pods.push(kubelet::start(&lab, &n.name, &manifest, &cx)?);
            }
            for p in &node_pods {
                for l in p.wait_ready(Duration::from_secs(90))? {
                    println!("    {l}");
                }
                node_states.push(NodeState {
                    name: p.node.clone(),
                    ns: p.ns.name().to_string(),
                    ipv4: lab.node(&p.node)?.ipv4.to_string(),
                    ipv6: lab.node(&p.node)?.ipv6.to_string(),
                    agent_url: k8s::AGENT_HEALTH.to_string(),
                    socket: p.host("/var/run/margay/margay.sock"),
                });
            }
        }
        None => {
            for n in lab.nodes() {
                let agent = k8s::start_agent(&lab, &n.name, &[])?;
                node_states.push(NodeState {
                    name: n.name.clone(),
                    ns: n.ns.name().to_string(),
                    ipv4: n.ipv4.to_string(),
                    ipv6: n.ipv6.to_string(),
                    agent_url: k8s::AGENT_HEALTH.to_string(),
                    socket: agent.socket.clone(),
                });
                println!(
                    "    {}: margay-node pid {}, socket {}",
                    n.name,
                    agent.daemon.pid(),
                    agent.socket.display()
                );
                agents.push(agent);
            }
        }
    }
    let runtimes: Vec<cni::NodeRuntime> = node_pods
        .iter()
        .map(|p| cni::NodeRuntime {
            node_ns: p.ns.name().to_string(),
            root: p.root.clone(),
        })
        .collect();

    println!(
        "==> pods (namespace demo) through {}, each serving TCP/UDP 80",
        if image.is_some() {
            "the conflist install-cni wrote on each node"
        } else {
            "the margay CNI binary"
        }
    );
    let mut pod_states = Vec::new();
    let mut keep = Vec::new();
    for (i, node) in lab.nodes().iter().enumerate() {
        let runtime = match image {
            Some(_) => cni::Runtime::Node(&runtimes[i]),
            None => cni::Runtime::Agent(&agents[i]),
        };
        for j in 0..pods_per_node {
            let name = format!("{}-{}", node.name, (b'a' + j as u8) as char);
            let role = if j % 2 == 0 { "server" } else { "client" };
            let pod = cni::add_pod_on(
                &lab,
                &node.name,
                runtime,
                "demo",
                &name,
                &[("role", role)],
                &[("http", 80, "TCP")],
            )?;
            let out = &pod.result;
            if !out.ok {
                bail!("CNI ADD for {name} failed: {} {}", out.stdout, out.stderr);
            }
            let v4 = pod.ipv4().map(|i| i.to_string()).unwrap_or_default();
            let v6 = pod.ipv6().map(|i| i.to_string()).unwrap_or_default();
            println!(
                "    demo/{name} ({role}) on {}: {v4} {v6}  [CNI ADD {:.1} ms]",
                node.name,
                pod.add_time.as_secs_f64() * 1e3
            );
            let mut ns = pod.ns;
            let mut server = lab.serve(&ns, &name, &[80], &[80])?;
            ns.persist();
            server.persist();
            keep.push(server);
            pod_states.push(PodState {
                namespace: "demo".into(),
                name,
                node: node.name.clone(),
                role: role.into(),
                ns: ns.name().to_string(),
                ipv4: v4,
                ipv6: v6,
            });
        }
    }

    println!("==> waiting for BGP and for every pod to reach every other");
    lab::wait_for(
        "every node Established with the ToR",
        Duration::from_secs(30),
        || {
            let out = bird.birdc("show protocols")?;
            let up = out
                .lines()
                .filter(|l| l.starts_with("node") && l.contains("Established"))
                .count();
            Ok((up == n_nodes).then_some(()))
        },
    )?;
    lab::wait_for(
        "every agent ready (/readyz)",
        Duration::from_secs(60),
        || {
            for n in lab.nodes() {
                let url = format!("{}/readyz", k8s::AGENT_HEALTH);
                let ready = n.ns.exec(&["curl", "-sf", "-m", "1", &url]).is_ok();
                if !ready {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    let open = |_: &PodState, _: &PodState| true;
    let (ok, took) = converge(&pod_states, open, Duration::from_secs(30));
    if !ok {
        eprintln!("warning: not every pair answered after {took:?}; the matrix below shows which");
    }

    let state = State {
        prefix: prefix.to_string(),
        run_dir: dir.clone(),
        tor_ns: lab.tor().name().to_string(),
        bird_ctl: bird.ctl_path().to_path_buf(),
        kubeconfig: kc.clone(),
        api_url: k8s::api_url(),
        nodes: node_states,
        pods: pod_states,
    };
    std::fs::write(state_path(prefix), serde_json::to_vec_pretty(&state)?)?;

    println!();
    status(&state)?;

    println!(
        "\n==> kubectl apply -f deploy/examples/netpol-demo.yaml (default-deny ingress; clients may reach servers on TCP 80)"
    );
    apply("examples/netpol-demo.yaml")?;
    let allowed = |from: &PodState, to: &PodState| {
        from.name == to.name || (from.role == "client" && to.role == "server")
    };
    let (ok, took) = converge(&state.pods, allowed, Duration::from_secs(20));
    println!(
        "    {} {:.1} s after kubectl apply returned",
        if ok {
            "enforced on every node"
        } else {
            "NOT fully enforced"
        },
        took.as_secs_f64()
    );
    println!("\n== reachability with the policy, TCP/80 (rows: from, columns: to)");
    print_matrix(&state, false);
    print_matrix(&state, true);

    // Everything stays up after this process exits.
    containers.1 = false;
    api.persist();
    bird.daemon.persist();
    for a in &mut agents {
        a.daemon.persist();
    }
    lab.persist();
    drop(keep);

    println!(
        r#"
The lab is up ({:.0} s). Look around:
  scripts/lab status                          agents' BGP status, ToR routes, reachability
  scripts/lab kubectl get pods,networkpolicies -n demo
  scripts/lab kubectl get ippools,ipamblocks,bgppeers
  scripts/lab margayctl n1 node status        BGP peers and why n1 chose its address
  scripts/lab margayctl n1 ipam show --show-blocks
  scripts/lab margayctl n1 policy trace --from demo/n1-b --to demo/n2-a --port 80/TCP
  scripts/lab exec n1 -- ip route             any command in tor, n1.., or a pod (demo/n1-a)
  scripts/lab exec tor -- birdc -s {} show route
  scripts/lab kubectl delete -f deploy/examples/netpol-demo.yaml    (open everything again)
Logs: {}/*.log
Take it down (also after a crash):
  scripts/lab down"#,
        t0.elapsed().as_secs_f64(),
        state.bird_ctl.display(),
        dir.display(),
    );
    Ok(())
}

/// Probes every ordered pair (TCP/80, IPv4) until `expect(from, to)` holds
/// for all or `deadline` passes; returns (converged, time taken).
fn converge(
    pods: &[PodState],
    expect: impl Fn(&PodState, &PodState) -> bool,
    deadline: Duration,
) -> (bool, Duration) {
    let start = Instant::now();
    loop {
        let mut probes = Vec::new();
        let mut want = Vec::new();
        for from in pods {
            for to in pods {
                let Ok(ip) = to.ipv4.parse::<IpAddr>() else {
                    continue;
                };
                probes.push(Probe {
                    from_ns: from.ns.clone(),
                    to: SocketAddr::new(ip, 80),
                    proto: Proto::Tcp,
                });
                want.push(expect(from, to));
            }
        }
        let got: Vec<bool> = probe_many(&probes, Duration::from_millis(500), 32)
            .iter()
            .map(|o| o.reached())
            .collect();
        if got == want {
            return (true, start.elapsed());
        }
        if start.elapsed() > deadline {
            return (false, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The DaemonSet of deploy/margay.yaml (applied already) and what its pods
/// need from the lab's cluster.
fn daemonset_context(
    lab: &Lab,
    deploy: &Path,
    image: &str,
) -> anyhow::Result<(kubelet::Manifest, kubelet::PodContext)> {
    let path = deploy.join("margay.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut manifest = kubelet::Manifest::parse(&text)?;
    manifest.refresh_configmaps(lab)?;
    Ok((manifest, kubelet::pod_context(lab, image, Vec::new())?))
}

fn down(prefix: &str) -> anyhow::Result<()> {
    kubelet::remove_all(prefix, &[]);
    let before = lab::netns::list().len();
    let removed = lab::remove_prefixed(prefix)?;
    let dir = run_dir(prefix);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    println!(
        "lab `{prefix}` down: removed {} namespaces ({} -> {} in `ip netns list`){}",
        removed.len(),
        before,
        lab::netns::list().len(),
        if removed.is_empty() { "" } else { ":" }
    );
    for n in removed {
        println!("  {n}");
    }
    Ok(())
}

fn passthrough(ns: &str, program: &str, args: &[String]) -> anyhow::Result<()> {
    let status = Netns::existing(ns)
        .command(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program} in {ns}"))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn exec(state: &State, target: &str, argv: &[String]) -> anyhow::Result<()> {
    let ns = if target == "tor" {
        state.tor_ns.clone()
    } else if let Some(n) = state.nodes.iter().find(|n| n.name == target) {
        n.ns.clone()
    } else if let Some(p) = state
        .pods
        .iter()
        .find(|p| p.name == target || format!("{}/{}", p.namespace, p.name) == target)
    {
        p.ns.clone()
    } else {
        bail!("no `{target}` in the lab (tor, node names, or pods as ns/name)");
    };
    passthrough(&ns, &argv[0], &argv[1..])
}
