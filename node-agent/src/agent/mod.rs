//! The running agent: wires the folders together and supervises their
//! tasks ([`supervisor`]); the command line is [`config`], the init
//! container's step [`install_cni`].
//!
//! ```text
//!  start: health endpoint ─► API client ─► watchers (k8s::cluster) ─► first lists
//!         ─► node identity ─► IPAM (allocator, view, pools, GC)
//!         ─► endpoints controller + releaser ─► routing ─► overlay
//!         ─► CNI socket (cni_api) + journal replay
//!  run:   serve the CNI socket until SIGTERM / SIGINT, or until a task
//!         takes the agent down (the supervisor's verdict)
//!  stop:  stop accepting, drain, let queued IPAM writes finish; routes and
//!         nftables stay in the kernel for the next start
//! ```
//!
//! Every task runs under the [`supervisor::Supervisor`]: the ones that own
//! what they cannot give back (a channel's receiving end, a bound socket, a
//! reflector's store) are critical, the others restart with backoff.

pub mod config;
pub mod hostprotect;
pub mod install_cni;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::endpoints::{self, ControllerHandle};
use crate::k8s::client::{self, ClientError};
use crate::k8s::cluster::Cluster;
use crate::k8s::ipam::store::KubeStore;
use crate::k8s::ipam::view::{self, IpamView};
use crate::k8s::ipam::{gc, pools};
use crate::k8s::node::autodetect::Chosen;
use crate::k8s::node::{self, NodeIdentity};
use crate::status::health::Health;
use crate::status::http::{self, Exposure};
use crate::status::metrics::Metrics;
use config::AgentArgs;
use supervisor::{Supervisor, TaskEnded};

/// How long in-flight CNI requests may take to finish at shutdown.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration or environment problem found at start.
    #[error("{0}")]
    Startup(String),
    /// This node's name or address could not be chosen.
    #[error(transparent)]
    Identity(#[from] node::IdentityError),
    /// The API client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// IPAM could not start (the API server is unreachable, ...).
    #[error("IPAM: {0}")]
    Ipam(#[from] ipam::IpamError),
    /// The CNI socket could not be served.
    #[error("CNI socket: {0}")]
    Socket(#[from] cni_proto::uds::ServeError),
    /// A supervised task ended and took the agent down.
    #[error(transparent)]
    Task(#[from] TaskEnded),
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

/// Binds the health endpoint (and the metrics-only one) and serves them
/// as critical tasks.
async fn serve_health(
    sup: &mut Supervisor,
    args: &AgentArgs,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Result<(), AgentError> {
    let listeners = [
        (Some(args.health_listen), Exposure::All, "health endpoint"),
        (
            args.metrics_listen.0,
            Exposure::MetricsOnly,
            "metrics endpoint",
        ),
    ];
    for (addr, exposure, name) in listeners {
        let Some(addr) = addr else { continue };
        let io = |source| AgentError::Io {
            what: format!("binding the {name} {addr}"),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(io)?;
        let bound = listener.local_addr().map_err(io)?;
        match exposure {
            Exposure::All => tracing::info!(%bound, "serving /livez /readyz /status /metrics"),
            Exposure::MetricsOnly => tracing::info!(%bound, "serving /metrics"),
        }
        let (h, m) = (health.clone(), metrics.clone());
        sup.critical(name, move |pulse| {
            // An accept loop: the supervisor watches the task, no pulse.
            pulse.retire();
            http::serve(listener, h, m, exposure)
        });
    }
    Ok(())
}

/// Runs the agent until SIGTERM / SIGINT, or until a supervised task takes
/// it down.
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
    let mut sup = Supervisor::new(health.clone());
    serve_health(&mut sup, &args, &health, &metrics).await?;

    let client = client::client(&args.api_access()).await?;
    // The Pod watch of `--pod-source=endpoints` is this node's (by name).
    let (name, _) = crate::k8s::node::autodetect::node_name(args.node_name.as_deref())
        .map_err(|e| AgentError::Startup(format!("this node's name: {e}")))?;
    tracing::info!(pod_source = ?args.pod_source, "where the pods of other nodes come from");
    let (cluster, watchers) = Cluster::start(client, metrics.clone(), args.pod_source, &name);
    for w in watchers {
        sup.critical(w.name, w.run);
    }
    tracing::info!("waiting for the first list of every watched resource");
    sup.during(cluster.wait_synced()).await?;
    health.set_datastore_synced(true);
    let me = node::identify(
        args.node_name.as_deref(),
        &args.ip_autodetection,
        &args.ip6_autodetection,
        &cluster,
    )?;
    health.set_status("node", identity_json(&me));
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
    if args.host_protection {
        let failsafe = hostprotect::failsafe(&args)
            .map_err(|e| AgentError::Startup(format!("host protection: {e}")))?;
        let (client, node) = (cluster.client(), me.name.clone());
        sup.restarting("host protection", move |pulse| {
            // Its loop keeps no pulse of its own: the supervisor watches it.
            pulse.retire();
            hostprotect::run(
                client.clone(),
                policy::host::HostConfig {
                    node: node.clone(),
                    iface_prefix: "cali".into(),
                    failsafe: failsafe.clone(),
                    deny_log: None,
                },
            )
        });
    }

    // ANP/BANP `Accepted` conditions: one writer, elected by a Lease.
    if args.policy_status {
        let (cluster, cfg) = (
            cluster.clone(),
            crate::k8s::policystatus::StatusConfig {
                namespace: args.namespace.clone(),
                node: me.name.clone(),
                lease_duration: args.policy_status_lease,
            },
        );
        sup.restarting("policy status", move |pulse| {
            pulse.retire();
            crate::k8s::policystatus::run(cluster.clone(), cfg.clone())
        });
    }

    // IPAM on the CRDs; the allocator follows the block watch, and so does
    // the view the dataplane (and BGP) consume.
    let store: Arc<dyn ipam::Store> = Arc::new(KubeStore::new(cluster.client(), metrics.clone()));
    // The allocator's blocks come from the view's watch (below): one list
    // of the cluster's blocks per start, not two.
    let alloc = ipam::Allocator::spawn(
        store.clone(),
        ipam::NodeInfo {
            name: me.name.clone(),
            labels: labels.into_iter().collect(),
        },
        ipam::IpamConfig::default(),
        ipam::AllocatorOptions {
            blocks_from_watch: true,
            ..Default::default()
        },
        Arc::new(ipam::SystemClock),
    );
    {
        let (cluster, alloc, me) = (cluster.clone(), alloc.clone(), me.name.clone());
        sup.restarting("ipam pools", move |pulse| {
            pools::feed_allocator(cluster.clone(), alloc.clone(), me.clone(), pulse)
        });
    }
    let (view_tx, view_rx) = watch::channel(Arc::new(IpamView::default()));
    {
        // One block watch for the view and the allocator's cache.
        let (store, me, tx) = (store.clone(), me.name.clone(), Arc::new(view_tx));
        let feed = alloc.clone();
        sup.restarting("ipam view", move |pulse| {
            view::run(
                store.clone(),
                me.clone(),
                tx.clone(),
                Some(feed.clone()),
                pulse,
            )
        });
    }
    tracing::info!("waiting for the IPAM allocator's first list of pools and blocks");
    sup.during(wait_allocator_ready(&alloc)).await?;

    // This node's pods as compact PodEndpoints (docs/scale.md §4).
    {
        let (client, view, me) = (cluster.client(), view_rx.clone(), me.name.clone());
        sup.restarting("pod endpoints", move |pulse| {
            crate::k8s::podendpoints::run(client.clone(), view.clone(), me.clone(), pulse)
        });
    }

    if let Some(log) = deny_log {
        let pods = endpoints::policy::PodsByIp {
            pods: cluster.pods.clone(),
            endpoints: cluster.pod_endpoints.clone(),
            view: view_rx.clone(),
        };
        start_flow_log(log, &args.policy_log_file, pods)?;
    }

    // This node's pods: their routes and policy, and the releases of
    // superseded sandboxes' addresses.
    let routes =
        crate::dataplane::local_routes::LocalRoutes::connect().map_err(|e| AgentError::Io {
            what: "opening netlink".into(),
            source: e,
        })?;
    let node_addrs: Vec<std::net::IpAddr> = [&me.ipv4, &me.ipv6]
        .into_iter()
        .flatten()
        .map(|c| c.addr.ip())
        .collect();
    // Addresses reserved ahead of demand (see `ipam::reserve`). Recovery
    // maps the units a pod took before a restart to that pod through the
    // endpoint records (the endpoints that went up).
    let reserve = ipam::reserve::Reserve::new(
        alloc.clone(),
        ipam::reserve::ReserveOptions::with_size(args.ipam_reserve),
    );
    if reserve.enabled() {
        let in_use = endpoints::attachments::Records::new(args.state_dir.join("endpoints"))
            .load()
            .into_iter()
            .map(|ep| ipam::reserve::InUse {
                attrs: ipam::model::AllocationAttrs {
                    pod: (!ep.pod.is_empty()).then(|| ep.pod.clone()),
                    namespace: (!ep.namespace.is_empty()).then(|| ep.namespace.clone()),
                    node: None,
                },
                handle: ep.handle,
                ips: ep.ips,
            })
            .collect();
        // Ends when the last clone of the reserve (the gRPC services') goes.
        drop(reserve.start(in_use));
        let (r, m) = (reserve.clone(), metrics.clone());
        sup.restarting("ipam reserve metrics", move |pulse| {
            pulse.retire();
            crate::cni_api::ipam::reserve_metrics(r.clone(), m.clone(), Duration::from_secs(5))
        });
        tracing::info!(units = args.ipam_reserve, "IPAM reserve on");
    }
    let (releases, released) = tokio::sync::mpsc::unbounded_channel();
    {
        let alloc = reserve.clone();
        sup.critical("superseded releases", move |pulse| {
            endpoints::releaser::run(alloc, released, pulse)
        });
    }
    // The pods' MTU, as the overlay task (below) works it out: every
    // Allocate answer carries it to the CNI plugin, and a repaired veth
    // gets it.
    let (mtu_tx, mtu_rx) = watch::channel(0u32);
    let (ctl, ctl_rx) = ControllerHandle::channel(endpoints::QUEUE);
    let deps = endpoints::ControllerDeps {
        pod_mtu: mtu_rx.clone(),
        records: endpoints::attachments::Records::new(args.state_dir.join("endpoints")),
        releases,
        reconcile_interval: args.reconcile_interval,
        routes,
        policy: {
            let mut p = endpoints::policy::PolicySync::new(&me.name, node_addrs);
            if let Some(log) = deny_log {
                p.set_deny_log(Some(log));
            }
            p
        },
        cluster: cluster.clone(),
        view: view_rx.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
    };
    sup.critical("dataplane controller", move |pulse| {
        endpoints::run(deps, ctl_rx, pulse)
    });
    // `margayctl policy trace --dataplane` asks the loopback listener.
    {
        let ctl = ctl.clone();
        health.set_tracer(crate::status::tracer::Tracer::new(move |q| {
            let ctl = ctl.clone();
            Box::pin(async move { endpoints::trace::http_answer(&ctl, q).await })
        }));
    }

    // BGP: mesh / BGPPeers, originate our blocks, best paths into the FIB.
    let routing = crate::routing::task::RoutingDeps {
        cluster: cluster.clone(),
        view: view_rx.clone(),
        me: me.clone(),
        secrets_namespace: args.namespace.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        reconcile_after: args.startup_grace,
    };
    sup.restarting("routing", move |pulse| {
        crate::routing::task::run(routing.clone(), pulse)
    });
    // The VXLAN overlay (pools with vxlanMode), and the pods' MTU.
    let overlay = crate::overlay::task::OverlayDeps {
        cluster: cluster.clone(),
        view: view_rx.clone(),
        alloc: alloc.clone(),
        me: me.clone(),
        settings: args.overlay_settings(),
        mtu: Arc::new(mtu_tx),
        health: health.clone(),
        reconcile_interval: args.reconcile_interval,
    };
    sup.restarting("overlay", move |pulse| {
        crate::overlay::task::run(overlay.clone(), pulse)
    });

    // The CNI socket.
    let listener = cni_proto::uds::UdsListener::bind(&args.socket).await?;
    let confirmations = crate::cni_api::confirm::Confirmations::default();
    let grpc_routes = tonic::service::Routes::new(crate::cni_api::ipam::AgentIpam::server(
        alloc.clone(),
        cluster.clone(),
        metrics.clone(),
        Some(ctl.clone()),
        confirmations.clone(),
        mtu_rx,
        reserve.enabled().then(|| reserve.clone()),
    ))
    .add_service(crate::cni_api::endpoints::EndpointsService::server(
        ctl.clone(),
        metrics.clone(),
        confirmations,
        reserve.enabled().then(|| reserve.clone()),
    ));
    let maintenance = gc::Maintenance {
        cluster: cluster.clone(),
        alloc: alloc.clone(),
        view: view_rx,
        me: me.name.clone(),
        metrics: metrics.clone(),
        opts: gc::MaintainOptions {
            interval: args.ipam_gc_interval,
            gc_grace: args.ipam_gc_grace,
        },
    };
    sup.restarting("ipam maintenance", move |pulse| {
        gc::maintain(maintenance.clone(), pulse)
    });
    // DELs that ran while this agent was away.
    let replay = crate::cni_api::journal_replay::Replay {
        dir: args
            .cni_journal_dir
            .clone()
            .unwrap_or_else(|| args.state_dir.join("cni-journal")),
        controller: ctl,
        ipam: reserve.clone(),
        period: args.reconcile_interval,
    };
    sup.restarting("cni journal replay", move |pulse| replay.clone().run(pulse));
    tracing::info!(node = %me.name, source = me.name_source, socket = %args.socket.display(), tasks = sup.len(), "agent started");

    // On SIGTERM stop accepting, give requests in flight a moment, then go
    // even if a client keeps its connection open.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // A task of its own, on the worker threads: the future `block_on` runs
    // is polled on the main thread, so every accepted connection (one per
    // CNI call) cost a wake-up of that thread from the worker that saw it.
    let mut serve = tokio::spawn(listener.serve(grpc_routes, async {
        let _ = stop_rx.await;
    }));
    let served = |res: Result<Result<(), cni_proto::uds::ServeError>, tokio::task::JoinError>| {
        res.map_err(|e| AgentError::Startup(format!("the CNI socket's server task: {e}")))?
            .map_err(AgentError::from)
    };
    tokio::select! {
        res = &mut serve => served(res)?,
        ended = sup.wait() => {
            let _ = stop_tx.send(());
            return Err(ended.into());
        }
        () = shutdown_signal() => {
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_DRAIN, &mut serve).await {
                Ok(res) => served(res)?,
                Err(_) => {
                    serve.abort();
                    tracing::warn!("CNI connections still open after {SHUTDOWN_DRAIN:?}; closing them");
                }
            }
        }
    }
    // Queued IPAM work finishes; routes and nftables state stay in the
    // kernel for the next start (the datapath keeps forwarding meanwhile).
    let _ = tokio::time::timeout(Duration::from_secs(5), alloc.wait_idle()).await;
    tracing::info!("stopped: routes and nftables state stay in place for the next start");
    Ok(())
}

/// Opens the NFLOG socket (here, in the agent's namespace) and the record
/// file, and reads denied packets on a thread of its own.
fn start_flow_log(
    log: policy::flowlog::DenyLog,
    file: &std::path::Path,
    pods: endpoints::policy::PodsByIp,
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

/// Until the allocator has listed the pools and taken the block watch's
/// first list (it retries on its own; the status says what it waits for).
async fn wait_allocator_ready(alloc: &ipam::Allocator) {
    let mut said = std::time::Instant::now();
    loop {
        match alloc.status().await {
            Ok(st) if st.ready => return,
            Ok(st) if said.elapsed() >= Duration::from_secs(10) => {
                tracing::info!(why = %st.message, "the IPAM allocator is not ready yet");
                said = std::time::Instant::now();
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
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
