//! A BGP load generator: many small iBGP clients, the simulated nodes of a
//! large cluster, each with one session to a route reflector, announcing its
//! blocks and counting what the reflector sends back. `bench_rr` drives it
//! against Margay's speaker and BIRD in the same run.
//!
//! Client `i` speaks from its own source address, announces its blocks (IPv4
//! /30s carved in order from 198.19.0.0/16, `blocks_per_client` each, next
//! hop itself) and then an End-of-RIB. It is a graceful-restart helper
//! (RFC 4724, restart time 120 s): when the session is lost it keeps what it
//! learnt, reconnects every 100 ms (also when the handshake has not
//! completed within [`HANDSHAKE_TIMEOUT`]) and, once the new session is up, starts
//! over counting (everything it had is stale until sent again). It is
//! *converged* when it holds every other client's blocks and has the
//! reflector's End-of-RIB; [`Progress`] counts converged clients, so a
//! driver waits for `converged == clients` after a start or a restart.
//!
//! The codec is the `bgp` crate's (the speaker under test uses it too, but
//! only to frame and decode what the reflector sends, which BIRD sends as
//! well). One current-thread runtime runs every client, so the generator
//! takes at most one of the machine's cores.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bgp::wire::{
    AsPath, Capability, DecodeCx, EncodeCx, GrFamily, GracefulRestartCap, Message, Nlri, Open,
    Origin, PathAttrs, Prefix, Update, frame,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// The first block: 198.19.0.0/30.
const BLOCK_BASE: u32 = u32::from_be_bytes([198, 19, 0, 0]);
/// Blocks are /30s.
const BLOCK_LEN: u8 = 30;
/// How long a client waits for the reflector's OPEN and KEEPALIVE before
/// it closes and connects again.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many /30s 198.19.0.0/16 holds.
pub const MAX_BLOCKS: usize = 1 << 14;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The reflector's address (port 179).
    pub reflector: Ipv4Addr,
    /// The AS of everyone (iBGP).
    pub local_as: u32,
    /// One source address per client (they must be local addresses of the
    /// namespace the generator runs in).
    pub clients: Vec<Ipv4Addr>,
    /// Blocks each client announces.
    pub blocks_per_client: usize,
    /// Hold time offered (keepalives every third of it).
    pub hold_time: u16,
}

impl Plan {
    /// Checks that the blocks fit in 198.19.0.0/16.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients.is_empty() || self.blocks_per_client == 0 {
            return Err("no clients or no blocks".into());
        }
        if self.total_blocks() > MAX_BLOCKS {
            return Err(format!(
                "{} clients x {} blocks = {} /30s do not fit in 198.19.0.0/16 ({MAX_BLOCKS})",
                self.clients.len(),
                self.blocks_per_client,
                self.total_blocks()
            ));
        }
        if self.hold_time != 0 && self.hold_time < 3 {
            return Err("hold time must be 0 or at least 3 s".into());
        }
        Ok(())
    }

    /// Every client's blocks together.
    pub fn total_blocks(&self) -> usize {
        self.clients.len() * self.blocks_per_client
    }

    /// Block number `i` (client `c` owns `c * blocks_per_client ..`).
    pub fn block(i: usize) -> Prefix {
        let addr = Ipv4Addr::from(BLOCK_BASE + ((i as u32) << (32 - BLOCK_LEN)));
        Prefix::new(addr.into(), BLOCK_LEN).expect("a /30 is a valid prefix")
    }

    /// The block number of a prefix, if it is one of ours.
    pub fn block_index(p: &Prefix) -> Option<usize> {
        let std::net::IpAddr::V4(a) = p.addr() else {
            return None;
        };
        let off = u32::from(a).checked_sub(BLOCK_BASE)?;
        let i = (off >> (32 - BLOCK_LEN)) as usize;
        (p.len() == BLOCK_LEN && i < MAX_BLOCKS).then_some(i)
    }
}

/// Shared counters, read by the driver while the clients run.
#[derive(Debug, Default)]
pub struct Progress {
    /// Sessions Established now.
    pub established: AtomicUsize,
    /// Clients converged now (see the module doc).
    pub converged: AtomicUsize,
    /// Sessions that ended (any reason), over the run.
    pub session_losses: AtomicU64,
    /// Announced prefixes received, over the run (duplicates included).
    pub prefixes_received: AtomicU64,
    /// The last error a client saw, for the driver's failure message.
    pub last_error: std::sync::Mutex<Option<String>>,
    /// Clients Established but not converged: (blocks held, End-of-RIB seen).
    pub waiting: std::sync::Mutex<std::collections::BTreeMap<Ipv4Addr, (usize, bool)>>,
    /// Each notice makes client 0, while Established, withdraw its blocks
    /// if they are announced, else announce them again (one UPDATE): the
    /// driver times how long one change takes to reach every other client
    /// (`converged` drops to 1, then comes back to all).
    pub flap: tokio::sync::Notify,
}

impl Progress {
    fn note_error(&self, client: Ipv4Addr, e: &str) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(format!("client {client}: {e}"));
        }
    }
}

/// Runs every client until `stop` turns true. Call inside the namespace that
/// owns the client addresses (the sockets are created on this thread).
pub async fn run(plan: Arc<Plan>, progress: Arc<Progress>, stop: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..plan.clients.len() {
        tasks.spawn(client(plan.clone(), i, progress.clone(), stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// What one client knows across its sessions.
struct Seen {
    bits: Vec<u64>,
    count: usize,
}

impl Seen {
    fn new(n: usize) -> Seen {
        Seen {
            bits: vec![0; n.div_ceil(64)],
            count: 0,
        }
    }
    fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.count = 0;
    }
    fn set(&mut self, i: usize, on: bool) {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let was = self.bits[w] & b != 0;
        if on && !was {
            self.bits[w] |= b;
            self.count += 1;
        } else if !on && was {
            self.bits[w] &= !b;
            self.count -= 1;
        }
    }
}

async fn client(
    plan: Arc<Plan>,
    idx: usize,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) {
    let me = plan.clients[idx];
    let mut seen = Seen::new(plan.total_blocks());
    loop {
        if *stop.borrow() {
            return;
        }
        let outcome = tokio::select! {
            r = session(&plan, idx, &mut seen, &progress) => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = outcome {
            progress.note_error(me, &e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Decrements the live counters when a session ends, however it ends.
struct Live<'a> {
    progress: &'a Progress,
    me: Ipv4Addr,
    established: bool,
    converged: bool,
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.progress.waiting.lock() {
            w.remove(&self.me);
        }
        if self.established {
            self.progress.established.fetch_sub(1, Ordering::Relaxed);
            self.progress.session_losses.fetch_add(1, Ordering::Relaxed);
        }
        if self.converged {
            self.progress.converged.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn open(plan: &Plan, me: Ipv4Addr) -> Message {
    Message::Open(Open {
        asn: plan.local_as,
        hold_time: plan.hold_time,
        router_id: me,
        capabilities: vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::RouteRefresh,
            Capability::FourByteAs(plan.local_as),
            Capability::GracefulRestart(GracefulRestartCap {
                restarting: false,
                notification: false,
                restart_time: 120,
                families: vec![GrFamily {
                    afi: 1,
                    safi: 1,
                    forwarding_preserved: true,
                }],
            }),
        ],
    })
}

fn announcement(plan: &Plan, idx: usize, me: Ipv4Addr) -> Message {
    let first = idx * plan.blocks_per_client;
    Message::Update(Update {
        attrs: PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::default()),
            next_hop: Some(me),
            local_pref: Some(100),
            ..PathAttrs::default()
        },
        nlri: (first..first + plan.blocks_per_client)
            .map(|i| Nlri::from(Plan::block(i)))
            .collect(),
        ..Update::default()
    })
}

async fn connect(plan: &Plan, me: Ipv4Addr) -> Result<TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::from((me, 0)))
        .map_err(|e| format!("bind {me}: {e}"))?;
    let to = SocketAddr::from((plan.reflector, 179));
    let s = tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
        .await
        .map_err(|_| format!("connect to {to}: timed out"))?
        .map_err(|e| format!("connect to {to}: {e}"))?;
    s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    Ok(s)
}

/// One session, until it fails. Returns the reason.
async fn session(
    plan: &Plan,
    idx: usize,
    seen: &mut Seen,
    progress: &Progress,
) -> Result<(), String> {
    let me = plan.clients[idx];
    let mut s = connect(plan, me).await?;
    let ecx = EncodeCx {
        four_byte_as: true,
        ..EncodeCx::default()
    };
    let dcx = DecodeCx {
        four_byte_as: true,
        ..DecodeCx::default()
    };
    s.write_all(&open(plan, me).to_bytes(&ecx))
        .await
        .map_err(|e| format!("send OPEN: {e}"))?;
    let mut live = Live {
        progress,
        me,
        established: false,
        converged: false,
    };
    let own = idx * plan.blocks_per_client..(idx + 1) * plan.blocks_per_client;
    let expected = plan.total_blocks() - plan.blocks_per_client;
    let mut eor = false;
    let mut got_open = false;
    let mut announced = true;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let keepalive = Duration::from_secs(u64::from(plan.hold_time.max(3) / 3));
    // A handshake that does not complete in time is given up and retried: a
    // listener whose accept queue overflowed (BIRD listens with a backlog
    // of 8) drops the final ACK, and the connection we think is open was
    // never accepted.
    let handshake = tokio::time::sleep(HANDSHAKE_TIMEOUT);
    tokio::pin!(handshake);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    loop {
        // Every whole message in the buffer first.
        while let Some(len) = frame(&buf).map_err(|e| format!("framing: {e}"))? {
            let msg = buf.split_to(len);
            // The bulk of what a client receives: IPv4 UPDATEs, scanned for
            // their prefixes without building the message (the generator
            // shares the machine with the reflector it measures).
            let scanned = if live.established && msg.get(18) == Some(&2) {
                scan_update(&msg[19..], |p, on| {
                    match Plan::block_index(&p) {
                        Some(i) if i < plan.total_blocks() && !own.contains(&i) => seen.set(i, on),
                        _ => return Err(format!("unexpected prefix {p}")),
                    }
                    if on {
                        progress.prefixes_received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })?
            } else {
                None
            };
            let decoded = match scanned {
                Some(end_of_rib) => {
                    eor |= end_of_rib;
                    None
                }
                None => Some(Message::decode(&msg, &dcx).map_err(|e| format!("decode: {e}"))?),
            };
            if let Some(decoded) = decoded {
                match decoded {
                    Message::Open(_) if !got_open => {
                        got_open = true;
                        s.write_all(&Message::Keepalive.to_bytes(&ecx))
                            .await
                            .map_err(|e| format!("send KEEPALIVE: {e}"))?;
                    }
                    Message::Keepalive if got_open && !live.established => {
                        live.established = true;
                        progress.established.fetch_add(1, Ordering::Relaxed);
                        // A new session: what we had is stale until sent again.
                        seen.clear();
                        let mut out = BytesMut::new();
                        announcement(plan, idx, me).encode(&ecx, &mut out);
                        Message::Update(Update::default()).encode(&ecx, &mut out);
                        s.write_all(&out)
                            .await
                            .map_err(|e| format!("send UPDATE: {e}"))?;
                    }
                    Message::Keepalive => {}
                    Message::Update(u) if live.established => {
                        if u.nlri.is_empty()
                            && u.withdrawn.is_empty()
                            && u.mp_reach.is_none()
                            && u.mp_unreach.is_none()
                        {
                            eor = true;
                        }
                        progress
                            .prefixes_received
                            .fetch_add(u.nlri.len() as u64, Ordering::Relaxed);
                        for (n, on) in u
                            .withdrawn
                            .iter()
                            .map(|n| (n, false))
                            .chain(u.nlri.iter().map(|n| (n, true)))
                        {
                            match Plan::block_index(&n.prefix) {
                                Some(i) if i < plan.total_blocks() && !own.contains(&i) => {
                                    seen.set(i, on)
                                }
                                _ => return Err(format!("unexpected prefix {}", n.prefix)),
                            }
                        }
                    }
                    Message::Notification(n) => return Err(format!("NOTIFICATION {n:?}")),
                    other => {
                        return Err(format!(
                            "unexpected message type {} in this state",
                            other.type_code()
                        ));
                    }
                }
            }
            let now = eor && seen.count == expected;
            if live.established
                && let Ok(mut w) = progress.waiting.lock()
            {
                if now {
                    w.remove(&me);
                } else {
                    w.insert(me, (seen.count, eor));
                }
            }
            if now != live.converged {
                live.converged = now;
                if now {
                    progress.converged.fetch_add(1, Ordering::Relaxed);
                } else {
                    progress.converged.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        tokio::select! {
            r = s.read_buf(&mut buf) => match r {
                Ok(0) => return Err("the reflector closed the session".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            },
            () = &mut handshake, if !live.established => {
                return Err(format!("no OPEN and KEEPALIVE within {HANDSHAKE_TIMEOUT:?}"));
            }
            () = progress.flap.notified(), if idx == 0 && live.established => {
                announced = !announced;
                let msg = if announced {
                    announcement(plan, idx, me)
                } else {
                    Message::Update(Update {
                        withdrawn: own.clone().map(|i| Nlri::from(Plan::block(i))).collect(),
                        ..Update::default()
                    })
                };
                s.write_all(&msg.to_bytes(&ecx))
                    .await
                    .map_err(|e| format!("send UPDATE: {e}"))?;
            }
            _ = ticker.tick(), if plan.hold_time != 0 => {
                s.write_all(&Message::Keepalive.to_bytes(&ecx))
                    .await
                    .map_err(|e| format!("send KEEPALIVE: {e}"))?;
            }
        }
    }
}

/// The prefixes of an IPv4 UPDATE's body (after the 19-byte header), each
/// with `true` if announced, `false` if withdrawn, without decoding its
/// attributes; returns whether it is an End-of-RIB, or `None` when it
/// carries multiprotocol attributes (then the full decoder must read it).
fn scan_update(
    body: &[u8],
    mut each: impl FnMut(Prefix, bool) -> Result<(), String>,
) -> Result<Option<bool>, String> {
    let bad = || "a malformed UPDATE".to_string();
    let u16_at = |i: usize| -> Result<usize, String> {
        body.get(i..i + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(bad)
    };
    let wlen = u16_at(0)?;
    let withdrawn = body.get(2..2 + wlen).ok_or_else(bad)?;
    let alen = u16_at(2 + wlen)?;
    let attrs = body.get(4 + wlen..4 + wlen + alen).ok_or_else(bad)?;
    let nlri = body.get(4 + wlen + alen..).ok_or_else(bad)?;
    // Attribute headers: flags, type, length (two octets if extended).
    let mut i = 0;
    while i < attrs.len() {
        let (flags, code) = (attrs[i], *attrs.get(i + 1).ok_or_else(bad)?);
        if code == 14 || code == 15 {
            return Ok(None);
        }
        let (hdr, len) = if flags & 0x10 != 0 {
            let b = attrs.get(i + 2..i + 4).ok_or_else(bad)?;
            (4, usize::from(u16::from_be_bytes([b[0], b[1]])))
        } else {
            (3, usize::from(*attrs.get(i + 2).ok_or_else(bad)?))
        };
        i += hdr + len;
    }
    let mut prefixes = |mut b: &[u8], on: bool| -> Result<(), String> {
        while let Some((&len, rest)) = b.split_first() {
            let n = usize::from(len).div_ceil(8);
            if len > 32 || rest.len() < n {
                return Err(bad());
            }
            let mut a = [0u8; 4];
            a[..n].copy_from_slice(&rest[..n]);
            let p = Prefix::new(Ipv4Addr::from(a).into(), len).map_err(|e| e.to_string())?;
            each(p, on)?;
            b = &rest[n..];
        }
        Ok(())
    };
    prefixes(withdrawn, false)?;
    prefixes(nlri, true)?;
    Ok(Some(wlen == 0 && alen == 0 && nlri.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_scan_finds_what_the_decoder_finds() {
        let plan = Plan {
            reflector: Ipv4Addr::new(198, 18, 0, 1),
            local_as: 65000,
            clients: vec![Ipv4Addr::new(198, 18, 32, 1)],
            blocks_per_client: 3,
            hold_time: 240,
        };
        let cx = EncodeCx {
            four_byte_as: true,
            ..EncodeCx::default()
        };
        let scan = |m: Message| {
            let b = m.to_bytes(&cx);
            let mut v = Vec::new();
            let r = scan_update(&b[19..], |p, on| {
                v.push((p, on));
                Ok(())
            });
            (r, v)
        };
        let (r, v) = scan(announcement(&plan, 0, plan.clients[0]));
        assert_eq!(r, Ok(Some(false)));
        assert_eq!(
            v,
            (0..3).map(|i| (Plan::block(i), true)).collect::<Vec<_>>()
        );
        let w = Message::Update(Update {
            withdrawn: vec![Nlri::from(Plan::block(7))],
            ..Update::default()
        });
        assert_eq!(scan(w), (Ok(Some(false)), vec![(Plan::block(7), false)]));
        assert_eq!(
            scan(Message::Update(Update::default())),
            (Ok(Some(true)), vec![])
        );
        assert!(scan_update(&[0, 9, 1], |_, _| Ok(())).is_err(), "truncated");
    }

    #[test]
    fn blocks_are_consecutive_thirties_and_map_back() {
        assert_eq!(Plan::block(0).to_string(), "198.19.0.0/30");
        assert_eq!(Plan::block(1).to_string(), "198.19.0.4/30");
        assert_eq!(Plan::block(MAX_BLOCKS - 1).to_string(), "198.19.255.252/30");
        for i in [0, 1, 63, 64, 4095, MAX_BLOCKS - 1] {
            assert_eq!(Plan::block_index(&Plan::block(i)), Some(i));
        }
        let other: Prefix = "198.19.0.0/26".parse().expect("prefix");
        assert_eq!(Plan::block_index(&other), None);
        let outside: Prefix = "10.0.0.0/30".parse().expect("prefix");
        assert_eq!(Plan::block_index(&outside), None);
    }

    #[test]
    fn a_plan_that_does_not_fit_is_refused() {
        let plan = Plan {
            reflector: Ipv4Addr::new(198, 18, 0, 11),
            local_as: 65000,
            clients: vec![Ipv4Addr::new(198, 18, 32, 1); 8192],
            blocks_per_client: 3,
            hold_time: 240,
        };
        assert!(plan.validate().unwrap_err().contains("do not fit"));
        assert!(
            Plan {
                blocks_per_client: 2,
                ..plan
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn seen_counts_each_block_once() {
        let mut s = Seen::new(130);
        s.set(3, true);
        s.set(3, true);
        s.set(129, true);
        assert_eq!(s.count, 2);
        s.set(3, false);
        s.set(3, false);
        assert_eq!(s.count, 1);
        s.clear();
        assert_eq!(s.count, 0);
    }
}
