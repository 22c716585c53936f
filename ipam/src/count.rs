//! Exact counts of addresses and blocks. An IPv6 pool holds up to 2^128
//! addresses and 2^126 blocks, more than `u64` (and, for `::/0`, `u128`)
//! can say; what operators are shown must not saturate.

use std::fmt;

use serde::{Serialize, Serializer};

/// A count from 0 to 2^128 inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Count {
    /// Set only for exactly 2^128 (then `lo` is 0).
    full: bool,
    lo: u128,
}

/// 2^128 in decimal.
const TWO_TO_128: &str = "340282366920938463463374607431768211456";

impl Count {
    /// 2^`bits`, for `bits` up to 128.
    pub fn pow2(bits: u8) -> Count {
        match 1u128.checked_shl(u32::from(bits)) {
            Some(lo) if bits < 128 => Count { full: false, lo },
            _ => Count { full: true, lo: 0 },
        }
    }

    /// The count as a float (for percentages).
    pub fn as_f64(self) -> f64 {
        if self.full {
            2f64.powi(128)
        } else {
            self.lo as f64
        }
    }

    /// The count if it fits in a `u64`.
    pub fn to_u64(self) -> Option<u64> {
        if self.full {
            None
        } else {
            u64::try_from(self.lo).ok()
        }
    }

    /// `part` as a percentage of this count (0 when this is 0).
    pub fn percent(self, part: u128) -> f64 {
        if self == Count::default() {
            0.0
        } else {
            part as f64 * 100.0 / self.as_f64()
        }
    }
}

impl From<u128> for Count {
    fn from(lo: u128) -> Self {
        Count { full: false, lo }
    }
}

impl From<u64> for Count {
    fn from(v: u64) -> Self {
        Count::from(u128::from(v))
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.full {
            f.pad(TWO_TO_128)
        } else {
            f.pad(&self.lo.to_string())
        }
    }
}

/// A decimal string: JSON numbers above 2^53 lose precision in most readers.
impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_up_to_two_to_the_128() {
        assert_eq!(Count::pow2(0).to_string(), "1");
        assert_eq!(Count::pow2(6).to_string(), "64");
        assert_eq!(Count::pow2(64).to_string(), "18446744073709551616");
        // An IPv6 /48 pool: 2^80 addresses, 2^74 blocks of /122.
        assert_eq!(Count::pow2(80).to_string(), "1208925819614629174706176");
        assert_eq!(Count::pow2(74).to_string(), "18889465931478580854784");
        assert_eq!(Count::pow2(127).to_string(), (1u128 << 127).to_string());
        assert_eq!(Count::pow2(128).to_string(), TWO_TO_128);
        assert!(Count::pow2(128) > Count::pow2(127));
        assert_eq!(Count::pow2(64).to_u64(), None);
        assert_eq!(Count::pow2(63).to_u64(), Some(1 << 63));
        assert_eq!(
            serde_json::to_string(&Count::pow2(80)).unwrap(),
            "\"1208925819614629174706176\""
        );
        assert_eq!(Count::pow2(8).percent(64), 25.0);
        assert_eq!(Count::default().percent(0), 0.0);
        assert_eq!(format!("{:>4}", Count::from(7u64)), "   7");
    }
}
