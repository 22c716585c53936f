//! Best paths → the kernel: the FIB task takes the speaker's best-path
//! batches and programs them ([`crate::dataplane::fib`]); once, after the
//! start-up delay, it removes the routes of a previous run that no best
//! path wants any more.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use bgp::rib::FibChange;
use bgp::wire::Prefix;
use tokio::sync::mpsc;

use crate::dataplane::fib::Fib;
use crate::status::health::Pulse;

/// Runs until the speaker drops its sender (it is being restarted).
pub async fn run(
    fib: Fib,
    mut rx: mpsc::Receiver<Vec<FibChange>>,
    reconcile_after: Duration,
    mut pulse: Pulse,
) {
    let mut best: HashMap<Prefix, Vec<IpAddr>> = HashMap::new();
    let reconcile = tokio::time::sleep(reconcile_after);
    let mut reconcile = std::pin::pin!(reconcile);
    let mut reconciled = false;
    loop {
        tokio::select! {
            // Quiet for hours on a stable network: still alive.
            () = pulse.tick() => {}
            batch = rx.recv() => {
                // The speaker stopped (it is being restarted): on purpose.
                let Some(batch) = batch else { return pulse.retire() };
                for c in &batch {
                    if c.next_hops.is_empty() {
                        best.remove(&c.prefix);
                    } else {
                        best.insert(c.prefix, c.next_hops.clone());
                    }
                }
                if let Err(e) = fib.apply(&batch).await {
                    tracing::warn!(error = %crate::logging::chain(&e), "programming BGP routes failed");
                }
                pulse.beat();
            }
            () = &mut reconcile, if !reconciled => {
                reconciled = true;
                let wanted: HashSet<Prefix> = best.keys().copied().collect();
                match fib.reconcile(&wanted).await {
                    Ok(n) => tracing::info!(removed = n, kept = wanted.len(), "BGP routes reconciled after start-up"),
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
        // No reconcile within the test (it would read this namespace's routes).
        let task = tokio::spawn(run(
            fib,
            rx,
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
