//! The hook behind `/policy/trace` on the loopback listener: set once the
//! dataplane controller runs (`crate::endpoints::trace`), called with the
//! request's query, answering an HTTP status and a JSON body.

use std::fmt::Write as _;
use std::net::IpAddr;

use futures::future::BoxFuture;
use policy::counters::RuleCounter;
use policy::origin::{RuleAction, RuleOrigin};
use serde::{Deserialize, Serialize};

/// A query string that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(String);

/// Answers a `/policy/trace` query: (HTTP status, JSON body).
pub type TraceFn =
    dyn Fn(Vec<(String, String)>) -> BoxFuture<'static, (u16, serde_json::Value)> + Send + Sync;

/// The installed hook.
pub struct Tracer(Box<TraceFn>);

impl Tracer {
    /// Wraps `f`.
    pub fn new(
        f: impl Fn(Vec<(String, String)>) -> BoxFuture<'static, (u16, serde_json::Value)>
        + Send
        + Sync
        + 'static,
    ) -> Tracer {
        Tracer(Box::new(f))
    }

    /// Runs one trace.
    pub fn call(
        &self,
        query: Vec<(String, String)>,
    ) -> BoxFuture<'static, (u16, serde_json::Value)> {
        (self.0)(query)
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracer")
    }
}

/// One policy rule a trace names: where it is and what put it there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracedRule {
    /// nft table (`margay`, `margay_host`).
    pub table: String,
    /// nft chain.
    pub chain: String,
    /// Model: position in the chain; kernel: the rule's handle.
    pub position: u64,
    /// `<tier>:<policy>` (`np:demo/web-from-client`, `anp:deny-y`,
    /// `fixed:default`).
    pub policy: String,
    /// Rule index in the policy's list for that direction (`-`: a line
    /// Margay adds itself).
    pub rule: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `allow`, `deny` or `pass`.
    pub action: String,
    /// The rule's nft comment, as `nft list` shows it.
    pub comment: String,
    /// Kernel only: packets the probe added to its counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
}

impl TracedRule {
    /// A rule from its place and origin.
    pub fn of(table: &str, chain: &str, position: u64, o: &RuleOrigin) -> TracedRule {
        TracedRule {
            table: table.to_string(),
            chain: chain.to_string(),
            position,
            policy: o.policy_label(),
            rule: o.rule_label(),
            direction: o.direction.as_str().to_string(),
            action: o.action.as_str().to_string(),
            comment: o.comment(),
            packets: None,
        }
    }

    /// A kernel rule whose counter moved by `packets`.
    pub fn moved(c: &RuleCounter, packets: u64) -> TracedRule {
        TracedRule {
            packets: Some(packets),
            ..TracedRule::of(&c.table, &c.chain, c.handle, &c.origin)
        }
    }
}

/// What the model (the agent's ruleset for this node) says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSide {
    /// `allow` or `deny`.
    pub verdict: String,
    /// Every rule the packet matches, in the order it meets them.
    pub rules: Vec<TracedRule>,
}

/// What the kernel did with the probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelSide {
    /// What the probe saw: `connected`, `refused` (a reset: the SYN got
    /// through), `no answer`, `sent` (UDP: nothing comes back), or the
    /// socket error.
    pub probe: String,
    /// `allow`, `deny` (a deny rule counted the probe) or `no answer`
    /// (dropped, but by no counted Margay rule).
    pub verdict: String,
    /// The counted rules whose counters the probe moved.
    pub rules: Vec<TracedRule>,
}

/// `margayctl policy trace --dataplane`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneTrace {
    /// The node that traced.
    pub node: String,
    /// Source `namespace/pod`.
    pub from: String,
    /// Its address used.
    pub from_ip: IpAddr,
    /// Its host-side interface (the packet's input interface).
    pub from_interface: String,
    /// Destination `namespace/pod`, or `-` for an address that is no pod.
    pub to: String,
    /// Its address used.
    pub to_ip: IpAddr,
    /// Its host-side interface when it is on this node.
    pub to_interface: Option<String>,
    /// `TCP/80`, `UDP/53`.
    pub traffic: String,
    /// The model's answer.
    pub model: ModelSide,
    /// The kernel's answer.
    pub kernel: KernelSide,
    /// Same verdict and the same rules on both sides.
    pub agree: bool,
    /// What differs, one line each (empty when they agree).
    pub differences: Vec<String>,
    /// Caveats (a destination on another node, UDP).
    pub notes: Vec<String>,
}

/// The verdict a list of matched rules implies together with the probe:
/// a counted deny decides; otherwise the probe's fate.
pub fn kernel_verdict(rules: &[TracedRule], probe_passed: Option<bool>) -> String {
    if rules.iter().any(|r| r.action == RuleAction::Deny.as_str()) {
        return "deny".into();
    }
    match probe_passed {
        Some(false) => "no answer".into(),
        _ => "allow".into(),
    }
}

/// Parses `80/TCP`, `53/udp`, `8080` (TCP), `icmp`.
pub fn parse_port(s: &str) -> Result<policy::spec_eval::L4, QueryError> {
    use policy::Protocol;
    if s.eq_ignore_ascii_case("icmp") {
        return Ok(policy::spec_eval::L4::Other(1));
    }
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port
        .parse()
        .map_err(|_| QueryError(format!("port {s:?}: expected PORT/PROTOCOL, e.g. 80/TCP")))?;
    let proto = Protocol::parse(Some(&proto.to_ascii_uppercase()))
        .map_err(|e| QueryError(format!("port {s:?}: {e}")))?;
    Ok(policy::spec_eval::L4::Port(proto, port))
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Reads `a=b&c=d` with percent-escapes (and `+` as space).
pub fn decode_query(q: &str) -> Result<Vec<(String, String)>, QueryError> {
    let unescape = |s: &str| -> Result<String, QueryError> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' => {
                    let hex = b
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| QueryError(format!("bad escape in {s:?}")))?;
                    out.push(hex);
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| QueryError(format!("{s:?} is not UTF-8")))
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((unescape(k)?, unescape(v)?))
        })
        .collect()
}
