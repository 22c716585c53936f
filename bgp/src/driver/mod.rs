//! Tokio driver: one task per peer owning its [`Session`] and connections,
//! one RIB task owning the [`Rib`] and the peer registry, one listener task
//! per listen address.
//!
//! ```text
//!  Speaker (API) ──Cmd──────────────► RIB task ──Vec<FibChange>──► FIB stream (agent)
//!                                     ▲    │
//!        listener ──Cmd::Inbound──────┘    │ PeerCmd (Start/Stop/Send/MaxPrefix/Inbound)
//!                                          ▼
//!   peer task ◄── frames / EOF ── reader task (per connection)
//!   peer task ──► bytes ──► writer task (per connection)
//!   peer task ──RibMsg (Up/Down/Update/EoR/PurgeStale/Refresh/State/Bfd)──► RIB task
//!   peer task ──subscribe──► BFD task (bfd::driver, started with the first
//!   BFD peer) ──Up/Down events──► peer task (Down: the session closes)
//! ```
//!
//! Tasks are aborted when their owner drops them. A panic while decoding a
//! peer's message closes that peer's session only.

mod backlog;
mod inbound;
mod peer;
mod restart;
pub mod sock;
mod stats;

pub use stats::SpeakerStats;

use peer::PeerTask;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::bfd::{self, Bfd, BfdHandle, BfdOptions, SessionKey};
use crate::config::{Neighbor, PeerConfig};
use crate::fsm::State;
use crate::rib::decision::{DecisionOptions, PeerIdx};
use crate::rib::memory::RibMemory;
use crate::rib::{FibChange, PeerCounters, PeerInfo, Rib, RibConfig};
use crate::wire::notification::cease_sub;
use crate::wire::{CommunitySet, Families, Family, Prefix, Update};

/// FIB change batches queued for the agent at most.
const FIB_QUEUE: usize = 2;
/// Changes per FIB batch before the RIB task flushes (a batch may exceed
/// it by one UPDATE's worth). Small: while the kernel is slower than the
/// RIB (a table load), what waits for it is at most a few batches — a
/// hundred kilobytes each — not the table.
const FIB_BATCH: usize = 1024;
/// Messages queued for the RIB task (each a batch of decoded UPDATEs, see
/// [`RIB_BATCH_UPDATES`]).
const RIB_QUEUE: usize = 8;
/// How often the RIB task retries handing waiting commands to peers whose
/// queue was full (only while any wait; see `backlog`).
const BACKLOG_POLL: Duration = Duration::from_millis(1);
/// A peer task hands its decoded UPDATEs to the RIB task in batches of at
/// most this many messages…
const RIB_BATCH_UPDATES: usize = 256;
/// …or this many announced and withdrawn prefixes: one channel hop and one
/// wake-up per batch instead of per UPDATE (a table sent one prefix per
/// UPDATE is 100k of them), memory bounded by RIB_QUEUE batches.
const RIB_BATCH_ROUTES: usize = 1024;
/// Bytes of received frames per event from a connection's reader task,
/// and about what one read asks of the socket. 4 KB (one maximal BGP
/// message, what BIRD reads at a time): a 1M-route load one prefix per
/// UPDATE finished sooner than with 64 KB (4.0 -> 2.6 s), and a BIRD
/// sender, whose loop can sleep with routes still to feed until something
/// wakes it (see examples/bench_bgp.rs), held its tail less often (19 of
/// 20 runs with 64 KB; 2 in 10 to 5 in 8 with 4 KB).
const FRAMES_BATCH_BYTES: usize = 4096;

/// Speaker-wide settings.
#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Addresses to accept connections on (empty: none).
    pub listen: Vec<SocketAddr>,
    /// Route-reflector cluster id.
    pub cluster_id: Option<Ipv4Addr>,
    /// Decision process options.
    pub decision: DecisionOptions,
}

/// Driver errors.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Could not listen.
    #[error("cannot listen on {addr}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The speaker task has stopped.
    #[error("the BGP speaker has stopped")]
    Stopped,
    /// A peer of that name already exists.
    #[error("peer {name} already exists")]
    Duplicate {
        /// Name.
        name: String,
    },
}

/// Status of one peer, for `margayctl node status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Configured name (dynamic peers: name/address).
    pub name: String,
    /// Peer address, when known.
    pub addr: Option<IpAddr>,
    /// FSM state.
    pub state: State,
    /// Time in this state.
    pub since: Option<Instant>,
    /// Route counters.
    pub counters: PeerCounters,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// When the RIB last applied an UPDATE from this peer.
    pub last_update: Option<Instant>,
    /// Families whose End-of-RIB marker the peer has sent since the session
    /// came up (its initial table is complete).
    pub end_of_rib: Families,
    /// The peer's BFD session state, when BFD is configured for it.
    pub bfd: Option<bfd::State>,
}

/// One path of a route, for displays.
#[derive(Clone, Debug)]
pub struct RoutePath {
    /// The peer it came from (`None`: originated here).
    pub from: Option<String>,
    /// Selected (first: best; more with multipath).
    pub selected: bool,
    /// Kept stale by graceful restart.
    pub stale: bool,
    /// Attributes (communities included) and next hop.
    pub attrs: std::sync::Arc<crate::rib::intern::RouteAttrs>,
}

/// A RIB snapshot (at most the asked number of destinations).
#[derive(Clone, Debug)]
pub struct Routes {
    /// Changes with every change to the RIB.
    pub generation: u64,
    /// Destinations in the RIB in all.
    pub total: usize,
    /// The destinations listed, by prefix.
    pub routes: Vec<(Prefix, Vec<RoutePath>)>,
}

enum Cmd {
    AddPeer(Box<PeerConfig>, oneshot::Sender<Result<(), DriverError>>),
    RemovePeer(String),
    Originate(Prefix, CommunitySet),
    Withdraw(Prefix),
    Status(oneshot::Sender<Vec<PeerStatus>>),
    DefaultExport(Vec<crate::rib::filter::Rule>),
    Routes {
        limit: usize,
        unless: Option<u64>,
        reply: oneshot::Sender<Option<Routes>>,
    },
    Bfd(oneshot::Sender<Option<BfdHandle>>),
    Memory(oneshot::Sender<RibMemory>),
    FibPrefixes(oneshot::Sender<Vec<Prefix>>),
    DeferInitialUpdates(Duration),
    Inbound(TcpStream, SocketAddr),
    Shutdown(oneshot::Sender<()>),
}

enum PeerCmd {
    Send(Bytes),
    /// Send Cease with this subcode, close, and end the task.
    Stop(u8),
    Inbound(TcpStream),
    MaxPrefix(Family, u32),
}

enum RibMsg {
    Up {
        peer: PeerIdx,
        info: Box<PeerInfo>,
    },
    Down {
        peer: PeerIdx,
        graceful: crate::wire::Families,
    },
    Updates {
        peer: PeerIdx,
        updates: Vec<Update>,
    },
    PurgeStale(PeerIdx, Family),
    Refresh(PeerIdx, Family),
    EndOfRib(PeerIdx, Family),
    State {
        peer: PeerIdx,
        state: State,
        since: Option<Instant>,
        error: Option<String>,
    },
    Bfd(PeerIdx, bfd::State),
}

/// See [`Speaker::fib_view`].
#[derive(Clone, Debug)]
pub struct FibView {
    tx: mpsc::Sender<Cmd>,
}

impl FibView {
    /// Every prefix whose best path has kernel next hops now (a walk over
    /// the RIB). The FIB holds exactly these once the changes already
    /// handed out are applied: a writer that asks between two batches and
    /// reconciles before applying the next removes nothing the RIB wants —
    /// what is still queued for it was decided before this answer.
    pub async fn prefixes(&self) -> Result<Vec<Prefix>, DriverError> {
        let (t, r) = oneshot::channel();
        self.tx
            .send(Cmd::FibPrefixes(t))
            .await
            .map_err(|_| DriverError::Stopped)?;
        r.await.map_err(|_| DriverError::Stopped)
    }
}

/// The running speaker. Dropping it stops everything.
pub struct Speaker {
    tx: mpsc::Sender<Cmd>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<stats::Counters>,
}

impl Drop for Speaker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Speaker {
    /// Start the speaker; returns it and the stream of best-path changes.
    pub async fn start(
        cfg: SpeakerConfig,
    ) -> Result<(Speaker, mpsc::Receiver<Vec<FibChange>>), DriverError> {
        let (tx, rx) = mpsc::channel(1024);
        // Small queues all the way: when the kernel FIB is slower than the
        // RIB (a full table at start-up), the RIB waits, the peer tasks wait,
        // and TCP flow control holds the rest in the peers' send buffers —
        // instead of a million decoded routes queued in our memory.
        let (fib_tx, fib_rx) = mpsc::channel(FIB_QUEUE);
        let mut tasks = Vec::new();
        let mut listeners = Vec::new();
        for addr in &cfg.listen {
            let l = std::sync::Arc::new(TcpListener::bind(addr).await.map_err(|source| {
                DriverError::Listen {
                    addr: *addr,
                    source,
                }
            })?);
            listeners.push(l.clone());
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, from)) => {
                            if tx.send(Cmd::Inbound(s, from)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        let rib = Rib::new(RibConfig {
            local_as: cfg.local_as,
            router_id: cfg.router_id,
            cluster_id: cfg.cluster_id,
            decision: cfg.decision.clone(),
        });
        let (rib_tx, rib_rx) = mpsc::channel(RIB_QUEUE);
        let stats = Arc::new(stats::Counters::default());
        let task = RibTask {
            stats: stats.clone(),
            rib,
            peers: HashMap::new(),
            rib_tx,
            fib_tx,
            listen: cfg.listen.clone(),
            listeners,
            bfd: None,
            generation: 0,
            defer_until: None,
            backlog: Default::default(),
        };
        tasks.push(tokio::spawn(
            task.run(rx, rib_rx)
                .instrument(info_span!("bgp", asn = cfg.local_as)),
        ));
        Ok((Speaker { tx, tasks, stats }, fib_rx))
    }

    /// Add and start a peer (or a dynamic-neighbour range).
    pub async fn add_peer(&self, p: PeerConfig) -> Result<(), DriverError> {
        let (t, r) = oneshot::channel();
        self.tx
            .send(Cmd::AddPeer(Box::new(p), t))
            .await
            .map_err(|_| DriverError::Stopped)?;
        r.await.map_err(|_| DriverError::Stopped)?
    }

    /// Stop and remove a peer (Cease/3 peer de-configured).
    pub async fn remove_peer(&self, name: &str) -> Result<(), DriverError> {
        self.tx
            .send(Cmd::RemovePeer(name.to_string()))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// Originate a prefix with communities.
    pub async fn originate(&self, p: Prefix, communities: CommunitySet) -> Result<(), DriverError> {
        self.tx
            .send(Cmd::Originate(p, communities))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// Stop originating a prefix.
    pub async fn withdraw(&self, p: Prefix) -> Result<(), DriverError> {
        self.tx
            .send(Cmd::Withdraw(p))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// We restarted with forwarding preserved (RFC 4724 §4.1): withhold every
    /// peer's initial routes and End-of-RIB until each configured peer has
    /// sent its End-of-RIB, or for at most `max`, so helpers keep the routes
    /// they have from us until we can send complete tables.
    pub async fn defer_initial_updates(&self, max: Duration) -> Result<(), DriverError> {
        self.tx
            .send(Cmd::DeferInitialUpdates(max))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// Stop every peer with Cease/2 (Administrative Shutdown), waiting up to
    /// `grace` for the NOTIFICATIONs to be written; the speaker keeps
    /// running with no sessions (drop it to stop it). Dropping the speaker
    /// without this closes the TCP sessions with no NOTIFICATION, which a
    /// graceful-restart peer takes as a restart (it keeps our routes).
    pub async fn shutdown(&self, grace: Duration) -> Result<(), DriverError> {
        let (t, r) = oneshot::channel();
        self.tx
            .send(Cmd::Shutdown(t))
            .await
            .map_err(|_| DriverError::Stopped)?;
        let _ = tokio::time::timeout(grace, r).await;
        Ok(())
    }

    /// Up to `limit` routes of the RIB with every path, unless the RIB is
    /// still at generation `unless` (then `None`: nothing changed).
    pub async fn routes(
        &self,
        limit: usize,
        unless: Option<u64>,
    ) -> Result<Option<Routes>, DriverError> {
        let (t, r) = oneshot::channel();
        self.tx
            .send(Cmd::Routes {
                limit,
                unless,
                reply: t,
            })
            .await
            .map_err(|_| DriverError::Stopped)?;
        r.await.map_err(|_| DriverError::Stopped)
    }

    /// The export rules every peer gets after its own filters (a change
    /// re-evaluates what each peer has been sent).
    pub async fn set_default_export(
        &self,
        rules: Vec<crate::rib::filter::Rule>,
    ) -> Result<(), DriverError> {
        self.tx
            .send(Cmd::DefaultExport(rules))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// Every BFD session (empty when no peer uses BFD).
    pub async fn bfd_sessions(&self) -> Result<Vec<bfd::SessionStatus>, DriverError> {
        let (t, r) = oneshot::channel();
        self.tx
            .send(Cmd::Bfd(t))
            .await
            .map_err(|_| DriverError::Stopped)?;
        match r.await.map_err(|_| DriverError::Stopped)? {
            Some(h) => h.status().await.map_err(|_| DriverError::Stopped),
            None => Ok(Vec::new()),
        }
    }

    /// Where the speaker's time went since it started (no round trip
    /// through the RIB task: it answers even while the RIB is busy).
    pub fn stats(&self) -> SpeakerStats {
        self.stats.snapshot()
    }

    /// The RIB's memory by kind (a walk over its attribute sets: for
    /// status displays when the RIB is quiet, not in a tight loop).
    pub async fn rib_memory(&self) -> Result<RibMemory, DriverError> {
        let (t, r) = oneshot::channel();
        self.tx
            .send(Cmd::Memory(t))
            .await
            .map_err(|_| DriverError::Stopped)?;
        r.await.map_err(|_| DriverError::Stopped)
    }

    /// A handle that asks the RIB what the kernel FIB should hold, for the
    /// FIB writer's reconcile (the writer keeps no copy of its own).
    pub fn fib_view(&self) -> FibView {
        FibView {
            tx: self.tx.clone(),
        }
    }

    /// Per-peer status.
    pub async fn status(&self) -> Result<Vec<PeerStatus>, DriverError> {
        let (t, r) = oneshot::channel();
        self.tx
            .send(Cmd::Status(t))
            .await
            .map_err(|_| DriverError::Stopped)?;
        r.await.map_err(|_| DriverError::Stopped)
    }
}

struct PeerEntry {
    cfg: PeerConfig,
    addr: Option<IpAddr>,
    tx: Option<mpsc::Sender<PeerCmd>>,
    task: Option<JoinHandle<()>>,
    state: State,
    since: Option<Instant>,
    error: Option<String>,
    last_update: Option<Instant>,
    end_of_rib: Families,
    /// Negotiated in the session that is up.
    families: Families,
    bfd: Option<bfd::State>,
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

struct RibTask {
    rib: Rib,
    stats: Arc<stats::Counters>,
    peers: HashMap<PeerIdx, PeerEntry>,
    rib_tx: mpsc::Sender<RibMsg>,
    fib_tx: mpsc::Sender<Vec<FibChange>>,
    listen: Vec<SocketAddr>,
    listeners: Vec<std::sync::Arc<TcpListener>>,
    /// Started with the first peer that asks for BFD.
    bfd: Option<Bfd>,
    /// Bumped by everything that may change the RIB.
    generation: u64,
    /// Initial updates are withheld until every peer's End-of-RIB or this.
    defer_until: Option<tokio::time::Instant>,
    /// Commands for peers whose queue was full (the RIB task never waits
    /// for one peer: see the module).
    backlog: backlog::Backlog,
}

impl RibTask {
    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, mut msgs: mpsc::Receiver<RibMsg>) {
        loop {
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(c) => self.command(c),
                    None => return,
                },
                () = restart::deadline(self.defer_until), if self.defer_until.is_some() => {
                    self.end_deferral("deferral time passed");
                }
                m = msgs.recv() => {
                    let Some(m) = m else { return };
                    let t = Instant::now();
                    self.message(m);
                    // Batch: take whatever else is queued before flushing.
                    let mut n = 0;
                    while n < 256 && self.rib.pending_fib() < FIB_BATCH {
                        match msgs.try_recv() {
                            Ok(m) => self.message(m),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    self.stats.rib(t.elapsed());
                }
                () = tokio::time::sleep(BACKLOG_POLL), if !self.backlog.is_empty() => {}
            }
            self.check_deferral();
            let peers = &self.peers;
            self.backlog
                .drain(|p| peers.get(&p).and_then(|e| e.tx.as_ref()));
            self.flush().await;
            self.stats.rib_state(
                self.generation,
                self.rib.fib_routes(),
                self.backlog.waiting(),
            );
        }
    }

    async fn flush(&mut self) {
        let t = Instant::now();
        let out = self.rib.flush();
        if !out.send.is_empty() {
            self.stats.export(t.elapsed());
        }
        for (peer, bytes) in out.send {
            if let Some(p) = self.peers.get(&peer)
                && let Some(tx) = &p.tx
            {
                self.backlog
                    .send(peer, &p.cfg.name, tx, PeerCmd::Send(bytes));
            }
        }
        for (peer, fam, limit) in out.max_prefix {
            if let Some(p) = self.peers.get(&peer)
                && let Some(tx) = &p.tx
            {
                self.backlog
                    .send(peer, &p.cfg.name, tx, PeerCmd::MaxPrefix(fam, limit));
            }
        }
        if !out.fib.is_empty() {
            let n = out.fib.len();
            let t = Instant::now();
            let _ = self.fib_tx.send(out.fib).await;
            self.stats.to_fib(n, t.elapsed());
        }
    }

    /// The BFD driver, started on first use.
    fn bfd_handle(&mut self) -> Result<BfdHandle, String> {
        if let Some(b) = &self.bfd {
            return Ok(b.handle());
        }
        match Bfd::start(BfdOptions::default()) {
            Ok(b) => {
                info!(sockets = ?b.local_addrs(), "BFD started");
                let h = b.handle();
                self.bfd = Some(b);
                Ok(h)
            }
            Err(e) => Err(format!("BFD unavailable: {e}")),
        }
    }

    fn spawn_peer(&mut self, cfg: PeerConfig, addr: Option<IpAddr>) -> PeerIdx {
        let idx = self.rib.add_peer();
        let (tx, rx) = mpsc::channel(1024);
        let span = info_span!("peer", peer = %cfg.name, addr = ?addr);
        let local_port = self.listen.first().map(|a| a.port());
        let mut error = None;
        let bfd = match (cfg.bfd, addr) {
            (Some(b), Some(peer)) => match self.bfd_handle() {
                Ok(h) => {
                    let key = SessionKey {
                        peer,
                        local: cfg.source_addr,
                        multihop: b.multihop,
                    };
                    match h.subscribe(key, b.timers) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            error = Some(format!("BFD unavailable: {e}"));
                            None
                        }
                    }
                }
                Err(e) => {
                    warn!(peer = %cfg.name, error = %e, "peer runs without BFD");
                    error = Some(e);
                    None
                }
            },
            _ => None,
        };
        let bfd_state = bfd.as_ref().map(|_| bfd::State::Down);
        let task = tokio::spawn(
            PeerTask::new(idx, cfg.clone(), addr, self.rib_tx.clone(), local_port, bfd)
                .with_stats(self.stats.clone())
                .run(rx)
                .instrument(span),
        );
        self.peers.insert(
            idx,
            PeerEntry {
                cfg,
                addr,
                tx: Some(tx),
                task: Some(task),
                state: State::Idle,
                since: None,
                error,
                last_update: None,
                end_of_rib: Families::NONE,
                families: Families::NONE,
                bfd: bfd_state,
            },
        );
        idx
    }

    fn command(&mut self, c: Cmd) {
        match c {
            Cmd::AddPeer(cfg, reply) => {
                let cfg = *cfg;
                if self.peers.values().any(|p| p.cfg.name == cfg.name) {
                    let _ = reply.send(Err(DriverError::Duplicate { name: cfg.name }));
                    return;
                }
                if let Some(key) = &cfg.md5_password {
                    self.listener_md5(&cfg.neighbor, key.as_bytes(), &cfg.name);
                }
                match cfg.neighbor {
                    Neighbor::Addr(a) => {
                        self.spawn_peer(cfg, Some(a));
                    }
                    Neighbor::Range(_) => {
                        // A template: sessions are spawned per inbound connection.
                        let idx = self.rib.add_peer();
                        self.peers.insert(
                            idx,
                            PeerEntry {
                                cfg,
                                addr: None,
                                tx: None,
                                task: None,
                                state: State::Active,
                                since: None,
                                error: None,
                                last_update: None,
                                end_of_rib: Families::NONE,
                                families: Families::NONE,
                                bfd: None,
                            },
                        );
                    }
                }
                let _ = reply.send(Ok(()));
            }
            Cmd::RemovePeer(name) => {
                self.generation += 1;
                let gone: Vec<PeerIdx> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| {
                        p.cfg.name == name || p.cfg.name.starts_with(&format!("{name}/"))
                    })
                    .map(|(i, _)| *i)
                    .collect();
                for i in gone {
                    if let Some(e) = self.peers.get(&i)
                        && e.cfg.md5_password.is_some()
                        && !e.cfg.name.contains('/')
                    {
                        let neighbor = e.cfg.neighbor;
                        self.listener_md5(&neighbor, b"", &name);
                    }
                    if let Some(mut e) = self.peers.remove(&i) {
                        // Closing its channel makes the peer task send
                        // Cease/3 and end by itself; do not abort it.
                        e.tx = None;
                        e.task = None;
                    }
                    self.rib.peer_down(i, crate::wire::Families::NONE);
                }
            }
            Cmd::Originate(p, c) => {
                self.generation += 1;
                self.rib.originate(p, c)
            }
            Cmd::Withdraw(p) => {
                self.generation += 1;
                self.rib.withdraw_local(&p)
            }
            Cmd::DefaultExport(rules) => {
                self.generation += 1;
                self.rib.set_default_export(rules);
            }
            Cmd::Routes {
                limit,
                unless,
                reply,
            } => {
                let r = (unless != Some(self.generation)).then(|| self.routes(limit));
                let _ = reply.send(r);
            }
            Cmd::Status(reply) => {
                let mut v: Vec<PeerStatus> = self
                    .peers
                    .iter()
                    .map(|(i, p)| PeerStatus {
                        name: p.cfg.name.clone(),
                        addr: p.addr,
                        state: p.state,
                        since: p.since,
                        counters: self.rib.counters(*i),
                        last_error: p.error.clone(),
                        last_update: p.last_update,
                        end_of_rib: p.end_of_rib,
                        bfd: p.bfd,
                    })
                    .collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(v);
            }
            Cmd::Memory(reply) => {
                let _ = reply.send(self.rib.memory());
            }
            Cmd::FibPrefixes(reply) => {
                let _ = reply.send(self.rib.fib_prefixes());
            }
            Cmd::Bfd(reply) => {
                let _ = reply.send(self.bfd.as_ref().map(Bfd::handle));
            }
            Cmd::DeferInitialUpdates(max) => {
                info!(
                    ?max,
                    "restarting: initial updates deferred until every peer's End-of-RIB"
                );
                self.rib.defer_initial_updates();
                self.defer_until = Some(tokio::time::Instant::now() + max);
            }
            Cmd::Inbound(stream, from) => self.inbound(stream, from),
            Cmd::Shutdown(reply) => {
                let mut tasks = Vec::new();
                for p in self.peers.values_mut() {
                    if let Some(tx) = p.tx.take() {
                        let _ = tx.try_send(PeerCmd::Stop(cease_sub::ADMIN_SHUTDOWN));
                    }
                    tasks.extend(p.task.take());
                }
                tokio::spawn(async move {
                    for t in tasks {
                        let _ = t.await;
                    }
                    let _ = reply.send(());
                });
            }
        }
    }

    fn routes(&self, limit: usize) -> Routes {
        let name = |i: PeerIdx| self.peers.get(&i).map(|p| p.cfg.name.clone());
        Routes {
            generation: self.generation,
            total: self.rib.len(Family::Ipv4Unicast) + self.rib.len(Family::Ipv6Unicast),
            routes: self
                .rib
                .routes(limit)
                .into_iter()
                .map(|r| {
                    let paths = r
                        .paths
                        .into_iter()
                        .map(|p| RoutePath {
                            from: if p.peer == crate::rib::decision::LOCAL {
                                None
                            } else {
                                Some(name(p.peer).unwrap_or_else(|| format!("#{}", p.peer)))
                            },
                            selected: p.selected,
                            stale: p.stale,
                            attrs: p.attrs,
                        })
                        .collect();
                    (r.prefix, paths)
                })
                .collect(),
        }
    }

    fn message(&mut self, m: RibMsg) {
        if !matches!(
            m,
            RibMsg::State { .. } | RibMsg::Bfd(..) | RibMsg::EndOfRib(..)
        ) {
            self.generation += 1;
        }
        match m {
            RibMsg::Up { peer, info } => {
                self.backlog.forget(peer);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.families = info.families;
                }
                self.rib.peer_up(peer, *info)
            }
            RibMsg::Down { peer, graceful } => {
                self.backlog.forget(peer);
                self.rib.peer_down(peer, graceful)
            }
            RibMsg::Updates { peer, updates } => {
                for u in &updates {
                    self.rib.apply_update(peer, u);
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.last_update = Some(Instant::now());
                }
            }
            RibMsg::EndOfRib(peer, f) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.end_of_rib.insert(f);
                }
            }
            RibMsg::PurgeStale(peer, f) => self.rib.purge_stale(peer, f),
            RibMsg::Refresh(peer, f) => self.rib.refresh(peer, crate::wire::Families::only(f)),
            RibMsg::Bfd(peer, state) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.bfd = Some(state);
                }
            }
            RibMsg::State {
                peer,
                state,
                since,
                error,
            } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    if state != p.state {
                        p.end_of_rib = Families::NONE;
                    }
                    p.state = state;
                    p.since = since;
                    if error.is_some() {
                        p.error = error;
                    }
                }
            }
        }
    }
}
