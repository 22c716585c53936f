//! ADD: Allocate → wire → EndpointUp → result; any failure after
//! allocation rolls back (veth removed, EndpointDown, Release).

use std::net::IpAddr;

use cni_proto::proto::{AllocateReply, AllocateRequest, EndpointDownRequest, EndpointUpRequest};
use serde_json::Value;

use crate::agent::{self, Agent};
use crate::config::{Family, NetConf};
use crate::env::Attachment;
use crate::error::CniError;
use crate::netlink::{Nl, format_mac};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::version::CniVersion;
use crate::wiring::{self, GATEWAY_V4, HOST_MAC, Plan};

/// Names derived from the attachment.
#[derive(Debug, Clone)]
pub struct Names {
    /// IPAM handle.
    pub handle: String,
    /// Host-side veth.
    pub host_if: String,
    /// The Kubernetes pod's namespace and name, both empty without a pod
    /// identity ([`crate::env::CniArgs::k8s_pod`]).
    pub pod_namespace: String,
    pub pod_name: String,
}

impl Names {
    /// Derives the handle and host veth name.
    pub fn new(conf: &NetConf, att: &Attachment) -> Self {
        let handle = wiring::handle_id(&conf.name, &att.container_id, &att.ifname);
        let pod_key = att.args.pod_key();
        let host_if = wiring::host_veth_name(&wiring::host_veth_key(
            pod_key.as_deref(),
            &handle,
            &att.ifname,
        ));
        let (pod_namespace, pod_name) = att.args.k8s_pod();
        Names {
            handle,
            host_if,
            pod_namespace,
            pod_name,
        }
    }
}

/// Runs ADD and returns the result in version `v`.
pub async fn add(conf: &NetConf, v: CniVersion, att: &Attachment) -> Result<Value, CniError> {
    let netns_path = att.netns.as_deref().ok_or_else(|| CniError::InvalidEnv {
        var: "CNI_NETNS",
        reason: "not set".into(),
    })?;
    let names = Names::new(conf, att);
    let requested = conf.requested_ips(&att.args.ips)?;
    let families = conf.families(&requested);
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_value)
        .transpose()
        .map_err(|e| CniError::InvalidConfig(format!("prevResult: {e}")))?;

    let req = AllocateRequest {
        handle: names.handle.clone(),
        pod_namespace: names.pod_namespace.clone(),
        pod_name: names.pod_name.clone(),
        node: String::new(),
        families: families
            .iter()
            .map(|f| match f {
                Family::V4 => cni_proto::proto::Family::Ipv4 as i32,
                Family::V6 => cni_proto::proto::Family::Ipv6 as i32,
            })
            .collect(),
        pool_hints: conf.ipam.pools.clone(),
        requested_ips: requested.iter().map(ToString::to_string).collect(),
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        // We call EndpointUp before printing the result: the agent may
        // answer before the allocation is recorded and confirm it there.
        confirm_at_endpoint_up: true,
    };
    // Allocate first: the agent's write to the API server is the slowest
    // step, and it runs while the namespaces are opened and the veth is
    // created here. Every failure from here on releases what it allocated.
    let (socket, connect_timeout, request_timeout) = (
        conf.agent_socket(),
        conf.timeouts.connect(),
        conf.timeouts.request(),
    );
    // A missing or bogus namespace is an error before anything is asked.
    let ns = wiring::open_netns(netns_path)?;
    let (connected_tx, connected) = tokio::sync::oneshot::channel::<()>();
    let allocating = tokio::spawn(async move {
        let agent = agent::connect(&socket, connect_timeout, request_timeout).await;
        drop(connected_tx);
        let agent = agent?;
        tracing::debug!("agent connected");
        let reply = agent.allocate(req).await;
        tracing::trace!("Allocate answered");
        Ok::<_, CniError>((agent, reply))
    });
    // Allocate goes out before this thread starts on the kernel: the agent
    // answers it (and prepares the pod's policy) while the namespaces are
    // opened and the veth is created, instead of competing with the veth
    // creation for the CPU. Connected (or failed), then one round of the
    // scheduler for the request to be written.
    let _ = connected.await;
    tokio::task::yield_now().await;
    let (host, pod) = match open_namespaces(&ns, netns_path) {
        Ok(o) => o,
        Err(e) => {
            abandon(allocating, &names.handle).await;
            return Err(e);
        }
    };
    tracing::debug!("namespaces open");
    let owner = wiring::owner_alias(&names.handle);
    // The veth is created at the kernel's default MTU (0 here): the MTU is
    // settled once the agent has answered, and set as the links come up.
    let plan = Plan {
        host_if: &names.host_if,
        ifname: &att.ifname,
        netns_path,
        mtu: 0,
        owner: &owner,
    };
    // Creating the veth does not need the address: do it while the agent
    // allocates.
    let (allocated, veth) = tokio::join!(
        async {
            allocating.await.map_err(|e| CniError::TryAgain {
                op: "Allocate",
                msg: format!("allocation task failed: {e}"),
            })?
        },
        async {
            let r = wiring::create_veth(&host, &pod, &ns, &plan).await;
            tracing::trace!("veth ready");
            r
        }
    );
    if let Err(e @ CniError::InterfaceExists { .. }) = veth {
        // Nothing was created (the request failed as a whole): the pod
        // already has an interface of that name, so the host veth of that
        // name, if any, is not this ADD's either. A duplicate ADD of a live
        // attachment (same handle: the agent answered with the addresses
        // that interface carries: they stay), or someone else's interface
        // (what was allocated here goes).
        if let Ok((agent, reply)) = allocated {
            let existing = existing_addresses(&pod, &att.ifname).await;
            let keep = match &reply {
                Ok(r) => addresses(r, &families)
                    .is_ok_and(|ips| ips.iter().all(|ip| existing.contains(ip))),
                // The outcome is unknown and the handle may be the live
                // attachment's: a leak is the leak GC's to find, a live
                // pod's address released is not recoverable.
                Err(CniError::TryAgain { .. }) => !existing.is_empty(),
                Err(_) => true, // nothing allocated
            };
            if keep {
                tracing::debug!(
                    handle = %names.handle,
                    "the pod's interface exists: its addresses stay"
                );
            } else {
                release_quietly(&agent, &names.handle).await;
            }
        }
        return Err(e);
    }
    // From here a failure removes the veth only if this ADD created it.
    let created = veth.is_ok();
    // An allocation that failed: the veth goes if this ADD created it, and
    // what the agent may have allocated is released (`Some(agent)`).
    let allocation = match allocated {
        // Not connected: nothing was allocated.
        Err(e) => Err((None, e)),
        Ok((agent, Err(e))) => {
            // A timeout or a dropped connection may have allocated anyway.
            let release = matches!(e, CniError::TryAgain { .. });
            Err((release.then_some(agent), e))
        }
        Ok((agent, Ok(reply))) => match addresses(&reply, &families) {
            Ok(ips) => Ok((agent, reply, ips)),
            Err(e) => Err((Some(agent), e)),
        },
    };
    let (agent, reply, ips) = match allocation {
        Ok(a) => a,
        Err((release, e)) => {
            if created {
                remove_host_veth(&host, &names.host_if).await;
            }
            if let Some(agent) = release {
                release_quietly(&agent, &names.handle).await;
            }
            return Err(e);
        }
    };
    tracing::debug!(handle = %names.handle, ?ips, "allocated");
    if let Err(e) = veth {
        tracing::warn!(error = %e.details(), "ADD failed creating the veth; rolling back");
        remove_host_veth(&host, &names.host_if).await;
        rollback(&host, &agent, &names, att, false).await;
        return Err(e);
    }
    tracing::debug!("veth created");
    // The conflist's MTU, else the agent's (lower when a pool uses VXLAN),
    // else the one of the default route's interface, detected only then.
    let mtu = match pod_mtu(conf.mtu, reply.mtu) {
        Some(m) => m,
        None => match wiring::detect_mtu(&host).await {
            Ok(m) => m,
            Err(e) => {
                rollback(&host, &agent, &names, att, true).await;
                return Err(e);
            }
        },
    };
    tracing::debug!(mtu, "MTU settled");
    let plan = Plan { mtu, ..plan };

    let v4 = ips.iter().any(IpAddr::is_ipv4);
    let v6 = ips.iter().any(IpAddr::is_ipv6);
    // The host veth up, then EndpointUp (the agent's route needs the host
    // veth up) while the rest of the host side and the pod side are
    // configured: the agent works while this process waits on netlink.
    // The result waits for all of it. (Holding the pod side's requests
    // until EndpointUp is out was measured 7% slower per ADD, interleaved:
    // its netlink work then overlaps the agent's route, both under the
    // kernel's rtnl lock.)
    let (host_side, pod_side) = tokio::join!(
        async {
            let index = wiring::host_up(&host, &plan, v6).await?;
            tracing::debug!("host side up");
            let (up, settings) = tokio::join!(
                agent.endpoint_up(EndpointUpRequest {
                    container_id: att.container_id.clone(),
                    pod_namespace: names.pod_namespace.clone(),
                    pod_name: names.pod_name.clone(),
                    host_ifname: names.host_if.clone(),
                    ifname: att.ifname.clone(),
                    netns: netns_path.to_string(),
                    ips: ips.iter().map(ToString::to_string).collect(),
                    handle: names.handle.clone(),
                }),
                async {
                    // Let the connection's tasks write EndpointUp first
                    // (tokio runs them before it wakes a yielded task):
                    // the sysctls below do not await.
                    tokio::task::yield_now().await;
                    let r = wiring::host_settings(&host, &plan, index, v4, v6).await;
                    tracing::debug!("host side configured");
                    r
                }
            );
            settings?;
            up?;
            tracing::debug!("route and policy programmed by the agent");
            Ok::<_, CniError>(())
        },
        async {
            let l = wiring::configure_pod(&pod, &plan, &ips).await?;
            tracing::debug!("pod side configured");
            Ok::<_, CniError>(l)
        }
    );
    let pod_link = match host_side.and(pod_side) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e.details(), "ADD failed after allocation; rolling back");
            rollback(&host, &agent, &names, att, created).await;
            return Err(e);
        }
    };

    let mut ours = CniResult {
        interfaces: vec![
            Interface {
                name: names.host_if.clone(),
                mac: Some(format_mac(&HOST_MAC)),
                ..Default::default()
            },
            Interface {
                name: att.ifname.clone(),
                mac: Some(pod_link.mac_string()),
                mtu: Some(mtu),
                sandbox: Some(netns_path.to_string()),
                ..Default::default()
            },
        ],
        ips: ips
            .iter()
            .map(|ip| IpConfig::new(*ip, if ip.is_ipv4() { 32 } else { 128 }, 1))
            .collect(),
        routes: Vec::new(),
        dns: conf.dns.clone().unwrap_or_default(),
        ..Default::default()
    };
    if ips.iter().any(IpAddr::is_ipv4) {
        ours.routes.push(Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(GATEWAY_V4.to_string()),
            ..Default::default()
        });
    }
    if ips.iter().any(IpAddr::is_ipv6) {
        ours.routes.push(Route {
            dst: "::/0".into(),
            gw: Some(wiring::host_link_local().to_string()),
            ..Default::default()
        });
    }
    let result = match prev {
        Some(mut p) => {
            p.append(ours);
            p
        }
        None => ours,
    };
    tracing::info!(host_if = %names.host_if, ips = ?ips, "pod attached");
    Ok(result.to_json(v))
}

/// The pod interface's MTU: the conflist's, else the agent's (each 0 or
/// absent: not given); None: neither gives one, detect it.
fn pod_mtu(conf: Option<u32>, agent: u32) -> Option<u32> {
    conf.filter(|m| *m > 0).or((agent > 0).then_some(agent))
}

/// The allocated addresses, checked: parseable, one per family at most,
/// every requested family present.
fn addresses(reply: &AllocateReply, families: &[Family]) -> Result<Vec<IpAddr>, CniError> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in &reply.addresses {
        let ip: IpAddr = a.ip.parse().map_err(|_| CniError::AgentProtocol {
            op: "Allocate",
            msg: format!("address {:?} is not an IP address", a.ip),
        })?;
        if out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            return Err(CniError::AgentProtocol {
                op: "Allocate",
                msg: format!("two addresses of one family ({ip} and another)"),
            });
        }
        out.push(ip);
    }
    if out.is_empty() {
        return Err(CniError::AgentProtocol {
            op: "Allocate",
            msg: "no address allocated".into(),
        });
    }
    for f in families {
        if !out.iter().any(|ip| Family::of(*ip) == *f) {
            return Err(CniError::AgentProtocol {
                op: "Allocate",
                msg: format!("no {f:?} address although it was requested"),
            });
        }
    }
    Ok(out)
}

type Opened = (Nl, Nl);

/// The allocation task: the connection, and Allocate's answer (an error
/// here means the agent could not be reached: nothing allocated).
type Allocating =
    tokio::task::JoinHandle<Result<(Agent, Result<AllocateReply, CniError>), CniError>>;

/// Opens netlink handles here and in the pod's namespace. An interface
/// of the attachment's name already in the pod (the spec's "interface
/// exists") is found when the veth is created, with no request of its own
/// before: the create fails as a whole then.
fn open_namespaces(ns: &std::fs::File, netns_path: &str) -> Result<Opened, CniError> {
    let host = Nl::here().map_err(|source| CniError::Netns {
        path: "/proc/self/ns/net".into(),
        reason: "netlink socket".into(),
        source,
    })?;
    let pod = Nl::in_netns_inline(ns).map_err(|source| CniError::Netns {
        path: netns_path.into(),
        reason: "cannot enter".into(),
        source,
    })?;
    Ok((host, pod))
}

/// The addresses on the pod's interface `ifname` (none if it is gone or
/// unreadable).
async fn existing_addresses(pod: &Nl, ifname: &str) -> Vec<IpAddr> {
    let Ok(Some(link)) = pod.link(ifname).await else {
        return Vec::new();
    };
    pod.addresses(link.index)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(ip, _)| ip)
        .collect()
}

/// ADD failed before wiring anything: release what the allocation task
/// got (nothing if it never connected).
async fn abandon(allocating: Allocating, handle: &str) {
    let Ok(Ok((agent, reply))) = allocating.await else {
        return; // not connected: nothing allocated
    };
    match reply {
        Ok(_) | Err(CniError::TryAgain { .. }) => release_quietly(&agent, handle).await,
        Err(_) => {}
    }
}

async fn release_quietly(agent: &Agent, handle: &str) {
    if let Err(e) = agent.release(handle).await {
        tracing::warn!(handle, error = %e.details(), "release during rollback failed; the runtime's DEL or GC will retry");
    }
}

/// Deletes the host-side veth if it exists (it takes the pod side with it).
async fn remove_host_veth(host: &Nl, host_if: &str) {
    if matches!(host.link(host_if).await, Ok(Some(_)))
        && let Err(e) = host.delete_link_by_name(host_if).await
    {
        tracing::warn!(host_if, error = %e, "rollback: delete veth failed");
    }
}

async fn rollback(host: &Nl, agent: &Agent, names: &Names, att: &Attachment, created: bool) {
    if created && let Err(e) = host.delete_link_by_name(&names.host_if).await {
        tracing::warn!(host_if = %names.host_if, error = %e, "rollback: delete veth failed");
    }
    let down = EndpointDownRequest {
        container_id: att.container_id.clone(),
        pod_namespace: names.pod_namespace.clone(),
        pod_name: names.pod_name.clone(),
        host_ifname: names.host_if.clone(),
        handle: names.handle.clone(),
    };
    if let Err(e) = agent.endpoint_down(down).await {
        tracing::warn!(error = %e.details(), "rollback: EndpointDown failed");
    }
    release_quietly(agent, &names.handle).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_proto::proto::AllocatedAddress;

    fn reply(ips: &[&str]) -> AllocateReply {
        AllocateReply {
            addresses: ips
                .iter()
                .map(|ip| AllocatedAddress {
                    ip: ip.to_string(),
                    ..Default::default()
                })
                .collect(),
            mtu: 0,
        }
    }

    #[test]
    fn the_conflist_mtu_wins_then_the_agents_then_detection() {
        assert_eq!(pod_mtu(Some(1400), 1450), Some(1400));
        assert_eq!(pod_mtu(None, 1450), Some(1450));
        assert_eq!(pod_mtu(Some(0), 1450), Some(1450));
        assert_eq!(pod_mtu(None, 0), None);
        assert_eq!(pod_mtu(Some(0), 0), None);
    }

    #[test]
    fn allocation_checks() {
        let both = Family::BOTH;
        assert_eq!(
            addresses(&reply(&["198.19.0.1", "2001:db8::1"]), &both)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            addresses(&reply(&["198.19.0.1"]), &both)
                .unwrap_err()
                .code(),
            107
        );
        assert_eq!(addresses(&reply(&[]), &[]).unwrap_err().code(), 107);
        assert_eq!(addresses(&reply(&["x"]), &[]).unwrap_err().code(), 107);
        assert_eq!(
            addresses(&reply(&["198.19.0.1", "198.19.0.2"]), &[])
                .unwrap_err()
                .code(),
            107
        );
        assert!(addresses(&reply(&["2001:db8::1"]), &[]).is_ok());
    }
}
