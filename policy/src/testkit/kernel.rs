//! A model of what the kernel does with our nftables JSON batches: enough
//! to check that a sequence of diffs is accepted (every reference exists,
//! nothing deleted while referenced or absent) and ends in the same table as
//! a full rebuild. Each batch is a transaction: on error nothing changes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// A set or map: declaration (type, flags, map type) and canonical element
/// texts; for a map, key text → data text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetModel {
    pub decl: String,
    pub elems: BTreeSet<String>,
    pub map: Option<BTreeMap<String, String>>,
}

/// A chain: base-chain declaration (if any) and rules (canonical texts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainModel {
    pub base: Option<String>,
    pub rules: Vec<String>,
}

/// One `inet margay`-like table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableModel {
    pub sets: BTreeMap<String, SetModel>,
    pub chains: BTreeMap<String, ChainModel>,
}

/// The tables of one network namespace, keyed by (family, name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kernel {
    pub tables: BTreeMap<(String, String), TableModel>,
}

fn text(v: &Value) -> String {
    v.to_string()
}

fn field<'a>(o: &'a Value, k: &str) -> Result<&'a Value, String> {
    o.get(k).ok_or_else(|| format!("missing {k:?} in {o}"))
}

fn str_field(o: &Value, k: &str) -> Result<String, String> {
    field(o, k)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{k:?} is not a string in {o}"))
}

fn key(o: &Value) -> Result<(String, String), String> {
    let fam = str_field(o, "family")?;
    let table = match o.get("table") {
        Some(t) => t.as_str().map(str::to_string).ok_or("table not a string")?,
        None => str_field(o, "name")?,
    };
    Ok((fam, table))
}

/// Set names (`@x`) and chain names (jump/goto targets) a rule refers to.
fn refs(v: &Value, sets: &mut BTreeSet<String>, chains: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            if let Some(n) = s.strip_prefix('@') {
                sets.insert(n.to_string());
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, sets, chains)),
        Value::Object(o) => {
            for (k, x) in o {
                if (k == "jump" || k == "goto")
                    && let Some(t) = x.get("target").and_then(Value::as_str)
                {
                    chains.insert(t.to_string());
                }
                refs(x, sets, chains);
            }
        }
        _ => {}
    }
}

impl TableModel {
    fn referenced(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut s, mut c) = (BTreeSet::new(), BTreeSet::new());
        for ch in self.chains.values() {
            for r in &ch.rules {
                if let Ok(v) = serde_json::from_str::<Value>(r) {
                    refs(&v, &mut s, &mut c);
                }
            }
        }
        // Verdict map data (jump/goto) holds chains too.
        for set in self.sets.values() {
            for data in set.map.iter().flat_map(|m| m.values()) {
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    refs(&v, &mut s, &mut c);
                }
            }
        }
        (s, c)
    }
}

/// Adds one element; for a map, `[key, data]` whose jump/goto target must
/// exist, and an existing key must carry the same data (else EEXIST).
fn add_elem(s: &mut SetModel, e: &Value, chains: &BTreeSet<String>) -> Result<(), String> {
    let Some(m) = &mut s.map else {
        s.elems.insert(text(e));
        return Ok(());
    };
    let kv = e
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or("map element is not [key, data]")?;
    let (mut sets, mut targets) = (BTreeSet::new(), BTreeSet::new());
    refs(&kv[1], &mut sets, &mut targets);
    if let Some(c) = targets.iter().find(|c| !chains.contains(*c)) {
        return Err(format!("map element jumps to missing chain {c}"));
    }
    let (k, d) = (text(&kv[0]), text(&kv[1]));
    match m.get(&k) {
        Some(old) if *old != d => Err(format!("key {k} exists with other data (EEXIST)")),
        _ => {
            m.insert(k, d);
            Ok(())
        }
    }
}

impl Kernel {
    /// Applies one batch (`{"nftables": [...]}`) as a transaction.
    pub fn apply(&mut self, batch: &Value) -> Result<(), String> {
        let mut next = self.clone();
        let cmds = batch
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or("not an nftables document")?;
        for (i, cmd) in cmds.iter().enumerate() {
            next.command(cmd)
                .map_err(|e| format!("command {i} {cmd}: {e}"))?;
        }
        *self = next;
        Ok(())
    }

    fn table(&mut self, k: &(String, String)) -> Result<&mut TableModel, String> {
        self.tables
            .get_mut(k)
            .ok_or_else(|| format!("no table {k:?} (ENOENT)"))
    }

    fn command(&mut self, cmd: &Value) -> Result<(), String> {
        let obj = cmd.as_object().ok_or("command is not an object")?;
        let (verb, body) = obj.iter().next().ok_or("empty command")?;
        let (kind, o) = body
            .as_object()
            .and_then(|b| b.iter().next())
            .ok_or("empty command body")?;
        match (verb.as_str(), kind.as_str()) {
            ("add", "table") => {
                self.tables.entry(key(o)?).or_default();
            }
            ("delete", "table") => {
                self.tables
                    .remove(&key(o)?)
                    .ok_or("delete of a missing table (ENOENT)")?;
            }
            ("add", "set") | ("add", "map") => {
                let t = self.table(&key(o)?)?;
                let name = str_field(o, "name")?;
                let is_map = kind == "map";
                let decl = format!(
                    "{} {} {}",
                    text(field(o, "type")?),
                    o.get("flags").map(text).unwrap_or_default(),
                    o.get("map").map(text).unwrap_or_default()
                );
                if is_map != o.get("map").is_some() {
                    return Err("a map needs \"map\", a set must not have it".into());
                }
                if !t.sets.contains_key(&name) {
                    t.sets.insert(
                        name.clone(),
                        SetModel {
                            decl: decl.clone(),
                            elems: BTreeSet::new(),
                            map: is_map.then(BTreeMap::new),
                        },
                    );
                }
                let chains: BTreeSet<String> = t.chains.keys().cloned().collect();
                let s = t.sets.get_mut(&name).ok_or("set vanished")?;
                if s.decl != decl {
                    return Err(format!("set {name} exists with another type"));
                }
                for e in o
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    add_elem(s, e, &chains)?;
                }
            }
            ("delete", "set") => {
                let t = self.table(&key(o)?)?;
                let name = str_field(o, "name")?;
                if t.referenced().0.contains(&name) {
                    return Err(format!("set {name} is in use (EBUSY)"));
                }
                t.sets
                    .remove(&name)
                    .ok_or("delete of a missing set (ENOENT)")?;
            }
            ("add", "element") | ("delete", "element") => {
                let t = self.table(&key(o)?)?;
                let name = str_field(o, "name")?;
                let chains: BTreeSet<String> = t.chains.keys().cloned().collect();
                let s = t
                    .sets
                    .get_mut(&name)
                    .ok_or_else(|| format!("no set {name} (ENOENT)"))?;
                let elems = field(o, "elem")?.as_array().ok_or("elem is not a list")?;
                for e in elems {
                    if verb == "add" {
                        add_elem(s, e, &chains)?;
                    } else if let Some(m) = &mut s.map {
                        // Deleted by key (a bare key, or [key, data]).
                        let k = match e.as_array() {
                            Some(kv) => kv.first().map(text).unwrap_or_default(),
                            None => text(e),
                        };
                        if m.remove(&k).is_none() {
                            return Err(format!("key {k} not in map {name} (ENOENT)"));
                        }
                    } else if !s.elems.remove(&text(e)) {
                        return Err(format!("element {e} not in set {name} (ENOENT)"));
                    }
                }
            }
            ("add", "chain") => {
                let t = self.table(&key(o)?)?;
                let name = str_field(o, "name")?;
                let base = o.get("hook").map(|h| {
                    format!(
                        "{} {} {}",
                        text(h),
                        o.get("prio").map(text).unwrap_or_default(),
                        o.get("policy").map(text).unwrap_or_default()
                    )
                });
                t.chains.entry(name).or_insert(ChainModel {
                    base,
                    rules: Vec::new(),
                });
            }
            ("flush", "chain") => {
                let t = self.table(&key(o)?)?;
                let name = str_field(o, "name")?;
                t.chains
                    .get_mut(&name)
                    .ok_or_else(|| format!("no chain {name} (ENOENT)"))?
                    .rules
                    .clear();
            }
            ("delete", "chain") => {
                let t = self.table(&key(o)?)?;
                let name = str_field(o, "name")?;
                let c = t
                    .chains
                    .get(&name)
                    .ok_or_else(|| format!("no chain {name} (ENOENT)"))?;
                if !c.rules.is_empty() {
                    return Err(format!("chain {name} is not empty (EBUSY)"));
                }
                if t.referenced().1.contains(&name) {
                    return Err(format!("chain {name} is in use (EBUSY)"));
                }
                t.chains.remove(&name);
            }
            ("add", "rule") => {
                let t = self.table(&key(o)?)?;
                let chain = str_field(o, "chain")?;
                let expr = field(o, "expr")?;
                let (mut sets, mut chains) = (BTreeSet::new(), BTreeSet::new());
                refs(expr, &mut sets, &mut chains);
                if let Some(s) = sets.iter().find(|s| !t.sets.contains_key(*s)) {
                    return Err(format!("rule refers to missing set {s}"));
                }
                if let Some(c) = chains.iter().find(|c| !t.chains.contains_key(*c)) {
                    return Err(format!("rule refers to missing chain {c}"));
                }
                t.chains
                    .get_mut(&chain)
                    .ok_or_else(|| format!("no chain {chain} (ENOENT)"))?
                    .rules
                    .push(text(expr));
            }
            (v, k) => return Err(format!("unsupported command {v} {k}")),
        }
        Ok(())
    }
}
