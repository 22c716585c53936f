//! [`HostPlan`] → `table inet margay_host` (nftables JSON).
//!
//! ```text
//! input  (hook input, priority filter, policy accept)
//!   iifname "lo" accept;  iifname "cali*" accept
//!   ct state established,related accept
//!   meta l4proto . th dport @failsafe_in   counter accept   "fixed failsafe ingress"
//!   icmpv6 type { nd-* , router-* } accept
//!   iifname vmap @hep_in                   (interface → jump hin_<iface>)
//!   [goto hin_any]                         (a `*` endpoint isolates ingress)
//! output (hook output): the same with oifname, @failsafe_out, hep_out, hout_*
//! hin_<x> / hout_<x>: per policy rule `[saddr|daddr @ha<4|6>_<h>] [l4proto . dport @hpt_<h>]
//!                     counter accept`, then `[limit + log]` `counter drop`
//! forward (hook forward; only when an `applyOnForward` policy isolates an endpoint)
//!   ct state established,related accept
//!   jump fwd_in;  jump fwd_out
//! fwd_in:  iifname "lo"/"cali*" return; iifname vmap @hep_fwd_in (goto fin_<iface>);
//!          [goto fin_any]      (fwd_out: the same with oifname, hep_fwd_out, fout_*)
//! fin_<x> / fout_<x>: the rules of hin_/hout_ with `return` for accept (the
//!          other direction is checked next), then `counter drop`
//! ```
//!
//! A forwarded packet between two pods of this node never meets a host
//! rule (both interfaces are `cali*`); traffic to and from the node itself
//! (and so the failsafe ports) is the input / output hooks' alone.
//!
//! Every counted rule carries its [`RuleOrigin`] as comment.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{HostIface, HostPlan, HostRulePlan};
use crate::addr::{AddrRange, Family};
use crate::batch::Batch;
use crate::compile::Direction;
use crate::model::Protocol;
use crate::origin::{RuleAction, RuleOrigin, Tier, fixed};
use crate::ruleset::digest;

/// The host table (`inet`).
pub const HOST_TABLE: &str = "margay_host";
const MAP_IN: &str = "hep_in";
const MAP_OUT: &str = "hep_out";
const MAP_FWD_IN: &str = "hep_fwd_in";
const MAP_FWD_OUT: &str = "hep_fwd_out";

/// A named set of the host table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSet {
    /// `inet_proto . inet_service`, interval.
    ProtoPorts(BTreeSet<(Protocol, u16, u16)>),
    /// `ipv4_addr` / `ipv6_addr`, interval.
    Addrs(Family, Vec<AddrRange>),
}

/// One rule: its statements (nft JSON) and its comment.
pub type NftRule = (Vec<Value>, Option<String>);

/// The rendered host table: plain data, compared to decide whether to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRuleset {
    pub sets: BTreeMap<String, HostSet>,
    /// Regular chains (rules as nft JSON statements lists + comment).
    pub chains: BTreeMap<String, Vec<NftRule>>,
    /// Base chains `input` / `output`, in order.
    pub base: Vec<(&'static str, Vec<NftRule>)>,
    /// Dispatch maps: interface → chain.
    pub maps: BTreeMap<&'static str, BTreeMap<String, String>>,
}

fn dir_names(dir: Direction) -> (&'static str, &'static str, &'static str, &'static str) {
    // (base chain, ifname key, map, chain prefix)
    match dir {
        Direction::Ingress => ("input", "iifname", MAP_IN, "hin"),
        Direction::Egress => ("output", "oifname", MAP_OUT, "hout"),
    }
}

fn m(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn proto_port() -> Value {
    json!({"concat": [meta("l4proto"), {"payload": {"protocol": "th", "field": "dport"}}]})
}

fn counter() -> Value {
    json!({"counter": {"packets": 0, "bytes": 0}})
}

fn verdict(a: RuleAction) -> Value {
    match a {
        RuleAction::Allow => json!({"accept": null}),
        RuleAction::Deny | RuleAction::Pass => json!({"drop": null}),
    }
}

fn port_elem(p: &(Protocol, u16, u16)) -> Value {
    let ports = if p.1 == p.2 {
        json!(p.1)
    } else {
        json!({"range": [p.1, p.2]})
    };
    json!({"concat": [p.0.nft_name(), ports]})
}

fn addr_elem(r: &AddrRange) -> Value {
    if r.lo == r.hi {
        json!(r.lo_ip().to_string())
    } else {
        json!({"range": [r.lo_ip().to_string(), r.hi_ip().to_string()]})
    }
}

impl HostRuleset {
    /// Renders a plan.
    pub fn build(plan: &HostPlan) -> HostRuleset {
        let mut rs = HostRuleset {
            sets: BTreeMap::new(),
            chains: BTreeMap::new(),
            base: Vec::new(),
            maps: BTreeMap::new(),
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            let (base, key, map, prefix) = dir_names(dir);
            let fs_set = match dir {
                Direction::Ingress => "failsafe_in",
                Direction::Egress => "failsafe_out",
            };
            let ports: BTreeSet<(Protocol, u16, u16)> = plan
                .config
                .failsafe
                .get(dir)
                .iter()
                .map(|f| (f.protocol, f.port, f.port))
                .collect();
            rs.sets
                .insert(fs_set.to_string(), HostSet::ProtoPorts(ports));
            let wildcard = format!("{}*", plan.config.iface_prefix);
            let ct = m(
                json!({"ct": {"key": "state"}}),
                "in",
                json!(["established", "related"]),
            );
            let nd = m(
                json!({"payload": {"protocol": "icmpv6", "field": "type"}}),
                "==",
                json!({"set": ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"]}),
            );
            let failsafe = RuleOrigin::fixed(fixed::FAILSAFE, dir, RuleAction::Allow);
            let mut rules: Vec<NftRule> = vec![
                (
                    vec![m(meta(key), "==", json!("lo")), json!({"accept": null})],
                    None,
                ),
                (
                    vec![m(meta(key), "==", json!(wildcard)), json!({"accept": null})],
                    None,
                ),
                (vec![ct, json!({"accept": null})], None),
                (
                    vec![
                        m(proto_port(), "==", json!(format!("@{fs_set}"))),
                        counter(),
                        json!({"accept": null}),
                    ],
                    Some(failsafe.comment()),
                ),
                (vec![nd, json!({"accept": null})], None),
                (
                    vec![json!({"vmap": {"key": meta(key), "data": format!("@{map}")}})],
                    None,
                ),
            ];
            let mut elems = BTreeMap::new();
            for (iface, dirs) in &plan.ifaces {
                let Some(lines) = dirs.get(dir) else { continue };
                let chain = match iface {
                    HostIface::Named(n) => format!("{prefix}_if_{n}"),
                    HostIface::All => format!("{prefix}_any"),
                };
                let body = rs.chain_body(dir, lines, plan, json!({"accept": null}));
                rs.chains.insert(chain.clone(), body);
                match iface {
                    HostIface::Named(n) => {
                        elems.insert(n.clone(), chain);
                    }
                    HostIface::All => {
                        rules.push((vec![json!({"goto": {"target": chain}})], None));
                    }
                }
            }
            rs.maps.insert(map, elems);
            rs.base.push((base, rules));
        }
        if !plan.forward.is_empty() {
            rs.build_forward(plan);
        }
        rs
    }

    /// The `forward` hook: each direction's check is a chain that returns
    /// when the packet is allowed (or its interface is not isolated), so
    /// a forwarded packet meets the ingress rules of the interface it came
    /// in on, then the egress rules of the one it leaves on.
    fn build_forward(&mut self, plan: &HostPlan) {
        let ct = m(
            json!({"ct": {"key": "state"}}),
            "in",
            json!(["established", "related"]),
        );
        let mut base: Vec<NftRule> = vec![(vec![ct, json!({"accept": null})], None)];
        let wildcard = format!("{}*", plan.config.iface_prefix);
        for dir in [Direction::Ingress, Direction::Egress] {
            let (key, map, check, prefix) = match dir {
                Direction::Ingress => ("iifname", MAP_FWD_IN, "fwd_in", "fin"),
                Direction::Egress => ("oifname", MAP_FWD_OUT, "fwd_out", "fout"),
            };
            let ret = || json!({"return": null});
            let mut rules: Vec<NftRule> = vec![
                (vec![m(meta(key), "==", json!("lo")), ret()], None),
                (vec![m(meta(key), "==", json!(wildcard)), ret()], None),
                (
                    vec![json!({"vmap": {"key": meta(key), "data": format!("@{map}")}})],
                    None,
                ),
            ];
            let mut elems = BTreeMap::new();
            for (iface, dirs) in &plan.forward {
                let Some(lines) = dirs.get(dir) else { continue };
                let chain = match iface {
                    HostIface::Named(n) => format!("{prefix}_if_{n}"),
                    HostIface::All => format!("{prefix}_any"),
                };
                let body = self.chain_body(dir, lines, plan, ret());
                self.chains.insert(chain.clone(), body);
                match iface {
                    HostIface::Named(n) => {
                        elems.insert(n.clone(), chain);
                    }
                    HostIface::All => {
                        rules.push((vec![json!({"goto": {"target": chain}})], None));
                    }
                }
            }
            self.chains.insert(check.to_string(), rules);
            self.maps.insert(map, elems);
            base.push((vec![json!({"jump": {"target": check}})], None));
        }
        self.base.push(("forward", base));
    }

    fn chain_body(
        &mut self,
        dir: Direction,
        lines: &[HostRulePlan],
        plan: &HostPlan,
        allowed: Value,
    ) -> Vec<NftRule> {
        let field = match dir {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        };
        let mut body = Vec::new();
        for r in lines {
            let origin = RuleOrigin::new(
                Tier::Host,
                r.policy.clone(),
                dir,
                Some(r.index),
                RuleAction::Allow,
            );
            let port_match = r.ports.as_ref().map(|ports| {
                let name = format!("hpt_{}", digest(&[&format!("{ports:?}")]));
                self.sets
                    .insert(name.clone(), HostSet::ProtoPorts(ports.clone()));
                m(proto_port(), "==", json!(format!("@{name}")))
            });
            let mut line = |addr: Option<Value>| {
                let mut st: Vec<Value> = addr.into_iter().collect();
                st.extend(port_match.clone());
                st.push(counter());
                st.push(allowed.clone());
                body.push((st, Some(origin.comment())));
            };
            match &r.peers {
                None => line(None),
                Some(ranges) => {
                    for fam in Family::BOTH {
                        let rs: Vec<AddrRange> =
                            ranges.iter().filter(|x| x.family == fam).copied().collect();
                        if rs.is_empty() {
                            continue;
                        }
                        let name = format!("ha{}_{}", fam.tag(), digest(&[&format!("{rs:?}")]));
                        self.sets.insert(name.clone(), HostSet::Addrs(fam, rs));
                        line(Some(m(
                            json!({"payload": {"protocol": fam.nft_proto(), "field": field}}),
                            "==",
                            json!(format!("@{name}")),
                        )));
                    }
                }
            }
        }
        let deny = RuleOrigin::fixed(fixed::DEFAULT, dir, RuleAction::Deny);
        if let Some(log) = &plan.config.deny_log {
            body.push((log.statements(&deny), None));
        }
        body.push((
            vec![counter(), verdict(RuleAction::Deny)],
            Some(deny.comment()),
        ));
        body
    }

    /// One transaction that replaces the host table with this one.
    pub fn apply_batch(&self) -> Batch {
        let mut b = remove_batch();
        let t = HOST_TABLE;
        b.raw(json!({"add": {"table": {"family": "inet", "name": t}}}));
        for (name, set) in &self.sets {
            let (ty, elems): (Value, Vec<Value>) = match set {
                HostSet::ProtoPorts(p) => (
                    json!(["inet_proto", "inet_service"]),
                    p.iter().map(port_elem).collect(),
                ),
                HostSet::Addrs(fam, r) => (
                    json!(match fam {
                        Family::V4 => "ipv4_addr",
                        Family::V6 => "ipv6_addr",
                    }),
                    r.iter().map(addr_elem).collect(),
                ),
            };
            let mut o = json!({"family": "inet", "table": t, "name": name, "type": ty, "flags": ["interval"]});
            if !elems.is_empty() {
                o["elem"] = json!(elems);
            }
            b.raw(json!({"add": {"set": o}}));
        }
        for name in self.chains.keys() {
            b.raw(json!({"add": {"chain": {"family": "inet", "table": t, "name": name}}}));
        }
        for (map, elems) in &self.maps {
            // The forward checks' dispatch is a goto: the per-interface
            // chain's `return` ends the check chain (see `build_forward`).
            let verb = if [MAP_FWD_IN, MAP_FWD_OUT].contains(map) {
                "goto"
            } else {
                "jump"
            };
            let mut o = json!({"family": "inet", "table": t, "name": map, "type": "ifname", "map": "verdict"});
            if !elems.is_empty() {
                o["elem"] = json!(
                    elems
                        .iter()
                        .map(|(i, c)| json!([i, {verb: {"target": c}}]))
                        .collect::<Vec<_>>()
                );
            }
            b.raw(json!({"add": {"map": o}}));
        }
        // Rules after the maps: the forward check chains look maps up.
        for (name, rules) in &self.chains {
            for r in rules {
                b.raw(rule_cmd(name, r));
            }
        }
        for (name, rules) in &self.base {
            b.raw(
                json!({"add": {"chain": {"family": "inet", "table": t, "name": name,
                "type": "filter", "hook": name, "prio": 0, "policy": "accept"}}}),
            );
            for r in rules {
                b.raw(rule_cmd(name, r));
            }
        }
        b
    }
}

fn rule_cmd(chain: &str, (expr, comment): &NftRule) -> Value {
    let mut o = json!({"family": "inet", "table": HOST_TABLE, "chain": chain, "expr": expr});
    if let Some(c) = comment {
        o["comment"] = json!(c);
    }
    json!({"add": {"rule": o}})
}

/// One transaction that removes the host table if it exists (nft 1.0.6 has
/// no `destroy`: add, a no-op when present, then delete).
pub fn remove_batch() -> Batch {
    let mut b = Batch::new();
    let t = json!({"table": {"family": "inet", "name": HOST_TABLE}});
    b.raw(json!({"add": t.clone()}));
    b.raw(json!({"delete": t}));
    b
}
