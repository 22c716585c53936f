//! `margay-lab`: brings the Margay lab up and down on this machine, and
//! serves/probes inside it.
//!
//! ```text
//! margay-lab up [--nodes 3]     build the lab, print what it did
//! margay-lab status             BGP sessions, ToR routes, reachability
//! margay-lab exec n1 -- ip r    run a command in tor / n1 / a pod
//! margay-lab down               remove everything (also after a crash)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use integration_tests::lab::{
    self, Bird, Lab, Netns, PodSpec, Probe, Proto, TorBgp, node_bird_config, probe_many,
    tor_bird_config,
};
use serde::{Deserialize, Serialize};

const DEFAULT_PREFIX: &str = "mglab";
const RUN_ROOT: &str = "/run/margay-lab";
/// AS of the lab (Margay's default, as in BGPConfiguration).
const LAB_ASN: u32 = 64512;

#[derive(Parser)]
#[command(version, about = "Margay's network-namespace lab")]
struct Cli {
    /// Namespace prefix of the lab.
    #[arg(long, global = true, default_value = DEFAULT_PREFIX)]
    prefix: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab: ToR with BIRD, nodes, pods; print how to look around.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods: usize,
    },
    /// Remove the lab: kill its processes, delete its namespaces and state.
    Down,
    /// Print BGP sessions, the ToR's routes and the pod reachability matrix.
    Status,
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

/// What `up` leaves for `status`, `exec` and `down`.
#[derive(Serialize, Deserialize)]
struct State {
    prefix: String,
    run_dir: PathBuf,
    tor_ns: String,
    bird_ctl: PathBuf,
    nodes: Vec<NodeState>,
    pods: Vec<PodState>,
}

#[derive(Serialize, Deserialize)]
struct NodeState {
    name: String,
    ns: String,
    ipv4: String,
    ipv6: String,
    bird_ctl: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct PodState {
    namespace: String,
    name: String,
    node: String,
    ns: String,
    ipv4: String,
    ipv6: String,
    host_if: String,
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
        Cmd::Up { nodes, pods } => up(&cli.prefix, nodes, pods),
        Cmd::Down => down(&cli.prefix),
        Cmd::Status => status(&load_state(&cli.prefix)?),
        Cmd::Exec { target, argv } => exec(&load_state(&cli.prefix)?, &target, &argv),
    }
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

fn up(prefix: &str, n_nodes: usize, pods_per_node: usize) -> anyhow::Result<()> {
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
    if !(1..=50).contains(&n_nodes) || pods_per_node > 50 {
        bail!("--nodes must be 1..=50 and --pods at most 50");
    }
    let dir = run_dir(prefix);
    println!(
        "==> building lab `{prefix}`: ToR + {n_nodes} nodes, state in {}",
        dir.display()
    );
    let mut lab = Lab::builder()
        .prefix(prefix)
        .nodes(n_nodes)
        .run_dir(&dir)
        .build()?;

    println!(
        "==> BIRD on the ToR ({}): route reflector for 198.18.0.0/16, AS {LAB_ASN}",
        lab.tor().name()
    );
    let mut tor_bird = lab.start_tor_bird(&tor_bird_config(&TorBgp {
        asn: LAB_ASN,
        ..TorBgp::default()
    }))?;

    // Until margay-node runs here, each node's routes come from a BIRD
    // stand-in announcing the node's block, exactly what the agent will do.
    let mut node_states = Vec::new();
    let mut node_birds = Vec::new();
    for node in lab.nodes() {
        let (b4, b6) = node_blocks(node.index);
        let cfg = node_bird_config(node, LAB_ASN, &b4, Some(&b6));
        let bird = Bird::start(
            &node.ns,
            lab.run_dir(),
            &format!("{}-bird", node.name),
            &cfg,
        )?;
        println!(
            "    {} {} / {}: BIRD announces {b4} and {b6}",
            node.name, node.ipv4, node.ipv6
        );
        node_states.push(NodeState {
            name: node.name.clone(),
            ns: node.ns.name().to_string(),
            ipv4: node.ipv4.to_string(),
            ipv6: node.ipv6.to_string(),
            bird_ctl: bird.ctl_path().to_path_buf(),
        });
        node_birds.push(bird);
    }

    println!("==> pods ({pods_per_node} per node, namespace `demo`), each serving TCP/UDP 80");
    let mut pods = Vec::new();
    let mut pod_states = Vec::new();
    for node in lab.nodes() {
        for j in 0..pods_per_node {
            let (b4, _) = node_blocks(node.index);
            let spec = PodSpec {
                namespace: "demo".into(),
                name: format!("{}-{}", node.name, (b'a' + j as u8) as char),
                ipv4: Some(nth_in_block4(&b4, j + 2)?),
                ipv6: Some(format!("2001:db8:{}::{:x}", node.index, j + 2).parse()?),
            };
            let pod = lab.add_pod(&node.name, &spec)?;
            let server = lab.serve(&pod.ns, &pod.name, &[80], &[80])?;
            println!(
                "    {}/{} on {}: {} {} via {}",
                pod.namespace,
                pod.name,
                node.name,
                spec.ipv4.map(|i| i.to_string()).unwrap_or_default(),
                spec.ipv6.map(|i| i.to_string()).unwrap_or_default(),
                pod.host_if
            );
            pod_states.push(PodState {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                node: node.name.clone(),
                ns: pod.ns.name().to_string(),
                ipv4: spec.ipv4.map(|i| i.to_string()).unwrap_or_default(),
                ipv6: spec.ipv6.map(|i| i.to_string()).unwrap_or_default(),
                host_if: pod.host_if.clone(),
            });
            pods.push((pod, server));
        }
    }

    println!("==> waiting for BGP sessions and routes");
    let want = n_nodes;
    lab::wait_for("ToR sessions established", Duration::from_secs(30), || {
        let out = tor_bird.birdc("show protocols")?;
        let up = out
            .lines()
            .filter(|l| l.starts_with("node") && l.contains("Established"))
            .count();
        Ok((up == want).then_some(()))
    })?;
    // Every node has every block (v4 and v6) in its kernel FIB.
    let routes_wanted = 2 * n_nodes;
    lab::wait_for(
        "BGP routes in every node's kernel",
        Duration::from_secs(30),
        || {
            for node in lab.nodes() {
                let v4 = node.ns.ip(&["-4", "route", "show", "proto", "bird"])?;
                let v6 = node.ns.ip(&["-6", "route", "show", "proto", "bird"])?;
                if v4.lines().count() + v6.lines().count() < routes_wanted {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;

    let state = State {
        prefix: prefix.to_string(),
        run_dir: dir.clone(),
        tor_ns: lab.tor().name().to_string(),
        bird_ctl: tor_bird.ctl_path().to_path_buf(),
        nodes: node_states,
        pods: pod_states,
    };
    std::fs::write(state_path(prefix), serde_json::to_vec_pretty(&state)?)?;

    // Everything stays up after this process exits.
    tor_bird.daemon.persist();
    for b in &mut node_birds {
        b.daemon.persist();
    }
    for (pod, server) in &mut pods {
        pod.ns.persist();
        server.persist();
    }
    lab.persist();

    println!();
    status(&state)?;
    println!(
        r#"
The lab is up. Look around:
  scripts/lab status                      sessions, routes, reachability
  scripts/lab exec tor -- birdc -s {ctl} show route
  scripts/lab exec n1 -- ip route         any command in tor, n1.., or a pod (demo/n1-a)
  scripts/lab exec n1-a -- ping -c1 {ip}
  ip netns list | grep {prefix}
Take it down (also after a crash):
  scripts/lab down"#,
        ctl = state.bird_ctl.display(),
        ip = state
            .pods
            .last()
            .map(|p| p.ipv4.as_str())
            .unwrap_or("198.19.1.2"),
    );
    Ok(())
}

/// The pod blocks the lab gives node `index`: 198.19.<index>.0/26 and
/// 2001:db8:<index>::/122.
fn node_blocks(index: usize) -> (String, String) {
    (
        format!("198.19.{index}.0/26"),
        format!("2001:db8:{index}::/122"),
    )
}

fn nth_in_block4(block: &str, n: usize) -> anyhow::Result<std::net::Ipv4Addr> {
    let net: ipnetwork::Ipv4Network = block.parse()?;
    net.nth(n as u32)
        .with_context(|| format!("{block} has no address #{n}"))
}

fn down(prefix: &str) -> anyhow::Result<()> {
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

fn status(state: &State) -> anyhow::Result<()> {
    let birdc = |ctl: &Path, cmd: &str| -> String {
        let out = std::process::Command::new("birdc")
            .arg("-s")
            .arg(ctl)
            .args(cmd.split_whitespace())
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("birdc: {e}\n"),
        }
    };
    println!("== ToR BGP sessions ({})", state.tor_ns);
    print!("{}", birdc(&state.bird_ctl, "show protocols"));
    println!("\n== ToR routes");
    print!("{}", birdc(&state.bird_ctl, "show route"));
    for n in &state.nodes {
        let ns = Netns::existing(&n.ns);
        println!("\n== {} kernel routes from BGP", n.name);
        print!("{}", ns.ip(&["-4", "route", "show", "proto", "bird"])?);
        print!("{}", ns.ip(&["-6", "route", "show", "proto", "bird"])?);
    }
    println!("\n== reachability, TCP/80 over IPv4 and IPv6 (rows: from, columns: to)");
    print_matrix(state, false);
    print_matrix(state, true);
    Ok(())
}

fn print_matrix(state: &State, v6: bool) {
    let mut probes = Vec::new();
    for from in &state.pods {
        for to in &state.pods {
            let ip = if v6 { &to.ipv6 } else { &to.ipv4 };
            let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
                continue;
            };
            probes.push(Probe {
                from_ns: from.ns.clone(),
                to: SocketAddr::new(ip, 80),
                proto: Proto::Tcp,
            });
        }
    }
    let results = probe_many(&probes, Duration::from_millis(800), 32);
    let w = state
        .pods
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:w$}  {}",
        if v6 { "IPv6" } else { "IPv4" },
        state
            .pods
            .iter()
            .map(|p| format!("{:>w$}", p.name))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut it = results.iter();
    for from in &state.pods {
        let cells: Vec<String> = state
            .pods
            .iter()
            .map(|_| {
                let c = match it.next() {
                    Some(o) if o.reached() => "ok",
                    Some(_) => "--",
                    None => "?",
                };
                format!("{c:>w$}")
            })
            .collect();
        println!("{:w$}  {}", from.name, cells.join(" "));
    }
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
    let status = Netns::existing(&ns)
        .command(&argv[0])
        .args(&argv[1..])
        .status()
        .with_context(|| format!("running {argv:?} in {ns}"))?;
    std::process::exit(status.code().unwrap_or(1));
}
