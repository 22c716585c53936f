//! The speaker as it runs, and bringing it to a [`Desired`]: started (or
//! restarted when its AS, router ID, cluster ID or listen addresses
//! change) with its FIB task, then the default export rules, the peers and
//! the originated prefixes changed one by one where they differ.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bgp::config::PeerConfig;
use bgp::driver::{Speaker, SpeakerConfig};
use bgp::rib::filter::Rule;
use bgp::wire::{CommunitySet, Prefix};

use super::Desired;
use crate::dataplane::fib::Fib;
use crate::status::health::Health;

/// After a restart with forwarding preserved, how long the speaker may
/// withhold its initial updates waiting for every peer's End-of-RIB (RFC
/// 4724 §4.1). Peers keep our routes for [`super::DEFAULT_GR_TIME`], much
/// longer; a peer that never comes up delays our updates this long.
const SELECTION_DEFERRAL: Duration = Duration::from_secs(10);

/// The running speaker and what it was given.
pub struct Running {
    /// The speaker.
    pub speaker: Speaker,
    /// The settings it was started with (AS, router ID, cluster ID, listen).
    key: (u32, Ipv4Addr, Option<Ipv4Addr>, Vec<SocketAddr>),
    /// Its peers.
    pub peers: BTreeMap<String, PeerConfig>,
    /// Each peer's kind, for status.
    pub kinds: BTreeMap<String, &'static str>,
    originated: BTreeMap<Prefix, CommunitySet>,
    /// RIB generation last published in `/status` (`bgp_routes`).
    pub routes_generation: Option<u64>,
    /// The default export rules the speaker has.
    default_export: Option<Vec<Rule>>,
    /// The FIB task of this speaker: a child of the routing run, which
    /// awaits it ([`Running::fib_ended`]) so that its end is never silent.
    fib: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Resolves when this speaker's FIB task has ended: returned (its
    /// speaker is gone) or panicked. The routing run then ends too and the
    /// supervisor starts it again (a fresh speaker and FIB task).
    pub async fn fib_ended(running: &mut Option<Running>) -> Result<(), tokio::task::JoinError> {
        match running {
            Some(r) => (&mut r.fib).await,
            None => std::future::pending().await,
        }
    }
}

/// What starting the speaker needs besides the desired state.
pub struct SpeakerEnv<'a> {
    /// Our routes were in the kernel at start (graceful restart).
    pub restarting: bool,
    /// Delay before the FIB task removes a previous run's stale routes.
    pub reconcile_after: Duration,
    /// For the FIB task's pulse.
    pub health: &'a Arc<Health>,
}

/// Brings `running` to `d`; an error names what the speaker refused.
pub async fn apply(
    running: &mut Option<Running>,
    d: &Desired,
    env: &SpeakerEnv<'_>,
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
        if env.restarting {
            // Peers keep what they have from us until we send complete
            // tables (a route reflector's clients need each other's).
            speaker
                .defer_initial_updates(SELECTION_DEFERRAL)
                .await
                .map_err(|e| crate::logging::chain(&e))?;
        }
        let fib = Fib::new().map_err(|e| crate::logging::chain(&e))?;
        let fib_task = tokio::spawn(super::fib_task::run(
            fib,
            fib_rx,
            speaker.fib_view(),
            env.reconcile_after,
            env.health.pulse("fib"),
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
            fib: fib_task,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIB task that panics is seen by the routing run (which then ends,
    /// so that the supervisor restarts it), never silently dropped.
    #[tokio::test]
    async fn the_end_of_the_fib_task_is_seen() {
        let (speaker, _fib_rx) = Speaker::start(SpeakerConfig {
            local_as: 64512,
            router_id: Ipv4Addr::new(198, 18, 0, 11),
            listen: vec![],
            cluster_id: None,
            decision: Default::default(),
        })
        .await
        .expect("speaker");
        let mut running = Some(Running {
            speaker,
            key: (64512, Ipv4Addr::new(198, 18, 0, 11), None, vec![]),
            peers: BTreeMap::new(),
            kinds: BTreeMap::new(),
            originated: BTreeMap::new(),
            routes_generation: None,
            default_export: None,
            fib: tokio::spawn(async { panic!("FIB task failure") }),
        });
        let ended = Running::fib_ended(&mut running).await;
        assert!(ended.is_err_and(|e| e.is_panic()));
        // Without a speaker there is no FIB task to wait for.
        let none =
            tokio::time::timeout(Duration::from_millis(50), Running::fib_ended(&mut None)).await;
        assert!(none.is_err(), "no speaker: pending");
    }
}
