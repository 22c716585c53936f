//! Prefixes, address families and the NLRI encoding (RFC 4271 §4.3, RFC 4760,
//! ADD-PATH path identifiers RFC 7911). One code path serves IPv4 and IPv6:
//! the family only decides the maximum length and the address width.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bytes::{BufMut, BytesMut};
use ipnetwork::IpNetwork;

use super::reader::Reader;

/// Address Family Identifier values used here (IANA).
pub const AFI_IPV4: u16 = 1;
/// AFI for IPv6.
pub const AFI_IPV6: u16 = 2;
/// SAFI unicast.
pub const SAFI_UNICAST: u8 = 1;

/// The address families this speaker carries.
/// A wire type (an AFI/SAFI pair, RFC 4760), not `margay_types::Family`: it
/// would grow with every SAFI carried; `From` converts between the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// AFI 1 / SAFI 1.
    Ipv4Unicast,
    /// AFI 2 / SAFI 1.
    Ipv6Unicast,
}

impl Family {
    /// Both families, in a fixed order.
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    /// The AFI on the wire.
    pub fn afi(self) -> u16 {
        match self {
            Family::Ipv4Unicast => AFI_IPV4,
            Family::Ipv6Unicast => AFI_IPV6,
        }
    }

    /// The SAFI on the wire.
    pub fn safi(self) -> u8 {
        SAFI_UNICAST
    }

    /// The family for an AFI/SAFI pair, if it is one we carry.
    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (AFI_IPV4, SAFI_UNICAST) => Some(Family::Ipv4Unicast),
            (AFI_IPV6, SAFI_UNICAST) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    /// Longest prefix length in bits.
    pub fn max_len(self) -> u8 {
        match self {
            Family::Ipv4Unicast => 32,
            Family::Ipv6Unicast => 128,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Family::Ipv4Unicast => 1,
            Family::Ipv6Unicast => 2,
        }
    }
}

impl From<margay_types::Family> for Family {
    /// The unicast AFI/SAFI of an address family.
    fn from(f: margay_types::Family) -> Family {
        match f {
            margay_types::Family::V4 => Family::Ipv4Unicast,
            margay_types::Family::V6 => Family::Ipv6Unicast,
        }
    }
}

impl From<Family> for margay_types::Family {
    /// The address family of an AFI/SAFI pair.
    fn from(f: Family) -> margay_types::Family {
        match f {
            Family::Ipv4Unicast => margay_types::Family::V4,
            Family::Ipv6Unicast => margay_types::Family::V6,
        }
    }
}

/// A small set of [`Family`] values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Families(u8);

impl Families {
    /// No family.
    pub const NONE: Families = Families(0);
    /// IPv4 and IPv6 unicast.
    pub const BOTH: Families = Families(3);

    /// The set with one family.
    pub fn only(f: Family) -> Self {
        Families(f.bit())
    }

    /// Does the set hold `f`?
    pub fn contains(self, f: Family) -> bool {
        self.0 & f.bit() != 0
    }

    /// Add `f`.
    pub fn insert(&mut self, f: Family) {
        self.0 |= f.bit();
    }

    /// Remove `f`.
    pub fn remove(&mut self, f: Family) {
        self.0 &= !f.bit();
    }

    /// Members common to both sets.
    pub fn intersect(self, other: Families) -> Families {
        Families(self.0 & other.0)
    }

    /// Iterate over the members.
    pub fn iter(self) -> impl Iterator<Item = Family> {
        Family::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// Is the set empty?
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Family> for Families {
    fn from_iter<T: IntoIterator<Item = Family>>(iter: T) -> Self {
        let mut s = Families::NONE;
        for f in iter {
            s.insert(f);
        }
        s
    }
}

/// An IP prefix with its host bits cleared.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// A prefix string or length that does not make a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The length exceeds the family's maximum.
    #[error("prefix length {len} is longer than {max}")]
    TooLong {
        /// Given length.
        len: u8,
        /// Family maximum.
        max: u8,
    },
    /// Not `ADDR/LEN`.
    #[error("cannot parse prefix {text:?}")]
    Syntax {
        /// The input.
        text: String,
    },
}

impl Prefix {
    /// A prefix from an address and a length; host bits are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let max = family_of(&addr).max_len();
        if len > max {
            return Err(PrefixError::TooLong { len, max });
        }
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The length in bits.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Is this a default route (length zero)?
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// The address family.
    pub fn family(&self) -> Family {
        family_of(&self.addr)
    }

    /// Does this prefix contain `addr`?
    pub fn contains(&self, addr: IpAddr) -> bool {
        family_of(&addr) == self.family() && mask(addr, self.len) == self.addr
    }

    /// Does this prefix contain all of `other`?
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

fn family_of(addr: &IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::Ipv4Unicast,
        IpAddr::V6(_) => Family::Ipv6Unicast,
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PrefixError::Syntax {
            text: s.to_string(),
        };
        let (a, l) = s.split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = a.parse().map_err(|_| syntax())?;
        let len: u8 = l.parse().map_err(|_| syntax())?;
        Prefix::new(addr, len)
    }
}

impl From<Prefix> for IpNetwork {
    fn from(p: Prefix) -> Self {
        // The length was checked against the family when the prefix was made.
        match IpNetwork::new(p.addr, p.len) {
            Ok(n) => n,
            Err(_) => unreachable_network(p),
        }
    }
}

#[cold]
fn unreachable_network(p: Prefix) -> IpNetwork {
    // Prefix::new guarantees len <= max, so IpNetwork::new cannot fail; keep a
    // total function anyway rather than a panic.
    IpNetwork::from(p.addr)
}

impl From<IpNetwork> for Prefix {
    fn from(n: IpNetwork) -> Self {
        // IpNetwork already bounds the length by the family.
        Prefix {
            addr: mask(n.ip(), n.prefix()),
            len: n.prefix(),
        }
    }
}

/// One NLRI entry: a prefix and its ADD-PATH path identifier (0 without ADD-PATH).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nlri {
    /// The prefix.
    pub prefix: Prefix,
    /// RFC 7911 path identifier, 0 when ADD-PATH is not in use.
    pub path_id: u32,
}

impl From<Prefix> for Nlri {
    fn from(prefix: Prefix) -> Self {
        Nlri { prefix, path_id: 0 }
    }
}

/// Why an NLRI field is syntactically incorrect (RFC 7606 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NlriError {
    /// A length octet exceeds the family maximum.
    #[error("prefix length {len} exceeds {max}")]
    LengthTooLong {
        /// The length octet.
        len: u8,
        /// Family maximum.
        max: u8,
    },
    /// The field ends in the middle of an entry.
    #[error("NLRI field ends inside an entry")]
    Truncated,
}

/// Decode a whole NLRI (or withdrawn routes) field into `out`.
pub(crate) fn decode_nlri(
    buf: &[u8],
    family: Family,
    add_path: bool,
    out: &mut Vec<Nlri>,
) -> Result<(), NlriError> {
    let mut r = Reader::new(buf);
    let max = family.max_len();
    // Every entry takes at least one octet: the output is bounded by the input.
    out.reserve(buf.len().min(4096) / if add_path { 5 } else { 2 });
    while !r.is_empty() {
        let path_id = if add_path {
            r.u32().ok_or(NlriError::Truncated)?
        } else {
            0
        };
        let len = r.u8().ok_or(NlriError::Truncated)?;
        if len > max {
            return Err(NlriError::LengthTooLong { len, max });
        }
        let nbytes = usize::from(len).div_ceil(8);
        let bytes = r.take(nbytes).ok_or(NlriError::Truncated)?;
        let addr = match family {
            Family::Ipv4Unicast => {
                let mut a = [0u8; 4];
                a[..nbytes].copy_from_slice(bytes);
                IpAddr::V4(Ipv4Addr::from(a))
            }
            Family::Ipv6Unicast => {
                let mut a = [0u8; 16];
                a[..nbytes].copy_from_slice(bytes);
                IpAddr::V6(Ipv6Addr::from(a))
            }
        };
        out.push(Nlri {
            prefix: Prefix {
                addr: mask(addr, len),
                len,
            },
            path_id,
        });
    }
    Ok(())
}

/// Encoded size of one entry.
pub(crate) fn nlri_len(n: &Nlri, add_path: bool) -> usize {
    1 + usize::from(n.prefix.len).div_ceil(8) + if add_path { 4 } else { 0 }
}

/// Encode one entry.
pub(crate) fn encode_nlri(n: &Nlri, add_path: bool, out: &mut BytesMut) {
    if add_path {
        out.put_u32(n.path_id);
    }
    out.put_u8(n.prefix.len);
    let nbytes = usize::from(n.prefix.len).div_ceil(8);
    match n.prefix.addr {
        IpAddr::V4(a) => out.put_slice(&a.octets()[..nbytes]),
        IpAddr::V6(a) => out.put_slice(&a.octets()[..nbytes]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_families_convert_to_unicast_afi_safi_and_back() {
        for (af, wire) in margay_types::Family::BOTH.into_iter().zip(Family::ALL) {
            assert_eq!(Family::from(af), wire);
            assert_eq!(margay_types::Family::from(wire), af);
            assert_eq!(wire.max_len(), af.bits());
        }
    }

    #[test]
    fn host_bits_are_cleared() {
        let p: Prefix = "198.19.1.77/24".parse().unwrap();
        assert_eq!(p.to_string(), "198.19.1.0/24");
        let p: Prefix = "2001:db8::1/32".parse().unwrap();
        assert_eq!(p.to_string(), "2001:db8::/32");
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
    }

    #[test]
    fn nlri_field_errors_are_detected() {
        let mut out = Vec::new();
        assert_eq!(
            decode_nlri(&[33, 1, 2, 3, 4, 5], Family::Ipv4Unicast, false, &mut out),
            Err(NlriError::LengthTooLong { len: 33, max: 32 })
        );
        assert_eq!(
            decode_nlri(&[24, 198, 19], Family::Ipv4Unicast, false, &mut out),
            Err(NlriError::Truncated)
        );
        out.clear();
        decode_nlri(
            &[0, 24, 198, 19, 7, 9, 198, 128],
            Family::Ipv4Unicast,
            false,
            &mut out,
        )
        .unwrap();
        let got: Vec<String> = out.iter().map(|n| n.prefix.to_string()).collect();
        assert_eq!(got, ["0.0.0.0/0", "198.19.7.0/24", "198.128.0.0/9"]);
    }
}
