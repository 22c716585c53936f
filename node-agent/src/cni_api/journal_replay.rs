//! Replays the CNI plugin's release journal (`cni_plugin::journal`): the
//! DELs that ran while this agent was unreachable. At start and then every
//! period, each entry's attachment is taken down (routes, policy, record)
//! and its handle released; the entry goes once both succeeded, and stays
//! for the next round otherwise (the API server may be down too). Release
//! is by handle, so a replay can neither free someone else's address nor
//! free one twice.

use std::path::PathBuf;
use std::time::Duration;

use cni_plugin::journal;

use crate::endpoints::ControllerHandle;
use crate::status::health::Pulse;

/// What the replay needs.
#[derive(Clone)]
pub struct Replay {
    /// The journal directory (the plugin's `journal_dir`).
    pub dir: PathBuf,
    /// The dataplane controller (EndpointDown).
    pub controller: ControllerHandle,
    /// The allocator, through the reserve (Release: a pod may still hold
    /// a reserve unit).
    pub ipam: ipam::reserve::Reserve,
    /// How often to look again.
    pub period: Duration,
}

impl Replay {
    /// Replays every entry once; returns how many were done.
    pub async fn once(&self) -> usize {
        let entries = match journal::entries(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the CNI release journal");
                return 0;
            }
        };
        let mut done = 0;
        for (path, entry) in entries {
            let e = match entry {
                Ok(e) => e,
                Err(err) => {
                    // Never retried: moved aside for an operator to read.
                    let aside = path.with_extension("bad");
                    tracing::error!(error = %err, moved_to = %aside.display(), "damaged CNI release journal entry");
                    let _ = std::fs::rename(&path, &aside);
                    continue;
                }
            };
            if let Err(err) = self
                .controller
                .down(e.container_id.clone(), e.handle.clone())
                .await
            {
                tracing::warn!(handle = %e.handle, error = %err, "journaled DEL: taking the endpoint down failed; retrying later");
                continue;
            }
            match self.ipam.release(&e.handle).await {
                Ok(ips) => {
                    if let Err(err) = journal::remove(&path) {
                        tracing::warn!(error = %err, "cannot remove a replayed journal entry");
                    }
                    done += 1;
                    tracing::info!(handle = %e.handle, pod = %format!("{}/{}", e.pod_namespace, e.pod_name), released = ?ips, journaled_because = %e.reason, "replayed a DEL the agent missed");
                }
                Err(err) => {
                    tracing::warn!(handle = %e.handle, error = %err, "journaled DEL: release failed; retrying later")
                }
            }
        }
        done
    }

    /// Replays now and then every period, until the task is dropped.
    pub async fn run(self, mut pulse: Pulse) {
        let mut tick = tokio::time::interval(self.period);
        loop {
            tokio::select! {
                _ = tick.tick() => { self.once().await; }
                () = pulse.tick() => {}
            }
        }
    }
}
