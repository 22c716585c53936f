//! OPEN (RFC 4271 §4.2) and capabilities (RFC 5492): multiprotocol (RFC 4760),
//! route refresh (RFC 2918) and enhanced route refresh (RFC 7313), graceful
//! restart (RFC 4724), 4-octet AS (RFC 6793), extended next hop (RFC 8950),
//! ADD-PATH (RFC 7911). Extended optional parameters (RFC 9072) are accepted.

use std::net::Ipv4Addr;

use bytes::{BufMut, Bytes, BytesMut};

use super::prefix::Family;
use super::reader::Reader;
use super::{AS_TRANS, DecodeError};

/// Capability codes.
pub mod cap_code {
    /// Multiprotocol extensions.
    pub const MULTIPROTOCOL: u8 = 1;
    /// Route refresh.
    pub const ROUTE_REFRESH: u8 = 2;
    /// Extended next hop encoding.
    pub const EXTENDED_NEXT_HOP: u8 = 5;
    /// Graceful restart.
    pub const GRACEFUL_RESTART: u8 = 64;
    /// 4-octet AS number.
    pub const FOUR_BYTE_AS: u8 = 65;
    /// ADD-PATH.
    pub const ADD_PATH: u8 = 69;
    /// Enhanced route refresh.
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
}

/// ADD-PATH send/receive field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddPathMode {
    /// 1: willing to receive.
    Receive,
    /// 2: would like to send.
    Send,
    /// 3: both.
    Both,
    /// Any other value (to be ignored).
    Other(u8),
}

impl AddPathMode {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => AddPathMode::Receive,
            2 => AddPathMode::Send,
            3 => AddPathMode::Both,
            x => AddPathMode::Other(x),
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            AddPathMode::Receive => 1,
            AddPathMode::Send => 2,
            AddPathMode::Both => 3,
            AddPathMode::Other(x) => x,
        }
    }
    /// Does this side receive?
    pub fn receives(self) -> bool {
        matches!(self, AddPathMode::Receive | AddPathMode::Both)
    }
    /// Does this side send?
    pub fn sends(self) -> bool {
        matches!(self, AddPathMode::Send | AddPathMode::Both)
    }
}

/// One family in the graceful restart capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrFamily {
    /// AFI.
    pub afi: u16,
    /// SAFI.
    pub safi: u8,
    /// Forwarding state was preserved (F bit).
    pub forwarding_preserved: bool,
}

/// Graceful restart capability (RFC 4724 §3, N bit from RFC 8538).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GracefulRestartCap {
    /// R bit: the sender has restarted.
    pub restarting: bool,
    /// N bit: graceful NOTIFICATION supported (RFC 8538).
    pub notification: bool,
    /// Restart time in seconds (12 bits).
    pub restart_time: u16,
    /// Families with preserved forwarding state.
    pub families: Vec<GrFamily>,
}

/// One capability.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Multiprotocol extensions for (AFI, SAFI).
    Multiprotocol {
        /// AFI.
        afi: u16,
        /// SAFI.
        safi: u8,
    },
    /// Route refresh.
    RouteRefresh,
    /// Enhanced route refresh.
    EnhancedRouteRefresh,
    /// Graceful restart.
    GracefulRestart(GracefulRestartCap),
    /// 4-octet AS number.
    FourByteAs(u32),
    /// Extended next hop: (NLRI AFI, NLRI SAFI, next hop AFI) triples.
    ExtendedNextHop(Vec<(u16, u16, u16)>),
    /// ADD-PATH: (AFI, SAFI, mode) triples.
    AddPath(Vec<(u16, u8, AddPathMode)>),
    /// Anything else, carried unparsed.
    Unknown {
        /// Capability code.
        code: u8,
        /// Value.
        value: Bytes,
    },
}

impl Capability {
    /// Multiprotocol capability for a family.
    pub fn mp(f: Family) -> Self {
        Capability::Multiprotocol {
            afi: f.afi(),
            safi: f.safi(),
        }
    }

    fn decode(code: u8, v: &[u8]) -> Result<Capability, DecodeError> {
        let bad = |reason| DecodeError::MalformedOpen { reason };
        let mut r = Reader::new(v);
        Ok(match code {
            cap_code::MULTIPROTOCOL => {
                if v.len() != 4 {
                    return Err(bad("multiprotocol capability length is not 4"));
                }
                Capability::Multiprotocol {
                    afi: u16::from_be_bytes([v[0], v[1]]),
                    safi: v[3],
                }
            }
            cap_code::ROUTE_REFRESH => Capability::RouteRefresh,
            cap_code::ENHANCED_ROUTE_REFRESH => Capability::EnhancedRouteRefresh,
            cap_code::FOUR_BYTE_AS => {
                if v.len() != 4 {
                    return Err(bad("4-octet AS capability length is not 4"));
                }
                Capability::FourByteAs(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            }
            cap_code::GRACEFUL_RESTART => {
                let head = r
                    .u16()
                    .ok_or(bad("graceful restart capability too short"))?;
                if !r.remaining().is_multiple_of(4) {
                    return Err(bad("graceful restart capability length"));
                }
                let mut families = Vec::with_capacity(r.remaining() / 4);
                while let (Some(afi), Some(safi), Some(flags)) = (r.u16(), r.u8(), r.u8()) {
                    families.push(GrFamily {
                        afi,
                        safi,
                        forwarding_preserved: flags & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart(GracefulRestartCap {
                    restarting: head & 0x8000 != 0,
                    notification: head & 0x4000 != 0,
                    restart_time: head & 0x0fff,
                    families,
                })
            }
            cap_code::EXTENDED_NEXT_HOP => {
                if !v.len().is_multiple_of(6) {
                    return Err(bad("extended next hop capability length"));
                }
                let mut t = Vec::with_capacity(v.len() / 6);
                while let (Some(a), Some(s), Some(n)) = (r.u16(), r.u16(), r.u16()) {
                    t.push((a, s, n));
                }
                Capability::ExtendedNextHop(t)
            }
            cap_code::ADD_PATH => {
                if !v.len().is_multiple_of(4) {
                    return Err(bad("ADD-PATH capability length"));
                }
                let mut t = Vec::with_capacity(v.len() / 4);
                while let (Some(a), Some(s), Some(m)) = (r.u16(), r.u8(), r.u8()) {
                    t.push((a, s, AddPathMode::from_u8(m)));
                }
                Capability::AddPath(t)
            }
            _ => Capability::Unknown {
                code,
                value: Bytes::copy_from_slice(v),
            },
        })
    }

    fn encode(&self, out: &mut BytesMut) {
        let mut v = BytesMut::with_capacity(16);
        let code = match self {
            Capability::Multiprotocol { afi, safi } => {
                v.put_u16(*afi);
                v.put_u8(0);
                v.put_u8(*safi);
                cap_code::MULTIPROTOCOL
            }
            Capability::RouteRefresh => cap_code::ROUTE_REFRESH,
            Capability::EnhancedRouteRefresh => cap_code::ENHANCED_ROUTE_REFRESH,
            Capability::FourByteAs(asn) => {
                v.put_u32(*asn);
                cap_code::FOUR_BYTE_AS
            }
            Capability::GracefulRestart(gr) => {
                let mut head = gr.restart_time & 0x0fff;
                if gr.restarting {
                    head |= 0x8000;
                }
                if gr.notification {
                    head |= 0x4000;
                }
                v.put_u16(head);
                for f in &gr.families {
                    v.put_u16(f.afi);
                    v.put_u8(f.safi);
                    v.put_u8(if f.forwarding_preserved { 0x80 } else { 0 });
                }
                cap_code::GRACEFUL_RESTART
            }
            Capability::ExtendedNextHop(t) => {
                for (a, s, n) in t {
                    v.put_u16(*a);
                    v.put_u16(*s);
                    v.put_u16(*n);
                }
                cap_code::EXTENDED_NEXT_HOP
            }
            Capability::AddPath(t) => {
                for (a, s, m) in t {
                    v.put_u16(*a);
                    v.put_u8(*s);
                    v.put_u8(m.to_u8());
                }
                cap_code::ADD_PATH
            }
            Capability::Unknown { code, value } => {
                v.put_slice(value);
                *code
            }
        };
        out.put_u8(code);
        out.put_u8(v.len().min(255) as u8);
        out.put_slice(&v[..v.len().min(255)]);
    }
}

/// An OPEN message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// The sender's AS: from the 4-octet AS capability when present, else the
    /// 2-octet My Autonomous System field.
    pub asn: u32,
    /// Proposed hold time in seconds.
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Capabilities, in the order received.
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The 4-octet AS from the capability, if announced.
    pub fn four_byte_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourByteAs(a) => Some(*a),
            _ => None,
        })
    }

    /// Families announced with the multiprotocol capability. RFC 4760 §8: a
    /// speaker that sends no multiprotocol capability at all carries IPv4
    /// unicast only.
    pub fn families(&self) -> super::Families {
        let mut any_mp = false;
        let mut fams = super::Families::NONE;
        for c in &self.capabilities {
            if let Capability::Multiprotocol { afi, safi } = c {
                any_mp = true;
                if let Some(f) = Family::from_afi_safi(*afi, *safi) {
                    fams.insert(f);
                }
            }
        }
        if !any_mp {
            fams.insert(Family::Ipv4Unicast);
        }
        fams
    }

    /// Does the OPEN carry a capability matching `pred`?
    pub fn has(&self, pred: impl Fn(&Capability) -> bool) -> bool {
        self.capabilities.iter().any(pred)
    }

    /// The graceful restart capability, if any.
    pub fn graceful_restart(&self) -> Option<&GracefulRestartCap> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(g) => Some(g),
            _ => None,
        })
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Open, DecodeError> {
        let bad = |reason| DecodeError::MalformedOpen { reason };
        let mut r = Reader::new(body);
        let version = r.u8().ok_or(bad("too short"))?;
        if version != 4 {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let my_as = r.u16().ok_or(bad("too short"))?;
        let hold_time = r.u16().ok_or(bad("too short"))?;
        let id = r.u32().ok_or(bad("too short"))?;
        let mut opt_len = usize::from(r.u8().ok_or(bad("too short"))?);
        // RFC 9072: Non-Ext OP Len 255 followed by Non-Ext OP Type 255.
        let mut extended = false;
        if opt_len == 255 && r.rest().first() == Some(&255) {
            let _ = r.u8();
            opt_len = usize::from(r.u16().ok_or(bad("extended parameters length"))?);
            extended = true;
        }
        if r.remaining() != opt_len {
            return Err(bad("optional parameters length does not match the message"));
        }
        let mut capabilities = Vec::new();
        while !r.is_empty() {
            let ty = r.u8().ok_or(bad("optional parameter header"))?;
            let len = if extended {
                r.u16()
            } else {
                r.u8().map(u16::from)
            }
            .ok_or(bad("optional parameter header"))?;
            let value = r
                .take(usize::from(len))
                .ok_or(bad("optional parameter overruns"))?;
            if ty != 2 {
                return Err(DecodeError::UnsupportedOptParam { ty });
            }
            let mut cr = Reader::new(value);
            while !cr.is_empty() {
                let code = cr.u8().ok_or(bad("capability header"))?;
                let clen = cr.u8().ok_or(bad("capability header"))?;
                let cval = cr
                    .take(usize::from(clen))
                    .ok_or(bad("capability overruns"))?;
                capabilities.push(Capability::decode(code, cval)?);
            }
        }
        if hold_time == 1 || hold_time == 2 {
            return Err(DecodeError::UnacceptableHoldTime { hold: hold_time });
        }
        if id == 0 {
            return Err(DecodeError::BadBgpId { id });
        }
        let mut open = Open {
            asn: u32::from(my_as),
            hold_time,
            router_id: Ipv4Addr::from(id),
            capabilities,
        };
        if let Some(a) = open.four_byte_as() {
            open.asn = a;
        }
        Ok(open)
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(4);
        out.put_u16(u16::try_from(self.asn).unwrap_or(AS_TRANS as u16));
        out.put_u16(self.hold_time);
        out.put_slice(&self.router_id.octets());
        let mut caps = BytesMut::new();
        for c in &self.capabilities {
            // One capability per optional parameter, as BIRD, FRR and GoBGP send.
            let mut one = BytesMut::new();
            c.encode(&mut one);
            // Without RFC 9072 the parameters are limited to 255 octets: leave
            // out what does not fit rather than emit a malformed OPEN.
            if caps.len() + 2 + one.len() > 255 {
                continue;
            }
            caps.put_u8(2);
            caps.put_u8(one.len() as u8);
            caps.put_slice(&one);
        }
        out.put_u8(caps.len() as u8);
        out.put_slice(&caps);
    }
}
