//! Session status: each status turn asks the speaker for its peers (and
//! its RIB when that changed) and publishes them as `/status` rows,
//! readiness counts and metrics.

use std::time::Instant;

use bgp::driver::PeerStatus;
use bgp::fsm::State;

use super::speaker::Running;
use crate::status::bgp_routes;
use crate::status::health::Health;
use crate::status::metrics::{Metrics, PeerLabels};
use crate::status::model::PeerRow;

/// One status turn. The speaker answers here: a stuck speaker stops the
/// routing loop, and so fails liveness.
pub async fn report(r: &mut Running, health: &Health, metrics: &Metrics) {
    let Ok(status) = r.speaker.status().await else {
        return;
    };
    // Peers no longer wanted go once the new ones are up (make-before-break).
    if let Err(e) = super::speaker::settle(r, &status).await {
        tracing::warn!(error = %crate::logging::chain(&e), "removing BGP peers no longer wanted failed");
    }
    // The RIB for `margayctl bgp routes`, when it changed.
    if let Ok(Some(routes)) = r
        .speaker
        .routes(bgp_routes::LIMIT, r.routes_generation)
        .await
    {
        r.routes_generation = Some(routes.generation);
        health.set_status(
            "bgp_routes",
            serde_json::json!(bgp_routes::section(&routes)),
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
        .filter(|s| s.state == State::Established && !r.is_retiring(&s.name))
        .count();
    health.set_bgp(r.peers.len(), established);
    for r in &rows {
        let labels = PeerLabels {
            peer: if r.address.is_empty() {
                r.name.clone()
            } else {
                r.address.clone()
            },
            kind: r.kind.clone(),
        };
        metrics
            .bgp_session_established
            .get_or_create(&labels)
            .set(i64::from(r.state == "Established"));
        metrics
            .bgp_prefixes_accepted
            .get_or_create(&labels)
            .set(i64::from(r.accepted));
        metrics
            .bgp_prefixes_advertised
            .get_or_create(&labels)
            .set(i64::from(r.sent));
    }
    health.set_status("bgp_peers", serde_json::json!(rows));
}
