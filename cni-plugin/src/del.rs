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

/// Runs DEL.
pub async fn del(conf: &NetConf, att: &Attachment) -> Result<(), CniError> {
    let mut names = Names::new(conf, att);
    if let Some(h) = host_if_from_prev(conf.prev_result.as_ref()) {
        names.host_if = h;
    }
    let host = Nl::here().map_err(|source| CniError::Netns {
        path: "/proc/self/ns/net".into(),
        reason: "netlink socket".into(),
        source,
    })?;
    let veth = async {
        host.delete_link_by_name(&names.host_if)
            .await
            .map_err(|source| CniError::Netlink {
                op: format!("delete {}", names.host_if),
                source,
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
                pod_namespace: att.args.pod_namespace.clone().unwrap_or_default(),
                pod_name: att.args.pod_name.clone().unwrap_or_default(),
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
