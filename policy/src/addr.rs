//! Address families and inclusive address ranges (one code path for v4/v6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// IPv4 or IPv6 (the workspace's one type).
pub use margay_types::Family;

/// The largest address value of a family.
fn max_value(f: Family) -> u128 {
    match f {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

/// The address of `f` whose value is `v`.
pub fn addr_of(f: Family, v: u128) -> IpAddr {
    match f {
        // Values of a V4 range never exceed u32::MAX (see `AddrRange`).
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

pub fn ip_to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub family: Family,
    pub lo: u128,
    pub hi: u128,
}

impl AddrRange {
    /// The addresses of a CIDR (host bits ignored, like Go's `ParseCIDR`).
    pub fn of_net(net: &IpNetwork) -> AddrRange {
        let family = Family::of(net.ip());
        let bits = u32::from(family.bits());
        let host_bits = bits - u32::from(net.prefix()).min(bits);
        let mask = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let v = ip_to_u128(&net.ip());
        AddrRange {
            family,
            lo: v & !mask & max_value(family),
            hi: (v | mask) & max_value(family),
        }
    }

    pub fn single(ip: &IpAddr) -> AddrRange {
        let v = ip_to_u128(ip);
        AddrRange {
            family: Family::of(ip),
            lo: v,
            hi: v,
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family && (self.lo..=self.hi).contains(&ip_to_u128(ip))
    }

    pub fn covers(&self, other: &AddrRange) -> bool {
        self.family == other.family && self.lo <= other.lo && other.hi <= self.hi
    }

    pub fn lo_ip(&self) -> IpAddr {
        addr_of(self.family, self.lo)
    }

    pub fn hi_ip(&self) -> IpAddr {
        addr_of(self.family, self.hi)
    }
}

/// `from` minus every range in `minus` (result sorted, disjoint).
pub fn subtract(from: AddrRange, minus: &[AddrRange]) -> Vec<AddrRange> {
    let mut out = vec![from];
    for m in minus.iter().filter(|m| m.family == from.family) {
        let mut next = Vec::with_capacity(out.len() + 1);
        for r in out {
            if m.hi < r.lo || m.lo > r.hi {
                next.push(r);
                continue;
            }
            if m.lo > r.lo {
                next.push(AddrRange { hi: m.lo - 1, ..r });
            }
            if m.hi < r.hi {
                next.push(AddrRange { lo: m.hi + 1, ..r });
            }
        }
        out = next;
    }
    out
}

/// Sorts and merges overlapping or adjacent ranges.
pub fn union(mut ranges: Vec<AddrRange>) -> Vec<AddrRange> {
    ranges.sort();
    let mut out: Vec<AddrRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = out.last_mut()
            && last.family == r.family
            && r.lo <= last.hi.saturating_add(1)
        {
            last.hi = last.hi.max(r.hi);
            continue;
        }
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> AddrRange {
        AddrRange::of_net(&s.parse().unwrap())
    }

    #[test]
    fn cidr_ranges_ignore_host_bits() {
        let r = net("198.19.1.77/24");
        assert_eq!(r.lo_ip().to_string(), "198.19.1.0");
        assert_eq!(r.hi_ip().to_string(), "198.19.1.255");
        let all = net("0.0.0.0/0");
        assert_eq!(all.hi_ip().to_string(), "255.255.255.255");
        let v6 = net("2001:db8::/32");
        assert_eq!(
            v6.hi_ip().to_string(),
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(net("::/0").hi, u128::MAX);
        assert_eq!(net("198.19.0.5/32").lo, net("198.19.0.5/32").hi);
    }

    #[test]
    fn subtract_splits_and_ignores_other_family() {
        let parts = subtract(
            net("198.19.0.0/24"),
            &[
                net("198.19.0.16/28"),
                net("2001:db8::/64"),
                net("198.19.0.0/32"),
            ],
        );
        let s: Vec<String> = parts
            .iter()
            .map(|r| format!("{}-{}", r.lo_ip(), r.hi_ip()))
            .collect();
        assert_eq!(
            s,
            vec!["198.19.0.1-198.19.0.15", "198.19.0.32-198.19.0.255"]
        );
        assert!(subtract(net("198.19.0.0/24"), &[net("198.19.0.0/16")]).is_empty());
    }

    #[test]
    fn union_merges_adjacent_and_overlapping() {
        let u = union(vec![
            net("198.19.0.128/25"),
            net("198.19.0.0/25"),
            net("198.19.0.5/32"),
            net("2001:db8::/127"),
        ]);
        assert_eq!(u.len(), 2);
        assert_eq!(u[0], net("198.19.0.0/24"));
    }
}
