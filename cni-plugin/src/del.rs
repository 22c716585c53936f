//! DEL: idempotent, works without CNI_NETNS and without prevResult, may
//! come twice, may come for an *old* sandbox of a pod after the runtime has
//! started a new one, and succeeds while the agent is away.
//!
//! A DEL touches only what its own attachment owns:
//! - in the sandbox's namespace (when CNI_NETNS still opens), the
//!   container interface: it is this attachment's by construction, and
//!   deleting it takes the host end of the pair with it;
//! - on the host, the veth of the pod's name only if its alias names this
//!   attachment ([`crate::wiring::owner_alias`]): a newer sandbox of the
//!   same pod owns the same name, and its veth stays. A veth without an
//!   alias (in creation right now) is left alone too.
//!
//! Then the agent is told (EndpointDown, then Release). If it cannot be
//! reached, the release goes into the on-node journal ([`crate::journal`])
//! and DEL succeeds: the runtime would otherwise retry it forever.

use cni_proto::proto::EndpointDownRequest;

use crate::add::Names;
use crate::agent;
use crate::config::NetConf;
use crate::env::Attachment;
use crate::error::CniError;
use crate::journal;
use crate::netlink::Nl;
use crate::result::CniResult;
use crate::wiring::{self, HOST_PREFIX};

/// The host veth named in a prevResult: an interface without sandbox whose
/// name has Margay's prefix.
pub fn host_if_from_prev(prev: Option<&serde_json::Value>) -> Option<String> {
    let prev = CniResult::from_value(prev?).ok()?;
    prev.interfaces
        .into_iter()
        .find(|i| {
            i.sandbox.as_deref().is_none_or(str::is_empty)
                && i.name.starts_with(HOST_PREFIX)
                && i.name.len() == 15
        })
        .map(|i| i.name)
}

/// What the local teardown found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Teardown {
    /// The container interface was deleted in the sandbox's namespace
    /// (the host end went with it).
    PodSide,
    /// The host veth, marked as this attachment's, was deleted.
    HostSide,
    /// The host veth belongs to another attachment (a newer sandbox of the
    /// pod, or one being created): left in place.
    NotOurs {
        /// Its alias ("" if it has none).
        owner: String,
    },
    /// Nothing of this attachment is left on the node.
    Gone,
}

/// Removes this attachment's veth pair from the calling thread's namespace
/// (the node) and from `pod` = (CNI_NETNS, CNI_IFNAME), on a runtime of its
/// own (see [`del`]).
fn teardown(host_if: &str, owner: &str, pod: Option<(&str, &str)>) -> Result<Teardown, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| CniError::Io {
            what: "runtime for veth deletion",
            source,
        })?;
    rt.block_on(async {
        if let Some((netns, ifname)) = pod
            && delete_pod_side(netns, ifname).await?
        {
            return Ok(Teardown::PodSide);
        }
        let host = Nl::here().map_err(|source| CniError::Netns {
            path: "/proc/self/ns/net".into(),
            reason: "netlink socket".into(),
            source,
        })?;
        let link = host
            .link(host_if)
            .await
            .map_err(|source| CniError::Netlink {
                op: format!("get {host_if}"),
                source,
            })?;
        let Some(link) = link else {
            return Ok(Teardown::Gone);
        };
        let alias = link.alias.unwrap_or_default();
        if alias != owner {
            return Ok(Teardown::NotOurs { owner: alias });
        }
        host.delete_link(link.index)
            .await
            .map_err(|source| CniError::Netlink {
                op: format!("delete {host_if}"),
                source,
            })?;
        Ok(Teardown::HostSide)
    })
}

/// Deletes the veth `ifname` in the namespace at `netns`, if both exist.
/// A namespace that is gone (or not a namespace) is not an error: the
/// sandbox is gone, and its veth pair with it.
async fn delete_pod_side(netns: &str, ifname: &str) -> Result<bool, CniError> {
    let Ok(ns) = wiring::open_netns(netns) else {
        return Ok(false);
    };
    let Ok(pod) = Nl::in_netns(&ns).await else {
        return Ok(false);
    };
    match pod.link(ifname).await {
        Ok(Some(l)) if l.kind.as_deref() == Some("veth") => {
            pod.delete_link(l.index)
                .await
                .map_err(|source| CniError::Netlink {
                    op: format!("delete {ifname} in {netns}"),
                    source,
                })
        }
        _ => Ok(false),
    }
}

/// Runs DEL.
pub async fn del(conf: &NetConf, att: &Attachment) -> Result<(), CniError> {
    let mut names = Names::new(conf, att);
    if let Some(h) = host_if_from_prev(conf.prev_result.as_ref()) {
        names.host_if = h;
    }
    // Unregistering a veth takes the kernel ~20 ms (RCU grace periods) and
    // blocks the thread that asked; do it on its own thread so the agent
    // round trips run meanwhile.
    let host_if = names.host_if.clone();
    let owner = wiring::owner_alias(&names.handle);
    let pod = att.netns.clone().map(|ns| (ns, att.ifname.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("margay-del".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let pod = pod.as_ref().map(|(n, i)| (n.as_str(), i.as_str()));
            let _ = tx.send(teardown(&host_if, &owner, pod));
        })
        .map_err(|source| CniError::Io {
            what: "thread for veth deletion",
            source,
        })?;
    let local = async {
        rx.await.unwrap_or_else(|_| {
            Err(CniError::Io {
                what: "veth deletion thread",
                source: std::io::Error::other("thread ended without an answer"),
            })
        })
    };
    let agent_part = async {
        let agent = agent::connect(
            &conf.agent_socket(),
            conf.timeouts.connect(),
            conf.timeouts.request(),
        )
        .await?;
        // Policy and route go first, then the address may be reused.
        agent
            .endpoint_down(EndpointDownRequest {
                container_id: att.container_id.clone(),
                pod_namespace: names.pod_namespace.clone(),
                pod_name: names.pod_name.clone(),
                host_ifname: names.host_if.clone(),
                handle: names.handle.clone(),
            })
            .await?;
        agent.release(&names.handle).await
    };
    let (local, told) = tokio::join!(local, agent_part);
    let local = local?;
    match told {
        Ok(released) => tracing::info!(
            host_if = %names.host_if,
            local = ?local,
            released = ?released.released_ips,
            "pod detached"
        ),
        Err(e @ CniError::TryAgain { .. }) => {
            // The agent is away: record the release for it and succeed.
            let entry = journal::Entry {
                handle: names.handle.clone(),
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
                pod_namespace: names.pod_namespace.clone(),
                pod_name: names.pod_name.clone(),
                host_if: names.host_if.clone(),
                reason: e.details(),
                recorded_at: journal::now_secs(),
            };
            let dir = conf.journal_dir();
            match journal::record(&dir, &entry) {
                Ok(path) => tracing::warn!(
                    host_if = %names.host_if,
                    local = ?local,
                    agent = %e.details(),
                    journal = %path.display(),
                    "pod detached locally; the agent is unreachable, so the release is journaled for it to replay"
                ),
                // Nothing recorded: the runtime must retry.
                Err(j) => {
                    tracing::error!(error = %j, "cannot journal the release either");
                    return Err(e);
                }
            }
        }
        Err(e) => return Err(e),
    }
    Ok(())
}
