//! Denied-flow logging: optional, rate-limited nft `log group N` rules just
//! before each counted `drop` of Margay's tables, whose log prefix is the
//! drop rule's [`RuleOrigin`] comment. The agent reads the group over
//! NFLOG (nfnetlink_log) and writes one JSON line per packet.
//!
//! The limit and the log share a rule of their own, placed before the drop
//! with the same matches (a `limit` is a match: over the rate the rule does
//! not match, so it must not carry the verdict, or packets over the rate
//! would fall through past the drop).

use serde_json::{Value, json};

use crate::origin::RuleOrigin;

/// Logging of denied packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyLog {
    /// NFLOG group the agent listens on.
    pub group: u16,
    /// Log at most this many packets per second per drop rule ...
    pub rate_per_second: u32,
    /// ... with bursts of this many.
    pub burst: u32,
}

impl Default for DenyLog {
    fn default() -> Self {
        DenyLog {
            group: 7,
            rate_per_second: 10,
            burst: 20,
        }
    }
}

impl DenyLog {
    /// The statements (JSON) of the log rule of a drop whose origin is `o`.
    pub fn statements(&self, o: &RuleOrigin) -> Vec<Value> {
        vec![
            json!({"limit": {"rate": self.rate_per_second, "per": "second", "burst": self.burst}}),
            json!({"log": {"prefix": o.comment(), "group": self.group}}),
        ]
    }
}
