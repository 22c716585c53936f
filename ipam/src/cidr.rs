//! A CIDR that is serialized as a string ("198.19.0.0/26") and whose host bits
//! are zero, with the arithmetic IPAM needs. IPv4 and IPv6 share one code path:
//! addresses are handled as `u128` offsets.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IP address family (the workspace's one type; serde `"IPv4"`/`"IPv6"`).
pub use margay_types::Family;

/// Why a CIDR string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// Not `address/prefix`.
    #[error("invalid CIDR {input:?}: {reason}")]
    Syntax {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Host bits are set (e.g. "198.19.0.1/24").
    #[error("CIDR {input:?} has host bits set (network is {network})")]
    HostBits {
        /// The text given.
        input: String,
        /// The network address it should have been.
        network: IpAddr,
    },
}

/// A network prefix with zero host bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Builds a CIDR from an address and prefix, masking host bits off.
    pub fn new_truncating(ip: IpAddr, prefix: u8) -> Option<Cidr> {
        let fam = Family::of(ip);
        if prefix > fam.bits() {
            return None;
        }
        let off = ip_to_u128(ip) & !host_mask(fam, prefix);
        Some(Cidr {
            network: u128_to_ip(fam, off),
            prefix,
        })
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(self.network)
    }

    /// Number of host bits (`bits - prefix`).
    pub fn host_bits(&self) -> u8 {
        self.family().bits() - self.prefix
    }

    /// Number of addresses, saturating at `u128::MAX` for ::/0.
    pub fn size(&self) -> u128 {
        1u128
            .checked_shl(u32::from(self.host_bits()))
            .unwrap_or(u128::MAX)
    }

    /// Number of addresses, exactly (2^128 for ::/0).
    pub fn count(&self) -> crate::Count {
        crate::Count::pow2(self.host_bits())
    }

    /// How many subnets of length `prefix` fit, exactly; None if `prefix`
    /// is shorter than ours or longer than the family allows.
    pub fn subnet_count_exact(&self, prefix: u8) -> Option<crate::Count> {
        (prefix >= self.prefix && prefix <= self.family().bits())
            .then(|| crate::Count::pow2(prefix - self.prefix))
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family()
            && ip_to_u128(ip) & !host_mask(self.family(), self.prefix) == ip_to_u128(self.network)
    }

    /// Whether `other` is entirely inside `self`.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// Offset of `ip` from the network address, if inside.
    pub fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        self.contains(ip)
            .then(|| ip_to_u128(ip) - ip_to_u128(self.network))
    }

    /// The address at `offset`, if inside.
    pub fn nth(&self, offset: u128) -> Option<IpAddr> {
        if offset >= self.size() && self.host_bits() < 128 {
            return None;
        }
        Some(u128_to_ip(
            self.family(),
            ip_to_u128(self.network).checked_add(offset)?,
        ))
    }

    /// How many subnets of length `prefix` fit, capped at 2^63 (a larger
    /// IPv6 pool is only ever carved from its first 2^63 blocks). None if
    /// `prefix` is shorter than ours or longer than the family allows.
    pub fn subnet_count(&self, prefix: u8) -> Option<u64> {
        if prefix < self.prefix || prefix > self.family().bits() {
            return None;
        }
        Some(1u64 << (prefix - self.prefix).min(63))
    }

    /// The `index`-th subnet of length `prefix`.
    pub fn subnet(&self, prefix: u8, index: u64) -> Option<Cidr> {
        let count = self.subnet_count(prefix)?;
        if index >= count {
            return None;
        }
        let step_bits = u32::from(self.family().bits() - prefix);
        let off = u128::from(index).checked_shl(step_bits).unwrap_or(0);
        let base = ip_to_u128(self.network).checked_add(off)?;
        Some(Cidr {
            network: u128_to_ip(self.family(), base),
            prefix,
        })
    }

    /// The subnet of length `prefix` that contains `ip`, and its index
    /// (saturating at u64::MAX in huge IPv6 pools).
    pub fn subnet_containing(&self, prefix: u8, ip: IpAddr) -> Option<(u64, Cidr)> {
        self.subnet_count(prefix)?;
        let off = self.offset_of(ip)?;
        let step_bits = u32::from(self.family().bits() - prefix);
        let index = u64::try_from(off.checked_shr(step_bits).unwrap_or(0)).unwrap_or(u64::MAX);
        Some((index, Cidr::new_truncating(ip, prefix)?))
    }
}

fn host_mask(fam: Family, prefix: u8) -> u128 {
    let host = u32::from(fam.bits() - prefix.min(fam.bits()));
    if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    }
}

/// An address as an unsigned integer (IPv4 in the low 32 bits).
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn u128_to_ip(fam: Family, v: u128) -> IpAddr {
    match fam {
        // Truncation is intended: v4 offsets stay below 2^32 by construction.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 64 || !s.contains('/') {
            return Err(CidrError::Syntax {
                input: s.chars().take(64).collect(),
                reason: "expected address/prefix".into(),
            });
        }
        let net = IpNetwork::from_str(s).map_err(|e| CidrError::Syntax {
            input: s.to_string(),
            reason: e.to_string(),
        })?;
        let cidr =
            Cidr::new_truncating(net.ip(), net.prefix()).ok_or_else(|| CidrError::Syntax {
                input: s.to_string(),
                reason: "prefix too long".into(),
            })?;
        if cidr.network != net.ip() {
            return Err(CidrError::HostBits {
                input: s.to_string(),
                network: cidr.network,
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(c("198.19.0.0/16").to_string(), "198.19.0.0/16");
        assert_eq!(c("2001:db8::/32").to_string(), "2001:db8::/32");
        assert!(matches!(
            "198.19.0.1/16".parse::<Cidr>(),
            Err(CidrError::HostBits { .. })
        ));
        assert!("198.19.0.0".parse::<Cidr>().is_err());
        assert!("198.19.0.0/33".parse::<Cidr>().is_err());
        assert!("x/1".parse::<Cidr>().is_err());
    }

    #[test]
    fn subnets_v4_and_v6() {
        let p = c("198.19.0.0/16");
        assert_eq!(p.subnet_count(26), Some(1024));
        assert_eq!(p.subnet(26, 1), Some(c("198.19.0.64/26")));
        assert_eq!(p.subnet(26, 1023), Some(c("198.19.255.192/26")));
        assert_eq!(p.subnet(26, 1024), None);
        let ip: IpAddr = "198.19.1.5".parse().unwrap();
        assert_eq!(p.subnet_containing(26, ip), Some((4, c("198.19.1.0/26"))));
        let p6 = c("2001:db8::/112");
        assert_eq!(p6.subnet_count(122), Some(1024));
        assert_eq!(p6.subnet(122, 2), Some(c("2001:db8::80/122")));
        assert_eq!(c("::/0").subnet_count(122), Some(1 << 63));
        let big = c("2001:db8::/48");
        assert_eq!(big.subnet_count(122), Some(1 << 63));
        assert_eq!(big.subnet(122, 1), Some(c("2001:db8::40/122")));
        assert_eq!(c("198.19.0.0/16").subnet_count(8), None);
        let far: IpAddr = "2001:db8:0:ffff::1".parse().unwrap();
        assert_eq!(
            big.subnet_containing(122, far).map(|x| x.1),
            Some(c("2001:db8:0:ffff::/122"))
        );
    }

    #[test]
    fn nth_and_offset() {
        let b = c("198.19.0.64/26");
        assert_eq!(b.size(), 64);
        assert_eq!(b.nth(5), Some("198.19.0.69".parse().unwrap()));
        assert_eq!(b.nth(64), None);
        assert_eq!(b.offset_of("198.19.0.127".parse().unwrap()), Some(63));
        assert_eq!(b.offset_of("198.19.0.128".parse().unwrap()), None);
        assert_eq!(b.offset_of("2001:db8::1".parse().unwrap()), None);
        let b6 = c("2001:db8::40/122");
        assert_eq!(b6.nth(63), Some("2001:db8::7f".parse().unwrap()));
        assert!(c("198.19.0.0/16").contains_cidr(&b));
        assert!(!b.contains_cidr(&c("198.19.0.0/16")));
    }
}
