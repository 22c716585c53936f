//! The session state machine against RFC 4271 §8, §6.8, RFC 4724 and RFC 4486.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bgp::config::{GracefulRestart, Neighbor, PeerConfig, RemoteAs};
use bgp::fsm::{DownReason, Input, Output, Session, State, Timer};
use bgp::wire::{
    Capability, Families, Family, GrFamily, GracefulRestartCap, Message, Notification, Open, Update,
};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

fn cfg() -> PeerConfig {
    PeerConfig::new(
        "tor",
        65010,
        LOCAL_ID,
        Neighbor::Addr(IpAddr::from([198, 18, 0, 1])),
        RemoteAs::Asn(65001),
    )
}

fn peer_open(id: [u8; 4], hold: u16) -> Open {
    Open {
        asn: 65001,
        hold_time: hold,
        router_id: Ipv4Addr::from(id),
        capabilities: vec![
            Capability::mp(Family::Ipv4Unicast),
            Capability::mp(Family::Ipv6Unicast),
            Capability::FourByteAs(65001),
        ],
    }
}

fn with_gr(mut o: Open, forwarding: bool) -> Open {
    o.capabilities
        .push(Capability::GracefulRestart(GracefulRestartCap {
            restarting: false,
            notification: false,
            restart_time: 30,
            families: vec![
                GrFamily {
                    afi: 1,
                    safi: 1,
                    forwarding_preserved: forwarding,
                },
                GrFamily {
                    afi: 2,
                    safi: 1,
                    forwarding_preserved: forwarding,
                },
            ],
        }));
    o
}

fn sent(out: &[Output], conn: u64) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, msg } if *c == conn => Some((**msg).clone()),
            _ => None,
        })
        .collect()
}

fn notification(out: &[Output], conn: u64) -> Option<Notification> {
    sent(out, conn).into_iter().find_map(|m| match m {
        Message::Notification(n) => Some(n),
        _ => None,
    })
}

fn armed(out: &[Output], t: Timer) -> Option<Duration> {
    out.iter().rev().find_map(|o| match o {
        Output::Arm(x, d) if *x == t => Some(*d),
        _ => None,
    })
}

/// Drive a session to Established on connection 1 with the given peer OPEN.
fn establish(s: &mut Session, open: Open, now: Instant) -> Vec<Output> {
    s.handle(Input::Start, now);
    s.handle(
        Input::Connected {
            conn: 1,
            inbound: false,
        },
        now,
    );
    open_and_keepalive(s, 1, open, now)
}

/// The peer's OPEN then KEEPALIVE on `conn`; the outputs of the latter.
fn open_and_keepalive(s: &mut Session, conn: u64, open: Open, now: Instant) -> Vec<Output> {
    s.handle(
        Input::Message {
            conn,
            msg: Message::Open(open),
        },
        now,
    );
    s.handle(
        Input::Message {
            conn,
            msg: Message::Keepalive,
        },
        now,
    )
}

#[test]
fn s8_start_connect_open_keepalive_established() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    let out = s.handle(Input::Start, now);
    assert_eq!(s.state(), State::Connect);
    assert!(out.contains(&Output::Connect));
    assert_eq!(
        armed(&out, Timer::ConnectRetry),
        Some(Duration::from_secs(5))
    );

    let out = s.handle(
        Input::Connected {
            conn: 1,
            inbound: false,
        },
        now,
    );
    assert_eq!(s.state(), State::OpenSent);
    let Message::Open(ours) = &sent(&out, 1)[0] else {
        panic!("OPEN first")
    };
    assert_eq!(
        (ours.asn, ours.hold_time, ours.router_id),
        (65010, 90, LOCAL_ID)
    );
    assert!(out.contains(&Output::Cancel(Timer::ConnectRetry)));
    assert_eq!(
        armed(&out, Timer::Hold),
        Some(Duration::from_secs(240)),
        "large hold while in OpenSent"
    );

    let out = s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Open(peer_open([198, 18, 0, 1], 30)),
        },
        now,
    );
    assert_eq!(s.state(), State::OpenConfirm);
    assert_eq!(sent(&out, 1), vec![Message::Keepalive]);
    assert_eq!(
        armed(&out, Timer::Hold),
        Some(Duration::from_secs(30)),
        "hold = min(90, 30)"
    );
    assert_eq!(
        armed(&out, Timer::Keepalive),
        Some(Duration::from_secs(10)),
        "keepalive = hold / 3"
    );

    let out = s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Keepalive,
        },
        now,
    );
    assert_eq!(s.state(), State::Established);
    let Some(Output::Up(n)) = out.iter().find(|o| matches!(o, Output::Up(_))) else {
        panic!("no Up")
    };
    assert_eq!(n.peer_as, 65001);
    assert_eq!(n.families, Families::BOTH);
    assert!(n.ebgp && n.four_byte_as);
}

#[test]
fn s4_2_zero_hold_time_disables_hold_and_keepalive() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    s.handle(Input::Start, now);
    s.handle(
        Input::Connected {
            conn: 1,
            inbound: false,
        },
        now,
    );
    let out = s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Open(peer_open([198, 18, 0, 1], 0)),
        },
        now,
    );
    assert_eq!(armed(&out, Timer::Keepalive), None);
    assert!(out.contains(&Output::Cancel(Timer::Hold)));
}

#[test]
fn s6_5_hold_timer_expiry_sends_notification_and_restarts_later() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    establish(&mut s, peer_open([198, 18, 0, 1], 90), now);
    let out = s.handle(Input::Timer(Timer::Hold), now);
    assert_eq!(notification(&out, 1).map(|n| n.code), Some(4));
    assert!(out.contains(&Output::Close { conn: 1 }));
    assert!(out.iter().any(|o| matches!(o, Output::Down { reason: DownReason::Sent(_), graceful } if graceful.is_empty())));
    assert_eq!(s.state(), State::Idle);
    assert!(
        armed(&out, Timer::ConnectRetry).is_some(),
        "automatic restart"
    );
    let out = s.handle(Input::Timer(Timer::ConnectRetry), now);
    assert!(out.contains(&Output::Connect));
}

#[test]
fn keepalive_timer_sends_keepalive_and_rearms() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    establish(&mut s, peer_open([198, 18, 0, 1], 90), now);
    let out = s.handle(Input::Timer(Timer::Keepalive), now);
    assert_eq!(sent(&out, 1), vec![Message::Keepalive]);
    assert_eq!(armed(&out, Timer::Keepalive), Some(Duration::from_secs(30)));
}

#[test]
fn s6_2_open_from_the_wrong_as_is_refused_with_bad_peer_as() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    s.handle(Input::Start, now);
    s.handle(
        Input::Connected {
            conn: 1,
            inbound: false,
        },
        now,
    );
    let mut o = peer_open([198, 18, 0, 1], 90);
    o.asn = 65099;
    let out = s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Open(o),
        },
        now,
    );
    let n = notification(&out, 1).unwrap();
    assert_eq!((n.code, n.subcode), (2, 2));
    assert_ne!(s.state(), State::OpenConfirm);
}

#[test]
fn internal_peer_with_our_identifier_is_refused() {
    let now = Instant::now();
    let mut c = cfg();
    c.remote_as = RemoteAs::Internal;
    let mut s = Session::new(c);
    s.handle(Input::Start, now);
    s.handle(
        Input::Connected {
            conn: 1,
            inbound: false,
        },
        now,
    );
    let mut o = peer_open(LOCAL_ID.octets(), 90);
    o.asn = 65010;
    o.capabilities.push(Capability::FourByteAs(65010));
    let out = s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Open(o),
        },
        now,
    );
    assert_eq!(
        notification(&out, 1).map(|n| (n.code, n.subcode)),
        Some((2, 3))
    );
}

#[test]
fn passive_peer_waits_in_active_and_accepts_inbound() {
    let now = Instant::now();
    let mut c = cfg();
    c.passive = true;
    let mut s = Session::new(c);
    let out = s.handle(Input::Start, now);
    assert_eq!(s.state(), State::Active);
    assert!(!out.contains(&Output::Connect));
    let out = s.handle(
        Input::Connected {
            conn: 7,
            inbound: true,
        },
        now,
    );
    assert_eq!(s.state(), State::OpenSent);
    assert!(matches!(sent(&out, 7)[0], Message::Open(_)));
}

#[test]
fn s8_2_2_unexpected_message_is_an_fsm_error() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    s.handle(Input::Start, now);
    s.handle(
        Input::Connected {
            conn: 1,
            inbound: false,
        },
        now,
    );
    let out = s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Update(Update::default()),
        },
        now,
    );
    assert_eq!(
        notification(&out, 1).map(|n| (n.code, n.subcode)),
        Some((5, 1))
    );
}

#[test]
fn s6_8_collision_keeps_the_connection_of_the_higher_identifier() {
    let now = Instant::now();
    // Peer's identifier is higher than ours: its (inbound) connection wins.
    let mut s = Session::new(cfg());
    s.handle(Input::Start, now);
    s.handle(
        Input::Connected {
            conn: 1,
            inbound: false,
        },
        now,
    );
    let out = s.handle(
        Input::Connected {
            conn: 2,
            inbound: true,
        },
        now,
    );
    assert!(matches!(sent(&out, 2)[0], Message::Open(_)));
    let out = s.handle(
        Input::Message {
            conn: 2,
            msg: Message::Open(peer_open([198, 18, 0, 200], 90)),
        },
        now,
    );
    assert_eq!(
        notification(&out, 1).map(|n| (n.code, n.subcode)),
        Some((6, 7))
    );
    assert!(out.contains(&Output::Close { conn: 1 }));
    assert_eq!(sent(&out, 2).last(), Some(&Message::Keepalive));
    assert_eq!(s.state(), State::OpenConfirm);
    s.handle(
        Input::Message {
            conn: 2,
            msg: Message::Keepalive,
        },
        now,
    );
    assert_eq!(s.established_conn(), Some(2));

    // Peer's identifier is lower: our (outbound) connection stays.
    let mut s = Session::new(cfg());
    s.handle(Input::Start, now);
    s.handle(
        Input::Connected {
            conn: 1,
            inbound: false,
        },
        now,
    );
    s.handle(
        Input::Connected {
            conn: 2,
            inbound: true,
        },
        now,
    );
    let out = s.handle(
        Input::Message {
            conn: 2,
            msg: Message::Open(peer_open([198, 18, 0, 1], 90)),
        },
        now,
    );
    assert_eq!(
        notification(&out, 2).map(|n| (n.code, n.subcode)),
        Some((6, 7))
    );
    assert!(out.contains(&Output::Close { conn: 2 }));
    assert_eq!(s.state(), State::OpenSent);
    s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Open(peer_open([198, 18, 0, 1], 90)),
        },
        now,
    );
    s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Keepalive,
        },
        now,
    );
    assert_eq!(s.established_conn(), Some(1));
}

#[test]
fn s6_8_a_new_connection_loses_against_an_established_one() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    establish(&mut s, peer_open([198, 18, 0, 200], 90), now);
    let out = s.handle(
        Input::Connected {
            conn: 9,
            inbound: true,
        },
        now,
    );
    assert_eq!(
        notification(&out, 9).map(|n| (n.code, n.subcode)),
        Some((6, 7))
    );
    assert_eq!(s.state(), State::Established);
}

#[test]
fn rfc4486_max_prefix_ceases_with_afi_safi_and_limit() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    establish(&mut s, peer_open([198, 18, 0, 1], 90), now);
    let out = s.handle(
        Input::MaxPrefixExceeded {
            family: Family::Ipv4Unicast,
            limit: 100,
        },
        now,
    );
    let n = notification(&out, 1).unwrap();
    assert_eq!(
        (n.code, n.subcode, &n.data[..]),
        (6, 1, &[0, 1, 1, 0, 0, 0, 100][..])
    );
    assert!(s.last_error().unwrap().contains("100"));
}

#[test]
fn stop_sends_cease_and_stays_idle() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    establish(&mut s, peer_open([198, 18, 0, 1], 90), now);
    let out = s.handle(Input::Stop(Notification::cease(2)), now);
    assert_eq!(
        notification(&out, 1).map(|n| (n.code, n.subcode)),
        Some((6, 2))
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Down {
            reason: DownReason::Stopped,
            ..
        }
    )));
    assert_eq!(s.state(), State::Idle);
    assert_eq!(armed(&out, Timer::ConnectRetry), None);
}

fn gr_cfg() -> PeerConfig {
    let mut c = cfg();
    c.graceful_restart = Some(GracefulRestart::default());
    c
}

#[test]
fn rfc4724_our_open_announces_graceful_restart() {
    let mut c = gr_cfg();
    c.graceful_restart = Some(GracefulRestart {
        restarting: true,
        ..GracefulRestart::default()
    });
    let o = Session::new(c).our_open();
    let gr = o.graceful_restart().unwrap();
    assert!(gr.restarting);
    assert_eq!(gr.restart_time, 120);
    assert!(gr.families.iter().all(|f| f.forwarding_preserved));
}

#[test]
fn rfc4724_s4_2_lost_peer_routes_go_stale_until_end_of_rib() {
    let now = Instant::now();
    let mut s = Session::new(gr_cfg());
    establish(&mut s, with_gr(peer_open([198, 18, 0, 1], 90), true), now);
    // TCP dies without a NOTIFICATION: routes kept stale, restart timer runs.
    let out = s.handle(Input::Closed { conn: 1 }, now);
    assert!(out.contains(&Output::Down {
        reason: DownReason::ConnectionLost,
        graceful: Families::BOTH
    }));
    assert_eq!(armed(&out, Timer::GrRestart), Some(Duration::from_secs(30)));
    // The peer comes back with forwarding preserved: nothing purged yet.
    s.handle(Input::Timer(Timer::ConnectRetry), now);
    s.handle(
        Input::Connected {
            conn: 2,
            inbound: false,
        },
        now,
    );
    let out = open_and_keepalive(
        &mut s,
        2,
        with_gr(peer_open([198, 18, 0, 1], 90), true),
        now,
    );
    assert!(out.contains(&Output::Cancel(Timer::GrRestart)));
    assert!(!out.iter().any(|o| matches!(o, Output::PurgeStale(_))));
    assert!(armed(&out, Timer::GrStale).is_some());
    // End-of-RIB for IPv4 purges what is still stale in IPv4 only.
    let out = s.handle(
        Input::Message {
            conn: 2,
            msg: Message::Update(Update::eor(Family::Ipv4Unicast)),
        },
        now,
    );
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::PurgeStale(_)))
            .collect::<Vec<_>>(),
        vec![&Output::PurgeStale(Family::Ipv4Unicast)]
    );
    assert!(out.contains(&Output::EndOfRib(Family::Ipv4Unicast)));
    // The stale timer ends IPv6's wait.
    let out = s.handle(Input::Timer(Timer::GrStale), now);
    assert_eq!(out, vec![Output::PurgeStale(Family::Ipv6Unicast)]);
}

#[test]
fn rfc4724_s4_2_a_restarted_peer_reconnecting_while_established_replaces_the_session() {
    let now = Instant::now();
    let mut s = Session::new(gr_cfg());
    establish(&mut s, with_gr(peer_open([198, 18, 0, 1], 90), true), now);
    // The peer restarted; its old connection is dead but not yet noticed.
    let out = s.handle(
        Input::Connected {
            conn: 2,
            inbound: true,
        },
        now,
    );
    assert!(out.contains(&Output::Close { conn: 1 }), "{out:?}");
    assert!(out.contains(&Output::Down {
        reason: DownReason::ConnectionLost,
        graceful: Families::BOTH
    }));
    assert_eq!(armed(&out, Timer::GrRestart), Some(Duration::from_secs(30)));
    assert_eq!(
        notification(&out, 2),
        None,
        "the new connection is not refused"
    );
    assert!(matches!(sent(&out, 2).as_slice(), [Message::Open(_)]));
    assert_eq!(s.state(), State::OpenSent);
    // The new session comes up with the routes still stale.
    let out = open_and_keepalive(
        &mut s,
        2,
        with_gr(peer_open([198, 18, 0, 1], 90), true),
        now,
    );
    assert_eq!(s.state(), State::Established);
    assert!(out.contains(&Output::Cancel(Timer::GrRestart)));
    assert!(!out.iter().any(|o| matches!(o, Output::PurgeStale(_))));
    // The old connection's close, arriving late, changes nothing.
    let out = s.handle(Input::Closed { conn: 1 }, now);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.state(), State::Established);
}

#[test]
fn without_graceful_restart_a_new_connection_still_loses_against_an_established_one() {
    let now = Instant::now();
    // The peer announces it, we do not: RFC 4271 §6.8 applies.
    let mut s = Session::new(cfg());
    establish(&mut s, with_gr(peer_open([198, 18, 0, 1], 90), true), now);
    let out = s.handle(
        Input::Connected {
            conn: 2,
            inbound: true,
        },
        now,
    );
    assert_eq!(
        notification(&out, 2).map(|n| (n.code, n.subcode)),
        Some((6, 7))
    );
    assert_eq!(s.state(), State::Established);
}

#[test]
fn rfc4724_peer_back_without_forwarding_state_purges_at_once() {
    let now = Instant::now();
    let mut s = Session::new(gr_cfg());
    establish(&mut s, with_gr(peer_open([198, 18, 0, 1], 90), true), now);
    s.handle(Input::Closed { conn: 1 }, now);
    s.handle(Input::Timer(Timer::ConnectRetry), now);
    s.handle(
        Input::Connected {
            conn: 2,
            inbound: false,
        },
        now,
    );
    let out = open_and_keepalive(
        &mut s,
        2,
        with_gr(peer_open([198, 18, 0, 1], 90), false),
        now,
    );
    let purged: Vec<_> = out
        .iter()
        .filter(|o| matches!(o, Output::PurgeStale(_)))
        .collect();
    assert_eq!(purged.len(), 2);
}

#[test]
fn rfc4724_restart_timer_expiry_purges() {
    let now = Instant::now();
    let mut s = Session::new(gr_cfg());
    establish(&mut s, with_gr(peer_open([198, 18, 0, 1], 90), true), now);
    s.handle(Input::Closed { conn: 1 }, now);
    let out = s.handle(Input::Timer(Timer::GrRestart), now);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|o| matches!(o, Output::PurgeStale(_))));
}

#[test]
fn rfc4724_notification_is_not_graceful() {
    let now = Instant::now();
    let mut s = Session::new(gr_cfg());
    establish(&mut s, with_gr(peer_open([198, 18, 0, 1], 90), true), now);
    let out = s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Notification(Notification::cease(2)),
        },
        now,
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Down { graceful, .. } if graceful.is_empty()))
    );
    assert_eq!(armed(&out, Timer::GrRestart), None);
}

#[test]
fn updates_and_end_of_rib_reach_the_rib() {
    let now = Instant::now();
    let mut s = Session::new(cfg());
    establish(&mut s, peer_open([198, 18, 0, 1], 90), now);
    let mut u = Update::default();
    u.withdrawn
        .push("198.19.1.0/24".parse::<bgp::wire::Prefix>().unwrap().into());
    let out = s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Update(u.clone()),
        },
        now,
    );
    assert!(out.contains(&Output::Update(Box::new(u))));
    assert!(
        armed(&out, Timer::Hold).is_some(),
        "an UPDATE restarts the hold timer"
    );
    let out = s.handle(
        Input::Message {
            conn: 1,
            msg: Message::Update(Update::eor(Family::Ipv6Unicast)),
        },
        now,
    );
    assert!(out.contains(&Output::EndOfRib(Family::Ipv6Unicast)));
}

#[test]
fn rfc5882_bfd_down_ceases_at_once_and_is_never_graceful() {
    let now = Instant::now();
    let mut s = Session::new(gr_cfg());
    establish(&mut s, with_gr(peer_open([198, 18, 0, 1], 90), true), now);
    let out = s.handle(Input::BfdDown(bgp::bfd::Diag::DetectTimeExpired), now);
    // RFC 9384: Cease / BFD Down; the routes go (no graceful restart: the
    // path is gone, keeping them would blackhole traffic).
    assert_eq!(notification(&out, 1), Some(Notification::cease(10)));
    assert!(out.contains(&Output::Close { conn: 1 }));
    assert!(out.contains(&Output::Down {
        reason: DownReason::Sent(Notification::cease(10)),
        graceful: Families::NONE,
    }));
    assert_eq!(s.state(), State::Idle);
    assert!(s.last_error().is_some_and(|e| e.contains("BFD")));
    // BGP comes back by its own FSM (connect retry), not by BFD.
    assert!(armed(&out, Timer::ConnectRetry).is_some());
    // Without a session there is nothing to take down.
    let out = s.handle(Input::BfdDown(bgp::bfd::Diag::DetectTimeExpired), now);
    assert!(out.is_empty(), "{out:?}");
}
