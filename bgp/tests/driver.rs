//! Two speakers in one process over loopback TCP (no root needed): session
//! establishment, route exchange into the FIB stream, withdrawal, status.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bgp::config::{Neighbor, PeerConfig, RemoteAs};
use bgp::driver::{Speaker, SpeakerConfig};
use bgp::fsm::State;
use bgp::rib::FibChange;
use bgp::wire::Prefix;
use tokio::sync::mpsc;

fn free_port(ip: [u8; 4]) -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::from(ip), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn speaker(asn: u32, ip: [u8; 4], port: u16) -> (Speaker, mpsc::Receiver<Vec<FibChange>>) {
    Speaker::start(SpeakerConfig {
        local_as: asn,
        router_id: Ipv4Addr::from(ip),
        listen: vec![SocketAddr::from((ip, port))],
        cluster_id: None,
        decision: Default::default(),
    })
    .await
    .unwrap()
}

fn peer(
    name: &str,
    local_as: u32,
    me: [u8; 4],
    them: [u8; 4],
    port: u16,
    remote: u32,
) -> PeerConfig {
    let mut p = PeerConfig::new(
        name,
        local_as,
        Ipv4Addr::from(me),
        Neighbor::Addr(IpAddr::from(them)),
        RemoteAs::Asn(remote),
    );
    p.port = port;
    p.source_addr = Some(IpAddr::from(me));
    p.connect_retry = Duration::from_millis(200);
    p
}

/// The FIB as the stream of changes describes it.
#[derive(Default)]
struct Fib(std::collections::HashMap<Prefix, Vec<IpAddr>>);

impl Fib {
    /// Apply changes until `prefix` has next hops (or none, `want_empty`).
    async fn wait(
        &mut self,
        rx: &mut mpsc::Receiver<Vec<FibChange>>,
        prefix: Prefix,
        want_empty: bool,
    ) -> Vec<IpAddr> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self.0.get(&prefix) {
                Some(h) if !want_empty && !h.is_empty() => return h.clone(),
                None if want_empty => return Vec::new(),
                Some(h) if want_empty && h.is_empty() => return Vec::new(),
                _ => {}
            }
            let batch = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("FIB change in time")
                .expect("stream open");
            for c in batch {
                if c.next_hops.is_empty() {
                    self.0.remove(&c.prefix);
                } else {
                    self.0.insert(c.prefix, c.next_hops);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_speakers_exchange_and_withdraw_routes() {
    let (a_ip, b_ip) = ([127, 0, 0, 1], [127, 0, 0, 2]);
    let (pa, pb) = (free_port(a_ip), free_port(b_ip));
    let (a, _a_fib) = speaker(65001, a_ip, pa).await;
    let (b, mut b_fib) = speaker(65002, b_ip, pb).await;
    a.add_peer(peer("b", 65001, a_ip, b_ip, pb, 65002))
        .await
        .unwrap();
    b.add_peer(peer("a", 65002, b_ip, a_ip, pa, 65001))
        .await
        .unwrap();
    let block: Prefix = "198.19.64.0/26".parse().unwrap();
    let v6: Prefix = "2001:db8:64::/64".parse().unwrap();
    a.originate(block, Default::default()).await.unwrap();
    a.originate(v6, Default::default()).await.unwrap();

    let mut fib = Fib::default();
    assert_eq!(
        fib.wait(&mut b_fib, block, false).await,
        vec![IpAddr::from(a_ip)]
    );
    assert_eq!(
        fib.wait(&mut b_fib, v6, false).await,
        vec!["::ffff:127.0.0.1".parse::<IpAddr>().unwrap()],
        "IPv4-mapped next hop over an IPv4 session"
    );

    let st = b.status().await.unwrap();
    assert_eq!(st[0].state, State::Established);
    assert_eq!(st[0].counters.accepted, [1, 1]);

    a.withdraw(block).await.unwrap();
    fib.wait(&mut b_fib, block, true).await;

    // Removing the peer tears the session down on both sides.
    a.remove_peer("b").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = b.status().await.unwrap();
        if st[0].state != State::Established {
            assert!(
                st[0].last_error.as_deref().unwrap_or("").contains("cease"),
                "{:?}",
                st[0].last_error
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "session still up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peers are found by name (a duplicate is refused, a removed name can be
/// used again) and inbound connections by address (a passive peer added
/// again after a removal is the one an inbound connection reaches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_added_again_takes_inbound_connections() {
    let (a_ip, b_ip) = ([127, 0, 0, 3], [127, 0, 0, 4]);
    let (pa, pb) = (free_port(a_ip), free_port(b_ip));
    let (a, _a_fib) = speaker(65001, a_ip, pa).await;
    let (b, mut b_fib) = speaker(65002, b_ip, pb).await;
    let passive = || {
        let mut p = peer("b", 65001, a_ip, b_ip, pb, 65002);
        p.passive = true;
        p
    };
    a.add_peer(passive()).await.unwrap();
    assert!(
        a.add_peer(passive()).await.is_err(),
        "a second peer of the same name is refused"
    );
    a.remove_peer("b").await.unwrap();
    a.add_peer(passive()).await.unwrap();
    b.add_peer(peer("a", 65002, b_ip, a_ip, pa, 65001))
        .await
        .unwrap();
    let block: Prefix = "198.19.65.0/26".parse().unwrap();
    a.originate(block, Default::default()).await.unwrap();
    let mut fib = Fib::default();
    assert_eq!(
        fib.wait(&mut b_fib, block, false).await,
        vec![IpAddr::from(a_ip)]
    );
    let st = a.status().await.unwrap();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].state, State::Established);
}
