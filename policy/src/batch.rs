//! One nftables transaction: commands in the `nftables` crate's JSON schema
//! types, plus the few commands that crate cannot express yet (declaring a
//! verdict map: its `SetType` has no `verdict`), carried as raw JSON.

use nftables::schema::{NfCmd, NfListObject, NfObject};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// One command of a [`Batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Nft(NfObject<'static>),
    /// A command object in libnftables JSON (e.g. `{"add": {"map": …}}`).
    Raw(serde_json::Value),
}

impl Serialize for Item {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::Nft(o) => o.serialize(s),
            Item::Raw(v) => v.serialize(s),
        }
    }
}

/// Commands applied as one transaction (`{"nftables": [...]}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub items: Vec<Item>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn add(&mut self, o: NfListObject<'static>) {
        self.items
            .push(Item::Nft(NfObject::CmdObject(NfCmd::Add(o))));
    }

    pub fn delete(&mut self, o: NfListObject<'static>) {
        self.items
            .push(Item::Nft(NfObject::CmdObject(NfCmd::Delete(o))));
    }

    pub fn cmd(&mut self, c: NfCmd<'static>) {
        self.items.push(Item::Nft(NfObject::CmdObject(c)));
    }

    pub fn raw(&mut self, v: serde_json::Value) {
        self.items.push(Item::Raw(v));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The JSON document `nft -j -f -` reads (one line: no raw newlines).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Items<'a>(&'a [Item]);
        impl Serialize for Items<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for i in self.0 {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
        }
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("nftables", &Items(&self.items))?;
        m.end()
    }
}
