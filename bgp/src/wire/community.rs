//! Communities: standard (RFC 1997), extended (RFC 4360, with the
//! four-octet-AS form of RFC 5668) and large (RFC 8092) — their values, the
//! well-known ones, and the text forms configuration uses:
//!
//! | text | community |
//! |---|---|
//! | `65000:100` | standard (two 16-bit halves) |
//! | `no-export`, `no-advertise`, `no-export-subconfed`, `no-peer`, `blackhole`, `graceful-shutdown` | well-known standard |
//! | `65000:1:2` | large (three 32-bit parts) |
//! | `rt:65000:100`, `ro:65000:100` (`soo:` = `ro:`) | extended Route Target / Route Origin; the administrator is an IPv4 address, a 2-octet AS or (above 65535) a 4-octet AS |
//! | `ext:0x0002fde800000064` | any extended community, 8 octets in hex |

use std::fmt;
use std::net::Ipv4Addr;

use super::attrs::{LargeCommunity, PathAttrs};

/// RFC 1997 NO_EXPORT: not beyond this AS (confederation).
pub const NO_EXPORT: u32 = 0xFFFF_FF01;
/// RFC 1997 NO_ADVERTISE: to no peer at all.
pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
/// RFC 1997 NO_EXPORT_SUBCONFED: not beyond this AS (member AS).
pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;
/// RFC 3765 NOPEER.
pub const NO_PEER: u32 = 0xFFFF_FF04;
/// RFC 7999 BLACKHOLE.
pub const BLACKHOLE: u32 = 0xFFFF_029A;
/// RFC 8326 GRACEFUL_SHUTDOWN.
pub const GRACEFUL_SHUTDOWN: u32 = 0xFFFF_0000;

const WELL_KNOWN: &[(&str, u32)] = &[
    ("no-export", NO_EXPORT),
    ("no-advertise", NO_ADVERTISE),
    ("no-export-subconfed", NO_EXPORT_SUBCONFED),
    ("no-peer", NO_PEER),
    ("blackhole", BLACKHOLE),
    ("graceful-shutdown", GRACEFUL_SHUTDOWN),
];

/// One extended community (RFC 4360): 8 octets, the first the type (bit
/// 0x40 set: non-transitive across ASes), the second usually a sub-type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtCommunity(pub [u8; 8]);

/// Extended community sub-types of the AS / IPv4 specific types.
pub mod ext_sub {
    /// Route Target.
    pub const ROUTE_TARGET: u8 = 0x02;
    /// Route Origin (Site of Origin).
    pub const ROUTE_ORIGIN: u8 = 0x03;
}

impl ExtCommunity {
    /// Type octet.
    pub fn kind(self) -> u8 {
        self.0[0]
    }

    /// Sub-type octet.
    pub fn sub(self) -> u8 {
        self.0[1]
    }

    /// RFC 4360 §2: the Transitive bit (0x40) clear means transitive.
    pub fn is_transitive(self) -> bool {
        self.0[0] & 0x40 == 0
    }

    /// A Route Target / Route Origin with an administrator that is an IPv4
    /// address, a 2-octet AS (local part up to 32 bits) or a 4-octet AS
    /// (local part up to 16 bits). `None` if the local part does not fit.
    pub fn as_specific(sub: u8, admin: Admin, local: u32) -> Option<ExtCommunity> {
        let mut b = [0u8; 8];
        b[1] = sub;
        match admin {
            Admin::Ipv4(a) => {
                b[0] = 0x01;
                b[2..6].copy_from_slice(&a.octets());
                b[6..8].copy_from_slice(&u16::try_from(local).ok()?.to_be_bytes());
            }
            Admin::Asn(asn) => match u16::try_from(asn) {
                Ok(a16) => {
                    b[0] = 0x00;
                    b[2..4].copy_from_slice(&a16.to_be_bytes());
                    b[4..8].copy_from_slice(&local.to_be_bytes());
                }
                Err(_) => {
                    b[0] = 0x02;
                    b[2..6].copy_from_slice(&asn.to_be_bytes());
                    b[6..8].copy_from_slice(&u16::try_from(local).ok()?.to_be_bytes());
                }
            },
        }
        Some(ExtCommunity(b))
    }
}

/// The administrator of an AS / IPv4 specific extended community.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    /// An IPv4 address (type 0x01).
    Ipv4(Ipv4Addr),
    /// An AS number (type 0x00 when it fits 16 bits, else 0x02).
    Asn(u32),
}

impl fmt::Display for ExtCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let name = match b[1] {
            ext_sub::ROUTE_TARGET => "rt",
            ext_sub::ROUTE_ORIGIN => "ro",
            _ => "",
        };
        let u16at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        match (b[0], name.is_empty()) {
            (0x00, false) => write!(f, "{name}:{}:{}", u16at(2), u32at(4)),
            (0x01, false) => write!(
                f,
                "{name}:{}:{}",
                Ipv4Addr::new(b[2], b[3], b[4], b[5]),
                u16at(6)
            ),
            (0x02, false) => write!(f, "{name}:{}:{}", u32at(2), u16at(6)),
            _ => write!(f, "ext:0x{}", hex8(&b)),
        }
    }
}

fn hex8(b: &[u8; 8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Any community, as configuration names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Community {
    /// RFC 1997.
    Standard(u32),
    /// RFC 8092.
    Large(LargeCommunity),
    /// RFC 4360.
    Extended(ExtCommunity),
}

/// A community text that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("community {value:?}: {reason}")]
pub struct CommunityError {
    /// The text.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::str::FromStr for Community {
    type Err = CommunityError;

    fn from_str(s: &str) -> Result<Community, CommunityError> {
        let t = s.trim();
        let err = |reason| CommunityError {
            value: s.to_string(),
            reason,
        };
        let lower = t.to_ascii_lowercase().replace('_', "-");
        if let Some((_, v)) = WELL_KNOWN.iter().find(|(n, _)| *n == lower) {
            return Ok(Community::Standard(*v));
        }
        if let Some(hex) = lower.strip_prefix("ext:") {
            let hex = hex.strip_prefix("0x").unwrap_or(hex);
            if hex.len() != 16 {
                return Err(err("ext: wants 8 octets as 16 hex digits"));
            }
            let mut b = [0u8; 8];
            for (i, out) in b.iter_mut().enumerate() {
                *out = hex
                    .get(2 * i..2 * i + 2)
                    .and_then(|d| u8::from_str_radix(d, 16).ok())
                    .ok_or_else(|| err("ext: wants hex digits"))?;
            }
            return Ok(Community::Extended(ExtCommunity(b)));
        }
        let (sub, rest) = match lower.split_once(':') {
            Some(("rt", r)) => (Some(ext_sub::ROUTE_TARGET), r),
            Some(("ro" | "soo", r)) => (Some(ext_sub::ROUTE_ORIGIN), r),
            _ => (None, t),
        };
        if let Some(sub) = sub {
            let (admin, local) = rest
                .rsplit_once(':')
                .ok_or_else(|| err("wants rt:ADMIN:VALUE"))?;
            let local: u32 = local
                .parse()
                .map_err(|_| err("the value is not a number"))?;
            let admin =
                match admin.parse::<Ipv4Addr>() {
                    Ok(a) => Admin::Ipv4(a),
                    Err(_) => Admin::Asn(admin.parse().map_err(|_| {
                        err("the administrator is neither an AS nor an IPv4 address")
                    })?),
                };
            return ExtCommunity::as_specific(sub, admin, local)
                .map(Community::Extended)
                .ok_or_else(|| {
                    err("the value does not fit 16 bits beside an IPv4 address or 4-octet AS")
                });
        }
        let parts: Vec<&str> = t.split(':').collect();
        match parts.as_slice() {
            [a, v] => {
                let a: u16 = a
                    .parse()
                    .map_err(|_| err("ASN:VALUE wants two 16-bit numbers"))?;
                let v: u16 = v
                    .parse()
                    .map_err(|_| err("ASN:VALUE wants two 16-bit numbers"))?;
                Ok(Community::Standard((u32::from(a) << 16) | u32::from(v)))
            }
            [g, l1, l2] => {
                let n = |x: &str| {
                    x.parse::<u32>()
                        .map_err(|_| err("a large community is three 32-bit numbers"))
                };
                Ok(Community::Large(LargeCommunity {
                    global: n(g)?,
                    local1: n(l1)?,
                    local2: n(l2)?,
                }))
            }
            _ => Err(err(
                "not ASN:VALUE, ASN:LOCAL1:LOCAL2, rt:/ro:ADMIN:VALUE, ext:HEX or a well-known name",
            )),
        }
    }
}

/// A standard community as text: a well-known name, else `ASN:VALUE`.
pub fn standard_to_string(c: u32) -> String {
    match WELL_KNOWN.iter().find(|(_, v)| *v == c) {
        Some((n, _)) => (*n).to_string(),
        None => format!("{}:{}", c >> 16, c & 0xffff),
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard(c) => f.write_str(&standard_to_string(*c)),
            Community::Large(l) => write!(f, "{}:{}:{}", l.global, l.local1, l.local2),
            Community::Extended(e) => write!(f, "{e}"),
        }
    }
}

/// Communities of all three kinds, as attached to a route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CommunitySet {
    /// RFC 1997.
    pub standard: Vec<u32>,
    /// RFC 8092.
    pub large: Vec<LargeCommunity>,
    /// RFC 4360.
    pub extended: Vec<ExtCommunity>,
}

impl CommunitySet {
    /// No community at all?
    pub fn is_empty(&self) -> bool {
        self.standard.is_empty() && self.large.is_empty() && self.extended.is_empty()
    }

    /// Add one (no duplicates).
    pub fn insert(&mut self, c: Community) {
        fn push<T: PartialEq>(v: &mut Vec<T>, x: T) {
            if !v.contains(&x) {
                v.push(x);
            }
        }
        match c {
            Community::Standard(x) => push(&mut self.standard, x),
            Community::Large(x) => push(&mut self.large, x),
            Community::Extended(x) => push(&mut self.extended, x),
        }
    }

    /// Add every community of `self` missing from `a`.
    pub fn add_to(&self, a: &mut PathAttrs) {
        for c in self.iter() {
            match c {
                Community::Standard(x) if !a.communities.contains(&x) => a.communities.push(x),
                Community::Large(x) if !a.large_communities.contains(&x) => {
                    a.large_communities.push(x)
                }
                Community::Extended(x) if !a.ext_communities.contains(&x) => {
                    a.ext_communities.push(x)
                }
                _ => {}
            }
        }
    }

    /// The communities a route carries.
    pub fn of(a: &PathAttrs) -> CommunitySet {
        CommunitySet {
            standard: a.communities.clone(),
            large: a.large_communities.clone(),
            extended: a.ext_communities.clone(),
        }
    }

    /// Every community, standard first.
    pub fn iter(&self) -> impl Iterator<Item = Community> + '_ {
        self.standard
            .iter()
            .map(|c| Community::Standard(*c))
            .chain(self.large.iter().map(|c| Community::Large(*c)))
            .chain(self.extended.iter().map(|c| Community::Extended(*c)))
    }
}

impl FromIterator<Community> for CommunitySet {
    fn from_iter<I: IntoIterator<Item = Community>>(iter: I) -> Self {
        let mut s = CommunitySet::default();
        for c in iter {
            s.insert(c);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Community {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn text_forms_parse_and_print_back() {
        for s in [
            "65000:100",
            "0:0",
            "65535:65535",
            "65000:1:2",
            "4200000000:4294967295:0",
            "rt:65000:100",
            "rt:65000:4294967295",
            "ro:4200000000:7",
            "rt:198.18.0.1:9",
            "no-export",
            "no-advertise",
            "blackhole",
            "ext:0x4300000000000001",
        ] {
            assert_eq!(c(s).to_string(), s, "{s}");
        }
        assert_eq!(c("65535:65281"), Community::Standard(NO_EXPORT));
        assert_eq!(c("NO_EXPORT"), Community::Standard(NO_EXPORT));
        assert_eq!(c("soo:65000:1").to_string(), "ro:65000:1");
    }

    #[test]
    fn wire_forms_of_extended_communities() {
        // RFC 4360 §4: two-octet AS specific Route Target.
        assert_eq!(
            c("rt:65000:100"),
            Community::Extended(ExtCommunity([0x00, 0x02, 0xfd, 0xe8, 0, 0, 0, 100]))
        );
        // RFC 5668: four-octet AS specific.
        assert_eq!(
            c("rt:4200000000:7"),
            Community::Extended(ExtCommunity([0x02, 0x02, 0xfa, 0x56, 0xea, 0x00, 0, 7]))
        );
        // IPv4 address specific.
        assert_eq!(
            c("ro:198.18.0.1:9"),
            Community::Extended(ExtCommunity([0x01, 0x03, 198, 18, 0, 1, 0, 9]))
        );
        assert!(!ExtCommunity([0x43, 0, 0, 0, 0, 0, 0, 0]).is_transitive());
        assert!(ExtCommunity([0x00, 2, 0, 0, 0, 0, 0, 0]).is_transitive());
    }

    #[test]
    fn bad_text_is_refused_with_a_reason() {
        for s in [
            "65536:1",
            "1:2:3:4",
            "x:1",
            "rt:65000",
            "rt:4200000000:70000",
            "rt:198.18.0.1:70000",
            "ext:0x12",
            "",
        ] {
            assert!(s.parse::<Community>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn a_set_adds_only_what_is_missing() {
        let set: CommunitySet = ["65000:1", "65000:1:2", "rt:65000:3", "65000:1"]
            .iter()
            .map(|s| c(s))
            .collect();
        assert_eq!(set.standard.len(), 1);
        let mut a = PathAttrs {
            communities: vec![(65000 << 16) | 1],
            ..PathAttrs::default()
        };
        set.add_to(&mut a);
        assert_eq!(CommunitySet::of(&a), set);
    }
}
