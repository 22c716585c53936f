//! The nfnetlink encoding of an element-only batch: the set declarations
//! this sink applied ([`Declarations`], in `decls.rs`) give each set's key
//! type, and
//! [`encode_items`] writes NEWSETELEM / DELSETELEM messages between
//! BATCH_BEGIN and BATCH_END.
//!
//! Both read the policy crate's batch items as they are: its typed
//! `nftables` schema objects directly (what the engine emits for sets and
//! elements), and libnftables JSON only for the raw commands the schema
//! cannot express (verdict map declarations). One encoder serves both
//! through [`ElemValue`]; nothing is serialized to JSON to be parsed again.

use policy::batch::Item;
use policy::nftables::expr::{Expression, NamedExpression, Verdict};
use policy::nftables::schema::{Element, NfCmd, NfListObject, NfObject};
use policy::nftables::types::NfFamily;
use serde_json::Value;

use super::decls::{Decl, Declarations, Field, str_of};

// include/uapi/linux/netfilter/nfnetlink.h, nf_tables.h, netlink.h
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_DELSETELEM: u16 = 14;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLA_F_NESTED: u16 = 0x8000;
pub(super) const NFPROTO_INET: u8 = 1;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
pub(super) const NF_DROP: i32 = 0;
pub(super) const NF_ACCEPT: i32 = 1;
pub(super) const NFT_CONTINUE: i32 = -1;
pub(super) const NFT_JUMP: i32 = -3;
pub(super) const NFT_GOTO: i32 = -4;
pub(super) const NFT_RETURN: i32 = -5;
pub(super) const IFNAMSIZ: usize = 16;

/// Larger batches (a label change moving thousands of addresses) go to nft:
/// one datagram must carry the whole transaction.
pub(super) const MAX_BATCH_BYTES: usize = 128 << 10;

/// A netlink message under construction.
pub(super) struct Msg<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Msg<'a> {
    fn begin(buf: &'a mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let start = buf.len();
        buf.extend(0u32.to_ne_bytes()); // length, patched in `end`
        buf.extend(ty.to_ne_bytes());
        buf.extend(flags.to_ne_bytes());
        buf.extend(seq.to_ne_bytes());
        buf.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
        // struct nfgenmsg
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend(res_id.to_be_bytes());
        Msg { buf, start }
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend((len as u16).to_ne_bytes());
        self.buf.extend(ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        pad(self.buf);
    }

    fn attr_str(&mut self, ty: u16, s: &str) {
        let mut p = Vec::with_capacity(s.len() + 1);
        p.extend_from_slice(s.as_bytes());
        p.push(0);
        self.attr(ty, &p);
    }

    /// Opens a nested attribute; close it with [`Msg::close`].
    fn open(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend(0u16.to_ne_bytes());
        self.buf.extend((ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn close(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn end(self) {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

pub(super) fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// The key of one element: every field padded to 32 bits when the key is a
/// concatenation (nft's register layout), the bare value otherwise.
pub(super) fn encode_key<V: ElemValue>(key: &[Field], v: &V) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(32);
    if let [single] = key {
        single.encode(v, &mut out)?;
        return Some(out);
    }
    let parts = v.concat()?;
    if parts.len() != key.len() {
        return None;
    }
    for (f, p) in key.iter().zip(parts) {
        let before = out.len();
        f.encode(p, &mut out)?;
        debug_assert_eq!(out.len() - before, f.len());
        pad(&mut out);
    }
    Some(out)
}

/// An element value as the encoder reads it: a typed `nftables` expression
/// (the engine's items) or libnftables JSON (raw items).
pub(super) trait ElemValue: Sized {
    /// A string (address, interface name, protocol name).
    fn str(&self) -> Option<&str>;
    /// A non-negative integer.
    fn num(&self) -> Option<u64>;
    /// The parts of a concatenation.
    fn concat(&self) -> Option<&[Self]>;
    /// A list; `[key, data]` is a map element.
    fn list(&self) -> Option<&[Self]>;
    /// A verdict: its code and, for jump / goto, the chain.
    fn verdict(&self) -> Option<(i32, Option<&str>)>;
}

impl ElemValue for Expression<'_> {
    fn str(&self) -> Option<&str> {
        match self {
            Expression::String(s) => Some(s),
            _ => None,
        }
    }
    fn num(&self) -> Option<u64> {
        match self {
            Expression::Number(n) => Some(u64::from(*n)),
            _ => None,
        }
    }
    fn concat(&self) -> Option<&[Self]> {
        match self {
            Expression::Named(NamedExpression::Concat(parts)) => Some(parts),
            _ => None,
        }
    }
    fn list(&self) -> Option<&[Self]> {
        match self {
            Expression::List(l) => Some(l),
            _ => None,
        }
    }
    fn verdict(&self) -> Option<(i32, Option<&str>)> {
        let Expression::Verdict(v) = self else {
            return None;
        };
        Some(match v {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Continue => (NFT_CONTINUE, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Jump(t) => (NFT_JUMP, Some(&t.target)),
            Verdict::Goto(t) => (NFT_GOTO, Some(&t.target)),
        })
    }
}

impl ElemValue for Value {
    fn str(&self) -> Option<&str> {
        self.as_str()
    }
    fn num(&self) -> Option<u64> {
        self.as_u64()
    }
    fn concat(&self) -> Option<&[Self]> {
        self.get("concat")?.as_array().map(Vec::as_slice)
    }
    fn list(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
    /// `{"jump": {"target": "c"}}`, `{"accept": null}`, ...
    fn verdict(&self) -> Option<(i32, Option<&str>)> {
        let (k, body) = self.as_object()?.iter().next()?;
        let target = || body.get("target").and_then(Value::as_str);
        Some(match k.as_str() {
            "accept" => (NF_ACCEPT, None),
            "drop" => (NF_DROP, None),
            "continue" => (NFT_CONTINUE, None),
            "return" => (NFT_RETURN, None),
            "jump" => (NFT_JUMP, Some(target()?)),
            "goto" => (NFT_GOTO, Some(target()?)),
            _ => return None,
        })
    }
}

/// One `add element` / `delete element` command, from either form.
pub(super) struct ElemCmd<'a, V> {
    add: bool,
    /// The command's family is `inet` (the only one encoded).
    inet: bool,
    table: &'a str,
    set: &'a str,
    elems: &'a [V],
}

/// A typed command, if it adds or deletes elements.
fn nf_cmd<'a, 'b>(o: &'a NfObject<'b>) -> Option<ElemCmd<'a, Expression<'b>>> {
    let cmd = |add: bool, e: &'a Element<'b>| ElemCmd {
        add,
        inet: e.family == NfFamily::INet,
        table: &e.table,
        set: &e.name,
        elems: &e.elem,
    };
    match o {
        NfObject::CmdObject(NfCmd::Add(NfListObject::Element(e))) => Some(cmd(true, e)),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Element(e))) => Some(cmd(false, e)),
        _ => None,
    }
}

/// A libnftables JSON command, if it adds or deletes elements.
fn json_cmd(item: &Value) -> Option<ElemCmd<'_, Value>> {
    let (verb, obj) = item.as_object()?.iter().next()?;
    let add = match verb.as_str() {
        "add" => true,
        "delete" => false,
        _ => return None,
    };
    let body = obj.get("element")?.as_object()?;
    Some(ElemCmd {
        add,
        inet: str_of(body, "family")? == "inet",
        table: str_of(body, "table")?,
        set: str_of(body, "name")?,
        elems: body.get("elem")?.as_array()?,
    })
}

/// An element batch in nfnetlink form.
#[derive(Debug)]
pub struct Encoded {
    pub(super) bytes: Vec<u8>,
    pub(super) first_seq: u32,
    /// Element messages (each acknowledged), between BEGIN and END.
    pub(super) messages: u32,
}

/// Encodes the policy crate's batch items if every one adds or deletes
/// elements of a set this sink knows as plain; `None` sends them to nft.
pub fn encode_items(items: &[Item], decls: &Declarations, first_seq: u32) -> Option<Encoded> {
    let mut w = Writer::begin(first_seq, items.len())?;
    for item in items {
        match item {
            Item::Nft(o) => w.element_cmd(nf_cmd(o)?, decls)?,
            Item::Raw(v) => w.element_cmd(json_cmd(v)?, decls)?,
        }
    }
    Some(w.finish())
}

/// [`encode_items`] of a libnftables JSON document (`{"nftables": [...]}`).
pub fn encode(batch: &Value, decls: &Declarations, first_seq: u32) -> Option<Encoded> {
    let items = batch.get("nftables")?.as_array()?;
    let mut w = Writer::begin(first_seq, items.len())?;
    for item in items {
        w.element_cmd(json_cmd(item)?, decls)?;
    }
    Some(w.finish())
}

/// A transaction being written.
struct Writer {
    bytes: Vec<u8>,
    first_seq: u32,
    seq: u32,
}

impl Writer {
    /// BATCH_BEGIN; `None` for an empty batch.
    fn begin(first_seq: u32, items: usize) -> Option<Writer> {
        if items == 0 {
            return None;
        }
        let mut bytes = Vec::with_capacity(256 + 128 * items);
        Msg::begin(
            &mut bytes,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .end();
        Some(Writer {
            bytes,
            first_seq,
            seq: first_seq,
        })
    }

    /// One NEWSETELEM / DELSETELEM; `None` if it cannot be encoded.
    fn element_cmd<V: ElemValue>(
        &mut self,
        cmd: ElemCmd<'_, V>,
        decls: &Declarations,
    ) -> Option<()> {
        let (ty, flags) = if cmd.add {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, 0)
        };
        if !cmd.inet {
            return None;
        }
        let Decl::Plain { key, verdict } = decls.get("inet", cmd.table, cmd.set)? else {
            return None;
        };
        if cmd.elems.is_empty() {
            return None;
        }
        self.seq = self.seq.wrapping_add(1);
        let msg_type = (NFNL_SUBSYS_NFTABLES << 8) | ty;
        let mut m = Msg::begin(
            &mut self.bytes,
            msg_type,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            self.seq,
            NFPROTO_INET,
            0,
        );
        m.attr_str(NFTA_SET_ELEM_LIST_TABLE, cmd.table);
        m.attr_str(NFTA_SET_ELEM_LIST_SET, cmd.set);
        let list = m.open(NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in cmd.elems {
            // A map element is `[key, data]`; a delete may give the key alone.
            let (k, data) = match (e.list(), *verdict) {
                (Some([k, d]), true) => (k, Some(d)),
                (_, true) if ty == NFT_MSG_DELSETELEM => (e, None),
                (Some(_), _) | (_, true) => return None,
                _ => (e, None),
            };
            let keyb = encode_key(key, k)?;
            let el = m.open(NFTA_LIST_ELEM);
            let ka = m.open(NFTA_SET_ELEM_KEY);
            m.attr(NFTA_DATA_VALUE, &keyb);
            m.close(ka);
            if let Some(d) = data.filter(|_| ty == NFT_MSG_NEWSETELEM) {
                let (code, chain) = d.verdict()?;
                let da = m.open(NFTA_SET_ELEM_DATA);
                let va = m.open(NFTA_DATA_VERDICT);
                m.attr(NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(c) = chain {
                    m.attr_str(NFTA_VERDICT_CHAIN, c);
                }
                m.close(va);
                m.close(da);
            }
            m.close(el);
        }
        m.close(list);
        m.end();
        (self.bytes.len() <= MAX_BATCH_BYTES).then_some(())
    }

    /// BATCH_END.
    fn finish(mut self) -> Encoded {
        let messages = self.seq.wrapping_sub(self.first_seq);
        Msg::begin(
            &mut self.bytes,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.seq.wrapping_add(1),
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .end();
        Encoded {
            bytes: self.bytes,
            first_seq: self.first_seq,
            messages,
        }
    }
}
