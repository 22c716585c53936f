//! Property tests: any UPDATE/OPEN we can build survives encode → decode,
//! and no input, however hostile, makes the decoder panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bgp::wire::*;
use bytes::Bytes;
use proptest::prelude::*;

fn prefix_v4() -> impl Strategy<Value = Prefix> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(a, l)| Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap())
}

fn prefix_v6() -> impl Strategy<Value = Prefix> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, l)| Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), l).unwrap())
}

fn nlri(p: impl Strategy<Value = Prefix>, add_path: bool) -> impl Strategy<Value = Vec<Nlri>> {
    prop::collection::vec((p, any::<u32>()), 0..40).prop_map(move |v| {
        v.into_iter()
            .map(|(prefix, id)| Nlri {
                prefix,
                path_id: if add_path { id } else { 0 },
            })
            .collect()
    })
}

fn as_path(four: bool) -> impl Strategy<Value = AsPath> {
    let asn = if four {
        (1u32..=u32::MAX).boxed()
    } else {
        (1u32..=65535)
            .prop_filter("not AS_TRANS", |a| *a != AS_TRANS)
            .boxed()
    };
    let kind = prop_oneof![Just(SegmentKind::Sequence), Just(SegmentKind::Set)];
    prop::collection::vec((kind, prop::collection::vec(asn, 1..12)), 0..4).prop_map(|segs| AsPath {
        segments: segs
            .into_iter()
            .map(|(kind, asns)| AsSegment { kind, asns })
            .collect(),
    })
}

fn attrs(four: bool, with_nh: bool) -> impl Strategy<Value = PathAttrs> {
    (
        prop_oneof![
            Just(Origin::Igp),
            Just(Origin::Egp),
            Just(Origin::Incomplete)
        ],
        as_path(four),
        any::<u32>().prop_map(Ipv4Addr::from),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        any::<bool>(),
        prop::option::of(
            (1u32..=65535, any::<u32>()).prop_map(|(asn, a)| Aggregator {
                asn,
                addr: Ipv4Addr::from(a),
            }),
        ),
        prop::collection::vec(any::<u32>(), 0..8),
        (
            prop::collection::vec((any::<u32>(), any::<u32>(), any::<u32>()), 0..4),
            prop::collection::vec(any::<[u8; 8]>().prop_map(ExtCommunity), 0..4),
        ),
        prop::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        prop::collection::vec(any::<u32>().prop_map(Ipv4Addr::from), 0..4),
        prop::collection::vec((50u8..=60, prop::collection::vec(any::<u8>(), 0..40)), 0..2),
    )
        .prop_map(
            move |(
                origin,
                path,
                nh,
                med,
                lp,
                atomic,
                agg,
                comms,
                (large, ext),
                oid,
                cl,
                unknown,
            )| {
                let mut unknown: Vec<RawAttr> = unknown
                    .into_iter()
                    .map(|(code, v)| RawAttr {
                        flags: 0xc0,
                        code,
                        value: Bytes::from(v),
                    })
                    .collect();
                unknown.sort_by_key(|u| u.code);
                unknown.dedup_by_key(|u| u.code);
                PathAttrs {
                    origin: Some(origin),
                    as_path: Some(path),
                    next_hop: with_nh.then_some(nh),
                    med,
                    local_pref: lp,
                    atomic_aggregate: atomic,
                    aggregator: agg,
                    communities: comms,
                    large_communities: large
                        .into_iter()
                        .map(|(global, local1, local2)| LargeCommunity {
                            global,
                            local1,
                            local2,
                        })
                        .collect(),
                    ext_communities: ext,
                    originator_id: oid,
                    cluster_list: cl,
                    unknown,
                    partial: Default::default(),
                }
            },
        )
}

fn update(four: bool, add_path: bool) -> impl Strategy<Value = Update> {
    (
        nlri(prefix_v4(), add_path),
        nlri(prefix_v4(), add_path),
        attrs(four, true),
        prop::option::of((
            nlri(prefix_v6(), add_path),
            any::<u128>(),
            prop::option::of(any::<u128>()),
        )),
        prop::option::of(nlri(prefix_v6(), add_path)),
    )
        .prop_map(|(withdrawn, nlri, mut attrs, reach, unreach)| {
            let mp_reach = reach.map(|(n, g, ll)| MpReach {
                family: Family::Ipv6Unicast,
                next_hop: NextHop::V6 {
                    global: Ipv6Addr::from(g),
                    link_local: ll.map(Ipv6Addr::from),
                },
                nlri: n,
            });
            if nlri.is_empty() {
                attrs.next_hop = None;
            }
            Update {
                withdrawn,
                attrs,
                mp_reach,
                mp_unreach: unreach.map(|w| MpUnreach {
                    family: Family::Ipv6Unicast,
                    withdrawn: w,
                }),
                nlri,
                issues: Vec::new(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn update_round_trips((four, add_path, u) in (any::<bool>(), any::<bool>())
        .prop_flat_map(|(f, a)| (Just(f), Just(a), update(f, a)))) {
        let fams = if add_path { Families::BOTH } else { Families::NONE };
        let ecx = EncodeCx { four_byte_as: four, add_path_tx: fams, ext_next_hop_v4: false };
        let dcx = DecodeCx { four_byte_as: four, add_path_rx: fams, ..DecodeCx::default() };
        let wire = Message::Update(u.clone()).to_bytes(&ecx);
        prop_assume!(wire.len() <= MAX_MESSAGE_LEN);
        let back = Message::decode(&wire, &dcx).unwrap();
        prop_assert_eq!(back, Message::Update(u));
    }

    /// The RIB's compact attribute sets give back exactly what went in,
    /// answer the decision process's questions as the full attributes do,
    /// and equal contents share one copy.
    #[test]
    fn interned_attributes_are_what_went_in(
        mut a in attrs(true, false),
        (no_origin, no_path, nh) in (any::<bool>(), any::<bool>(), any::<u32>()),
    ) {
        if no_origin {
            a.origin = None;
        }
        if no_path {
            a.as_path = None;
        }
        let nh = NextHop::V4(Ipv4Addr::from(nh));
        let mut i = bgp::rib::intern::Interner::default();
        let x = i.intern(&a, nh);
        prop_assert_eq!(x.attrs(), a.clone());
        prop_assert_eq!(x.next_hop, nh);
        let path = a.as_path.clone().unwrap_or_default();
        prop_assert_eq!(x.as_path_len(), path.path_len());
        prop_assert_eq!(x.first_as(), path.first_as());
        prop_assert_eq!(x.has_as_path(), a.as_path.is_some());
        for asn in path.segments.iter().flat_map(|s| s.asns.iter()) {
            prop_assert!(x.path_contains(*asn));
        }
        prop_assert_eq!(x.originator_id(), a.originator_id);
        prop_assert_eq!(x.cluster_list(), &a.cluster_list[..]);
        prop_assert_eq!(x.communities(), &a.communities[..]);
        prop_assert_eq!((x.med(), x.local_pref(), x.origin()), (a.med, a.local_pref, a.origin));
        let mut with_nh = a.clone();
        with_nh.next_hop = Some(Ipv4Addr::new(192, 0, 2, 1));
        prop_assert!(std::sync::Arc::ptr_eq(&x, &i.intern(&with_nh, nh)), "NEXT_HOP field ignored, one copy");
        let mut other = a.clone();
        other.med = Some(a.med.map_or(0, |m| m.wrapping_add(1)));
        prop_assert!(!std::sync::Arc::ptr_eq(&x, &i.intern(&other, nh)));
        prop_assert_eq!(i.len(), 2);
    }

    #[test]
    fn packed_announcements_fit_and_decode(prefixes in prop::collection::vec(prefix_v4(), 1..3000), a in attrs(true, false)) {
        let cx = EncodeCx { four_byte_as: true, ..EncodeCx::default() };
        let nl: Vec<Nlri> = prefixes.iter().map(|p| Nlri::from(*p)).collect();
        let mut out = bytes::BytesMut::new();
        let n = update::encode_announce(&a, Family::Ipv4Unicast, NextHop::V4(Ipv4Addr::new(198, 18, 0, 1)), &nl, &cx, &mut out);
        let mut got = Vec::new();
        let mut buf = &out[..];
        let mut msgs = 0;
        while let Some(len) = frame(buf).unwrap() {
            let Message::Update(u) = Message::decode(&buf[..len], &DecodeCx { four_byte_as: true, ..DecodeCx::default() }).unwrap() else { panic!() };
            prop_assert!(u.issues.is_empty());
            prop_assert_eq!(u.attrs.communities.clone(), a.communities.clone());
            got.extend(u.nlri);
            buf = &buf[len..];
            msgs += 1;
        }
        prop_assert_eq!(msgs, n);
        prop_assert_eq!(got, nl);
    }

    #[test]
    fn open_round_trips(asn in any::<u32>(), hold in prop_oneof![Just(0u16), 3u16..], id in 1u32..,
                        gr in prop::option::of((any::<bool>(), 0u16..4096))) {
        let mut caps = vec![Capability::mp(Family::Ipv4Unicast), Capability::mp(Family::Ipv6Unicast),
            Capability::RouteRefresh, Capability::EnhancedRouteRefresh, Capability::FourByteAs(asn),
            Capability::AddPath(vec![(1, 1, AddPathMode::Receive)]), Capability::ExtendedNextHop(vec![(1, 1, 2)])];
        if let Some((r, t)) = gr {
            caps.push(Capability::GracefulRestart(GracefulRestartCap { restarting: r, notification: false, restart_time: t,
                families: vec![GrFamily { afi: 1, safi: 1, forwarding_preserved: true }] }));
        }
        let o = Open { asn, hold_time: hold, router_id: Ipv4Addr::from(id), capabilities: caps };
        let wire = Message::Open(o.clone()).to_bytes(&EncodeCx::default());
        prop_assert_eq!(Message::decode(&wire, &DecodeCx::default()).unwrap(), Message::Open(o));
    }

    #[test]
    fn hostile_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600), ty in 1u8..=5,
                                 four in any::<bool>(), ap in any::<bool>()) {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        m.push(ty);
        m.extend_from_slice(&body);
        let cx = DecodeCx { four_byte_as: four, add_path_rx: if ap { Families::BOTH } else { Families::NONE },
            ext_next_hop_v4: ap, ebgp_peer_as: four.then_some(65001) };
        if let Err(e) = Message::decode(&m, &cx) {
            let n = Notification::from(e);
            prop_assert!((1..=7).contains(&n.code));
        }
        let _ = frame(&m);
    }

    #[test]
    fn hostile_updates_with_valid_framing_never_panic(attrs in prop::collection::vec(any::<u8>(), 0..300), nl in prop::collection::vec(any::<u8>(), 0..40)) {
        let mut b = vec![0, 0];
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(&attrs);
        b.extend_from_slice(&nl);
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&((19 + b.len()) as u16).to_be_bytes());
        m.push(2);
        m.extend_from_slice(&b);
        let _ = Message::decode(&m, &DecodeCx::default());
    }
}
