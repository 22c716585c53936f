//! The peer task: one per session, owning its [`Session`], connections
//! (reader and writer tasks), timers and BFD subscription; it hands decoded
//! UPDATEs to the RIB task in batches. See the channel map in the parent
//! module.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{
    FRAMES_BATCH_BYTES, PeerCmd, RIB_BATCH_ROUTES, RIB_BATCH_UPDATES, RibMsg, sock, stats,
};
use crate::bfd::{self, Subscription};
use crate::config::PeerConfig;
use crate::fsm::{ConnId, Input, Output, Session, Timer};
use crate::rib::decision::{PeerIdx, Source};
use crate::rib::{LogReader, PeerInfo};
use crate::wire::{DecodeError, Message, Notification, Update, frame};

/// Large payloads are boxed: the event queue's blocks (32 slots, the first
/// allocated with the channel, one channel per session) are sized by the
/// largest event; 16 bytes a slot.
enum ConnEvent {
    Connected(Box<TcpStream>),
    ConnectFailed(std::io::Error),
    /// Complete messages, in order (at most ~FRAMES_BATCH_BYTES).
    Frames(Box<(ConnId, Vec<Bytes>)>),
    Bad(Box<(ConnId, DecodeError)>),
    Closed(ConnId),
}

/// What a connection's writer is handed (boxed payloads, as for
/// [`ConnEvent`]: 16 bytes a slot).
enum Write {
    /// A message of the session's own (OPEN, KEEPALIVE, NOTIFICATION…).
    Bytes(Box<Bytes>),
    /// From now on, also write what the update group's log has for us.
    Attach(Box<LogReader>),
}

/// Bytes a writer takes from its group's log per write (whole entries).
const WRITE_BATCH: usize = 64 * 1024;

struct Conn {
    writer: mpsc::Sender<Write>,
    tasks: [JoinHandle<()>; 2],
    local: SocketAddr,
    peer: SocketAddr,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.tasks[0].abort();
        // The writer finishes flushing what was queued (a NOTIFICATION) and
        // exits when its channel closes.
    }
}

pub(super) struct PeerTask {
    idx: PeerIdx,
    session: Session,
    addr: Option<IpAddr>,
    rib: mpsc::Sender<RibMsg>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    timers: HashMap<Timer, tokio::time::Instant>,
    ev_tx: mpsc::Sender<ConnEvent>,
    ev_rx: mpsc::Receiver<ConnEvent>,
    connecting: Option<JoinHandle<()>>,
    /// Writers of closed connections still flushing (a NOTIFICATION).
    closing: Vec<JoinHandle<()>>,
    /// Decoded UPDATEs not yet handed to the RIB task, and their prefixes.
    updates: Vec<Update>,
    update_routes: usize,
    /// The session's outputs for one input (reused).
    outs: Vec<Output>,
    /// The peer's BFD session, when configured.
    bfd: Option<Subscription>,
    /// The speaker's phase counters.
    stats: Arc<stats::Counters>,
    /// Time waited for the RIB task during the current batch of frames.
    waited: Duration,
}

impl PeerTask {
    pub(super) fn new(
        idx: PeerIdx,
        cfg: PeerConfig,
        addr: Option<IpAddr>,
        rib: mpsc::Sender<RibMsg>,
        _local_port: Option<u16>,
        bfd: Option<Subscription>,
    ) -> Self {
        // Few events: a batch of frames is up to ~4 KB.
        let (ev_tx, ev_rx) = mpsc::channel(8);
        PeerTask {
            idx,
            session: Session::new(cfg),
            addr,
            rib,
            conns: HashMap::new(),
            next_conn: 1,
            timers: HashMap::new(),
            ev_tx,
            ev_rx,
            connecting: None,
            closing: Vec::new(),
            updates: Vec::new(),
            update_routes: 0,
            outs: Vec::new(),
            bfd,
            stats: Arc::default(),
            waited: Duration::ZERO,
        }
    }

    /// Count this peer's work in the speaker's counters.
    pub(super) fn with_stats(mut self, stats: Arc<stats::Counters>) -> Self {
        self.stats = stats;
        self
    }

    /// The task. Its work (`input`, `event`) runs in boxed futures, so
    /// that what an idle session keeps between events is small: with
    /// thousands of peers, the nested state of those calls held inline
    /// was several kilobytes per peer.
    pub(super) async fn run(mut self, mut cmds: mpsc::Receiver<PeerCmd>) {
        Box::pin(self.input(Input::Start)).await;
        loop {
            let next = self
                .timers
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, t)| (*k, *t));
            let sleep = async {
                match next {
                    Some((_, t)) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let bfd = async {
                match &mut self.bfd {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = bfd => match ev {
                    Some(ev) => Box::pin(self.bfd_event(ev)).await,
                    None => self.bfd = None,
                },
                c = cmds.recv() => match c {
                    // The speaker is gone (dropped: restarting): close with
                    // no NOTIFICATION, so that graceful-restart peers keep
                    // our routes. A removal sends `Stop` first.
                    None => return,
                    Some(PeerCmd::Attach(r)) => {
                        if let Some(c) = self.session.established_conn().and_then(|c| self.conns.get(&c)) {
                            let _ = c.writer.send(Write::Attach(r)).await;
                        }
                    }
                    Some(PeerCmd::Stop(sub)) => {
                        Box::pin(self.input(Input::Stop(Notification::cease(sub)))).await;
                        Box::pin(self.drain_writers(Duration::from_millis(500))).await;
                        return;
                    }
                    Some(PeerCmd::MaxPrefix(family, limit)) => Box::pin(self.input(Input::MaxPrefixExceeded { family, limit })).await,
                    Some(PeerCmd::Inbound(s)) => {
                        let id = self.adopt(*s);
                        Box::pin(self.input(Input::Connected { conn: id, inbound: true })).await;
                    }
                },
                e = self.ev_rx.recv() => {
                    let Some(e) = e else { return };
                    Box::pin(self.event(e)).await;
                }
                _ = sleep => {
                    if let Some((t, _)) = next {
                        self.timers.remove(&t);
                        Box::pin(self.input(Input::Timer(t))).await;
                    }
                }
            }
        }
    }

    /// A BFD state change: reported for status; Up → Down (not the peer's
    /// AdminDown) closes the BGP session.
    async fn bfd_event(&mut self, ev: bfd::Event) {
        let _ = self.rib.send(RibMsg::Bfd(self.idx, ev.change.to)).await;
        if bfd::driver::is_failure(&ev.change) {
            warn!(diag = %ev.change.diag, "BFD session down: closing the BGP session");
            self.input(Input::BfdDown(ev.change.diag)).await;
        }
    }

    /// Let every connection's writer flush what is queued (a NOTIFICATION)
    /// and close, for at most `grace`.
    async fn drain_writers(&mut self, grace: Duration) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close_conn(id);
        }
        let writers = std::mem::take(&mut self.closing);
        let _ = tokio::time::timeout(grace, async {
            for w in writers {
                let _ = w.await;
            }
        })
        .await;
    }

    /// Drop a connection: its reader stops now, its writer flushes what is
    /// queued and closes.
    fn close_conn(&mut self, id: ConnId) {
        if let Some(mut c) = self.conns.remove(&id) {
            self.closing.retain(|w| !w.is_finished());
            self.closing
                .push(std::mem::replace(&mut c.tasks[1], tokio::spawn(async {})));
        }
    }

    fn adopt(&mut self, s: TcpStream) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        let _ = s.set_nodelay(true);
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let local = s
            .local_addr()
            .map(canonical)
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let peer = s
            .peer_addr()
            .map(canonical)
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (rd, wr) = s.into_split();
        let ev = self.ev_tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let mut lens = Vec::new();
            loop {
                // Every complete message in the buffer, as one event.
                lens.clear();
                let mut bytes = 0;
                let bad = loop {
                    if bytes >= FRAMES_BATCH_BYTES {
                        break None;
                    }
                    match frame(&buf[bytes..]) {
                        Ok(Some(len)) => {
                            bytes += len;
                            lens.push(len);
                        }
                        Ok(None) => break None,
                        Err(e) => break Some(e),
                    }
                };
                let frames = take_frames(&mut buf, &lens);
                if !frames.is_empty()
                    && ev
                        .send(ConnEvent::Frames(Box::new((id, frames))))
                        .await
                        .is_err()
                {
                    return;
                }
                if let Some(e) = bad {
                    let _ = ev.send(ConnEvent::Bad(Box::new((id, e)))).await;
                    return;
                }
                if bytes >= FRAMES_BATCH_BYTES {
                    continue;
                }
                // An idle session holds no buffer (a reflector has
                // thousands, mostly idle): a consumed one is let go, and
                // the next is taken once the socket has something to read.
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
                if rd.readable().await.is_err() {
                    let _ = ev.send(ConnEvent::Closed(id)).await;
                    return;
                }
                // Take room for a whole batch rather than many small reads.
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(FRAMES_BATCH_BYTES);
                }
                match rd.try_read_buf(&mut buf) {
                    Ok(0) => {
                        let _ = ev.send(ConnEvent::Closed(id)).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        let _ = ev.send(ConnEvent::Closed(id)).await;
                        return;
                    }
                }
            }
        });
        let (wtx, wrx) = mpsc::channel::<Write>(64);
        let writer = tokio::spawn(write_loop(wr, wrx));
        self.conns.insert(
            id,
            Conn {
                writer: wtx,
                tasks: [reader, writer],
                local,
                peer,
            },
        );
        id
    }

    async fn event(&mut self, e: ConnEvent) {
        match e {
            ConnEvent::Connected(s) => {
                self.connecting = None;
                let id = self.adopt(*s);
                self.input(Input::Connected {
                    conn: id,
                    inbound: false,
                })
                .await;
            }
            ConnEvent::ConnectFailed(err) => {
                self.connecting = None;
                debug!(error = %err, "connect failed");
                self.input(Input::ConnectFailed).await;
            }
            ConnEvent::Frames(f) => {
                let (conn, frames) = *f;
                let n = frames.len() as u64;
                let start = Instant::now();
                self.waited = Duration::ZERO;
                for f in frames {
                    let cx = self.session.decode_cx(conn);
                    let decoded =
                        std::panic::catch_unwind(AssertUnwindSafe(|| Message::decode(&f, &cx)));
                    let input = match decoded {
                        Ok(Ok(msg)) => Input::Message { conn, msg },
                        Ok(Err(error)) => Input::BadMessage { conn, error },
                        Err(_) => {
                            warn!("decoder panicked; closing the session");
                            Input::BadMessage {
                                conn,
                                error: DecodeError::Update {
                                    subcode: 0,
                                    data: Bytes::new(),
                                    reason: "internal decoder failure",
                                },
                            }
                        }
                    };
                    self.input(input).await;
                }
                // Decoding and the session's work, without the waits for
                // the RIB task (counted apart).
                self.stats
                    .decoded(n, start.elapsed().saturating_sub(self.waited));
                self.flush_updates().await;
            }
            ConnEvent::Bad(b) => {
                let (conn, error) = *b;
                self.input(Input::BadMessage { conn, error }).await
            }
            ConnEvent::Closed(conn) => self.input(Input::Closed { conn }).await,
        }
    }

    /// Hand the UPDATEs decoded so far to the RIB task.
    async fn flush_updates(&mut self) {
        if self.updates.is_empty() {
            return;
        }
        let updates = std::mem::take(&mut self.updates);
        self.update_routes = 0;
        let t = Instant::now();
        let _ = self
            .rib
            .send(RibMsg::Updates {
                peer: self.idx,
                updates,
            })
            .await;
        let w = t.elapsed();
        self.waited += w;
        self.stats.to_rib_waited(w);
    }

    /// Send to the RIB task after the UPDATEs before it (order matters:
    /// End-of-RIB, session down).
    async fn send_rib(&mut self, m: RibMsg) {
        self.flush_updates().await;
        let _ = self.rib.send(m).await;
    }

    async fn input(&mut self, i: Input) {
        let before = self.session.state();
        let mut outs = std::mem::take(&mut self.outs);
        self.session.handle_into(i, Instant::now(), &mut outs);
        for o in outs.drain(..) {
            self.output(o).await;
        }
        self.outs = outs;
        let after = self.session.state();
        if before != after {
            info!(from = ?before, to = ?after, "state");
            self.send_rib(RibMsg::State {
                peer: self.idx,
                state: after,
                since: self.session.since(),
                error: self.session.last_error().map(str::to_string),
            })
            .await;
        }
    }

    async fn output(&mut self, o: Output) {
        match o {
            Output::Connect => {
                let Some(ip) = self.addr else { return };
                let cfg = self.session.config().clone();
                let ev = self.ev_tx.clone();
                if let Some(h) = self.connecting.take() {
                    h.abort();
                }
                self.connecting = Some(tokio::spawn(async move {
                    let r = sock::connect(
                        SocketAddr::new(ip, cfg.port),
                        cfg.source_addr,
                        cfg.md5_password.as_deref(),
                        cfg.ttl_security,
                    )
                    .await;
                    let _ = ev
                        .send(match r {
                            Ok(s) => ConnEvent::Connected(Box::new(s)),
                            Err(e) => ConnEvent::ConnectFailed(e),
                        })
                        .await;
                }));
            }
            Output::Send { conn, msg } => {
                if let Some(c) = self.conns.get(&conn) {
                    let cx = self.session.encode_cx();
                    let _ = c
                        .writer
                        .send(Write::Bytes(Box::new(msg.to_bytes(&cx))))
                        .await;
                }
            }
            Output::Close { conn } => self.close_conn(conn),
            Output::Arm(t, d) => {
                self.timers.insert(t, tokio::time::Instant::now() + d);
            }
            Output::Cancel(t) => {
                self.timers.remove(&t);
            }
            Output::Up(n) => {
                let cfg = self.session.config();
                let c = self
                    .session
                    .established_conn()
                    .and_then(|c| self.conns.get(&c));
                let (local, peer) = c.map(|c| (c.local, c.peer)).unwrap_or((
                    SocketAddr::from(([0, 0, 0, 0], 0)),
                    SocketAddr::from(([0, 0, 0, 0], 0)),
                ));
                info!(peer_as = n.peer_as, hold = n.hold_time, "established");
                let local_v4 = cfg.next_hop_v4.or(match (cfg.source_addr, local.ip()) {
                    (Some(IpAddr::V4(a)), _) | (None, IpAddr::V4(a)) => Some(a),
                    _ => None,
                });
                let local_v6 = cfg.next_hop_v6.or(match (cfg.source_addr, local.ip()) {
                    (Some(IpAddr::V6(a)), _) | (None, IpAddr::V6(a)) => Some(a),
                    _ => None,
                });
                let local_v4 = cfg.next_hop_v4.or(local_v4);
                let local_v6 = cfg.next_hop_v6.or(local_v6);
                let info = PeerInfo {
                    source: Source {
                        asn: n.peer_as,
                        router_id: n.peer_id,
                        addr: peer.ip(),
                        ebgp: n.ebgp,
                    },
                    local_v4,
                    local_v6,
                    rr_client: cfg.rr_client,
                    next_hop_self: cfg.next_hop_self,
                    communities: cfg.communities.clone(),
                    families: n.families,
                    encode: n.encode_cx(),
                    max_prefix: cfg.max_prefix,
                    filters: cfg.filters.clone(),
                };
                self.send_rib(RibMsg::Up {
                    peer: self.idx,
                    info: Box::new(info),
                })
                .await;
            }
            Output::Down { reason, graceful } => {
                info!(%reason, "session down");
                self.send_rib(RibMsg::Down {
                    peer: self.idx,
                    graceful,
                })
                .await;
            }
            Output::Update(u) => {
                for i in &u.issues {
                    debug!(code = i.code, action = ?i.action, reason = i.reason, "RFC 7606");
                }
                self.update_routes += u.route_count();
                self.updates.push(*u);
                if self.updates.len() >= RIB_BATCH_UPDATES || self.update_routes >= RIB_BATCH_ROUTES
                {
                    self.flush_updates().await;
                }
            }
            Output::EndOfRib(f) => {
                info!(family = ?f, "end of RIB received");
                self.send_rib(RibMsg::EndOfRib(self.idx, f)).await;
            }
            Output::PurgeStale(f) => {
                self.send_rib(RibMsg::PurgeStale(self.idx, f)).await;
            }
            Output::RefreshRequest(f) => {
                self.send_rib(RibMsg::Refresh(self.idx, f)).await;
            }
        }
    }
}

/// The complete messages at the front of the read buffer (`lens`, in
/// order), taken out of it as one exact-size copy that the frames share.
/// Frames sliced from the read buffer itself would each keep the whole
/// buffer (4 KB or more) alive until decoded: a reflector's thousands of
/// clients, each with a 60-byte UPDATE queued behind the RIB task, held
/// ~30 MB of read buffers at 5,000 clients that way (heaptrack).
fn take_frames(buf: &mut BytesMut, lens: &[usize]) -> Vec<Bytes> {
    let total: usize = lens.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    let all = Bytes::copy_from_slice(&buf[..total]);
    bytes::Buf::advance(buf, total);
    if lens.len() == 1 {
        return vec![all];
    }
    let mut at = 0;
    lens.iter()
        .map(|&len| {
            let f = all.slice(at..at + len);
            at += len;
            f
        })
        .collect()
}

/// A connection's writer: the session's own messages as they come, and,
/// once attached to its update group's log, what the log has for it,
/// pulled whenever the log has more and the socket took the last batch
/// (so a slow socket holds a read position, not a queue of copies).
async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Write>) {
    enum Next {
        Msg(Option<Write>),
        Log,
    }
    let mut log: Option<LogReader> = None;
    let mut parts: Vec<Bytes> = Vec::new();
    loop {
        let next = {
            let readable = async {
                match &log {
                    Some(r) => r.readable().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                m = rx.recv() => Next::Msg(m),
                () = readable => Next::Log,
            }
        };
        match next {
            Next::Msg(None) => break,
            Next::Msg(Some(Write::Bytes(b))) => {
                if wr.write_all(&b).await.is_err() {
                    return;
                }
            }
            Next::Msg(Some(Write::Attach(r))) => log = Some(*r),
            Next::Log => {
                while let Some(r) = &log {
                    parts.clear();
                    match r.read(WRITE_BATCH, &mut parts) {
                        Ok(0) => break,
                        Ok(_) => {
                            if write_parts(&mut wr, &mut parts).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => log = None,
                    }
                }
                parts = Vec::new();
            }
        }
    }
    let _ = wr.shutdown().await;
}

/// Write `parts` in order with vectored writes: the log's buffers go to
/// the socket as they are (no copy into a buffer of our own, which a
/// writer waiting on a full socket would hold).
async fn write_parts(wr: &mut OwnedWriteHalf, parts: &mut [Bytes]) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    while first < parts.len() {
        let slices: Vec<std::io::IoSlice<'_>> = parts[first..]
            .iter()
            .take(64)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        drop(slices);
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < parts.len() {
            let b = &mut parts[first];
            if n >= b.len() {
                n -= b.len();
                first += 1;
            } else {
                b.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session's three queues allocate their first 32-slot block when
    /// created; with thousands of sessions the slot size is memory.
    #[test]
    fn per_session_queue_slots_stay_small() {
        assert!(std::mem::size_of::<ConnEvent>() <= 16);
        assert!(std::mem::size_of::<Write>() <= 16);
        assert!(std::mem::size_of::<PeerCmd>() <= 16);
    }

    /// Frames are copied out of the read buffer: none of them shares its
    /// memory, the partial message behind them stays in it.
    #[test]
    fn frames_are_taken_out_of_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(b"aaaabbbbbbcc");
        let in_buf = buf.as_ptr_range();
        let frames = take_frames(&mut buf, &[4, 6]);
        assert_eq!(frames, [&b"aaaa"[..], &b"bbbbbb"[..]]);
        assert_eq!(&buf[..], b"cc");
        let shared = |f: &Bytes| {
            let r = f.as_ptr_range();
            r.start < in_buf.end && in_buf.start < r.end
        };
        assert!(!frames.iter().any(shared));
        // One message: one copy of exactly its size.
        let one = take_frames(&mut buf, &[2]);
        assert_eq!(one, [&b"cc"[..]]);
        assert!(buf.is_empty());
        assert!(take_frames(&mut buf, &[]).is_empty());
    }
}
