//! CNI specification versions this plugin speaks.

use std::fmt;

/// A CNI spec version Margay can consume and produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: rich result type, plugin chaining.
    V030,
    /// 0.3.1: typo fixes only.
    V031,
    /// 0.4.0: CHECK, prevResult on DEL.
    V040,
    /// 1.0.0: no `version` in `ips`, conflists only.
    V100,
    /// 1.1.0: STATUS, GC, interface `mtu`/`socketPath`/`pciID`, route attributes.
    V110,
}

/// Every version reported by `VERSION`, oldest first.
pub const SUPPORTED: [CniVersion; 5] = [
    CniVersion::V030,
    CniVersion::V031,
    CniVersion::V040,
    CniVersion::V100,
    CniVersion::V110,
];

impl CniVersion {
    /// The newest version, used when the caller's version is unknown.
    pub const LATEST: CniVersion = CniVersion::V110;

    /// Parses an exact version string ("0.3.1"). Anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V030 => "0.3.0",
            CniVersion::V031 => "0.3.1",
            CniVersion::V040 => "0.4.0",
            CniVersion::V100 => "1.0.0",
            CniVersion::V110 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` in each `ips` entry.
    pub fn ips_have_version(self) -> bool {
        self < CniVersion::V100
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V040
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_gc_and_status(self) -> bool {
        self >= CniVersion::V110
    }

    /// 1.1.0 added `mtu`, `socketPath`, `pciID` to interfaces and
    /// `mtu`/`advmss`/`priority`/`table`/`scope` to routes.
    pub fn has_extended_result(self) -> bool {
        self >= CniVersion::V110
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True when `s` looks like a semantic version ("1.2.3"), so it can be
/// echoed back in an error without reflecting arbitrary input.
pub fn looks_like_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    s.len() <= 16
        && parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_order() {
        for v in SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
        }
        assert!(SUPPORTED.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(CniVersion::parse("0.2.0"), None);
        assert_eq!(CniVersion::parse("1.0"), None);
        assert_eq!(CniVersion::parse(""), None);
    }

    #[test]
    fn feature_gates() {
        assert!(CniVersion::V031.ips_have_version());
        assert!(CniVersion::V040.ips_have_version());
        assert!(!CniVersion::V100.ips_have_version());
        assert!(!CniVersion::V031.has_check());
        assert!(CniVersion::V040.has_check());
        assert!(!CniVersion::V100.has_gc_and_status());
        assert!(CniVersion::V110.has_gc_and_status());
    }

    #[test]
    fn version_shape() {
        assert!(looks_like_version("0.2.0"));
        assert!(looks_like_version("9.9.9"));
        assert!(!looks_like_version("1.0"));
        assert!(!looks_like_version("1.0.0-rc1"));
        assert!(!looks_like_version(&"1.".repeat(20)));
    }
}
