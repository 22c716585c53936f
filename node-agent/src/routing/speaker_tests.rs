//! The two topology changes that used to open a forwarding gap, over
//! loopback TCP with real speakers (no root; nothing is written to the
//! kernel: the FIB streams are recorded).
//!
//! - The mesh giving way: the peers no longer wanted stay until the new
//!   peer has sent its routes, so the node's FIB stream never withdraws a
//!   prefix both carry.
//! - A speaker restarted in the agent (a node labelled route reflector gets
//!   a cluster ID): a graceful restart with forwarding preserved, so its
//!   peer's FIB stream never withdraws the node's routes. Before, the new
//!   sessions came up without the F bit, the peer purged the node's routes
//!   at once and installed them again a few milliseconds later, when the
//!   UPDATE came (a kernel route deleted and re-added: a lost ping in
//!   `agent_route_reflection`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bgp::config::{GracefulRestart, Neighbor, PeerConfig, RemoteAs};
use bgp::driver::{Speaker, SpeakerConfig};
use bgp::fsm::State;
use bgp::rib::FibChange;
use bgp::wire::Prefix;
use tokio::sync::mpsc;

use super::*;
use crate::routing::handover::initial_table_in;
use crate::routing::peers::Topology;
use crate::status::health::Health;

const AS: u32 = 64512;

fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A helper's session to the node: passive, as the mesh makes the side
/// with the higher address (one TCP session per pair).
fn passive(mut p: PeerConfig) -> PeerConfig {
    p.passive = true;
    p
}

async fn helper(me: Ipv4Addr, port: u16) -> (Speaker, mpsc::Receiver<Vec<FibChange>>) {
    Speaker::start(SpeakerConfig {
        local_as: AS,
        router_id: me,
        listen: vec![SocketAddr::from((me, port))],
        cluster_id: None,
        decision: Default::default(),
    })
    .await
    .expect("speaker")
}

/// An iBGP session from `me` to `them`, graceful restart on, fast retries.
fn session(name: &str, me: Ipv4Addr, them: Ipv4Addr, port: u16) -> PeerConfig {
    let mut p = PeerConfig::new(
        name,
        AS,
        me,
        Neighbor::Addr(IpAddr::V4(them)),
        RemoteAs::Asn(AS),
    );
    p.port = port;
    p.source_addr = Some(IpAddr::V4(me));
    p.connect_retry = Duration::from_millis(100);
    p.graceful_restart = Some(GracefulRestart::default());
    p
}

fn desired(me: Ipv4Addr, port: u16, cluster_id: Option<Ipv4Addr>) -> Desired {
    Desired {
        local_as: AS,
        router_id: me,
        cluster_id,
        listen: vec![SocketAddr::from((me, port))],
        peers: BTreeMap::new(),
        originate: BTreeMap::new(),
        default_export: Vec::new(),
        kinds: BTreeMap::new(),
        topology: Topology::FullMesh,
        problems: Vec::new(),
    }
}

/// Every FIB change of a stream, in order, as a fake FIB sink keeps them.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<FibChange>>>);

impl Recorded {
    fn sink(&self, mut rx: mpsc::Receiver<Vec<FibChange>>) -> tokio::task::JoinHandle<()> {
        let log = self.0.clone();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                log.lock().expect("log").extend(batch);
            }
        })
    }

    /// The next hops of `prefix` in order of change, from the first
    /// install on.
    fn history(&self, prefix: Prefix) -> Vec<Vec<IpAddr>> {
        self.0
            .lock()
            .expect("log")
            .iter()
            .filter(|c| c.prefix == prefix)
            .map(|c| c.next_hops.clone())
            .skip_while(Vec::is_empty)
            .collect()
    }

    async fn wait_installed(&self, prefix: Prefix) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.history(prefix).last().is_none_or(Vec::is_empty) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{prefix} never installed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `s` has `name` Established with its End-of-RIBs.
async fn wait_table_in(s: &Speaker, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.status().await.expect("status");
        if initial_table_in(&st, name) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When `s`'s session mesh-n1 entered its state.
async fn since(s: &Speaker) -> Option<std::time::Instant> {
    let st = s.status().await.expect("status");
    st.iter()
        .find(|p| p.name == "mesh-n1" && p.state == State::Established)
        .and_then(|p| p.since)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_no_longer_wanted_wait_for_the_new_peers_routes() {
    // n2 (the node) has n4's block from its mesh session with n4; the
    // switch replaces that session with one to the reflector n1, which
    // reflects the block with n4's next hop.
    let (n2, n4, n1) = (ip(21), ip(24), ip(22));
    let (p2, p4, p1) = (free_port(n2), free_port(n4), free_port(n1));
    let block: Prefix = "198.19.4.0/26".parse().expect("prefix");
    let (h4, _f4) = helper(n4, p4).await;
    let (h1, _f1) = helper(n1, p1).await;
    h4.add_peer(passive(session("n2", n4, n2, p2)))
        .await
        .expect("peer");
    let mut reflected = session("n2", n1, n2, p2);
    reflected.next_hop_v4 = Some(n4);
    h1.add_peer(passive(reflected)).await.expect("peer");
    h4.originate(block, Default::default())
        .await
        .expect("originate");
    h1.originate(block, Default::default())
        .await
        .expect("originate");

    let (node, fib_rx) = helper(n2, p2).await;
    let fib = Recorded::default();
    let mut running = Some(Running {
        speaker: node,
        key: (AS, n2, None, vec![SocketAddr::from((n2, p2))]),
        peers: BTreeMap::new(),
        retiring: BTreeMap::new(),
        handover: Handover::default(),
        kinds: BTreeMap::new(),
        originated: BTreeMap::new(),
        routes_generation: None,
        default_export: None,
        fib: fib.sink(fib_rx),
    });
    let health = Arc::new(Health::new(Duration::ZERO));
    let env = SpeakerEnv {
        restarting: false,
        reconcile_after: Duration::from_secs(365 * 86_400),
        health: &health,
    };
    let mut mesh = desired(n2, p2, None);
    mesh.peers
        .insert("mesh-n4".into(), session("mesh-n4", n2, n4, p4));
    apply(&mut running, &mesh, &env).await.expect("apply");
    fib.wait_installed(block).await;

    // The switch: the reflector's session is new, n4's is no longer wanted.
    let mut reflectors = desired(n2, p2, None);
    reflectors
        .peers
        .insert("mesh-n1".into(), session("mesh-n1", n2, n1, p1));
    apply(&mut running, &reflectors, &env).await.expect("apply");
    let r = running.as_mut().expect("running");
    assert!(r.is_retiring("mesh-n4"), "kept while mesh-n1 comes up");
    assert_eq!(r.kinds.get("mesh-n4"), Some(&"retiring"));
    // Status turns until it goes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while r.is_retiring("mesh-n4") {
        assert!(tokio::time::Instant::now() < deadline, "never removed");
        let st = r.speaker.status().await.expect("status");
        let was_up = initial_table_in(&st, "mesh-n1");
        settle(r, &st).await.expect("settle");
        if !r.is_retiring("mesh-n4") {
            assert!(was_up, "removed only once mesh-n1's routes were in");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = r.speaker.status().await.expect("status");
    assert_eq!(
        st.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["mesh-n1"]
    );
    // Whatever the FIB task got since the first install: never a withdraw.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = fib.history(block);
    assert!(
        history.iter().all(|h| h == &[IpAddr::V4(n4)]),
        "{block}: {history:?}"
    );

    // A plain removal is not delayed, and the recorder sees withdrawals.
    apply(&mut running, &desired(n2, p2, None), &env)
        .await
        .expect("apply");
    let r = running.as_mut().expect("running");
    assert!(r.peers.is_empty() && !r.is_retiring("mesh-n1"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fib.history(block).last().is_some_and(|h| !h.is_empty()) {
        assert!(tokio::time::Instant::now() < deadline, "never withdrawn");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_speaker_keeps_its_peers_forwarding() {
    // n1 (the node) announces its block to n2; then it is labelled route
    // reflector: a cluster ID, so a new speaker.
    let (n1, n2) = (ip(31), ip(32));
    let (p1, p2) = (free_port(n1), free_port(n2));
    let block: Prefix = "198.19.1.0/26".parse().expect("prefix");
    let (h2, f2) = helper(n2, p2).await;
    let at_n2 = Recorded::default();
    let _sink = at_n2.sink(f2);
    h2.add_peer(passive(session("mesh-n1", n2, n1, p1)))
        .await
        .expect("peer");

    let health = Arc::new(Health::new(Duration::ZERO));
    let mut running: Option<Running> = None;
    let mut d = desired(n1, p1, None);
    d.peers
        .insert("mesh-n2".into(), session("mesh-n2", n1, n2, p2));
    d.originate.insert(block, Default::default());
    // No routes come to n1 (n2 originates nothing): its FIB task, in this
    // process's namespace, writes nothing; it never reconciles here.
    let env = |restarting| SpeakerEnv {
        restarting,
        reconcile_after: Duration::from_secs(365 * 86_400),
        health: &health,
    };
    apply(&mut running, &d, &env(false)).await.expect("apply");
    at_n2.wait_installed(block).await;
    wait_table_in(&h2, "mesh-n1").await;
    let first_up = since(&h2).await;

    // Labelled: a new speaker, as the routing task applies it (our routes
    // are in the kernel: a speaker ran). The old one's listener may take a
    // moment to go: the task retries.
    d.cluster_id = Some(Ipv4Addr::new(244, 0, 0, 1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = apply(&mut running, &d, &env(true)).await {
        assert!(tokio::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running.as_ref().is_some_and(|r| r.key.2.is_some()));
    // n2 saw the session go and come back, then the End-of-RIBs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while since(&h2).await <= first_up {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never restarted: {:?}",
            h2.status().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_table_in(&h2, "mesh-n1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let routes = h2.routes(10, None).await.expect("routes").expect("table");
    let paths = routes
        .routes
        .iter()
        .find(|(p, _)| *p == block)
        .map(|(_, paths)| paths.clone())
        .unwrap_or_default();
    assert!(
        paths.len() == 1 && !paths[0].stale,
        "refreshed, no stale copy left: {paths:?}"
    );
    let history = at_n2.history(block);
    assert!(
        history.iter().all(|h| h == &[IpAddr::V4(n1)]),
        "{block} at n2 across n1's restart: {history:?}"
    );
}
