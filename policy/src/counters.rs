//! Per-rule packet/byte counters read back from the kernel.
//!
//! Every counted rule of `inet margay` and `inet margay_host` has an nft
//! `counter` and its [`RuleOrigin`] as comment, so one `nft -j list table`
//! per table is all it takes: [`parse_listing`] reads that listing into
//! [`RuleCounter`]s (one per kernel rule), [`totals`] sums them per origin
//! (a content-addressed chain shared by many endpoints is one rule; the same
//! policy rule rendered into several chains is summed). The result is what
//! `margay_policy_rule_packets_total{policy,rule,direction,action}` exports:
//! its label set is bounded by policies × rules × 2 directions.
//!
//! [`delta`] of two snapshots is the dataplane side of `policy trace`: send
//! a probe, and the rules whose counters moved are the rules it crossed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::origin::RuleOrigin;

/// One counted rule in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    pub table: String,
    pub chain: String,
    /// The kernel's rule handle.
    pub handle: u64,
    pub origin: RuleOrigin,
    pub packets: u64,
    pub bytes: u64,
}

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// Why a listing could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error("nft listing is not {{\"nftables\": [...]}}")]
    NotAListing,
    #[error("nft listing: rule {index} has no {field:?}")]
    Field { index: usize, field: &'static str },
}

/// Reads the counted rules of an `nft -j list table|ruleset` output. Rules
/// without a counter or without one of our comments are skipped.
pub fn parse_listing(v: &Value) -> Result<Vec<RuleCounter>, CounterError> {
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or(CounterError::NotAListing)?;
    let mut out = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let Some(origin) = rule
            .get("comment")
            .and_then(Value::as_str)
            .and_then(RuleOrigin::parse)
        else {
            continue;
        };
        let Some(counter) = rule
            .get("expr")
            .and_then(Value::as_array)
            .and_then(|e| e.iter().find_map(|s| s.get("counter")))
        else {
            continue;
        };
        let field = |o: &Value, f: &'static str| -> Result<u64, CounterError> {
            o.get(f)
                .and_then(Value::as_u64)
                .ok_or(CounterError::Field { index, field: f })
        };
        let text = |f: &'static str| -> Result<String, CounterError> {
            rule.get(f)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(CounterError::Field { index, field: f })
        };
        out.push(RuleCounter {
            table: text("table")?,
            chain: text("chain")?,
            handle: field(rule, "handle")?,
            origin,
            packets: field(counter, "packets")?,
            bytes: field(counter, "bytes")?,
        });
    }
    Ok(out)
}

/// Sums per origin.
pub fn totals(counters: &[RuleCounter]) -> BTreeMap<RuleOrigin, Totals> {
    let mut out: BTreeMap<RuleOrigin, Totals> = BTreeMap::new();
    for c in counters {
        let t = out.entry(c.origin.clone()).or_default();
        t.packets = t.packets.saturating_add(c.packets);
        t.bytes = t.bytes.saturating_add(c.bytes);
    }
    out
}

/// The rules whose packet counter grew from `before` to `after` (matched by
/// table, chain and handle), with the growth. A rule that is new in `after`
/// counts from zero.
pub fn delta(before: &[RuleCounter], after: &[RuleCounter]) -> Vec<(RuleCounter, u64)> {
    let old: BTreeMap<(&str, &str, u64), u64> = before
        .iter()
        .map(|c| ((c.table.as_str(), c.chain.as_str(), c.handle), c.packets))
        .collect();
    after
        .iter()
        .filter_map(|c| {
            let was = old
                .get(&(c.table.as_str(), c.chain.as_str(), c.handle))
                .copied()
                .unwrap_or(0);
            (c.packets > was).then(|| (c.clone(), c.packets - was))
        })
        .collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The per-rule series in the OpenMetrics text format, without `# EOF`:
/// `margay_policy_rule_packets_total{policy,rule,direction,action}` and
/// `margay_policy_rule_bytes_total{…}` (kernel counters: they restart when
/// a chain is replaced, which `rate()` treats as a counter reset).
pub fn openmetrics(totals: &BTreeMap<RuleOrigin, Totals>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, help, pick) in [
        (
            "margay_policy_rule_packets",
            "Packets that matched a policy rule",
            (|t: &Totals| t.packets) as fn(&Totals) -> u64,
        ),
        (
            "margay_policy_rule_bytes",
            "Bytes of the packets that matched a policy rule",
            |t: &Totals| t.bytes,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (o, t) in totals {
            let _ = writeln!(
                out,
                "{name}_total{{policy=\"{}\",rule=\"{}\",direction=\"{}\",action=\"{}\"}} {}",
                escape(&o.policy_label()),
                escape(&o.rule_label()),
                o.direction.as_str(),
                o.action.as_str(),
                pick(t)
            );
        }
    }
    out
}

/// `margayctl policy show`: one line per policy rule (summed over the
/// chains that hold it), in tier/policy/rule order.
pub fn render_show(counters: &[RuleCounter]) -> String {
    use std::fmt::Write as _;
    let mut chains: BTreeMap<&RuleOrigin, BTreeSet<&str>> = BTreeMap::new();
    for c in counters {
        chains
            .entry(&c.origin)
            .or_default()
            .insert(c.chain.as_str());
    }
    let totals = totals(counters);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>4} {:<8} {:<6} {:>12} {:>14}  CHAINS",
        "POLICY", "RULE", "DIR", "ACTION", "PACKETS", "BYTES"
    );
    for (o, t) in &totals {
        let ch: Vec<&str> = chains.get(o).into_iter().flatten().copied().collect();
        let _ = writeln!(
            out,
            "{:<40} {:>4} {:<8} {:<6} {:>12} {:>14}  {}",
            o.policy_label(),
            o.rule_label(),
            o.direction.as_str(),
            o.action.as_str(),
            t.packets,
            t.bytes,
            ch.join(",")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::Direction;
    use crate::origin::{RuleAction, Tier};

    fn listing(packets: u64) -> Value {
        serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "margay", "handle": 1}},
            {"rule": {"family": "inet", "table": "margay", "chain": "pi_1", "handle": 4,
                "comment": "np x/a ingress 0 allow",
                "expr": [{"counter": {"packets": packets, "bytes": packets * 60}}, {"accept": null}]}},
            {"rule": {"family": "inet", "table": "margay", "chain": "pi_2", "handle": 9,
                "comment": "np x/a ingress 0 allow",
                "expr": [{"counter": {"packets": 1, "bytes": 60}}, {"accept": null}]}},
            {"rule": {"family": "inet", "table": "margay", "chain": "forward", "handle": 2,
                "expr": [{"counter": {"packets": 5, "bytes": 5}}, {"accept": null}]}},
            {"rule": {"family": "inet", "table": "margay", "chain": "pi_2", "handle": 10,
                "comment": "np x/a ingress 0 allow", "expr": [{"accept": null}]}},
        ]})
    }

    #[test]
    fn parses_sums_and_diffs() {
        let a = parse_listing(&listing(2)).unwrap();
        assert_eq!(a.len(), 2, "uncommented and counterless rules skipped");
        let t = totals(&a);
        let o = RuleOrigin::new(
            Tier::NetworkPolicy,
            "x/a",
            Direction::Ingress,
            Some(0),
            RuleAction::Allow,
        );
        assert_eq!(
            t[&o],
            Totals {
                packets: 3,
                bytes: 180
            }
        );
        let b = parse_listing(&listing(5)).unwrap();
        let d = delta(&a, &b);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].0.chain.as_str(), d[0].1), ("pi_1", 3));
        assert_eq!(
            parse_listing(&serde_json::json!({"x": 1})),
            Err(CounterError::NotAListing)
        );
    }

    #[test]
    fn openmetrics_and_show_name_every_rule_once() {
        let b = parse_listing(&listing(5)).unwrap();
        let text = openmetrics(&totals(&b));
        assert!(
            text.contains(
                r#"margay_policy_rule_packets_total{policy="np:x/a",rule="0",direction="ingress",action="allow"} 6"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE margay_policy_rule_bytes counter"),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 2);
        let show = render_show(&b);
        assert_eq!(show.lines().count(), 2, "{show}");
        assert!(show.contains("pi_1,pi_2"), "{show}");
    }
}
