//! Early Allocate answers, confirmed at EndpointUp (the early answer is
//! explained in [`super`]): the outcome of each allocation answered early,
//! by handle, until its EndpointUp reads it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a recorded outcome waits for its EndpointUp.
const KEEP: Duration = Duration::from_secs(120);

/// The final outcome of an allocation: its addresses, or why it failed.
pub type Outcome = Result<Vec<IpAddr>, String>;

/// Allocations answered early, by handle.
#[derive(Clone, Default)]
pub struct Confirmations {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

struct Entry {
    since: Instant,
    outcome: watch::Receiver<Option<Outcome>>,
}

/// Why a confirmation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfirmError {
    /// The write that records the addresses failed.
    #[error("recording the allocation of {handle} failed: {reason}")]
    Failed {
        /// IPAM handle.
        handle: String,
        /// The allocator's error.
        reason: String,
    },
    /// The record holds other addresses than the pod was given.
    #[error("the allocation of {handle} was recorded as {recorded:?}, not {given:?}")]
    Changed {
        /// IPAM handle.
        handle: String,
        /// What the write recorded.
        recorded: Vec<IpAddr>,
        /// What the plugin configured.
        given: Vec<IpAddr>,
    },
    /// No outcome within the time allowed.
    #[error("the allocation of {0} was not recorded in time")]
    Timeout(String),
}

impl Confirmations {
    /// Registers an allocation answered early; the sender gets its outcome.
    pub fn pending(&self, handle: &str) -> watch::Sender<Option<Outcome>> {
        let (tx, rx) = watch::channel(None);
        let now = Instant::now();
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, e| now.duration_since(e.since) < KEEP);
        m.insert(
            handle.to_string(),
            Entry {
                since: now,
                outcome: rx,
            },
        );
        tx
    }

    /// Waits until the allocation of `handle` (if it was answered early) is
    /// recorded with exactly `given`. Handles not answered early pass at
    /// once: their Allocate answered only after the write.
    pub async fn confirm(
        &self,
        handle: &str,
        given: &[IpAddr],
        timeout: Duration,
    ) -> Result<(), ConfirmError> {
        let rx = {
            let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            m.get(handle).map(|e| e.outcome.clone())
        };
        let Some(mut rx) = rx else {
            return Ok(());
        };
        let outcome = match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone(),
            // The recording task is gone without an outcome.
            Ok(Err(_)) => Some(Err("allocation task stopped".into())),
            Err(_) => return Err(ConfirmError::Timeout(handle.to_string())),
        };
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(handle);
        match outcome {
            Some(Ok(mut recorded)) => {
                let mut given = given.to_vec();
                recorded.sort();
                given.sort();
                if recorded == given {
                    Ok(())
                } else {
                    Err(ConfirmError::Changed {
                        handle: handle.to_string(),
                        recorded,
                        given,
                    })
                }
            }
            Some(Err(reason)) => Err(ConfirmError::Failed {
                handle: handle.to_string(),
                reason,
            }),
            None => Err(ConfirmError::Timeout(handle.to_string())),
        }
    }

    /// Allocations answered early and not yet confirmed.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test]
    async fn confirms_waits_and_detects_failure_and_change() {
        let c = Confirmations::default();
        let t = Duration::from_secs(2);
        // Not answered early: passes at once.
        assert_eq!(c.confirm("net.x", &[ip("198.19.0.9")], t).await, Ok(()));

        // Recorded later with the same addresses (any order).
        let tx = c.pending("net.a");
        let c2 = c.clone();
        let wait = tokio::spawn(async move {
            c2.confirm("net.a", &[ip("2001:db8::2"), ip("198.19.0.2")], t)
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!wait.is_finished(), "must wait for the record");
        tx.send_replace(Some(Ok(vec![ip("198.19.0.2"), ip("2001:db8::2")])));
        assert_eq!(wait.await.expect("join"), Ok(()));
        assert!(c.is_empty());

        // Recorded with another address.
        let tx = c.pending("net.b");
        tx.send_replace(Some(Ok(vec![ip("198.19.0.3")])));
        assert!(matches!(
            c.confirm("net.b", &[ip("198.19.0.2")], t).await,
            Err(ConfirmError::Changed { .. })
        ));

        // The write failed.
        let tx = c.pending("net.c");
        tx.send_replace(Some(Err("conflict".into())));
        assert!(matches!(
            c.confirm("net.c", &[ip("198.19.0.4")], t).await,
            Err(ConfirmError::Failed { .. })
        ));

        // Never recorded: bounded wait; the recording task died: failure.
        let _tx = c.pending("net.d");
        assert_eq!(
            c.confirm("net.d", &[ip("198.19.0.5")], Duration::from_millis(30))
                .await,
            Err(ConfirmError::Timeout("net.d".into()))
        );
        let tx = c.pending("net.e");
        drop(tx);
        assert!(matches!(
            c.confirm("net.e", &[ip("198.19.0.6")], t).await,
            Err(ConfirmError::Failed { .. })
        ));
    }
}
