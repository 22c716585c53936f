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
//! rebuild), never from guessing at element values. Both are read from the
//! policy crate's typed batch items (its `nftables` schema objects; JSON
//! only for the raw commands that schema cannot express), not from a JSON
//! rendering of the batch.

mod decls;
mod encode;
mod socket;
#[cfg(test)]
mod tests;

use policy::batch::Item;
use policy::{Batch, NftSink};

pub use self::decls::Declarations;
pub use self::encode::{Encoded, encode, encode_items};
pub use self::socket::{NativeError, NfSocket};
use super::{NftError, NftSession};

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
            && let Some(enc) = encode_items(&batch.items, &self.decls, sock.next_seq())
        {
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
                self.decls.observe_item(item);
            }
        }
        Ok(())
    }

    /// A full rebuild always goes through nft, as JSON written element by
    /// element; the declarations are read from the same batch without its
    /// set elements.
    fn apply_full(&mut self, rs: &policy::Ruleset) -> Result<(), NftError> {
        self.session.apply_full(rs)?;
        self.via_nft += 1;
        for item in &policy::nft::full_with(rs, false).items {
            if kind(item) == Kind::MayDeclare {
                self.decls.observe_item(item);
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
