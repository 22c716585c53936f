//! Watches a namespace's kernel routing table through rtnetlink multicast
//! (the events `ip monitor route` prints) and records when a routing
//! daemon's routes reached a count. Benchmarks use it to time every
//! receiver's FIB the same way from outside: no polling of the daemon, no
//! dump of the table, nothing that slows one side and not the other.
//!
//! A burst the socket cannot hold (ENOBUFS) is an error, never a count
//! that is silently short.

use std::collections::HashSet;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, setsockopt,
    socket, sockopt,
};

use super::{LabError, Netns, Result};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSG_HDR: usize = 16;
const RTMSG: usize = 12;
const RTA_DST: u16 = 1;
/// RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE.
const GROUPS: u32 = 0x40 | 0x400;

/// A route's identity: (family, prefix length, destination address).
type RouteKey = (u8, u8, Vec<u8>);

/// What the monitor saw.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// Routes of the protocol now in the table (family, prefix length, dst).
    routes: HashSet<RouteKey>,
    /// When their count first reached the target.
    reached: Option<SystemTime>,
    /// Why the monitor stopped early.
    error: Option<String>,
}

/// A running monitor (stops when dropped).
pub struct RouteMonitor {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RouteMonitor {
    /// Starts watching `ns` for routes of kernel protocol `protocol` (e.g.
    /// 12 for BIRD, 80 for Margay's BGP routes); `target` is the count to
    /// time. Returns once the socket is subscribed.
    pub fn start(ns: &Netns, protocol: u8, target: usize) -> Result<RouteMonitor> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, st, name) = (seen.clone(), stop.clone(), ns.name().to_string());
        let thread = std::thread::spawn(move || {
            // A namespace that cannot be entered drops `ready_tx` unused:
            // `start` reports it.
            let _ = Netns::existing(&name).enter(move || run(protocol, target, &s, &st, &ready_tx));
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(RouteMonitor {
                seen,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(LabError::Invalid(format!("route monitor: {e}"))),
            Err(_) => Err(LabError::Invalid(
                "route monitor did not start (could not enter the namespace?)".into(),
            )),
        }
    }

    /// Waits up to `timeout` for the target count; the wall-clock instant
    /// it was reached.
    pub fn wait(&self, timeout: Duration) -> Result<SystemTime> {
        let start = Instant::now();
        loop {
            {
                let s = self.seen.lock().map_err(|_| poisoned())?;
                if let Some(e) = &s.error {
                    return Err(LabError::Invalid(format!("route monitor: {e}")));
                }
                if let Some(t) = s.reached {
                    return Ok(t);
                }
                if start.elapsed() > timeout {
                    return Err(LabError::Invalid(format!(
                        "route monitor: {} routes after {timeout:?}",
                        s.routes.len()
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Routes of the protocol in the table now.
    pub fn count(&self) -> usize {
        self.seen.lock().map(|s| s.routes.len()).unwrap_or(0)
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn poisoned() -> LabError {
    LabError::Invalid("route monitor state poisoned".into())
}

fn run(
    protocol: u8,
    target: usize,
    seen: &Mutex<Seen>,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<std::result::Result<(), String>>,
) {
    let fd = match socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = ready.send(Err(format!("socket: {e}")));
            return;
        }
    };
    // A million routes arrive faster than any reader: a large buffer (root
    // may exceed rmem_max), and ENOBUFS below if even that is not enough.
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &(256 << 20));
    let _ = setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 100_000),
    );
    if let Err(e) = bind(fd.as_raw_fd(), &NetlinkAddr::new(0, GROUPS)) {
        let _ = ready.send(Err(format!("bind to the route groups: {e}")));
        return;
    }
    let _ = ready.send(Ok(()));
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                if let Ok(mut s) = seen.lock() {
                    s.error = Some(format!(
                        "lost route events ({e}): the count cannot be trusted"
                    ));
                }
                return;
            }
        };
        let Ok(mut s) = seen.lock() else { return };
        for (ty, body) in messages(&buf[..n]) {
            let Some((key, proto)) = route_key(body) else {
                continue;
            };
            if proto != protocol {
                continue;
            }
            match ty {
                RTM_NEWROUTE => {
                    s.routes.insert(key);
                }
                RTM_DELROUTE => {
                    s.routes.remove(&key);
                }
                _ => {}
            }
        }
        if s.reached.is_none() && s.routes.len() >= target {
            s.reached = Some(SystemTime::now());
        }
    }
}

/// (type, payload) of each netlink message in a datagram.
fn messages(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR || len > b.len() {
            break;
        }
        out.push((ty, &b[NLMSG_HDR..len]));
        let aligned = (len + 3) & !3;
        b = &b[aligned.min(b.len())..];
    }
    out
}

/// ((family, prefix length, destination), protocol) of an rtmsg.
fn route_key(body: &[u8]) -> Option<(RouteKey, u8)> {
    if body.len() < RTMSG {
        return None;
    }
    let (family, dst_len, protocol) = (body[0], body[1], body[5]);
    let mut attrs = &body[RTMSG..];
    let mut dst = Vec::new();
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        if ty == RTA_DST {
            dst = attrs[4..len].to_vec();
        }
        let aligned = (len + 3) & !3;
        attrs = &attrs[aligned.min(attrs.len())..];
    }
    Some(((family, dst_len, dst), protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_route_messages_and_their_destination() {
        // nlmsghdr(16) + rtmsg(12) + RTA_DST(4 + 4).
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[2, 28, 0, 0, 254, 80, 0, 1, 0, 0, 0, 0]);
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&RTA_DST.to_ne_bytes());
        m.extend_from_slice(&[240, 0, 0, 16]);
        let msgs = messages(&m);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].0, RTM_NEWROUTE);
        let (key, proto) = route_key(msgs[0].1).expect("route");
        assert_eq!(proto, 80);
        assert_eq!(key, (2, 28, vec![240, 0, 0, 16]));
        assert!(
            messages(&m[..20]).is_empty(),
            "a truncated message is not read"
        );
    }
}
