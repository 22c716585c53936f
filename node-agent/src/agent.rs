//! The running agent: wires the Kubernetes view, the node identity, health
//! and metrics (and, as they land, IPAM, BGP, routes and policy).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;

use crate::cluster::{self, Cluster};
use crate::config::AgentArgs;
use crate::health::{self, Health};
use crate::identity::{self, Chosen, Family};
use crate::metrics::Metrics;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration or environment problem found at start.
    #[error("{0}")]
    Startup(String),
    /// The API client could not be built.
    #[error(transparent)]
    Client(#[from] cluster::ClientError),
    /// An I/O error with context.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The node's identity as chosen at start.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Node name.
    pub name: String,
    /// Where the name came from.
    pub name_source: &'static str,
    /// IPv4 address and why.
    pub ipv4: Option<Chosen>,
    /// IPv6 address and why.
    pub ipv6: Option<Chosen>,
}

fn internal_ips(node: Option<&Node>) -> Vec<std::net::IpAddr> {
    node.and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Chooses name and addresses, logging each choice and its reason.
pub fn identify(args: &AgentArgs, cluster: &Cluster) -> Result<NodeIdentity, AgentError> {
    let (name, name_source) =
        identity::node_name(args.node_name.as_deref()).map_err(|e| AgentError::Io {
            what: "reading the host name".into(),
            source: e,
        })?;
    let node = cluster
        .nodes
        .get(&kube::runtime::reflector::ObjectRef::new(&name));
    if node.is_none() {
        tracing::warn!(node = %name, "no Node object with this name in the API (yet)");
    }
    let ips = internal_ips(node.as_deref());
    let addrs = identity::local_addresses().map_err(|e| AgentError::Io {
        what: "listing interface addresses".into(),
        source: e,
    })?;
    let pick = |method, family| {
        identity::choose(
            method,
            family,
            &addrs,
            &ips,
            identity::kernel_source_towards,
        )
        .map_err(|e| AgentError::Startup(e.to_string()))
    };
    let ipv4 = pick(&args.ip_autodetection, Family::V4)?;
    let ipv6 = pick(&args.ip6_autodetection, Family::V6)?;
    if ipv4.is_none() && ipv6.is_none() {
        return Err(AgentError::Startup(
            "no node address: both IPv4 and IPv6 autodetection are `none`".into(),
        ));
    }
    for (fam, c) in [("IPv4", &ipv4), ("IPv6", &ipv6)] {
        if let Some(c) = c {
            tracing::info!(node = %name, address = %c.addr, interface = c.ifname.as_deref().unwrap_or("-"), reason = %c.reason, "node {fam} address");
        }
    }
    Ok(NodeIdentity {
        name,
        name_source,
        ipv4,
        ipv6,
    })
}

/// Runs the agent until SIGTERM / SIGINT.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(args.startup_grace));
    let (bound, _health_task) =
        health::bind_and_serve(args.health_listen, health.clone(), metrics.clone())
            .await
            .map_err(|e| AgentError::Io {
                what: format!("binding the health endpoint {}", args.health_listen),
                source: e,
            })?;
    tracing::info!(%bound, "serving /livez /readyz /metrics");

    let client = cluster::client(args.api_server.as_deref()).await?;
    let (cluster, _watchers) = Cluster::start(client, metrics.clone());
    tracing::info!("waiting for the first list of every watched resource");
    cluster.wait_synced().await;
    health.set_datastore_synced(true);
    let me = identify(&args, &cluster)?;
    tracing::info!(node = %me.name, source = me.name_source, "agent started");

    shutdown_signal().await;
    tracing::info!("shutting down: routes and nftables state stay in place for the next start");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be killed; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    // Let in-flight CNI requests finish.
    tokio::time::sleep(Duration::from_millis(100)).await;
}
