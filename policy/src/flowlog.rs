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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::admin::{a_namespaces, anp, deny};
    use crate::build::{NetPol, from, pods, sel};
    use crate::ruleset::Verdict;
    use crate::testkit::Xyz;

    fn world() -> Xyz {
        let mut x = Xyz::new(2, true);
        x.state
            .add_policy(
                NetPol::new("x", "from-b")
                    .ingress(from(vec![pods(sel(&[("pod", "b")]))]))
                    .build(),
            )
            .unwrap();
        let a = anp("deny-y", 5)
            .subject_namespaces(sel(&[("ns", "z")]))
            .ingress(deny(vec![a_namespaces(sel(&[("ns", "y")]))]))
            .build();
        x.state.admin_policies.insert("deny-y".into(), a);
        x
    }

    #[test]
    fn log_rules_precede_every_drop_and_change_no_verdict() {
        let mut x = world();
        let plain = x.render();
        assert!(plain.iter().all(|rs| {
            rs.chains
                .values()
                .flatten()
                .all(|r| !matches!(r.verdict, Verdict::Log(_)))
        }));
        for n in &mut x.nodes {
            n.deny_log = Some(DenyLog::default());
        }
        let logged = x.render();
        assert!(
            x.mismatches(&logged).is_empty(),
            "logging changed a verdict"
        );
        let mut drops = 0;
        for rs in &logged {
            for (name, rules) in &rs.chains {
                for (i, r) in rules.iter().enumerate() {
                    if r.verdict != Verdict::Drop {
                        continue;
                    }
                    drops += 1;
                    let prev = i.checked_sub(1).map(|j| &rules[j]);
                    assert!(
                        prev.is_some_and(|p| p.verdict == Verdict::Log(DenyLog::default())
                            && p.matches == r.matches
                            && p.origin == r.origin),
                        "{name}[{i}] drop without its log rule"
                    );
                }
            }
        }
        assert!(drops >= 3, "deny chain, policy default, ANP deny: {drops}");
    }
}
