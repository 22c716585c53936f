//! BGP-4 wire codec (RFC 4271 §4) on `bytes`, hand-written.
//!
//! `Message::decode(buf, &DecodeCx)` takes one whole message (header included,
//! as cut by [`frame`]); `Message::encode(&self, &EncodeCx, &mut BytesMut)`
//! appends one. Negotiated capabilities (4-octet AS, ADD-PATH, extended next
//! hop, eBGP-ness) travel in the contexts. Every read is checked; a decode
//! error maps to its NOTIFICATION through `impl From<DecodeError> for
//! Notification` (in [`notification`]). UPDATE errors that RFC 7606 resolves
//! without a session reset (treat-as-withdraw, attribute discard) are not
//! errors: they are recorded in [`Update::issues`].

pub mod attrs;
pub mod community;
pub mod notification;
pub mod open;
pub mod prefix;
pub(crate) mod reader;
pub mod update;

use bytes::{BufMut, Bytes, BytesMut};

pub use attrs::{
    Aggregator, AsPath, AsSegment, LargeCommunity, Origin, PathAttrs, RawAttr, SegmentKind,
};
pub use community::{Community, CommunityError, CommunitySet, ExtCommunity};
pub use notification::Notification;
pub use open::{AddPathMode, Capability, GrFamily, GracefulRestartCap, Open};
pub use prefix::{Families, Family, Nlri, NlriError, Prefix, PrefixError};
pub use update::{Action, AttrIssue, MpReach, MpUnreach, NextHop, Update};

/// The all-ones marker that starts every message.
pub const MARKER: [u8; 16] = [0xff; 16];
/// Header length.
pub const HEADER_LEN: usize = 19;
/// Largest message without RFC 8654 extended messages.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// AS_TRANS (RFC 6793).
pub const AS_TRANS: u32 = 23456;

/// Message type codes.
pub mod msg_type {
    /// OPEN.
    pub const OPEN: u8 = 1;
    /// UPDATE.
    pub const UPDATE: u8 = 2;
    /// NOTIFICATION.
    pub const NOTIFICATION: u8 = 3;
    /// KEEPALIVE.
    pub const KEEPALIVE: u8 = 4;
    /// ROUTE-REFRESH.
    pub const ROUTE_REFRESH: u8 = 5;
}

/// What the decoder must know about the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeCx {
    /// Both sides announced the 4-octet AS capability.
    pub four_byte_as: bool,
    /// Families for which the peer may send ADD-PATH path identifiers.
    pub add_path_rx: Families,
    /// IPv4 NLRI may carry an IPv6 next hop (RFC 8950 negotiated).
    pub ext_next_hop_v4: bool,
    /// `Some(peer AS)` on an external session: enables the eBGP-only rules
    /// (first AS must be the peer's, LOCAL_PREF and RR attributes discarded).
    pub ebgp_peer_as: Option<u32>,
}

/// What the encoder must know about the session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EncodeCx {
    /// Both sides announced the 4-octet AS capability.
    pub four_byte_as: bool,
    /// Families for which we send ADD-PATH path identifiers.
    pub add_path_tx: Families,
    /// IPv4 NLRI may be sent with an IPv6 next hop (RFC 8950 negotiated).
    pub ext_next_hop_v4: bool,
}

/// A message that could not be decoded; each maps to one NOTIFICATION.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The marker is not all ones.
    #[error("header marker is not all ones")]
    NotSynchronized,
    /// The length field is out of range for the type.
    #[error("bad message length {len} for type {ty}")]
    BadLength {
        /// Message type.
        ty: u8,
        /// Length field.
        len: u16,
    },
    /// Unknown message type.
    #[error("bad message type {ty}")]
    BadType {
        /// Message type.
        ty: u8,
    },
    /// OPEN with a version other than 4.
    #[error("OPEN: unsupported version {version}")]
    UnsupportedVersion {
        /// Version field.
        version: u8,
    },
    /// OPEN with a zero BGP identifier.
    #[error("OPEN: bad BGP identifier {id}")]
    BadBgpId {
        /// The identifier.
        id: u32,
    },
    /// OPEN with an optional parameter type we do not know.
    #[error("OPEN: unsupported optional parameter type {ty}")]
    UnsupportedOptParam {
        /// Parameter type.
        ty: u8,
    },
    /// OPEN with hold time 1 or 2.
    #[error("OPEN: unacceptable hold time {hold}")]
    UnacceptableHoldTime {
        /// The hold time.
        hold: u16,
    },
    /// OPEN whose parameters or capabilities are malformed.
    #[error("OPEN: malformed: {reason}")]
    MalformedOpen {
        /// What is wrong.
        reason: &'static str,
    },
    /// UPDATE error that RFC 7606 answers with a session reset.
    #[error("UPDATE: {reason}")]
    Update {
        /// UPDATE Message Error subcode.
        subcode: u8,
        /// NOTIFICATION data (usually the erroneous attribute).
        data: Bytes,
        /// What is wrong.
        reason: &'static str,
    },
    /// ROUTE-REFRESH with a bad length (RFC 7313 §5).
    #[error("ROUTE-REFRESH: invalid length {len}")]
    RouteRefreshLength {
        /// Message length.
        len: u16,
        /// The whole message, returned as NOTIFICATION data.
        message: Bytes,
    },
}

impl DecodeError {
    pub(crate) fn update(subcode: u8, data: &[u8], reason: &'static str) -> Self {
        DecodeError::Update {
            subcode,
            data: Bytes::copy_from_slice(data),
            reason,
        }
    }
}

/// ROUTE-REFRESH subtype (RFC 7313).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefreshKind {
    /// A normal request (0).
    Request,
    /// Beginning of Route Refresh (1).
    Begin,
    /// End of Route Refresh (2).
    End,
    /// A reserved value, to be ignored.
    Other(u8),
}

/// ROUTE-REFRESH (RFC 2918, RFC 7313).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteRefresh {
    /// AFI.
    pub afi: u16,
    /// Subtype.
    pub kind: RefreshKind,
    /// SAFI.
    pub safi: u8,
}

/// One BGP message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // UPDATE dominates traffic; boxing it would cost an allocation each
pub enum Message {
    /// OPEN.
    Open(Open),
    /// UPDATE.
    Update(Update),
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH.
    RouteRefresh(RouteRefresh),
}

/// Look at the start of a stream: `Ok(Some(len))` when a whole message of
/// `len` octets is buffered, `Ok(None)` when more input is needed, `Err` when
/// the header is bad (marker, length out of 19..=4096, unknown type, or a
/// length below the type's minimum).
pub fn frame(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        // A wrong marker can be reported as soon as it is seen.
        if buf.iter().any(|&b| b != 0xff) && buf.len() <= 16 {
            return Err(DecodeError::NotSynchronized);
        }
        return Ok(None);
    }
    check_header(buf)?;
    let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
    Ok(if buf.len() >= len { Some(len) } else { None })
}

fn check_header(buf: &[u8]) -> Result<(u8, usize), DecodeError> {
    let hdr = buf.get(..HEADER_LEN).ok_or(DecodeError::BadLength {
        ty: 0,
        len: buf.len() as u16,
    })?;
    if hdr[..16] != MARKER {
        return Err(DecodeError::NotSynchronized);
    }
    let len16 = u16::from_be_bytes([hdr[16], hdr[17]]);
    let len = usize::from(len16);
    let ty = hdr[18];
    let min = match ty {
        msg_type::OPEN => 29,
        msg_type::UPDATE => 23,
        msg_type::NOTIFICATION => 21,
        msg_type::KEEPALIVE => 19,
        msg_type::ROUTE_REFRESH => 23,
        _ => return Err(DecodeError::BadType { ty }),
    };
    if len < min || len > MAX_MESSAGE_LEN || (ty == msg_type::KEEPALIVE && len != 19) {
        return Err(DecodeError::BadLength { ty, len: len16 });
    }
    Ok((ty, len))
}

impl Message {
    /// Decode one whole message (`buf` is exactly the message, header included).
    pub fn decode(buf: &[u8], cx: &DecodeCx) -> Result<Message, DecodeError> {
        let (ty, len) = check_header(buf)?;
        if len != buf.len() {
            return Err(DecodeError::BadLength {
                ty,
                len: len as u16,
            });
        }
        let body = &buf[HEADER_LEN..];
        Ok(match ty {
            msg_type::OPEN => Message::Open(Open::decode_body(body)?),
            msg_type::UPDATE => Message::Update(Update::decode_body(body, cx)?),
            msg_type::NOTIFICATION => Message::Notification(Notification::decode_body(body)?),
            msg_type::KEEPALIVE => Message::Keepalive,
            msg_type::ROUTE_REFRESH => {
                if body.len() != 4 {
                    return Err(DecodeError::RouteRefreshLength {
                        len: len as u16,
                        message: Bytes::copy_from_slice(buf),
                    });
                }
                let afi = u16::from_be_bytes([body[0], body[1]]);
                let kind = match body[2] {
                    0 => RefreshKind::Request,
                    1 => RefreshKind::Begin,
                    2 => RefreshKind::End,
                    x => RefreshKind::Other(x),
                };
                Message::RouteRefresh(RouteRefresh {
                    afi,
                    kind,
                    safi: body[3],
                })
            }
            _ => return Err(DecodeError::BadType { ty }),
        })
    }

    /// The message type code.
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Open(_) => msg_type::OPEN,
            Message::Update(_) => msg_type::UPDATE,
            Message::Notification(_) => msg_type::NOTIFICATION,
            Message::Keepalive => msg_type::KEEPALIVE,
            Message::RouteRefresh(_) => msg_type::ROUTE_REFRESH,
        }
    }

    /// Append the encoded message to `out`.
    pub fn encode(&self, cx: &EncodeCx, out: &mut BytesMut) {
        let start = begin_message(out, self.type_code());
        match self {
            Message::Open(o) => o.encode_body(out),
            Message::Update(u) => u.encode_body(cx, out),
            Message::Notification(n) => n.encode_body(out),
            Message::Keepalive => {}
            Message::RouteRefresh(r) => {
                out.put_u16(r.afi);
                out.put_u8(match r.kind {
                    RefreshKind::Request => 0,
                    RefreshKind::Begin => 1,
                    RefreshKind::End => 2,
                    RefreshKind::Other(x) => x,
                });
                out.put_u8(r.safi);
            }
        }
        finish_message(out, start);
    }

    /// Encode into a fresh buffer.
    pub fn to_bytes(&self, cx: &EncodeCx) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        self.encode(cx, &mut b);
        b.freeze()
    }
}

/// Write a header with a placeholder length; returns the message start.
pub(crate) fn begin_message(out: &mut BytesMut, ty: u8) -> usize {
    let start = out.len();
    out.put_slice(&MARKER);
    out.put_u16(0);
    out.put_u8(ty);
    start
}

/// Patch the length of the message that starts at `start`.
pub(crate) fn finish_message(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start) as u16;
    out[start + 16..start + 18].copy_from_slice(&len.to_be_bytes());
}
