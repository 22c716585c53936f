//! The releaser task: gives back to IPAM the addresses of the sandboxes the
//! controller found superseded by a new sandbox of their pod (the
//! controller queues their handles and does not wait on the API server).

use crate::status::health::Pulse;

/// Releases the handles the controller found superseded by a new sandbox
/// of their pod. A failed release is only logged: the controller finds the
/// allocation again at its next reconcile.
pub async fn run(
    alloc: ipam::reserve::Reserve,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    mut pulse: Pulse,
) {
    loop {
        let handle = tokio::select! {
            h = rx.recv() => match h {
                Some(h) => h,
                None => return pulse.retire(),
            },
            () = pulse.tick() => continue,
        };
        match alloc.release(&handle).await {
            Ok(ips) if !ips.is_empty() => {
                tracing::info!(handle = %handle, released = ?ips, "superseded sandbox's addresses released")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(handle = %handle, error = %e, "releasing a superseded sandbox's addresses failed; retried at the next reconcile")
            }
        }
    }
}
