//! Round trips on messages captured from BIRD 2.0.12, FRR 8.4 and GoBGP 3.10
//! (see `testdata/captured.txt` for where and how), route reflection among
//! them.
//!
//! For every vector: it decodes without any RFC 7606 issue, re-encodes to the
//! same octets up to the freedoms RFC 4271 leaves the sender (attribute order,
//! extended-length bit on short attributes, capabilities grouped in one or
//! several optional parameters, the Partial bit on known attributes), and the
//! re-encoded message decodes to the same value.

use bgp::wire::{DecodeCx, EncodeCx, Families, Family, Message};

const CAPTURED: &str = include_str!("../testdata/captured.txt");

fn asn(name: &str) -> u32 {
    match name {
        "frr" => 65002,
        "frrc" => 64514,
        "birdc" => 64513,
        "birdrr" | "birdcl" => 64512,
        _ => 65001,
    }
}

/// The negotiated context of each captured session, as its OPENs say.
fn contexts(session: &str) -> (DecodeCx, EncodeCx) {
    let (from, to) = session.split_once('>').unwrap();
    let pair = |a: &str, b: &str| (from == a && to == b) || (from == b && to == a);
    let four = !pair("bird", "frr");
    let add_path = if pair("bird", "gobgp") {
        Families::only(Family::Ipv4Unicast)
    } else {
        Families::NONE
    };
    let ebgp = asn(from) != asn(to);
    let dcx = DecodeCx {
        four_byte_as: four,
        add_path_rx: add_path,
        ext_next_hop_v4: false,
        ebgp_peer_as: ebgp.then(|| asn(from)),
    };
    let ecx = EncodeCx {
        four_byte_as: four,
        add_path_tx: add_path,
        ext_next_hop_v4: false,
    };
    (dcx, ecx)
}

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

/// Rewrite a captured message into the canonical form our encoder emits,
/// using only the wire format (no call into the codec under test).
fn canonical(msg: &[u8]) -> Vec<u8> {
    let body = &msg[19..];
    let out_body = match msg[18] {
        1 => {
            let mut o = body[..9].to_vec();
            let params = &body[10..10 + usize::from(body[9])];
            let mut caps = Vec::new();
            let mut i = 0;
            while i < params.len() {
                let plen = usize::from(params[i + 1]);
                let p = &params[i + 2..i + 2 + plen];
                let mut j = 0;
                while j < p.len() {
                    let clen = usize::from(p[j + 1]);
                    caps.push(p[j..j + 2 + clen].to_vec());
                    j += 2 + clen;
                }
                i += 2 + plen;
            }
            let mut ps = Vec::new();
            for c in caps {
                ps.push(2u8);
                ps.push(c.len() as u8);
                ps.extend_from_slice(&c);
            }
            o.push(ps.len() as u8);
            o.extend_from_slice(&ps);
            o
        }
        2 => {
            let wlen = be16(body);
            let alen = be16(&body[2 + wlen..]);
            let attrs = &body[4 + wlen..4 + wlen + alen];
            let nlri = &body[4 + wlen + alen..];
            let mut list = Vec::new();
            let mut i = 0;
            while i < attrs.len() {
                let (flags, code) = (attrs[i], attrs[i + 1]);
                let (len, hl) = if flags & 0x10 != 0 {
                    (be16(&attrs[i + 2..]), 4)
                } else {
                    (usize::from(attrs[i + 2]), 3)
                };
                let value = attrs[i + hl..i + hl + len].to_vec();
                let known = matches!(code, 1..=10 | 14..=18 | 32);
                let mut f = flags & !0x10;
                // Partial is kept on optional transitive attributes (known
                // or not) and meaningless on the others.
                if known && !matches!(code, 7 | 8 | 16 | 17 | 18 | 32) {
                    f &= !0x20;
                }
                if len > 255 {
                    f |= 0x10;
                }
                list.push((code, f, value));
                i += hl + len;
            }
            list.sort_by_key(|(c, _, _)| (!matches!(c, 14 | 15), *c));
            let mut a = Vec::new();
            for (code, f, v) in list {
                a.push(f);
                a.push(code);
                if f & 0x10 != 0 {
                    a.extend_from_slice(&(v.len() as u16).to_be_bytes());
                } else {
                    a.push(v.len() as u8);
                }
                a.extend_from_slice(&v);
            }
            let mut o = body[..2 + wlen].to_vec();
            o.extend_from_slice(&(a.len() as u16).to_be_bytes());
            o.extend_from_slice(&a);
            o.extend_from_slice(nlri);
            o
        }
        _ => body.to_vec(),
    };
    let mut m = msg[..19].to_vec();
    m.extend_from_slice(&out_body);
    let len = (m.len() as u16).to_be_bytes();
    m[16..18].copy_from_slice(&len);
    m
}

#[test]
fn captured_messages_round_trip() {
    let mut counts = std::collections::BTreeMap::new();
    for line in CAPTURED
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut f = line.split_whitespace();
        let (session, ty, hex) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let wire = hex::decode(hex).unwrap();
        let (dcx, ecx) = contexts(session);
        let msg = Message::decode(&wire, &dcx)
            .unwrap_or_else(|e| panic!("{session} {ty} does not decode: {e}\n{hex}"));
        if let Message::Update(u) = &msg {
            assert!(
                u.issues.is_empty(),
                "{session} {hex}: unexpected issues {:?}",
                u.issues
            );
        }
        let again = msg.to_bytes(&ecx);
        assert_eq!(
            hex::encode(&again),
            hex::encode(canonical(&wire)),
            "{session} {ty} re-encodes differently"
        );
        assert_eq!(
            Message::decode(&again, &dcx).unwrap(),
            msg,
            "{session} {ty}"
        );
        *counts.entry(ty.to_string()).or_insert(0) += 1;
    }
    // The capture holds every message type the daemons exchanged.
    for ty in [
        "OPEN",
        "UPDATE",
        "KEEPALIVE",
        "NOTIFICATION",
        "ROUTE-REFRESH",
    ] {
        assert!(counts.get(ty).copied().unwrap_or(0) > 0, "no {ty} vector");
    }
}

#[test]
fn captured_content_is_what_the_daemons_were_configured_to_send() {
    use bgp::wire::{Capability, Prefix};
    let find = |session: &str, needle: &str| -> Message {
        let line = CAPTURED
            .lines()
            .find(|l| l.starts_with(session) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {session} line with {needle}"));
        let mut f = line.split_whitespace();
        let (sess, _, hex) = (f.next().unwrap(), f.next(), f.next().unwrap());
        Message::decode(&hex::decode(hex).unwrap(), &contexts(sess).0).unwrap()
    };
    // FRR's OPEN: AS 65002, router id 198.18.0.2, IPv4+IPv6, 4-octet AS.
    let Message::Open(o) = find("frr>bird OPEN", "") else {
        panic!()
    };
    assert_eq!(o.asn, 65002);
    assert_eq!(o.router_id.to_string(), "198.18.0.2");
    assert_eq!(o.families(), Families::BOTH);
    assert!(o.has(|c| matches!(c, Capability::FourByteAs(65002))));
    assert!(o.graceful_restart().is_some());
    // FRR prepended 4200000099 to 198.19.21.0/24; BIRD runs without 4-octet
    // AS, so it arrives as AS_TRANS + AS4_PATH and must merge back.
    let Message::Update(u) = find("frr>bird UPDATE", "fa56ea63") else {
        panic!()
    };
    assert_eq!(
        u.attrs.as_path.as_ref().unwrap().segments[0].asns,
        vec![65002, 4_200_000_099]
    );
    assert_eq!(
        u.nlri[0].prefix,
        "198.19.21.0/24".parse::<Prefix>().unwrap()
    );
    assert_eq!(u.attrs.communities, vec![(65002 << 16) | 7]);
    // FRR's standard, well-known, large and extended communities.
    let Message::Update(u) = find("frrc>birdc UPDATE", "") else {
        panic!()
    };
    let c = |s: &str| s.parse::<bgp::wire::Community>().unwrap();
    assert_eq!(
        bgp::wire::CommunitySet::of(&u.attrs)
            .iter()
            .collect::<Vec<_>>(),
        [
            c("64514:9"),
            c("no-export"),
            c("64514:1:1"),
            c("rt:64514:3")
        ]
    );
    // BIRD reflecting FRR's routes (RFC 4456), both families.
    for needle in ["18c61328", "20010db80040"] {
        let Message::Update(u) = find("birdrr>birdcl UPDATE", needle) else {
            panic!()
        };
        assert_eq!(u.attrs.originator_id.unwrap().to_string(), "198.18.0.2");
        assert_eq!(
            u.attrs.cluster_list,
            vec!["198.18.0.100".parse::<std::net::Ipv4Addr>().unwrap()]
        );
    }
    // GoBGP to BIRD over ADD-PATH: path identifiers present.
    let Message::Update(u) = find("gobgp>bird UPDATE", "18c6131e") else {
        panic!()
    };
    assert_eq!(u.nlri.len(), 1);
    assert_eq!(u.nlri[0].path_id, 1);
    assert_eq!(u.attrs.local_pref, Some(200));
    assert_eq!(u.attrs.med, Some(10));
}
