//! Deferral of initial updates after our own restart (RFC 4724 §4.1), on
//! the RIB task: it ends when there are peers and every one is up and has
//! sent End-of-RIB for each family of its session, or at the deadline
//! [`crate::driver::Speaker::defer_initial_updates`] set.

use tracing::info;

use super::RibTask;
use crate::config::Neighbor;
use crate::fsm::State;

/// Sleeps until `at` (forever without one).
pub(super) async fn deadline(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl RibTask {
    /// Ends the deferral once every peer's initial table is complete.
    pub(super) fn check_deferral(&mut self) {
        if self.defer_until.is_none() {
            return;
        }
        // A range is a template, not a peer to wait for. No peer yet: they
        // are being configured (or there are none: the deadline ends it).
        let mut peers = self
            .peers
            .values()
            .filter(|p| !matches!(p.cfg.neighbor, Neighbor::Range(_)))
            .peekable();
        let complete = peers.peek().is_some()
            && peers.all(|p| {
                p.state == State::Established
                    && !p.families.is_empty()
                    && p.families.iter().all(|f| p.end_of_rib.contains(f))
            });
        if complete {
            self.end_deferral("End-of-RIB from every peer");
        }
    }

    pub(super) fn end_deferral(&mut self, why: &str) {
        self.defer_until = None;
        if self.rib.deferring() {
            info!(reason = why, "initial updates sent");
            self.rib.end_deferral();
        }
    }
}
