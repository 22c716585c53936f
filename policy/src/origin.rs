//! Where a rendered nftables rule comes from: which policy, which of its
//! rules, which direction, which action. Every counted rule of Margay's
//! tables carries its origin as the rule's `comment`, so the kernel's own
//! listing says what each counter means (see [`crate::counters`]) without
//! the agent's memory, and a denied-flow log line names the rule (the log
//! prefix is the same text).
//!
//! The set of origins is bounded by the policies and their rules (plus a few
//! fixed lines), never by pods or addresses: that bounds the cardinality of
//! the per-rule metrics.
//!
//! Comment text: `<tier> <policy> <direction> <rule> <action>`, e.g.
//! `np shop/allow-web ingress 0 allow`, `anp deny-y ingress 2 deny`,
//! `fixed default egress - deny`. Kubernetes names contain no spaces. nft
//! keeps at most [`MAX_COMMENT`] bytes: a longer policy name is cut and ends
//! in `~` + 8 hex digits of its SHA-1, so it stays unique.

use std::fmt;

use crate::compile::Direction;
use crate::ruleset::digest;

/// nftables' limit for a rule comment and a log prefix (bytes, without NUL).
pub const MAX_COMMENT: usize = 127;

/// Which kind of object a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// A Kubernetes NetworkPolicy (`policy` = `namespace/name`).
    NetworkPolicy,
    /// An AdminNetworkPolicy.
    Admin,
    /// The BaselineAdminNetworkPolicy.
    Baseline,
    /// A Margay HostNetworkPolicy (see [`crate::host`]).
    Host,
    /// A line Margay adds itself (`policy` names which, see [`fixed`]).
    Fixed,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::NetworkPolicy => "np",
            Tier::Admin => "anp",
            Tier::Baseline => "banp",
            Tier::Host => "host",
            Tier::Fixed => "fixed",
        }
    }

    fn parse(s: &str) -> Option<Tier> {
        Some(match s {
            "np" => Tier::NetworkPolicy,
            "anp" => Tier::Admin,
            "banp" => Tier::Baseline,
            "host" => Tier::Host,
            "fixed" => Tier::Fixed,
            _ => return None,
        })
    }
}

/// The `policy` of [`Tier::Fixed`] lines.
pub mod fixed {
    /// The node's own addresses are always allowed.
    pub const NODE: &str = "node";
    /// The end of a chain: isolation's default deny, or the fall-through of
    /// a tier chain (action `pass`: on to the next tier; `allow`: nothing
    /// else applies).
    pub const DEFAULT: &str = "default";
    /// The `deny` chain of endpoints whose pod is unknown or finished.
    pub const DENY_ENDPOINT: &str = "deny-endpoint";
    /// Host protection: a failsafe port.
    pub const FAILSAFE: &str = "failsafe";
    /// A line shared by the pod-selector rules of several policies with
    /// equal ports (`ruleset::MERGE_MIN` peers or more, one union set): its
    /// counter is theirs together. Rules of one policy rule keep its origin.
    pub const MERGED: &str = "merged";
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleAction {
    Allow,
    Deny,
    Pass,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Allow => "allow",
            RuleAction::Deny => "deny",
            RuleAction::Pass => "pass",
        }
    }

    fn parse(s: &str) -> Option<RuleAction> {
        Some(match s {
            "allow" => RuleAction::Allow,
            "deny" => RuleAction::Deny,
            "pass" => RuleAction::Pass,
            _ => return None,
        })
    }
}

impl From<crate::compile::admin::Action> for RuleAction {
    fn from(a: crate::compile::admin::Action) -> RuleAction {
        use crate::compile::admin::Action;
        match a {
            Action::Allow => RuleAction::Allow,
            Action::Deny => RuleAction::Deny,
            Action::Pass => RuleAction::Pass,
        }
    }
}

/// The origin of one rendered rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleOrigin {
    pub tier: Tier,
    /// `namespace/name` (NetworkPolicy), a name, or a [`fixed`] line.
    pub policy: String,
    pub direction: Direction,
    /// Index in the policy's rule list of that direction (`None`: a fixed line).
    pub rule: Option<u32>,
    pub action: RuleAction,
}

impl RuleOrigin {
    pub fn new(
        tier: Tier,
        policy: impl Into<String>,
        direction: Direction,
        rule: Option<u32>,
        action: RuleAction,
    ) -> RuleOrigin {
        RuleOrigin {
            tier,
            policy: policy.into(),
            direction,
            rule,
            action,
        }
    }

    /// A line Margay adds itself.
    pub fn fixed(what: &str, direction: Direction, action: RuleAction) -> RuleOrigin {
        RuleOrigin::new(Tier::Fixed, what, direction, None, action)
    }

    /// The rule label of metrics (`-` for fixed lines).
    pub fn rule_label(&self) -> String {
        self.rule
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into())
    }

    /// `<tier>:<policy>`, the `policy` label of metrics.
    pub fn policy_label(&self) -> String {
        format!("{}:{}", self.tier.as_str(), self.policy)
    }

    /// The comment / log prefix text (at most [`MAX_COMMENT`] bytes).
    pub fn comment(&self) -> String {
        let tail = format!(
            " {} {} {}",
            self.direction.as_str(),
            self.rule_label(),
            self.action.as_str()
        );
        let head = self.tier.as_str().len() + 1;
        let room = MAX_COMMENT.saturating_sub(head + tail.len());
        let policy = if self.policy.len() <= room {
            self.policy.clone()
        } else {
            let hash = &digest(&[&self.policy])[..8];
            let mut cut = room.saturating_sub(hash.len() + 1);
            while !self.policy.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}~{hash}", &self.policy[..cut])
        };
        format!("{} {policy}{tail}", self.tier.as_str())
    }

    /// Reads a [`comment`](Self::comment) back (`None`: not one of ours).
    pub fn parse(comment: &str) -> Option<RuleOrigin> {
        let mut it = comment.split(' ');
        let tier = Tier::parse(it.next()?)?;
        let policy = it.next()?.to_string();
        let direction = match it.next()? {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return None,
        };
        let rule = match it.next()? {
            "-" => None,
            n => Some(n.parse().ok()?),
        };
        let action = RuleAction::parse(it.next()?)?;
        if it.next().is_some() || policy.is_empty() {
            return None;
        }
        Some(RuleOrigin {
            tier,
            policy,
            direction,
            rule,
            action,
        })
    }
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.comment())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip() {
        for o in [
            RuleOrigin::new(
                Tier::NetworkPolicy,
                "shop/allow-web",
                Direction::Ingress,
                Some(0),
                RuleAction::Allow,
            ),
            RuleOrigin::new(
                Tier::Admin,
                "deny-y",
                Direction::Egress,
                Some(12),
                RuleAction::Pass,
            ),
            RuleOrigin::fixed(fixed::DEFAULT, Direction::Egress, RuleAction::Deny),
        ] {
            assert_eq!(RuleOrigin::parse(&o.comment()), Some(o.clone()), "{o}");
        }
        assert_eq!(RuleOrigin::parse("something else"), None);
        assert_eq!(RuleOrigin::parse("np a/b ingress x allow"), None);
        assert_eq!(RuleOrigin::parse("np a/b ingress 1 allow extra"), None);
    }

    #[test]
    fn long_names_are_cut_uniquely_and_fit() {
        let long = |c: char| format!("ns/{}", c.to_string().repeat(250));
        let a = RuleOrigin::new(
            Tier::NetworkPolicy,
            long('a') + "x",
            Direction::Ingress,
            Some(3),
            RuleAction::Allow,
        );
        let b = RuleOrigin {
            policy: long('a') + "y",
            ..a.clone()
        };
        assert!(a.comment().len() <= MAX_COMMENT, "{}", a.comment().len());
        assert_ne!(a.comment(), b.comment());
        let back = RuleOrigin::parse(&a.comment()).expect("parses");
        assert_eq!(back.rule, Some(3));
        assert!(back.policy.contains('~'));
    }
}
