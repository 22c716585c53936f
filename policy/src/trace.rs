//! `policy trace`, both ways: the model (walk the node's [`Ruleset`] for a
//! packet and list the rules it matches) and the dataplane (the counters
//! that moved while a probe packet crossed the kernel, see
//! [`crate::counters::delta`]), and whether they agree.
//!
//! ```text
//! model:  Ruleset ──testkit::forward_traced──► [Hit {chain, index, origin}] + verdict
//! kernel: nft -j list (before) ─┐
//!         probe in a namespace  ├─counters::delta─► [(RuleCounter, +packets)]
//!         nft -j list (after) ──┘
//! compare: the same (chain, origin) set on both sides, or what differs
//! ```
//!
//! Only Margay's counted rules take part; a probe that other traffic
//! crosses at the same moment would show up as extra kernel rules (the
//! answer says which).

use std::collections::BTreeSet;
use std::fmt;

use crate::counters::RuleCounter;
use crate::origin::RuleOrigin;
use crate::ruleset::Ruleset;
use crate::testkit::{Hit, Packet, SimVerdict, forward_traced};

/// What the model says about a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTrace {
    pub verdict: SimVerdict,
    pub hits: Vec<Hit>,
}

/// The model's answer for a new connection's first packet through `forward`.
pub fn model(rs: &Ruleset, p: &Packet<'_>) -> ModelTrace {
    let mut hits = Vec::new();
    let verdict = forward_traced(rs, p, &mut hits);
    ModelTrace { verdict, hits }
}

/// Model and kernel side by side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// Rules (chain, origin) the model matched and whose kernel counter moved.
    pub both: Vec<(String, RuleOrigin)>,
    /// The model matched them; their kernel counters did not move.
    pub model_only: Vec<(String, RuleOrigin)>,
    /// Their kernel counters moved; the model did not match them.
    pub kernel_only: Vec<(String, RuleOrigin)>,
}

impl Agreement {
    pub fn agree(&self) -> bool {
        self.model_only.is_empty() && self.kernel_only.is_empty()
    }
}

/// Compares the model's hits with the kernel rules whose counters moved
/// (of the table `table`; others are ignored).
pub fn compare(model: &ModelTrace, moved: &[(RuleCounter, u64)], table: &str) -> Agreement {
    let m: BTreeSet<(String, RuleOrigin)> = model
        .hits
        .iter()
        .map(|h| (h.chain.clone(), h.origin.clone()))
        .collect();
    let k: BTreeSet<(String, RuleOrigin)> = moved
        .iter()
        .filter(|(c, _)| c.table == table)
        .map(|(c, _)| (c.chain.clone(), c.origin.clone()))
        .collect();
    Agreement {
        both: m.intersection(&k).cloned().collect(),
        model_only: m.difference(&k).cloned().collect(),
        kernel_only: k.difference(&m).cloned().collect(),
    }
}

impl fmt::Display for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[(String, RuleOrigin)]| {
            v.iter()
                .map(|(c, o)| format!("{c}: {o}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if self.agree() {
            write!(f, "model and kernel agree: {}", list(&self.both))
        } else {
            write!(
                f,
                "model and kernel DISAGREE: both [{}], model only [{}], kernel only [{}]",
                list(&self.both),
                list(&self.model_only),
                list(&self.kernel_only)
            )
        }
    }
}
