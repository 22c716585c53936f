//! The BFD Control packet (RFC 5880 §4.1) and its codec.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! ```
//!
//! [`Packet::decode`] applies every reception check of §6.8.6 that needs
//! only the packet itself (version, lengths, zero Detect Mult, the
//! Multipoint bit, zero My Discriminator, zero Your Discriminator outside
//! Down/AdminDown); a packet that fails one is discarded by the caller.
//! Authentication (the A bit, §6.7) is not implemented: such packets are
//! refused with [`DecodeError::AuthNotSupported`], as §6.8.6 prescribes for
//! a session without authentication.

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, BytesMut};

/// Protocol version.
pub const VERSION: u8 = 1;
/// Length of a Control packet without authentication.
pub const LEN: usize = 24;

/// Session states (§4.1 "Sta").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// 0.
    AdminDown,
    /// 1.
    Down,
    /// 2.
    Init,
    /// 3.
    Up,
}

impl State {
    fn from_bits(v: u8) -> State {
        match v & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    fn bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        })
    }
}

/// Diagnostic codes (§4.1 "Diag").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Diag {
    /// 0.
    None,
    /// 1: Control Detection Time Expired.
    DetectTimeExpired,
    /// 2: Echo Function Failed.
    EchoFailed,
    /// 3: Neighbor Signaled Session Down.
    NeighborDown,
    /// 4: Forwarding Plane Reset.
    ForwardingReset,
    /// 5: Path Down.
    PathDown,
    /// 6: Concatenated Path Down.
    ConcatenatedPathDown,
    /// 7: Administratively Down.
    AdminDown,
    /// 8: Reverse Concatenated Path Down.
    ReverseConcatenatedPathDown,
    /// 9–31: reserved, kept as received.
    Other(u8),
}

impl Diag {
    fn from_bits(v: u8) -> Diag {
        match v & 31 {
            0 => Diag::None,
            1 => Diag::DetectTimeExpired,
            2 => Diag::EchoFailed,
            3 => Diag::NeighborDown,
            4 => Diag::ForwardingReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdminDown,
            8 => Diag::ReverseConcatenatedPathDown,
            x => Diag::Other(x),
        }
    }

    fn bits(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::DetectTimeExpired => 1,
            Diag::EchoFailed => 2,
            Diag::NeighborDown => 3,
            Diag::ForwardingReset => 4,
            Diag::PathDown => 5,
            Diag::ConcatenatedPathDown => 6,
            Diag::AdminDown => 7,
            Diag::ReverseConcatenatedPathDown => 8,
            Diag::Other(x) => x & 31,
        }
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diag::None => f.write_str("no diagnostic"),
            Diag::DetectTimeExpired => f.write_str("control detection time expired"),
            Diag::EchoFailed => f.write_str("echo function failed"),
            Diag::NeighborDown => f.write_str("neighbor signaled session down"),
            Diag::ForwardingReset => f.write_str("forwarding plane reset"),
            Diag::PathDown => f.write_str("path down"),
            Diag::ConcatenatedPathDown => f.write_str("concatenated path down"),
            Diag::AdminDown => f.write_str("administratively down"),
            Diag::ReverseConcatenatedPathDown => f.write_str("reverse concatenated path down"),
            Diag::Other(x) => write!(f, "diagnostic {x}"),
        }
    }
}

/// A BFD Control packet. Intervals are in microseconds, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Diagnostic.
    pub diag: Diag,
    /// Sender's session state.
    pub state: State,
    /// Poll (P): the sender asks for a Final.
    pub poll: bool,
    /// Final (F): the answer to a Poll.
    pub fin: bool,
    /// Control Plane Independent (C).
    pub cpi: bool,
    /// Demand (D): the sender wishes to run in Demand mode.
    pub demand: bool,
    /// Detect Mult.
    pub detect_mult: u8,
    /// My Discriminator.
    pub my_disc: u32,
    /// Your Discriminator (0 while unknown).
    pub your_disc: u32,
    /// Desired Min TX Interval, µs.
    pub desired_min_tx: u32,
    /// Required Min RX Interval, µs (0: send no periodic packets).
    pub required_min_rx: u32,
    /// Required Min Echo RX Interval, µs (0: no Echo).
    pub required_min_echo_rx: u32,
}

/// Why a received packet is discarded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer octets than a Control packet.
    #[error("BFD packet of {len} octets is shorter than {LEN}")]
    Short {
        /// Octets received.
        len: usize,
    },
    /// Version other than 1.
    #[error("BFD version {version} (only 1 exists)")]
    Version {
        /// Version field.
        version: u8,
    },
    /// The Length field is below the minimum or beyond what arrived.
    #[error("BFD Length field {field} does not fit a payload of {payload} octets")]
    Length {
        /// Length field.
        field: u8,
        /// Octets received.
        payload: usize,
    },
    /// Authentication present (not implemented).
    #[error("BFD authentication (A bit) is not supported")]
    AuthNotSupported,
    /// Detect Mult is zero.
    #[error("BFD Detect Mult is zero")]
    ZeroDetectMult,
    /// Multipoint bit set.
    #[error("BFD Multipoint bit is set")]
    Multipoint,
    /// My Discriminator is zero.
    #[error("BFD My Discriminator is zero")]
    ZeroMyDiscriminator,
    /// Your Discriminator is zero in a state other than Down/AdminDown.
    #[error("BFD Your Discriminator is zero in state {state}")]
    ZeroYourDiscriminator {
        /// The sender's state.
        state: State,
    },
    /// Both Poll and Final set (§4.1: MUST NOT).
    #[error("BFD Poll and Final both set")]
    PollAndFinal,
}

const P: u8 = 0x20;
const F: u8 = 0x10;
const C: u8 = 0x08;
const A: u8 = 0x04;
const D: u8 = 0x02;
const M: u8 = 0x01;

fn be32(b: &[u8], at: usize) -> u32 {
    // Callers checked `b.len() >= LEN`; `get` keeps this panic-free anyway.
    b.get(at..at + 4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        .unwrap_or(0)
}

impl Packet {
    /// Decode one UDP payload.
    pub fn decode(buf: &[u8]) -> Result<Packet, DecodeError> {
        if buf.len() < LEN {
            return Err(DecodeError::Short { len: buf.len() });
        }
        let version = buf[0] >> 5;
        if version != VERSION {
            return Err(DecodeError::Version { version });
        }
        let flags = buf[1];
        let field = buf[3];
        if flags & A != 0 {
            return Err(DecodeError::AuthNotSupported);
        }
        if usize::from(field) < LEN || usize::from(field) > buf.len() {
            return Err(DecodeError::Length {
                field,
                payload: buf.len(),
            });
        }
        if buf[2] == 0 {
            return Err(DecodeError::ZeroDetectMult);
        }
        if flags & M != 0 {
            return Err(DecodeError::Multipoint);
        }
        if flags & P != 0 && flags & F != 0 {
            return Err(DecodeError::PollAndFinal);
        }
        let p = Packet {
            diag: Diag::from_bits(buf[0]),
            state: State::from_bits(flags >> 6),
            poll: flags & P != 0,
            fin: flags & F != 0,
            cpi: flags & C != 0,
            demand: flags & D != 0,
            detect_mult: buf[2],
            my_disc: be32(buf, 4),
            your_disc: be32(buf, 8),
            desired_min_tx: be32(buf, 12),
            required_min_rx: be32(buf, 16),
            required_min_echo_rx: be32(buf, 20),
        };
        if p.my_disc == 0 {
            return Err(DecodeError::ZeroMyDiscriminator);
        }
        if p.your_disc == 0 && !matches!(p.state, State::Down | State::AdminDown) {
            return Err(DecodeError::ZeroYourDiscriminator { state: p.state });
        }
        Ok(p)
    }

    /// Append the packet (24 octets, no authentication).
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(LEN);
        out.put_u8((VERSION << 5) | self.diag.bits());
        let mut flags = self.state.bits() << 6;
        for (set, bit) in [
            (self.poll, P),
            (self.fin, F),
            (self.cpi, C),
            (self.demand, D),
        ] {
            if set {
                flags |= bit;
            }
        }
        out.put_u8(flags);
        out.put_u8(self.detect_mult);
        out.put_u8(LEN as u8);
        out.put_u32(self.my_disc);
        out.put_u32(self.your_disc);
        out.put_u32(self.desired_min_tx);
        out.put_u32(self.required_min_rx);
        out.put_u32(self.required_min_echo_rx);
    }

    /// The encoded packet.
    pub fn to_bytes(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(LEN);
        self.encode(&mut b);
        b
    }

    /// Desired Min TX as a duration.
    pub fn desired_min_tx(&self) -> Duration {
        Duration::from_micros(u64::from(self.desired_min_tx))
    }

    /// Required Min RX as a duration.
    pub fn required_min_rx(&self) -> Duration {
        Duration::from_micros(u64::from(self.required_min_rx))
    }
}

/// A duration as whole microseconds on the wire (saturating at u32::MAX,
/// about 71 minutes).
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured with tcpdump on a veth between BIRD 2.0.12 (`protocol bfd`,
    /// min rx/tx 100 ms, idle tx 1 s, multiplier 3; 198.18.0.1 and
    /// 2001:db8:ffff::1) and FRR 8.4.4 `bfdd` (static peers, receive 150 ms,
    /// transmit 200 ms, multiplier 4; 198.18.0.2 and 2001:db8:ffff::2) in two
    /// lab namespaces: bring-up, a transmit-interval change, `shutdown` /
    /// `no shutdown` of FRR's IPv4 peer, then bfdd killed. UDP payloads.
    const CAPTURED: &[(&str, &str)] = &[
        (
            "BIRD v4 Down, nothing heard yet (Your Discr 0, idle TX 1 s)",
            "20400318c813edee00000000000f4240000186a000000000",
        ),
        (
            "FRR v4 Init (slow 1 s TX and RX while not Up, echo 50 ms)",
            "20800418f4c6c607c813edee000f4240000f42400000c350",
        ),
        (
            "BIRD v6 Up + Poll (TX 1 s -> 100 ms)",
            "20e003182931cc28b08b6d2d000186a0000186a000000000",
        ),
        (
            "FRR v4 Up + Final (TX 200 ms, RX 150 ms)",
            "20d00418f4c6c607c813edee00030d40000249f00000c350",
        ),
        (
            "FRR v4 Up, steady",
            "20c00418f4c6c607c813edee00030d40000249f00000c350",
        ),
        (
            "FRR v4 AdminDown + Final (FRR sends Diag 0, not 7)",
            "20100418f4c6c607c813edee000493e0000249f00000c350",
        ),
        (
            "BIRD v4 Down, Diag 3 (neighbor signaled down) + Poll",
            "23600318c813edeef4c6c607000f4240000186a000000000",
        ),
        (
            "BIRD v4 Down, Diag 1 (detection time expired), Your Discr reset",
            "21400318c813edee00000000000f4240000186a000000000",
        ),
    ];

    #[test]
    fn captured_packets_round_trip() {
        for (what, h) in CAPTURED {
            let raw = hex::decode(h).expect("hex");
            let p = Packet::decode(&raw).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(p.to_bytes().as_ref(), &raw[..], "{what}: {p:?}");
        }
    }

    #[test]
    fn captured_fields_read_as_tcpdump_shows_them() {
        let raw = hex::decode(CAPTURED[3].1).expect("hex");
        let p = Packet::decode(&raw).expect("decode");
        assert_eq!(
            p,
            Packet {
                diag: Diag::None,
                state: State::Up,
                poll: false,
                fin: true,
                cpi: false,
                demand: false,
                detect_mult: 4,
                my_disc: 0xf4c6_c607,
                your_disc: 0xc813_edee,
                desired_min_tx: 200_000,
                required_min_rx: 150_000,
                required_min_echo_rx: 50_000,
            }
        );
        assert_eq!(p.desired_min_tx(), Duration::from_millis(200));
        let raw = hex::decode(CAPTURED[6].1).expect("hex");
        let p = Packet::decode(&raw).expect("decode");
        assert_eq!(
            (p.state, p.diag, p.poll, p.detect_mult),
            (State::Down, Diag::NeighborDown, true, 3)
        );
    }

    fn valid() -> Vec<u8> {
        hex::decode(CAPTURED[4].1).expect("hex")
    }

    #[test]
    fn reception_checks_of_6_8_6_discard() {
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = valid();
            f(&mut b);
            Packet::decode(&b)
        };
        assert_eq!(
            bad(&|b| b.truncate(23)),
            Err(DecodeError::Short { len: 23 })
        );
        assert_eq!(
            bad(&|b| b[0] = 0x40),
            Err(DecodeError::Version { version: 2 })
        );
        assert_eq!(
            bad(&|b| b[3] = 23),
            Err(DecodeError::Length {
                field: 23,
                payload: 24
            })
        );
        assert_eq!(
            bad(&|b| b[3] = 25),
            Err(DecodeError::Length {
                field: 25,
                payload: 24
            })
        );
        assert_eq!(bad(&|b| b[1] |= A), Err(DecodeError::AuthNotSupported));
        assert_eq!(bad(&|b| b[2] = 0), Err(DecodeError::ZeroDetectMult));
        assert_eq!(bad(&|b| b[1] |= M), Err(DecodeError::Multipoint));
        assert_eq!(bad(&|b| b[1] |= P | F), Err(DecodeError::PollAndFinal));
        assert_eq!(
            bad(&|b| b[4..8].fill(0)),
            Err(DecodeError::ZeroMyDiscriminator)
        );
        assert_eq!(
            bad(&|b| b[8..12].fill(0)),
            Err(DecodeError::ZeroYourDiscriminator { state: State::Up })
        );
        // Your Discriminator 0 is fine while Down.
        assert!(
            bad(&|b| {
                b[8..12].fill(0);
                b[1] = (1 << 6) | (b[1] & 0x3f);
            })
            .is_ok()
        );
        // Trailing octets beyond the Length field are allowed (§6.8.6 only
        // requires Length <= payload); the packet re-encodes as 24 octets.
        let mut long = valid();
        long.extend_from_slice(&[0; 8]);
        assert!(Packet::decode(&long).is_ok());
    }

    #[test]
    fn every_field_survives_encode_then_decode() {
        use proptest::prelude::*;
        let states = [State::AdminDown, State::Down, State::Init, State::Up];
        proptest!(|(diag in 0u8..32, st in 0usize..4, flags in 0u8..16, mult in 1u8..,
                   my in 1u32.., your in 1u32.., tx: u32, rx: u32, echo: u32)| {
            let (poll, fin) = match flags & 3 { 1 => (true, false), 2 => (false, true), _ => (false, false) };
            let p = Packet {
                diag: Diag::from_bits(diag),
                state: states[st],
                poll, fin,
                cpi: flags & 4 != 0,
                demand: flags & 8 != 0,
                detect_mult: mult,
                my_disc: my, your_disc: your,
                desired_min_tx: tx, required_min_rx: rx, required_min_echo_rx: echo,
            };
            prop_assert_eq!(Packet::decode(&p.to_bytes()), Ok(p));
        });
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use proptest::prelude::*;
        proptest!(|(b in proptest::collection::vec(any::<u8>(), 0..64))| {
            if let Ok(p) = Packet::decode(&b) {
                prop_assert_eq!(Packet::decode(&p.to_bytes()), Ok(p));
            }
        });
    }
}
