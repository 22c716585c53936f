//! Shared by the fuzz targets: build a message around a fuzzed body, pick a
//! decoding context from a fuzzed byte, and check what a decoder returns.

use bgp::wire::{DecodeCx, EncodeCx, Families, Message, Notification};

#[allow(dead_code)] // not every target wraps bodies
/// Header (marker, length, type) + body, as the framer would hand it over.
/// Bodies too long for the 16-bit length are cut.
pub fn wrap(ty: u8, body: &[u8]) -> Vec<u8> {
    let body = &body[..body.len().min(usize::from(u16::MAX) - 19)];
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// A session context chosen by the bits of `b`.
pub fn cx(b: u8) -> (DecodeCx, EncodeCx) {
    let mut add_path = Families::NONE;
    if b & 2 != 0 {
        add_path.insert(bgp::wire::Family::Ipv4Unicast);
    }
    if b & 4 != 0 {
        add_path.insert(bgp::wire::Family::Ipv6Unicast);
    }
    let d = DecodeCx {
        four_byte_as: b & 1 != 0,
        add_path_rx: add_path,
        ext_next_hop_v4: b & 8 != 0,
        ebgp_peer_as: (b & 16 != 0).then_some(65002),
    };
    let e = EncodeCx {
        four_byte_as: b & 1 != 0,
        add_path_tx: add_path,
        ext_next_hop_v4: b & 8 != 0,
    };
    (d, e)
}

/// Decode; on success re-encode (must not panic) and decode that again
/// (what we send must be decodable by ourselves); on failure build and
/// encode the NOTIFICATION the error maps to (must not panic).
pub fn check(msg: &[u8], d: &DecodeCx, e: &EncodeCx) {
    match Message::decode(msg, d) {
        Ok(m) => {
            let again = m.to_bytes(e);
            // Re-encoding may legitimately grow past 4096 octets (e.g. a
            // 2-octet AS session gains AS4_PATH); only smaller ones must
            // decode again.
            if again.len() <= 4096 {
                if let Err(err) = Message::decode(&again, d) {
                    panic!(
                        "our own encoding does not decode: {err}\nin:  {msg:02x?}\nout: {again:02x?}"
                    );
                }
            }
        }
        Err(err) => {
            let n = Notification::from(&err);
            let _ = Message::Notification(n).to_bytes(e);
        }
    }
}
