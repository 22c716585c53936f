//! The VXLAN overlay (`IPPool.spec.vxlanMode`): what this node's tunnel
//! devices, forwarding entries and routes should be, as a pure function of
//! the pools, the Node objects and the IPAM blocks ([`plan`]); the kernel
//! side ([`crate::dataplane::vxlan`]) and the task that runs it ([`task`]).
//!
//! ```text
//!  cluster (Nodes, IPPools) ──generations──┐
//!  IPAM view (remote blocks, tunnel addrs) ┼──► overlay task ──► plan() ──► OverlayKernel (rtnetlink)
//!  reconcile timer ────────────────────────┘        │                        vxlan.margay / vxlan-v6.margay,
//!                                                    │                        FDB + neighbours, routes proto 82
//!                                                    ├──► Allocator: tunnel address per family (IPAM)
//!                                                    ├──► Node annotations (merge patch): tunnel address + MAC
//!                                                    └──► watch<u32>: the pod MTU, read by Allocate
//! ```
//!
//! As in Calico: one device per family (`vxlan.margay` over the IPv4
//! underlay for IPv4 pools, `vxlan-v6.margay` over the IPv6 underlay for
//! IPv6 pools), VNI 4096, UDP port 4789, learning off, no multicast. Every
//! other node's VTEP is a static FDB entry (its MAC → its underlay address)
//! and a permanent neighbour (its tunnel address → its MAC); a remote block
//! of a VXLAN pool is routed `via <its node's tunnel address> dev
//! vxlan.margay onlink`, and that tunnel address itself `dev vxlan.margay`
//! (see [`Via::Device`]). Those facts come from the Node objects
//! (annotations this agent owns, [`ANN_TUNNEL_ADDR_V4`] …) and from the IPAM
//! blocks' affinities, so no BGP route is needed; BGP keeps running beside
//! (its routes, metric 1280, lose to these, metric [`OVERLAY_METRIC`]).
//!
//! The tunnel address comes from the pool through IPAM (handle
//! `vxlan-tunnel-addr-<node>`, as Calico): it lies in one of the node's
//! VXLAN-routed blocks, so traffic the node itself sends to a remote pod
//! leaves with it as source and the answer comes back through the tunnel,
//! never onto the underlay with a pod address (which an underlay with
//! source checks, a cloud VPC or uRPF, drops). The MAC is derived from the
//! node name ([`tunnel_mac`]): stable across restarts and re-created
//! devices without any state, and published beside the address.
//!
//! `CrossSubnet`: a remote node whose underlay address lies in this node's
//! underlay subnet (its address and prefix length, published in
//! `margay.dev/ipv4-address`) is reached by a plain route via that address;
//! any other through the tunnel.

pub mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::dataplane::vxlan::{Device, Family, Fdb, Mac, Neigh, Tunnel, Via, Wanted};
use crate::k8s::crd::VxlanMode;
use crate::k8s::ipam::view::IpamView;
use crate::k8s::node::annotations::{
    ANN_TUNNEL_ADDR_V4, ANN_TUNNEL_ADDR_V6, ANN_TUNNEL_MAC_V4, ANN_TUNNEL_MAC_V6,
};

/// Default VNI (Calico's).
pub const DEFAULT_VNI: u32 = 4096;
/// Default UDP port (IANA's VXLAN port).
pub const DEFAULT_PORT: u16 = 4789;
/// The MAC of `node`'s tunnel device in `af`: six bytes of
/// sha1("margay-vxlan/<af>/<node>"), locally administered and unicast.
pub fn tunnel_mac(node: &str, af: Family) -> Mac {
    use sha1::Digest as _;
    let d = sha1::Sha1::digest(format!("margay-vxlan/{af:?}/{node}").as_bytes());
    let mut m = [d[0], d[1], d[2], d[3], d[4], d[5]];
    m[0] = (m[0] & 0xfe) | 0x02;
    Mac(m)
}

/// Device settings (agent flags, the same on every node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// MTU of `vxlan.margay` (None: the underlay's minus 50).
    pub mtu_v4: Option<u32>,
    /// MTU of `vxlan-v6.margay` (None: the underlay's minus 70).
    pub mtu_v6: Option<u32>,
    /// Pods' MTU (None: the underlay's, or the smallest tunnel device's
    /// when a pool uses VXLAN).
    pub veth_mtu: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            mtu_v4: None,
            mtu_v6: None,
            veth_mtu: None,
        }
    }
}

/// A pool as the overlay sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolFacts {
    /// Object name.
    pub name: String,
    /// Its network.
    pub cidr: IpNetwork,
    /// Its mode.
    pub mode: VxlanMode,
    /// This node may take its tunnel address from it (enabled, selects the
    /// node, allows tunnel use).
    pub for_tunnel: bool,
}

/// Another node as its Node object describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// Underlay address per family ([`Family::idx`]).
    pub underlay: [Option<IpAddr>; 2],
    /// Tunnel address and device MAC per family, from its annotations.
    pub tunnel: [Option<(IpAddr, Mac)>; 2],
}

/// Inputs of [`plan`].
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// This node's name.
    pub me: &'a str,
    /// This node's underlay address per family, with its subnet's prefix.
    pub underlay: [Option<IpNetwork>; 2],
    /// MTU of the underlay interface.
    pub underlay_mtu: u32,
    /// Every other node, by name.
    pub peers: &'a BTreeMap<String, Peer>,
    /// Every pool.
    pub pools: &'a [PoolFacts],
    /// The IPAM view (remote destinations, this node's tunnel addresses).
    pub view: &'a IpamView,
    /// Device settings.
    pub settings: &'a Settings,
}

/// What the overlay should be on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tunnel devices (one per family with a VXLAN pool).
    pub devices: BTreeMap<Family, Device>,
    /// FDB entries.
    pub fdb: BTreeSet<Fdb>,
    /// Neighbours.
    pub neigh: BTreeSet<Neigh>,
    /// Routes to remote destinations.
    pub routes: BTreeMap<IpNetwork, Via>,
    /// Pools this node may take a tunnel address from, per family (when
    /// the family has a device).
    pub tunnel_pools: [Vec<String>; 2],
    /// This node's tunnel address per family that IPAM holds but that is
    /// no longer in a VXLAN pool of a family with a device: to release.
    pub stale_tunnels: Vec<IpAddr>,
    /// The pods' MTU.
    pub pod_mtu: u32,
    /// Why something wanted could not be planned.
    pub problems: Vec<String>,
}

/// The Node annotations (tunnel address, MAC) of a family.
pub fn annotation_keys(af: Family) -> (&'static str, &'static str) {
    match af {
        Family::V4 => (ANN_TUNNEL_ADDR_V4, ANN_TUNNEL_MAC_V4),
        Family::V6 => (ANN_TUNNEL_ADDR_V6, ANN_TUNNEL_MAC_V6),
    }
}

impl Plan {
    /// What the kernel should hold: devices, entries and routes.
    pub fn kernel(&self) -> Wanted<'_> {
        Wanted {
            devices: &self.devices,
            fdb: &self.fdb,
            neigh: &self.neigh,
            routes: &self.routes,
        }
    }

    /// The annotations this node should carry: tunnel address and MAC per
    /// family with a device and an address, the others removed.
    pub fn annotations(&self) -> BTreeMap<&'static str, Option<String>> {
        let mut out = BTreeMap::new();
        for af in Family::BOTH {
            let (addr_key, mac_key) = annotation_keys(af);
            let dev = self.devices.get(&af);
            let addr = dev.and_then(|d| d.address);
            out.insert(addr_key, addr.map(|a| a.to_string()));
            out.insert(mac_key, addr.and(dev).map(|d| d.mac.to_string()));
        }
        out
    }
}

/// The most specific pool containing `net`.
fn pool_of<'a>(pools: &'a [PoolFacts], net: &IpNetwork) -> Option<&'a PoolFacts> {
    pools
        .iter()
        .filter(|p| p.cidr.contains(net.network()) && p.cidr.prefix() <= net.prefix())
        .max_by_key(|p| p.cidr.prefix())
}

fn vxlan(mode: VxlanMode) -> bool {
    mode != VxlanMode::Never
}

/// The overlay this node should have (see the module docs).
pub fn plan(input: &Input<'_>) -> Plan {
    let mut p = Plan::default();
    let s = input.settings;
    // A device per family that some pool carries in VXLAN.
    for af in Family::BOTH {
        let wanted = input
            .pools
            .iter()
            .any(|pool| Family::of(pool.cidr.ip()) == af && vxlan(pool.mode));
        if !wanted {
            continue;
        }
        let Some(local) = input.underlay[af.idx()] else {
            p.problems.push(format!(
                "a {af:?} pool uses VXLAN but this node has no {af:?} underlay address: no {} device",
                af.device()
            ));
            continue;
        };
        let configured = match af {
            Family::V4 => s.mtu_v4,
            Family::V6 => s.mtu_v6,
        };
        let mtu = configured.unwrap_or_else(|| input.underlay_mtu.saturating_sub(af.overhead()));
        let address = input.view.tunnel_address(af.is_v6());
        // A tunnel address outside every VXLAN pool of its family would not
        // be routed through the tunnel by the other nodes: give it back.
        let address = match address {
            Some(a)
                if pool_of(input.pools, &IpNetwork::from(a))
                    .is_some_and(|pool| vxlan(pool.mode)) =>
            {
                Some(a)
            }
            Some(a) => {
                p.stale_tunnels.push(a);
                None
            }
            None => None,
        };
        p.tunnel_pools[af.idx()] = input
            .pools
            .iter()
            .filter(|pool| Family::of(pool.cidr.ip()) == af && vxlan(pool.mode) && pool.for_tunnel)
            .map(|pool| pool.name.clone())
            .collect();
        if address.is_none() && p.tunnel_pools[af.idx()].is_empty() {
            p.problems.push(format!(
                "no enabled {af:?} VXLAN pool selects this node: it has no tunnel address, so other nodes cannot reach its pods through {}",
                af.device()
            ));
        }
        p.devices.insert(
            af,
            Device {
                af,
                vni: s.vni,
                port: s.port,
                local: local.ip(),
                mtu,
                mac: tunnel_mac(input.me, af),
                address,
            },
        );
    }
    // A family without a device keeps no tunnel address.
    for t in &input.view.tunnels {
        if !p.devices.contains_key(&Family::of(t.ip)) && !p.stale_tunnels.contains(&t.ip) {
            p.stale_tunnels.push(t.ip);
        }
    }
    // Every other node's VTEP.
    for (name, peer) in input.peers {
        if name == input.me {
            continue;
        }
        for af in p.devices.keys().copied().collect::<Vec<_>>() {
            if let (Some(dst), Some((ip, mac))) = (peer.underlay[af.idx()], peer.tunnel[af.idx()]) {
                p.fdb.insert(Fdb { af, mac, dst });
                p.neigh.insert(Neigh { af, ip, mac });
            }
        }
    }
    // Routes to what lives on other nodes, in VXLAN pools.
    let mut missing: BTreeSet<(String, Family, &'static str)> = BTreeSet::new();
    for (dst, node) in input.view.remote.iter() {
        let Some(pool) = pool_of(input.pools, dst).filter(|pool| vxlan(pool.mode)) else {
            continue;
        };
        let af = Family::of(dst.ip());
        let Some(dev) = p.devices.get(&af) else {
            continue;
        };
        let Some(peer) = input.peers.get(node) else {
            missing.insert((node.clone(), af, "no Node object"));
            continue;
        };
        let Some(underlay) = peer.underlay[af.idx()] else {
            missing.insert((node.clone(), af, "no underlay address of the family"));
            continue;
        };
        let same_subnet = input.underlay[af.idx()].is_some_and(|mine| mine.contains(underlay));
        let via = if pool.mode == VxlanMode::CrossSubnet && same_subnet {
            Via::Underlay { gw: underlay }
        } else {
            match peer.tunnel[af.idx()] {
                Some((gw, _)) => Via::Tunnel { af: dev.af, gw },
                None => {
                    missing.insert((node.clone(), af, "no tunnel address published yet"));
                    continue;
                }
            }
        };
        p.routes.insert(*dst, via);
    }
    // The tunnel addresses used as gateways, on the device (replacing a
    // borrowed-address route to the same /32 or /128: the same path).
    let gateways: BTreeSet<(Family, IpAddr)> = p
        .routes
        .values()
        .filter_map(|v| match v {
            Via::Tunnel { af, gw } => Some((*af, *gw)),
            _ => None,
        })
        .collect();
    for (af, gw) in gateways {
        p.routes.insert(IpNetwork::from(gw), Via::Device { af });
    }
    for (node, af, why) in missing {
        p.problems.push(format!(
            "node {node}: {why}: its {af:?} pods in VXLAN pools are not routed by the overlay"
        ));
    }
    // Pods fit in the smallest tunnel.
    p.pod_mtu = s.veth_mtu.unwrap_or_else(|| {
        p.devices
            .values()
            .map(|d| d.mtu)
            .fold(input.underlay_mtu, u32::min)
    });
    p
}

#[cfg(test)]
mod tests;
