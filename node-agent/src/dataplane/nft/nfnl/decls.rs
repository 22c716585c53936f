//! What this sink knows of the sets and maps it declared: each set's key
//! fields ([`Field`]) from its declaration ([`Decl`]), per table
//! ([`Declarations`]), learned from the policy crate's batch items as they
//! were applied (typed `nftables` schema objects; JSON for raw commands).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use policy::batch::Item;
use policy::nftables::schema::{
    FlushObject, NfCmd, NfListObject, NfObject, Set, SetType, SetTypeValue,
};
use policy::nftables::types::NfFamily;
use serde_json::Value;

use super::encode::{ElemValue, IFNAMSIZ};

/// One field of a set key, in nftables' datatype names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Ipv4,
    Ipv6,
    Ifname,
    InetProto,
    InetService,
}

impl Field {
    fn from_set_type(t: &SetType) -> Option<Field> {
        Some(match t {
            SetType::Ipv4Addr => Field::Ipv4,
            SetType::Ipv6Addr => Field::Ipv6,
            SetType::Ifname => Field::Ifname,
            SetType::InetProto => Field::InetProto,
            SetType::InetService => Field::InetService,
            _ => return None,
        })
    }

    fn from_name(s: &str) -> Option<Field> {
        Some(match s {
            "ipv4_addr" => Field::Ipv4,
            "ipv6_addr" => Field::Ipv6,
            "ifname" => Field::Ifname,
            "inet_proto" => Field::InetProto,
            "inet_service" => Field::InetService,
            _ => return None,
        })
    }

    /// Bytes the value occupies in the key (before register padding).
    pub(super) fn len(self) -> usize {
        match self {
            Field::Ipv4 => 4,
            Field::Ipv6 | Field::Ifname => 16,
            Field::InetProto => 1,
            Field::InetService => 2,
        }
    }

    pub(super) fn encode(self, v: &impl ElemValue, out: &mut Vec<u8>) -> Option<()> {
        match self {
            Field::Ipv4 => out.extend(v.str()?.parse::<Ipv4Addr>().ok()?.octets()),
            Field::Ipv6 => out.extend(v.str()?.parse::<Ipv6Addr>().ok()?.octets()),
            Field::Ifname => {
                let name = v.str()?.as_bytes();
                if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(&0) {
                    return None;
                }
                out.extend_from_slice(name);
                out.resize(out.len() + IFNAMSIZ - name.len(), 0);
            }
            Field::InetProto => {
                let p = match (v.num(), v.str()) {
                    (Some(n), _) => u8::try_from(n).ok()?,
                    (None, Some(s)) => match s {
                        "icmp" => 1,
                        "tcp" => 6,
                        "udp" => 17,
                        "ipv6-icmp" | "icmpv6" => 58,
                        "sctp" => 132,
                        _ => return None,
                    },
                    (None, None) => return None,
                };
                out.push(p);
            }
            Field::InetService => {
                let p = u16::try_from(v.num()?).ok()?;
                out.extend(p.to_be_bytes());
            }
        }
        Some(())
    }
}

/// What this sink knows of a set from its declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decl {
    /// Key fields; a verdict map if `verdict`.
    Plain { key: Vec<Field>, verdict: bool },
    /// Flags, timeouts, data types we do not encode: nft only.
    Other,
}

impl Decl {
    /// A typed set declaration (the engine's `add set`).
    fn of_set(s: &Set<'_>) -> Decl {
        // Interval sets need range elements; timeouts and the like change
        // what an element is. nft handles those.
        let plain = s.flags.is_none()
            && s.timeout.is_none()
            && s.gc_interval.is_none()
            && s.size.is_none()
            && s.policy.is_none();
        let key = match &s.set_type {
            SetTypeValue::Single(t) => Field::from_set_type(t).map(|f| vec![f]),
            SetTypeValue::Concatenated(ts) => ts.iter().map(Field::from_set_type).collect(),
        };
        match key {
            Some(key) if plain => Decl::Plain {
                key,
                verdict: false,
            },
            _ => Decl::Other,
        }
    }

    /// A libnftables JSON set or map declaration (raw commands: the schema
    /// has no verdict maps).
    fn parse(body: &serde_json::Map<String, Value>, is_map: bool) -> Decl {
        let plain = || -> Option<Decl> {
            // Interval sets need range elements; timeouts and the like
            // change what an element is. nft handles those.
            for k in ["flags", "timeout", "gc-interval", "size", "policy"] {
                if body.get(k).is_some_and(|v| !v.is_null()) {
                    return None;
                }
            }
            let key = match body.get("type")? {
                Value::String(s) => vec![Field::from_name(s)?],
                Value::Array(a) => a
                    .iter()
                    .map(|t| t.as_str().and_then(Field::from_name))
                    .collect::<Option<Vec<_>>>()?,
                _ => return None,
            };
            let verdict = match body.get("map") {
                None if !is_map => false,
                Some(Value::String(m)) if is_map && m == "verdict" => true,
                _ => return None,
            };
            Some(Decl::Plain { key, verdict })
        };
        plain().unwrap_or(Decl::Other)
    }
}

/// The sets and maps declared by batches this sink applied, per
/// `(family, table, name)`.
#[derive(Debug, Default)]
pub struct Declarations(HashMap<(String, String, String), Decl>);

pub(super) fn str_of<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

/// nft's name of a family (the JSON `family` value).
fn family_name(f: NfFamily) -> &'static str {
    match f {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

impl Declarations {
    /// Records what one applied batch item declared or removed.
    pub fn observe_item(&mut self, item: &Item) {
        match item {
            Item::Nft(o) => self.observe_nf(o),
            Item::Raw(v) => self.observe_command(v),
        }
    }

    /// [`Declarations::observe_item`] for a typed command.
    fn observe_nf(&mut self, o: &NfObject<'_>) {
        let NfObject::CmdObject(cmd) = o else {
            return;
        };
        let key = |f: NfFamily, t: &str, n: &str| {
            (family_name(f).to_string(), t.to_string(), n.to_string())
        };
        match cmd {
            NfCmd::Add(l) | NfCmd::Create(l) => match l {
                NfListObject::Set(s) => {
                    self.0
                        .insert(key(s.family, &s.table, &s.name), Decl::of_set(s));
                }
                // A typed map cannot be a verdict map: nothing we encode.
                NfListObject::Map(m) => {
                    self.0.insert(key(m.family, &m.table, &m.name), Decl::Other);
                }
                _ => {}
            },
            NfCmd::Delete(l) => match l {
                NfListObject::Set(s) => {
                    self.0.remove(&key(s.family, &s.table, &s.name));
                }
                NfListObject::Map(m) => {
                    self.0.remove(&key(m.family, &m.table, &m.name));
                }
                NfListObject::Table(t) => self.forget_table(family_name(t.family), &t.name),
                _ => {}
            },
            NfCmd::Flush(FlushObject::Ruleset(_)) => self.0.clear(),
            _ => {}
        }
    }

    /// Records what an applied batch declared or removed. Anything that
    /// could change a set in a way not followed here forgets the table.
    pub fn observe(&mut self, batch: &Value) {
        match batch.get("nftables").and_then(Value::as_array) {
            Some(items) => items.iter().for_each(|i| self.observe_command(i)),
            None => self.0.clear(),
        }
    }

    /// [`Declarations::observe`] for one command object.
    pub fn observe_command(&mut self, item: &Value) {
        let Some((verb, obj)) = item.as_object().and_then(|o| o.iter().next()) else {
            return;
        };
        let Some((kind, body)) = obj.as_object().and_then(|o| o.iter().next()) else {
            return;
        };
        if (verb.as_str(), kind.as_str()) == ("flush", "ruleset") {
            self.0.clear();
            return;
        }
        let Some(body) = body.as_object() else {
            return;
        };
        let family = str_of(body, "family").unwrap_or("ip").to_string();
        match (verb.as_str(), kind.as_str()) {
            ("add" | "create", "set" | "map") => {
                if let (Some(table), Some(name)) = (str_of(body, "table"), str_of(body, "name")) {
                    let decl = Decl::parse(body, kind == "map");
                    self.0
                        .insert((family, table.to_string(), name.to_string()), decl);
                }
            }
            ("delete" | "destroy", "set" | "map") => {
                match (str_of(body, "table"), str_of(body, "name")) {
                    (Some(table), Some(name)) => {
                        self.0
                            .remove(&(family, table.to_string(), name.to_string()));
                    }
                    // By handle: we cannot tell which.
                    (Some(table), None) => self.forget_table(&family, table),
                    _ => self.0.clear(),
                }
            }
            ("delete" | "destroy", "table") => match str_of(body, "name") {
                Some(table) => self.forget_table(&family, table),
                None => self.0.clear(),
            },
            _ => {}
        }
    }

    pub(super) fn forget_table(&mut self, family: &str, table: &str) {
        self.0.retain(|(f, t, _), _| !(f == family && t == table));
    }

    pub(super) fn get(&self, family: &str, table: &str, name: &str) -> Option<&Decl> {
        self.0
            .get(&(family.to_string(), table.to_string(), name.to_string()))
    }

    /// Number of sets and maps known.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nothing known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
