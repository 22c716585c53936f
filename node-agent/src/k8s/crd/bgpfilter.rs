//! `BGPFilter`: import/export rules for BGP peers, as Calico names them.
//! A `BGPPeer` lists filters by name in `filters`; their rules apply in
//! order, the first match decides, and a route no rule matches goes on to
//! the agent's default (import: accept; export: only pool and service
//! networks, see `routing::default_export`).

use bgp::rib::filter::{FilterAction, MatchOp, Rule};
use bgp::wire::{Family, Prefix};
use ipnetwork::IpNetwork;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Cidr, InvalidSpec};

/// How a rule's `cidr` is compared with a route's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MatchOperator {
    /// The prefix is the CIDR.
    Equal,
    /// The prefix is not the CIDR.
    NotEqual,
    /// The prefix is the CIDR or inside it.
    In,
    /// The prefix is not inside the CIDR.
    NotIn,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BGPFilterAction {
    /// Let the route through.
    Accept,
    /// Drop it.
    Reject,
}

/// Which routes an export rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RouteSource {
    /// Routes learned from BGP peers (not the ones this node originates).
    RemotePeers,
}

/// Prefix lengths a rule matches (with `In` / `NotIn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrefixLength {
    /// Shortest (default: the CIDR's length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u8>,
    /// Longest (default: 32 / 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u8>,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPFilterRule {
    /// The network to compare with (with `matchOperator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Cidr>,
    /// Prefix lengths to match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<PrefixLength>,
    /// How `cidr` is compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_operator: Option<MatchOperator>,
    /// Export rules only: match only routes learned from peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RouteSource>,
    /// Calico matches routes by outgoing interface; Margay originates no
    /// interface routes, so a rule with it is refused (the filter is
    /// invalid and its peers are not configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// What a match does.
    pub action: BGPFilterAction,
}

/// Import and export rules per family.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "crd.margay.dev",
    version = "v1",
    kind = "BGPFilter",
    plural = "bgpfilters",
    doc = "Import/export rules for the BGPPeers that name it in `filters`; the first matching rule decides.",
    shortname = "bgpf"
)]
pub struct BGPFilterSpec {
    /// Rules for IPv4 routes sent to the peer.
    #[serde(default, rename = "exportV4", skip_serializing_if = "Vec::is_empty")]
    pub export_v4: Vec<BGPFilterRule>,
    /// Rules for IPv4 routes received from the peer.
    #[serde(default, rename = "importV4", skip_serializing_if = "Vec::is_empty")]
    pub import_v4: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes sent to the peer.
    #[serde(default, rename = "exportV6", skip_serializing_if = "Vec::is_empty")]
    pub export_v6: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes received from the peer.
    #[serde(default, rename = "importV6", skip_serializing_if = "Vec::is_empty")]
    pub import_v6: Vec<BGPFilterRule>,
}

impl BGPFilterRule {
    /// The speaker's rule, for a list of `family`.
    pub fn to_rule(&self, family: Family, export: bool) -> Result<Rule, InvalidSpec> {
        let bad = |field, value: String, reason: &str| InvalidSpec {
            field,
            value,
            reason: reason.into(),
        };
        if let Some(i) = &self.interface {
            return Err(bad(
                "interface",
                i.clone(),
                "not supported: Margay originates no interface routes",
            ));
        }
        if self.source.is_some() && !export {
            return Err(bad(
                "source",
                "RemotePeers".into(),
                "only export rules can match by source",
            ));
        }
        let cidr = match (&self.cidr, self.match_operator) {
            (None, None) => None,
            (Some(c), Some(op)) => {
                let net: IpNetwork = c.parse()?;
                let prefix = Prefix::new(net.network(), net.prefix())
                    .map_err(|e| bad("cidr", c.0.clone(), &e.to_string()))?;
                if prefix.family() != family {
                    return Err(bad(
                        "cidr",
                        c.0.clone(),
                        "is of the other family than its list (V4 / V6)",
                    ));
                }
                let op = match op {
                    MatchOperator::Equal => MatchOp::Equal,
                    MatchOperator::NotEqual => MatchOp::NotEqual,
                    MatchOperator::In => MatchOp::In,
                    MatchOperator::NotIn => MatchOp::NotIn,
                };
                Some((prefix, op))
            }
            (Some(c), None) => {
                return Err(bad("matchOperator", c.0.clone(), "required with cidr"));
            }
            (None, Some(_)) => {
                return Err(bad("cidr", String::new(), "required with matchOperator"));
            }
        };
        let len = match self.prefix_length {
            None => None,
            Some(pl) => {
                let lo = pl.min.unwrap_or(cidr.map(|(c, _)| c.len()).unwrap_or(0));
                let hi = pl.max.unwrap_or(family.max_len());
                if lo > hi || hi > family.max_len() {
                    return Err(bad(
                        "prefixLength",
                        format!("{lo}-{hi}"),
                        "wants min <= max <= 32 (IPv4) / 128 (IPv6)",
                    ));
                }
                Some((lo, hi))
            }
        };
        Ok(Rule {
            family: Some(family),
            cidr,
            len,
            remote_only: self.source == Some(RouteSource::RemotePeers),
            action: match self.action {
                BGPFilterAction::Accept => FilterAction::Accept,
                BGPFilterAction::Reject => FilterAction::Reject,
            },
        })
    }
}

impl BGPFilterSpec {
    /// (import, export) rules, IPv4 first.
    pub fn rules(&self) -> Result<(Vec<Rule>, Vec<Rule>), InvalidSpec> {
        let conv = |list: &[BGPFilterRule], f, export| {
            list.iter()
                .map(|r| r.to_rule(f, export))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut import = conv(&self.import_v4, Family::Ipv4Unicast, false)?;
        import.extend(conv(&self.import_v6, Family::Ipv6Unicast, false)?);
        let mut export = conv(&self.export_v4, Family::Ipv4Unicast, true)?;
        export.extend(conv(&self.export_v6, Family::Ipv6Unicast, true)?);
        Ok((import, export))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calico_sample_translates_and_bad_rules_are_named() {
        let spec: BGPFilterSpec = serde_json::from_value(serde_json::json!({
            "exportV4": [{"action": "Accept", "matchOperator": "In", "cidr": "198.19.0.0/16",
                          "source": "RemotePeers"}],
            "importV4": [{"action": "Accept", "matchOperator": "In", "cidr": "198.19.0.0/16",
                          "prefixLength": {"min": 24}},
                         {"action": "Reject"}],
            "importV6": [{"action": "Accept", "matchOperator": "Equal", "cidr": "2001:db8::/64"}]
        }))
        .expect("parses");
        let (import, export) = spec.rules().expect("valid");
        assert_eq!(import.len(), 3);
        assert_eq!(import[0].len, Some((24, 32)));
        assert_eq!(
            import[1],
            Rule::all(Some(Family::Ipv4Unicast), FilterAction::Reject)
        );
        assert_eq!(import[2].family, Some(Family::Ipv6Unicast));
        assert!(export[0].remote_only);
        let bad = |rule: serde_json::Value, field: &str| {
            let spec: BGPFilterSpec =
                serde_json::from_value(serde_json::json!({ "importV4": [rule] })).expect("parses");
            assert_eq!(spec.rules().map_err(|e| e.field), Err(field));
        };
        bad(
            serde_json::json!({"action": "Reject", "interface": "*.calico"}),
            "interface",
        );
        bad(
            serde_json::json!({"action": "Reject", "cidr": "198.19.0.0/16"}),
            "matchOperator",
        );
        bad(
            serde_json::json!({"action": "Reject", "matchOperator": "In"}),
            "cidr",
        );
        bad(
            serde_json::json!({"action": "Reject", "matchOperator": "In", "cidr": "2001:db8::/32"}),
            "cidr",
        );
        bad(
            serde_json::json!({"action": "Reject", "source": "RemotePeers"}),
            "source",
        );
        bad(
            serde_json::json!({"action": "Reject", "matchOperator": "In", "cidr": "198.19.0.0/16",
                               "prefixLength": {"min": 28, "max": 26}}),
            "prefixLength",
        );
    }
}
