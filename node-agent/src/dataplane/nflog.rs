//! Denied-flow logging: an NFLOG (nfnetlink_log) socket bound to the group
//! the policy's log rules send to; the wire format and the JSON record are
//! `policy::flowlog`'s (sans-IO). The socket belongs to the network
//! namespace of the thread that opened it.
//!
//! ```text
//!  nft `limit … log prefix "<origin>" group N` ──► nfnetlink_log ──► NflogSocket::recv
//!      ──► policy::flowlog::decode ──► DeniedFlow::of(packet, &resolver) ──► JSON line
//! ```

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use policy::flowlog::{self, DecodeError, DeniedFlow, NflogPacket, NlEvent, PodResolver};

/// How many bytes of each packet the kernel copies (IP + L4 headers).
const COPY_RANGE: u32 = 128;

/// Why the NFLOG socket failed.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("nflog socket")]
    Socket(#[source] nix::Error),
    #[error("binding NFLOG group {group}: the kernel answered errno {errno}")]
    Bind { group: u16, errno: i32 },
    #[error("binding NFLOG group {group}: no answer from the kernel")]
    NoAnswer { group: u16 },
    #[error("nflog datagram")]
    Decode(#[from] DecodeError),
}

/// A socket receiving one NFLOG group.
#[derive(Debug)]
pub struct NflogSocket {
    fd: OwnedFd,
    group: u16,
    buf: Vec<u8>,
}

impl NflogSocket {
    /// Opens a socket and binds it to `group` (in the calling thread's
    /// network namespace). Another listener on the group makes this fail
    /// (EBUSY).
    pub fn bind(group: u16) -> Result<NflogSocket, NflogError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(NflogError::Socket)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NflogError::Socket)?;
        let mut s = NflogSocket {
            fd,
            group,
            buf: vec![0; 64 << 10],
        };
        s.set_timeout(Duration::from_secs(2))?;
        send(
            s.fd.as_raw_fd(),
            &flowlog::bind_request(group, COPY_RANGE, 1),
            MsgFlags::empty(),
        )
        .map_err(NflogError::Socket)?;
        loop {
            let events = s.recv_events()?;
            if events.is_empty() {
                return Err(NflogError::NoAnswer { group });
            }
            if let Some(errno) = events.iter().find_map(|e| match e {
                NlEvent::Ack { errno } => Some(*errno),
                _ => None,
            }) {
                if errno != 0 {
                    return Err(NflogError::Bind { group, errno });
                }
                return Ok(s);
            }
        }
    }

    /// How long [`recv`](Self::recv) waits.
    pub fn set_timeout(&mut self, t: Duration) -> Result<(), NflogError> {
        let tv = TimeVal::new(t.as_secs() as i64, i64::from(t.subsec_micros()));
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv).map_err(NflogError::Socket)
    }

    fn recv_events(&mut self) -> Result<Vec<NlEvent>, NflogError> {
        loop {
            return match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(n) => Ok(flowlog::decode(&self.buf[..n])?),
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => Ok(Vec::new()),
                Err(e) => Err(NflogError::Socket(e)),
            };
        }
    }

    /// The packets of the next datagram (empty after the timeout).
    pub fn recv(&mut self) -> Result<Vec<NflogPacket>, NflogError> {
        Ok(self
            .recv_events()?
            .into_iter()
            .filter_map(|e| match e {
                NlEvent::Packet(p) => Some(p),
                _ => None,
            })
            .collect())
    }

    /// The group this socket receives.
    pub fn group(&self) -> u16 {
        self.group
    }
}

/// Reads packets until `stop` says so and writes one JSON line per denied
/// packet to `out` (an undecodable packet is a line with its error).
pub fn run(
    sock: &mut NflogSocket,
    pods: &dyn PodResolver,
    out: &mut dyn std::io::Write,
    mut stop: impl FnMut() -> bool,
) -> Result<(), NflogError> {
    while !stop() {
        let packets = match sock.recv() {
            Ok(p) => p,
            // The kernel dropped records the socket had no room for.
            Err(NflogError::Socket(nix::Error::ENOBUFS)) => {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"lost": "socket buffer overrun"})
                );
                continue;
            }
            // One datagram we cannot read: skip it.
            Err(NflogError::Decode(e)) => {
                let _ = writeln!(out, "{}", serde_json::json!({"error": e.to_string()}));
                continue;
            }
            Err(e) => return Err(e),
        };
        for p in packets {
            let line = match DeniedFlow::of(&p, pods) {
                Ok(rec) => rec.json_line(),
                Err(e) => {
                    serde_json::json!({"error": e.to_string(), "prefix": p.prefix}).to_string()
                }
            };
            // The log is best effort: a full disk must not stop the agent.
            let _ = writeln!(out, "{line}");
        }
    }
    Ok(())
}
