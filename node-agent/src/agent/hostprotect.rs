//! Host protection on this node: watches `HostEndpoint`s and
//! `HostNetworkPolicy`s, renders `table inet margay_host` with
//! `policy::host` (failsafe ports first, see there) and applies it when it
//! changes, one transaction each time.
//!
//! ```text
//!  watch HostEndpoint ──┐  (reflector stores, debounced 100 ms)
//!  watch HostNetworkPolicy ┴─► HostState ─ policy::host::plan ─► HostRuleset
//!        ─ differs from the last applied? ─► nft (spawn_blocking) ─ one transaction
//! ```
//!
//! No host endpoint of this node: the table is removed (start-up reconcile
//! included), so a node without host endpoints has no host rules at all.
//! The CRDs may be installed after the agent started: the watches retry
//! with backoff until they are served.

use std::time::Duration;

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use policy::NftSink as _;
use policy::host::{self, Failsafe, FailsafePort, HostConfig, HostError, HostRuleset, HostState};

use crate::dataplane::NftCli;
use crate::k8s::crd::{HostEndpoint, HostNetworkPolicy};

/// The failsafe ports the flags ask for (or the defaults), plus the
/// agent's own health and metrics ports, always.
pub fn failsafe(args: &super::config::AgentArgs) -> Result<Failsafe, HostError> {
    let or_default = |v: &Option<String>, d: &[&str]| v.clone().unwrap_or_else(|| d.join(","));
    let mut f = Failsafe::parse(
        &or_default(&args.failsafe_inbound_host_ports, host::DEFAULT_INBOUND),
        &or_default(&args.failsafe_outbound_host_ports, host::DEFAULT_OUTBOUND),
    )?;
    let agent = [Some(args.health_listen), args.metrics_listen.0];
    f.inbound.extend(
        agent
            .into_iter()
            .flatten()
            .filter(|a| a.port() != 0)
            .map(|a| FailsafePort {
                protocol: policy::Protocol::Tcp,
                port: a.port(),
            }),
    );
    Ok(f)
}

/// What to apply: `None` = no table.
fn desired(
    heps: &Store<HostEndpoint>,
    hnps: &Store<HostNetworkPolicy>,
    cfg: &HostConfig,
) -> Option<HostRuleset> {
    let mut state = HostState::default();
    for e in heps.state() {
        let m = e.to_model();
        state.endpoints.insert(m.name.clone(), m);
    }
    for p in hnps.state() {
        let m = p.to_model();
        state.policies.insert(m.name.clone(), m);
    }
    let plan = host::plan(&state, cfg);
    for issue in &plan.issues {
        tracing::warn!(%issue, "host protection: input partly ignored");
    }
    (!plan.ifaces.is_empty()).then(|| HostRuleset::build(&plan))
}

/// Runs until the agent stops.
pub async fn run(client: kube::Client, cfg: HostConfig) {
    let (heps, hep_w) = reflector::store();
    let (hnps, hnp_w) = reflector::store();
    let hep_stream = reflector::reflector(
        hep_w,
        watcher::watcher(Api::<HostEndpoint>::all(client.clone()), Default::default()),
    )
    .default_backoff()
    .map(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    let hnp_stream = reflector::reflector(
        hnp_w,
        watcher::watcher(Api::<HostNetworkPolicy>::all(client), Default::default()),
    )
    .default_backoff()
    .map(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    let mut events = std::pin::pin!(futures::stream::select(hep_stream, hnp_stream));
    // Start-up: wait (up to 10 s) for both first lists, so a restart does
    // not remove a table that is still wanted.
    {
        let ready = async {
            let _ = heps.wait_until_ready().await;
            let _ = hnps.wait_until_ready().await;
        };
        let mut ready = std::pin::pin!(tokio::time::timeout(Duration::from_secs(10), ready));
        loop {
            tokio::select! {
                _ = &mut ready => break,
                ev = events.next() => if ev.is_none() { return },
            }
        }
    }
    let mut applied: Option<Option<HostRuleset>> = None;
    let mut failing = false;
    let mut dirty = true;
    loop {
        if dirty {
            // Coalesce bursts (an initial list, kubectl apply of several objects).
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(100), events.next()).await
            {
                if let Err(e) = ev
                    && !failing
                {
                    tracing::warn!(error = %e, "host protection watch failing (CRDs installed?); retrying");
                    failing = true;
                }
            }
            let want = desired(&heps, &hnps, &cfg);
            if applied.as_ref() != Some(&want) {
                let batch = match &want {
                    Some(rs) => rs.apply_batch(),
                    None => host::render::remove_batch(),
                };
                let res = tokio::task::spawn_blocking(move || NftCli::new().apply(&batch)).await;
                match res {
                    Ok(Ok(())) => {
                        tracing::info!(
                            chains = want.as_ref().map_or(0, |r| r.chains.len()),
                            "host protection table applied"
                        );
                        applied = Some(want);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %crate::logging::chain(&e), "applying the host protection table failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "host protection apply task failed"),
                }
            }
            dirty = false;
        }
        match events.next().await {
            None => return,
            Some(Ok(())) => {
                failing = false;
                dirty = true;
            }
            Some(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "host protection watch failing (CRDs installed?); retrying");
                    failing = true;
                }
            }
        }
    }
}
