//! Calico-style pod wiring: a veth pair, /32 and /128 addresses, a
//! link-scope gateway answered by proxy-ARP, an IPv6 default route via the
//! host veth's link-local address.
//!
//! ```text
//!  node netns                              pod netns
//!  cali0123456789a  ee:ee:ee:ee:ee:ee  <->  eth0  198.19.0.7/32, 2001:db8::7/128
//!   proxy_arp=1 proxy_delay=0               169.254.1.1 dev eth0 scope link
//!   forwarding=1 proxy_ndp=1 accept_ra=0    default via 169.254.1.1 dev eth0
//!   fe80::ecee:eeff:feee:eeee/64 (nodad)    default via fe80::ecee:eeff:feee:eeee dev eth0
//!  (agent) 198.19.0.7/32 dev cali… scope link
//! ```

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use sha1::{Digest, Sha1};

use crate::error::CniError;
use crate::netlink::{Link, Nl, RouteSpec, errno, errno_of};

/// MAC of every host-side veth (as Calico): the pod only ever talks to it.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The pod's IPv4 gateway; answered by proxy-ARP on the host veth.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Prefix of every host-side veth name.
pub const HOST_PREFIX: &str = "cali";
/// MTU when neither the configuration nor a default route gives one.
pub const FALLBACK_MTU: u32 = 1500;

/// The host veth's link-local address: the EUI-64 of [`HOST_MAC`],
/// `fe80::ecee:eeff:feee:eeee`. The plugin assigns it itself, so it is
/// valid the moment the link is up (no autoconf, no DAD).
pub fn host_link_local() -> Ipv6Addr {
    eui64_link_local(&HOST_MAC)
}

/// `fe80::/64` + modified EUI-64 of a MAC.
pub fn eui64_link_local(mac: &[u8; 6]) -> Ipv6Addr {
    let b = [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    Ipv6Addr::from(b)
}

/// `cali` + the first 11 hex digits of sha1(`key`).
pub fn host_veth_name(key: &str) -> String {
    let digest = Sha1::digest(key.as_bytes());
    let mut name = String::from(HOST_PREFIX);
    name.push_str(&hex::encode(digest)[..11]);
    name
}

/// The key hashed into the host veth name: `<namespace>.<pod>` for
/// Kubernetes pods (plus `.<ifname>` for a second interface), otherwise
/// the IPAM handle (the runtime gave no pod identity).
pub fn host_veth_key(pod_key: Option<&str>, handle: &str, ifname: &str) -> String {
    match pod_key {
        Some(k) if ifname == "eth0" => k.to_string(),
        Some(k) => format!("{k}.{ifname}"),
        None => handle.to_string(),
    }
}

/// What the host veth of an attachment carries as its alias (IFLA_IFALIAS):
/// the attachment's IPAM handle, or `sha1:<hex>` of it when it is longer
/// than the kernel's 255 bytes. The host veth's name is the pod's, shared
/// by every sandbox the runtime creates for the pod; the alias says which
/// sandbox owns it, so that a late DEL of an old sandbox leaves the new
/// one's veth alone.
pub fn owner_alias(handle: &str) -> String {
    const IFALIAS_MAX: usize = 255;
    if handle.len() <= IFALIAS_MAX {
        handle.to_string()
    } else {
        format!("sha1:{}", hex::encode(Sha1::digest(handle.as_bytes())))
    }
}

/// The IPAM handle: `<network>.<containerID>`, plus `.<ifname>` when the
/// interface is not `eth0`.
pub fn handle_id(network: &str, container_id: &str, ifname: &str) -> String {
    if ifname == "eth0" {
        format!("{network}.{container_id}")
    } else {
        format!("{network}.{container_id}.{ifname}")
    }
}

/// Opens the container's network namespace.
pub fn open_netns(path: &str) -> Result<File, CniError> {
    let f = File::open(path).map_err(|source| CniError::Netns {
        path: path.into(),
        reason: "cannot open".into(),
        source,
    })?;
    // Checked here, before anything is allocated: a namespace lives on nsfs.
    match nix::sys::statfs::fstatfs(&f) {
        Ok(st) if st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => Ok(f),
        Ok(_) => Err(CniError::Netns {
            path: path.into(),
            reason: "not a namespace".into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        }),
        Err(e) => Err(CniError::Netns {
            path: path.into(),
            reason: "cannot stat".into(),
            source: std::io::Error::from(e),
        }),
    }
}

/// The MTU of the interface carrying the default route (IPv4, else IPv6).
pub async fn detect_mtu(host: &Nl) -> Result<u32, CniError> {
    for v6 in [false, true] {
        let routes = host.routes(v6).await.map_err(|source| CniError::Netlink {
            op: "list routes to detect the MTU".into(),
            source,
        })?;
        if let Some(oif) = routes
            .iter()
            .find(|r| r.dst.prefix() == 0)
            .and_then(|r| r.oif)
        {
            let link = host
                .link_by_index(oif)
                .await
                .map_err(|source| CniError::Netlink {
                    op: format!("get link {oif}"),
                    source,
                })?;
            if let Some(l) = link.filter(|l| l.mtu > 0) {
                return Ok(l.mtu);
            }
        }
    }
    Ok(FALLBACK_MTU)
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> CniError {
    let op = op.into();
    move |source| CniError::Netlink { op, source }
}

/// What the wiring produced, for the result.
#[derive(Debug, Clone)]
pub struct Wired {
    /// The pod-side link (after configuration).
    pub pod: Link,
}

/// The parameters of one pod's wiring.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// Host veth name.
    pub host_if: &'a str,
    /// Container interface name.
    pub ifname: &'a str,
    /// CNI_NETNS, for messages.
    pub netns_path: &'a str,
    /// MTU of both ends (set when the links come up; 0 at creation: the
    /// kernel's default until then).
    pub mtu: u32,
    /// The host veth's alias: its owner ([`owner_alias`]).
    pub owner: &'a str,
}

/// Creates the veth pair with the peer directly in the pod namespace.
/// A host veth of the same name belongs to an earlier sandbox of the pod
/// (the runtime re-created the sandbox; the old one's DEL may come later,
/// or never): the new sandbox takes the name over, and the old pair goes.
/// The agent releases the old sandbox's addresses at EndpointUp. An
/// existing container interface is an error, as the spec requires.
pub async fn create_veth(
    host: &Nl,
    pod: &Nl,
    pod_ns: &File,
    plan: &Plan<'_>,
) -> Result<(), CniError> {
    let create = || host.create_veth(plan.host_if, HOST_MAC, plan.ifname, pod_ns, plan.mtu);
    match create().await {
        Ok(()) => Ok(()),
        Err(e) if errno_of(&e) == Some(errno::EEXIST) => {
            if pod
                .link(plan.ifname)
                .await
                .map_err(nl(format!("get {} in pod", plan.ifname)))?
                .is_some()
            {
                return Err(CniError::InterfaceExists {
                    ifname: plan.ifname.to_string(),
                    netns: plan.netns_path.to_string(),
                });
            }
            let previous = host
                .link(plan.host_if)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.alias)
                .unwrap_or_default();
            tracing::info!(
                host_if = plan.host_if,
                previous_owner = %previous,
                "a new sandbox of the pod takes over its host veth name; removing the old pair"
            );
            host.delete_link_by_name(plan.host_if)
                .await
                .map_err(nl(format!("delete stale {}", plan.host_if)))?;
            create().await.map_err(nl(format!(
                "create veth {} / {}",
                plan.host_if, plan.ifname
            )))
        }
        Err(e) => Err(CniError::Netlink {
            op: format!("create veth {} / {}", plan.host_if, plan.ifname),
            source: e,
        }),
    }
}

/// Host side, all of it: [`host_up`] then [`host_settings`]. Returns the
/// host veth's index. `host` must be a socket in the calling thread's
/// namespace.
pub async fn configure_host(
    host: &Nl,
    plan: &Plan<'_>,
    v4: bool,
    v6: bool,
) -> Result<u32, CniError> {
    let index = host_up(host, plan, v6).await?;
    host_settings(host, plan, index, v4, v6).await?;
    Ok(index)
}

/// Host side, first part: no IPv6 autoconfiguration (before the link
/// comes up, so the kernel never makes a link-local of its own), then the
/// link up at `plan.mtu` (which may differ from the MTU the veth was
/// created with: the agent's answer came later) and marked as this
/// attachment's, in one request. From here the agent can route to the
/// pod: the plugin sends EndpointUp and does [`host_settings`] meanwhile.
/// Returns the host veth's index.
pub async fn host_up(host: &Nl, plan: &Plan<'_>, v6: bool) -> Result<u32, CniError> {
    let ifn = plan.host_if;
    // One ioctl instead of a netlink dump of the link.
    let index = nix::net::if_::if_nametoindex(ifn).map_err(|e| CniError::Netlink {
        op: format!("{ifn} vanished after creation ({e})"),
        source: rtnetlink::Error::RequestFailed,
    })?;
    if v6 {
        host.ipv6_addr_gen_none(index)
            .await
            .map_err(nl(format!("addrgenmode none on {ifn}")))?;
    } else {
        quiet_ipv6_off(host, index, ifn).await;
    }
    host.set_up_with_alias(index, plan.owner, plan.mtu)
        .await
        .map_err(nl(format!("set {ifn} up")))?;
    Ok(index)
}

/// Host side, second part: proxy-ARP and forwarding (IPv4), no router
/// advertisements, proxy-NDP, forwarding and the link-local the pod's
/// default route points at (IPv6). Nothing reaches the pod before ADD
/// returns, which waits for this.
pub async fn host_settings(
    host: &Nl,
    plan: &Plan<'_>,
    index: u32,
    v4: bool,
    v6: bool,
) -> Result<(), CniError> {
    let ifn = plan.host_if;
    if v4 {
        sysctl(&format!("net/ipv4/conf/{ifn}/proxy_arp"), "1")?;
        sysctl(&format!("net/ipv4/neigh/{ifn}/proxy_delay"), "0")?;
        sysctl(&format!("net/ipv4/conf/{ifn}/forwarding"), "1")?;
    }
    if v6 {
        sysctl(&format!("net/ipv6/conf/{ifn}/accept_ra"), "0")?;
        sysctl(&format!("net/ipv6/conf/{ifn}/proxy_ndp"), "1")?;
        sysctl(&format!("net/ipv6/conf/{ifn}/forwarding"), "1")?;
        host.add_address(index, IpAddr::V6(host_link_local()), 64)
            .await
            .map_err(nl(format!("add {} to {ifn}", host_link_local())))?;
    }
    Ok(())
}

/// Pod side: addresses, link up at `plan.mtu`, gateway and default routes.
pub async fn configure_pod(pod: &Nl, plan: &Plan<'_>, ips: &[IpAddr]) -> Result<Link, CniError> {
    let ifn = plan.ifname;
    let link = pod
        .link(ifn)
        .await
        .map_err(nl(format!("get {ifn} in pod")))?
        .ok_or_else(|| CniError::Netlink {
            op: format!("{ifn} missing in pod after creation"),
            source: rtnetlink::Error::RequestFailed,
        })?;
    let v4 = ips.iter().any(IpAddr::is_ipv4);
    let v6 = ips.iter().any(IpAddr::is_ipv6);
    let index = link.index;
    // The requests go out back to back, without waiting for each answer:
    // the kernel handles each one as it is sent, so in this order, which is
    // the order they depend on (no autoconfiguration before the link is
    // up, addresses and the link up before the routes over it). Each
    // answer is then checked in the same order; after a failure the rest
    // may have been applied too, which the caller's rollback (the veth
    // removed) undoes with the rest.
    type Step<'a> =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CniError>> + Send + 'a>>;
    let mut steps: Vec<Step<'_>> = Vec::new();
    if !v6 {
        steps.push(Box::pin(async move {
            quiet_ipv6_off(pod, index, ifn).await;
            Ok(())
        }));
    } else {
        steps.push(Box::pin(async move {
            pod.ipv6_addr_gen_none(index)
                .await
                .map_err(nl(format!("addrgenmode none on {ifn}")))
        }));
        if let Ok(mac) = <[u8; 6]>::try_from(link.mac.as_slice()) {
            let ll = eui64_link_local(&mac);
            steps.push(Box::pin(async move {
                pod.add_address(index, IpAddr::V6(ll), 64)
                    .await
                    .map_err(nl(format!("add {ll}/64 to {ifn}")))
            }));
        }
    }
    for ip in ips {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        steps.push(Box::pin(async move {
            pod.add_address(index, *ip, prefix)
                .await
                .map_err(nl(format!("add {ip}/{prefix} to {ifn}")))
        }));
    }
    let mtu = plan.mtu;
    steps.push(Box::pin(async move {
        pod.set_up_mtu(index, mtu)
            .await
            .map_err(nl(format!("set {ifn} up")))
    }));
    for r in pod_routes(index, v4, v6) {
        steps.push(Box::pin(async move {
            pod.replace_route(&r)
                .await
                .map_err(nl(format!("route {} via {:?} dev {ifn}", r.dst, r.gw)))
        }));
    }
    // join_all polls every step once, in order, before any answer is read:
    // that first poll is what sends each request.
    futures::future::join_all(steps)
        .await
        .into_iter()
        .collect::<Result<Vec<()>, CniError>>()?;
    Ok(link)
}

/// An IPv4-only link gets no IPv6 link-local either (no DAD, no router
/// solicitations); a kernel without IPv6 refuses, which is fine.
async fn quiet_ipv6_off(nl: &Nl, index: u32, ifn: &str) {
    if let Err(e) = nl.ipv6_addr_gen_none(index).await {
        tracing::debug!(ifname = ifn, error = %e, "addrgenmode none refused (no IPv6?)");
    }
}

/// The routes the plugin installs in the pod.
pub fn pod_routes(oif: u32, v4: bool, v6: bool) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    if v4 {
        out.push(RouteSpec {
            dst: net(IpAddr::V4(GATEWAY_V4), 32),
            gw: None,
            oif,
            link_scope: true,
        });
        out.push(RouteSpec {
            dst: net(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            gw: Some(IpAddr::V4(GATEWAY_V4)),
            oif,
            link_scope: false,
        });
    }
    if v6 {
        out.push(RouteSpec {
            dst: net(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            gw: Some(IpAddr::V6(host_link_local())),
            oif,
            link_scope: false,
        });
    }
    out
}

/// A network from a constant address and prefix (always in range here).
fn net(ip: IpAddr, prefix: u8) -> IpNetwork {
    IpNetwork::new(ip, prefix).expect("constant prefix within the address length")
}

/// Writes `/proc/sys/<key>` in the calling thread's network namespace.
pub fn sysctl(key: &str, value: &str) -> Result<(), CniError> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|source| CniError::Sysctl { path, source })
}

/// Reads `/proc/sys/<key>` (trimmed).
pub fn read_sysctl(key: &str) -> Result<String, CniError> {
    let path = format!("/proc/sys/{key}");
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CniError::Sysctl { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        // `echo -n default.web-0 | sha1sum` = 0d7763386da219ddff1f...
        let n = host_veth_name("default.web-0");
        assert_eq!(n, "cali0d7763386da");
        assert!(n.starts_with("cali"));
        assert!(n[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(host_veth_name("default.web-1"), n);
        assert_eq!(handle_id("net", "c1", "eth0"), "net.c1");
        assert_eq!(handle_id("net", "c1", "net1"), "net.c1.net1");
        assert_eq!(host_veth_key(Some("ns.p"), "h", "eth0"), "ns.p");
        assert_eq!(host_veth_key(Some("ns.p"), "h", "net1"), "ns.p.net1");
        assert_eq!(host_veth_key(None, "h", "eth0"), "h");
        assert_eq!(owner_alias("k8s-pod-network.c1"), "k8s-pod-network.c1");
        let long = format!("{}.c1", "n".repeat(253));
        let a = owner_alias(&long);
        assert!(a.starts_with("sha1:") && a.len() == 45, "{a}");
        assert_ne!(a, owner_alias(&format!("{}.c2", "n".repeat(253))));
    }

    #[test]
    fn link_locals() {
        assert_eq!(
            host_link_local(),
            "fe80::ecee:eeff:feee:eeee".parse::<Ipv6Addr>().unwrap()
        );
        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
        assert_eq!(
            eui64_link_local(&mac),
            "fe80::42:acff:fe11:2".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn routes_per_family() {
        assert_eq!(pod_routes(2, true, false).len(), 2);
        assert_eq!(pod_routes(2, false, true).len(), 1);
        let r = pod_routes(2, true, true);
        assert!(r[0].link_scope && r[0].gw.is_none());
        assert_eq!(r[2].gw, Some(IpAddr::V6(host_link_local())));
    }
}
