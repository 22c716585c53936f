//! RIB: decision process (RFC 4271 §9.1.2.2), ECMP, export rules (iBGP split
//! horizon, RFC 4456 reflection, next hop self/keep), graceful restart
//! stale handling, max-prefix counting, interning.

use std::net::{IpAddr, Ipv4Addr};

use bgp::rib::decision::DecisionOptions;
use bgp::wire::*;
use common::TestRib as Rib;

mod common;
use common::{LOCAL_AS, info, p};

fn rib(multipath: usize) -> Rib {
    common::rib_with(DecisionOptions {
        always_compare_med: false,
        multipath,
    })
}

fn announce(
    prefixes: &[&str],
    path: &[u32],
    nh: [u8; 4],
    f: impl FnOnce(&mut PathAttrs),
) -> Update {
    let mut attrs = PathAttrs {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence(path.to_vec())),
        next_hop: Some(Ipv4Addr::from(nh)),
        ..PathAttrs::default()
    };
    f(&mut attrs);
    Update {
        attrs,
        nlri: prefixes.iter().map(|s| Nlri::from(p(s))).collect(),
        ..Update::default()
    }
}

fn best_peer(r: &Rib, s: &str) -> Option<u32> {
    r.best(&p(s)).and_then(|v| v.first().map(|x| x.0))
}

/// Decode what the RIB sent to a peer.
fn sent_updates(bytes: &[u8]) -> Vec<Update> {
    let mut v = Vec::new();
    let mut b = bytes;
    while let Ok(Some(len)) = frame(b) {
        if let Ok(Message::Update(u)) = Message::decode(
            &b[..len],
            &DecodeCx {
                four_byte_as: true,
                ..DecodeCx::default()
            },
        ) {
            v.push(u);
        }
        b = &b[len..];
    }
    v
}

#[test]
fn s9_1_2_2_decision_steps_in_order() {
    let mut r = rib(1);
    let (a, b) = (r.add_peer(), r.add_peer());
    r.peer_up(a, info(65001, 1));
    r.peer_up(b, info(65002, 2));
    // a) higher LOCAL_PREF wins over a shorter path (iBGP-style attrs on eBGP for the test)
    r.apply_update(
        a,
        &announce(&["198.19.1.0/24"], &[65001, 1, 2], [198, 18, 0, 1], |x| {
            x.local_pref = Some(200)
        }),
    );
    r.apply_update(
        b,
        &announce(&["198.19.1.0/24"], &[65002], [198, 18, 0, 2], |_| {}),
    );
    assert_eq!(best_peer(&r, "198.19.1.0/24"), Some(a));
    // b) shorter AS_PATH
    r.apply_update(
        a,
        &announce(&["198.19.2.0/24"], &[65001, 7], [198, 18, 0, 1], |_| {}),
    );
    r.apply_update(
        b,
        &announce(&["198.19.2.0/24"], &[65002], [198, 18, 0, 2], |_| {}),
    );
    assert_eq!(best_peer(&r, "198.19.2.0/24"), Some(b));
    // c) lower ORIGIN
    r.apply_update(
        a,
        &announce(&["198.19.3.0/24"], &[65001], [198, 18, 0, 1], |x| {
            x.origin = Some(Origin::Incomplete)
        }),
    );
    r.apply_update(
        b,
        &announce(&["198.19.3.0/24"], &[65002], [198, 18, 0, 2], |x| {
            x.origin = Some(Origin::Egp)
        }),
    );
    assert_eq!(best_peer(&r, "198.19.3.0/24"), Some(b));
    // g) lowest identifier breaks the final tie
    r.apply_update(
        a,
        &announce(&["198.19.4.0/24"], &[65001], [198, 18, 0, 1], |_| {}),
    );
    r.apply_update(
        b,
        &announce(&["198.19.4.0/24"], &[65002], [198, 18, 0, 2], |_| {}),
    );
    assert_eq!(best_peer(&r, "198.19.4.0/24"), Some(a));
}

#[test]
fn med_is_compared_only_within_the_same_neighbour_as() {
    let mut r = rib(1);
    let (a, b, c) = (r.add_peer(), r.add_peer(), r.add_peer());
    r.peer_up(a, info(65001, 1));
    r.peer_up(b, info(65001, 2));
    r.peer_up(c, info(65003, 3));
    // a (MED 50) beats b (MED 10)? no: b wins on MED within AS 65001; c has
    // MED 100 but another neighbour AS, so it is not eliminated by MED and
    // wins on identifier against... b (id .2) vs c (id .3): b.
    r.apply_update(
        a,
        &announce(&["198.19.9.0/24"], &[65001], [198, 18, 0, 1], |x| {
            x.med = Some(50)
        }),
    );
    r.apply_update(
        b,
        &announce(&["198.19.9.0/24"], &[65001], [198, 18, 0, 2], |x| {
            x.med = Some(10)
        }),
    );
    r.apply_update(
        c,
        &announce(&["198.19.9.0/24"], &[65003], [198, 18, 0, 3], |x| {
            x.med = Some(100)
        }),
    );
    assert_eq!(best_peer(&r, "198.19.9.0/24"), Some(b));
    // Without b, a (MED 50) and c (MED 100, other AS) tie on MED; a wins on id.
    r.apply_update(
        b,
        &Update {
            withdrawn: vec![Nlri::from(p("198.19.9.0/24"))],
            ..Update::default()
        },
    );
    assert_eq!(best_peer(&r, "198.19.9.0/24"), Some(a));
}

#[test]
fn ebgp_is_preferred_over_ibgp() {
    let mut r = rib(1);
    let (i, e) = (r.add_peer(), r.add_peer());
    r.peer_up(i, info(LOCAL_AS, 1));
    r.peer_up(e, info(65002, 2));
    r.apply_update(
        i,
        &announce(&["198.19.5.0/24"], &[65002], [198, 18, 0, 1], |_| {}),
    );
    r.apply_update(
        e,
        &announce(&["198.19.5.0/24"], &[65002], [198, 18, 0, 2], |_| {}),
    );
    assert_eq!(best_peer(&r, "198.19.5.0/24"), Some(e));
}

#[test]
fn ecmp_set_goes_to_the_fib_and_shrinks_on_withdraw() {
    let mut r = rib(4);
    let (a, b) = (r.add_peer(), r.add_peer());
    r.peer_up(a, info(65001, 1));
    r.peer_up(b, info(65002, 2));
    r.apply_update(
        a,
        &announce(&["198.19.6.0/24"], &[65001], [198, 18, 0, 1], |_| {}),
    );
    r.apply_update(
        b,
        &announce(&["198.19.6.0/24"], &[65002], [198, 18, 0, 2], |_| {}),
    );
    let f = r.flush().fib;
    let last = f
        .iter()
        .rev()
        .find(|c| c.prefix == p("198.19.6.0/24"))
        .unwrap();
    assert_eq!(last.next_hops.len(), 2);
    r.apply_update(
        a,
        &Update {
            withdrawn: vec![Nlri::from(p("198.19.6.0/24"))],
            ..Update::default()
        },
    );
    let f = r.flush().fib;
    assert_eq!(
        f.last().unwrap().next_hops,
        vec![IpAddr::from([198, 18, 0, 2])]
    );
    r.apply_update(
        b,
        &Update {
            withdrawn: vec![Nlri::from(p("198.19.6.0/24"))],
            ..Update::default()
        },
    );
    assert!(r.flush().fib.last().unwrap().next_hops.is_empty());
}

#[test]
fn as_loop_and_treat_as_withdraw_are_not_imported() {
    let mut r = rib(1);
    let a = r.add_peer();
    r.peer_up(a, info(65001, 1));
    r.apply_update(
        a,
        &announce(
            &["198.19.7.0/24"],
            &[65001, LOCAL_AS],
            [198, 18, 0, 1],
            |_| {},
        ),
    );
    assert_eq!(best_peer(&r, "198.19.7.0/24"), None);
    r.apply_update(
        a,
        &announce(&["198.19.7.0/24"], &[65001], [198, 18, 0, 1], |_| {}),
    );
    assert_eq!(best_peer(&r, "198.19.7.0/24"), Some(a));
    let mut u = announce(&["198.19.7.0/24"], &[65001], [198, 18, 0, 1], |_| {});
    u.issues.push(AttrIssue {
        code: 1,
        action: Action::TreatAsWithdraw,
        reason: "test",
    });
    r.apply_update(a, &u);
    assert_eq!(
        best_peer(&r, "198.19.7.0/24"),
        None,
        "treat-as-withdraw removes the old path"
    );
    assert_eq!(r.counters(a).rejected, 2);
}

#[test]
fn ibgp_split_horizon_and_ebgp_export() {
    let mut r = rib(1);
    let (i1, i2, e) = (r.add_peer(), r.add_peer(), r.add_peer());
    r.peer_up(i1, info(LOCAL_AS, 1));
    r.peer_up(i2, info(LOCAL_AS, 2));
    r.peer_up(e, info(65002, 3));
    r.flush();
    r.apply_update(
        i1,
        &announce(&["198.19.8.0/24"], &[65005], [198, 18, 0, 1], |x| {
            x.local_pref = Some(150)
        }),
    );
    let out = r.flush();
    let to = |idx| {
        out.send
            .iter()
            .find(|(p, _)| *p == idx)
            .map(|(_, b)| sent_updates(b))
            .unwrap_or_default()
    };
    assert!(
        to(i2).is_empty(),
        "iBGP route not re-advertised to iBGP without reflection"
    );
    assert!(to(i1).is_empty(), "not back to its source");
    let u = &to(e)[0];
    assert_eq!(
        u.attrs.as_path.as_ref().unwrap().segments[0].asns,
        vec![LOCAL_AS, 65005]
    );
    assert_eq!(
        u.attrs.next_hop,
        Some(Ipv4Addr::new(198, 18, 0, 10)),
        "next hop self toward eBGP"
    );
    assert_eq!(u.attrs.local_pref, None, "no LOCAL_PREF to eBGP");
    assert_eq!(r.counters(e).sent, 1);
}

#[test]
fn rfc4456_reflection_sets_originator_and_cluster_and_detects_loops() {
    let mut r = rib(1);
    let (client, nonclient) = (r.add_peer(), r.add_peer());
    let mut ci = info(LOCAL_AS, 1);
    ci.rr_client = true;
    r.peer_up(client, ci);
    r.peer_up(nonclient, info(LOCAL_AS, 2));
    r.flush();
    r.apply_update(
        client,
        &announce(&["198.19.10.0/24"], &[], [198, 18, 0, 1], |_| {}),
    );
    let out = r.flush();
    let (_, b) = out
        .send
        .iter()
        .find(|(p, _)| *p == nonclient)
        .expect("reflected to the non-client");
    let u = &sent_updates(b)[0];
    assert_eq!(u.attrs.originator_id, Some(Ipv4Addr::new(198, 18, 1, 1)));
    assert_eq!(u.attrs.cluster_list, vec![Ipv4Addr::new(198, 18, 0, 10)]);
    assert_eq!(
        u.attrs.next_hop,
        Some(Ipv4Addr::new(198, 18, 0, 1)),
        "next hop kept on reflection"
    );
    // A route carrying our cluster id or our router id as originator is a loop.
    r.apply_update(
        nonclient,
        &announce(&["198.19.11.0/24"], &[], [198, 18, 0, 2], |x| {
            x.cluster_list = vec![Ipv4Addr::new(198, 18, 0, 10)]
        }),
    );
    r.apply_update(
        nonclient,
        &announce(&["198.19.12.0/24"], &[], [198, 18, 0, 2], |x| {
            x.originator_id = Some(Ipv4Addr::new(198, 18, 0, 10))
        }),
    );
    assert_eq!(best_peer(&r, "198.19.11.0/24"), None);
    assert_eq!(best_peer(&r, "198.19.12.0/24"), None);
    // Non-client routes are reflected to clients only.
    r.apply_update(
        nonclient,
        &announce(&["198.19.13.0/24"], &[], [198, 18, 0, 2], |_| {}),
    );
    let out = r.flush();
    assert!(
        out.send
            .iter()
            .any(|(p, b)| *p == client && !sent_updates(b).is_empty())
    );
}

#[test]
fn originated_routes_are_exported_with_next_hop_self_and_end_of_rib() {
    let mut r = rib(1);
    r.originate(
        p("198.19.64.0/26"),
        CommunitySet {
            standard: vec![(65010 << 16) | 1],
            ..CommunitySet::default()
        },
    );
    let e = r.add_peer();
    r.peer_up(e, info(65002, 3));
    let out = r.flush();
    assert!(out.fib.is_empty(), "our own blocks are not FIB routes");
    // The table and the End-of-RIB may come as separate buffers.
    let ups: Vec<Update> = out
        .send
        .iter()
        .filter(|(x, _)| *x == e)
        .flat_map(|(_, b)| sent_updates(b))
        .collect();
    assert_eq!(ups[0].nlri[0].prefix, p("198.19.64.0/26"));
    assert_eq!(
        ups[0].attrs.as_path.as_ref().unwrap().segments[0].asns,
        vec![LOCAL_AS]
    );
    assert_eq!(ups[0].attrs.communities, vec![(65010 << 16) | 1]);
    assert_eq!(
        ups.iter()
            .filter_map(Update::end_of_rib)
            .collect::<Vec<_>>(),
        vec![Family::Ipv4Unicast, Family::Ipv6Unicast]
    );
    r.withdraw_local(&p("198.19.64.0/26"));
    let ups = sent_updates(&r.flush().send[0].1);
    assert_eq!(ups[0].withdrawn[0].prefix, p("198.19.64.0/26"));
}

#[test]
fn rfc4724_stale_routes_survive_peer_loss_until_purged() {
    let mut r = rib(1);
    let a = r.add_peer();
    r.peer_up(a, info(65001, 1));
    r.apply_update(
        a,
        &announce(
            &["198.19.20.0/24", "198.19.21.0/24"],
            &[65001],
            [198, 18, 0, 1],
            |_| {},
        ),
    );
    r.flush();
    r.peer_down(a, Families::BOTH);
    assert_eq!(
        best_peer(&r, "198.19.20.0/24"),
        Some(a),
        "kept while restarting"
    );
    assert!(r.flush().fib.is_empty(), "forwarding unchanged");
    // Back up: one route refreshed, then End-of-RIB purges the other.
    r.peer_up(a, info(65001, 1));
    r.apply_update(
        a,
        &announce(&["198.19.20.0/24"], &[65001], [198, 18, 0, 1], |_| {}),
    );
    r.purge_stale(a, Family::Ipv4Unicast);
    assert_eq!(best_peer(&r, "198.19.20.0/24"), Some(a));
    assert_eq!(best_peer(&r, "198.19.21.0/24"), None);
    let fib = r.flush().fib;
    assert_eq!(
        fib,
        vec![bgp::rib::FibChange {
            prefix: p("198.19.21.0/24"),
            next_hops: vec![]
        }]
    );
}

/// RFC 4724 §4.1: restarting, a route reflector sends its clients nothing
/// (not even End-of-RIB, which would make them purge the routes they keep
/// from it) until it has every client's routes; then complete tables.
#[test]
fn rfc4724_restarting_speaker_defers_initial_updates_until_told() {
    let mut r = rib(1);
    r.defer_initial_updates();
    assert!(r.deferring());
    let (a, b) = (r.add_peer(), r.add_peer());
    let client = |last| {
        let mut i = info(LOCAL_AS, last);
        i.rr_client = true;
        i
    };
    r.originate(p("198.19.99.0/26"), Default::default());
    r.peer_up(a, client(1));
    r.apply_update(
        a,
        &announce(&["198.19.1.0/26"], &[], [198, 18, 0, 1], |_| {}),
    );
    r.refresh(a, Families::BOTH); // a route refresh asks for nothing yet
    let out = r.flush();
    assert!(out.send.is_empty(), "nothing sent while deferring");
    assert_eq!(out.fib.len(), 1, "the FIB is not deferred");
    r.peer_up(b, client(2));
    r.apply_update(
        b,
        &announce(&["198.19.2.0/26"], &[], [198, 18, 0, 2], |_| {}),
    );
    assert!(r.flush().send.is_empty());

    r.end_deferral();
    assert!(!r.deferring());
    let out = r.flush();
    let to = |peer| -> Vec<Update> {
        out.send
            .iter()
            .filter(|(x, _)| *x == peer)
            .flat_map(|(_, b)| sent_updates(b))
            .collect()
    };
    for (peer, other) in [(a, "198.19.2.0/26"), (b, "198.19.1.0/26")] {
        let ups = to(peer);
        let nlri: Vec<Prefix> = ups
            .iter()
            .flat_map(|u| u.nlri.iter().map(|n| n.prefix))
            .collect();
        assert!(
            nlri.contains(&p(other)) && nlri.contains(&p("198.19.99.0/26")),
            "{peer}: {nlri:?}"
        );
        assert_eq!(
            ups.iter()
                .filter_map(Update::end_of_rib)
                .collect::<Vec<_>>(),
            vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            "End-of-RIB after the complete table"
        );
        assert!(
            ups.last().and_then(Update::end_of_rib).is_some(),
            "End-of-RIB comes last"
        );
    }
    // Afterwards changes flow as usual.
    r.withdraw_local(&p("198.19.99.0/26"));
    assert_eq!(r.flush().send.len(), 2);
}

#[test]
fn non_graceful_down_withdraws_everything() {
    let mut r = rib(1);
    let a = r.add_peer();
    r.peer_up(a, info(65001, 1));
    r.apply_update(
        a,
        &announce(&["198.19.22.0/24"], &[65001], [198, 18, 0, 1], |_| {}),
    );
    r.peer_down(a, Families::NONE);
    assert_eq!(r.len(Family::Ipv4Unicast), 0);
    assert_eq!(r.counters(a).accepted, [0, 0]);
}

#[test]
fn max_prefix_is_reported_once_when_exceeded() {
    let mut r = rib(1);
    let a = r.add_peer();
    let mut i = info(65001, 1);
    i.max_prefix = Some(2);
    r.peer_up(a, i);
    r.apply_update(
        a,
        &announce(
            &["198.19.30.0/24", "198.19.31.0/24"],
            &[65001],
            [198, 18, 0, 1],
            |_| {},
        ),
    );
    assert!(r.flush().max_prefix.is_empty());
    r.apply_update(
        a,
        &announce(&["198.19.32.0/24"], &[65001], [198, 18, 0, 1], |_| {}),
    );
    r.apply_update(
        a,
        &announce(&["198.19.33.0/24"], &[65001], [198, 18, 0, 1], |_| {}),
    );
    assert_eq!(r.flush().max_prefix, vec![(a, Family::Ipv4Unicast, 2)]);
}

#[test]
fn attributes_are_shared_between_prefixes() {
    let mut r = rib(1);
    let a = r.add_peer();
    r.peer_up(a, info(65001, 1));
    for i in 0..100u32 {
        let s = format!("198.19.{}.0/24", i);
        r.apply_update(a, &announce(&[&s], &[65001], [198, 18, 0, 1], |_| {}));
    }
    assert_eq!(r.len(Family::Ipv4Unicast), 100);
    assert_eq!(r.attribute_sets(), 1);
}

/// The mesh giving way to a reflector, at a client: the path from the
/// client-to-client session goes, the reflected copy (same next hop, the
/// originator's) takes over. The kernel route stays as it is: no FIB
/// change at all, so no delete and re-add either.
#[test]
fn losing_the_direct_path_to_a_reflected_copy_with_its_next_hop_changes_no_fib_route() {
    let mut r = rib(1);
    let (direct, reflector) = (r.add_peer(), r.add_peer());
    r.peer_up(direct, info(LOCAL_AS, 14));
    r.peer_up(reflector, info(LOCAL_AS, 11));
    let block = "198.19.4.0/26";
    r.apply_update(direct, &announce(&[block], &[], [198, 18, 0, 14], |_| {}));
    r.apply_update(
        reflector,
        &announce(&[block], &[], [198, 18, 0, 14], |x| {
            x.originator_id = Some(Ipv4Addr::new(198, 18, 1, 14));
            x.cluster_list = vec![Ipv4Addr::new(244, 0, 0, 1)];
        }),
    );
    let fib = r.flush().fib;
    assert_eq!(
        fib.iter()
            .filter(|c| c.prefix == p(block))
            .map(|c| c.next_hops.clone())
            .collect::<Vec<_>>(),
        vec![vec![IpAddr::from([198, 18, 0, 14])]],
        "installed once"
    );
    assert_eq!(best_peer(&r, block), Some(direct), "shorter CLUSTER_LIST");
    r.peer_down(direct, Families::NONE);
    assert_eq!(best_peer(&r, block), Some(reflector));
    assert!(r.flush().fib.is_empty(), "forwarding unchanged");
}
