//! `margayctl policy trace --dataplane`: the answer of the local agent's
//! `/policy/trace` (its model of this node's ruleset next to the kernel
//! counters a real probe moved), how margayctl asks for it and prints it.
//!
//! ```text
//! margayctl ──GET /policy/trace?from=&to=&port= (loopback)──► agent http task
//!                                                             │ Cmd::Trace ──► controller: resolve pods,
//!                                                             │ ◄── TracePlan   model walk of the Ruleset
//!                                                             ├─ nft -j list (before)
//!                                                             ├─ probe from the source pod's netns
//!                                                             ├─ nft -j list (after), delta, compare
//! margayctl ◄──────────── DataplaneTrace (JSON) ──────────────┘
//! ```
//!
//! The agent side is `crate::endpoints::trace`.

use std::fmt::Write as _;

use super::CtlError;
pub use crate::status::tracer::{
    DataplaneTrace, KernelSide, ModelSide, TracedRule, decode_query, encode_query_value,
    kernel_verdict,
};

/// The human form.
pub fn render_dataplane(t: &DataplaneTrace, wide: bool) -> String {
    let mut out = String::new();
    let to_if = t.to_interface.as_deref().unwrap_or("not on this node");
    let _ = writeln!(
        out,
        "trace on node {}: {} ({}, {}) -> {} ({}, {}) {}",
        t.node, t.from, t.from_ip, t.from_interface, t.to, t.to_ip, to_if, t.traffic
    );
    let rule_line = |r: &TracedRule, side: &str| -> String {
        let what = format!("{} rule {} {} {}", r.policy, r.rule, r.direction, r.action);
        let place = if side == "model" {
            format!("{} #{}", r.chain, r.position)
        } else {
            format!("{} handle {}", r.chain, r.position)
        };
        let mut s = format!("    {what:<48} {place}");
        if let Some(p) = r.packets {
            let _ = write!(s, "  +{p} packet{}", if p == 1 { "" } else { "s" });
        }
        if wide {
            let _ = write!(s, "  [table {} comment \"{}\"]", r.table, r.comment);
        }
        s + "\n"
    };
    let _ = writeln!(out, "model:  {}", t.model.verdict.to_uppercase());
    if t.model.rules.is_empty() {
        let _ = writeln!(out, "    no policy rule (no policy selects these pods)");
    }
    for r in &t.model.rules {
        out += &rule_line(r, "model");
    }
    let _ = writeln!(
        out,
        "kernel: {} (probe: {})",
        t.kernel.verdict.to_uppercase(),
        t.kernel.probe
    );
    if t.kernel.rules.is_empty() {
        let _ = writeln!(out, "    no counted rule moved");
    }
    for r in &t.kernel.rules {
        out += &rule_line(r, "kernel");
    }
    if t.agree {
        let _ = writeln!(out, "model and kernel AGREE");
    } else {
        let _ = writeln!(out, "model and kernel DISAGREE:");
        for d in &t.differences {
            let _ = writeln!(out, "    {d}");
        }
    }
    for n in &t.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// The agent's `/policy/trace` URL for a query.
pub fn trace_url(agent: &str, from: &str, to: &str, port: &str) -> String {
    format!(
        "{}/policy/trace?from={}&to={}&port={}",
        agent.trim_end_matches('/'),
        encode_query_value(from),
        encode_query_value(to),
        encode_query_value(port)
    )
}

/// Asks the agent at `agent` to trace; its error answers become errors
/// that say what the agent said.
pub async fn dataplane_trace(
    agent: &str,
    from: &str,
    to: &str,
    port: &str,
) -> Result<DataplaneTrace, CtlError> {
    let url = trace_url(agent, from, to, port);
    let (status, body) = super::http_get_status(&url).await?;
    if status == 404 && body.starts_with("try ") {
        return Err(CtlError::Agent {
            url,
            reason: "this agent has no /policy/trace (an older version?)".into(),
        });
    }
    if status != 200 {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string());
        return Err(CtlError::Traced(msg));
    }
    serde_json::from_str(&body).map_err(|e| CtlError::Agent {
        url,
        reason: format!("answer is not a trace: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::Direction;
    use policy::origin::{RuleAction, RuleOrigin, Tier};

    #[test]
    fn query_values_round_trip() {
        for v in ["demo/web", "2001:db8::1", "80/TCP", "a b&c=d%", "ünï"] {
            let q = format!("x={}", encode_query_value(v));
            let d = decode_query(&q).expect("decodes");
            assert_eq!(d, vec![("x".to_string(), v.to_string())], "{q}");
        }
        assert!(decode_query("x=%4").is_err());
        let url = trace_url("http://127.0.0.1:9647/", "demo/a", "198.19.0.3", "53/UDP");
        assert_eq!(
            url,
            "http://127.0.0.1:9647/policy/trace?from=demo%2Fa&to=198.19.0.3&port=53%2FUDP"
        );
    }

    #[test]
    fn a_counted_deny_decides_the_kernel_verdict() {
        let deny = TracedRule::of(
            "margay",
            "c",
            1,
            &RuleOrigin::fixed("default", Direction::Ingress, RuleAction::Deny),
        );
        let allow = TracedRule::of(
            "margay",
            "c",
            2,
            &RuleOrigin::new(
                Tier::NetworkPolicy,
                "demo/p",
                Direction::Ingress,
                Some(0),
                RuleAction::Allow,
            ),
        );
        assert_eq!(
            kernel_verdict(std::slice::from_ref(&deny), Some(false)),
            "deny"
        );
        assert_eq!(
            kernel_verdict(std::slice::from_ref(&allow), Some(true)),
            "allow"
        );
        assert_eq!(kernel_verdict(&[], Some(false)), "no answer");
        assert_eq!(kernel_verdict(&[], None), "allow");
        assert_eq!(allow.policy, "np:demo/p");
        assert_eq!(allow.comment, "np demo/p ingress 0 allow");
    }
}
