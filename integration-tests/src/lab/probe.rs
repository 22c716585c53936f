//! Reachability probes between namespaces, and the small TCP/UDP server pods
//! run for them (`margay-lab serve`, in the spirit of agnhost).
//!
//! A probe succeeds only when the server *answered*: TCP connects and reads
//! the server's name, UDP gets its datagram echoed. Every probe is bounded by
//! its timeout.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::{LabError, Result};
use super::netns::Netns;

/// Transport of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP: connect, then read the server's greeting.
    Tcp,
    /// UDP: send a datagram, wait for the echo.
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered; the payload is what it said (its name).
    Reached(String),
    /// Actively refused (RST or ICMP unreachable): a path exists, no listener
    /// or a reject rule.
    Refused,
    /// Nothing came back before the timeout (dropped).
    Timeout,
    /// Any other error (no route, ...).
    Error(String),
}

impl Outcome {
    /// True only for [`Outcome::Reached`].
    pub fn reached(&self) -> bool {
        matches!(self, Outcome::Reached(_))
    }
}

/// One probe to run from a namespace.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Namespace the client runs in.
    pub from_ns: String,
    /// Where to.
    pub to: SocketAddr,
    /// TCP or UDP.
    pub proto: Proto,
}

/// Runs one probe from `from` with the given timeout.
pub fn probe(from: &Netns, to: SocketAddr, proto: Proto, timeout: Duration) -> Outcome {
    match from.enter(move || probe_here(to, proto, timeout)) {
        Ok(o) => o,
        Err(e) => Outcome::Error(e.to_string()),
    }
}

/// Runs many probes concurrently (bounded by `parallel` threads at a time),
/// results in input order. The whole call takes about
/// `ceil(n / parallel) * timeout` at worst.
pub fn probe_many(probes: &[Probe], timeout: Duration, parallel: usize) -> Vec<Outcome> {
    let parallel = parallel.max(1);
    let mut results = vec![Outcome::Timeout; probes.len()];
    for (chunk_idx, chunk) in probes.chunks(parallel).enumerate() {
        let handles: Vec<_> = chunk
            .iter()
            .map(|p| {
                let p = p.clone();
                std::thread::spawn(move || {
                    probe(&Netns::existing(&p.from_ns), p.to, p.proto, timeout)
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            results[chunk_idx * parallel + i] = h
                .join()
                .unwrap_or_else(|_| Outcome::Error("probe thread panicked".into()));
        }
    }
    results
}

/// Probes until the server answers or `deadline` passes (fresh wiring can
/// refuse for a moment while neighbour entries settle).
pub fn wait_reachable(from: &Netns, to: SocketAddr, proto: Proto, deadline: Duration) -> Outcome {
    let start = Instant::now();
    loop {
        let o = probe(from, to, proto, Duration::from_millis(500));
        if o.reached() || start.elapsed() >= deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The probe itself, in whatever namespace the calling thread is in.
pub fn probe_here(to: SocketAddr, proto: Proto, timeout: Duration) -> Outcome {
    match proto {
        Proto::Tcp => tcp_probe(to, timeout),
        Proto::Udp => udp_probe(to, timeout),
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Error(e.to_string()),
    }
}

fn tcp_probe(to: SocketAddr, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let mut s = match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    if let Err(e) = s.set_read_timeout(Some(left)) {
        return Outcome::Error(e.to_string());
    }
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return classify(&e),
        }
        if got.len() > 4096 {
            break;
        }
    }
    if got.is_empty() {
        // Connected but closed without a word: not our server.
        return Outcome::Error("connected but no greeting".into());
    }
    Outcome::Reached(String::from_utf8_lossy(&got).trim().to_string())
}

fn udp_probe(to: SocketAddr, timeout: Duration) -> Outcome {
    let bind: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    // connect() makes ICMP port-unreachable come back as ECONNREFUSED.
    if let Err(e) = s.connect(to) {
        return classify(&e);
    }
    if let Err(e) = s.set_read_timeout(Some(timeout)) {
        return Outcome::Error(e.to_string());
    }
    let nonce = format!("probe {:?}", Instant::now());
    if let Err(e) = s.send(nonce.as_bytes()) {
        return classify(&e);
    }
    let mut buf = [0u8; 512];
    match s.recv(&mut buf) {
        Ok(n) => {
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            // The server answers "<name> <what we sent>".
            match reply.split_once(' ') {
                Some((name, echoed)) if echoed == nonce => Outcome::Reached(name.to_string()),
                _ => Outcome::Error(format!("unexpected UDP reply {reply:?}")),
            }
        }
        Err(e) => classify(&e),
    }
}

/// Runs the probe server in the current namespace until killed: every TCP
/// port answers each connection with `name\n` and closes; every UDP port
/// answers a datagram with `name <datagram>`. Listens dual-stack on `[::]`.
/// Writes `ready_file` once all ports are bound.
pub fn serve(name: &str, tcp: &[u16], udp: &[u16], ready_file: Option<&Path>) -> Result<()> {
    let mut threads = Vec::new();
    for &port in tcp {
        let l = TcpListener::bind(("::", port))
            .map_err(|e| LabError::Invalid(format!("bind tcp/{port}: {e}")))?;
        let greeting = format!("{name}\n");
        threads.push(std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(greeting.as_bytes());
            }
        }));
    }
    for &port in udp {
        let s = UdpSocket::bind(("::", port))
            .map_err(|e| LabError::Invalid(format!("bind udp/{port}: {e}")))?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                let mut reply = format!("{name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&reply, peer);
            }
        }));
    }
    if let Some(f) = ready_file {
        std::fs::write(f, b"ready\n").map_err(|e| LabError::io(f, e))?;
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
