//! Route filters: an ordered list of rules, the first that matches decides
//! (Calico's `BGPFilter` semantics); when none matches the caller's default
//! applies.
//!
//! A rule matches a prefix by family, by CIDR with an operator (`Equal`,
//! `NotEqual`, `In` — the CIDR itself or a more specific prefix —, `NotIn`),
//! by a prefix-length range (part of the `In`/`NotIn` test when a CIDR is
//! given), and optionally only routes learned from peers (not originated
//! here). A rule with no criteria matches every prefix of its family.

use crate::wire::{Family, Prefix};

/// How a rule's CIDR is compared with a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// The prefix is the CIDR.
    Equal,
    /// The prefix is not the CIDR.
    NotEqual,
    /// The prefix is the CIDR or inside it (within the length range).
    In,
    /// Not `In`.
    NotIn,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterAction {
    /// Let the route through.
    Accept,
    /// Drop it (on import: as if withdrawn; on export: not sent, or
    /// withdrawn if it was).
    Reject,
}

/// One rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Only prefixes of this family (`None`: both).
    pub family: Option<Family>,
    /// CIDR and operator.
    pub cidr: Option<(Prefix, MatchOp)>,
    /// Inclusive prefix-length range.
    pub len: Option<(u8, u8)>,
    /// Only routes learned from peers (Calico's `source: RemotePeers`).
    pub remote_only: bool,
    /// The action when it matches.
    pub action: FilterAction,
}

impl Rule {
    /// A rule that matches everything of `family` (or both).
    pub fn all(family: Option<Family>, action: FilterAction) -> Rule {
        Rule {
            family,
            cidr: None,
            len: None,
            remote_only: false,
            action,
        }
    }

    /// Does the rule match `p`, originated here (`local`) or learned?
    pub fn matches(&self, p: &Prefix, local: bool) -> bool {
        if self.family.is_some_and(|f| f != p.family()) {
            return false;
        }
        if self.remote_only && local {
            return false;
        }
        let in_range = |p: &Prefix| self.len.is_none_or(|(lo, hi)| (lo..=hi).contains(&p.len()));
        match self.cidr {
            None => in_range(p),
            Some((c, op)) => {
                let inside = c.family() == p.family() && c.covers(p) && in_range(p);
                match op {
                    MatchOp::Equal => c == *p,
                    MatchOp::NotEqual => c != *p,
                    MatchOp::In => inside,
                    MatchOp::NotIn => !inside,
                }
            }
        }
    }
}

/// The action of the first rule that matches, if any.
pub fn evaluate(rules: &[Rule], p: &Prefix, local: bool) -> Option<FilterAction> {
    rules.iter().find(|r| r.matches(p, local)).map(|r| r.action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    fn rule(cidr: &str, op: MatchOp, len: Option<(u8, u8)>, action: FilterAction) -> Rule {
        Rule {
            family: None,
            cidr: Some((p(cidr), op)),
            len,
            remote_only: false,
            action,
        }
    }

    #[test]
    fn operators_and_length_ranges() {
        use FilterAction::*;
        use MatchOp::*;
        let r = rule("198.19.0.0/16", In, None, Accept);
        assert!(r.matches(&p("198.19.0.0/16"), false));
        assert!(r.matches(&p("198.19.4.0/26"), false));
        assert!(!r.matches(&p("198.18.0.0/24"), false));
        assert!(!r.matches(&p("198.0.0.0/8"), false), "less specific");
        assert!(!r.matches(&p("2001:db8::/32"), false), "other family");
        let r = rule("198.19.0.0/16", In, Some((24, 26)), Accept);
        assert!(r.matches(&p("198.19.4.0/26"), false));
        assert!(!r.matches(&p("198.19.4.7/32"), false));
        let r = rule("198.19.0.0/16", NotIn, Some((24, 26)), Reject);
        assert!(r.matches(&p("198.19.4.7/32"), false));
        assert!(r.matches(&p("2001:db8::/64"), false));
        assert!(!r.matches(&p("198.19.4.0/24"), false));
        let r = rule("198.19.4.0/24", Equal, None, Reject);
        assert!(r.matches(&p("198.19.4.0/24"), false) && !r.matches(&p("198.19.4.0/25"), false));
        let r = rule("198.19.4.0/24", NotEqual, None, Reject);
        assert!(!r.matches(&p("198.19.4.0/24"), false) && r.matches(&p("198.19.4.0/25"), false));
    }

    #[test]
    fn first_match_decides_and_remote_only_skips_our_routes() {
        use FilterAction::*;
        let rules = [
            Rule {
                remote_only: true,
                ..rule("198.19.0.0/16", MatchOp::In, None, Reject)
            },
            rule("198.19.0.0/16", MatchOp::In, None, Accept),
            Rule::all(Some(Family::Ipv6Unicast), Reject),
        ];
        assert_eq!(evaluate(&rules, &p("198.19.1.0/24"), false), Some(Reject));
        assert_eq!(evaluate(&rules, &p("198.19.1.0/24"), true), Some(Accept));
        assert_eq!(evaluate(&rules, &p("2001:db8::/64"), true), Some(Reject));
        assert_eq!(evaluate(&rules, &p("198.18.0.0/24"), false), None);
    }
}
