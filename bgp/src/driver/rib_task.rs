//! The RIB task: owns the [`Rib`] and the peer registry, applies what the
//! peer tasks decode, answers the [`super::Speaker`]'s commands, and after
//! every turn flushes: FIB changes to the agent, log readers to the peers
//! that joined an update group (their writers pull the group's UPDATEs
//! from its log), max-prefix notices.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use super::peer::PeerTask;
use super::{
    BACKLOG_POLL, Cmd, DriverError, FIB_BATCH, PeerCmd, PeerStatus, RibMsg, RoutePath, Routes,
    backlog, restart, stats,
};
use crate::bfd::{self, Bfd, BfdHandle, BfdOptions, SessionKey};
use crate::config::{Neighbor, PeerConfig};
use crate::fsm::State;
use crate::rib::decision::PeerIdx;
use crate::rib::{FibChange, Rib};
use crate::wire::notification::cease_sub;
use crate::wire::{Families, Family};

pub(super) struct PeerEntry {
    pub(super) cfg: PeerConfig,
    pub(super) addr: Option<IpAddr>,
    pub(super) tx: Option<mpsc::Sender<PeerCmd>>,
    pub(super) task: Option<JoinHandle<()>>,
    pub(super) state: State,
    pub(super) since: Option<Instant>,
    pub(super) error: Option<String>,
    pub(super) last_update: Option<Instant>,
    pub(super) end_of_rib: Families,
    /// Negotiated in the session that is up.
    pub(super) families: Families,
    pub(super) bfd: Option<bfd::State>,
}

/// Tells a peer task to send Cease/`sub`, close and end. (Its channel
/// closing alone ends it without a NOTIFICATION: that is the speaker
/// going away, which graceful-restart peers take as a restart.)
fn stop_peer(tx: mpsc::Sender<PeerCmd>, sub: u8) {
    if let Err(mpsc::error::TrySendError::Full(cmd)) = tx.try_send(PeerCmd::Stop(sub)) {
        tokio::spawn(async move {
            let _ = tx.send(cmd).await;
        });
    }
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub(super) struct RibTask {
    pub(super) rib: Rib,
    pub(super) stats: Arc<stats::Counters>,
    pub(super) peers: HashMap<PeerIdx, PeerEntry>,
    /// `peers` by name and by address (the first peer of an address): a
    /// reflector has thousands, and scanning them for every peer added
    /// and every connection accepted was quadratic.
    pub(super) by_name: HashMap<String, PeerIdx>,
    pub(super) by_addr: HashMap<IpAddr, PeerIdx>,
    pub(super) rib_tx: mpsc::Sender<RibMsg>,
    pub(super) fib_tx: mpsc::Sender<Vec<FibChange>>,
    pub(super) listen: Vec<SocketAddr>,
    pub(super) listeners: Vec<std::sync::Arc<TcpListener>>,
    /// Started with the first peer that asks for BFD.
    pub(super) bfd: Option<Bfd>,
    /// Bumped by everything that may change the RIB.
    pub(super) generation: u64,
    /// Initial updates are withheld until every peer's End-of-RIB or this.
    pub(super) defer_until: Option<tokio::time::Instant>,
    /// Commands for peers whose queue was full (the RIB task never waits
    /// for one peer: see the module).
    pub(super) backlog: backlog::Backlog,
}

impl RibTask {
    pub(super) async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut msgs: mpsc::Receiver<RibMsg>,
    ) {
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
        self.stats.export(t.elapsed());
        // The members' writers pull the groups' UPDATEs from the logs;
        // a peer that entered a log gets its reader.
        for (peer, reader) in out.attach {
            if let Some(p) = self.peers.get(&peer)
                && let Some(tx) = &p.tx
            {
                self.backlog
                    .send(peer, &p.cfg.name, tx, PeerCmd::Attach(Box::new(reader)));
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

    pub(super) fn spawn_peer(&mut self, cfg: PeerConfig, addr: Option<IpAddr>) -> PeerIdx {
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
        self.by_name.insert(cfg.name.clone(), idx);
        if let Some(a) = addr {
            self.by_addr.entry(a).or_insert(idx);
        }
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
                if self.by_name.contains_key(&cfg.name) {
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
                        self.by_name.insert(cfg.name.clone(), idx);
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
                        if self.by_name.get(&e.cfg.name) == Some(&i) {
                            self.by_name.remove(&e.cfg.name);
                        }
                        if let Some(a) = e.addr
                            && self.by_addr.get(&a) == Some(&i)
                        {
                            self.by_addr.remove(&a);
                            // Another peer of that address, if any, takes over.
                            if let Some((j, _)) = self.peers.iter().find(|(_, p)| p.addr == Some(a))
                            {
                                self.by_addr.insert(a, *j);
                            }
                        }
                        // The peer task sends Cease/3 and ends by itself;
                        // do not abort it.
                        if let Some(tx) = e.tx.take() {
                            stop_peer(tx, cease_sub::PEER_DECONFIGURED);
                        }
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
                        families: p.families,
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
                        stop_peer(tx, cease_sub::ADMIN_SHUTDOWN);
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
