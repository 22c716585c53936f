//! The running agent: wires the Kubernetes view, the node identity, health
//! and metrics (and, as they land, IPAM, BGP, routes and policy).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;

use crate::cluster::{self, Cluster};
use crate::config::AgentArgs;
use crate::controller;
use crate::endpoints::EndpointsService;
use crate::health::{self, Health, Pulse};
use crate::identity::{self, Chosen, Family};
use crate::ipam_store::KubeStore;
use crate::ipamview::{self, IpamView};
use crate::localroutes::LocalRoutes;
use crate::metrics::Metrics;
use crate::routing_task;

/// How long in-flight CNI requests may take to finish at shutdown.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration or environment problem found at start.
    #[error("{0}")]
    Startup(String),
    /// The API client could not be built.
    #[error(transparent)]
    Client(#[from] cluster::ClientError),
    /// IPAM could not start (the API server is unreachable, ...).
    #[error("IPAM: {0}")]
    Ipam(#[from] ipam::IpamError),
    /// The CNI socket could not be served.
    #[error("CNI socket: {0}")]
    Socket(#[from] ipam::grpc::ServeError),
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

/// Hands the `default` IPAMConfiguration (or the defaults without one) to
/// the allocator.
async fn apply_ipam_config(cluster: &Cluster, alloc: &ipam::Allocator) -> Result<(), ()> {
    let config = cluster
        .ipam_configs
        .get(&kube::runtime::reflector::ObjectRef::new(
            crate::crd::IPAM_CONFIGURATION_NAME,
        ))
        .map(|c| c.spec.clone())
        .unwrap_or_default();
    tracing::info!(?config, "IPAM configuration");
    alloc.set_config(config.to_model()).await.map_err(|_| ())
}

/// Keeps the allocator's pools and node labels current: a new, changed or
/// disabled IPPool, or a relabelled Node, applies at once (not at the next
/// failed allocation).
async fn feed_allocator(cluster: Cluster, alloc: ipam::Allocator, me: String, mut pulse: Pulse) {
    let mut gens = cluster.subscribe();
    let mut seen = gens.borrow().clone();
    // The configuration listed before this task started; changes follow.
    if apply_ipam_config(&cluster, &alloc).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            changed = gens.changed() => if changed.is_err() { return pulse.retire() },
            () = pulse.tick() => continue,
        }
        let now = gens.borrow().clone();
        let moved = now.changed_since(&seen);
        seen = now;
        if moved.contains(&crate::cluster::Kind::IpamConfiguration)
            && apply_ipam_config(&cluster, &alloc).await.is_err()
        {
            return;
        }
        if moved.contains(&crate::cluster::Kind::IpPool) {
            let pools: Vec<ipam::PoolObject> = oldest_first(cluster.pools.state())
                .iter()
                .filter_map(|p| match crate::ipam_store::pool_to_model(p) {
                    Ok(o) => Some(o),
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring invalid IPPool");
                        None
                    }
                })
                .collect();
            tracing::info!(pools = pools.len(), "IP pools changed");
            if alloc.set_pools(pools).await.is_err() {
                return;
            }
        }
        if moved.contains(&crate::cluster::Kind::Node) {
            let labels = cluster
                .nodes
                .get(&kube::runtime::reflector::ObjectRef::new(&me))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            if alloc
                .set_node_labels(labels.into_iter().collect())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn identity_json(me: &NodeIdentity) -> serde_json::Value {
    let addr = |c: &Option<Chosen>| {
        c.as_ref().map(|c| {
            serde_json::json!({
                "address": c.addr.to_string(),
                "interface": c.ifname,
                "reason": c.reason,
            })
        })
    };
    serde_json::json!({
        "name": me.name,
        "name_source": me.name_source,
        "ipv4": addr(&me.ipv4),
        "ipv6": addr(&me.ipv6),
    })
}

/// Runs the agent until SIGTERM / SIGINT.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::new());
    // Per-rule policy counters: read from the kernel at each scrape (one
    // `nft -j list table` per Margay table, a few ms).
    metrics.set_extra(Box::new(|| {
        match crate::dataplane::NftCli::new().rule_counters() {
            Ok(c) => policy::counters::openmetrics(&policy::counters::totals(&c)),
            Err(e) => {
                tracing::debug!(error = %e, "policy rule counters unavailable");
                String::new()
            }
        }
    }));
    let health = Arc::new(Health::new(args.startup_grace).with_loop_period(args.loop_period));
    let (bound, _health_task) = health::bind_and_serve(
        args.health_listen,
        health.clone(),
        metrics.clone(),
        health::Exposure::All,
    )
    .await
    .map_err(|e| AgentError::Io {
        what: format!("binding the health endpoint {}", args.health_listen),
        source: e,
    })?;
    tracing::info!(%bound, "serving /livez /readyz /status /metrics");
    let _metrics_task = match args.metrics_listen.0 {
        Some(addr) => {
            let (bound, task) = health::bind_and_serve(
                addr,
                health.clone(),
                metrics.clone(),
                health::Exposure::MetricsOnly,
            )
            .await
            .map_err(|e| AgentError::Io {
                what: format!("binding the metrics endpoint {addr}"),
                source: e,
            })?;
            tracing::info!(%bound, "serving /metrics");
            Some(task)
        }
        None => None,
    };

    let client = cluster::client(&args.api_access()).await?;
    let (cluster, _watchers) = Cluster::start(client, metrics.clone(), &health);
    tracing::info!("waiting for the first list of every watched resource");
    cluster.wait_synced().await;
    health.set_datastore_synced(true);
    let me = identify(&args, &cluster)?;
    let labels = cluster
        .nodes
        .get(&kube::runtime::reflector::ObjectRef::new(&me.name))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();

    // Denied-flow logging: log rules in the policy chains, read over NFLOG
    // by a thread of its own (the socket blocks), one JSON line per packet.
    let deny_log = args.policy_log_denied.then(|| policy::flowlog::DenyLog {
        group: args.policy_log_group,
        ..Default::default()
    });

    // Host protection (HostEndpoint / HostNetworkPolicy → inet margay_host).
    let _host_protection = if args.host_protection {
        let failsafe = crate::hostprotect::failsafe(&args)
            .map_err(|e| AgentError::Startup(format!("host protection: {e}")))?;
        Some(tokio::spawn(crate::hostprotect::run(
            cluster.client(),
            policy::host::HostConfig {
                node: me.name.clone(),
                iface_prefix: "cali".into(),
                failsafe,
                deny_log: None,
            },
        )))
    } else {
        None
    };

    // IPAM on the CRDs; the allocator follows the block watch, and so does
    // the view the dataplane (and BGP) consume.
    let store: Arc<dyn ipam::Store> = Arc::new(KubeStore::new(cluster.client(), metrics.clone()));
    let alloc = ipam::Allocator::start(
        store.clone(),
        ipam::NodeInfo {
            name: me.name.clone(),
            labels: labels.into_iter().collect(),
        },
        ipam::IpamConfig::default(),
        ipam::AllocatorOptions::default(),
        Arc::new(ipam::SystemClock),
    )
    .await?;
    let _follow = alloc.follow_block_watch(store.clone());
    let _pools = tokio::spawn(feed_allocator(
        cluster.clone(),
        alloc.clone(),
        me.name.clone(),
        health.pulse("ipam pools"),
    ));
    let (view_tx, view_rx) = tokio::sync::watch::channel(Arc::new(IpamView::default()));
    let _view_task = tokio::spawn(ipamview::run(
        store.clone(),
        me.name.clone(),
        view_tx,
        health.pulse("ipam view"),
    ));

    if let Some(log) = deny_log {
        let pods = crate::policyctl::PodsByIp {
            pods: cluster.pods.clone(),
            view: view_rx.clone(),
        };
        start_flow_log(log, &args.policy_log_file, pods)?;
    }

    // The local dataplane (routes now; policy next) and the CNI socket.
    let routes = LocalRoutes::connect().map_err(|e| AgentError::Io {
        what: "opening netlink".into(),
        source: e,
    })?;
    let node_addrs: Vec<std::net::IpAddr> = [&me.ipv4, &me.ipv6]
        .into_iter()
        .flatten()
        .map(|c| c.addr.ip())
        .collect();
    let view_rx_maint = view_rx.clone();
    let (releases, released) = tokio::sync::mpsc::unbounded_channel();
    let _releaser = tokio::spawn(release_superseded(
        alloc.clone(),
        released,
        health.pulse("superseded releases"),
    ));
    // The pods' MTU, as the overlay task (below) works it out: every
    // Allocate answer carries it to the CNI plugin, and a repaired veth
    // gets it.
    let (mtu_tx, mtu_rx) = tokio::sync::watch::channel(0u32);
    let (ctl, _ctl_task) = controller::start(controller::ControllerDeps {
        pod_mtu: mtu_rx.clone(),
        records: crate::attachments::Records::new(args.state_dir.join("endpoints")),
        releases,
        reconcile_interval: args.reconcile_interval,
        routes,
        policy: {
            let mut p = crate::policyctl::PolicySync::new(&me.name, node_addrs);
            if let Some(log) = deny_log {
                p.set_deny_log(Some(log));
            }
            p
        },
        cluster: cluster.clone(),
        view: view_rx.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
    });

    // BGP: mesh / BGPPeers, originate our blocks, best paths into the FIB.
    health.set_status("node", identity_json(&me));
    let _routing = tokio::spawn(routing_task::run(routing_task::RoutingDeps {
        cluster: cluster.clone(),
        view: view_rx.clone(),
        me: me.clone(),
        secrets_namespace: args.namespace.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        reconcile_after: args.startup_grace,
    }));
    // The VXLAN overlay (pools with vxlanMode), and the pods' MTU.
    let _overlay = tokio::spawn(crate::overlay::task::run(
        crate::overlay::task::OverlayDeps {
            cluster: cluster.clone(),
            view: view_rx.clone(),
            alloc: alloc.clone(),
            me: me.clone(),
            settings: args.overlay_settings(),
            mtu: mtu_tx,
            health: health.clone(),
            reconcile_interval: args.reconcile_interval,
        },
    ));
    let ctl_replay = ctl.clone();
    let listener = ipam::grpc::UdsListener::bind(&args.socket).await?;
    let confirmations = crate::confirm::Confirmations::default();
    let grpc_routes = tonic::service::Routes::new(crate::ipam_ops::AgentIpam::server(
        alloc.clone(),
        cluster.clone(),
        metrics.clone(),
        Some(ctl.clone()),
        confirmations.clone(),
        mtu_rx,
    ))
    .add_service(EndpointsService::server(
        ctl.clone(),
        metrics.clone(),
        confirmations,
    ));
    let _maintain = tokio::spawn(crate::ipam_ops::maintain(
        crate::ipam_ops::Maintenance {
            cluster: cluster.clone(),
            store: store.clone(),
            alloc: alloc.clone(),
            view: view_rx_maint,
            me: me.name.clone(),
            metrics: metrics.clone(),
            opts: crate::ipam_ops::MaintainOptions {
                interval: args.ipam_gc_interval,
                gc_grace: args.ipam_gc_grace,
            },
        },
        health.pulse("ipam maintenance"),
    ));
    // DELs that ran while this agent was away.
    let journal_dir = args
        .cni_journal_dir
        .clone()
        .unwrap_or_else(|| args.state_dir.join("cni-journal"));
    let _replay = tokio::spawn(
        crate::journal_replay::Replay {
            dir: journal_dir,
            controller: ctl_replay,
            alloc: alloc.clone(),
            period: args.reconcile_interval,
        }
        .run(health.pulse("cni journal replay")),
    );
    tracing::info!(node = %me.name, source = me.name_source, socket = %args.socket.display(), "agent started");

    // On SIGTERM stop accepting, give requests in flight a moment, then go
    // even if a client keeps its connection open.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = listener.serve(grpc_routes, async {
        let _ = stop_rx.await;
    });
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        res = &mut serve => res?,
        () = shutdown_signal() => {
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_DRAIN, &mut serve).await {
                Ok(res) => res?,
                Err(_) => tracing::warn!("CNI connections still open after {SHUTDOWN_DRAIN:?}; closing them"),
            }
        }
    }
    // Queued IPAM work finishes; routes and nftables state stay in the
    // kernel for the next start (the datapath keeps forwarding meanwhile).
    let _ = tokio::time::timeout(Duration::from_secs(5), alloc.wait_idle()).await;
    tracing::info!("stopped: routes and nftables state stay in place for the next start");
    Ok(())
}

/// Releases the handles the controller found superseded by a new sandbox
/// of their pod. A failed release is only logged: the controller finds the
/// allocation again at its next reconcile.
async fn release_superseded(
    alloc: ipam::Allocator,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    mut pulse: Pulse,
) {
    loop {
        let handle = tokio::select! {
            h = rx.recv() => match h {
                Some(h) => h,
                None => return pulse.retire(),
            },
            () = pulse.tick() => continue,
        };
        match alloc.release(&handle).await {
            Ok(ips) if !ips.is_empty() => {
                tracing::info!(handle = %handle, released = ?ips, "superseded sandbox's addresses released")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(handle = %handle, error = %e, "releasing a superseded sandbox's addresses failed; retried at the next reconcile")
            }
        }
    }
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
}

/// Pools in creation order (then by name): where two overlap, the IPAM keeps
/// the first and reports the other, so every node must see them in the same
/// order, and the pool that was there first keeps serving.
fn oldest_first(
    mut pools: Vec<std::sync::Arc<crate::crd::IPPool>>,
) -> Vec<std::sync::Arc<crate::crd::IPPool>> {
    pools.sort_by(|a, b| {
        let key = |p: &crate::crd::IPPool| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone(),
            )
        };
        // Objects without a timestamp (never from a real server) sort last.
        match (key(a), key(b)) {
            ((Some(x), n), (Some(y), m)) => x.cmp(&y).then(n.cmp(&m)),
            ((Some(_), _), (None, _)) => std::cmp::Ordering::Less,
            ((None, _), (Some(_), _)) => std::cmp::Ordering::Greater,
            ((None, n), (None, m)) => n.cmp(&m),
        }
    });
    pools
}

/// Opens the NFLOG socket (here, in the agent's namespace) and the record
/// file, and reads denied packets on a thread of its own.
fn start_flow_log(
    log: policy::flowlog::DenyLog,
    file: &std::path::Path,
    pods: crate::policyctl::PodsByIp,
) -> Result<(), AgentError> {
    let mut sock = crate::dataplane::nflog::NflogSocket::bind(log.group).map_err(|e| {
        AgentError::Startup(format!(
            "denied-flow logging: {}",
            crate::logging::chain(&e)
        ))
    })?;
    let mut out: Box<dyn std::io::Write + Send> = if file.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map_err(|source| AgentError::Io {
                what: format!("opening the denied-flow log {}", file.display()),
                source,
            })?;
        Box::new(std::io::LineWriter::new(f))
    };
    tracing::info!(group = log.group, file = %file.display(), "logging denied flows");
    std::thread::Builder::new()
        .name("nflog".into())
        .spawn(move || {
            if let Err(e) = crate::dataplane::nflog::run(&mut sock, &pods, &mut out, || false) {
                tracing::warn!(error = %crate::logging::chain(&e), "denied-flow logging stopped");
            }
        })
        .map_err(|source| AgentError::Io {
            what: "starting the denied-flow log thread".into(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod pool_order_tests {
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::oldest_first;
    use crate::crd::{IPPool, IPPoolSpec};

    fn pool(name: &str, created: Option<i64>) -> Arc<IPPool> {
        let mut p = IPPool::new(
            name,
            serde_json::from_value::<IPPoolSpec>(serde_json::json!({"cidr": "198.19.0.0/16"}))
                .expect("spec"),
        );
        p.metadata.creation_timestamp =
            created.map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("time")));
        Arc::new(p)
    }

    #[test]
    fn overlapping_pools_are_ordered_the_same_on_every_node() {
        let a = pool("zz-old", Some(100));
        let b = pool("aa-new", Some(200));
        let c = pool("bb-new", Some(200));
        let d = pool("no-time", None);
        for input in [
            vec![b.clone(), d.clone(), a.clone(), c.clone()],
            vec![d.clone(), c.clone(), b.clone(), a.clone()],
        ] {
            let names: Vec<_> = oldest_first(input)
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
            assert_eq!(names, ["zz-old", "aa-new", "bb-new", "no-time"]);
        }
    }
}
