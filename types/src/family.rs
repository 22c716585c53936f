//! The address family.

use std::borrow::Borrow;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// IPv4 or IPv6. Serialized as `"IPv4"` / `"IPv6"` (the IPAM objects' and
/// the agent's status spelling); a format that spells it otherwise (the CNI
/// config's `"ipv4"`) keeps its own serde adapter next to its config type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    #[serde(rename = "IPv4")]
    V4,
    /// IPv6.
    #[serde(rename = "IPv6")]
    V6,
}

impl Family {
    /// Both, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address (by value or by reference).
    pub fn of(ip: impl Borrow<IpAddr>) -> Family {
        match ip.borrow() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Address length in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Index into per-family arrays (`[v4, v6]`).
    pub fn idx(self) -> usize {
        self as usize
    }

    /// Whether this is IPv6.
    pub fn is_v6(self) -> bool {
        self == Family::V6
    }

    /// One-character suffix of per-family names (`4` / `6`).
    pub fn tag(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }

    /// nftables' payload protocol of an address match (`ip` / `ip6`).
    pub fn nft_proto(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_display_spell_ipv4_ipv6() {
        for (f, s) in [(Family::V4, "IPv4"), (Family::V6, "IPv6")] {
            assert_eq!(serde_json::to_value(f).unwrap(), s);
            assert_eq!(serde_json::from_value::<Family>(s.into()).unwrap(), f);
            assert_eq!(f.to_string(), s);
        }
        assert!(serde_json::from_value::<Family>("ipv4".into()).is_err());
    }

    #[test]
    fn of_takes_values_and_references() {
        let v4: IpAddr = "198.19.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(Family::of(v4), Family::V4);
        let by_ref: &IpAddr = &v6;
        assert_eq!(Family::of(by_ref), Family::V6);
        assert_eq!(Family::BOTH.map(Family::idx), [0, 1]);
        assert_eq!(Family::BOTH.map(Family::tag), ['4', '6']);
        assert_eq!(Family::BOTH.map(Family::bits), [32, 128]);
    }
}
