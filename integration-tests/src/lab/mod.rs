//! Network-namespace lab harness.
//!
//! ```text
//!                          ToR namespace  <prefix>-tor
//!                  br0: 198.18.0.1/24, 2001:db8:ffff::1/64
//!                  (BIRD / FRR / GoBGP / the API test server run here)
//!                 ┌───────────┼───────────┬──────────── …
//!               veth n1     veth n2     veth n3
//!                 │           │           │
//!   <prefix>-n1 eth0    <prefix>-n2 eth0    <prefix>-n3 eth0     (nodes)
//!   198.18.0.11/24      198.18.0.12/24      198.18.0.13/24
//!   2001:db8:ffff::b    2001:db8:ffff::c    2001:db8:ffff::d
//!      │ cali<hash> ── eth0  <prefix>-<ns>-<pod>            (pods, Calico-style)
//! ```
//!
//! Nodes may also sit in other underlay subnets ([`LabBuilder::subnets`],
//! [`Lab::add_node_in`]): subnet `s` is a second bridge `br<s>` in the
//! ToR, `198.18.<s>.1/24` and `2001:db8:ffff:<s>::1/64`, and the ToR routes
//! between its subnets as a plain router (it speaks BGP only when a test
//! starts a daemon there), so a node in subnet 1 is one routed hop from a
//! node in subnet 0.
//!
//! Every namespace carries the lab's prefix: `mgt<pid>x<n>` in tests (so a
//! later run can sweep what a crashed run left: [`sweep_stale`]), `mglab` for
//! the README's lab. [`Lab`] removes everything it made on drop — also when a
//! test panics — and leaves its logs in the run directory when it does.
//! Nothing here touches the machine's own network namespace.

pub mod daemon;
pub mod error;
pub mod netns;
pub mod pod;
pub mod probe;
pub mod routemon;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use daemon::{Bird, Daemon, Frr, Gobgp, process_usage, wait_for};
pub use error::{LabError, Result};
pub use netns::{LinkStats, Netns};
pub use pod::{Pod, PodSpec, host_ifname};
pub use probe::{Outcome, Probe, Proto, probe, probe_many, wait_reachable};
pub use routemon::RouteMonitor;

/// The ToR's underlay address (IPv4), gateway of every node.
pub const TOR_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The ToR's underlay address (IPv6).
pub const TOR_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
/// Underlay prefix lengths.
pub const UNDERLAY_V4_LEN: u8 = 24;
/// Underlay prefix length (IPv6).
pub const UNDERLAY_V6_LEN: u8 = 64;
/// Prefix of namespaces made by tests.
pub const TEST_PREFIX: &str = "mgt";

/// Sysctls of the ToR and every node: forward both families, and no IPv6
/// DAD. A router whose link-local is still tentative sends no neighbour
/// solicitation for *forwarded* packets (the kernel needs a usable link-local
/// source), so the first packets across the lab would vanish for 1-2 s.
const ROUTER_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// Underlay IPv4 address of node `index` (1-based): 198.18.0.(10+index).
pub fn node_ipv4(index: usize) -> Ipv4Addr {
    node_ipv4_in(0, index)
}

/// Underlay IPv6 address of node `index` (1-based): 2001:db8:ffff::(10+index).
pub fn node_ipv6(index: usize) -> Ipv6Addr {
    node_ipv6_in(0, index)
}

/// Underlay IPv4 address of node `index` in underlay subnet `subnet`:
/// 198.18.<subnet>.(10+index).
pub fn node_ipv4_in(subnet: u8, index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, subnet, (10 + index) as u8)
}

/// Underlay IPv6 address of node `index` in underlay subnet `subnet`:
/// 2001:db8:ffff:<subnet>::(10+index).
pub fn node_ipv6_in(subnet: u8, index: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0xffff,
        u16::from(subnet),
        0,
        0,
        0,
        (10 + index) as u16,
    )
}

/// The ToR's (gateway) addresses in underlay subnet `subnet`.
pub fn tor_addrs(subnet: u8) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::new(198, 18, subnet, 1),
        Ipv6Addr::new(0x2001, 0xdb8, 0xffff, u16::from(subnet), 0, 0, 0, 1),
    )
}

/// A fresh prefix for a test lab: `mgt<pid>x<counter>`.
pub fn test_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{TEST_PREFIX}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the process can build labs: `Err(why)` when not root (the
/// test skips, see [`skip`]). As root a lab must be possible: a missing
/// `ip`, or network namespaces that cannot be made, panics (the test
/// fails) instead of skipping, since this machine has them and
/// `scripts/install-deps` installs iproute2.
pub fn can_run() -> std::result::Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("needs root (network namespaces)".into());
    }
    match std::process::Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        other => panic!(
            "running as root, but iproute2's `ip` does not run ({other:?}): run scripts/install-deps"
        ),
    }
}

/// Reports a skipped test (see [`ipam::testsupport::skip`]).
pub fn skip(why: &str) {
    ipam::testsupport::skip(why);
}

/// Removes namespaces (and run directories) that test labs of processes
/// which no longer exist left behind (a SIGKILLed test run). Namespaces of
/// live processes are never touched.
pub fn sweep_stale() {
    for name in netns::list() {
        let Some(rest) = name.strip_prefix(TEST_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Err(e) = netns::remove(&name) {
            eprintln!("lab: sweeping stale netns {name}: {e}");
        }
    }
}

/// Removes every namespace whose name starts with `prefix` (after killing
/// what runs inside), returning their names. This is `margay-lab down`.
pub fn remove_prefixed(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut names: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n == prefix || n.starts_with(&format!("{prefix}-")))
        .collect();
    // Pods and nodes before the ToR (longest names first is good enough).
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        netns::remove(&n)?;
        removed.push(n);
    }
    Ok(removed)
}

/// A lab node (a namespace standing for a Kubernetes node).
#[derive(Debug)]
pub struct Node {
    /// "n1", "n2", ...
    pub name: String,
    /// 1-based index.
    pub index: usize,
    /// Its namespace.
    pub ns: Netns,
    /// Underlay IPv4 address (on `eth0`).
    pub ipv4: Ipv4Addr,
    /// Underlay IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Its underlay subnet (0: the ToR's `br0`, see the module docs).
    pub subnet: u8,
}

/// Builds a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    prefix: Option<String>,
    nodes: usize,
    subnets: Vec<u8>,
    run_dir: Option<PathBuf>,
}

impl LabBuilder {
    /// Number of nodes (default 3), all in subnet 0.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self.subnets.clear();
        self
    }

    /// One node per entry, in that underlay subnet (0..=254): `[0, 0, 1]`
    /// is n1 and n2 on the ToR's `br0` and n3 one routed hop away behind
    /// `br1`. Replaces [`LabBuilder::nodes`].
    pub fn subnets(mut self, subnets: &[u8]) -> Self {
        self.nodes = subnets.len();
        self.subnets = subnets.to_vec();
        self
    }

    /// Namespace name prefix (default: a fresh [`test_prefix`]).
    pub fn prefix(mut self, p: &str) -> Self {
        self.prefix = Some(p.to_string());
        self
    }

    /// Where configs and logs go (default `/tmp/margay-lab-<prefix>`).
    pub fn run_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(d.into());
        self
    }

    /// Creates the ToR and the nodes.
    pub fn build(self) -> Result<Lab> {
        sweep_stale();
        let prefix = self.prefix.unwrap_or_else(test_prefix);
        if self.nodes > 200 {
            return Err(LabError::Invalid("at most 200 nodes".into()));
        }
        let run_dir = self
            .run_dir
            .unwrap_or_else(|| std::env::temp_dir().join(format!("margay-lab-{prefix}")));
        std::fs::create_dir_all(&run_dir).map_err(|e| LabError::io(&run_dir, e))?;
        let tor = Netns::create(&format!("{prefix}-tor"))?;
        let mut lab = Lab {
            daemons: Vec::new(),
            nodes: Vec::new(),
            tor,
            prefix,
            run_dir,
            persist: false,
        };
        lab.tor.sysctl(ROUTER_SYSCTLS)?;
        lab.tor.ip_batch(&[
            // No MLD querier in the lab: do not let snooping age out groups.
            "link add br0 type bridge mcast_snooping 0".to_string(),
            "link set br0 up".to_string(),
            format!("addr add {TOR_IPV4}/{UNDERLAY_V4_LEN} dev br0"),
            format!("addr add {TOR_IPV6}/{UNDERLAY_V6_LEN} dev br0 nodad"),
        ])?;
        for i in 0..self.nodes {
            lab.add_node_in(self.subnets.get(i).copied().unwrap_or(0))?;
        }
        Ok(lab)
    }
}

/// "The internet" of a lab ([`Lab::add_internet`]): its addresses.
pub const INTERNET_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 2);
/// Its IPv6 address.
pub const INTERNET_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfffe, 0, 0, 0, 0, 2);

/// A ToR namespace with a bridge, and nodes attached to it by veth pairs.
/// See the module docs for the picture and the addresses.
#[derive(Debug)]
pub struct Lab {
    // Field order is drop order: daemons stop before namespaces go.
    daemons: Vec<Daemon>,
    nodes: Vec<Node>,
    tor: Netns,
    prefix: String,
    run_dir: PathBuf,
    persist: bool,
}

impl Lab {
    /// A builder with 3 nodes and a fresh test prefix.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            prefix: None,
            nodes: 3,
            subnets: Vec::new(),
            run_dir: None,
        }
    }

    /// The namespace prefix of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A host that stands for the internet: `<prefix>-inet`, behind the
    /// ToR in a subnet of its own ([`INTERNET_IPV4`] / [`INTERNET_IPV6`]),
    /// with routes back to the nodes' underlay only. It has no route to any
    /// pod network: a pod's traffic gets an answer from it only when it
    /// arrives from a node's address (outgoing NAT).
    pub fn add_internet(&self) -> Result<Netns> {
        let ns = Netns::create(&format!("{}-inet", self.prefix))?;
        ns.sysctl(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ])?;
        self.tor.ip_batch(&[format!(
            "link add inet0 type veth peer name uplink netns {}",
            ns.name()
        )])?;
        self.tor.ip_batch(&[
            "link set inet0 up".to_string(),
            "addr add 198.18.250.1/24 dev inet0".to_string(),
            "addr add 2001:db8:fffe::1/64 dev inet0 nodad".to_string(),
        ])?;
        ns.ip_batch(&[
            "link set lo up".to_string(),
            "link set uplink up".to_string(),
            format!("addr add {INTERNET_IPV4}/24 dev uplink"),
            format!("addr add {INTERNET_IPV6}/64 dev uplink nodad"),
            format!("route add 198.18.0.0/{UNDERLAY_V4_LEN} via 198.18.250.1"),
            format!("route add 2001:db8:ffff::/{UNDERLAY_V6_LEN} via 2001:db8:fffe::1"),
        ])?;
        Ok(ns)
    }

    /// Directory for configs and logs.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The top-of-rack namespace.
    pub fn tor(&self) -> &Netns {
        &self.tor
    }

    /// All nodes, in creation order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node called `name` ("n1").
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::Invalid(format!("no node {name} in lab {}", self.prefix)))
    }

    /// Adds one more node, wired to the ToR bridge, forwarding on, default
    /// routes via the ToR.
    pub fn add_node(&mut self) -> Result<&Node> {
        self.add_node_in(0)
    }

    /// Adds one more node in underlay subnet `subnet` (see the module
    /// docs): the ToR gets that subnet's bridge the first time.
    pub fn add_node_in(&mut self, subnet: u8) -> Result<&Node> {
        let index = self.nodes.len() + 1;
        if index > 200 || subnet == 255 {
            return Err(LabError::Invalid(
                "at most 200 nodes, subnets 0..=254".into(),
            ));
        }
        let name = format!("n{index}");
        let bridge = format!("br{subnet}");
        let (gw4, gw6) = tor_addrs(subnet);
        if subnet != 0 && !self.nodes.iter().any(|n| n.subnet == subnet) {
            self.tor.ip_batch(&[
                format!("link add {bridge} type bridge mcast_snooping 0"),
                format!("link set {bridge} up"),
                format!("addr add {gw4}/{UNDERLAY_V4_LEN} dev {bridge}"),
                format!("addr add {gw6}/{UNDERLAY_V6_LEN} dev {bridge} nodad"),
            ])?;
        }
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let (ipv4, ipv6) = (node_ipv4_in(subnet, index), node_ipv6_in(subnet, index));
        // Before the uplink exists, so its link-local is never tentative.
        ns.sysctl(ROUTER_SYSCTLS)?;
        self.tor.ip_batch(&[
            format!(
                "link add {name} type veth peer name eth0 netns {}",
                ns.name()
            ),
            format!("link set {name} master {bridge}"),
            format!("link set {name} up"),
        ])?;
        ns.ip_batch(&[
            format!("addr add {ipv4}/{UNDERLAY_V4_LEN} dev eth0"),
            format!("addr add {ipv6}/{UNDERLAY_V6_LEN} dev eth0 nodad"),
            "link set eth0 up".to_string(),
            format!("route add default via {gw4}"),
            format!("route add default via {gw6}"),
        ])?;
        self.nodes.push(Node {
            name,
            index,
            ns,
            ipv4,
            ipv6,
            subnet,
        });
        let last = self.nodes.len() - 1;
        Ok(&self.nodes[last])
    }

    /// The namespace name a pod gets: `<prefix>-<k8s namespace>-<pod>`.
    pub fn pod_ns_name(&self, namespace: &str, pod: &str) -> String {
        format!("{}-{namespace}-{pod}", self.prefix)
    }

    /// Creates a pod on `node`, wired Calico-style with the node's route to it.
    pub fn add_pod(&self, node: &str, spec: &PodSpec) -> Result<Pod> {
        let n = self.node(node)?;
        pod::wire(
            &n.ns,
            &n.name,
            &self.pod_ns_name(&spec.namespace, &spec.name),
            spec,
        )
    }

    /// Starts the probe server (`margay-lab serve`) in `ns`, answering as
    /// `name` on the given ports; returns once every port is bound.
    pub fn serve(&self, ns: &Netns, name: &str, tcp: &[u16], udp: &[u16]) -> Result<Daemon> {
        let bin = helper_bin()?;
        let ready = self.run_dir.join(format!("serve-{}.ready", ns.name()));
        let _ = std::fs::remove_file(&ready);
        let mut argv: Vec<String> = vec![
            path_string(&bin)?,
            "serve".into(),
            "--name".into(),
            name.into(),
            "--ready-file".into(),
            path_string(&ready)?,
        ];
        for p in tcp {
            argv.extend(["--tcp".into(), p.to_string()]);
        }
        for p in udp {
            argv.extend(["--udp".into(), p.to_string()]);
        }
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let log = self.run_dir.join(format!("serve-{}.log", ns.name()));
        let mut d = Daemon::spawn(ns, &format!("serve-{name}"), &argv_ref, &log)?;
        wait_for(
            &format!("probe server in {}", ns.name()),
            Duration::from_secs(10),
            || {
                if !d.is_running() {
                    return Err(LabError::Invalid(format!("server exited: {}", d.log())));
                }
                Ok(ready.exists().then_some(()))
            },
        )?;
        Ok(d)
    }

    /// Hands a daemon to the lab: it is stopped when the lab drops (before
    /// the namespaces go), or kept running by [`Lab::persist`].
    pub fn keep(&mut self, d: Daemon) {
        self.daemons.push(d);
    }

    /// Starts BIRD in the ToR namespace with `config` (see [`tor_bird_config`]).
    pub fn start_tor_bird(&self, config: &str) -> Result<Bird> {
        Bird::start(&self.tor, &self.run_dir, "tor-bird", config)
    }

    /// Leave everything in place when the lab drops (the README's `up`);
    /// `margay-lab down` removes it later.
    pub fn persist(&mut self) {
        self.persist = true;
        self.tor.persist();
        for n in &mut self.nodes {
            n.ns.persist();
        }
        for d in &mut self.daemons {
            d.persist();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.persist {
            return;
        }
        for d in &mut self.daemons {
            d.stop(Duration::from_secs(2));
        }
        // Pods of this lab may still exist if the caller leaked them.
        let _ = remove_prefixed(&self.prefix);
        if std::thread::panicking() {
            eprintln!(
                "lab {}: logs kept in {} for the failure",
                self.prefix,
                self.run_dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// Path of the `margay-lab` binary (which serves probes): `$MARGAY_LAB_BIN`
/// or [`workspace_bin`].
pub fn helper_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("MARGAY_LAB_BIN") {
        return Ok(PathBuf::from(p));
    }
    workspace_bin("margay-lab")
}

/// Path of a binary built from this workspace (`margay-node`, `margay`,
/// `margay-apiserver`, ...): next to the running executable or one directory
/// up (test binaries live in `target/<profile>/deps`). `cargo test
/// --workspace` builds them all before running any test.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| LabError::io("current_exe", e))?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let cand = d.join(name);
        if cand.is_file() {
            return Ok(cand);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    Err(LabError::Invalid(format!(
        "binary {name} not found next to {} (run `cargo build --workspace` first)",
        exe.display()
    )))
}

fn path_string(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| LabError::Invalid(format!("non-UTF-8 path {}", p.display())))
}

/// BGP settings of the ToR's BIRD.
#[derive(Debug, Clone)]
pub struct TorBgp {
    /// The ToR's AS.
    pub asn: u32,
    /// `None`: iBGP, the ToR is a route reflector for the nodes (Calico's
    /// "ToR as RR"); `Some(_)`: eBGP to nodes in another AS.
    pub node_asn: Option<u32>,
    /// TCP MD5 password for the node sessions.
    pub password: Option<String>,
    /// Hold time in seconds (keepalive is a third).
    pub hold_time: u16,
}

impl Default for TorBgp {
    fn default() -> Self {
        TorBgp {
            asn: 64512,
            node_asn: None,
            password: None,
            hold_time: 30,
        }
    }
}

/// BIRD 2 configuration for the ToR: dynamic neighbours for the whole
/// underlay, IPv4 and IPv6 unicast, learned routes installed in the ToR's
/// kernel, graceful restart on.
pub fn tor_bird_config(cfg: &TorBgp) -> String {
    let (range_kind, rr) = match cfg.node_asn {
        None => (
            "internal".to_string(),
            format!("  rr client;\n  rr cluster id {TOR_IPV4};\n"),
        ),
        Some(asn) => (format!("as {asn}"), String::new()),
    };
    let password = cfg
        .password
        .as_ref()
        .map(|p| format!("  password \"{p}\";\n"))
        .unwrap_or_default();
    format!(
        r#"# Margay lab ToR (generated)
log stderr all;
router id {TOR_IPV4};
protocol device {{ scan time 10; }}
protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; merge paths on; }}
protocol kernel kernel6 {{ ipv6 {{ import none; export all; }}; merge paths on; }}
protocol bgp node {{
  local {TOR_IPV4} as {asn};
  neighbor range 198.18.0.0/16 {range_kind};
  dynamic name "node";
  direct;
  hold time {hold}; keepalive time {ka}; connect delay time 1;
  graceful restart on;
{rr}{password}  ipv4 {{ import all; export all; gateway direct; }};
  ipv6 {{ import all; export all; gateway direct; next hop address {TOR_IPV6}; }};
}}
"#,
        asn = cfg.asn,
        hold = cfg.hold_time,
        ka = (cfg.hold_time / 3).max(1),
    )
}

/// BIRD 2 configuration for a *node* that stands in for Margay's speaker
/// (the lab before the agent existed, and harness self-tests): announces the
/// node's pod blocks (blackholed locally) to the ToR over iBGP and installs
/// what it learns.
pub fn node_bird_config(node: &Node, asn: u32, block4: &str, block6: Option<&str>) -> String {
    let v6_static = block6
        .map(|b| format!("protocol static blocks6 {{ ipv6; route {b} blackhole; }}\n"))
        .unwrap_or_default();
    format!(
        r#"# Margay lab node {name} (BIRD stand-in, generated)
log stderr all;
router id {ip4};
protocol device {{ scan time 10; }}
protocol kernel kernel4 {{ ipv4 {{ import none; export where source ~ [RTS_BGP, RTS_STATIC]; }}; merge paths on; }}
protocol kernel kernel6 {{ ipv6 {{ import none; export where source ~ [RTS_BGP, RTS_STATIC]; }}; merge paths on; }}
protocol static blocks4 {{ ipv4; route {block4} blackhole; }}
{v6_static}protocol bgp tor {{
  local {ip4} as {asn};
  neighbor {TOR_IPV4} as {asn};
  direct;
  hold time 30; keepalive time 10; connect delay time 1;
  graceful restart on;
  ipv4 {{ import all; export where source = RTS_STATIC; next hop self; gateway direct; }};
  ipv6 {{ import all; export where source = RTS_STATIC; next hop address {ip6}; gateway direct; }};
}}
"#,
        name = node.name,
        ip4 = node.ipv4,
        ip6 = node.ipv6,
    )
}
