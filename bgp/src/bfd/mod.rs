//! BFD, Bidirectional Forwarding Detection (RFC 5880) over UDP, single hop
//! (RFC 5881) and multihop (RFC 5883), in Asynchronous mode: the packet
//! codec ([`packet`]), the sans-IO session state machine ([`session`]), the
//! sockets ([`sock`]) and a tokio driver ([`driver`]).
//!
//! It lives in the `bgp` crate because BGP is its only client here: a peer
//! configured with BFD ([`crate::config::PeerConfig::bfd`]) subscribes to a
//! session toward its neighbour, and when that session goes from Up to Down
//! the BGP session is closed at once (Cease/10 "BFD Down", RFC 9384) and its
//! routes withdrawn; BFD coming Up does not bring BGP up by itself. Sharing
//! the crate keeps one socket layer, one fuzz crate and one driver style.
//!
//! Not implemented: authentication (packets with the A bit are discarded),
//! the Echo function, Demand mode on our side, the passive role.

pub mod driver;
pub mod packet;
pub mod session;
pub mod sock;

pub use driver::{
    Bfd, BfdError, BfdHandle, BfdOptions, Event, SessionKey, SessionStatus, Subscription,
};
pub use packet::{DecodeError, Diag, Packet, State};
pub use session::{BfdConfig, Change, Input, Output, Session, Status, Timer};
