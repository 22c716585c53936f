//! Rendering of a [`TieredPlan`] (AdminNetworkPolicy / BaselineAdminNetworkPolicy
//! around the NetworkPolicy verdict), with the same sets and content-addressed
//! chains as NetworkPolicy:
//!
//! ```text
//! ep_ingress/ep_egress ─► ai_/ae_<h>   node addresses allowed;
//!                                      ANP rule lines in precedence order:
//!                                        Allow → accept (ingress) / return (egress)
//!                                        Deny  → drop
//!                                        Pass  → goto <tail>
//!                                      last line: goto <tail>
//!   <tail> = pi_/pe_<h>  the NetworkPolicy chain (isolated: its verdict is final)
//!          | bi_/be_<h>  node addresses allowed; BANP rule lines (Allow/Deny as
//!                        above); last line: accept / return
//!          | (none)      nothing isolates: Pass and the last line allow directly
//! ```
//!
//! An endpoint without ANP rules but under the BANP is dispatched straight to
//! its `bi_/be_` chain; one without any admin rule keeps its NetworkPolicy
//! rendering unchanged. `goto` (not `jump`) keeps `return` meaning "back to
//! `forward`", so an egress `Allow` still leads to the receiver's ingress.

use crate::compile::Direction;
use crate::compile::admin::Action;
use crate::origin::{RuleAction, RuleOrigin, fixed};
use crate::plan::{TierRule, TieredPlan};
use crate::ruleset::{BuildCx, RuleIr, Ruleset, Verdict, chain_prefix};

impl Ruleset {
    pub(crate) fn tiered_target(
        &mut self,
        dir: Direction,
        t: &TieredPlan,
        fill: &mut BuildCx,
    ) -> Option<String> {
        let allow = Self::allow_verdict(dir);
        let tail = match &t.np {
            Some((_, rules)) => {
                let body = self.policy_chain_body(dir, rules, fill);
                Some(self.add_chain(chain_prefix("p", dir), body, fill))
            }
            None if !t.baseline.is_empty() => {
                let body = self.tier_body(dir, &t.baseline, allow.clone(), fill);
                Some(self.add_chain(chain_prefix("b", dir), body, fill))
            }
            None => None,
        };
        if t.admin.is_empty() {
            return tail;
        }
        let next = tail.map(Verdict::Goto).unwrap_or(allow);
        let body = self.tier_body(dir, &t.admin, next, fill);
        Some(self.add_chain(chain_prefix("a", dir), body, fill))
    }

    /// Node lines, the rules' lines with their actions' verdicts (`Pass`
    /// and the fall-through: `next`).
    fn tier_body(
        &mut self,
        dir: Direction,
        rules: &[TierRule],
        next: Verdict,
        fill: &mut BuildCx,
    ) -> Vec<RuleIr> {
        let mut body = Self::node_lines(dir);
        for r in rules {
            let verdict = match r.action {
                Action::Allow => Self::allow_verdict(dir),
                Action::Deny => Verdict::Drop,
                Action::Pass => next.clone(),
            };
            body.extend(self.rule_lines(dir, &r.rule, &verdict, fill));
        }
        let action = match next {
            Verdict::Goto(_) => RuleAction::Pass,
            _ => RuleAction::Allow,
        };
        body.push(RuleIr {
            matches: vec![],
            verdict: next,
            origin: RuleOrigin::fixed(fixed::DEFAULT, dir, action),
        });
        body
    }
}
