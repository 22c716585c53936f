//! Configuration of the speaker and of its peers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::wire::{Families, Prefix};

/// Which AS the peer must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemoteAs {
    /// Exactly this AS.
    Asn(u32),
    /// Any AS other than ours (eBGP).
    External,
    /// Our AS (iBGP).
    Internal,
}

impl RemoteAs {
    /// Does `asn` satisfy this rule for a speaker in `local_as`?
    pub fn accepts(self, asn: u32, local_as: u32) -> bool {
        match self {
            RemoteAs::Asn(a) => a == asn,
            RemoteAs::External => asn != local_as,
            RemoteAs::Internal => asn == local_as,
        }
    }
}

/// Where the peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Neighbor {
    /// One address: we connect to it (unless passive) and accept from it.
    Addr(IpAddr),
    /// Dynamic neighbours: accept a session from any address in the range.
    Range(Prefix),
}

/// Graceful restart (RFC 4724) settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// Restart time we announce (seconds, at most 4095).
    pub restart_time: u16,
    /// How long stale routes of a restarted peer are kept waiting for its
    /// End-of-RIB once it is back.
    pub stale_time: Duration,
    /// We are restarting with forwarding state preserved (R and F bits).
    pub restarting: bool,
}

impl Default for GracefulRestart {
    fn default() -> Self {
        Self {
            restart_time: 120,
            stale_time: Duration::from_secs(360),
            restarting: false,
        }
    }
}

/// BFD for a peer: a session toward the neighbour address whose failure
/// takes the BGP session down at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerBfd {
    /// Timer parameters.
    pub timers: crate::bfd::BfdConfig,
    /// RFC 5883 multihop (port 4784, no TTL check) instead of single hop.
    pub multihop: bool,
}

/// One peer (or a range of dynamic peers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// A name for logs and status.
    pub name: String,
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Neighbour address or range.
    pub neighbor: Neighbor,
    /// The peer's AS rule.
    pub remote_as: RemoteAs,
    /// Hold time we propose (0 or at least 3 seconds).
    pub hold_time: u16,
    /// Keepalive interval; `None` means a third of the negotiated hold time.
    pub keepalive: Option<u16>,
    /// Connect-retry interval.
    pub connect_retry: Duration,
    /// Never connect, only accept.
    pub passive: bool,
    /// Families to negotiate.
    pub families: Families,
    /// Graceful restart, if enabled.
    pub graceful_restart: Option<GracefulRestart>,
    /// Tear the session down when the peer sends more prefixes than this.
    pub max_prefix: Option<u32>,
    /// Accept ADD-PATH path identifiers from the peer.
    pub add_path_rx: bool,
    /// Offer extended next hop for IPv4 (RFC 8950).
    pub extended_next_hop: bool,
    /// The peer is a route-reflector client of ours (RFC 4456).
    pub rr_client: bool,
    /// Next hop we advertise: `true` always ourselves, `false` keep it for
    /// iBGP (eBGP always uses ourselves).
    pub next_hop_self: bool,
    /// Communities added to the routes we originate when sent to this peer.
    pub communities: crate::wire::CommunitySet,
    /// TCP MD5 password (RFC 2385).
    pub md5_password: Option<String>,
    /// GTSM (RFC 5082): send with TTL 255 and require at least 255 - hops.
    pub ttl_security: Option<u8>,
    /// Source address for the connection (and for BFD).
    pub source_addr: Option<IpAddr>,
    /// BFD (RFC 5880/5881) toward the neighbour, if enabled.
    pub bfd: Option<PeerBfd>,
    /// Import and export filters.
    pub filters: crate::rib::PeerFilters,
    /// Peer's TCP port (179 unless testing).
    pub port: u16,
    /// Our IPv4 next hop for routes we send as next-hop-self (default: the
    /// session's local address when it is IPv4).
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Our IPv6 next hop (default: the session's local address when it is
    /// IPv6). Set it to carry IPv6 routes over an IPv4 session, as BIRD's
    /// `next hop address`; otherwise they would get a v4-mapped next hop.
    pub next_hop_v6: Option<Ipv6Addr>,
}

impl PeerConfig {
    /// A peer with the defaults BIRD and FRR use (hold 90 s, connect retry 5 s).
    pub fn new(
        name: impl Into<String>,
        local_as: u32,
        router_id: Ipv4Addr,
        neighbor: Neighbor,
        remote_as: RemoteAs,
    ) -> Self {
        PeerConfig {
            name: name.into(),
            local_as,
            router_id,
            neighbor,
            remote_as,
            hold_time: 90,
            keepalive: None,
            connect_retry: Duration::from_secs(5),
            passive: matches!(neighbor, Neighbor::Range(_)),
            families: Families::BOTH,
            graceful_restart: None,
            max_prefix: None,
            add_path_rx: false,
            extended_next_hop: false,
            rr_client: false,
            next_hop_self: false,
            communities: Default::default(),
            md5_password: None,
            ttl_security: None,
            source_addr: None,
            bfd: None,
            filters: Default::default(),
            port: 179,
            next_hop_v4: None,
            next_hop_v6: None,
        }
    }
}
