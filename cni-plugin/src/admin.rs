//! CNI 1.1 GC and STATUS.

use cni_proto::proto::{EndpointDownRequest, GarbageCollectRequest, PoolStatus};
use ipnetwork::IpNetwork;

use crate::agent;
use crate::config::{Family, NetConf};
use crate::error::CniError;
use crate::netlink::Nl;
use crate::wiring::{HOST_PREFIX, handle_id, owner_alias};

/// GC: the agent releases every handle of this network not among the
/// valid attachments; the endpoints of released handles are taken down,
/// and a host veth still marked as one of theirs is deleted (nothing of a
/// collected attachment is left on the node).
pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::InvalidConfig("GC requires cni.dev/valid-attachments".into()))?;
    let valid_handles: Vec<String> = valid
        .iter()
        .map(|a| handle_id(&conf.name, &a.container_id, &a.ifname))
        .collect();
    let agent = agent::connect(
        &conf.agent_socket(),
        conf.timeouts.connect(),
        conf.timeouts.request(),
    )
    .await?;
    let reply = agent
        .garbage_collect(GarbageCollectRequest {
            network: conf.name.clone(),
            valid_handles,
        })
        .await?;
    let mut errors = Vec::new();
    for handle in &reply.released_handles {
        let down = EndpointDownRequest {
            handle: handle.clone(),
            ..Default::default()
        };
        if let Err(e) = agent.endpoint_down(down).await {
            errors.push(format!("EndpointDown {handle}: {}", e.details()));
        }
    }
    match delete_veths_of(&reply.released_handles).await {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(veths = ?gone, "GC deleted veths of collected attachments")
        }
        Ok(_) => {}
        Err(e) => errors.push(e.details()),
    }
    tracing::info!(released = ?reply.released_handles, "GC done");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::GcIncomplete { errors })
    }
}

/// Deletes the host veths whose owner mark names one of `handles`.
async fn delete_veths_of(handles: &[String]) -> Result<Vec<String>, CniError> {
    if handles.is_empty() {
        return Ok(Vec::new());
    }
    let owners: Vec<String> = handles.iter().map(|h| owner_alias(h)).collect();
    let nl = Nl::here().map_err(|source| CniError::Netns {
        path: "/proc/self/ns/net".into(),
        reason: "netlink socket".into(),
        source,
    })?;
    let links = nl.links().await.map_err(|source| CniError::Netlink {
        op: "list links".into(),
        source,
    })?;
    let mut gone = Vec::new();
    for l in links {
        if l.name.starts_with(HOST_PREFIX) && l.alias.as_ref().is_some_and(|a| owners.contains(a)) {
            nl.delete_link(l.index)
                .await
                .map_err(|source| CniError::Netlink {
                    op: format!("delete {}", l.name),
                    source,
                })?;
            gone.push(l.name);
        }
    }
    Ok(gone)
}

fn pool_family(p: &PoolStatus) -> Option<Family> {
    p.cidr.parse::<IpNetwork>().ok().map(|n| Family::of(n.ip()))
}

fn hinted(conf: &NetConf, p: &PoolStatus) -> bool {
    conf.ipam.pools.is_empty() || conf.ipam.pools.iter().any(|h| *h == p.name || *h == p.cidr)
}

/// STATUS: succeeds when the agent is reachable and ready, and every
/// wanted family has an eligible pool with a free address; otherwise
/// code 50.
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |reason: String| CniError::NotAvailable { reason };
    let agent = agent::connect(
        &conf.agent_socket(),
        conf.timeouts.connect(),
        conf.timeouts.request(),
    )
    .await
    .map_err(|e| unavailable(e.details()))?;
    let s = agent.status().await.map_err(|e| unavailable(e.details()))?;
    if !s.ready {
        return Err(unavailable(format!(
            "agent on {:?} not ready: {}",
            s.node, s.message
        )));
    }
    let eligible: Vec<&PoolStatus> = s
        .pools
        .iter()
        .filter(|p| !p.disabled && hinted(conf, p))
        .collect();
    if eligible.is_empty() {
        return Err(unavailable(
            "no enabled IP pool matches this network".into(),
        ));
    }
    let free = |p: &&PoolStatus| p.allocated < p.capacity;
    let wanted = conf.families(&[]);
    if wanted.is_empty() {
        if !eligible.iter().any(free) {
            return Err(unavailable("every eligible IP pool is full".into()));
        }
    } else {
        for f in wanted {
            if !eligible
                .iter()
                .filter(|p| pool_family(p) == Some(f))
                .any(free)
            {
                return Err(unavailable(format!(
                    "no free {f:?} address in any eligible pool"
                )));
            }
        }
    }
    Ok(())
}
