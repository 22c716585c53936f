//! `margayctl`: inspect and operate Margay (see `node_agent::ctl`).

use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use node_agent::ctl::output::{Format, emit};
use node_agent::ctl::{self, CtlError, TraceQuery};

#[derive(Parser)]
#[command(name = "margayctl", version, about = "Inspect and operate Margay")]
struct Cli {
    /// The local agent's status endpoint.
    #[arg(
        long,
        env = "MARGAY_AGENT",
        default_value = "http://127.0.0.1:9647",
        global = true
    )]
    agent: String,
    /// API server URL (default: in-cluster config or KUBECONFIG).
    #[arg(long, env = "MARGAY_API_SERVER", global = true)]
    api_server: Option<String>,
    /// A kubeconfig with the operator's credentials (default: $KUBECONFIG
    /// or in-cluster).
    #[arg(long, env = "MARGAY_KUBECONFIG", global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Output format: table, wide (every column), json or yaml (the same
    /// fields, for scripts).
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    /// Same as `-o json`.
    #[arg(long, global = true, hide = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// This node.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// IP address management.
    Ipam {
        #[command(subcommand)]
        cmd: IpamCmd,
    },
    /// NetworkPolicy.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// This node's BGP speaker.
    Bgp {
        #[command(subcommand)]
        cmd: BgpCmd,
    },
}

#[derive(Subcommand)]
enum BgpCmd {
    /// The RIB: every path with next hop, peer, AS path and communities.
    Routes {
        /// Only prefixes that start with this text ("198.19.", "2001:db8:").
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Node address (and why it was chosen), readiness, BGP peers.
    Status,
}

#[derive(Subcommand)]
enum IpamCmd {
    /// Pool usage; with --show-blocks every block; with --ip one address.
    Show {
        /// List blocks too.
        #[arg(long)]
        show_blocks: bool,
        /// Look up one address.
        #[arg(long)]
        ip: Option<IpAddr>,
    },
    /// Leaks, orphans and inconsistencies; exits 1 when something is wrong.
    Check,
    /// Free one address (refused while its pod exists).
    Release {
        /// The address.
        #[arg(long)]
        ip: IpAddr,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Every policy rule on this node with its packet/byte counters, read
    /// from the kernel (`nft`; run on the node, as root).
    Show,
    /// Whether a new connection between two pods is allowed, and by what.
    ///
    /// By default from the cluster's objects (the API server). With
    /// --dataplane, on the source's node: the local agent walks its ruleset
    /// (the model), sends one probe from the source pod, names the nft
    /// rules whose counters it moved, and says whether the two agree.
    Trace {
        /// Source, namespace/pod (with --dataplane also a pod address; the
        /// pod must run on this node).
        #[arg(long)]
        from: String,
        /// Destination, namespace/pod (with --dataplane also an address).
        #[arg(long)]
        to: String,
        /// PORT/PROTOCOL (80/TCP, 53/UDP) or icmp (not with --dataplane).
        #[arg(long, default_value = "80/TCP")]
        port: String,
        /// Ask the local agent (--agent) to trace through the kernel too;
        /// exits 1 when model and kernel disagree.
        #[arg(long)]
        dataplane: bool,
    },
}

async fn run(cli: Cli) -> Result<ExitCode, CtlError> {
    let client = || async {
        node_agent::k8s::client::client(&node_agent::k8s::client::ApiAccess {
            kubeconfig: cli.kubeconfig.clone(),
            api_server: cli.api_server.clone(),
        })
        .await
        .map_err(|e| CtlError::Usage(node_agent::logging::chain(&e)))
    };
    let format = if cli.json { Format::Json } else { cli.output };
    let out = |text: String| {
        print!("{text}");
        Ok(ExitCode::SUCCESS)
    };
    match cli.cmd {
        Cmd::Node {
            cmd: NodeCmd::Status,
        } => {
            let v = agent_status(&cli.agent).await?;
            out(emit(format, &v, |_| ctl::render_node_status(&v))?)
        }
        Cmd::Bgp {
            cmd: BgpCmd::Routes { prefix },
        } => {
            let mut v = agent_status(&cli.agent).await?;
            if let Some(p) = prefix.as_deref()
                && let Some(routes) = v["bgp_routes"]["routes"].as_array_mut()
            {
                routes.retain(|r| r["prefix"].as_str().is_some_and(|s| s.starts_with(p)));
            }
            let text = emit(format, &v["bgp_routes"], |_| {
                node_agent::status::bgp_routes::render(&v, prefix.as_deref())
            })?;
            out(text)
        }
        Cmd::Ipam { cmd } => {
            let c = client().await?;
            match cmd {
                IpamCmd::Show { show_blocks, ip } => match ip {
                    Some(ip) => {
                        let i = ctl::ipam_lookup(&c, ip).await?;
                        out(emit(format, &i, |_| ctl::render_ip_info(&i))?)
                    }
                    None => {
                        let blocks = show_blocks || format.wide();
                        let s = ctl::ipam_show(&c, blocks).await?;
                        out(emit(format, &s, |wide| {
                            ctl::render_ipam_show(&s, blocks, wide)
                        })?)
                    }
                },
                IpamCmd::Check => {
                    let r = ctl::ipam_check(&c).await?;
                    print!("{}", emit(format, &r, |_| ctl::render_ipam_check(&r))?);
                    Ok(if r.clean {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
                IpamCmd::Release { ip } => {
                    let r = ctl::ipam_release(&c, ip).await?;
                    out(emit(format, &r, |_| r.to_string())?)
                }
            }
        }
        Cmd::Policy {
            cmd: PolicyCmd::Show,
        } => match node_agent::dataplane::NftCli::new().rule_counters() {
            Ok(counters) => out(policy::counters::render_show(&counters)),
            Err(e) => {
                eprintln!(
                    "margayctl: reading the policy rules with nft (run it on the node, as root): {}",
                    node_agent::logging::chain(&e)
                );
                Ok(ExitCode::from(2))
            }
        },
        Cmd::Policy {
            cmd:
                PolicyCmd::Trace {
                    from,
                    to,
                    port,
                    dataplane: true,
                },
        } => {
            let t = ctl::dataplane::dataplane_trace(&cli.agent, &from, &to, &port).await?;
            print!(
                "{}",
                emit(format, &t, |wide| ctl::dataplane::render_dataplane(
                    &t, wide
                ))?
            );
            Ok(if t.agree {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Policy {
            cmd:
                PolicyCmd::Trace {
                    from,
                    to,
                    port,
                    dataplane: false,
                },
        } => {
            let q = TraceQuery {
                from: ctl::parse_pod(&from)?,
                to: ctl::parse_pod(&to)?,
                l4: ctl::parse_port(&port)?,
            };
            let t = ctl::policy_trace(&client().await?, &q).await?;
            out(emit(format, &t, |_| ctl::render_trace(&t))?)
        }
    }
}

/// The agent's `/status` document.
async fn agent_status(agent: &str) -> Result<serde_json::Value, CtlError> {
    let url = format!("{}/status", agent.trim_end_matches('/'));
    let body = ctl::http_get(&url).await?;
    serde_json::from_str(&body).map_err(|e| CtlError::Agent {
        url,
        reason: format!("not JSON: {e}"),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("margayctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("margayctl: {}", node_agent::logging::chain(&e));
            ExitCode::from(2)
        }
    }
}
