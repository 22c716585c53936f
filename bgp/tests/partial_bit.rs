//! RFC 4271 §4.3/§5: the Partial bit of an optional transitive attribute,
//! once set, is never cleared by a later speaker — also for attributes we
//! recognise and re-encode ourselves. Messages are assembled by hand.

use bgp::wire::{DecodeCx, EncodeCx, Message};

fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + b.len()) as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&b);
    m
}

/// (flags, code) of each path attribute of an encoded UPDATE.
fn attr_flags(m: &[u8]) -> Vec<(u8, u8)> {
    let body = &m[19..];
    let wl = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let al = usize::from(u16::from_be_bytes([body[2 + wl], body[3 + wl]]));
    let mut a = &body[4 + wl..4 + wl + al];
    let mut out = Vec::new();
    while !a.is_empty() {
        let (flags, code) = (a[0], a[1]);
        let (len, hdr) = if flags & 0x10 != 0 {
            (usize::from(u16::from_be_bytes([a[2], a[3]])), 4)
        } else {
            (usize::from(a[2]), 3)
        };
        out.push((flags & !0x10, code));
        a = &a[hdr + len..];
    }
    out
}

#[test]
fn partial_bit_survives_decode_and_re_encode() {
    let attrs: Vec<u8> = [
        &[0x40, 1, 1, 0][..],                                      // ORIGIN
        &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea],                     // AS_PATH 65002
        &[0x40, 3, 4, 198, 18, 0, 2],                              // NEXT_HOP
        &[0xe0, 7, 8, 0, 0, 0xfd, 0xea, 198, 18, 0, 2],            // AGGREGATOR, partial
        &[0xe0, 8, 4, 0xfd, 0xea, 0, 1],                           // COMMUNITIES, partial
        &[0xc0, 32, 12, 0, 0, 0xfd, 0xea, 0, 0, 0, 1, 0, 0, 0, 2], // LARGE, not
        &[0xc0, 99, 2, 0xab, 0xcd],                                // unknown, not (yet)
    ]
    .concat();
    let m = update(&attrs, &[24, 198, 19, 1]);
    let cx = DecodeCx {
        four_byte_as: true,
        ..DecodeCx::default()
    };
    let msg = Message::decode(&m, &cx).expect("decodes");
    let out = msg.to_bytes(&EncodeCx {
        four_byte_as: true,
        ..EncodeCx::default()
    });
    let flags = attr_flags(&out);
    let of = |code: u8| flags.iter().find(|(_, c)| *c == code).map(|(f, _)| *f);
    assert_eq!(of(7), Some(0xe0), "AGGREGATOR keeps Partial: {flags:?}");
    assert_eq!(of(8), Some(0xe0), "COMMUNITIES keeps Partial: {flags:?}");
    assert_eq!(of(32), Some(0xc0), "LARGE_COMMUNITY not partial: {flags:?}");
    assert_eq!(of(99), Some(0xc0), "unknown: as received: {flags:?}");
    // A 2-octet-AS receiver gets AS4_AGGREGATOR with the AGGREGATOR's
    // Partial bit only when the AS needs it; here it does not.
    assert!(of(18).is_none());
}
