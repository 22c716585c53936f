//! The VXLAN overlay's kernel side: the tunnel devices (`vxlan.margay`,
//! `vxlan-v6.margay`), their static FDB and neighbour entries, and the
//! routes to remote pods through them (protocol [`RTPROT_OVERLAY`]), as
//! [`Wanted`] describes them; [`kernel::OverlayKernel`] makes the kernel so.
//! What is wanted is worked out by `crate::overlay`.

pub mod kernel;
mod netlink;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// The IPv4 tunnel device.
pub const DEVICE_V4: &str = "vxlan.margay";
/// The IPv6 tunnel device.
pub const DEVICE_V6: &str = "vxlan-v6.margay";
/// Route protocol of the overlay's routes (`ip route show proto 82`): BGP
/// routes are 80, local routes 81; each class has one owner.
pub const RTPROT_OVERLAY: u8 = 82;
/// Metric of the overlay's routes: below the BGP routes' 1280, so a pool in
/// `Always` / `CrossSubnet` is routed by the overlay while BGP still runs.
pub const OVERLAY_METRIC: u32 = 1100;
/// An address family of the overlay: IPv4 pools over the IPv4 underlay,
/// IPv6 pools over the IPv6 underlay (the workspace's one family type).
pub use margay_types::Family;

/// What the overlay makes of a family.
pub trait Tunnel {
    /// Its tunnel device.
    fn device(self) -> &'static str;
    /// Bytes VXLAN adds over this underlay: outer IP header (20 / 40) +
    /// UDP (8) + VXLAN (8) + inner Ethernet (14).
    fn overhead(self) -> u32;
}

impl Tunnel for Family {
    fn device(self) -> &'static str {
        match self {
            Family::V4 => DEVICE_V4,
            Family::V6 => DEVICE_V6,
        }
    }

    fn overhead(self) -> u32 {
        match self {
            Family::V4 => 50,
            Family::V6 => 70,
        }
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let mut out = [0u8; 6];
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address (6 hex bytes with ':')"));
        }
        for (o, p) in out.iter_mut().zip(&parts) {
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (bad byte {p:?})"))?;
        }
        Ok(Mac(out))
    }
}

/// One tunnel device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its family.
    pub af: Family,
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// Underlay source address.
    pub local: IpAddr,
    /// MTU.
    pub mtu: u32,
    /// Its MAC (derived from the node name, see `overlay::tunnel_mac`).
    pub mac: Mac,
    /// The tunnel address (/32, /128), once IPAM has given one.
    pub address: Option<IpAddr>,
}

/// A static FDB entry: frames for `mac` go to the VTEP at `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    /// Device family.
    pub af: Family,
    /// The remote device's MAC.
    pub mac: Mac,
    /// The remote node's underlay address.
    pub dst: IpAddr,
}

/// A permanent neighbour: the remote tunnel address is at `mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neigh {
    /// Device family.
    pub af: Family,
    /// The remote tunnel address.
    pub ip: IpAddr,
    /// The remote device's MAC.
    pub mac: Mac,
}

/// How a remote destination is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// `via <tunnel address> dev <device> onlink`.
    Tunnel {
        /// Device family.
        af: Family,
        /// The remote node's tunnel address.
        gw: IpAddr,
    },
    /// `via <underlay address>`: same subnet, `CrossSubnet`, no encapsulation.
    Underlay {
        /// The remote node's underlay address.
        gw: IpAddr,
    },
    /// `dev <device> scope link`, no gateway: a remote node's tunnel
    /// address itself, for every tunnel address a [`Via::Tunnel`] route
    /// uses. The kernel then takes that address as an `onlink` gateway
    /// whatever else is routed: IPv6 refuses an onlink gateway that another
    /// route sends out of another device (EINVAL), e.g. a BGP route to the
    /// very block the tunnel address lies in.
    Device {
        /// Device family.
        af: Family,
    },
}

/// What the kernel should hold (borrowed from the overlay's plan).
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    /// Tunnel devices (one per family with a VXLAN pool).
    pub devices: &'a BTreeMap<Family, Device>,
    /// FDB entries.
    pub fdb: &'a BTreeSet<Fdb>,
    /// Neighbours.
    pub neigh: &'a BTreeSet<Neigh>,
    /// Routes to remote destinations.
    pub routes: &'a BTreeMap<IpNetwork, Via>,
}
