//! RFC 7606 revised error handling, RFC 4271 §6 header/OPEN errors and the
//! NOTIFICATION each maps to. Messages are assembled octet by octet here, not
//! with the encoder under test.

use bgp::wire::{Action, DecodeCx, DecodeError, Family, Message, Notification, Update};

fn header(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// UPDATE from raw withdrawn, attribute and NLRI fields.
fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    header(2, &b)
}

const ORIGIN_IGP: &[u8] = &[0x40, 1, 1, 0];
const AS_PATH_65002: &[u8] = &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea];
const NEXT_HOP: &[u8] = &[0x40, 3, 4, 198, 18, 0, 2];
const NLRI_198_19_1: &[u8] = &[24, 198, 19, 1];

fn attrs(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn ibgp() -> DecodeCx {
    DecodeCx {
        four_byte_as: true,
        ..DecodeCx::default()
    }
}

fn ebgp() -> DecodeCx {
    DecodeCx {
        four_byte_as: true,
        ebgp_peer_as: Some(65002),
        ..DecodeCx::default()
    }
}

fn decode_update(m: &[u8], cx: &DecodeCx) -> Update {
    match Message::decode(m, cx) {
        Ok(Message::Update(u)) => u,
        other => panic!("expected an UPDATE, got {other:?}"),
    }
}

fn reset(m: &[u8], cx: &DecodeCx) -> Notification {
    match Message::decode(m, cx) {
        Err(e) => Notification::from(e),
        Ok(other) => panic!("expected a session reset, got {other:?}"),
    }
}

fn actions(u: &Update) -> Vec<(u8, Action)> {
    u.issues.iter().map(|i| (i.code, i.action)).collect()
}

#[test]
fn a_clean_update_has_no_issue() {
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP]),
        NLRI_198_19_1,
    );
    let u = decode_update(&m, &ebgp());
    assert!(u.issues.is_empty());
    assert_eq!(u.nlri.len(), 1);
    assert!(!u.treat_as_withdraw());
}

#[test]
fn s7_1_origin_with_undefined_value_or_bad_length_is_treat_as_withdraw() {
    for bad in [&[0x40, 1, 1, 3][..], &[0x40, 1, 2, 0, 0][..]] {
        let m = update(&[], &attrs(&[bad, AS_PATH_65002, NEXT_HOP]), NLRI_198_19_1);
        let u = decode_update(&m, &ebgp());
        assert!(u.treat_as_withdraw(), "{bad:?}");
        assert_eq!(
            u.nlri.len(),
            1,
            "the NLRI is still parsed so it can be withdrawn"
        );
    }
}

#[test]
fn s7_2_malformed_as_path_is_treat_as_withdraw() {
    // zero-length segment, unknown segment type, segment overrun, one octet left over
    for bad in [
        &[0x40, 2, 2, 2, 0][..],
        &[0x40, 2, 6, 9, 1, 0, 0, 0xfd, 0xea][..],
        &[0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xea][..],
        &[0x40, 2, 7, 2, 1, 0, 0, 0xfd, 0xea, 2][..],
    ] {
        let m = update(&[], &attrs(&[ORIGIN_IGP, bad, NEXT_HOP]), NLRI_198_19_1);
        assert_eq!(
            actions(&decode_update(&m, &ebgp())),
            vec![(2, Action::TreatAsWithdraw)]
        );
    }
}

#[test]
fn ebgp_path_must_start_with_the_peer_as() {
    let other = &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xeb][..];
    let m = update(&[], &attrs(&[ORIGIN_IGP, other, NEXT_HOP]), NLRI_198_19_1);
    assert!(decode_update(&m, &ebgp()).treat_as_withdraw());
    assert!(!decode_update(&m, &ibgp()).treat_as_withdraw());
}

#[test]
fn s7_3_4_next_hop_and_med_with_bad_length_are_treat_as_withdraw() {
    let nh5 = &[0x40, 3, 5, 198, 18, 0, 2, 0][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, nh5]),
        NLRI_198_19_1,
    );
    assert!(decode_update(&m, &ebgp()).treat_as_withdraw());
    let med3 = &[0x80, 4, 3, 0, 0, 1][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, med3]),
        NLRI_198_19_1,
    );
    assert_eq!(
        actions(&decode_update(&m, &ebgp())),
        vec![(4, Action::TreatAsWithdraw)]
    );
}

#[test]
fn s7_5_local_pref_from_external_peer_is_discarded_internal_kept() {
    let lp = &[0x40, 5, 4, 0, 0, 0, 200][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, lp]),
        NLRI_198_19_1,
    );
    let u = decode_update(&m, &ebgp());
    assert_eq!(actions(&u), vec![(5, Action::AttributeDiscard)]);
    assert_eq!(u.attrs.local_pref, None);
    assert!(!u.treat_as_withdraw());
    assert_eq!(decode_update(&m, &ibgp()).attrs.local_pref, Some(200));
}

#[test]
fn s7_6_7_atomic_aggregate_and_aggregator_with_bad_length_are_discarded() {
    let aa = &[0x40, 6, 1, 0][..];
    let agg = &[0xc0, 7, 5, 0, 0, 1, 2, 3][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, aa, agg]),
        NLRI_198_19_1,
    );
    let u = decode_update(&m, &ebgp());
    assert_eq!(
        actions(&u),
        vec![(6, Action::AttributeDiscard), (7, Action::AttributeDiscard)]
    );
    assert!(!u.atomic_and_aggregator_present());
    assert!(!u.treat_as_withdraw());
}

trait Present {
    fn atomic_and_aggregator_present(&self) -> bool;
}
impl Present for Update {
    fn atomic_and_aggregator_present(&self) -> bool {
        self.attrs.atomic_aggregate || self.attrs.aggregator.is_some()
    }
}

#[test]
fn s7_8_10_14_list_attributes_with_bad_length_are_treat_as_withdraw() {
    for bad in [
        &[0xc0, 8, 3, 0, 0, 1][..],
        &[0xc0, 8, 0][..],
        &[0xc0, 32, 4, 0, 0, 0, 1][..],
    ] {
        let m = update(
            &[],
            &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, bad]),
            NLRI_198_19_1,
        );
        assert!(decode_update(&m, &ebgp()).treat_as_withdraw(), "{bad:?}");
    }
    let cl = &[0x80, 10, 3, 1, 2, 3][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, cl]),
        NLRI_198_19_1,
    );
    assert!(decode_update(&m, &ibgp()).treat_as_withdraw());
    let oid = &[0x80, 9, 3, 1, 2, 3][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, oid]),
        NLRI_198_19_1,
    );
    assert!(decode_update(&m, &ibgp()).treat_as_withdraw());
}

/// RFC 4456 attributes are kept from an internal peer and discarded from an
/// external one (they must not steer loop detection across AS boundaries).
#[test]
fn route_reflection_attributes_kept_internal_discarded_external() {
    let oid = &[0x80, 9, 4, 198, 18, 0, 2][..];
    let cl = &[0x80, 10, 8, 198, 18, 0, 100, 198, 18, 0, 200][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, oid, cl]),
        NLRI_198_19_1,
    );
    let u = decode_update(&m, &ibgp());
    assert!(u.issues.is_empty(), "{:?}", u.issues);
    assert_eq!(
        u.attrs.originator_id,
        Some(std::net::Ipv4Addr::new(198, 18, 0, 2))
    );
    assert_eq!(
        u.attrs.cluster_list,
        [
            std::net::Ipv4Addr::new(198, 18, 0, 100),
            std::net::Ipv4Addr::new(198, 18, 0, 200)
        ]
    );
    let u = decode_update(&m, &ebgp());
    assert_eq!(
        actions(&u),
        vec![
            (9, Action::AttributeDiscard),
            (10, Action::AttributeDiscard)
        ]
    );
    assert!(!u.treat_as_withdraw());
    assert_eq!(
        (u.attrs.originator_id, u.attrs.cluster_list.len()),
        (None, 0)
    );
}

#[test]
fn s3_c_flag_conflict_is_treat_as_withdraw() {
    let origin_optional = &[0xc0, 1, 1, 0][..];
    let m = update(
        &[],
        &attrs(&[origin_optional, AS_PATH_65002, NEXT_HOP]),
        NLRI_198_19_1,
    );
    assert_eq!(
        actions(&decode_update(&m, &ebgp())),
        vec![(1, Action::TreatAsWithdraw)]
    );
}

#[test]
fn s3_d_missing_well_known_attribute_is_treat_as_withdraw() {
    let m = update(&[], &attrs(&[ORIGIN_IGP, NEXT_HOP]), NLRI_198_19_1);
    assert_eq!(
        actions(&decode_update(&m, &ibgp())),
        vec![(2, Action::TreatAsWithdraw)]
    );
    let m = update(&[], &attrs(&[ORIGIN_IGP, AS_PATH_65002]), NLRI_198_19_1);
    assert_eq!(
        actions(&decode_update(&m, &ebgp())),
        vec![(3, Action::TreatAsWithdraw)]
    );
    // A pure withdrawal needs no attribute at all.
    let m = update(NLRI_198_19_1, &[], &[]);
    let u = decode_update(&m, &ebgp());
    assert!(u.issues.is_empty());
    assert_eq!(u.withdrawn.len(), 1);
}

#[test]
fn s3_g_repeated_attribute_keeps_the_first_but_repeated_mp_reach_resets() {
    let c1 = &[0xc0, 8, 4, 0, 1, 0, 1][..];
    let c2 = &[0xc0, 8, 4, 0, 2, 0, 2][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, c1, c2]),
        NLRI_198_19_1,
    );
    let u = decode_update(&m, &ebgp());
    assert!(u.issues.is_empty());
    assert_eq!(u.attrs.communities, vec![0x0001_0001]);

    let unreach = &[0x80, 15, 3, 0, 2, 1][..];
    let m = update(&[], &attrs(&[unreach, unreach]), &[]);
    let n = reset(&m, &ebgp());
    assert_eq!((n.code, n.subcode), (3, 1));
}

#[test]
fn s4_attribute_overrunning_the_list_is_treat_as_withdraw() {
    // COMMUNITIES claims 8 octets, 4 remain.
    let tail = &[0xc0, 8, 8, 0, 1, 0, 1][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, tail]),
        NLRI_198_19_1,
    );
    let u = decode_update(&m, &ebgp());
    assert!(u.treat_as_withdraw());
    assert_eq!(u.nlri.len(), 1);
    // Two stray octets after the last attribute (header underrun).
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, &[0x40, 1]]),
        NLRI_198_19_1,
    );
    assert!(decode_update(&m, &ebgp()).treat_as_withdraw());
    // With nothing to withdraw, the session must be reset (§3 h).
    let m = update(&[], &attrs(&[ORIGIN_IGP, tail]), &[]);
    assert_eq!(reset(&m, &ebgp()).code, 3);
}

#[test]
fn total_attribute_length_past_the_message_resets_with_malformed_attribute_list() {
    let mut m = update(&[], &attrs(&[ORIGIN_IGP]), &[]);
    m[21] = 0x10; // Total Attribute Length 4096+
    let n = reset(&m, &ebgp());
    assert_eq!((n.code, n.subcode), (3, 1));
}

#[test]
fn s5_3_syntactically_incorrect_nlri_resets_the_session() {
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP]),
        &[33, 1, 2, 3, 4, 5],
    );
    assert_eq!(
        (reset(&m, &ebgp()).code, reset(&m, &ebgp()).subcode),
        (3, 10)
    );
    let m = update(&[24, 198], &[], &[]);
    assert_eq!(reset(&m, &ebgp()).subcode, 10);
    // MP_UNREACH with a truncated IPv6 prefix.
    let unreach = &[0x80, 15, 5, 0, 2, 1, 64, 0x20][..];
    let n = reset(&update(&[], unreach, &[]), &ebgp());
    assert_eq!((n.code, n.subcode), (3, 9));
    assert_eq!(&n.data[..], unreach, "data is the erroneous attribute");
}

#[test]
fn s7_11_mp_reach_with_inconsistent_next_hop_length_resets() {
    let reach = &[0x80, 14, 11, 0, 2, 1, 5, 1, 2, 3, 4, 5, 0, 0][..];
    let m = update(&[], &attrs(&[ORIGIN_IGP, AS_PATH_65002, reach]), &[]);
    assert_eq!(reset(&m, &ebgp()).subcode, 9);
}

#[test]
fn mp_reach_ipv6_is_parsed_and_unknown_family_ignored() {
    let mut reach = vec![0x80, 14, 0, 0, 2, 1, 16];
    reach.extend_from_slice(
        &"2001:db8:ff::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    reach.extend_from_slice(&[0, 48, 0x20, 0x01, 0x0d, 0xb8, 0, 0x20]);
    reach[2] = (reach.len() - 3) as u8;
    let m = update(&[], &attrs(&[&reach, ORIGIN_IGP, AS_PATH_65002]), &[]);
    let u = decode_update(&m, &ebgp());
    let r = u.mp_reach.as_ref().unwrap();
    assert_eq!(r.family, Family::Ipv6Unicast);
    assert_eq!(r.nlri[0].prefix.to_string(), "2001:db8:20::/48");
    assert!(u.issues.is_empty());
    // AFI 25 (L2VPN) is not ours: ignored, not an error.
    let l2 = &[0x80, 15, 3, 0, 25, 70][..];
    assert!(
        decode_update(&update(&[], l2, &[]), &ebgp())
            .mp_unreach
            .is_none()
    );
}

#[test]
fn unrecognized_attributes() {
    // well-known (optional bit clear) and unknown: session reset, data = attribute
    let wk = &[0x40, 99, 1, 7][..];
    let n = reset(
        &update(
            &[],
            &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, wk]),
            NLRI_198_19_1,
        ),
        &ebgp(),
    );
    assert_eq!((n.code, n.subcode, &n.data[..]), (3, 2, wk));
    // optional transitive: passed through; optional non-transitive: dropped
    let ot = &[0xc0, 99, 2, 7, 8][..];
    let on = &[0x80, 98, 1, 7][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_65002, NEXT_HOP, ot, on]),
        NLRI_198_19_1,
    );
    let u = decode_update(&m, &ebgp());
    assert_eq!(u.attrs.unknown.len(), 1);
    assert_eq!(
        (u.attrs.unknown[0].code, &u.attrs.unknown[0].value[..]),
        (99, &[7u8, 8][..])
    );
}

#[test]
fn as4_path_from_a_two_octet_peer_is_merged() {
    let cx = DecodeCx {
        four_byte_as: false,
        ebgp_peer_as: Some(65002),
        ..DecodeCx::default()
    };
    // AS_PATH [65002 23456 23456], AS4_PATH [4200000001 4200000002]
    let path = &[0x40, 2, 8, 2, 3, 0xfd, 0xea, 0x5b, 0xa0, 0x5b, 0xa0][..];
    let as4 = &[
        0xc0, 17, 10, 2, 2, 0xfa, 0x56, 0xea, 0x01, 0xfa, 0x56, 0xea, 0x02,
    ][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, path, NEXT_HOP, as4]),
        NLRI_198_19_1,
    );
    let u = decode_update(&m, &cx);
    assert_eq!(
        u.attrs.as_path.unwrap().segments[0].asns,
        vec![65002, 4_200_000_001, 4_200_000_002]
    );
    // An AGGREGATOR that is not AS_TRANS means AS4_PATH must be ignored.
    let agg = &[0xc0, 7, 6, 0xfd, 0xea, 1, 2, 3, 4][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, path, NEXT_HOP, agg, as4]),
        NLRI_198_19_1,
    );
    let u = decode_update(&m, &cx);
    assert_eq!(
        u.attrs.as_path.unwrap().segments[0].asns,
        vec![65002, 23456, 23456]
    );
    // A longer AS4_PATH than AS_PATH is ignored too.
    let long4 = &[
        0xc0, 17, 18, 2, 4, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4,
    ][..];
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, path, NEXT_HOP, long4]),
        NLRI_198_19_1,
    );
    assert_eq!(decode_update(&m, &cx).attrs.as_path.unwrap().path_len(), 3);
}

#[test]
fn end_of_rib_markers() {
    assert_eq!(
        decode_update(&update(&[], &[], &[]), &ebgp()).end_of_rib(),
        Some(Family::Ipv4Unicast)
    );
    let eor6 = &[0x80, 15, 3, 0, 2, 1][..];
    assert_eq!(
        decode_update(&update(&[], eor6, &[]), &ebgp()).end_of_rib(),
        Some(Family::Ipv6Unicast)
    );
    assert_eq!(
        decode_update(&update(NLRI_198_19_1, &[], &[]), &ebgp()).end_of_rib(),
        None
    );
}

#[test]
fn rfc4271_s6_1_header_errors() {
    let mut ka = header(4, &[]);
    ka[3] = 0;
    assert_eq!(
        Notification::from(Message::decode(&ka, &ebgp()).unwrap_err()).subcode,
        1
    );
    let n = Notification::from(Message::decode(&header(4, &[0]), &ebgp()).unwrap_err());
    assert_eq!((n.code, n.subcode, &n.data[..]), (1, 2, &[0, 20][..]));
    let n = Notification::from(Message::decode(&header(9, &[]), &ebgp()).unwrap_err());
    assert_eq!((n.code, n.subcode, &n.data[..]), (1, 3, &[9][..]));
    // Length field above 4096 is rejected by the framer before buffering.
    let mut big = header(2, &[0, 0, 0, 0]);
    big[16..18].copy_from_slice(&5000u16.to_be_bytes());
    assert_eq!(
        bgp::wire::frame(&big),
        Err(DecodeError::BadLength { ty: 2, len: 5000 })
    );
}

fn open_body(version: u8, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version, 0xfd, 0xea];
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    header(1, &b)
}

#[test]
fn rfc4271_s6_2_open_errors() {
    let n = Notification::from(
        Message::decode(&open_body(3, 90, [1, 1, 1, 1], &[]), &ebgp()).unwrap_err(),
    );
    assert_eq!((n.code, n.subcode, &n.data[..]), (2, 1, &[0, 4][..]));
    let n = Notification::from(
        Message::decode(&open_body(4, 2, [1, 1, 1, 1], &[]), &ebgp()).unwrap_err(),
    );
    assert_eq!((n.code, n.subcode), (2, 6));
    let n = Notification::from(
        Message::decode(&open_body(4, 90, [0, 0, 0, 0], &[]), &ebgp()).unwrap_err(),
    );
    assert_eq!((n.code, n.subcode), (2, 3));
    let n = Notification::from(
        Message::decode(&open_body(4, 90, [1, 1, 1, 1], &[1, 0]), &ebgp()).unwrap_err(),
    );
    assert_eq!((n.code, n.subcode), (2, 4));
    // A capability that overruns its parameter.
    let n = Notification::from(
        Message::decode(&open_body(4, 90, [1, 1, 1, 1], &[2, 3, 65, 4, 0]), &ebgp()).unwrap_err(),
    );
    assert_eq!((n.code, n.subcode), (2, 0));
    // Hold time 0 is legal.
    assert!(Message::decode(&open_body(4, 0, [1, 1, 1, 1], &[]), &ebgp()).is_ok());
}

#[test]
fn rfc7313_route_refresh_with_bad_length() {
    let n = Notification::from(Message::decode(&header(5, &[0, 1, 0, 1, 0]), &ebgp()).unwrap_err());
    assert_eq!((n.code, n.subcode), (7, 1));
    assert_eq!(n.data.len(), 24, "data is the whole message");
}

#[test]
fn max_prefix_cease_carries_afi_safi_and_limit() {
    let n = Notification::max_prefixes(Family::Ipv6Unicast, 1000);
    assert_eq!(
        (n.code, n.subcode, &n.data[..]),
        (6, 1, &[0, 2, 1, 0, 0, 0x03, 0xe8][..])
    );
}
