//! The overlay's netlink messages: reading the kernel's links, routes and
//! neighbour entries into the planner's terms, building the route
//! messages it writes, and the errors of a refused request.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::RouteMessageBuilder;

use super::{Device, Family, Mac, OVERLAY_METRIC, RTPROT_OVERLAY, Via};

/// A netlink request the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("{op} {what}: {source}")]
pub struct OverlayError {
    op: &'static str,
    what: String,
    #[source]
    source: rtnetlink::Error,
}

pub(super) fn fail(
    op: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> OverlayError {
    let what = what.into();
    move |source| OverlayError { op, what, source }
}

pub(super) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// "Already gone": a delete of something that is not there.
pub(super) fn gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(libc::ESRCH | libc::ENOENT | libc::ENODEV))
}

/// A device as the kernel lists it.
pub(super) struct Link {
    pub(super) index: u32,
    pub(super) mtu: u32,
    pub(super) mac: Vec<u8>,
    pub(super) up: bool,
    pub(super) vxlan: Option<Vec<InfoVxlan>>,
}

pub(super) fn link_of(m: &LinkMessage) -> (Option<String>, Link) {
    let mut name = None;
    let mut l = Link {
        index: m.header.index,
        mtu: 0,
        mac: Vec::new(),
        up: m.header.flags.contains(LinkFlags::Up),
        vxlan: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Address(v) => l.mac = v.clone(),
            LinkAttribute::LinkInfo(infos) => {
                let is_vxlan = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
                for i in infos {
                    if let (true, LinkInfo::Data(InfoData::Vxlan(v))) = (is_vxlan, i) {
                        l.vxlan = Some(v.clone());
                    }
                }
                if is_vxlan && l.vxlan.is_none() {
                    l.vxlan = Some(Vec::new());
                }
            }
            _ => {}
        }
    }
    (name, l)
}

/// Whether an existing device has the VXLAN parameters of `d` (those the
/// kernel cannot change in place).
pub(super) fn same_tunnel(l: &Link, d: &Device, underlay: Option<u32>) -> bool {
    let Some(info) = &l.vxlan else {
        return false;
    };
    let has = |want: &InfoVxlan| info.contains(want);
    let local = match d.local {
        IpAddr::V4(a) => InfoVxlan::Local(a),
        IpAddr::V6(a) => InfoVxlan::Local6(a),
    };
    has(&InfoVxlan::Id(d.vni))
        && has(&InfoVxlan::Port(d.port))
        && has(&local)
        && has(&InfoVxlan::Learning(false))
        && underlay.is_none_or(|i| has(&InfoVxlan::Link(i)))
}

/// A route of ours as dumped: (destination, how, metric).
pub(super) fn parse_route(
    m: &RouteMessage,
    devices: &BTreeMap<u32, Family>,
) -> Option<(IpNetwork, Via, u32)> {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    let mut metric = 0;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v)) => dst = Some(IpAddr::V4(*v)),
            RouteAttribute::Destination(RouteAddress::Inet6(v)) => dst = Some(IpAddr::V6(*v)),
            RouteAttribute::Gateway(RouteAddress::Inet(v)) => gw = Some(IpAddr::V4(*v)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v)) => gw = Some(IpAddr::V6(*v)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    let dst = IpNetwork::new(dst?, m.header.destination_prefix_length).ok()?;
    let onlink = m.header.flags.contains(RouteFlags::Onlink);
    let via = match (oif.and_then(|i| devices.get(&i)), gw) {
        (Some(af), Some(gw)) if onlink => Via::Tunnel { af: *af, gw },
        // (IPv6 dumps every route with universe scope.)
        (Some(af), None) => Via::Device { af: *af },
        (_, Some(gw)) => Via::Underlay { gw },
        (_, None) => return None,
    };
    Some((dst, via, metric))
}

pub(super) fn route_message(
    dst: &IpNetwork,
    via: &Via,
    devices: &BTreeMap<Family, u32>,
) -> Option<RouteMessage> {
    let (gw, oif) = match via {
        Via::Tunnel { af, gw } => (Some(*gw), Some(*devices.get(af)?)),
        Via::Underlay { gw } => (Some(*gw), None),
        Via::Device { af } => (None, Some(*devices.get(af)?)),
    };
    let mut m = match (dst, gw) {
        (IpNetwork::V4(n), Some(IpAddr::V4(g))) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .gateway(g)
            .build(),
        (IpNetwork::V6(n), Some(IpAddr::V6(g))) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .gateway(g)
            .build(),
        (IpNetwork::V4(n), None) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .scope(RouteScope::Link)
            .build(),
        (IpNetwork::V6(n), None) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .scope(RouteScope::Link)
            .build(),
        _ => return None,
    };
    m.header.protocol = RouteProtocol::Other(RTPROT_OVERLAY);
    m.attributes.push(RouteAttribute::Priority(OVERLAY_METRIC));
    if let Some(i) = oif {
        m.attributes.push(RouteAttribute::Oif(i));
        if gw.is_some() {
            m.header.flags.insert(RouteFlags::Onlink);
        }
    }
    Some(m)
}

/// An FDB entry or neighbour as dumped: (ifindex, mac, ip, permanent).
pub(super) fn parse_neigh(m: &NeighbourMessage) -> Option<(u32, Mac, IpAddr)> {
    let mut mac = None;
    let mut ip = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(v) => {
                mac = <[u8; 6]>::try_from(v.as_slice()).ok().map(Mac);
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(IpAddr::V4(*v)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                ip = Some(IpAddr::V6(*v))
            }
            // An FDB entry (family AF_BRIDGE) carries its VTEP's address
            // as raw bytes: the length tells the family.
            NeighbourAttribute::Destination(NeighbourAddress::Other(v)) => {
                ip = <[u8; 4]>::try_from(v.as_slice())
                    .map(IpAddr::from)
                    .or_else(|_| <[u8; 16]>::try_from(v.as_slice()).map(IpAddr::from))
                    .ok();
            }
            _ => {}
        }
    }
    Some((m.header.ifindex, mac?, ip?))
}
