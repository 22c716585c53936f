//! Thin rtnetlink helpers, one socket per network namespace.
//!
//! A netlink socket talks to the namespace it was created in, so
//! [`Nl::in_netns`] creates the socket on a short-lived thread that has
//! `setns`-ed into the target namespace; the socket is then driven from the
//! plugin's (current-thread) runtime like any other.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType,
};
use nix::sched::CloneFlags;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

/// Kernel errno values the plugin treats specially.
pub mod errno {
    /// No such device.
    pub const ENODEV: i32 = libc::ENODEV;
    /// Already exists.
    pub const EEXIST: i32 = libc::EEXIST;
    /// No such process (route delete of a missing route).
    pub const ESRCH: i32 = libc::ESRCH;
    /// No such address.
    pub const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;
}

/// The errno of a failed netlink request, if the kernel sent one.
pub fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// What the plugin needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Hardware address.
    pub mac: Vec<u8>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// `veth`, `bridge`, ...
    pub kind: Option<String>,
    /// IFLA_IFALIAS: on a Margay host veth, the attachment that owns it
    /// ([`crate::wiring::owner_alias`]).
    pub alias: Option<String>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            alias: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
                LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// The hardware address as `aa:bb:...`.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A route of the main table, as the plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: IpNetwork,
    /// Next hop.
    pub gw: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Scope (0 universe, 253 link, 254 host).
    pub scope: u8,
    /// Unicast, blackhole, local, ...
    pub kind: RouteType,
}

/// A route to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination.
    pub dst: IpNetwork,
    /// Next hop, if any.
    pub gw: Option<IpAddr>,
    /// Output interface.
    pub oif: u32,
    /// Link scope (no gateway) or universe.
    pub link_scope: bool,
}

/// A netlink route socket bound to one network namespace.
#[derive(Clone)]
pub struct Nl {
    h: Handle,
}

impl std::fmt::Debug for Nl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nl")
    }
}

impl Nl {
    /// A socket in the calling thread's namespace. Must run inside a tokio
    /// runtime (the connection task is spawned on it).
    pub fn here() -> io::Result<Self> {
        let (conn, h, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Nl { h })
    }

    /// A socket in the namespace `ns` (an open `/proc/PID/ns/net` or
    /// `/run/netns/NAME`), created on a thread that entered it.
    /// Awaits the thread, so other tasks (the agent's connection) run
    /// meanwhile.
    pub async fn in_netns(ns: &File) -> io::Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let ns = ns.try_clone()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                let made = (|| -> io::Result<_> {
                    nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    let _guard = rt.enter();
                    let (conn, h, _) = rtnetlink::new_connection()?;
                    Ok((conn, h))
                })();
                let _ = tx.send(made);
            })?;
        let (conn, h) = rx
            .await
            .map_err(|_| io::Error::other("netns thread panicked"))??;
        tokio::spawn(conn);
        Ok(Nl { h })
    }

    /// A socket in the namespace `ns`, created on the calling thread: it
    /// enters `ns`, opens the socket there and goes back to the namespace
    /// it came from, with nothing in between (no thread to start and be
    /// scheduled, as [`Nl::in_netns`] needs). For the plugin's single
    /// thread, whose operation fails as a whole on an error: if the thread
    /// could not go back (it would then sit in the pod's namespace, where
    /// `/proc/sys` and new sockets are the pod's), the error says so and no
    /// socket is returned. Must run inside a tokio runtime.
    pub fn in_netns_inline(ns: &File) -> io::Result<Self> {
        let home = File::open("/proc/thread-self/ns/net")?;
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let made = rtnetlink::new_connection();
        nix::sched::setns(&home, CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::other(format!(
                "cannot return to the plugin's own network namespace: {e}"
            ))
        })?;
        let (conn, h, _) = made?;
        tokio::spawn(conn);
        Ok(Nl { h })
    }

    /// The link called `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, rtnetlink::Error> {
        let mut s = self.h.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(Link::from_message(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, rtnetlink::Error> {
        let mut s = self.h.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await? {
            out.push(Link::from_message(&m));
        }
        Ok(out)
    }

    /// The link with index `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, rtnetlink::Error> {
        let mut s = self.h.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(Link::from_message(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates `host` (here, down, with `host_mac`) and its peer `peer`
    /// directly in the namespace `peer_ns` (down): one request, no move.
    /// An `mtu` of 0 leaves both at the kernel's default.
    pub async fn create_veth(
        &self,
        host: &str,
        host_mac: [u8; 6],
        peer: &str,
        peer_ns: &File,
        mtu: u32,
    ) -> Result<(), rtnetlink::Error> {
        let with_mtu = |b: LinkMessageBuilder<LinkUnspec>| if mtu > 0 { b.mtu(mtu) } else { b };
        let peer_msg = with_mtu(LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string()))
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = with_mtu(
            LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
                .name(host.to_string()),
        )
        .address(host_mac.to_vec())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
        self.h.link().add(msg).execute().await
    }

    /// Sets a link up.
    pub async fn set_up(&self, index: u32) -> Result<(), rtnetlink::Error> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.h.link().set(msg).execute().await
    }

    /// Sets a link up with an MTU, in one request (an unchanged MTU costs
    /// the kernel nothing).
    pub async fn set_up_mtu(&self, index: u32, mtu: u32) -> Result<(), rtnetlink::Error> {
        let msg = LinkUnspec::new_with_index(index).up().mtu(mtu).build();
        self.h.link().set(msg).execute().await
    }

    /// Sets a link up, its MTU and its alias (IFLA_IFALIAS) in the same
    /// request.
    pub async fn set_up_with_alias(
        &self,
        index: u32,
        alias: &str,
        mtu: u32,
    ) -> Result<(), rtnetlink::Error> {
        let msg = LinkUnspec::new_with_index(index)
            .up()
            .mtu(mtu)
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()))
            .build();
        self.h.link().set(msg).execute().await
    }

    /// Turns off IPv6 address autoconfiguration (no kernel link-local, so no
    /// DAD for it); the plugin adds the addresses itself with `nodad`.
    pub async fn ipv6_addr_gen_none(&self, index: u32) -> Result<(), rtnetlink::Error> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        self.h.link().set(msg).execute().await
    }

    /// Deletes a link; a missing link is not an error. Returns whether it existed.
    pub async fn delete_link(&self, index: u32) -> Result<bool, rtnetlink::Error> {
        match self.h.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(errno::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the link called `name` if it exists. Returns whether it existed.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool, rtnetlink::Error> {
        match self.link(name).await? {
            Some(l) => self.delete_link(l.index).await,
            None => Ok(false),
        }
    }

    /// Adds `ip/prefix` to a link; IPv6 addresses get `nodad`.
    pub async fn add_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
    ) -> Result<(), rtnetlink::Error> {
        let mut req = self.h.address().add(index, ip, prefix).replace();
        if ip.is_ipv6() {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await
    }

    /// The addresses on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, rtnetlink::Error> {
        let mut s = self
            .h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await? {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = addr {
                out.push((ip, m.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Installs (replaces) a route in the main table.
    pub async fn replace_route(&self, r: &RouteSpec) -> Result<(), rtnetlink::Error> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.ip(), r.dst.prefix())
            .map_err(|e| rtnetlink::Error::InvalidNla(e.to_string()))?
            .output_interface(r.oif);
        if let Some(gw) = r.gw {
            b = b
                .gateway(gw)
                .map_err(|e| rtnetlink::Error::InvalidNla(e.to_string()))?;
        }
        if r.link_scope {
            b = b.scope(RouteScope::Link);
        }
        self.h.route().add(b.build()).replace().execute().await
    }

    /// The unicast routes of the main table of one family.
    pub async fn routes(&self, v6: bool) -> Result<Vec<RouteEntry>, rtnetlink::Error> {
        let msg = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let mut s = self.h.route().get(msg).execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await? {
            if let Some(e) = route_entry(&m) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

fn route_entry(m: &RouteMessage) -> Option<RouteEntry> {
    let mut table = u32::from(m.header.table);
    let mut dst: Option<IpAddr> = None;
    let mut gw = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gw = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = dst.unwrap_or(match m.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    let dst = IpNetwork::new(dst, m.header.destination_prefix_length).ok()?;
    Some(RouteEntry {
        dst,
        gw,
        oif,
        scope: u8::from(m.header.scope),
        kind: m.header.kind,
    })
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
