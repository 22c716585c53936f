//! Tokio driver: one task per peer owning its [`Session`] and connections,
//! one RIB task owning the [`Rib`] and the peer registry (`rib_task`), one
//! listener task per listen address.
//!
//! ```text
//!  Speaker (API) ──Cmd──────────────► RIB task ──Vec<FibChange>──► FIB stream (agent)
//!                                     ▲    │ │
//!        listener ──Cmd::Inbound──────┘    │ └─ appends each flush's UPDATEs to its
//!                                          │    update groups' logs (rib::log)
//!                                          │ PeerCmd (Attach/Stop/MaxPrefix/Inbound)
//!                                          ▼
//!   peer task ◄── frames / EOF ── reader task (per connection)
//!   peer task ──► own messages, log reader ──► writer task (per connection),
//!                 which pulls its group's UPDATEs from the log as the socket takes them
//!   peer task ──RibMsg (Up/Down/Update/EoR/PurgeStale/Refresh/State/Bfd)──► RIB task
//!   peer task ──subscribe──► BFD task (bfd::driver, started with the first
//!   BFD peer) ──Up/Down events──► peer task (Down: the session closes)
//! ```
//!
//! Tasks are aborted when their owner drops them. A panic while decoding a
//! peer's message closes that peer's session only.
//!
//! [`Session`]: crate::fsm::Session

mod backlog;
mod inbound;
mod peer;
mod restart;
mod rib_task;
pub mod sock;
mod stats;

pub use stats::SpeakerStats;

use rib_task::RibTask;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, info_span, warn};

use crate::bfd::{self, BfdHandle};
use crate::config::PeerConfig;
use crate::fsm::State;
use crate::rib::decision::{DecisionOptions, PeerIdx};
use crate::rib::memory::RibMemory;
use crate::rib::{FibChange, PeerCounters, PeerInfo, Rib, RibConfig};
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
    /// Families negotiated when the session last came up (its initial
    /// table is complete once `end_of_rib` has each of them).
    pub families: Families,
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

/// Large payloads are boxed: tokio allocates each channel's first block of
/// 32 slots up front, sized by the largest variant, and a reflector has a
/// command queue per session (16-byte slots: ~0.5 KB a block instead of
/// ~1.3 KB).
enum PeerCmd {
    /// Read what the session is sent from its update group's log.
    Attach(Box<crate::rib::LogReader>),
    /// Send Cease with this subcode, close, and end the task.
    Stop(u8),
    Inbound(Box<TcpStream>),
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
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
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
