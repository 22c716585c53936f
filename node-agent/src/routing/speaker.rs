//! The speaker as it runs, and bringing it to a [`Desired`]: started (or
//! restarted when its AS, router ID, cluster ID or listen addresses
//! change) with its FIB task, then the default export rules, the
//! originated prefixes and the peers changed one by one where they differ.
//!
//! Neither step leaves a prefix without a route:
//! - a restart is a graceful restart (RFC 4724) with forwarding preserved:
//!   the kernel keeps our routes, the old sessions close without a
//!   NOTIFICATION, and the new ones announce the R and F bits and defer
//!   their initial updates, so peers keep our routes as stale until the
//!   new speaker's End-of-RIB (a node labelled route reflector gets a
//!   cluster ID, and so a new speaker, while the mesh runs);
//! - peers are added before the ones no longer wanted are removed, which
//!   wait for the new peers' routes ([`super::handover`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgp::config::{Neighbor, PeerConfig};
use bgp::driver::{PeerStatus, Speaker, SpeakerConfig};
use bgp::rib::filter::Rule;
use bgp::wire::{CommunitySet, Prefix};

use super::Desired;
use super::handover::Handover;
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
    /// Peers no longer wanted, still configured until the new peers have
    /// sent their routes (make-before-break).
    retiring: BTreeMap<String, PeerConfig>,
    /// What the retiring peers wait for.
    handover: Handover,
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
    /// `name` (a peer, or a dynamic session `template/address`) is a peer
    /// no longer wanted, kept only until the new peers are up.
    pub fn is_retiring(&self, name: &str) -> bool {
        self.retiring
            .contains_key(name.split('/').next().unwrap_or(name))
    }

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
    /// Our routes are in the kernel (graceful restart): left by a previous
    /// run of the agent, or by the speaker a new one replaces.
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
    // The peers added with a new speaker announce a restart with forwarding
    // preserved when our routes are in the kernel.
    let mut restarted = false;
    if running.as_ref().is_none_or(|r| r.key != key) {
        // Dropped, not shut down: its sessions close with no NOTIFICATION,
        // which graceful-restart peers take as a restart (they keep our
        // routes), and the kernel keeps theirs.
        if running.take().is_some() {
            tracing::info!(asn = d.local_as, router_id = %d.router_id, cluster_id = ?d.cluster_id, "speaker settings changed: restarting the speaker (graceful restart, forwarding preserved)");
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
            retiring: BTreeMap::new(),
            handover: Handover::default(),
            kinds: BTreeMap::new(),
            originated: BTreeMap::new(),
            routes_generation: None,
            default_export: None,
            fib: fib_task,
        });
        restarted = env.restarting;
    }
    let Some(r) = running.as_mut() else {
        return Ok(());
    };
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
    // Our prefixes before the peers: a restarted speaker's deferral ends
    // with its peers' End-of-RIBs, and its first table must have them.
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
    peers(r, d, restarted).await.map_err(err)?;
    r.kinds = d.kinds.clone();
    for name in r.retiring.keys() {
        r.kinds.insert(name.clone(), "retiring");
    }
    Ok(())
}

/// The peers of `d`, make-before-break: a peer whose settings changed is
/// removed and added again (one name, one session); new peers are added;
/// then the peers no longer wanted are removed, or kept while new peers
/// come up ([`Handover`]). A peer to the address of a new peer goes
/// first: two sessions with one neighbour would collide. With `restarted`
/// (a new speaker while our routes are in the kernel), peers announce a
/// restart with forwarding preserved.
async fn peers(
    r: &mut Running,
    d: &Desired,
    restarted: bool,
) -> Result<(), bgp::driver::DriverError> {
    let now = Instant::now();
    // Retiring peers wanted again as they are: back in service.
    for (name, cfg) in r.retiring.clone() {
        if d.peers.get(&name) == Some(&cfg) {
            r.retiring.remove(&name);
            r.handover.forget(&name);
            r.peers.insert(name.clone(), cfg);
            tracing::info!(peer = %name, "BGP peer wanted again: kept");
        }
    }
    let new_neighbors: Vec<Neighbor> = d
        .peers
        .iter()
        .filter(|(name, _)| !r.peers.contains_key(*name))
        .map(|(_, p)| p.neighbor)
        .collect();
    let new_neighbor = |n: &Neighbor| new_neighbors.contains(n);
    let mut unwanted = Vec::new();
    for (name, cfg) in r.peers.clone() {
        let changed = d.peers.get(&name).is_some_and(|c| *c != cfg);
        if changed || (!d.peers.contains_key(&name) && new_neighbor(&cfg.neighbor)) {
            remove(r, &name, "BGP peer removed").await?;
        } else if !d.peers.contains_key(&name) {
            unwanted.push(name);
        }
    }
    for name in r.retiring.keys().cloned().collect::<Vec<_>>() {
        if d.peers.contains_key(&name) || new_neighbor(&r.retiring[&name].neighbor) {
            remove(r, &name, "BGP peer removed").await?;
        }
    }
    for (name, cfg) in &d.peers {
        if r.peers.contains_key(name) {
            continue;
        }
        let mut session = cfg.clone();
        if restarted && let Some(gr) = session.graceful_restart.as_mut() {
            gr.restarting = true;
        }
        r.speaker.add_peer(session).await?;
        r.peers.insert(name.clone(), cfg.clone());
        // A range is a template: its sessions come when the neighbours call.
        if matches!(cfg.neighbor, Neighbor::Addr(_)) {
            r.handover.added(name, now);
        }
        tracing::info!(peer = %name, neighbor = ?cfg.neighbor, remote_as = ?cfg.remote_as, passive = cfg.passive, restarting = restarted, "BGP peer configured");
    }
    for name in unwanted {
        if !r.handover.retire(&name, now) {
            remove(r, &name, "BGP peer removed").await?;
        } else if let Some(cfg) = r.peers.remove(&name) {
            let waiting_for: Vec<&str> = r.handover.pending().collect();
            tracing::info!(peer = %name, ?waiting_for, wait = ?super::handover::WAIT, "BGP peer no longer wanted: kept until the new peers have sent their routes");
            r.retiring.insert(name, cfg);
        }
    }
    Ok(())
}

/// Removes the peer `name` (configured or retiring) from the speaker.
async fn remove(r: &mut Running, name: &str, why: &str) -> Result<(), bgp::driver::DriverError> {
    r.speaker.remove_peer(name).await?;
    r.peers.remove(name);
    r.retiring.remove(name);
    r.handover.forget(name);
    r.kinds.remove(name);
    tracing::info!(peer = %name, "{why}");
    Ok(())
}

/// A status turn of the make-before-break: removes the retiring peers
/// whose replacements are up (Established, End-of-RIB), or whose wait ran
/// out (logged).
pub async fn settle(
    r: &mut Running,
    status: &[PeerStatus],
) -> Result<(), bgp::driver::DriverError> {
    if r.handover.is_idle() {
        return Ok(());
    }
    let step = r.handover.step(status, Instant::now());
    // (A new peer that nothing waited for expires quietly.)
    if !r.retiring.is_empty() {
        for name in &step.expired {
            tracing::warn!(peer = %name, wait = ?super::handover::WAIT, "make-before-break wait expired: new BGP peer not up in time, the peers no longer wanted stop waiting for it");
        }
    }
    for name in step.remove {
        remove(
            r,
            &name,
            "BGP peer removed: the new peers have sent their routes",
        )
        .await?;
    }
    for name in step.overdue {
        let waiting_for: Vec<String> = r.handover.pending().map(str::to_string).collect();
        tracing::warn!(peer = %name, ?waiting_for, wait = ?super::handover::WAIT, "make-before-break wait expired: removing a peer no longer wanted before the new peers have sent their routes");
        remove(r, &name, "BGP peer removed").await?;
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
            retiring: BTreeMap::new(),
            handover: Handover::default(),
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

#[cfg(test)]
#[path = "speaker_tests.rs"]
mod handover_tests;
