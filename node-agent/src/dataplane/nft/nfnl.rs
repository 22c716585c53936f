//! The hot path of the policy dataplane in nf_tables' own netlink protocol:
//! a batch that only adds or deletes elements of plain sets and verdict
//! maps (every pod ADD and DEL on a node that already has pods) goes to the
//! kernel as one nfnetlink transaction from this process, without `nft`.
//!
//! Why: through the persistent `nft -j -i` session such a batch costs
//! 0.15 ms on an idle machine but 0.8 ms while a pod is being wired (nft
//! reads its input one byte per syscall, refills its cache with four
//! netlink dumps per batch and runs a sentinel transaction; every step
//! competes for the CPU with the CNI plugin). Natively it is one `send` and
//! one `recv`.
//!
//! Everything else (tables, chains, rules, set declarations, interval sets)
//! still goes through `nft`, and so does any element batch this module
//! cannot express or the kernel refuses: [`FastSink`] falls back to the
//! session, so the worst case is the old speed, never a different result.
//!
//! ```text
//!  Batch ─► element-only, every set declared plain? ─yes─► NEWSETELEM/DELSETELEM
//!             │ no                                          in BATCH_BEGIN..END
//!             ▼                                             │ refused
//!        nft session ◄──────────────────────────────────────┘
//! ```
//!
//! Key types come from the declarations this sink itself applied (`add set`
//! / `add map` in earlier batches; the engine's first batch is always a full
//! rebuild), never from guessing at element values.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use policy::batch::Item;
use policy::{Batch, NftSink};
use serde_json::Value;

use super::{NftError, NftSession};

// include/uapi/linux/netfilter/nfnetlink.h, nf_tables.h, netlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_CONTINUE: i32 = -1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
const IFNAMSIZ: usize = 16;

/// Larger batches (a label change moving thousands of addresses) go to nft:
/// one datagram must carry the whole transaction.
const MAX_BATCH_BYTES: usize = 128 << 10;
/// How long the kernel may take to answer a transaction.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// One field of a set key, in nftables' datatype names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Ipv4,
    Ipv6,
    Ifname,
    InetProto,
    InetService,
}

impl Field {
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
    fn len(self) -> usize {
        match self {
            Field::Ipv4 => 4,
            Field::Ipv6 | Field::Ifname => 16,
            Field::InetProto => 1,
            Field::InetService => 2,
        }
    }

    fn encode(self, v: &Value, out: &mut Vec<u8>) -> Option<()> {
        match self {
            Field::Ipv4 => out.extend(v.as_str()?.parse::<Ipv4Addr>().ok()?.octets()),
            Field::Ipv6 => out.extend(v.as_str()?.parse::<Ipv6Addr>().ok()?.octets()),
            Field::Ifname => {
                let name = v.as_str()?.as_bytes();
                if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(&0) {
                    return None;
                }
                out.extend_from_slice(name);
                out.resize(out.len() + IFNAMSIZ - name.len(), 0);
            }
            Field::InetProto => {
                let p = match v {
                    Value::Number(n) => u8::try_from(n.as_u64()?).ok()?,
                    Value::String(s) => match s.as_str() {
                        "icmp" => 1,
                        "tcp" => 6,
                        "udp" => 17,
                        "ipv6-icmp" | "icmpv6" => 58,
                        "sctp" => 132,
                        _ => return None,
                    },
                    _ => return None,
                };
                out.push(p);
            }
            Field::InetService => {
                let p = u16::try_from(v.as_u64()?).ok()?;
                out.extend(p.to_be_bytes());
            }
        }
        Some(())
    }
}

/// What this sink knows of a set from its declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decl {
    /// Key fields; a verdict map if `verdict`.
    Plain { key: Vec<Field>, verdict: bool },
    /// Flags, timeouts, data types we do not encode: nft only.
    Other,
}

impl Decl {
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

fn str_of<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

impl Declarations {
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

    fn forget_table(&mut self, family: &str, table: &str) {
        self.0.retain(|(f, t, _), _| !(f == family && t == table));
    }

    fn get(&self, family: &str, table: &str, name: &str) -> Option<&Decl> {
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

/// A netlink message under construction.
struct Msg<'a> {
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

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// The key of one element: every field padded to 32 bits when the key is a
/// concatenation (nft's register layout), the bare value otherwise.
fn encode_key(key: &[Field], v: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(32);
    if let [single] = key {
        single.encode(v, &mut out)?;
        return Some(out);
    }
    let parts = v.get("concat")?.as_array()?;
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

/// `{"jump": {"target": "c"}}`, `{"accept": null}`, ...
fn encode_verdict(v: &Value) -> Option<(i32, Option<&str>)> {
    let (k, body) = v.as_object()?.iter().next()?;
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

/// An element batch in nfnetlink form.
#[derive(Debug)]
pub struct Encoded {
    bytes: Vec<u8>,
    first_seq: u32,
    /// Element messages (each acknowledged), between BEGIN and END.
    messages: u32,
}

/// Encodes `batch` (libnftables JSON) if every command adds or deletes
/// elements of a set this sink knows as plain; `None` sends it to nft.
pub fn encode(batch: &Value, decls: &Declarations, first_seq: u32) -> Option<Encoded> {
    let items = batch.get("nftables")?.as_array()?;
    if items.is_empty() {
        return None;
    }
    let mut bytes = Vec::with_capacity(256 + 128 * items.len());
    let mut seq = first_seq;
    Msg::begin(
        &mut bytes,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .end();
    for item in items {
        let (verb, obj) = item.as_object()?.iter().next()?;
        let (ty, flags) = match verb.as_str() {
            "add" => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
            "delete" => (NFT_MSG_DELSETELEM, 0),
            _ => return None,
        };
        let body = obj.get("element")?.as_object()?;
        if str_of(body, "family")? != "inet" {
            return None;
        }
        let (table, name) = (str_of(body, "table")?, str_of(body, "name")?);
        let Decl::Plain { key, verdict } = decls.get("inet", table, name)? else {
            return None;
        };
        let elems = body.get("elem")?.as_array()?;
        if elems.is_empty() {
            return None;
        }
        seq = seq.wrapping_add(1);
        let msg_type = (NFNL_SUBSYS_NFTABLES << 8) | ty;
        let mut m = Msg::begin(
            &mut bytes,
            msg_type,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            NFPROTO_INET,
            0,
        );
        m.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        m.attr_str(NFTA_SET_ELEM_LIST_SET, name);
        let list = m.open(NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in elems {
            // A map element is `[key, data]`; a delete may give the key alone.
            let (k, data) = match (e, *verdict) {
                (Value::Array(kv), true) if kv.len() == 2 => (&kv[0], Some(&kv[1])),
                (_, true) if ty == NFT_MSG_DELSETELEM => (e, None),
                (Value::Array(_), _) | (_, true) => return None,
                _ => (e, None),
            };
            let keyb = encode_key(key, k)?;
            let el = m.open(NFTA_LIST_ELEM);
            let ka = m.open(NFTA_SET_ELEM_KEY);
            m.attr(NFTA_DATA_VALUE, &keyb);
            m.close(ka);
            if let Some(d) = data.filter(|_| ty == NFT_MSG_NEWSETELEM) {
                let (code, chain) = encode_verdict(d)?;
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
        if bytes.len() > MAX_BATCH_BYTES {
            return None;
        }
    }
    let messages = seq.wrapping_sub(first_seq);
    Msg::begin(
        &mut bytes,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq.wrapping_add(1),
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .end();
    Some(Encoded {
        bytes,
        first_seq,
        messages,
    })
}

/// Why the kernel did not take a native batch.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("nfnetlink socket: {0}")]
    Socket(#[source] nix::Error),
    #[error("kernel refused the element batch: {0}")]
    Refused(#[source] std::io::Error),
    #[error("no answer from the kernel within {0:?}")]
    Timeout(Duration),
    #[error("malformed answer from the kernel")]
    Malformed,
}

/// A `NETLINK_NETFILTER` socket in the network namespace of the thread
/// that opened it.
#[derive(Debug)]
pub struct NfSocket {
    fd: OwnedFd,
    next_seq: u32,
    buf: Vec<u8>,
}

impl NfSocket {
    /// Opens and binds the socket.
    pub fn open() -> Result<NfSocket, NativeError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(NativeError::Socket)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NativeError::Socket)?;
        let tv = TimeVal::new(
            ANSWER_TIMEOUT.as_secs() as i64,
            i64::from(ANSWER_TIMEOUT.subsec_micros()),
        );
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(NativeError::Socket)?;
        Ok(NfSocket {
            fd,
            next_seq: 1,
            buf: vec![0; 64 << 10],
        })
    }

    /// The sequence number the next batch starts at.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Sends one transaction and waits for the kernel's verdict on it.
    pub fn apply(&mut self, e: &Encoded) -> Result<(), NativeError> {
        let first = e.first_seq;
        let end_seq = first.wrapping_add(e.messages).wrapping_add(1);
        self.next_seq = end_seq.wrapping_add(1);
        // Answers to an earlier, abandoned transaction are not ours.
        while recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT).is_ok() {}
        send(self.fd.as_raw_fd(), &e.bytes, MsgFlags::empty()).map_err(NativeError::Socket)?;
        let ours = |seq: u32| seq.wrapping_sub(first) <= e.messages.wrapping_add(1);
        let mut acked = 0u32;
        let mut refused: Option<i32> = None;
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return Err(NativeError::Timeout(ANSWER_TIMEOUT)),
                Err(e) => return Err(NativeError::Socket(e)),
            };
            let mut at = 0;
            while at + 16 <= n {
                let b = &self.buf[at..n];
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if len < 16 || len > b.len() {
                    return Err(NativeError::Malformed);
                }
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if ty == NLMSG_ERROR && ours(seq) {
                    if len < 20 {
                        return Err(NativeError::Malformed);
                    }
                    let errno = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                    if seq == first || seq == end_seq {
                        // About the transaction as a whole (its commit
                        // failed, or the kernel ran out of memory for the
                        // answers): no per-message answers follow.
                        if errno != 0 {
                            return Err(refused_err(errno));
                        }
                    } else {
                        acked += 1;
                        if errno != 0 && refused.is_none() {
                            refused = Some(errno);
                        }
                    }
                }
                at += (len + 3) & !3;
            }
            if acked >= e.messages {
                return match refused {
                    Some(errno) => Err(refused_err(errno)),
                    None => Ok(()),
                };
            }
        }
    }
}

fn refused_err(errno: i32) -> NativeError {
    NativeError::Refused(std::io::Error::from_raw_os_error(-errno))
}

/// The agent's policy sink: element batches natively, everything else (and
/// anything refused natively) through the `nft` session. Open it on the
/// thread whose network namespace it is to program, like the session.
pub struct FastSink {
    session: NftSession,
    socket: Option<NfSocket>,
    decls: Declarations,
    /// Batches applied natively / through nft (for metrics and tests).
    pub native: u64,
    pub via_nft: u64,
}

impl std::fmt::Debug for FastSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastSink")
            .field("session", &self.session)
            .field("declared", &self.decls.len())
            .field("native", &self.native)
            .field("via_nft", &self.via_nft)
            .finish()
    }
}

impl FastSink {
    /// Native path in the calling thread's namespace, `session` for the rest.
    /// Without a netfilter netlink socket everything goes to `session`.
    pub fn new(session: NftSession) -> FastSink {
        let socket = match NfSocket::open() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no nfnetlink socket: every policy batch goes through nft");
                None
            }
        };
        FastSink {
            session,
            socket,
            decls: Declarations::default(),
            native: 0,
            via_nft: 0,
        }
    }

    /// Whether element batches still go natively (off without a socket, or
    /// after the kernel refused one that nft then applied).
    pub fn native_enabled(&self) -> bool {
        self.socket.is_some()
    }
}

impl NftSink for FastSink {
    type Error = NftError;

    fn apply(&mut self, batch: &Batch) -> Result<(), NftError> {
        let kinds: Vec<Kind> = batch.items.iter().map(kind).collect();
        let mut native_err = None;
        if let Some(sock) = self.socket.as_mut()
            && !kinds.is_empty()
            && kinds.iter().all(|k| *k == Kind::Element)
        {
            let json = serde_json::to_value(batch).map_err(NftError::Encode)?;
            if let Some(enc) = encode(&json, &self.decls, sock.next_seq()) {
                match sock.apply(&enc) {
                    Ok(()) => {
                        self.native += 1;
                        return Ok(());
                    }
                    // nft gets the same batch: it applies it or says why not.
                    Err(e) => {
                        tracing::debug!(error = %e, "native element batch not applied; handing it to nft");
                        native_err = Some(e);
                    }
                }
            }
        }
        self.session.apply(batch)?;
        self.via_nft += 1;
        if let Some(e) = native_err {
            // nft took what the kernel refused from us: our view of the
            // sets is wrong (someone else changed them) or our encoding is.
            // Either way, nft alone from now on.
            tracing::warn!(error = %e, "nft applied an element batch the kernel refused natively; policy batches go through nft only from now on");
            self.socket = None;
        }
        for (item, k) in batch.items.iter().zip(&kinds) {
            if *k == Kind::MayDeclare {
                let v = serde_json::to_value(item).map_err(NftError::Encode)?;
                self.decls.observe_command(&v);
            }
        }
        Ok(())
    }
}

/// What a batch command is to [`FastSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `add` / `delete` of elements: the native path's business.
    Element,
    /// Rules and chains: no bearing on set declarations.
    Rule,
    /// Anything else may declare or remove a set (tables, sets, maps,
    /// flushes, raw commands): looked at after nft applied it.
    MayDeclare,
}

fn kind(item: &Item) -> Kind {
    use policy::nftables::schema::{NfCmd, NfListObject, NfObject};
    match item {
        Item::Nft(NfObject::CmdObject(NfCmd::Add(o) | NfCmd::Delete(o))) => match o {
            NfListObject::Element(_) => Kind::Element,
            NfListObject::Rule(_) | NfListObject::Chain(_) => Kind::Rule,
            _ => Kind::MayDeclare,
        },
        Item::Nft(NfObject::CmdObject(
            NfCmd::Insert(NfListObject::Rule(_)) | NfCmd::Replace(_),
        )) => Kind::Rule,
        Item::Nft(_) => Kind::MayDeclare,
        Item::Raw(v) => {
            let cmd = v
                .as_object()
                .and_then(|o| o.iter().next())
                .and_then(|(verb, obj)| {
                    Some((verb.as_str(), obj.as_object()?.keys().next()?.as_str()))
                });
            match cmd {
                Some(("add" | "delete", "element")) => Kind::Element,
                Some(("add" | "delete" | "insert", "rule" | "chain")) => Kind::Rule,
                _ => Kind::MayDeclare,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decls() -> Declarations {
        let mut d = Declarations::default();
        d.observe(&json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": "t"}}},
            {"add": {"set": {"family": "inet", "table": "t", "name": "a4", "type": "ipv4_addr"}}},
            {"add": {"set": {"family": "inet", "table": "t", "name": "sp", "type": ["ifname", "ipv4_addr"]}}},
            {"add": {"set": {"family": "inet", "table": "t", "name": "iv", "type": "ipv4_addr", "flags": ["interval"]}}},
            {"add": {"set": {"family": "inet", "table": "t", "name": "pp", "type": ["ipv6_addr", "inet_proto", "inet_service"]}}},
            {"add": {"map": {"family": "inet", "table": "t", "name": "vm", "type": "ifname", "map": "verdict"}}},
            {"add": {"map": {"family": "inet", "table": "t", "name": "dm", "type": "ifname", "map": "ipv4_addr"}}},
        ]}));
        d
    }

    fn batch(items: Value) -> Value {
        json!({ "nftables": items })
    }

    #[test]
    fn declarations_follow_the_batches() {
        let mut d = decls();
        assert_eq!(d.len(), 6);
        assert!(matches!(d.get("inet", "t", "iv"), Some(Decl::Other)));
        assert!(matches!(d.get("inet", "t", "dm"), Some(Decl::Other)));
        assert_eq!(
            d.get("inet", "t", "sp"),
            Some(&Decl::Plain {
                key: vec![Field::Ifname, Field::Ipv4],
                verdict: false
            })
        );
        d.observe(&batch(
            json!([{"delete": {"set": {"family": "inet", "table": "t", "name": "a4"}}}]),
        ));
        assert!(d.get("inet", "t", "a4").is_none());
        d.observe(&batch(
            json!([{"delete": {"table": {"family": "inet", "name": "t"}}}]),
        ));
        assert!(d.is_empty());
        let mut d = decls();
        d.observe(&batch(json!([{"flush": {"ruleset": null}}])));
        assert!(d.is_empty());
    }

    #[test]
    fn only_element_batches_of_plain_sets_are_encoded() {
        let d = decls();
        let el = |verb: &str, set: &str, elem: Value| json!({verb: {"element": {"family": "inet", "table": "t", "name": set, "elem": elem}}});
        let ok = batch(json!([
            el("add", "a4", json!(["198.19.0.1", "198.19.0.2"])),
            el(
                "add",
                "sp",
                json!([{"concat": ["cali0123456789a", "198.19.0.1"]}])
            ),
            el(
                "add",
                "vm",
                json!([["cali0123456789a", {"jump": {"target": "pi_x"}}]])
            ),
            el("delete", "vm", json!(["cali0123456789a"])),
            el(
                "add",
                "pp",
                json!([{"concat": ["2001:db8::1", "tcp", 443]}])
            ),
        ]));
        let e = encode(&ok, &d, 7).expect("encodable");
        assert_eq!((e.first_seq, e.messages), (7, 5));
        for bad in [
            el("add", "iv", json!(["198.19.0.0"])),
            el("add", "dm", json!([["cali0123456789a", "198.19.0.1"]])),
            el("add", "nope", json!(["198.19.0.1"])),
            el("add", "a4", json!(["2001:db8::1"])),
            el(
                "add",
                "a4",
                json!([{"prefix": {"addr": "198.19.0.0", "len": 24}}]),
            ),
            el(
                "add",
                "sp",
                json!([{"concat": ["cali0123456789abcdef", "198.19.0.1"]}]),
            ),
            el("add", "vm", json!(["cali0123456789a"])),
            el("add", "a4", json!([])),
            json!({"add": {"chain": {"family": "inet", "table": "t", "name": "c"}}}),
        ] {
            assert!(
                encode(&batch(json!([bad.clone()])), &d, 1).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_use_nfts_register_layout() {
        let k = encode_key(
            &[Field::Ifname, Field::Ipv4],
            &json!({"concat": ["cali1", "198.19.0.1"]}),
        )
        .expect("key");
        assert_eq!(k.len(), 20);
        assert_eq!(&k[..5], b"cali1");
        assert!(k[5..16].iter().all(|b| *b == 0));
        assert_eq!(&k[16..], &[198, 19, 0, 1]);
        let k = encode_key(
            &[Field::Ipv4, Field::InetProto, Field::InetService],
            &json!({"concat": ["198.19.0.1", "udp", 53]}),
        )
        .expect("key");
        assert_eq!(k, [198, 19, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(
            encode_key(&[Field::InetService], &json!(8080)).expect("key"),
            8080u16.to_be_bytes()
        );
    }
}
