//! Who this node is: its name and the addresses it uses for BGP and as the
//! next hop of its pod routes.
//!
//! Picking the wrong address is the most common failure of Calico users (a
//! docker bridge, a VPN, the wrong NIC on a multi-homed host), so every
//! choice here comes with the reason it was made and the candidates it
//! skipped; the agent logs it at start and shows it in `margayctl node
//! status`.
//!
//! Methods (flag `--ip-autodetection`, env `IP_AUTODETECTION_METHOD`, the same
//! spelling as Calico's):
//! - `first-found`: the first global address on an interface not in the
//!   exclusion list (lo, cali*, docker*, veth*, ...);
//! - `kubernetes-internal-ip`: the Node object's `InternalIP`;
//! - `interface=REGEX`: the first address on an interface matching REGEX;
//! - `skip-interface=REGEX`: like first-found, also skipping REGEX;
//! - `can-reach=IP`: the source address the kernel uses to reach IP;
//! - `cidr=CIDR[,CIDR]`: the first address inside one of the networks;
//! - an address (`198.18.0.11` or `198.18.0.11/24`): exactly that.

use std::net::{IpAddr, UdpSocket};

use ipnetwork::IpNetwork;
use regex::Regex;

/// Interfaces never chosen by `first-found` (Calico's list, plus ours).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "^lo$",
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^cali.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    "^vxlan.*",
    "^wireguard.*",
    "^br-.*",
    "^podman.*",
    "^nerdctl.*",
];

/// Address family to detect: the workspace's one family type.
pub use ipam::Family;

/// How to choose the node address.
#[derive(Debug, Clone)]
pub enum Method {
    /// First usable address outside the exclusion list.
    FirstFound,
    /// The Node object's InternalIP.
    KubernetesInternalIp,
    /// First address on an interface matching the regex.
    Interface(Regex),
    /// First-found, also skipping interfaces matching the regex.
    SkipInterface(Regex),
    /// The kernel's source address towards this destination.
    CanReach(IpAddr),
    /// First address inside one of these networks.
    Cidrs(Vec<IpNetwork>),
    /// This exact address.
    Fixed(IpNetwork),
    /// Do not use this family.
    None,
}

/// A method string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IP autodetection method {input:?}: {reason}")]
pub struct BadMethod {
    input: String,
    reason: String,
}

impl std::str::FromStr for Method {
    type Err = BadMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| BadMethod {
            input: s.to_string(),
            reason,
        };
        let regex = |r: &str| Regex::new(r).map_err(|e| bad(e.to_string()));
        let s = s.trim();
        Ok(match s.split_once('=') {
            None => match s {
                "first-found" => Method::FirstFound,
                "kubernetes-internal-ip" => Method::KubernetesInternalIp,
                "none" => Method::None,
                other => {
                    if let Ok(net) = other.parse::<IpNetwork>() {
                        Method::Fixed(net)
                    } else if let Ok(ip) = other.parse::<IpAddr>() {
                        Method::Fixed(IpNetwork::from(ip))
                    } else {
                        return Err(bad("unknown method (first-found, kubernetes-internal-ip, interface=, skip-interface=, can-reach=, cidr=, none, or an address)".into()));
                    }
                }
            },
            Some(("interface", r)) => Method::Interface(regex(r)?),
            Some(("skip-interface", r)) => Method::SkipInterface(regex(r)?),
            Some(("can-reach", dest)) => Method::CanReach(
                dest.parse()
                    .map_err(|_| bad(format!("{dest:?} is not an IP address")))?,
            ),
            Some(("cidr", list)) => Method::Cidrs(
                list.split(',')
                    .map(|c| {
                        c.trim()
                            .parse()
                            .map_err(|_| bad(format!("{c:?} is not a CIDR")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some((k, _)) => return Err(bad(format!("unknown method {k:?}"))),
        })
    }
}

/// One address on one interface, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name.
    pub ifname: String,
    /// Address with prefix length.
    pub addr: IpNetwork,
    /// Whether the interface is up.
    pub up: bool,
}

/// The chosen address and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The address (with the prefix length of its interface when known).
    pub addr: IpNetwork,
    /// The interface it is on, when known.
    pub ifname: Option<String>,
    /// A sentence for logs and `margayctl node status`.
    pub reason: String,
}

/// Why no address could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {family} node address by {method}: {detail}")]
pub struct NoAddress {
    /// Family asked for.
    pub family: Family,
    /// The method, as configured.
    pub method: String,
    /// What was looked at.
    pub detail: String,
}

fn usable(a: &IfAddr, family: Family) -> bool {
    let ip = a.addr.ip();
    a.up && Family::of(ip) == family
        && !ip.is_loopback()
        && !ip.is_multicast()
        && !is_link_local(&ip)
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Chooses the node's `family` address by `method` among `addrs`.
/// `internal_ips` are the Node object's InternalIP addresses; `can_reach`
/// answers the kernel's source address towards a destination.
pub fn choose(
    method: &Method,
    family: Family,
    addrs: &[IfAddr],
    internal_ips: &[IpAddr],
    can_reach: impl Fn(IpAddr) -> Option<IpAddr>,
) -> Result<Option<Chosen>, NoAddress> {
    let with_prefix = |ip: IpAddr| -> (IpNetwork, Option<String>) {
        match addrs.iter().find(|a| a.addr.ip() == ip) {
            Some(a) => (a.addr, Some(a.ifname.clone())),
            None => (IpNetwork::from(ip), None),
        }
    };
    let fail = |method: &str, detail: String| NoAddress {
        family,
        method: method.to_string(),
        detail,
    };
    let first_found = |extra: Option<&Regex>, label: &str| -> Result<Chosen, NoAddress> {
        let excludes: Vec<Regex> = DEFAULT_EXCLUDES
            .iter()
            .filter_map(|r| Regex::new(r).ok())
            .collect();
        let mut skipped = Vec::new();
        for a in addrs.iter().filter(|a| usable(a, family)) {
            let excluded = excludes.iter().any(|r| r.is_match(&a.ifname))
                || extra.is_some_and(|r| r.is_match(&a.ifname));
            if excluded {
                skipped.push(format!("{} {}", a.ifname, a.addr));
                continue;
            }
            let mut reason = format!("{label}: first usable address, on {}", a.ifname);
            if !skipped.is_empty() {
                reason.push_str(&format!(" (skipped excluded {})", skipped.join(", ")));
            }
            return Ok(Chosen {
                addr: a.addr,
                ifname: Some(a.ifname.clone()),
                reason,
            });
        }
        Err(fail(
            label,
            format!(
                "no up interface has a global {family} address outside the exclusion list{}",
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" (excluded: {})", skipped.join(", "))
                }
            ),
        ))
    };
    let chosen = match method {
        Method::None => return Ok(None),
        Method::FirstFound => first_found(None, "first-found")?,
        Method::SkipInterface(r) => first_found(Some(r), &format!("skip-interface={r}"))?,
        Method::Fixed(net) => {
            if Family::of(net.ip()) != family {
                return Err(fail(&net.to_string(), format!("{net} is not {family}")));
            }
            let ifname = addrs
                .iter()
                .find(|a| a.addr.ip() == net.ip())
                .map(|a| a.ifname.clone());
            let (addr, note) = match (&ifname, net.prefix()) {
                (Some(_), p) if p == max_prefix(net) => (with_prefix(net.ip()).0, ""),
                (Some(_), _) => (*net, ""),
                (None, _) => (*net, " (not present on any local interface!)"),
            };
            Chosen {
                addr,
                reason: format!("configured address {net}{note}"),
                ifname,
            }
        }
        Method::KubernetesInternalIp => {
            let ip = internal_ips
                .iter()
                .copied()
                .find(|ip| Family::of(*ip) == family)
                .ok_or_else(|| {
                    fail(
                        "kubernetes-internal-ip",
                        format!(
                            "the Node has no {family} InternalIP (addresses: {internal_ips:?})"
                        ),
                    )
                })?;
            let (addr, ifname) = with_prefix(ip);
            Chosen {
                reason: format!(
                    "kubernetes-internal-ip: Node InternalIP {ip}{}",
                    ifname
                        .as_ref()
                        .map(|i| format!(" on {i}"))
                        .unwrap_or_else(|| " (not on a local interface)".into())
                ),
                addr,
                ifname,
            }
        }
        Method::Interface(r) => {
            let a = addrs
                .iter()
                .filter(|a| usable(a, family))
                .find(|a| r.is_match(&a.ifname))
                .ok_or_else(|| {
                    let names: Vec<&str> = addrs.iter().map(|a| a.ifname.as_str()).collect();
                    fail(
                        &format!("interface={r}"),
                        format!("no up interface matching with a global {family} address (interfaces: {names:?})"),
                    )
                })?;
            Chosen {
                addr: a.addr,
                ifname: Some(a.ifname.clone()),
                reason: format!("interface={r}: first match {}", a.ifname),
            }
        }
        Method::CanReach(dest) => {
            if Family::of(*dest) != family {
                return Err(fail(
                    &format!("can-reach={dest}"),
                    format!("{dest} is not {family}"),
                ));
            }
            let src = can_reach(*dest).ok_or_else(|| {
                fail(
                    &format!("can-reach={dest}"),
                    "the kernel has no route to it".into(),
                )
            })?;
            let (addr, ifname) = with_prefix(src);
            Chosen {
                reason: format!(
                    "can-reach={dest}: the kernel's source address towards it{}",
                    ifname
                        .as_ref()
                        .map(|i| format!(", on {i}"))
                        .unwrap_or_default()
                ),
                addr,
                ifname,
            }
        }
        Method::Cidrs(nets) => {
            let a = addrs
                .iter()
                .filter(|a| usable(a, family))
                .find(|a| nets.iter().any(|n| n.contains(a.addr.ip())))
                .ok_or_else(|| {
                    fail(
                        "cidr=",
                        format!("no local {family} address inside {nets:?}"),
                    )
                })?;
            Chosen {
                addr: a.addr,
                ifname: Some(a.ifname.clone()),
                reason: format!(
                    "cidr: {} is inside the configured networks, on {}",
                    a.addr, a.ifname
                ),
            }
        }
    };
    Ok(Some(chosen))
}

fn max_prefix(net: &IpNetwork) -> u8 {
    match net {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    }
}

/// The kernel's source address towards `dest` (a UDP "connect" sends nothing).
pub fn kernel_source_towards(dest: IpAddr) -> Option<IpAddr> {
    let bind: IpAddr = match dest {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = UdpSocket::bind((bind, 0)).ok()?;
    s.connect((dest, 9)).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Every address of every interface in the current network namespace.
pub fn local_addresses() -> std::io::Result<Vec<IfAddr>> {
    use nix::net::if_::InterfaceFlags;
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let up = ifa.flags.contains(InterfaceFlags::IFF_UP);
        let net = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            let ip = a.ip();
            let prefix = m.ip().to_bits().count_ones() as u8;
            IpNetwork::new(ip.into(), prefix).ok()
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            let prefix = m.ip().to_bits().count_ones() as u8;
            IpNetwork::new(a.ip().into(), prefix).ok()
        } else {
            None
        };
        if let Some(addr) = net {
            out.push(IfAddr {
                ifname: ifa.interface_name,
                addr,
                up,
            });
        }
    }
    Ok(out)
}

/// The node name: `NODE_NAME` if set (the DaemonSet passes `spec.nodeName`),
/// else the host name; returned with where it came from.
pub fn node_name(flag: Option<&str>) -> Result<(String, &'static str), std::io::Error> {
    if let Some(n) = flag.filter(|n| !n.is_empty()) {
        return Ok((n.to_string(), "--node-name / NODE_NAME"));
    }
    let h = nix::unistd::gethostname().map_err(std::io::Error::from)?;
    let h = h.to_string_lossy().trim().to_lowercase();
    if h.is_empty() {
        return Err(std::io::Error::other("empty host name and no NODE_NAME"));
    }
    Ok((h, "host name"))
}

#[cfg(test)]
mod tests;
