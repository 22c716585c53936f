//! Communities: extended communities on the wire (RFC 4360, RFC 7606 §7.14),
//! all three kinds kept and passed on by the RIB, the well-known
//! NO_EXPORT / NO_ADVERTISE honoured on export (RFC 1997), non-transitive
//! extended communities kept inside the AS, and per-peer communities added
//! to what we originate.

use std::net::Ipv4Addr;

use bgp::wire::community::{NO_ADVERTISE, NO_EXPORT};
use bgp::wire::*;
use common::TestRib as Rib;

mod common;
use common::{LOCAL_AS, info, p, rib};

fn c(s: &str) -> Community {
    s.parse().expect("community")
}

fn set(v: &[&str]) -> CommunitySet {
    v.iter().map(|s| c(s)).collect()
}

fn cx() -> DecodeCx {
    DecodeCx {
        four_byte_as: true,
        ..DecodeCx::default()
    }
}

fn announce(prefix: &str, path: &[u32], nh: [u8; 4], comms: &CommunitySet) -> Update {
    let mut attrs = PathAttrs {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence(path.to_vec())),
        next_hop: Some(Ipv4Addr::from(nh)),
        ..PathAttrs::default()
    };
    comms.add_to(&mut attrs);
    Update {
        attrs,
        nlri: vec![Nlri::from(p(prefix))],
        ..Update::default()
    }
}

/// The announcements the RIB sent to each peer: (peer, prefix, attrs).
fn sent(r: &mut Rib) -> Vec<(u32, Prefix, PathAttrs)> {
    let mut out = Vec::new();
    for (peer, bytes) in r.flush().send {
        let mut b = &bytes[..];
        while let Ok(Some(len)) = frame(b) {
            if let Ok(Message::Update(u)) = Message::decode(&b[..len], &cx()) {
                for n in &u.nlri {
                    out.push((peer, n.prefix, u.attrs.clone()));
                }
            }
            b = &b[len..];
        }
    }
    out
}

fn to(v: &[(u32, Prefix, PathAttrs)], peer: u32, prefix: &str) -> Option<PathAttrs> {
    v.iter()
        .find(|(q, x, _)| *q == peer && *x == p(prefix))
        .map(|(_, _, a)| a.clone())
}

#[test]
fn extended_communities_round_trip_on_the_wire() {
    let comms = set(&["65001:7", "65001:1:2", "rt:65001:100", "ro:198.18.0.1:3"]);
    let u = announce("198.19.1.0/24", &[65001], [198, 18, 0, 1], &comms);
    let bytes = Message::Update(u.clone()).to_bytes(&EncodeCx {
        four_byte_as: true,
        ..EncodeCx::default()
    });
    let Ok(Message::Update(back)) = Message::decode(&bytes, &cx()) else {
        panic!("decodes");
    };
    assert_eq!(back, u);
    assert_eq!(CommunitySet::of(&back.attrs), comms);
    // Type code 16, optional transitive, 2 × 8 octets.
    let i = bytes
        .windows(3)
        .position(|w| w == [0xc0, 16, 16])
        .expect("EXTENDED COMMUNITIES attribute");
    assert_eq!(&bytes[i + 3..i + 11], &[0, 2, 0xfd, 0xe9, 0, 0, 0, 100]);
}

#[test]
fn rfc7606_7_14_extended_communities_of_a_bad_length_are_treat_as_withdraw() {
    let u = announce(
        "198.19.1.0/24",
        &[65001],
        [198, 18, 0, 1],
        &set(&["rt:65001:100"]),
    );
    let mut bytes = Message::Update(u).to_bytes(&EncodeCx {
        four_byte_as: true,
        ..EncodeCx::default()
    });
    let mut raw = bytes.to_vec();
    let i = raw
        .windows(3)
        .position(|w| w == [0xc0, 16, 8])
        .expect("attribute");
    // Claim 7 octets: the attribute list still parses (one octet moves
    // into the next attribute's header), the value length is wrong.
    raw[i + 2] = 7;
    raw.remove(i + 3 + 7);
    let total = (raw.len() as u16).to_be_bytes();
    raw[16..18].copy_from_slice(&total);
    let attrs_len = u16::from_be_bytes([raw[21], raw[22]]) - 1;
    raw[21..23].copy_from_slice(&attrs_len.to_be_bytes());
    bytes = bytes::Bytes::from(raw);
    let Ok(Message::Update(back)) = Message::decode(&bytes, &cx()) else {
        panic!("an RFC 7606 error is not a decode failure");
    };
    assert!(back.treat_as_withdraw(), "{:?}", back.issues);
}

#[test]
fn communities_of_every_kind_are_kept_and_passed_on() {
    let mut r = rib();
    let (a, b) = (r.add_peer(), r.add_peer());
    r.peer_up(a, info(65001, 1));
    r.peer_up(b, info(65002, 2));
    let comms = set(&["65001:7", "65001:1:2", "rt:65001:100"]);
    r.apply_update(
        a,
        &announce("198.19.1.0/24", &[65001], [198, 18, 0, 1], &comms),
    );
    let best = r.best(&p("198.19.1.0/24")).expect("in the RIB");
    assert_eq!(CommunitySet::of(&best[0].1.attrs()), comms);
    let out = sent(&mut r);
    let to_b = to(&out, b, "198.19.1.0/24").expect("sent to b");
    assert_eq!(CommunitySet::of(&to_b), comms);
    // And the RIB listing shows them.
    let listed = r.routes(10);
    assert_eq!(listed.len(), 1);
    assert_eq!(CommunitySet::of(&listed[0].paths[0].attrs.attrs()), comms);
}

#[test]
fn rfc1997_no_export_stays_in_the_as_no_advertise_goes_nowhere() {
    let mut r = rib();
    let (ext_a, ext_b, ibgp) = (r.add_peer(), r.add_peer(), r.add_peer());
    r.peer_up(ext_a, info(65001, 1));
    r.peer_up(ext_b, info(65002, 2));
    r.peer_up(ibgp, info(LOCAL_AS, 3));
    r.apply_update(
        ext_a,
        &announce(
            "198.19.1.0/24",
            &[65001],
            [198, 18, 0, 1],
            &set(&["no-export"]),
        ),
    );
    r.apply_update(
        ext_a,
        &announce(
            "198.19.2.0/24",
            &[65001],
            [198, 18, 0, 1],
            &set(&["no-advertise", "65001:9"]),
        ),
    );
    r.apply_update(
        ext_a,
        &announce("198.19.3.0/24", &[65001], [198, 18, 0, 1], &set(&[])),
    );
    // Our own route marked NO_EXPORT by configuration.
    r.originate(p("198.19.64.0/26"), set(&["65010:1", "no-export"]));
    let out = sent(&mut r);
    assert!(
        to(&out, ext_b, "198.19.1.0/24").is_none(),
        "NO_EXPORT to eBGP"
    );
    let kept = to(&out, ibgp, "198.19.1.0/24").expect("NO_EXPORT to iBGP");
    assert!(kept.communities.contains(&NO_EXPORT));
    assert!(to(&out, ext_b, "198.19.2.0/24").is_none(), "NO_ADVERTISE");
    assert!(to(&out, ibgp, "198.19.2.0/24").is_none(), "NO_ADVERTISE");
    assert!(to(&out, ext_b, "198.19.3.0/24").is_some());
    assert!(to(&out, ext_a, "198.19.64.0/26").is_none());
    assert!(to(&out, ibgp, "198.19.64.0/26").is_some());
    // They are still ours to use: in the RIB and selected.
    assert!(
        r.best(&p("198.19.2.0/24"))
            .is_some_and(|b| b[0].1.communities().contains(&NO_ADVERTISE))
    );
    // A route that gains NO_EXPORT later is withdrawn from eBGP peers.
    r.apply_update(
        ext_a,
        &announce(
            "198.19.3.0/24",
            &[65001],
            [198, 18, 0, 1],
            &set(&["no-export"]),
        ),
    );
    let flushed = r.flush();
    let withdrawn: Vec<(u32, Prefix)> = flushed
        .send
        .iter()
        .flat_map(|(peer, bytes)| {
            let mut v = Vec::new();
            let mut b = &bytes[..];
            while let Ok(Some(len)) = frame(b) {
                if let Ok(Message::Update(u)) = Message::decode(&b[..len], &cx()) {
                    v.extend(u.withdrawn.iter().map(|n| (*peer, n.prefix)));
                }
                b = &b[len..];
            }
            v
        })
        .collect();
    assert_eq!(withdrawn, vec![(ext_b, p("198.19.3.0/24"))]);
}

#[test]
fn non_transitive_extended_communities_stay_in_the_as() {
    let mut r = rib();
    let (ibgp_a, ext_b, ibgp_c) = (r.add_peer(), r.add_peer(), r.add_peer());
    let mut client = info(LOCAL_AS, 1);
    client.rr_client = true;
    r.peer_up(ibgp_a, client);
    r.peer_up(ext_b, info(65002, 2));
    r.peer_up(ibgp_c, info(LOCAL_AS, 3));
    let comms = set(&["rt:65010:1", "ext:0x4300000000000001"]);
    r.apply_update(
        ibgp_a,
        &announce("198.19.1.0/24", &[], [198, 18, 0, 1], &comms),
    );
    let out = sent(&mut r);
    let inside = to(&out, ibgp_c, "198.19.1.0/24").expect("reflected");
    assert_eq!(inside.ext_communities.len(), 2);
    let outside = to(&out, ext_b, "198.19.1.0/24").expect("to eBGP");
    assert_eq!(
        outside.ext_communities,
        vec![ExtCommunity([0, 2, 0xfd, 0xf2, 0, 0, 0, 1])]
    );
}

#[test]
fn per_peer_communities_go_on_our_routes_to_that_peer_only() {
    let mut r = rib();
    let (a, b, tagged) = (r.add_peer(), r.add_peer(), r.add_peer());
    r.peer_up(a, info(65001, 1));
    r.peer_up(b, info(65002, 2));
    let mut i = info(65003, 3);
    i.communities = set(&["65010:300", "65010:3:3", "rt:65010:3"]);
    r.peer_up(tagged, i);
    r.originate(p("198.19.64.0/26"), set(&["65010:1"]));
    r.apply_update(
        a,
        &announce("198.19.1.0/24", &[65001], [198, 18, 0, 1], &set(&[])),
    );
    let out = sent(&mut r);
    let ours = to(&out, tagged, "198.19.64.0/26").expect("sent");
    assert_eq!(
        CommunitySet::of(&ours),
        set(&["65010:1", "65010:300", "65010:3:3", "rt:65010:3"])
    );
    let plain = to(&out, b, "198.19.64.0/26").expect("sent");
    assert_eq!(CommunitySet::of(&plain), set(&["65010:1"]));
    // A route learned from another peer passes untouched.
    let transit = to(&out, tagged, "198.19.1.0/24").expect("sent");
    assert!(CommunitySet::of(&transit).is_empty());
}
