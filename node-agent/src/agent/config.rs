//! `margay-node` command line and environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::k8s::node::autodetect::Method;
use crate::logging::LogFormat;

/// The Margay node agent.
#[derive(Debug, Parser)]
#[command(
    name = "margay-node",
    version,
    about = "The Margay node agent: BGP, IPAM, pod routes and NetworkPolicy on one node"
)]
pub struct Cli {
    /// What to do (default: run the agent).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Agent settings (for `run`, the default).
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Install the CNI binary and configuration on the host (init container).
    InstallCni(InstallCniArgs),
}

/// Settings of the running agent; every flag has an environment variable.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// This node's name (the DaemonSet passes spec.nodeName); default: host name.
    #[arg(long, env = "NODE_NAME", global = true)]
    pub node_name: Option<String>,

    /// API server URL, e.g. http://198.18.0.1:6443; with --kubeconfig it
    /// overrides the kubeconfig's server.
    #[arg(long, env = "MARGAY_API_SERVER", global = true)]
    pub api_server: Option<String>,

    /// A kubeconfig: the API server and the agent's credentials (default:
    /// the in-cluster ServiceAccount, or $KUBECONFIG).
    #[arg(long, env = "MARGAY_KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// Unix socket for the CNI plugin.
    #[arg(
        long,
        env = "MARGAY_SOCKET",
        default_value = "/var/run/margay/margay.sock",
        global = true
    )]
    pub socket: PathBuf,

    /// Address for /livez, /readyz, /status and /metrics: loopback by
    /// default (the kubelet probes a hostNetwork pod on the node itself,
    /// margayctl runs there); port 9647, clear of Calico's 9099.
    #[arg(
        long,
        env = "MARGAY_HEALTH_LISTEN",
        default_value = "127.0.0.1:9647",
        global = true
    )]
    pub health_listen: SocketAddr,

    /// Address for /metrics alone, for Prometheus from other hosts
    /// ("none": not served).
    #[arg(
        long,
        env = "MARGAY_METRICS_LISTEN",
        default_value = "0.0.0.0:9648",
        global = true
    )]
    pub metrics_listen: OptionalAddr,

    /// How to choose this node's IPv4 address (first-found,
    /// kubernetes-internal-ip, interface=REGEX, skip-interface=REGEX,
    /// can-reach=IP, cidr=CIDR, an address, none).
    #[arg(
        long,
        env = "IP_AUTODETECTION_METHOD",
        default_value = "first-found",
        global = true
    )]
    pub ip_autodetection: Method,

    /// The same for IPv6 (default none: no IPv6 node address).
    #[arg(
        long,
        env = "IP6_AUTODETECTION_METHOD",
        default_value = "none",
        global = true
    )]
    pub ip6_autodetection: Method,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, env = "MARGAY_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,

    /// Log format.
    #[arg(
        long,
        env = "MARGAY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Where the agent keeps state across restarts.
    #[arg(
        long,
        env = "MARGAY_STATE_DIR",
        default_value = "/var/lib/margay",
        global = true
    )]
    pub state_dir: PathBuf,

    /// Namespace of Secrets holding BGP passwords.
    #[arg(
        long,
        env = "MARGAY_NAMESPACE",
        default_value = "margay-system",
        global = true
    )]
    pub namespace: String,

    /// How long an address may stay allocated after its pod is gone before
    /// the leak GC releases it (at once when its node is gone too).
    #[arg(long, env = "MARGAY_IPAM_GC_GRACE", default_value = "15m", value_parser = parse_duration, global = true)]
    pub ipam_gc_grace: Duration,

    /// Address units (one address per family each) the agent keeps
    /// allocated ahead of demand in its blocks, under handles
    /// `margay-reserve.<node>.<id>`: a pod's Allocate takes one with no
    /// write to the API server on its path, and its handle is moved to the
    /// pod in the background. Refilled, in one write per block, when fewer
    /// than half are left. 0 turns the reserve off.
    #[arg(long, env = "MARGAY_IPAM_RESERVE", default_value_t = 4, global = true)]
    pub ipam_reserve: usize,

    /// How often the leak GC and the IPAM gauges run.
    #[arg(long, env = "MARGAY_IPAM_GC_INTERVAL", default_value = "60s", value_parser = parse_duration, global = true)]
    pub ipam_gc_interval: Duration,

    /// Start-up grace time during which readiness wants every BGP peer up.
    #[arg(long, env = "MARGAY_STARTUP_GRACE", default_value = "60s", value_parser = parse_duration, global = true)]
    pub startup_grace: Duration,

    /// How often the dataplane is re-read: missing routes put back, a pod
    /// veth that went missing while its pod runs re-wired, superseded
    /// sandboxes' addresses released.
    #[arg(long, env = "MARGAY_RECONCILE_INTERVAL", default_value = "30s", value_parser = parse_duration, global = true)]
    pub reconcile_interval: Duration,

    /// Where the CNI plugin journals releases while the agent is away (the
    /// conflist's `journal_dir`); default `<state-dir>/cni-journal`.
    #[arg(long, env = "MARGAY_CNI_JOURNAL_DIR", global = true)]
    pub cni_journal_dir: Option<PathBuf>,

    /// Every supervised loop turns at least this often, idle or not;
    /// `/livez` fails when one has not turned for 4 periods or its task
    /// has ended.
    #[arg(long, env = "MARGAY_LOOP_PERIOD", default_value = "10s", value_parser = parse_duration, global = true)]
    pub loop_period: Duration,

    /// VNI of the VXLAN devices (pools with `vxlanMode`); the same on
    /// every node.
    #[arg(long, env = "MARGAY_VXLAN_VNI", default_value_t = crate::overlay::DEFAULT_VNI,
          value_parser = clap::value_parser!(u32).range(1..=0xff_ffff), global = true)]
    pub vxlan_vni: u32,

    /// UDP port of the VXLAN devices; the same on every node.
    #[arg(long, env = "MARGAY_VXLAN_PORT", default_value_t = crate::overlay::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..), global = true)]
    pub vxlan_port: u16,

    /// MTU of `vxlan.margay` (0: the underlay interface's minus 50).
    #[arg(long, env = "MARGAY_VXLAN_MTU", default_value_t = 0, value_parser = parse_mtu, global = true)]
    pub vxlan_mtu: u32,

    /// MTU of `vxlan-v6.margay` (0: the underlay interface's minus 70).
    #[arg(long, env = "MARGAY_VXLAN_MTU_V6", default_value_t = 0, value_parser = parse_mtu, global = true)]
    pub vxlan_mtu_v6: u32,

    /// MTU of pod interfaces, told to the CNI plugin in every Allocate
    /// answer (0: the underlay interface's, or the smallest VXLAN device's
    /// when a pool uses VXLAN). A conflist's `mtu` still wins.
    #[arg(long, env = "MARGAY_VETH_MTU", default_value_t = 0, value_parser = parse_mtu, global = true)]
    pub veth_mtu: u32,

    /// Host protection (HostEndpoint / HostNetworkPolicy): nothing is
    /// installed until a HostEndpoint names this node.
    #[arg(long, env = "MARGAY_HOST_PROTECTION", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub host_protection: bool,

    /// AdminNetworkPolicy / BaselineAdminNetworkPolicy `Accepted`
    /// conditions, written by one agent elected with the Lease
    /// `margay-policy-status` in `--namespace`.
    #[arg(long, env = "MARGAY_POLICY_STATUS", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub policy_status: bool,

    /// `leaseDurationSeconds` of that Lease: how long a stopped writer
    /// keeps the others waiting (it renews every third of it).
    #[arg(long, env = "MARGAY_POLICY_STATUS_LEASE", default_value = "15s", value_parser = parse_duration, global = true)]
    pub policy_status_lease: Duration,

    /// Inbound ports no host policy can close, `proto:port,...` (default:
    /// tcp:22,tcp:179,tcp:6443,tcp:10250,udp:68,udp:3784,udp:4784). The
    /// agent's health and metrics ports are always added.
    #[arg(long, env = "MARGAY_FAILSAFE_INBOUND_HOST_PORTS", global = true)]
    pub failsafe_inbound_host_ports: Option<String>,

    /// Outbound (destination) ports no host policy can close (default:
    /// tcp:179,tcp:6443,udp:53,tcp:53,udp:67,udp:3784,udp:4784).
    #[arg(long, env = "MARGAY_FAILSAFE_OUTBOUND_HOST_PORTS", global = true)]
    pub failsafe_outbound_host_ports: Option<String>,

    /// Log denied packets (rate-limited: 10/s per drop rule, bursts of 20)
    /// as JSON lines with the rule and the pods.
    #[arg(long, env = "MARGAY_POLICY_LOG_DENIED", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub policy_log_denied: bool,

    /// The NFLOG group of denied-flow logging.
    #[arg(
        long,
        env = "MARGAY_POLICY_LOG_GROUP",
        default_value_t = 7,
        global = true
    )]
    pub policy_log_group: u16,

    /// Where the pods of other nodes come from: `pods` (every agent
    /// watches every Pod) or `endpoints` (this node's Pods, and the other
    /// nodes' PodEndpoints; docs/scale.md). Switch to `endpoints` only once
    /// every node runs a version that publishes PodEndpoints.
    #[arg(
        long,
        env = "MARGAY_POD_SOURCE",
        value_enum,
        default_value = "pods",
        global = true
    )]
    pub pod_source: crate::k8s::cluster::PodSource,

    /// Where denied-flow records go ("-": standard output).
    #[arg(
        long,
        env = "MARGAY_POLICY_LOG_FILE",
        default_value = "/var/log/margay/denied-flows.jsonl",
        global = true
    )]
    pub policy_log_file: PathBuf,
}

/// An MTU flag: 0 (automatic) or 68..=65535.
fn parse_mtu(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected an MTU (a number of bytes, or 0 for automatic)"))?;
    if v != 0 && !(68..=65535).contains(&v) {
        return Err(format!("{s:?}: an MTU must be 0 (automatic) or 68..65535"));
    }
    Ok(v)
}

/// `install-cni` settings.
#[derive(Debug, Clone, Args)]
pub struct InstallCniArgs {
    /// Where the image keeps the CNI plugins it ships (`margay` and every
    /// plugin the shipped conflist chains).
    #[arg(long, env = "MARGAY_CNI_PLUGINS", default_value = "/opt/margay/cni")]
    pub plugins_dir: PathBuf,
    /// Host directory for CNI binaries.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Host directory for CNI configurations.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// File name of the conflist (runtimes load the first in name order).
    #[arg(long, default_value = "10-margay.conflist")]
    pub conf_name: String,
    /// The conflist (JSON).
    #[arg(long, env = "CNI_NETWORK_CONFIG")]
    pub network_config: String,
}

/// A socket address, or "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl std::str::FromStr for OptionalAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("none") || s.is_empty() {
            return Ok(OptionalAddr(None));
        }
        s.parse()
            .map(|a| OptionalAddr(Some(a)))
            .map_err(|e| format!("{s:?}: {e} (an address:port, or none)"))
    }
}

/// Parses "90s", "5m", "1h", "250ms" or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit (ms, s, m, h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: must be a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl AgentArgs {
    /// The VXLAN device settings.
    pub fn overlay_settings(&self) -> crate::overlay::Settings {
        let some = |v: u32| (v != 0).then_some(v);
        crate::overlay::Settings {
            vni: self.vxlan_vni,
            port: self.vxlan_port,
            mtu_v4: some(self.vxlan_mtu),
            mtu_v6: some(self.vxlan_mtu_v6),
            veth_mtu: some(self.veth_mtu),
        }
    }

    /// How to reach the API server.
    pub fn api_access(&self) -> crate::k8s::client::ApiAccess {
        crate::k8s::client::ApiAccess {
            kubeconfig: self.kubeconfig.clone(),
            api_server: self.api_server.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn defaults_and_env_style_flags_parse() {
        let cli = Cli::try_parse_from(["margay-node"]).expect("defaults");
        assert!(cli.command.is_none());
        assert!(matches!(cli.agent.ip_autodetection, Method::FirstFound));
        assert!(matches!(cli.agent.ip6_autodetection, Method::None));
        let cli = Cli::try_parse_from([
            "margay-node",
            "--node-name",
            "n1",
            "--ip-autodetection",
            "interface=eth0",
            "run",
        ])
        .expect("flags");
        assert_eq!(cli.agent.node_name.as_deref(), Some("n1"));
        assert!(matches!(cli.command, Some(Command::Run)));
        let none = Cli::try_parse_from(["margay-node", "--metrics-listen", "none"]).expect("none");
        assert_eq!(none.agent.metrics_listen, OptionalAddr(None));
        let dflt = Cli::try_parse_from(["margay-node"]).expect("defaults");
        assert_eq!(
            dflt.agent.metrics_listen,
            OptionalAddr(Some("0.0.0.0:9648".parse().expect("addr")))
        );
        assert_eq!(dflt.agent.health_listen.to_string(), "127.0.0.1:9647");
        let s = dflt.agent.overlay_settings();
        assert_eq!(s, crate::overlay::Settings::default());
        let v = Cli::try_parse_from([
            "margay-node",
            "--vxlan-vni",
            "7",
            "--vxlan-mtu",
            "1400",
            "--veth-mtu",
            "1300",
        ])
        .expect("vxlan flags");
        let s = v.agent.overlay_settings();
        assert_eq!(
            (s.vni, s.mtu_v4, s.mtu_v6, s.veth_mtu),
            (7, Some(1400), None, Some(1300))
        );
        for bad in [
            ["--vxlan-vni", "16777216"],
            ["--vxlan-mtu", "60"],
            ["--veth-mtu", "x"],
        ] {
            assert!(
                Cli::try_parse_from(["margay-node", bad[0], bad[1]]).is_err(),
                "{bad:?} accepted"
            );
        }
        use crate::k8s::cluster::PodSource;
        assert_eq!(dflt.agent.pod_source, PodSource::Pods);
        let ep = Cli::try_parse_from(["margay-node", "--pod-source", "endpoints"]).expect("ep");
        assert_eq!(ep.agent.pod_source, PodSource::Endpoints);
        assert!(Cli::try_parse_from(["margay-node", "--pod-source", "all"]).is_err());
        let err = Cli::try_parse_from(["margay-node", "--ip-autodetection", "guess"])
            .expect_err("bad method");
        assert!(err.to_string().contains("guess"), "{err}");
    }
}
