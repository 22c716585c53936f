//! The routing task: keeps the speaker at [`super::desired`] as the
//! cluster and the IPAM view change, publishes this node's addresses on
//! its Node, sets the log level from the BGPConfiguration, and reports the
//! sessions every status turn. See [`super`] for the channel map.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::secrets::PasswordCache;
use super::speaker::{Running, SpeakerEnv};
use super::{input, report, speaker};
use crate::dataplane::fib::Fib;
use crate::k8s::cluster::{Cluster, Kind};
use crate::k8s::ipam::view::IpamView;
use crate::k8s::node::{NodeIdentity, publish_addresses};
use crate::status::health::{Health, Pulse};
use crate::status::metrics::Metrics;

/// How often the sessions are reported (and the speaker shows it is alive).
const STATUS_PERIOD: Duration = Duration::from_millis(250);
/// First retry after the speaker refused the configuration; doubles.
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Everything the routing task needs.
#[derive(Clone)]
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

/// Runs the routing task until the cluster view goes away.
pub async fn run(mut deps: RoutingDeps, mut pulse: Pulse) {
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
    // A speaker has run: its routes stay in the kernel when it is replaced.
    let mut speaker_ran = false;
    let mut last_problems: Vec<String> = Vec::new();
    let mut last_topology: Option<super::peers::Topology> = None;
    let mut last_log_level: Option<&'static str> = None;
    let mut status_tick = tokio::time::interval(STATUS_PERIOD);
    let mut passwords = PasswordCache::new(deps.secrets_namespace.clone());
    let mut dirty = true;
    // What `desired` works from besides the IPAM view, read from the
    // cluster again only when a watched kind or a password moved: an IPAM
    // view change (every pod started or stopped anywhere in the cluster)
    // reuses it, instead of reading every Node again.
    let mut facts: Option<super::RoutingInput> = None;
    let mut retry = RETRY_MIN;
    let mut retry_at: Option<Instant> = None;
    loop {
        if std::mem::take(&mut dirty) {
            if facts.is_none() {
                let pw = passwords.get(&client, &deps.cluster).await.clone();
                facts = Some(input::input(&deps.cluster, &deps.me, pw, restarting));
            }
            let view = deps.view.borrow().clone();
            let d = super::desired(facts.as_ref().expect("just read"), &view);
            if d.problems != last_problems {
                for p in &d.problems {
                    tracing::warn!(problem = %p, "routing configuration");
                }
                last_problems = d.problems.clone();
            }
            if last_topology.as_ref() != Some(&d.topology) {
                tracing::info!(topology = %d.topology, "BGP node-to-node topology");
                last_topology = Some(d.topology.clone());
            }
            // BGPConfiguration.logSeverityScreen sets the agent's log level.
            let level = super::effective_config(&input::configs(&deps.cluster), &deps.me.name)
                .log_severity_screen
                .map(input::log_level_name);
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
            let env = SpeakerEnv {
                restarting: restarting || speaker_ran,
                reconcile_after: deps.reconcile_after,
                health: &deps.health,
            };
            let applied = speaker::apply(&mut running, &d, &env).await;
            speaker_ran |= running.is_some();
            match applied {
                Ok(()) => {
                    retry = RETRY_MIN;
                    retry_at = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "applying BGP configuration failed; retrying");
                    // A password may be what the speaker (or a peer) refused.
                    passwords.invalidate();
                    retry_at = Some(Instant::now() + retry);
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
            deps.health
                .set_status("bgp_problems", serde_json::json!(d.problems));
            deps.health
                .set_status("bgp_topology", serde_json::json!(d.topology.to_string()));
        }
        tokio::select! {
            r = gens.changed() => {
                if r.is_err() { return; }
                let now = gens.borrow().clone();
                let moved = now.changed_since(&seen);
                seen = now;
                if moved.iter().any(|k| matches!(k, Kind::Node | Kind::BgpPeer | Kind::BgpConfiguration | Kind::BgpFilter | Kind::IpPool | Kind::Service | Kind::EndpointSlice)) {
                    dirty = true;
                    facts = None;
                }
                // BGPPeers name the password Secrets.
                if moved.contains(&Kind::BgpPeer) {
                    passwords.invalidate();
                }
            }
            r = deps.view.changed() => {
                if r.is_err() { return; }
                dirty = true;
            }
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                dirty = true;
                facts = None;
            }
            // A password refresh (or the retry of a missing one).
            () = tokio::time::sleep_until(passwords.due().unwrap_or_else(Instant::now)), if passwords.due().is_some() => {
                dirty = true;
                facts = None;
            }
            ended = Running::fib_ended(&mut running) => {
                // Routes would stop reaching the kernel: end this run, so
                // that the supervisor logs it and starts a fresh speaker.
                match ended {
                    Err(e) if e.is_panic() => tracing::error!(error = %e, "the FIB task panicked: restarting routing"),
                    _ => tracing::error!("the FIB task ended while its speaker runs: restarting routing"),
                }
                return;
            }
            () = pulse.tick() => {}
            _ = status_tick.tick() => {
                if let Some(r) = &mut running {
                    report::report(r, &deps.health, &deps.metrics).await;
                }
            }
        }
    }
}
