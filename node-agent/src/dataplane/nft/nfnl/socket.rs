//! The `NETLINK_NETFILTER` socket: one transaction out, the kernel's
//! verdict on each of its messages back.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::encode::{Encoded, NLMSG_ERROR};

/// How long the kernel may take to answer a transaction.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the kernel did not take a native batch.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("nfnetlink socket: {0}")]
    Socket(#[source] nix::Error),
    #[error("kernel refused the element batch: {0}")]
    Refused(#[source] std::io::Error),
    #[error("no answer from the kernel within {0:?}")]
    Timeout(Duration),
    #[error("malformed answer from the kernel")]
    Malformed,
}

/// A `NETLINK_NETFILTER` socket in the network namespace of the thread
/// that opened it.
#[derive(Debug)]
pub struct NfSocket {
    fd: OwnedFd,
    next_seq: u32,
    buf: Vec<u8>,
}

impl NfSocket {
    /// Opens and binds the socket.
    pub fn open() -> Result<NfSocket, NativeError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(NativeError::Socket)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NativeError::Socket)?;
        let tv = TimeVal::new(
            ANSWER_TIMEOUT.as_secs() as i64,
            i64::from(ANSWER_TIMEOUT.subsec_micros()),
        );
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(NativeError::Socket)?;
        Ok(NfSocket {
            fd,
            next_seq: 1,
            buf: vec![0; 64 << 10],
        })
    }

    /// The sequence number the next batch starts at.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Sends one transaction and waits for the kernel's verdict on it.
    pub fn apply(&mut self, e: &Encoded) -> Result<(), NativeError> {
        let first = e.first_seq;
        let end_seq = first.wrapping_add(e.messages).wrapping_add(1);
        self.next_seq = end_seq.wrapping_add(1);
        // Answers to an earlier, abandoned transaction are not ours.
        while recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT).is_ok() {}
        send(self.fd.as_raw_fd(), &e.bytes, MsgFlags::empty()).map_err(NativeError::Socket)?;
        let ours = |seq: u32| seq.wrapping_sub(first) <= e.messages.wrapping_add(1);
        let mut acked = 0u32;
        let mut refused: Option<i32> = None;
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return Err(NativeError::Timeout(ANSWER_TIMEOUT)),
                Err(e) => return Err(NativeError::Socket(e)),
            };
            let mut at = 0;
            while at + 16 <= n {
                let b = &self.buf[at..n];
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if len < 16 || len > b.len() {
                    return Err(NativeError::Malformed);
                }
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if ty == NLMSG_ERROR && ours(seq) {
                    if len < 20 {
                        return Err(NativeError::Malformed);
                    }
                    let errno = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                    if seq == first || seq == end_seq {
                        // About the transaction as a whole (its commit
                        // failed, or the kernel ran out of memory for the
                        // answers): no per-message answers follow.
                        if errno != 0 {
                            return Err(refused_err(errno));
                        }
                    } else {
                        acked += 1;
                        if errno != 0 && refused.is_none() {
                            refused = Some(errno);
                        }
                    }
                }
                at += (len + 3) & !3;
            }
            if acked >= e.messages {
                return match refused {
                    Some(errno) => Err(refused_err(errno)),
                    None => Ok(()),
                };
            }
        }
    }
}

pub(super) fn refused_err(errno: i32) -> NativeError {
    NativeError::Refused(std::io::Error::from_raw_os_error(-errno))
}
