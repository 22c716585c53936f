//! NOTIFICATION (RFC 4271 §4.5) and the mapping from decode errors to the
//! NOTIFICATION a speaker must send (RFC 4271 §6, RFC 7606, RFC 4486).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::DecodeError;
use super::prefix::Family;

/// Error codes (RFC 4271 §4.5, RFC 7313).
pub mod code {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;
}

/// Message Header Error subcodes.
pub mod header_sub {
    /// Connection Not Synchronized.
    pub const NOT_SYNCHRONIZED: u8 = 1;
    /// Bad Message Length.
    pub const BAD_LENGTH: u8 = 2;
    /// Bad Message Type.
    pub const BAD_TYPE: u8 = 3;
}

/// OPEN Message Error subcodes.
pub mod open_sub {
    /// Unspecific (a recognised optional parameter is malformed).
    pub const UNSPECIFIC: u8 = 0;
    /// Unsupported Version Number.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    /// Bad Peer AS.
    pub const BAD_PEER_AS: u8 = 2;
    /// Bad BGP Identifier.
    pub const BAD_BGP_ID: u8 = 3;
    /// Unsupported Optional Parameter.
    pub const UNSUPPORTED_OPT_PARAM: u8 = 4;
    /// Unacceptable Hold Time.
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    /// Unsupported Capability (RFC 5492).
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
}

/// UPDATE Message Error subcodes.
pub mod update_sub {
    /// Malformed Attribute List.
    pub const MALFORMED_ATTR_LIST: u8 = 1;
    /// Unrecognized Well-known Attribute.
    pub const UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    /// Missing Well-known Attribute.
    pub const MISSING_WELL_KNOWN: u8 = 3;
    /// Attribute Flags Error.
    pub const ATTR_FLAGS: u8 = 4;
    /// Attribute Length Error.
    pub const ATTR_LENGTH: u8 = 5;
    /// Invalid ORIGIN Attribute.
    pub const INVALID_ORIGIN: u8 = 6;
    /// Invalid NEXT_HOP Attribute.
    pub const INVALID_NEXT_HOP: u8 = 8;
    /// Optional Attribute Error.
    pub const OPTIONAL_ATTR: u8 = 9;
    /// Invalid Network Field.
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    /// Malformed AS_PATH.
    pub const MALFORMED_AS_PATH: u8 = 11;
}

/// Cease subcodes (RFC 4486).
pub mod cease_sub {
    /// Maximum Number of Prefixes Reached.
    pub const MAX_PREFIXES: u8 = 1;
    /// Administrative Shutdown.
    pub const ADMIN_SHUTDOWN: u8 = 2;
    /// Peer De-configured.
    pub const PEER_DECONFIGURED: u8 = 3;
    /// Administrative Reset.
    pub const ADMIN_RESET: u8 = 4;
    /// Connection Rejected.
    pub const CONNECTION_REJECTED: u8 = 5;
    /// Other Configuration Change.
    pub const OTHER_CONFIG_CHANGE: u8 = 6;
    /// Connection Collision Resolution.
    pub const CONNECTION_COLLISION: u8 = 7;
    /// Out of Resources.
    pub const OUT_OF_RESOURCES: u8 = 8;
    /// Hard Reset (RFC 8538).
    pub const HARD_RESET: u8 = 9;
    /// BFD Down (RFC 9384).
    pub const BFD_DOWN: u8 = 10;
}

/// A NOTIFICATION message.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data, meaning depends on code/subcode.
    pub data: Bytes,
}

impl Notification {
    /// A NOTIFICATION without data.
    pub fn new(code: u8, subcode: u8) -> Self {
        Self {
            code,
            subcode,
            data: Bytes::new(),
        }
    }

    /// A NOTIFICATION with data.
    pub fn with_data(code: u8, subcode: u8, data: impl Into<Bytes>) -> Self {
        Self {
            code,
            subcode,
            data: data.into(),
        }
    }

    /// Cease with a subcode.
    pub fn cease(subcode: u8) -> Self {
        Self::new(code::CEASE, subcode)
    }

    /// Cease / Maximum Number of Prefixes Reached, with the data RFC 4486 §4
    /// prescribes: AFI (2 octets), SAFI (1 octet), upper bound (4 octets).
    pub fn max_prefixes(family: Family, limit: u32) -> Self {
        let mut d = BytesMut::with_capacity(7);
        d.put_u16(family.afi());
        d.put_u8(family.safi());
        d.put_u32(limit);
        Self::with_data(code::CEASE, cease_sub::MAX_PREFIXES, d.freeze())
    }

    /// Hold Timer Expired.
    pub fn hold_timer_expired() -> Self {
        Self::new(code::HOLD_TIMER_EXPIRED, 0)
    }

    /// Finite State Machine Error (subcode from RFC 6608: 1 = OpenSent,
    /// 2 = OpenConfirm, 3 = Established, 0 = unspecified).
    pub fn fsm_error(subcode: u8) -> Self {
        Self::new(code::FSM, subcode)
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        match body {
            [c, s, data @ ..] => Ok(Self {
                code: *c,
                subcode: *s,
                data: Bytes::copy_from_slice(data),
            }),
            _ => Err(DecodeError::BadLength {
                ty: 3,
                len: (body.len() + 19) as u16,
            }),
        }
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.code);
        out.put_u8(self.subcode);
        out.put_slice(&self.data);
    }

    /// RFC 8203/9003 shutdown communication carried in Cease 2 / 4, if any.
    pub fn shutdown_message(&self) -> Option<String> {
        if self.code != code::CEASE
            || !(self.subcode == cease_sub::ADMIN_SHUTDOWN
                || self.subcode == cease_sub::ADMIN_RESET)
        {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        let text = rest.get(..usize::from(len))?;
        Some(String::from_utf8_lossy(text).into_owned())
    }

    fn name(&self) -> &'static str {
        match (self.code, self.subcode) {
            (code::HEADER, header_sub::NOT_SYNCHRONIZED) => "header: connection not synchronized",
            (code::HEADER, header_sub::BAD_LENGTH) => "header: bad message length",
            (code::HEADER, header_sub::BAD_TYPE) => "header: bad message type",
            (code::HEADER, _) => "header error",
            (code::OPEN, open_sub::UNSUPPORTED_VERSION) => "open: unsupported version",
            (code::OPEN, open_sub::BAD_PEER_AS) => "open: bad peer AS",
            (code::OPEN, open_sub::BAD_BGP_ID) => "open: bad BGP identifier",
            (code::OPEN, open_sub::UNSUPPORTED_OPT_PARAM) => "open: unsupported optional parameter",
            (code::OPEN, open_sub::UNACCEPTABLE_HOLD_TIME) => "open: unacceptable hold time",
            (code::OPEN, open_sub::UNSUPPORTED_CAPABILITY) => "open: unsupported capability",
            (code::OPEN, _) => "open error",
            (code::UPDATE, update_sub::MALFORMED_ATTR_LIST) => "update: malformed attribute list",
            (code::UPDATE, update_sub::UNRECOGNIZED_WELL_KNOWN) => {
                "update: unrecognized well-known attribute"
            }
            (code::UPDATE, update_sub::MISSING_WELL_KNOWN) => {
                "update: missing well-known attribute"
            }
            (code::UPDATE, update_sub::ATTR_FLAGS) => "update: attribute flags error",
            (code::UPDATE, update_sub::ATTR_LENGTH) => "update: attribute length error",
            (code::UPDATE, update_sub::INVALID_ORIGIN) => "update: invalid ORIGIN",
            (code::UPDATE, update_sub::INVALID_NEXT_HOP) => "update: invalid NEXT_HOP",
            (code::UPDATE, update_sub::OPTIONAL_ATTR) => "update: optional attribute error",
            (code::UPDATE, update_sub::INVALID_NETWORK_FIELD) => "update: invalid network field",
            (code::UPDATE, update_sub::MALFORMED_AS_PATH) => "update: malformed AS_PATH",
            (code::UPDATE, _) => "update error",
            (code::HOLD_TIMER_EXPIRED, _) => "hold timer expired",
            (code::FSM, _) => "finite state machine error",
            (code::CEASE, cease_sub::MAX_PREFIXES) => "cease: maximum number of prefixes reached",
            (code::CEASE, cease_sub::ADMIN_SHUTDOWN) => "cease: administrative shutdown",
            (code::CEASE, cease_sub::PEER_DECONFIGURED) => "cease: peer de-configured",
            (code::CEASE, cease_sub::ADMIN_RESET) => "cease: administrative reset",
            (code::CEASE, cease_sub::CONNECTION_REJECTED) => "cease: connection rejected",
            (code::CEASE, cease_sub::OTHER_CONFIG_CHANGE) => "cease: other configuration change",
            (code::CEASE, cease_sub::CONNECTION_COLLISION) => "cease: connection collision",
            (code::CEASE, cease_sub::OUT_OF_RESOURCES) => "cease: out of resources",
            (code::CEASE, cease_sub::HARD_RESET) => "cease: hard reset",
            (code::CEASE, cease_sub::BFD_DOWN) => "cease: BFD down",
            (code::CEASE, _) => "cease",
            (code::ROUTE_REFRESH, _) => "route-refresh error",
            _ => "unknown error",
        }
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}/{})", self.name(), self.code, self.subcode)?;
        if let Some(m) = self.shutdown_message() {
            write!(f, ": {m:?}")?;
        } else if !self.data.is_empty() {
            write!(f, " data {}", hex_short(&self.data))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn hex_short(b: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::new();
    for x in b.iter().take(32) {
        let _ = write!(s, "{x:02x}");
    }
    if b.len() > 32 {
        s.push('…');
    }
    s
}

/// The one place where a decode error becomes the NOTIFICATION to send.
impl From<&DecodeError> for Notification {
    fn from(e: &DecodeError) -> Self {
        use DecodeError as E;
        match e {
            E::NotSynchronized => Notification::new(code::HEADER, header_sub::NOT_SYNCHRONIZED),
            E::BadLength { len, .. } => Notification::with_data(
                code::HEADER,
                header_sub::BAD_LENGTH,
                Bytes::copy_from_slice(&len.to_be_bytes()),
            ),
            E::BadType { ty } => {
                Notification::with_data(code::HEADER, header_sub::BAD_TYPE, Bytes::from(vec![*ty]))
            }
            E::UnsupportedVersion { .. } => Notification::with_data(
                code::OPEN,
                open_sub::UNSUPPORTED_VERSION,
                Bytes::from_static(&[0, 4]),
            ),
            E::BadBgpId { .. } => Notification::new(code::OPEN, open_sub::BAD_BGP_ID),
            E::UnsupportedOptParam { .. } => {
                Notification::new(code::OPEN, open_sub::UNSUPPORTED_OPT_PARAM)
            }
            E::UnacceptableHoldTime { .. } => {
                Notification::new(code::OPEN, open_sub::UNACCEPTABLE_HOLD_TIME)
            }
            E::MalformedOpen { .. } => Notification::new(code::OPEN, open_sub::UNSPECIFIC),
            E::Update { subcode, data, .. } => {
                Notification::with_data(code::UPDATE, *subcode, data.clone())
            }
            E::RouteRefreshLength { message, .. } => {
                Notification::with_data(code::ROUTE_REFRESH, 1, message.clone())
            }
        }
    }
}

impl From<DecodeError> for Notification {
    fn from(e: DecodeError) -> Self {
        Notification::from(&e)
    }
}
