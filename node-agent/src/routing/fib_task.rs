//! Best paths → the kernel: the FIB task takes the speaker's best-path
//! batches and programs them ([`crate::dataplane::fib`]); once, after the
//! start-up delay, it removes the routes of a previous run that no best
//! path wants any more (asking the RIB which prefixes have one, rather than
//! keeping a table of its own).

use std::time::Duration;

use bgp::rib::FibChange;
use tokio::sync::mpsc;

use crate::dataplane::fib::{Fib, PendingReconcile};
use crate::status::health::Pulse;

/// Runs until the speaker drops its sender (it is being restarted).
pub async fn run(
    fib: Fib,
    mut rx: mpsc::Receiver<Vec<FibChange>>,
    rib: bgp::driver::FibView,
    reconcile_after: Duration,
    mut pulse: Pulse,
) {
    let reconcile = tokio::time::sleep(reconcile_after);
    let mut reconcile = std::pin::pin!(reconcile);
    let mut reconciling: Option<PendingReconcile> = None;
    let mut reconciled = false;
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
            wanted = PendingReconcile::answer_of(&mut reconciling) => {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::status::health::Health;

    /// The FIB task used to prove itself alive only when it wrote a batch,
    /// so on a quiet network `/livez` failed after ten minutes and the
    /// kubelet would restart a healthy agent. Six hours of silence here.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_fib_task_stays_live() {
        let health = Arc::new(Health::new(Duration::ZERO));
        let fib = Fib::new().expect("netlink socket");
        let (tx, rx) = mpsc::channel(1);
        // A speaker with no peers and no listener: the RIB the task asks.
        let (speaker, _fib_rx) = bgp::driver::Speaker::start(bgp::driver::SpeakerConfig {
            local_as: 65001,
            router_id: "198.18.0.1".parse().expect("router id"),
            listen: vec![],
            cluster_id: None,
            decision: Default::default(),
        })
        .await
        .expect("speaker");
        // No reconcile within the test (it would read this namespace's routes).
        let task = tokio::spawn(run(
            fib,
            rx,
            speaker.fib_view(),
            Duration::from_secs(365 * 86_400),
            health.pulse("fib"),
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
