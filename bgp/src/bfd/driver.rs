//! Tokio driver: one task owns every BFD [`Session`] and the transmit
//! sockets; one reader task per receive socket decodes datagrams.
//!
//! ```text
//!  clients (BGP peer tasks) ──Cmd (Subscribe / Unsubscribe / Status)──► BFD task
//!  reader (v4/v6 × 3784/4784) ──Rx (decoded packet, source, TTL, dst)──► BFD task
//!  BFD task ──Event (state change)──► each subscriber's channel
//!  BFD task ──datagrams──► tx socket (v4 / v6, source port 49152–65535, TTL 255)
//! ```
//!
//! Sessions are keyed by [`SessionKey`] (peer, local address, single hop or
//! multihop); several clients of one key share one session. A received
//! packet is matched by Your Discriminator, or, while that is 0, by its
//! source address (and destination, if sessions differ only by local
//! address). Single hop (RFC 5881 §5): a packet must arrive with TTL / Hop
//! Limit 255, else it is dropped (GTSM); multihop (RFC 5883) takes any TTL.
//! The source port of received packets is not checked: BIRD 2.0.12 sends
//! from an ordinary ephemeral port (seen in the captures in `packet.rs`),
//! outside RFC 5881's 49152–65535.
//!
//! Every session of a family uses the same source port (as BIRD does per
//! interface); RFC 5881 §4 only recommends a unique one per session.
//!
//! Dropping [`Bfd`] stops everything. Dropping a [`Subscription`] leaves
//! the session; the last one to leave sends one AdminDown packet (so the
//! peer's clients are not taken down, RFC 5882 §3.2) and removes it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant as TInstant;
use tracing::{debug, info, warn};

use super::packet::{Packet, State};
use super::session::{BfdConfig, Change, Input, Output, Session, Status, Timer};
use super::sock::{PORT_MULTIHOP, PORT_SINGLE_HOP, RxSocket, SOURCE_PORTS, TxSocket};

/// What names a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// The peer's address.
    pub peer: IpAddr,
    /// Our address (`None`: whatever the kernel picks toward the peer).
    pub local: Option<IpAddr>,
    /// RFC 5883 multihop (port 4784, no TTL check) instead of single hop.
    pub multihop: bool,
}

/// Ports, for tests that run two drivers in one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BfdOptions {
    /// Where we receive single-hop packets.
    pub listen_port: u16,
    /// Where we receive multihop packets.
    pub listen_port_multihop: u16,
    /// Where the peers receive single-hop packets.
    pub peer_port: u16,
    /// Where the peers receive multihop packets.
    pub peer_port_multihop: u16,
}

impl Default for BfdOptions {
    fn default() -> Self {
        BfdOptions {
            listen_port: PORT_SINGLE_HOP,
            listen_port_multihop: PORT_MULTIHOP,
            peer_port: PORT_SINGLE_HOP,
            peer_port_multihop: PORT_MULTIHOP,
        }
    }
}

/// Driver errors.
#[derive(Debug, thiserror::Error)]
pub enum BfdError {
    /// No socket of either family could be opened.
    #[error("cannot open BFD sockets: {details}")]
    Sockets {
        /// What failed, per socket.
        details: String,
        /// The first failure.
        #[source]
        source: io::Error,
    },
    /// The BFD task has stopped.
    #[error("the BFD task has stopped")]
    Stopped,
}

/// A state change of a session, sent to its subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The session.
    pub key: SessionKey,
    /// What changed.
    pub change: Change,
}

/// One session, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStatus {
    /// The session.
    pub key: SessionKey,
    /// Its timer parameters.
    pub config: BfdConfig,
    /// Its state.
    pub status: Status,
    /// Packets accepted for it.
    pub received: u64,
    /// Packets sent.
    pub sent: u64,
    /// Packets dropped (GTSM, wrong source, send errors).
    pub dropped: u64,
}

enum Cmd {
    Subscribe {
        id: u64,
        key: SessionKey,
        cfg: BfdConfig,
        events: mpsc::Sender<Event>,
    },
    Unsubscribe(u64),
    Status(oneshot::Sender<Vec<SessionStatus>>),
}

struct Rx {
    packet: Packet,
    from: SocketAddr,
    ttl: Option<u8>,
    dst: Option<IpAddr>,
    multihop: bool,
}

/// The running driver. Dropping it stops every session (no AdminDown).
pub struct Bfd {
    cmds: mpsc::UnboundedSender<Cmd>,
    tasks: Vec<JoinHandle<()>>,
    local: Vec<SocketAddr>,
}

impl Drop for Bfd {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A cheap handle to subscribe and ask for status.
#[derive(Clone, Debug)]
pub struct BfdHandle {
    cmds: mpsc::UnboundedSender<Cmd>,
}

/// A client's interest in one session; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    key: SessionKey,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::Receiver<Event>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Unsubscribe(self.id));
    }
}

impl Subscription {
    /// The session.
    pub fn key(&self) -> SessionKey {
        self.key
    }

    /// The next state change (`None` once the driver has stopped).
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

static NEXT_SUB: AtomicU64 = AtomicU64::new(1);
/// State changes a slow subscriber may have queued before more are dropped.
const EVENT_QUEUE: usize = 16;

impl BfdHandle {
    /// Join (or create) the session `key`; the latest `cfg` wins.
    pub fn subscribe(&self, key: SessionKey, cfg: BfdConfig) -> Result<Subscription, BfdError> {
        let id = NEXT_SUB.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        self.cmds
            .send(Cmd::Subscribe {
                id,
                key,
                cfg,
                events: tx,
            })
            .map_err(|_| BfdError::Stopped)?;
        Ok(Subscription {
            id,
            key,
            cmds: self.cmds.clone(),
            events: rx,
        })
    }

    /// Every session.
    pub async fn status(&self) -> Result<Vec<SessionStatus>, BfdError> {
        let (t, r) = oneshot::channel();
        self.cmds
            .send(Cmd::Status(t))
            .map_err(|_| BfdError::Stopped)?;
        r.await.map_err(|_| BfdError::Stopped)
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x0062_6664); // "bfd"
    h.finish() | 1
}

impl Bfd {
    /// Open the sockets (each family that works; an error only if none
    /// does) and start the tasks.
    pub fn start(opts: BfdOptions) -> Result<Bfd, BfdError> {
        let mut rng = seed();
        let (rx_tx, rx_rx) = mpsc::channel::<Rx>(256);
        let mut tasks = Vec::new();
        let mut local = Vec::new();
        let mut errors: Vec<(String, io::Error)> = Vec::new();
        let mut tx = [None, None];
        for v6 in [false, true] {
            let fam = if v6 { "IPv6" } else { "IPv4" };
            let first = *SOURCE_PORTS.start() + (next(&mut rng) % 16384) as u16;
            match TxSocket::bind(v6, first) {
                Ok(s) => {
                    if let Ok(a) = s.local_addr() {
                        local.push(a);
                    }
                    tx[usize::from(v6)] = Some(s);
                }
                Err(e) => {
                    errors.push((format!("{fam} transmit"), e));
                    continue;
                }
            }
            for (port, multihop) in [(opts.listen_port, false), (opts.listen_port_multihop, true)] {
                match RxSocket::bind(v6, port) {
                    Ok(s) => {
                        if let Ok(a) = s.local_addr() {
                            local.push(a);
                        }
                        tasks.push(tokio::spawn(reader(s, multihop, rx_tx.clone())));
                    }
                    Err(e) => errors.push((format!("{fam} port {port}"), e)),
                }
            }
        }
        let details = errors
            .iter()
            .map(|(w, e)| format!("{w}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        if tasks.is_empty() {
            let source = errors
                .into_iter()
                .next()
                .map(|(_, e)| e)
                .unwrap_or_else(|| io::Error::other("no socket"));
            return Err(BfdError::Sockets { details, source });
        }
        if !details.is_empty() {
            warn!(%details, "some BFD sockets could not be opened; their sessions will not work");
        }
        let [tx4, tx6] = tx;
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let task = Task {
            opts,
            tx4,
            tx6,
            sessions: HashMap::new(),
            by_key: HashMap::new(),
            subs: HashMap::new(),
            rng,
            unmatched: 0,
        };
        tasks.push(tokio::spawn(task.run(cmd_rx, rx_rx)));
        Ok(Bfd { cmds, tasks, local })
    }

    /// A handle for clients.
    pub fn handle(&self) -> BfdHandle {
        BfdHandle {
            cmds: self.cmds.clone(),
        }
    }

    /// The bound sockets (transmit and receive).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }
}

fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

async fn reader(sock: RxSocket, multihop: bool, out: mpsc::Sender<Rx>) {
    let mut buf = [0u8; 512];
    loop {
        let r = match sock.recv(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "BFD receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let payload = buf.get(..r.len).unwrap_or(&[]);
        match Packet::decode(payload) {
            Ok(packet) => {
                let rx = Rx {
                    packet,
                    from: SocketAddr::new(r.from.ip().to_canonical(), r.from.port()),
                    ttl: r.ttl,
                    dst: r.dst.map(|d| d.to_canonical()),
                    multihop,
                };
                if out.send(rx).await.is_err() {
                    return;
                }
            }
            Err(e) => debug!(from = %r.from, error = %e, "BFD packet discarded"),
        }
    }
}

struct Entry {
    key: SessionKey,
    session: Session,
    subs: Vec<(u64, mpsc::Sender<Event>)>,
    timers: [Option<TInstant>; 2],
    received: u64,
    sent: u64,
    dropped: u64,
}

fn slot(t: Timer) -> usize {
    match t {
        Timer::Tx => 0,
        Timer::Detect => 1,
    }
}

struct Task {
    opts: BfdOptions,
    tx4: Option<TxSocket>,
    tx6: Option<TxSocket>,
    sessions: HashMap<u32, Entry>,
    by_key: HashMap<SessionKey, u32>,
    subs: HashMap<u64, u32>,
    rng: u64,
    unmatched: u64,
}

impl Task {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>, mut rx: mpsc::Receiver<Rx>) {
        loop {
            let next = self
                .sessions
                .values()
                .flat_map(|e| e.timers.iter().flatten())
                .min()
                .copied();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(c) => self.command(c).await,
                    None => return,
                },
                r = rx.recv() => match r {
                    Some(r) => self.received(r).await,
                    None => return,
                },
                () = sleep => self.fire().await,
            }
        }
    }

    async fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Subscribe {
                id,
                key,
                cfg,
                events,
            } => {
                let disc = match self.by_key.get(&key) {
                    Some(&d) => d,
                    None => self.create(key, cfg).await,
                };
                self.subs.insert(id, disc);
                let reconfigure = self.sessions.get_mut(&disc).and_then(|e| {
                    e.subs.push((id, events));
                    (e.session.config() != cfg).then_some(())
                });
                if reconfigure.is_some() {
                    self.input(disc, Input::Configure(cfg)).await;
                }
            }
            Cmd::Unsubscribe(id) => {
                let Some(disc) = self.subs.remove(&id) else {
                    return;
                };
                let empty = self.sessions.get_mut(&disc).is_some_and(|e| {
                    e.subs.retain(|(i, _)| *i != id);
                    e.subs.is_empty()
                });
                if empty {
                    self.input(disc, Input::AdminDown).await;
                    if let Some(e) = self.sessions.remove(&disc) {
                        self.by_key.remove(&e.key);
                        info!(peer = %e.key.peer, "BFD session removed");
                    }
                }
            }
            Cmd::Status(reply) => {
                let mut v: Vec<SessionStatus> = self
                    .sessions
                    .values()
                    .map(|e| SessionStatus {
                        key: e.key,
                        config: e.session.config(),
                        status: e.session.status(),
                        received: e.received,
                        sent: e.sent,
                        dropped: e.dropped,
                    })
                    .collect();
                v.sort_by_key(|s| s.key);
                let _ = reply.send(v);
            }
        }
    }

    async fn create(&mut self, key: SessionKey, cfg: BfdConfig) -> u32 {
        let disc = loop {
            let d = next(&mut self.rng) as u32;
            if d != 0 && !self.sessions.contains_key(&d) {
                break d;
            }
        };
        let seed = next(&mut self.rng);
        self.sessions.insert(
            disc,
            Entry {
                key,
                session: Session::new(cfg, disc, seed, Instant::now()),
                subs: Vec::new(),
                timers: [None, None],
                received: 0,
                sent: 0,
                dropped: 0,
            },
        );
        self.by_key.insert(key, disc);
        info!(peer = %key.peer, local = ?key.local, multihop = key.multihop,
              tx = ?cfg.desired_min_tx, rx = ?cfg.required_min_rx, mult = cfg.detect_mult,
              disc, "BFD session created");
        self.input(disc, Input::Start).await;
        disc
    }

    /// The session a packet belongs to (§6.8.6), if any.
    fn demux(&self, r: &Rx) -> Option<u32> {
        if r.packet.your_disc != 0 {
            return self
                .sessions
                .contains_key(&r.packet.your_disc)
                .then_some(r.packet.your_disc);
        }
        let key = |local| SessionKey {
            peer: r.from.ip(),
            local,
            multihop: r.multihop,
        };
        r.dst
            .and_then(|d| self.by_key.get(&key(Some(d))))
            .or_else(|| self.by_key.get(&key(None)))
            .copied()
    }

    async fn received(&mut self, r: Rx) {
        let Some(disc) = self.demux(&r) else {
            self.unmatched += 1;
            debug!(from = %r.from, your = r.packet.your_disc, "BFD packet for no session");
            return;
        };
        let Some(e) = self.sessions.get_mut(&disc) else {
            return;
        };
        let from_peer = e.key.peer == r.from.ip() && e.key.multihop == r.multihop;
        // RFC 5881 §5: single hop means it was sent with 255 and crossed no
        // router; multihop has no fixed rule (RFC 5883 §2).
        let gtsm = e.key.multihop || r.ttl == Some(255);
        if !from_peer || !gtsm {
            e.dropped += 1;
            debug!(peer = %e.key.peer, from = %r.from, ttl = ?r.ttl, "BFD packet dropped (source or TTL)");
            return;
        }
        e.received += 1;
        self.input(disc, Input::Packet(r.packet)).await;
    }

    async fn fire(&mut self) {
        let now = TInstant::now();
        let due: Vec<(u32, Timer)> = self
            .sessions
            .iter_mut()
            .flat_map(|(d, e)| {
                [Timer::Tx, Timer::Detect]
                    .into_iter()
                    .filter(|t| e.timers[slot(*t)].is_some_and(|at| at <= now))
                    .map(move |t| (*d, t))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (disc, t) in due {
            if let Some(e) = self.sessions.get_mut(&disc) {
                e.timers[slot(t)] = None;
            }
            self.input(disc, Input::Timer(t)).await;
        }
    }

    async fn input(&mut self, disc: u32, input: Input) {
        let Some(e) = self.sessions.get_mut(&disc) else {
            return;
        };
        let outs = e.session.handle(input, Instant::now());
        for o in outs {
            match o {
                Output::Send(p) => {
                    let (sock, port) = match (e.key.peer, e.key.multihop) {
                        (IpAddr::V4(_), false) => (&self.tx4, self.opts.peer_port),
                        (IpAddr::V4(_), true) => (&self.tx4, self.opts.peer_port_multihop),
                        (IpAddr::V6(_), false) => (&self.tx6, self.opts.peer_port),
                        (IpAddr::V6(_), true) => (&self.tx6, self.opts.peer_port_multihop),
                    };
                    let r = match sock {
                        Some(s) => {
                            s.send(
                                &p.to_bytes(),
                                SocketAddr::new(e.key.peer, port),
                                e.key.local,
                            )
                            .await
                        }
                        None => Err(io::Error::other("no transmit socket for this family")),
                    };
                    match r {
                        Ok(()) => e.sent += 1,
                        Err(err) => {
                            e.dropped += 1;
                            debug!(peer = %e.key.peer, error = %err, "BFD send failed");
                        }
                    }
                }
                Output::Arm(t, d) => e.timers[slot(t)] = Some(TInstant::now() + d),
                Output::Cancel(t) => e.timers[slot(t)] = None,
                Output::Changed(c) => {
                    info!(peer = %e.key.peer, from = %c.from, to = %c.to, diag = %c.diag,
                          remote = %c.remote, "BFD session state");
                    let ev = Event {
                        key: e.key,
                        change: c,
                    };
                    for (_, s) in &e.subs {
                        if s.try_send(ev).is_err() {
                            warn!(peer = %e.key.peer, "a BFD subscriber is not reading its events; one dropped");
                        }
                    }
                }
            }
        }
    }
}

/// Whether a change must take a client down: the session went from Up to
/// Down, and not because the peer was administratively taken down (RFC 5882
/// §3.2; our own AdminDown is not a failure either).
pub fn is_failure(c: &Change) -> bool {
    c.from == State::Up && c.to == State::Down && c.remote != State::AdminDown
}
