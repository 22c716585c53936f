//! DEL: idempotent, works without CNI_NETNS and without prevResult, may
//! come twice. The host veth is removed (which removes its peer) while the
//! agent is told EndpointDown and Release.

use ipam::proto::EndpointDownRequest;

use crate::add::Names;
use crate::agent;
use crate::config::NetConf;
use crate::env::Attachment;
use crate::error::CniError;
use crate::netlink::Nl;
use crate::result::CniResult;
use crate::wiring::HOST_PREFIX;

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

/// Deletes the host veth (and so its peer) from the calling thread's
/// namespace, on a runtime of its own. Returns whether it existed.
///
/// When no host veth of that name exists but the container's namespace is
/// known (a DEL whose CNI_ARGS or prevResult do not match the ADD's), the
/// container-side veth `ifname` is removed instead, which takes its peer.
fn delete_host_veth(host_if: &str, pod: Option<(&str, &str)>) -> Result<bool, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| CniError::Io {
            what: "runtime for veth deletion",
            source,
        })?;
    rt.block_on(async {
        let host = Nl::here().map_err(|source| CniError::Netns {
            path: "/proc/self/ns/net".into(),
            reason: "netlink socket".into(),
            source,
        })?;
        let existed =
            host.delete_link_by_name(host_if)
                .await
                .map_err(|source| CniError::Netlink {
                    op: format!("delete {host_if}"),
                    source,
                })?;
        if existed {
            return Ok(true);
        }
        let Some((netns, ifname)) = pod else {
            return Ok(false);
        };
        // Best effort: the namespace may be gone already, which is fine.
        let Ok(ns) = std::fs::File::open(netns) else {
            return Ok(false);
        };
        let Ok(pod) = Nl::in_netns(&ns).await else {
            return Ok(false);
        };
        match pod.link(ifname).await {
            Ok(Some(l)) if l.kind.as_deref() == Some("veth") => {
                tracing::info!(
                    netns,
                    ifname,
                    "host veth {host_if} not found; deleting the pod side"
                );
                pod.delete_link(l.index)
                    .await
                    .map_err(|source| CniError::Netlink {
                        op: format!("delete {ifname} in {netns}"),
                        source,
                    })
            }
            _ => Ok(false),
        }
    })
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
    let pod = att.netns.clone().map(|ns| (ns, att.ifname.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("margay-del".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let pod = pod.as_ref().map(|(n, i)| (n.as_str(), i.as_str()));
            let _ = tx.send(delete_host_veth(&host_if, pod));
        })
        .map_err(|source| CniError::Io {
            what: "thread for veth deletion",
            source,
        })?;
    let veth = async {
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
    let (veth, released) = tokio::join!(veth, agent_part);
    let existed = veth?;
    let released = released?;
    tracing::info!(
        host_if = %names.host_if,
        veth_existed = existed,
        released = ?released.released_ips,
        "pod detached"
    );
    Ok(())
}
