//! BFD's UDP sockets (RFC 5881 single hop, RFC 5883 multihop), through
//! `nix` (no `unsafe` here):
//! - a receive socket per family and port (3784, 4784) that reports each
//!   datagram's TTL / Hop Limit (for GTSM) and destination address;
//! - a transmit socket per family bound to a source port in 49152–65535,
//!   sending with TTL / Hop Limit 255 and a per-packet source address
//!   (`IP_PKTINFO` / `IPV6_PKTINFO`) when the session names one.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrIn, SockaddrIn6, SockaddrStorage, bind, recvmsg, sendmsg, setsockopt, socket, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// RFC 5881 §4: single-hop Control packets go to this port.
pub const PORT_SINGLE_HOP: u16 = 3784;
/// RFC 5883 §5: multihop Control packets go to this port.
pub const PORT_MULTIHOP: u16 = 4784;
/// RFC 5881 §4: the source port range.
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// DSCP CS6 (network control), as BIRD and FRR mark their packets.
const TOS_NETWORK_CONTROL: i32 = 0xc0;

/// One received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Octets in the buffer.
    pub len: usize,
    /// Sender.
    pub from: SocketAddr,
    /// TTL / Hop Limit it arrived with, if the kernel said.
    pub ttl: Option<u8>,
    /// Our address it was sent to, if the kernel said.
    pub dst: Option<IpAddr>,
}

fn new_udp(family_v6: bool) -> io::Result<std::os::fd::OwnedFd> {
    let af = if family_v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    Ok(socket(
        af,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Udp,
    )?)
}

fn bind_to(fd: &std::os::fd::OwnedFd, addr: SocketAddr) -> io::Result<()> {
    match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?,
    }
    Ok(())
}

fn into_tokio(fd: std::os::fd::OwnedFd) -> io::Result<UdpSocket> {
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// The wildcard address of a family.
fn any(family_v6: bool) -> IpAddr {
    if family_v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// A socket receiving Control packets of one family on `port`.
#[derive(Debug)]
pub struct RxSocket {
    sock: UdpSocket,
}

impl RxSocket {
    /// Bind the wildcard address of the family on `port` (IPv6 sockets are
    /// IPv6-only, so both families can hold the port).
    pub fn bind(family_v6: bool, port: u16) -> io::Result<RxSocket> {
        let fd = new_udp(family_v6)?;
        if family_v6 {
            setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)?;
            setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?;
        } else {
            setsockopt(&fd, sockopt::Ipv4RecvTtl, &true)?;
            setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)?;
        }
        bind_to(&fd, SocketAddr::new(any(family_v6), port))?;
        Ok(RxSocket {
            sock: into_tokio(fd)?,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Wait for one datagram.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.sock
            .async_io(Interest::READABLE, || recv_one(&self.sock, buf))
            .await
    }
}

fn recv_one(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::c_int, libc::in6_pktinfo, libc::in_pktinfo);
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let from = msg
        .address
        .as_ref()
        .and_then(|a| {
            if let Some(a) = a.as_sockaddr_in() {
                Some(SocketAddr::from((a.ip(), a.port())))
            } else {
                a.as_sockaddr_in6()
                    .map(|a| SocketAddr::from((a.ip(), a.port())))
            }
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram without a source"))?;
    let mut ttl = None;
    let mut dst = None;
    // A truncated control buffer (ENOBUFS) leaves TTL unknown: the caller
    // then fails the GTSM check, it does not guess.
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4Ttl(t) => ttl = u8::try_from(t).ok(),
                ControlMessageOwned::Ipv6HopLimit(t) => ttl = u8::try_from(t).ok(),
                ControlMessageOwned::Ipv4PacketInfo(i) => {
                    dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        i.ipi_spec_dst.s_addr,
                    ))))
                }
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    dst = Some(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)))
                }
                _ => {}
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        from,
        ttl,
        dst,
    })
}

/// A socket sending Control packets of one family.
#[derive(Debug)]
pub struct TxSocket {
    sock: UdpSocket,
    family_v6: bool,
}

impl TxSocket {
    /// Bind a free source port of the RFC 5881 range, starting the search
    /// at `first` (so several speakers spread out), with TTL 255.
    pub fn bind(family_v6: bool, first: u16) -> io::Result<TxSocket> {
        let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
        let start = u32::from(first.max(*SOURCE_PORTS.start()) - SOURCE_PORTS.start());
        let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free BFD source port");
        for i in 0..span {
            let port = SOURCE_PORTS.start() + ((start + i) % span) as u16;
            let fd = new_udp(family_v6)?;
            if family_v6 {
                setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
                setsockopt(&fd, sockopt::Ipv6Ttl, &255)?;
                setsockopt(&fd, sockopt::Ipv6TClass, &TOS_NETWORK_CONTROL)?;
            } else {
                setsockopt(&fd, sockopt::Ipv4Ttl, &255)?;
                setsockopt(&fd, sockopt::Ipv4Tos, &TOS_NETWORK_CONTROL)?;
            }
            match bind_to(&fd, SocketAddr::new(any(family_v6), port)) {
                Ok(()) => {
                    return Ok(TxSocket {
                        sock: into_tokio(fd)?,
                        family_v6,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Send `buf` to `to`, from `src` when given (else the kernel picks).
    pub async fn send(&self, buf: &[u8], to: SocketAddr, src: Option<IpAddr>) -> io::Result<()> {
        if to.is_ipv6() != self.family_v6 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{to} is not of this socket's family"),
            ));
        }
        self.sock
            .async_io(Interest::WRITABLE, || send_one(&self.sock, buf, to, src))
            .await
    }
}

fn send_one(sock: &UdpSocket, buf: &[u8], to: SocketAddr, src: Option<IpAddr>) -> io::Result<()> {
    let iov = [io::IoSlice::new(buf)];
    let fd = sock.as_raw_fd();
    match (to, src) {
        (SocketAddr::V4(a), Some(IpAddr::V4(s))) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(s).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let c = [ControlMessage::Ipv4PacketInfo(&info)];
            sendmsg(
                fd,
                &iov,
                &c,
                MsgFlags::MSG_DONTWAIT,
                Some(&SockaddrIn::from(a)),
            )?;
        }
        (SocketAddr::V6(a), Some(IpAddr::V6(s))) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: s.octets(),
                },
                ipi6_ifindex: 0,
            };
            let c = [ControlMessage::Ipv6PacketInfo(&info)];
            sendmsg(
                fd,
                &iov,
                &c,
                MsgFlags::MSG_DONTWAIT,
                Some(&SockaddrIn6::from(a)),
            )?;
        }
        (SocketAddr::V4(a), _) => {
            sendmsg(
                fd,
                &iov,
                &[],
                MsgFlags::MSG_DONTWAIT,
                Some(&SockaddrIn::from(a)),
            )?;
        }
        (SocketAddr::V6(a), _) => {
            sendmsg(
                fd,
                &iov,
                &[],
                MsgFlags::MSG_DONTWAIT,
                Some(&SockaddrIn6::from(a)),
            )?;
        }
    }
    Ok(())
}
