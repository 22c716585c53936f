//! CHECK: the attachment is still as ADD left it — pod interface,
//! addresses and routes, host veth and its sysctls, the agent's host
//! route, and the allocation. Every problem found is named.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::add::Names;
use crate::agent;
use crate::config::NetConf;
use crate::del::host_if_from_prev;
use crate::env::Attachment;
use crate::error::CniError;
use crate::netlink::{Nl, RouteEntry, format_mac};
use crate::result::CniResult;
use crate::wiring::{self, HOST_MAC};

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> CniError {
    let op = op.into();
    move |source| CniError::Netlink { op, source }
}

fn has_route(routes: &[RouteEntry], dst: IpNetwork, gw: Option<IpAddr>, oif: u32) -> bool {
    routes
        .iter()
        .any(|r| r.dst == dst && r.gw == gw && r.oif == Some(oif))
}

/// Runs CHECK.
pub async fn check(conf: &NetConf, att: &Attachment) -> Result<(), CniError> {
    let prev_v = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::InvalidConfig("CHECK requires prevResult".into()))?;
    let prev = CniResult::from_value(prev_v)
        .map_err(|e| CniError::InvalidConfig(format!("prevResult: {e}")))?;
    let netns_path = att.netns.as_deref().ok_or_else(|| CniError::InvalidEnv {
        var: "CNI_NETNS",
        reason: "not set".into(),
    })?;
    let mut names = Names::new(conf, att);
    if let Some(h) = host_if_from_prev(Some(prev_v)) {
        names.host_if = h;
    }
    let mut problems: Vec<String> = Vec::new();

    let Some(pod_idx) = prev
        .interfaces
        .iter()
        .position(|i| i.name == att.ifname && i.sandbox.as_deref() == Some(netns_path))
    else {
        return Err(CniError::CheckFailed {
            problems: vec![format!(
                "prevResult lists no interface {} in {netns_path}",
                att.ifname
            )],
        });
    };
    let expected_mac = prev.interfaces[pod_idx].mac.clone();
    let mut expected: Vec<IpNetwork> = Vec::new();
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(pod_idx)) {
        match ip.network() {
            Some(n) => expected.push(n),
            None => problems.push(format!("prevResult address {:?} is not CIDR", ip.address)),
        }
    }
    if expected.is_empty() {
        problems.push(format!("prevResult has no address for {}", att.ifname));
    }
    let v4 = expected.iter().any(|n| n.is_ipv4());
    let v6 = expected.iter().any(|n| n.is_ipv6());

    // Pod side.
    let ns = wiring::open_netns(netns_path)?;
    let pod = Nl::in_netns(&ns).await.map_err(|source| CniError::Netns {
        path: netns_path.into(),
        reason: "cannot enter".into(),
        source,
    })?;
    match pod
        .link(&att.ifname)
        .await
        .map_err(nl("get pod interface"))?
    {
        None => problems.push(format!("interface {} missing in {netns_path}", att.ifname)),
        Some(l) => {
            if !l.up {
                problems.push(format!("interface {} is down", att.ifname));
            }
            if let Some(mac) = &expected_mac
                && !mac.eq_ignore_ascii_case(&l.mac_string())
            {
                problems.push(format!(
                    "interface {} has MAC {}, prevResult says {mac}",
                    att.ifname,
                    l.mac_string()
                ));
            }
            if let Some(mtu) = conf.mtu.filter(|m| *m > 0)
                && l.mtu != mtu
            {
                problems.push(format!(
                    "interface {} has MTU {}, want {mtu}",
                    att.ifname, l.mtu
                ));
            }
            let have = pod
                .addresses(l.index)
                .await
                .map_err(nl("list pod addresses"))?;
            for n in &expected {
                if !have.contains(&(n.ip(), n.prefix())) {
                    problems.push(format!("address {n} missing on {}", att.ifname));
                }
            }
            let mut routes = Vec::new();
            if v4 {
                routes.extend(pod.routes(false).await.map_err(nl("list pod routes"))?);
            }
            if v6 {
                routes.extend(pod.routes(true).await.map_err(nl("list pod routes"))?);
            }
            // Only the routes the final result still lists: a later plugin
            // in the chain may legitimately have moved or replaced them.
            let listed = |dst: IpNetwork, gw: Option<IpAddr>| {
                prev.routes.iter().any(|r| {
                    r.dst.parse::<IpNetwork>().ok() == Some(dst)
                        && r.gw.as_deref().and_then(|g| g.parse::<IpAddr>().ok()) == gw
                })
            };
            let default_v4 = wiring::pod_routes(l.index, true, false)
                .into_iter()
                .find(|r| r.gw.is_some())
                .is_some_and(|r| listed(r.dst, r.gw));
            let wanted = wiring::pod_routes(l.index, v4, v6).into_iter().filter(|r| {
                // The link route to the gateway goes with the IPv4 default.
                (r.link_scope && default_v4) || (!r.link_scope && listed(r.dst, r.gw))
            });
            for r in wanted {
                if !has_route(&routes, r.dst, r.gw, l.index) {
                    let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                    problems.push(format!(
                        "route {}{via} dev {} missing in pod",
                        r.dst, att.ifname
                    ));
                }
            }
        }
    }

    // Host side.
    let host = Nl::here().map_err(|source| CniError::Netns {
        path: "/proc/self/ns/net".into(),
        reason: "netlink socket".into(),
        source,
    })?;
    match host
        .link(&names.host_if)
        .await
        .map_err(nl("get host veth"))?
    {
        None => problems.push(format!("host veth {} missing", names.host_if)),
        Some(h) => {
            if !h.up {
                problems.push(format!("host veth {} is down", names.host_if));
            }
            if h.mac != HOST_MAC {
                problems.push(format!(
                    "host veth {} has MAC {}, want {}",
                    names.host_if,
                    h.mac_string(),
                    format_mac(&HOST_MAC)
                ));
            }
            if h.kind.as_deref() != Some("veth") {
                problems.push(format!("host interface {} is not a veth", names.host_if));
            }
            let owner = wiring::owner_alias(&names.handle);
            if h.alias.as_deref() != Some(owner.as_str()) {
                problems.push(format!(
                    "host veth {} belongs to {:?}, not to this attachment ({owner})",
                    names.host_if,
                    h.alias.as_deref().unwrap_or("")
                ));
            }
            if v4
                && wiring::read_sysctl(&format!("net/ipv4/conf/{}/proxy_arp", names.host_if))
                    .ok()
                    .as_deref()
                    != Some("1")
            {
                problems.push(format!("proxy_arp is off on {}", names.host_if));
            }
            let mut routes = Vec::new();
            if v4 {
                routes.extend(host.routes(false).await.map_err(nl("list host routes"))?);
            }
            if v6 {
                routes.extend(host.routes(true).await.map_err(nl("list host routes"))?);
            }
            for n in &expected {
                let full = IpNetwork::new(n.ip(), if n.is_ipv4() { 32 } else { 128 }).unwrap_or(*n);
                if !has_route(&routes, full, None, h.index) {
                    problems.push(format!(
                        "host route {full} dev {} missing (the agent installs it)",
                        names.host_if
                    ));
                }
            }
        }
    }

    // Allocation.
    let agent = agent::connect(
        &conf.agent_socket(),
        conf.timeouts.connect(),
        conf.timeouts.request(),
    )
    .await?;
    let held = agent.get_handle(&names.handle).await?;
    if !held.found {
        problems.push(format!("allocation {} is not held", names.handle));
    } else {
        let held_ips: BTreeSet<IpAddr> = held
            .addresses
            .iter()
            .filter_map(|a| a.ip.parse().ok())
            .collect();
        let want: BTreeSet<IpAddr> = expected.iter().map(IpNetwork::ip).collect();
        if held_ips != want {
            problems.push(format!(
                "allocation {} holds {held_ips:?}, prevResult says {want:?}",
                names.handle
            ));
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::CheckFailed { problems })
    }
}
