//! The routing task: applies [`routing::desired`] to the BGP speaker, feeds
//! best paths to the kernel FIB, publishes this node's address on its Node,
//! and reports sessions (metrics, readiness, `/status`).
//! See [`crate::routing`] for the channel map.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgp::config::PeerConfig;
use bgp::driver::{PeerStatus, Speaker, SpeakerConfig};
use bgp::fsm::State;
use bgp::rib::FibChange;
use bgp::wire::Prefix;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Api;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::agent::NodeIdentity;
use crate::cluster::{Cluster, Kind};
use crate::fib::{Fib, PendingReconcile};
use crate::health::Health;
use crate::ipamview::IpamView;
use crate::metrics::{Metrics, PeerLabels};
use crate::routing::{
    self, ANN_IPV4, ANN_IPV6, ANN_RR_CLUSTER_ID, Desired, NodeFacts, RoutingInput, services,
};

/// After a restart with forwarding preserved, how long the speaker may
/// withhold its initial updates waiting for every peer's End-of-RIB (RFC
/// 4724 §4.1). Peers keep our routes for [`routing::DEFAULT_GR_TIME`], much
/// longer; a peer that never comes up delays our updates this long.
const SELECTION_DEFERRAL: Duration = Duration::from_secs(10);

/// One row of `margayctl node status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PeerRow {
    /// Peer name (mesh-<node>, peer-<BGPPeer>[-<node>]).
    pub name: String,
    /// Address.
    pub address: String,
    /// node-mesh, global, node-specific, selector.
    pub kind: String,
    /// FSM state.
    pub state: String,
    /// Seconds in this state.
    pub since_secs: Option<u64>,
    /// Prefixes accepted from the peer (IPv4 + IPv6).
    pub accepted: u32,
    /// Prefixes sent.
    pub sent: u32,
    /// Last error.
    pub last_error: Option<String>,
    /// BFD session state (absent: BFD not configured for this peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
}

/// What routing (and the overlay) need to know about a Node: its addresses
/// (the agent's annotation, else its InternalIP) and labels.
pub fn node_facts(n: &Node) -> NodeFacts {
    let ann = n.metadata.annotations.clone().unwrap_or_default();
    let parse_ann = |k: &str| -> Option<IpAddr> {
        ann.get(k).and_then(|v| {
            v.parse::<IpNetwork>()
                .ok()
                .map(|n| n.ip())
                .or_else(|| v.parse().ok())
        })
    };
    let internal: Vec<IpAddr> = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let v4 = parse_ann(ANN_IPV4).or_else(|| internal.iter().copied().find(IpAddr::is_ipv4));
    let v6 = parse_ann(ANN_IPV6).or_else(|| internal.iter().copied().find(IpAddr::is_ipv6));
    NodeFacts {
        name: n.metadata.name.clone().unwrap_or_default(),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        ipv4: match v4 {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        ipv6: match v6 {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        },
        rr_cluster_id: ann.get(ANN_RR_CLUSTER_ID).cloned(),
    }
}

/// Writes this node's chosen addresses as annotations on its Node object
/// (other nodes mesh with them; operators see what was chosen).
///
/// A JSON merge patch of only the annotations Margay owns: the kubelet
/// writes the same object, so a read-modify-replace would race it (and
/// RBAC grants the agent `patch` on nodes, not `update`). A key set to
/// `None` is removed. Nothing is sent when the Node already says so.
pub async fn publish_addresses(client: kube::Client, me: &NodeIdentity) -> Result<(), kube::Error> {
    let wanted: BTreeMap<&str, Option<String>> = [(ANN_IPV4, &me.ipv4), (ANN_IPV6, &me.ipv6)]
        .into_iter()
        .map(|(k, c)| (k, c.as_ref().map(|c| c.addr.to_string())))
        .collect();
    patch_node_annotations(&client, &me.name, &wanted).await
}

/// Sets (`Some`) or removes (`None`) annotations on Node `name` with one
/// JSON merge patch, if any differs from what the API server has.
pub async fn patch_node_annotations(
    client: &kube::Client,
    name: &str,
    wanted: &BTreeMap<&str, Option<String>>,
) -> Result<(), kube::Error> {
    let api = Api::<Node>::all(client.clone());
    let node = api.get(name).await?;
    let have = node.metadata.annotations.unwrap_or_default();
    let patch = annotations_patch(&have, wanted);
    if let Some(patch) = patch {
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(())
}

/// The merge patch that brings `have` to `wanted` (only the keys in
/// `wanted` are touched), or `None` when nothing differs.
fn annotations_patch(
    have: &BTreeMap<String, String>,
    wanted: &BTreeMap<&str, Option<String>>,
) -> Option<serde_json::Value> {
    let changes: serde_json::Map<String, serde_json::Value> = wanted
        .iter()
        .filter(|(k, v)| have.get(**k) != v.as_ref())
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    (!changes.is_empty()).then(|| serde_json::json!({ "metadata": { "annotations": changes } }))
}

/// The tracing level for a `logSeverityScreen` value.
pub fn log_level_name(l: crate::crd::LogLevel) -> &'static str {
    match l {
        crate::crd::LogLevel::Debug => "debug",
        crate::crd::LogLevel::Info => "info",
        crate::crd::LogLevel::Warning => "warn",
        crate::crd::LogLevel::Error => "error",
    }
}

fn input_configs(deps: &RoutingDeps) -> BTreeMap<String, crate::crd::BGPConfigurationSpec> {
    deps.cluster
        .bgp_configs
        .state()
        .iter()
        .filter_map(|o| Some((o.metadata.name.clone()?, o.spec.clone())))
        .collect()
}

/// Everything the routing task needs.
pub struct RoutingDeps {
    /// The cluster view.
    pub cluster: Cluster,
    /// IPAM view updates.
    pub view: watch::Receiver<Arc<IpamView>>,
    /// Who we are.
    pub me: NodeIdentity,
    /// Namespace of BGP password Secrets.
    pub secrets_namespace: String,
    /// Readiness.
    pub health: Arc<Health>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Delay before stale FIB routes of a previous run are removed.
    pub reconcile_after: Duration,
}

struct Running {
    speaker: Speaker,
    key: (
        u32,
        std::net::Ipv4Addr,
        Option<std::net::Ipv4Addr>,
        Vec<std::net::SocketAddr>,
    ),
    peers: BTreeMap<String, PeerConfig>,
    kinds: BTreeMap<String, &'static str>,
    originated: BTreeMap<Prefix, bgp::wire::CommunitySet>,
    /// RIB generation last published in `/status` (`bgp_routes`).
    routes_generation: Option<u64>,
    /// The default export rules the speaker has.
    default_export: Option<Vec<bgp::rib::filter::Rule>>,
    _fib: tokio::task::JoinHandle<()>,
}

async fn passwords(
    client: &kube::Client,
    ns: &str,
    cluster: &Cluster,
) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for p in cluster.bgp_peers.state() {
        let Some(sel) = &p.spec.password else {
            continue;
        };
        let key = (sel.name.clone(), sel.key.clone());
        if out.contains_key(&key) {
            continue;
        }
        match api.get_opt(&sel.name).await {
            Ok(Some(s)) => {
                let v = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&sel.key))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .or_else(|| {
                        s.string_data
                            .as_ref()
                            .and_then(|d| d.get(&sel.key).cloned())
                    });
                if let Some(v) = v {
                    out.insert(key, v);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(secret = %sel.name, error = %e, "cannot read BGP password Secret")
            }
        }
    }
    out
}

fn input(
    deps: &RoutingDeps,
    passwords: BTreeMap<(String, String), String>,
    restarting: bool,
) -> RoutingInput {
    let c = &deps.cluster;
    let nodes: Vec<NodeFacts> = c.nodes.state().iter().map(|n| node_facts(n)).collect();
    let mine = nodes.iter().find(|n| n.name == deps.me.name);
    let me = NodeFacts {
        name: deps.me.name.clone(),
        labels: mine.map(|n| n.labels.clone()).unwrap_or_default(),
        rr_cluster_id: mine.and_then(|n| n.rr_cluster_id.clone()),
        ipv4: deps.me.ipv4.as_ref().and_then(|c| match c.addr.ip() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }),
        ipv6: deps.me.ipv6.as_ref().and_then(|c| match c.addr.ip() {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }),
    };
    RoutingInput {
        me,
        nodes,
        configs: input_configs(deps),
        peers: c
            .bgp_peers
            .state()
            .iter()
            .filter_map(|o| Some((o.metadata.name.clone()?, o.spec.clone())))
            .collect(),
        passwords,
        no_export: c
            .pools
            .state()
            .iter()
            .filter(|p| p.spec.disable_bgp_export)
            .filter_map(|p| p.spec.cidr.parse().ok())
            .collect(),
        export_pools: c
            .pools
            .state()
            .iter()
            .filter(|p| !p.spec.disable_bgp_export)
            .filter_map(|p| p.spec.cidr.parse().ok())
            .collect(),
        filters: c
            .bgp_filters
            .state()
            .iter()
            .filter_map(|o| Some((o.metadata.name.clone()?, o.spec.clone())))
            .collect(),
        services: c
            .services
            .state()
            .iter()
            .filter_map(|s| services::service_facts(s))
            .collect(),
        ready_here: services::ready_on(
            c.endpoint_slices.state().iter().map(|s| &**s),
            &deps.me.name,
        ),
        restarting,
    }
}

async fn fib_task(
    fib: Fib,
    mut rx: mpsc::Receiver<Vec<FibChange>>,
    rib: bgp::driver::FibView,
    reconcile_after: Duration,
    health: Arc<Health>,
) {
    let reconcile = tokio::time::sleep(reconcile_after);
    let mut reconcile = std::pin::pin!(reconcile);
    let mut reconciling: Option<PendingReconcile> = None;
    let mut reconciled = false;
    let mut pulse = health.pulse("fib");
    loop {
        tokio::select! {
            // Quiet for hours on a stable network: still alive.
            () = pulse.tick() => {}
            batch = rx.recv() => {
                // The speaker stopped (it is being restarted): on purpose.
                let Some(batch) = batch else { return pulse.retire() };
                if let Err(e) = fib.apply(&batch).await {
                    tracing::warn!(error = %crate::logging::chain(&e), "programming BGP routes failed");
                }
                if let Some(r) = &mut reconciling {
                    r.note(&batch);
                }
                pulse.beat();
            }
            () = &mut reconcile, if !reconciled => {
                reconciled = true;
                reconciling = Some(PendingReconcile::start(&rib));
            }
            wanted = async {
                match &mut reconciling {
                    Some(r) => r.answer().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(r) = reconciling.take() else { continue };
                let Some(wanted) = wanted else { return pulse.retire() };
                let kept = wanted.len();
                match r.finish(&fib, wanted).await {
                    Ok(n) => tracing::info!(removed = n, kept, "BGP routes reconciled after start-up"),
                    Err(e) => tracing::warn!(error = %crate::logging::chain(&e), "reconciling BGP routes failed"),
                }
            }
        }
    }
}

/// Runs the routing task until the cluster view goes away.
pub async fn run(mut deps: RoutingDeps) {
    let client = deps.cluster.client();
    if let Err(e) = publish_addresses(client.clone(), &deps.me).await {
        tracing::warn!(node = %deps.me.name, error = %e, "cannot annotate our Node with its addresses; other nodes use its InternalIP");
    }
    // Our BGP routes still in the kernel: forwarding survived a restart.
    let restarting = match Fib::new() {
        Ok(f) => f.ours().await.map(|o| !o.is_empty()).unwrap_or(false),
        Err(_) => false,
    };
    if restarting {
        tracing::info!(
            "BGP routes of a previous run are in the kernel: restarting with forwarding preserved (graceful restart)"
        );
    }
    let mut gens = deps.cluster.subscribe();
    let mut seen = gens.borrow().clone();
    let mut running: Option<Running> = None;
    let mut last_problems: Vec<String> = Vec::new();
    let mut last_log_level: Option<&'static str> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut pulse = deps.health.pulse("routing");
    let mut dirty = true;
    // BGP passwords are read from their Secrets (GETs) when anything but
    // Services and EndpointSlices moved: those churn in a busy cluster and
    // change no session.
    let mut pw = BTreeMap::new();
    let mut reread_pw = true;
    loop {
        if dirty {
            dirty = false;
            if std::mem::take(&mut reread_pw) {
                pw = passwords(&client, &deps.secrets_namespace, &deps.cluster).await;
            }
            let view = deps.view.borrow().clone();
            let d = routing::desired(&input(&deps, pw.clone(), restarting), &view);
            if d.problems != last_problems {
                for p in &d.problems {
                    tracing::warn!(problem = %p, "routing configuration");
                }
                last_problems = d.problems.clone();
            }
            // BGPConfiguration.logSeverityScreen sets the agent's log level.
            let level = routing::effective_config(&input_configs(&deps), &deps.me.name)
                .log_severity_screen
                .map(log_level_name);
            if level != last_log_level {
                match crate::logging::set_level(level) {
                    // Logged at warn so it shows whatever the new level is.
                    Ok(()) => tracing::warn!(
                        level = %level.unwrap_or("(from flags)"),
                        "log level set from BGPConfiguration"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot change the log level"),
                }
                last_log_level = level;
            }
            if let Err(e) = apply(&mut running, &d, &deps, restarting).await {
                tracing::warn!(error = %e, "applying BGP configuration failed; retrying");
                dirty = true;
                reread_pw = true;
            }
            deps.health
                .set_status("bgp_problems", serde_json::json!(d.problems));
        }
        tokio::select! {
            r = gens.changed() => {
                if r.is_err() { return; }
                let now = gens.borrow().clone();
                let moved = now.changed_since(&seen);
                seen = now;
                if moved.iter().any(|k| matches!(k, Kind::Node | Kind::BgpPeer | Kind::BgpConfiguration | Kind::BgpFilter | Kind::IpPool)) {
                    dirty = true;
                    reread_pw = true;
                }
                if moved.iter().any(|k| matches!(k, Kind::Service | Kind::EndpointSlice)) {
                    dirty = true;
                }
            }
            r = deps.view.changed() => {
                if r.is_err() { return; }
                dirty = true;
                reread_pw = true;
            }
            () = pulse.tick() => {}
            _ = tick.tick() => {
                // The speaker answers here: a stuck speaker stops this loop,
                // and so fails liveness.
                if let Some(r) = &mut running {
                    report(r, &deps).await;
                }
            }
        }
    }
}

async fn apply(
    running: &mut Option<Running>,
    d: &Desired,
    deps: &RoutingDeps,
    restarting: bool,
) -> Result<(), String> {
    let key = (d.local_as, d.router_id, d.cluster_id, d.listen.clone());
    if running.as_ref().is_none_or(|r| r.key != key) {
        if running.take().is_some() {
            tracing::info!(asn = d.local_as, router_id = %d.router_id, cluster_id = ?d.cluster_id, "speaker settings changed: restarting the speaker");
        }
        let (speaker, fib_rx) = Speaker::start(SpeakerConfig {
            local_as: d.local_as,
            router_id: d.router_id,
            listen: d.listen.clone(),
            cluster_id: d.cluster_id,
            decision: Default::default(),
        })
        .await
        .map_err(|e| crate::logging::chain(&e))?;
        if restarting {
            // Peers keep what they have from us until we send complete
            // tables (a route reflector's clients need each other's).
            speaker
                .defer_initial_updates(SELECTION_DEFERRAL)
                .await
                .map_err(|e| crate::logging::chain(&e))?;
        }
        let fib = Fib::new().map_err(|e| crate::logging::chain(&e))?;
        let fib_task = tokio::spawn(fib_task(
            fib,
            fib_rx,
            speaker.fib_view(),
            deps.reconcile_after,
            deps.health.clone(),
        ));
        tracing::info!(asn = d.local_as, router_id = %d.router_id, cluster_id = ?d.cluster_id, listen = ?d.listen, "BGP speaker started");
        *running = Some(Running {
            speaker,
            key,
            peers: BTreeMap::new(),
            kinds: BTreeMap::new(),
            originated: BTreeMap::new(),
            routes_generation: None,
            default_export: None,
            _fib: fib_task,
        });
    }
    let Some(r) = running.as_mut() else {
        return Ok(());
    };
    r.kinds = d.kinds.clone();
    let err = |e: bgp::driver::DriverError| crate::logging::chain(&e);
    // Before the peers: a new peer must never see what the defaults hide.
    if r.default_export.as_ref() != Some(&d.default_export) {
        r.speaker
            .set_default_export(d.default_export.clone())
            .await
            .map_err(err)?;
        r.default_export = Some(d.default_export.clone());
        tracing::info!(
            rules = d.default_export.len(),
            "default export: pool and service networks only"
        );
    }
    for (name, cfg) in r.peers.clone() {
        if d.peers.get(&name) != Some(&cfg) {
            r.speaker.remove_peer(&name).await.map_err(err)?;
            r.peers.remove(&name);
            tracing::info!(peer = %name, "BGP peer removed");
        }
    }
    for (name, cfg) in &d.peers {
        if !r.peers.contains_key(name) {
            r.speaker.add_peer(cfg.clone()).await.map_err(err)?;
            r.peers.insert(name.clone(), cfg.clone());
            tracing::info!(peer = %name, neighbor = ?cfg.neighbor, remote_as = ?cfg.remote_as, passive = cfg.passive, "BGP peer configured");
        }
    }
    for p in r.originated.keys().copied().collect::<Vec<_>>() {
        if !d.originate.contains_key(&p) {
            r.speaker.withdraw(p).await.map_err(err)?;
            r.originated.remove(&p);
            tracing::info!(prefix = %p, "withdrawn");
        }
    }
    for (p, c) in &d.originate {
        if r.originated.get(p) != Some(c) {
            r.speaker.originate(*p, c.clone()).await.map_err(err)?;
            r.originated.insert(*p, c.clone());
            tracing::info!(prefix = %p, "originated");
        }
    }
    Ok(())
}

async fn report(r: &mut Running, deps: &RoutingDeps) {
    let Ok(status) = r.speaker.status().await else {
        return;
    };
    // The RIB for `margayctl bgp routes`, when it changed.
    if let Ok(Some(routes)) = r
        .speaker
        .routes(crate::bgp_routes::LIMIT, r.routes_generation)
        .await
    {
        r.routes_generation = Some(routes.generation);
        deps.health.set_status(
            "bgp_routes",
            serde_json::json!(crate::bgp_routes::section(&routes)),
        );
    }
    let now = Instant::now();
    let rows: Vec<PeerRow> = status
        .iter()
        .map(|s: &PeerStatus| PeerRow {
            name: s.name.clone(),
            address: s.addr.map(|a| a.to_string()).unwrap_or_default(),
            // Dynamic neighbours show as "<range-peer>/<address>".
            kind: r
                .kinds
                .get(s.name.split('/').next().unwrap_or(&s.name))
                .copied()
                .unwrap_or("dynamic")
                .to_string(),
            state: format!("{:?}", s.state),
            since_secs: s.since.map(|t| now.saturating_duration_since(t).as_secs()),
            accepted: s.counters.accepted.iter().sum(),
            sent: s.counters.sent,
            last_error: s.last_error.clone(),
            bfd: s.bfd.map(|b| b.to_string()),
        })
        .collect();
    let established = status
        .iter()
        .filter(|s| s.state == State::Established)
        .count();
    deps.health.set_bgp(r.peers.len(), established);
    for r in &rows {
        let labels = PeerLabels {
            peer: if r.address.is_empty() {
                r.name.clone()
            } else {
                r.address.clone()
            },
            kind: r.kind.clone(),
        };
        deps.metrics
            .bgp_session_established
            .get_or_create(&labels)
            .set(i64::from(r.state == "Established"));
        deps.metrics
            .bgp_prefixes_accepted
            .get_or_create(&labels)
            .set(i64::from(r.accepted));
        deps.metrics
            .bgp_prefixes_advertised
            .get_or_create(&labels)
            .set(i64::from(r.sent));
    }
    deps.health.set_status("bgp_peers", serde_json::json!(rows));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use kube::api::ObjectMeta;

    #[test]
    fn node_facts_prefer_the_agents_annotation_over_internal_ip() {
        let mut n = Node {
            metadata: ObjectMeta {
                name: Some("n2".into()),
                annotations: Some([(ANN_IPV4.to_string(), "198.18.7.12/24".to_string())].into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "198.18.0.12".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "2001:db8:ffff::c".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let f = node_facts(&n);
        assert_eq!(f.ipv4, "198.18.7.12".parse().ok());
        assert_eq!(f.ipv6, "2001:db8:ffff::c".parse().ok());
        n.metadata.annotations = None;
        assert_eq!(node_facts(&n).ipv4, "198.18.0.12".parse().ok());
    }

    #[test]
    fn annotation_patch_touches_only_our_keys_and_only_when_they_differ() {
        let have: BTreeMap<String, String> = [
            ("kubelet.example/x".to_string(), "keep".to_string()),
            (ANN_IPV4.to_string(), "198.18.0.11/24".to_string()),
            (ANN_IPV6.to_string(), "2001:db8:ffff::b/64".to_string()),
        ]
        .into();
        let same: BTreeMap<&str, Option<String>> = [
            (ANN_IPV4, Some("198.18.0.11/24".to_string())),
            (ANN_IPV6, Some("2001:db8:ffff::b/64".to_string())),
        ]
        .into();
        assert_eq!(annotations_patch(&have, &same), None);
        let moved: BTreeMap<&str, Option<String>> = [
            (ANN_IPV4, Some("198.18.0.12/24".to_string())),
            (ANN_IPV6, None),
        ]
        .into();
        assert_eq!(
            annotations_patch(&have, &moved),
            Some(serde_json::json!({"metadata": {"annotations": {
                ANN_IPV4: "198.18.0.12/24",
                ANN_IPV6: null,
            }}}))
        );
    }

    /// The FIB task used to prove itself alive only when it wrote a batch,
    /// so on a quiet network `/livez` failed after ten minutes and the
    /// kubelet would restart a healthy agent. Six hours of silence here.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_fib_task_stays_live() {
        let health = Arc::new(Health::new(Duration::ZERO));
        let fib = Fib::new().expect("netlink socket");
        let (tx, rx) = mpsc::channel(1);
        // A speaker with no peers and no listener: the RIB the task asks.
        let (speaker, _fib_rx) = Speaker::start(SpeakerConfig {
            local_as: 65001,
            router_id: "198.18.0.1".parse().expect("router id"),
            listen: vec![],
            cluster_id: None,
            decision: Default::default(),
        })
        .await
        .expect("speaker");
        // No reconcile within the test (it would read this namespace's routes).
        let task = tokio::spawn(fib_task(
            fib,
            rx,
            speaker.fib_view(),
            Duration::from_secs(365 * 86_400),
            health.clone(),
        ));
        for _ in 0..(6 * 60) {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let v = health.liveness_at(tokio::time::Instant::now());
            assert!(v.ok && v.checks.iter().any(|c| c.contains("fib")), "{v:?}");
        }
        // Its speaker stopped: the task ends on purpose, nothing fails.
        drop(tx);
        task.await.expect("fib task");
        assert!(
            health
                .liveness_at(tokio::time::Instant::now())
                .checks
                .is_empty()
        );
    }
}
