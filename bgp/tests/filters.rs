//! Route filters in the RIB: per-peer import and export rules (first match
//! decides, as Calico's BGPFilter), the speaker-wide default export rules
//! after them, and a change of the defaults re-evaluating what every peer
//! was sent.

use std::net::Ipv4Addr;

use bgp::rib::filter::{FilterAction, MatchOp, Rule};
use bgp::rib::{PeerFilters, PeerInfo};
use bgp::wire::*;
use common::TestRib as Rib;

mod common;
use common::{p, rib};

fn info(asn: u32, last: u8, filters: PeerFilters) -> PeerInfo {
    PeerInfo {
        filters,
        ..common::info(asn, last)
    }
}
fn rule(cidr: &str, op: MatchOp, action: FilterAction) -> Rule {
    Rule {
        family: None,
        cidr: Some((p(cidr), op)),
        len: None,
        remote_only: false,
        action,
    }
}

fn announce(prefixes: &[&str], asn: u32, nh: [u8; 4]) -> Update {
    Update {
        attrs: PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(vec![asn])),
            next_hop: Some(Ipv4Addr::from(nh)),
            ..PathAttrs::default()
        },
        nlri: prefixes.iter().map(|s| Nlri::from(p(s))).collect(),
        ..Update::default()
    }
}

/// (peer, prefix, announced?) for everything flushed.
fn sent(r: &mut Rib) -> Vec<(u32, Prefix, bool)> {
    let cx = DecodeCx {
        four_byte_as: true,
        ..DecodeCx::default()
    };
    let mut out = Vec::new();
    for (peer, bytes) in r.flush().send {
        let mut b = &bytes[..];
        while let Ok(Some(len)) = frame(b) {
            if let Ok(Message::Update(u)) = Message::decode(&b[..len], &cx) {
                out.extend(u.nlri.iter().map(|n| (peer, n.prefix, true)));
                out.extend(u.withdrawn.iter().map(|n| (peer, n.prefix, false)));
            }
            b = &b[len..];
        }
    }
    out.sort_by_key(|(peer, prefix, _)| (*peer, *prefix));
    out
}

#[test]
fn import_rules_refuse_prefixes_as_if_withdrawn() {
    use FilterAction::*;
    let mut r = rib();
    let a = r.add_peer();
    r.peer_up(
        a,
        info(
            65001,
            1,
            PeerFilters {
                import: vec![
                    rule("198.19.99.0/24", MatchOp::In, Reject),
                    rule("198.19.0.0/16", MatchOp::In, Accept),
                    Rule::all(Some(Family::Ipv4Unicast), Reject),
                ],
                export: vec![],
            },
        ),
    );
    r.apply_update(
        a,
        &announce(
            &["198.19.1.0/24", "198.19.99.0/25", "198.18.5.0/24"],
            65001,
            [198, 18, 0, 1],
        ),
    );
    let fib: Vec<Prefix> = r.flush().fib.iter().map(|c| c.prefix).collect();
    assert_eq!(fib, [p("198.19.1.0/24")]);
    assert_eq!(r.counters(a).rejected, 2);
    assert_eq!(r.counters(a).accepted[0], 1);
}

#[test]
fn peer_export_rules_come_first_then_the_default_rules() {
    use FilterAction::*;
    let mut r = rib();
    r.set_default_export(vec![
        rule("198.19.0.0/16", MatchOp::In, Accept),
        Rule::all(None, Reject),
    ]);
    let (a, b, c) = (r.add_peer(), r.add_peer(), r.add_peer());
    r.peer_up(a, info(65001, 1, PeerFilters::default()));
    r.peer_up(
        b,
        info(
            65002,
            2,
            PeerFilters {
                import: vec![],
                // An explicit Accept overrides the default Reject.
                export: vec![
                    rule("198.19.2.0/24", MatchOp::Equal, Reject),
                    rule("198.18.5.0/24", MatchOp::Equal, Accept),
                ],
            },
        ),
    );
    r.peer_up(c, info(65003, 3, PeerFilters::default()));
    r.flush();
    r.apply_update(
        a,
        &announce(
            &["198.19.1.0/24", "198.19.2.0/24", "198.18.5.0/24"],
            65001,
            [198, 18, 0, 1],
        ),
    );
    assert_eq!(
        sent(&mut r),
        [
            (b, p("198.18.5.0/24"), true),
            (b, p("198.19.1.0/24"), true),
            (c, p("198.19.1.0/24"), true),
            (c, p("198.19.2.0/24"), true),
        ]
    );
}

#[test]
fn changing_the_default_rules_withdraws_and_announces() {
    use FilterAction::*;
    let mut r = rib();
    let (a, c) = (r.add_peer(), r.add_peer());
    r.peer_up(a, info(65001, 1, PeerFilters::default()));
    r.peer_up(c, info(65003, 3, PeerFilters::default()));
    r.originate(p("198.19.64.0/26"), CommunitySet::default());
    r.flush();
    r.apply_update(
        a,
        &announce(&["198.19.1.0/24", "198.18.5.0/24"], 65001, [198, 18, 0, 1]),
    );
    assert_eq!(sent(&mut r).len(), 2, "no defaults: everything goes to c");
    // Pools only, and nothing learned from peers outside them.
    r.set_default_export(vec![
        rule("198.19.0.0/16", MatchOp::In, Accept),
        Rule::all(None, Reject),
    ]);
    assert_eq!(sent(&mut r), [(c, p("198.18.5.0/24"), false)]);
    // Routes from peers not at all; ours still go.
    r.set_default_export(vec![Rule {
        remote_only: true,
        ..Rule::all(None, Reject)
    }]);
    let s = sent(&mut r);
    assert_eq!(s, [(c, p("198.19.1.0/24"), false)]);
    r.set_default_export(vec![]);
    assert_eq!(
        sent(&mut r),
        [(c, p("198.18.5.0/24"), true), (c, p("198.19.1.0/24"), true)]
    );
}
