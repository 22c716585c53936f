//! Update groups: peers with the same outbound policy share one Adj-RIB-Out
//! and the same encoded UPDATEs; the source of a route never gets it back
//! (RFC 4456 reflection without the loop), a late joiner gets the group's
//! table, a member that resets starts over.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use bgp::rib::PeerInfo;
use bgp::rib::decision::PeerIdx;
use bgp::wire::*;
use bytes::Bytes;
use common::{Out as Flushed, TestRib as Rib};

mod common;
use common::{LOCAL_AS, p, rib};

/// A route-reflector client (all of them have the same outbound policy).
fn client(last: u8) -> PeerInfo {
    PeerInfo {
        rr_client: true,
        families: Families::only(Family::Ipv4Unicast),
        ..common::info(LOCAL_AS, last)
    }
}
fn announce(prefix: &str, nh_last: u8, local_pref: Option<u32>) -> Update {
    Update {
        attrs: PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::default()),
            next_hop: Some(Ipv4Addr::new(198, 18, 0, nh_last)),
            local_pref,
            ..PathAttrs::default()
        },
        nlri: vec![Nlri::from(p(prefix))],
        ..Update::default()
    }
}

fn withdraw(prefix: &str) -> Update {
    Update {
        withdrawn: vec![Nlri::from(p(prefix))],
        ..Update::default()
    }
}

/// Everything a peer was handed in one flush, as UPDATEs in order.
fn to(out: &Flushed, peer: PeerIdx) -> Vec<Update> {
    let cx = DecodeCx {
        four_byte_as: true,
        ..DecodeCx::default()
    };
    let mut v = Vec::new();
    for (_, b) in out.send.iter().filter(|(x, _)| *x == peer) {
        let mut b: &[u8] = b;
        while let Ok(Some(len)) = frame(b) {
            match Message::decode(&b[..len], &cx) {
                Ok(Message::Update(u)) => v.push(u),
                other => panic!("not an UPDATE: {other:?}"),
            }
            b = &b[len..];
        }
        assert!(b.is_empty(), "a partial message");
    }
    v
}

/// The buffers a peer was handed.
fn bufs(out: &Flushed, peer: PeerIdx) -> Vec<Bytes> {
    out.send
        .iter()
        .filter(|(x, _)| *x == peer)
        .map(|(_, b)| b.clone())
        .collect()
}

fn announced(ups: &[Update]) -> Vec<Prefix> {
    let mut v: Vec<Prefix> = ups
        .iter()
        .flat_map(|u| u.nlri.iter().map(|n| n.prefix))
        .collect();
    v.sort();
    v
}

fn withdrawn(ups: &[Update]) -> Vec<Prefix> {
    let mut v: Vec<Prefix> = ups
        .iter()
        .flat_map(|u| u.withdrawn.iter().map(|n| n.prefix))
        .collect();
    v.sort();
    v
}

fn eors(ups: &[Update]) -> Vec<Family> {
    ups.iter().filter_map(Update::end_of_rib).collect()
}

/// Three clients up and past their initial End-of-RIB.
fn three_clients() -> (Rib, [PeerIdx; 3]) {
    let mut r = rib();
    let peers = [r.add_peer(), r.add_peer(), r.add_peer()];
    for (i, &x) in peers.iter().enumerate() {
        r.peer_up(x, client(i as u8 + 1));
    }
    r.flush();
    (r, peers)
}

#[test]
fn peers_with_the_same_outbound_policy_share_a_group() {
    let mut r = rib();
    let (a, b, c, d, e, f) = (
        r.add_peer(),
        r.add_peer(),
        r.add_peer(),
        r.add_peer(),
        r.add_peer(),
        r.add_peer(),
    );
    r.peer_up(a, client(1));
    r.peer_up(b, client(2));
    // Not a client: another group (it is not sent client-to-client rules).
    let mut nonclient = client(3);
    nonclient.rr_client = false;
    r.peer_up(c, nonclient);
    // ADD-PATH changes the encoding.
    let mut ap = client(4);
    ap.encode.add_path_tx = Families::only(Family::Ipv4Unicast);
    r.peer_up(d, ap);
    // External, another AS.
    let mut ext = client(5);
    ext.source.asn = 65001;
    ext.source.ebgp = true;
    ext.rr_client = false;
    r.peer_up(e, ext);
    // A client with its own import filter and max-prefix: same group
    // (neither changes what it is sent).
    let mut own = client(6);
    own.max_prefix = Some(10);
    own.filters.import = vec![bgp::rib::filter::Rule::all(
        None,
        bgp::rib::filter::FilterAction::Reject,
    )];
    r.peer_up(f, own);
    assert_eq!(
        r.groups(),
        vec![vec![a, b, f], vec![c], vec![d], vec![e]],
        "one group for the plain clients"
    );
    // A member going down leaves; the last one out removes the group.
    r.peer_down(c, Families::NONE);
    r.peer_down(b, Families::NONE);
    assert_eq!(r.groups(), vec![vec![a, f], vec![d], vec![e]]);
}

#[test]
fn members_get_the_same_bytes_and_the_source_nothing() {
    let (mut r, [a, b, c]) = three_clients();
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    let out = r.flush();
    assert!(to(&out, a).is_empty(), "never back to its source");
    let ub = to(&out, b);
    assert_eq!(announced(&ub), vec![p("198.19.1.0/26")]);
    assert_eq!(
        ub[0].attrs.originator_id,
        Some(Ipv4Addr::new(198, 18, 1, 1))
    );
    assert_eq!(
        ub[0].attrs.cluster_list,
        vec![Ipv4Addr::new(198, 18, 0, 10)]
    );
    // Encoded once: b and c hold the same buffer, not copies.
    let (bb, bc) = (bufs(&out, b), bufs(&out, c));
    assert_eq!(bb.len(), 1);
    assert_eq!(bb[0].as_ptr(), bc[0].as_ptr());
    assert_eq!(bb[0], bc[0]);
    assert_eq!(r.counters(a).sent, 0);
    assert_eq!(r.counters(b).sent, 1);

    // Two sources in one flush: each member gets the other's route only.
    r.apply_update(b, &announce("198.19.2.0/26", 2, None));
    r.apply_update(c, &announce("198.19.3.0/26", 3, None));
    let out = r.flush();
    assert_eq!(
        announced(&to(&out, a)),
        vec![p("198.19.2.0/26"), p("198.19.3.0/26")]
    );
    assert_eq!(announced(&to(&out, b)), vec![p("198.19.3.0/26")]);
    assert_eq!(announced(&to(&out, c)), vec![p("198.19.2.0/26")]);
    // Slices of one buffer.
    let base = bufs(&out, a)[0].as_ptr() as usize;
    let len = bufs(&out, a)[0].len();
    for x in [b, c] {
        for s in bufs(&out, x) {
            let at = s.as_ptr() as usize;
            assert!(
                at >= base && at + s.len() <= base + len,
                "a slice of the group's buffer"
            );
        }
    }
    assert_eq!(
        [r.counters(a).sent, r.counters(b).sent, r.counters(c).sent],
        [2, 2, 2]
    );
}

#[test]
fn when_the_best_path_moves_to_a_member_that_member_forgets_the_old_one() {
    let (mut r, [a, b, c]) = three_clients();
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    r.flush();
    // b now has a better path to the same prefix: b had a's route and must
    // drop it; a gets b's; c gets b's in place of a's.
    r.apply_update(b, &announce("198.19.1.0/26", 2, Some(200)));
    let out = r.flush();
    let (ua, ub, uc) = (to(&out, a), to(&out, b), to(&out, c));
    assert_eq!(announced(&ua), vec![p("198.19.1.0/26")]);
    assert_eq!(
        ua[0].attrs.originator_id,
        Some(Ipv4Addr::new(198, 18, 1, 2))
    );
    assert_eq!(withdrawn(&ub), vec![p("198.19.1.0/26")]);
    assert!(announced(&ub).is_empty());
    assert_eq!(announced(&uc), vec![p("198.19.1.0/26")]);
    assert_eq!(
        uc[0].attrs.originator_id,
        Some(Ipv4Addr::new(198, 18, 1, 2))
    );
    assert!(
        withdrawn(&uc).is_empty(),
        "an implicit replace, no withdraw"
    );
    // b withdraws: back to a's path.
    r.apply_update(b, &withdraw("198.19.1.0/26"));
    let out = r.flush();
    assert_eq!(withdrawn(&to(&out, a)), vec![p("198.19.1.0/26")]);
    assert_eq!(announced(&to(&out, b)), vec![p("198.19.1.0/26")]);
    assert_eq!(announced(&to(&out, c)), vec![p("198.19.1.0/26")]);
    // a withdraws: gone for those that had it; nothing to a.
    r.apply_update(a, &withdraw("198.19.1.0/26"));
    let out = r.flush();
    assert!(to(&out, a).is_empty());
    assert_eq!(withdrawn(&to(&out, b)), vec![p("198.19.1.0/26")]);
    assert_eq!(withdrawn(&to(&out, c)), vec![p("198.19.1.0/26")]);
    assert_eq!(
        [r.counters(a).sent, r.counters(b).sent, r.counters(c).sent],
        [0, 0, 0]
    );
}

#[test]
fn a_late_joiner_gets_the_table_then_end_of_rib() {
    let mut r = rib();
    r.originate(p("198.19.99.0/26"), Default::default());
    let (a, b, c, d) = (r.add_peer(), r.add_peer(), r.add_peer(), r.add_peer());
    r.peer_up(a, client(1));
    r.peer_up(b, client(2));
    r.flush();
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    r.apply_update(b, &announce("198.19.2.0/26", 2, None));
    r.flush();
    // c joins with a change pending in the same flush: table, change, EoR.
    r.peer_up(c, client(3));
    r.peer_up(d, client(4));
    r.apply_update(a, &announce("198.19.4.0/26", 1, None));
    let out = r.flush();
    for x in [c, d] {
        let u = to(&out, x);
        assert_eq!(
            announced(&u),
            vec![
                p("198.19.1.0/26"),
                p("198.19.2.0/26"),
                p("198.19.4.0/26"),
                p("198.19.99.0/26")
            ]
        );
        assert_eq!(eors(&u), vec![Family::Ipv4Unicast]);
        assert!(u.last().and_then(Update::end_of_rib).is_some(), "EoR last");
        assert_eq!(r.counters(x).sent, 4);
    }
    // Joiners of one flush share the table's encoding.
    assert_eq!(bufs(&out, c)[0].as_ptr(), bufs(&out, d)[0].as_ptr());
    // The others get the change only.
    assert_eq!(announced(&to(&out, b)), vec![p("198.19.4.0/26")]);
    assert!(to(&out, a).is_empty());
    assert!(eors(&to(&out, b)).is_empty());
}

#[test]
fn a_member_reset_starts_over_without_its_own_routes() {
    let (mut r, [a, b, c]) = three_clients();
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    r.apply_update(c, &announce("198.19.3.0/26", 3, None));
    r.flush();
    // c restarts (graceful): its route stays, stale, and is still sent to
    // the others; the new session is sent the table without its own route.
    r.peer_down(c, Families::only(Family::Ipv4Unicast));
    let out = r.flush();
    assert!(
        out.send.is_empty(),
        "a graceful restart changes nothing for the others"
    );
    r.peer_up(c, client(3));
    let out = r.flush();
    let uc = to(&out, c);
    assert_eq!(announced(&uc), vec![p("198.19.1.0/26")]);
    assert_eq!(eors(&uc), vec![Family::Ipv4Unicast]);
    assert!(to(&out, a).is_empty() && to(&out, b).is_empty());
    // c re-announces and purges: no change for the others either.
    r.apply_update(c, &announce("198.19.3.0/26", 3, None));
    r.purge_stale(c, Family::Ipv4Unicast);
    let out = r.flush();
    assert!(to(&out, c).is_empty());
    // A reset without graceful restart: the others are told to withdraw.
    r.peer_down(c, Families::NONE);
    let out = r.flush();
    assert_eq!(withdrawn(&to(&out, a)), vec![p("198.19.3.0/26")]);
    assert_eq!(withdrawn(&to(&out, b)), vec![p("198.19.3.0/26")]);
    assert!(
        to(&out, c).is_empty(),
        "a member that is down is sent nothing"
    );
    assert_eq!(r.groups(), vec![vec![a, b]]);
}

#[test]
fn route_refresh_resends_the_table_to_that_member_only() {
    let (mut r, [a, b, c]) = three_clients();
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    r.apply_update(b, &announce("198.19.2.0/26", 2, None));
    r.flush();
    r.refresh(b, Families::only(Family::Ipv4Unicast));
    let out = r.flush();
    let ub = to(&out, b);
    assert_eq!(announced(&ub), vec![p("198.19.1.0/26")]);
    assert_eq!(eors(&ub), vec![Family::Ipv4Unicast]);
    assert!(to(&out, a).is_empty() && to(&out, c).is_empty());
}

// The group's log: one copy of each flush's UPDATEs, read by each member at
// its own pace.

/// What a peer holds after the UPDATEs it was sent: prefix → the
/// ORIGINATOR_ID of the route (which client it came from).
type Held = BTreeMap<Prefix, Option<Ipv4Addr>>;

fn apply(held: &mut Held, ups: &[Update]) {
    for u in ups {
        for n in &u.withdrawn {
            held.remove(&n.prefix);
        }
        for n in &u.nlri {
            held.insert(n.prefix, u.attrs.originator_id);
        }
    }
}

fn decode(bufs: &[Bytes]) -> Vec<Update> {
    let out = Flushed {
        send: bufs.iter().map(|b| (0, b.clone())).collect(),
        ..Flushed::default()
    };
    to(&out, 0)
}

fn id(last: u8) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::new(198, 18, 1, last))
}

/// `c`'s view (it announces nothing, so it holds the whole table) without
/// the routes of the client with router id `.last`.
fn without(view: &Held, last: u8) -> Held {
    view.iter()
        .filter(|(_, o)| **o != id(last))
        .map(|(p, o)| (*p, *o))
        .collect()
}

#[test]
fn members_read_one_log_at_their_own_pace_and_it_is_trimmed_behind_the_slowest() {
    let (mut r, [a, b, c]) = three_clients();
    r.hold(b);
    let mut held_c = Held::new();
    for i in 0..5u8 {
        r.apply_update(a, &announce(&format!("198.19.{i}.0/26"), 1, None));
        apply(&mut held_c, &to(&r.flush(), c));
    }
    // One prefix announced, then withdrawn, then announced by another
    // client: a member reading late must end with the last of these.
    r.apply_update(a, &withdraw("198.19.0.0/26"));
    apply(&mut held_c, &to(&r.flush(), c));
    r.apply_update(c, &announce("198.19.0.0/26", 3, None));
    r.flush();
    r.apply_update(a, &announce("198.19.9.0/26", 1, None));
    r.apply_update(a, &withdraw("198.19.9.0/26"));
    apply(&mut held_c, &to(&r.flush(), c));
    // b has read nothing: the log holds every entry since, once.
    let held_bytes = r.out_log_bytes();
    assert!(held_bytes > 0, "b's unread entries are kept");
    let bufs_b = r.read(b);
    assert_eq!(
        bufs_b.len(),
        7,
        "one buffer per flush that changed something"
    );
    assert_eq!(r.out_log_bytes(), 0, "trimmed once the slowest has read");
    let mut held_b = Held::new();
    apply(&mut held_b, &decode(&bufs_b));
    let mut want: Held = (1..5u8)
        .map(|i| (p(&format!("198.19.{i}.0/26")), id(1)))
        .collect();
    want.insert(p("198.19.0.0/26"), id(3));
    assert_eq!(held_b, want, "announce, withdraw, announce: the last wins");
    assert_eq!(held_c, without(&want, 3));
}

#[test]
fn a_member_too_far_behind_is_resynced_and_ends_with_the_right_routes() {
    let (mut r, [a, b, c]) = three_clients();
    for i in 100..106u8 {
        r.apply_update(a, &announce(&format!("198.19.{i}.0/26"), 1, None));
    }
    r.apply_update(b, &announce("198.19.200.0/26", 2, None));
    let out = r.flush();
    let mut held_b = Held::new();
    let mut held_c = Held::new();
    apply(&mut held_b, &to(&out, b));
    apply(&mut held_c, &to(&out, c));
    assert_eq!(held_b.len(), 6);
    let bound = 400;
    r.set_log_bound(bound);
    r.hold(b);
    // While b reads nothing: withdrawals of what it has, a route it has
    // whose best path moves to b itself, announce-then-withdraw, and many
    // new routes, one flush each.
    for i in 100..103u8 {
        r.apply_update(a, &withdraw(&format!("198.19.{i}.0/26")));
        apply(&mut held_c, &to(&r.flush(), c));
    }
    r.apply_update(b, &announce("198.19.103.0/26", 2, Some(200)));
    apply(&mut held_c, &to(&r.flush(), c));
    for i in 0..60u8 {
        r.apply_update(a, &announce(&format!("198.19.{i}.0/26"), 1, None));
        apply(&mut held_c, &to(&r.flush(), c));
        if i % 3 == 0 {
            r.apply_update(a, &withdraw(&format!("198.19.{i}.0/26")));
            apply(&mut held_c, &to(&r.flush(), c));
        }
        assert!(
            r.out_log_bytes() <= bound + 200,
            "the log stays bounded: {} bytes",
            r.out_log_bytes()
        );
    }
    r.resume(b);
    apply(&mut held_b, &to(&r.flush(), b));
    let ups = r.read(b);
    apply(&mut held_b, &decode(&ups));
    assert_eq!(held_b, without(&held_c, 2), "b ends with the group's table");
    assert!(!held_b.contains_key(&p("198.19.100.0/26")));
    assert!(
        !held_b.contains_key(&p("198.19.103.0/26")),
        "b is the source now: it forgot a's route"
    );
    assert_eq!(held_b.len(), 2 + 40, "103..106 but b's, 40 of the 60");
    assert_eq!(r.counters(b).sent as usize, held_b.len());
    // And it follows the log again.
    r.apply_update(a, &announce("198.19.61.0/26", 1, None));
    let ub = to(&r.flush(), b);
    assert_eq!(announced(&ub), vec![p("198.19.61.0/26")]);
    assert_eq!(r.out_log_bytes(), 0);
}

#[test]
fn a_late_joiner_while_another_member_is_behind() {
    let (mut r, [a, b, c]) = three_clients();
    r.hold(b);
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    r.flush();
    r.apply_update(c, &announce("198.19.3.0/26", 3, None));
    r.flush();
    let d = r.add_peer();
    r.peer_up(d, client(4));
    r.apply_update(a, &announce("198.19.4.0/26", 1, None));
    let ud = to(&r.flush(), d);
    assert_eq!(
        announced(&ud),
        vec![p("198.19.1.0/26"), p("198.19.3.0/26"), p("198.19.4.0/26")]
    );
    assert!(ud.last().and_then(Update::end_of_rib).is_some(), "EoR last");
    r.resume(b);
    let ub = to(&r.flush(), b);
    assert_eq!(
        announced(&ub),
        vec![p("198.19.1.0/26"), p("198.19.3.0/26"), p("198.19.4.0/26")]
    );
    assert!(eors(&ub).is_empty(), "b had its End-of-RIB already");
    assert_eq!(r.out_log_bytes(), 0);
}

#[test]
fn a_refresh_asked_while_behind_comes_after_what_came_before_it() {
    let (mut r, [a, b, _c]) = three_clients();
    r.hold(b);
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    r.flush();
    r.refresh(b, Families::only(Family::Ipv4Unicast));
    r.flush();
    r.apply_update(a, &withdraw("198.19.1.0/26"));
    r.apply_update(a, &announce("198.19.2.0/26", 1, None));
    r.flush();
    r.resume(b);
    let ub = to(&r.flush(), b);
    // The change, the table (with it), End-of-RIB, then the next change.
    let kinds: Vec<String> = ub
        .iter()
        .map(|u| {
            if u.end_of_rib().is_some() {
                "eor".to_string()
            } else if !u.withdrawn.is_empty() {
                format!("w{}", u.withdrawn[0].prefix)
            } else {
                format!("a{}", u.nlri[0].prefix)
            }
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "a198.19.1.0/26",
            "a198.19.1.0/26",
            "eor",
            "w198.19.1.0/26",
            "a198.19.2.0/26"
        ]
    );
}

#[test]
fn a_member_that_restarts_while_behind_starts_over_and_frees_the_log() {
    let (mut r, [a, b, c]) = three_clients();
    r.hold(b);
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    r.apply_update(b, &announce("198.19.2.0/26", 2, None));
    r.flush();
    assert!(r.out_log_bytes() > 0);
    let old = r.readers[&b].clone();
    // Graceful restart: its route stays; what it had not read goes.
    r.peer_down(b, Families::only(Family::Ipv4Unicast));
    let out = r.flush();
    assert!(to(&out, a).is_empty() && to(&out, c).is_empty());
    assert_eq!(r.out_log_bytes(), 0, "a member that left holds nothing");
    r.peer_up(b, client(2));
    r.resume(b);
    let ub = to(&r.flush(), b);
    assert_eq!(announced(&ub), vec![p("198.19.1.0/26")], "the table");
    assert_eq!(eors(&ub), vec![Family::Ipv4Unicast]);
    let mut v = Vec::new();
    assert_eq!(
        old.read(usize::MAX, &mut v),
        Err(bgp::rib::Left),
        "the old session's reader reads nothing of the new one's"
    );
    assert!(v.is_empty());
}

#[test]
fn joiners_of_later_flushes_share_an_earlier_table_and_read_the_log_since() {
    let (mut r, [a, b, c]) = three_clients();
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    r.apply_update(b, &announce("198.19.2.0/26", 2, None));
    r.flush();
    // b stops reading: the log keeps every entry from here.
    r.hold(b);
    let d = r.add_peer();
    r.peer_up(d, client(4));
    let out = r.flush();
    let table_d = bufs(&out, d);
    let mut held_d = Held::new();
    apply(&mut held_d, &to(&out, d));
    assert_eq!(held_d.len(), 2);
    // Changes after d's table: a withdrawal, a best path moving from b to
    // c, a new route.
    r.apply_update(a, &withdraw("198.19.1.0/26"));
    apply(&mut held_d, &to(&r.flush(), d));
    r.apply_update(c, &announce("198.19.2.0/26", 3, Some(200)));
    r.apply_update(a, &announce("198.19.5.0/26", 1, None));
    apply(&mut held_d, &to(&r.flush(), d));
    // e joins, and in the same flush the best path of 198.19.2.0/26 moves
    // to e itself: it must not keep c's route, which d's table did not
    // have but a later entry did.
    let e = r.add_peer();
    r.peer_up(e, client(5));
    r.apply_update(e, &announce("198.19.2.0/26", 5, Some(300)));
    r.apply_update(a, &announce("198.19.6.0/26", 1, None));
    let out = r.flush();
    apply(&mut held_d, &to(&out, d));
    let be = bufs(&out, e);
    assert_eq!(
        be[0].as_ptr(),
        table_d[0].as_ptr(),
        "e is sent d's table, not an encoding of its own"
    );
    let ue = to(&out, e);
    assert!(ue.last().and_then(Update::end_of_rib).is_some(), "EoR last");
    let mut held_e = Held::new();
    apply(&mut held_e, &ue);
    let want: Held = [
        (p("198.19.2.0/26"), id(5)),
        (p("198.19.5.0/26"), id(1)),
        (p("198.19.6.0/26"), id(1)),
    ]
    .into_iter()
    .collect();
    assert_eq!(held_d, want);
    assert_eq!(
        held_e,
        without(&want, 5),
        "e ends with the table but its own"
    );
    assert_eq!(r.counters(e).sent as usize, held_e.len());
    // b, reading late, ends the same way; then the log is empty.
    r.resume(b);
    // What b had read: a's route (its own is never sent to it).
    let mut held_b: Held = [(p("198.19.1.0/26"), id(1))].into_iter().collect();
    apply(&mut held_b, &to(&r.flush(), b));
    assert_eq!(held_b, want);
    assert_eq!(r.out_log_bytes(), 0);
}

#[test]
fn a_joiner_that_was_a_source_since_the_last_table_gets_a_table_of_its_own() {
    let (mut r, [a, b, c]) = three_clients();
    r.apply_update(a, &announce("198.19.1.0/26", 1, None));
    r.flush();
    r.hold(b);
    let d = r.add_peer();
    r.peer_up(d, client(4));
    let out = r.flush();
    let table_d = bufs(&out, d);
    // c's session resets (graceful: its routes stay) after announcing,
    // since d's table, a route that is now the best: its new session
    // must forget a's route, which it would read in the log's entries.
    r.apply_update(c, &announce("198.19.1.0/26", 3, Some(200)));
    r.flush();
    r.peer_down(c, Families::only(Family::Ipv4Unicast));
    r.flush();
    r.peer_up(c, client(3));
    let out = r.flush();
    let bc = bufs(&out, c);
    assert!(
        bc.first().is_none_or(|x| x.as_ptr() != table_d[0].as_ptr()),
        "a table of its own"
    );
    let mut held_c = Held::new();
    apply(&mut held_c, &to(&out, c));
    assert!(
        !held_c.contains_key(&p("198.19.1.0/26")),
        "c is the source of 198.19.1.0/26: it holds no other route for it"
    );
}
