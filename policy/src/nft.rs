//! [`Ruleset`] → nftables JSON commands (`nftables` crate types, see
//! [`Batch`]): a full, atomic rebuild, or the minimal difference between two
//! rulesets. Every batch is meant to be applied as one transaction.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use nftables::expr::{self, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Rule, Set, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{
    AnonymousCounter, Counter, JumpTarget, Limit, Log, Match as NftMatch, Operator, Statement,
    VerdictMap,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::addr::Family;
pub use crate::batch::{Batch, Item};
use crate::compile::Direction;
use crate::ruleset::{
    EGRESS_MAP, Elem, INGRESS_MAP, Match, NAT_SOURCES, POOLS, RuleIr, Ruleset, SPOOF, SetIr,
    SetKind, TABLE, Verdict,
};

const FORWARD: &str = "forward";
const INPUT: &str = "input";
const POSTROUTING: &str = "postrouting";
/// `srcnat`.
const SRCNAT_PRIORITY: i32 = 100;

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn chain(name: &str) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: Cow::Owned(name.to_string()),
        ..Chain::default()
    }
}

fn base_chain(name: &str, hook: NfHook) -> Chain<'static> {
    Chain {
        _type: Some(NfChainType::Filter),
        hook: Some(hook),
        prio: Some(0),
        policy: Some(NfChainPolicy::Accept),
        ..chain(name)
    }
}

/// The outgoing-NAT base chain (empty NAT sets: it NATs nothing).
fn nat_chain() -> Chain<'static> {
    Chain {
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(SRCNAT_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..chain(POSTROUTING)
    }
}

/// `ip saddr @natsrc4 ip daddr != @pools4 masquerade`, and the same for IPv6.
fn nat_rules() -> Vec<Rule<'static>> {
    Family::BOTH
        .iter()
        .map(|fam| {
            let p = fam.nft_proto();
            rule(
                POSTROUTING,
                vec![
                    mtch(
                        payload(p, "saddr"),
                        Operator::EQ,
                        set_ref(&format!("{NAT_SOURCES}{}", fam.tag())),
                    ),
                    mtch(
                        payload(p, "daddr"),
                        Operator::NEQ,
                        set_ref(&format!("{POOLS}{}", fam.tag())),
                    ),
                    Statement::Masquerade(None),
                ],
            )
        })
        .collect()
}

fn rule(chain: &str, expr: Vec<Statement<'static>>) -> Rule<'static> {
    Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(expr),
        ..Rule::default()
    }
}

fn addr_type(fam: Family) -> SetType {
    match fam {
        Family::V4 => SetType::Ipv4Addr,
        Family::V6 => SetType::Ipv6Addr,
    }
}

fn set_decl(name: &str, ir: &SetIr, with_elems: bool) -> Set<'static> {
    let (ty, interval) = match ir.kind {
        SetKind::Addr(f) => (SetTypeValue::Single(addr_type(f)), false),
        SetKind::AddrInterval(f) => (SetTypeValue::Single(addr_type(f)), true),
        SetKind::ProtoPort => (
            SetTypeValue::Concatenated(Cow::Owned(vec![SetType::InetProto, SetType::InetService])),
            true,
        ),
        SetKind::AddrProtoPort(f) => (
            SetTypeValue::Concatenated(Cow::Owned(vec![
                addr_type(f),
                SetType::InetProto,
                SetType::InetService,
            ])),
            false,
        ),
        SetKind::IfAddr(f) => (
            SetTypeValue::Concatenated(Cow::Owned(vec![SetType::Ifname, addr_type(f)])),
            false,
        ),
    };
    let elems: Vec<Expression<'static>> = if with_elems {
        ir.elems.iter().map(elem).collect()
    } else {
        Vec::new()
    };
    Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: Cow::Owned(name.to_string()),
        handle: None,
        set_type: ty,
        policy: None,
        flags: interval.then(|| HashSet::from([SetFlag::Interval])),
        elem: (!elems.is_empty()).then_some(Cow::Owned(elems)),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

/// A set element as nftables JSON.
pub fn elem(e: &Elem) -> Expression<'static> {
    let num = |v: u16| Expression::Number(u32::from(v));
    match e {
        Elem::Addr(ip) => s(ip.to_string()),
        Elem::Range(r) if r.lo == r.hi => s(r.lo_ip().to_string()),
        Elem::Range(r) => Expression::Range(Box::new(expr::Range {
            range: [s(r.lo_ip().to_string()), s(r.hi_ip().to_string())],
        })),
        Elem::ProtoPorts(p, lo, hi) => {
            let ports = if lo == hi {
                num(*lo)
            } else {
                Expression::Range(Box::new(expr::Range {
                    range: [num(*lo), num(*hi)],
                }))
            };
            Expression::Named(NamedExpression::Concat(vec![s(p.nft_name()), ports]))
        }
        Elem::AddrProtoPort(ip, p, port) => Expression::Named(NamedExpression::Concat(vec![
            s(ip.to_string()),
            s(p.nft_name()),
            num(*port),
        ])),
        Elem::IfAddr(iface, ip) => Expression::Named(NamedExpression::Concat(vec![
            s(iface.clone()),
            s(ip.to_string()),
        ])),
    }
}

fn elements(set: &str, elems: impl Iterator<Item = Expression<'static>>) -> Element<'static> {
    Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: Cow::Owned(set.to_string()),
        elem: Cow::Owned(elems.collect()),
    }
}

fn payload(proto: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: proto.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn mtch(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(NftMatch { left, right, op })
}

fn proto_port() -> [Expression<'static>; 2] {
    [meta(MetaKey::L4proto), payload("th", "dport")]
}

fn set_ref(name: &str) -> Expression<'static> {
    s(format!("@{name}"))
}

fn statements(r: &RuleIr) -> Vec<Statement<'static>> {
    let mut out: Vec<Statement<'static>> = r
        .matches
        .iter()
        .map(|m| match m {
            Match::Addr(f, fam, set) => mtch(
                payload(fam.nft_proto(), f.as_str()),
                Operator::EQ,
                set_ref(set),
            ),
            Match::ProtoPort(set) => mtch(
                Expression::Named(NamedExpression::Concat(proto_port().to_vec())),
                Operator::EQ,
                set_ref(set),
            ),
            Match::AddrProtoPort(f, fam, set) => {
                let mut c = vec![payload(fam.nft_proto(), f.as_str())];
                c.extend(proto_port());
                mtch(
                    Expression::Named(NamedExpression::Concat(c)),
                    Operator::EQ,
                    set_ref(set),
                )
            }
        })
        .collect();
    if let Verdict::Log(l) = &r.verdict {
        out.push(Statement::Limit(Limit {
            rate: l.rate_per_second,
            rate_unit: None,
            per: Some("second".into()),
            burst: Some(l.burst),
            burst_unit: None,
            inv: None,
        }));
        out.push(Statement::Log(Some(Log {
            prefix: Some(Cow::Owned(r.origin.comment())),
            group: Some(u32::from(l.group)),
            ..Log::new(None)
        })));
        return out;
    }
    out.push(Statement::Counter(Counter::Anonymous(Some(
        AnonymousCounter::default(),
    ))));
    out.push(match &r.verdict {
        Verdict::Accept => Statement::Accept(None),
        Verdict::Return => Statement::Return(None),
        Verdict::Drop | Verdict::Log(_) => Statement::Drop(None),
        Verdict::Goto(c) => Statement::Goto(JumpTarget {
            target: Cow::Owned(c.clone()),
        }),
    });
    out
}

/// A policy chain's rule: statements, and its origin as comment.
fn policy_rule(chain: &str, r: &RuleIr) -> Rule<'static> {
    Rule {
        comment: Some(Cow::Owned(r.origin.comment())),
        ..rule(chain, statements(r))
    }
}

/// Rules of the `forward` and `input` base chains (fixed but for the prefix).
fn base_rules(prefix: &str) -> Vec<Rule<'static>> {
    let wildcard = || {
        mtch(
            meta(MetaKey::Iifname),
            Operator::EQ,
            s(format!("{prefix}*")),
        )
    };
    let spoof = |fam: Family| {
        mtch(
            Expression::Named(NamedExpression::Concat(vec![
                meta(MetaKey::Iifname),
                payload(fam.nft_proto(), "saddr"),
            ])),
            Operator::NEQ,
            set_ref(&format!("{SPOOF}{}", fam.tag())),
        )
    };
    let ct = |states: &[&str]| {
        let right = if states.len() == 1 {
            s(states[0])
        } else {
            Expression::List(states.iter().map(|x| s(*x)).collect())
        };
        mtch(
            Expression::Named(NamedExpression::CT(expr::CT {
                key: "state".into(),
                family: None,
                dir: None,
            })),
            Operator::IN,
            right,
        )
    };
    // Neighbour discovery and DAD come from link-local / unspecified sources.
    let not_link_local = mtch(
        payload("ip6", "saddr"),
        Operator::NEQ,
        Expression::Named(NamedExpression::Set(vec![
            expr::SetItem::Element(s("::")),
            expr::SetItem::Element(Expression::Named(NamedExpression::Prefix(expr::Prefix {
                addr: Box::new(s("fe80::")),
                len: 10,
            }))),
        ])),
    );
    vec![
        rule(
            FORWARD,
            vec![wildcard(), spoof(Family::V4), Statement::Drop(None)],
        ),
        rule(
            FORWARD,
            vec![wildcard(), spoof(Family::V6), Statement::Drop(None)],
        ),
        rule(
            FORWARD,
            vec![ct(&["established", "related"]), Statement::Accept(None)],
        ),
        rule(FORWARD, vec![ct(&["invalid"]), Statement::Drop(None)]),
        rule(FORWARD, vec![vmap(MetaKey::Iifname, EGRESS_MAP)]),
        rule(FORWARD, vec![vmap(MetaKey::Oifname, INGRESS_MAP)]),
        rule(
            INPUT,
            vec![wildcard(), spoof(Family::V4), Statement::Drop(None)],
        ),
        rule(
            INPUT,
            vec![
                wildcard(),
                not_link_local,
                spoof(Family::V6),
                Statement::Drop(None),
            ],
        ),
    ]
}

fn vmap(key: MetaKey, map: &str) -> Statement<'static> {
    Statement::VerdictMap(VerdictMap {
        key: meta(key),
        data: set_ref(map),
    })
}

fn map_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Egress => EGRESS_MAP,
        Direction::Ingress => INGRESS_MAP,
    }
}

/// `add map` of a dispatch map (`ifname : verdict`): raw JSON, the crate's
/// `SetType` has no `verdict`.
fn map_decl(dir: Direction) -> serde_json::Value {
    serde_json::json!({"add": {"map": {
        "family": "inet", "table": TABLE, "name": map_name(dir),
        "type": "ifname", "map": "verdict",
    }}})
}

/// `iface : jump chain` as a map element.
fn map_elem(iface: &str, chain: &str) -> Expression<'static> {
    Expression::List(vec![
        s(iface),
        Expression::Verdict(expr::Verdict::Jump(JumpTarget {
            target: Cow::Owned(chain.to_string()),
        })),
    ])
}

/// One transaction that replaces whatever `table inet margay` holds with
/// `rs`: `add table` (so the delete cannot fail), `delete table`, then the
/// whole new table. Packets see the old table or the new one, never a gap;
/// conntrack entries live outside the table, so established flows continue.
pub fn full(rs: &Ruleset) -> Batch {
    full_with(rs, true)
}

/// [`full`] with the sets declared empty when `with_elems` is false (what
/// [`full_json`] fills in as it writes).
pub fn full_with(rs: &Ruleset, with_elems: bool) -> Batch {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
    for (name, ir) in &rs.sets {
        b.add(NfListObject::Set(Box::new(set_decl(name, ir, with_elems))));
    }
    for name in rs.chains.keys() {
        b.add(NfListObject::Chain(chain(name)));
    }
    for (name, rules) in &rs.chains {
        for r in rules {
            b.add(NfListObject::Rule(policy_rule(name, r)));
        }
    }
    for dir in [Direction::Egress, Direction::Ingress] {
        b.raw(map_decl(dir));
        let elems: Vec<Expression<'static>> = rs
            .dispatch
            .iter()
            .filter_map(|(iface, d)| d.get(dir).as_ref().map(|c| map_elem(iface, c)))
            .collect();
        if !elems.is_empty() {
            b.add(NfListObject::Element(elements(
                map_name(dir),
                elems.into_iter(),
            )));
        }
    }
    b.add(NfListObject::Chain(base_chain(FORWARD, NfHook::Forward)));
    b.add(NfListObject::Chain(base_chain(INPUT, NfHook::Input)));
    for r in base_rules(&rs.iface_prefix) {
        b.add(NfListObject::Rule(r));
    }
    b.add(NfListObject::Chain(nat_chain()));
    for r in nat_rules() {
        b.add(NfListObject::Rule(r));
    }
    b
}

/// Counts of what a diff does (for logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub sets_added: usize,
    pub sets_deleted: usize,
    pub elems_added: usize,
    pub elems_deleted: usize,
    pub chains_added: usize,
    pub chains_replaced: usize,
    pub chains_deleted: usize,
    /// Dispatch map elements added / deleted (a replacement counts both).
    pub map_added: usize,
    pub map_deleted: usize,
}

impl DiffStats {
    pub fn is_empty(&self) -> bool {
        *self == DiffStats::default()
    }
}

/// Everything one incremental batch does, by name, with the new content
/// taken from a [`Ruleset`]. [`emit`] orders it.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Sets to create (with their elements).
    pub new_sets: BTreeSet<String>,
    /// Elements to add to / delete from existing sets.
    pub elem_add: BTreeMap<String, BTreeSet<Elem>>,
    pub elem_del: BTreeMap<String, BTreeSet<Elem>>,
    /// Chains to create / to flush and refill / to delete.
    pub new_chains: BTreeSet<String>,
    pub replaced_chains: BTreeSet<String>,
    pub deleted_chains: BTreeSet<String>,
    pub deleted_sets: BTreeSet<String>,
    /// Dispatch map keys that changed: (direction, iface) → did the key exist
    /// in the applied table. The new value comes from the ruleset.
    pub map: BTreeMap<(Direction, String), bool>,
}

impl Changes {
    /// How many objects and elements the changes touch (sets, chains,
    /// element adds and deletes, dispatch keys).
    pub fn weight(&self) -> usize {
        let elems =
            |m: &BTreeMap<String, BTreeSet<Elem>>| m.values().map(BTreeSet::len).sum::<usize>();
        self.new_sets.len()
            + elems(&self.elem_add)
            + elems(&self.elem_del)
            + self.new_chains.len()
            + self.replaced_chains.len()
            + self.deleted_chains.len()
            + self.deleted_sets.len()
            + self.map.len()
    }
}

/// Turns [`Changes`] into one transaction, new content taken from `rs`.
///
/// Order: new sets (with elements), element adds, new chains, replaced
/// chains (flush + add), dispatch, element deletes, deleted chains (flush +
/// delete), deleted sets: everything a rule references exists before the
/// rule, and nothing is deleted while referenced.
pub fn emit(c: &Changes, rs: &Ruleset) -> (Batch, DiffStats) {
    let mut st = DiffStats::default();
    let mut b = Batch::new();
    for name in &c.new_sets {
        if let Some(ir) = rs.sets.get(name) {
            st.sets_added += 1;
            b.add(NfListObject::Set(Box::new(set_decl(name, ir, true))));
        }
    }
    for (name, add) in &c.elem_add {
        if !add.is_empty() && !c.new_sets.contains(name) {
            st.elems_added += add.len();
            b.add(NfListObject::Element(elements(name, add.iter().map(elem))));
        }
    }
    let new_chains: Vec<(&String, &Vec<RuleIr>)> = c
        .new_chains
        .iter()
        .filter_map(|n| rs.chains.get(n).map(|r| (n, r)))
        .collect();
    for (name, _) in &new_chains {
        b.add(NfListObject::Chain(chain(name)));
    }
    for (name, rules) in &new_chains {
        st.chains_added += 1;
        for r in rules.iter() {
            b.add(NfListObject::Rule(policy_rule(name, r)));
        }
    }
    for name in c.replaced_chains.difference(&c.new_chains) {
        let Some(rules) = rs.chains.get(name) else {
            continue;
        };
        st.chains_replaced += 1;
        b.cmd(NfCmd::Flush(FlushObject::Chain(chain(name))));
        for r in rules {
            b.add(NfListObject::Rule(policy_rule(name, r)));
        }
    }
    // Map keys: a changed key is deleted, then added with its new target
    // (nftables refuses to add a key that exists with another value).
    for ((dir, iface), existed) in &c.map {
        if *existed {
            st.map_deleted += 1;
            b.delete(NfListObject::Element(elements(
                map_name(*dir),
                std::iter::once(s(iface.clone())),
            )));
        }
        let target = rs.dispatch.get(iface).and_then(|d| d.get(*dir).clone());
        if let Some(chain) = target {
            st.map_added += 1;
            b.add(NfListObject::Element(elements(
                map_name(*dir),
                std::iter::once(map_elem(iface, &chain)),
            )));
        }
    }
    for (name, del) in &c.elem_del {
        if !del.is_empty() && !c.deleted_sets.contains(name) {
            st.elems_deleted += del.len();
            b.delete(NfListObject::Element(elements(name, del.iter().map(elem))));
        }
    }
    for name in &c.deleted_chains {
        b.cmd(NfCmd::Flush(FlushObject::Chain(chain(name))));
    }
    for name in &c.deleted_chains {
        st.chains_deleted += 1;
        b.delete(NfListObject::Chain(chain(name)));
    }
    for name in &c.deleted_sets {
        st.sets_deleted += 1;
        b.delete(NfListObject::Set(Box::new(Set {
            name: Cow::Owned(name.clone()),
            table: TABLE.into(),
            family: NfFamily::INet,
            ..Set::default()
        })));
    }
    (b, st)
}

/// The commands that turn `old` into `new`, as one transaction, or `None`
/// when a full rebuild is needed (the base chains or a set's type differ).
pub fn diff(old: &Ruleset, new: &Ruleset) -> Option<(Batch, DiffStats)> {
    let c = changes(old, new)?;
    Some(emit(&c, new))
}

/// The [`Changes`] between two rulesets.
pub fn changes(old: &Ruleset, new: &Ruleset) -> Option<Changes> {
    if old.iface_prefix != new.iface_prefix {
        return None;
    }
    let mut c = Changes::default();
    let names: BTreeSet<&String> = old.sets.keys().chain(new.sets.keys()).collect();
    for name in names {
        match (old.sets.get(name), new.sets.get(name)) {
            (None, Some(_)) => {
                c.new_sets.insert(name.clone());
            }
            (Some(o), Some(n)) if o.kind != n.kind => return None,
            (Some(o), Some(n)) => {
                let add: BTreeSet<Elem> = n.elems.difference(&o.elems).cloned().collect();
                let del: BTreeSet<Elem> = o.elems.difference(&n.elems).cloned().collect();
                if !add.is_empty() {
                    c.elem_add.insert(name.clone(), add);
                }
                if !del.is_empty() {
                    c.elem_del.insert(name.clone(), del);
                }
            }
            (Some(_), None) => {
                c.deleted_sets.insert(name.clone());
            }
            (None, None) => {}
        }
    }
    let names: BTreeSet<&String> = old.chains.keys().chain(new.chains.keys()).collect();
    for name in names {
        match (old.chains.get(name), new.chains.get(name)) {
            (None, Some(_)) => {
                c.new_chains.insert(name.clone());
            }
            (Some(o), Some(n)) if o != n => {
                c.replaced_chains.insert(name.clone());
            }
            (Some(_), None) => {
                c.deleted_chains.insert(name.clone());
            }
            _ => {}
        }
    }
    let none = crate::ruleset::Dispatch::default();
    let ifaces: BTreeSet<&String> = old.dispatch.keys().chain(new.dispatch.keys()).collect();
    for iface in ifaces {
        let o = old.dispatch.get(iface).unwrap_or(&none);
        let n = new.dispatch.get(iface).unwrap_or(&none);
        for dir in [Direction::Egress, Direction::Ingress] {
            if o.get(dir) != n.get(dir) {
                c.map.insert((dir, iface.clone()), o.get(dir).is_some());
            }
        }
    }
    Some(c)
}

/// `{"nftables": [...]}` text of a batch.
pub fn to_json(b: &Batch) -> Result<String, serde_json::Error> {
    b.to_json()
}

/// The JSON text of [`full`]`(rs)` (the same document, as `nft -j -f -`
/// reads it), written without building the batch's element expressions:
/// each set element becomes its JSON expression only while it is written.
/// The first full rebuild of a large cluster holds ~200k elements; as
/// expression trees they were the agent's largest transient allocation.
pub fn full_json(rs: &Ruleset) -> Result<String, serde_json::Error> {
    serde_json::to_string(&FullDoc {
        rs,
        skeleton: full_with(rs, false),
    })
}

struct FullDoc<'a> {
    rs: &'a Ruleset,
    skeleton: Batch,
}

impl serde::Serialize for FullDoc<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeMap as _, SerializeSeq as _};
        struct Items<'a>(&'a FullDoc<'a>);
        impl serde::Serialize for Items<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let mut seq = ser.serialize_seq(Some(self.0.skeleton.items.len()))?;
                for item in &self.0.skeleton.items {
                    let filled = match item {
                        Item::Nft(nftables::schema::NfObject::CmdObject(NfCmd::Add(
                            NfListObject::Set(decl),
                        ))) => self
                            .0
                            .rs
                            .sets
                            .get(decl.name.as_ref())
                            .filter(|ir| !ir.elems.is_empty()),
                        _ => None,
                    };
                    match filled {
                        Some(ir) => {
                            // {"add": {"set": {<decl>..., "elem": [...]}}}
                            let Item::Nft(nftables::schema::NfObject::CmdObject(NfCmd::Add(
                                NfListObject::Set(decl),
                            ))) = item
                            else {
                                return Err(S::Error::custom("set declaration expected"));
                            };
                            seq.serialize_element(&AddSet { decl, ir })?;
                        }
                        None => seq.serialize_element(item)?,
                    }
                }
                seq.end()
            }
        }
        struct AddSet<'a> {
            decl: &'a Set<'static>,
            ir: &'a SetIr,
        }
        impl serde::Serialize for AddSet<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                struct Body<'a>(&'a AddSet<'a>);
                impl serde::Serialize for Body<'_> {
                    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                        let serde_json::Value::Object(fields) =
                            serde_json::to_value(self.0.decl).map_err(S::Error::custom)?
                        else {
                            return Err(S::Error::custom("a set declaration is a JSON object"));
                        };
                        let mut m = ser.serialize_map(Some(fields.len() + 1))?;
                        for (k, v) in &fields {
                            m.serialize_entry(k, v)?;
                        }
                        m.serialize_entry("elem", &Elems(&self.0.ir.elems))?;
                        m.end()
                    }
                }
                struct Set1<'a>(&'a AddSet<'a>);
                impl serde::Serialize for Set1<'_> {
                    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                        let mut m = ser.serialize_map(Some(1))?;
                        m.serialize_entry("set", &Body(self.0))?;
                        m.end()
                    }
                }
                let mut m = ser.serialize_map(Some(1))?;
                m.serialize_entry("add", &Set1(self))?;
                m.end()
            }
        }
        struct Elems<'a>(&'a BTreeSet<Elem>);
        impl serde::Serialize for Elems<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let mut seq = ser.serialize_seq(Some(self.0.len()))?;
                for e in self.0 {
                    seq.serialize_element(&elem(e))?;
                }
                seq.end()
            }
        }
        let mut m = ser.serialize_map(Some(1))?;
        m.serialize_entry("nftables", &Items(self))?;
        m.end()
    }
}
