//! Socket options: TCP MD5 signatures (RFC 2385, `TCP_MD5SIG`) and GTSM
//! (RFC 5082: send with TTL 255, require at least 255 - hops + 1).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

/// Linux `struct tcp_md5sig` (include/uapi/linux/tcp.h).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; 80],
}

/// `TCP_MD5SIG_FLAG_PREFIX` (include/uapi/linux/tcp.h): the key covers a
/// prefix of peer addresses (`TCP_MD5SIG_EXT`, Linux 4.13).
const TCP_MD5SIG_FLAG_PREFIX: u8 = 1;

/// Install (or with an empty key, remove) the MD5 key for `peer` on `sock`.
/// `v6_sock`: the socket is AF_INET6 (a dual-stack listener), so an IPv4
/// peer is given as an IPv4-mapped address, as Linux wants.
pub fn set_md5(sock: &impl AsRawFd, v6_sock: bool, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    set_md5_sig(sock, v6_sock, peer, None, key)
}

/// Install the MD5 key for every peer in `addr/len` (dynamic neighbours)
/// on a listening socket.
pub fn set_md5_prefix(
    sock: &impl AsRawFd,
    v6_sock: bool,
    addr: IpAddr,
    len: u8,
    key: &[u8],
) -> io::Result<()> {
    set_md5_sig(sock, v6_sock, addr, Some(len), key)
}

#[allow(unsafe_code)]
fn set_md5_sig(
    sock: &impl AsRawFd,
    v6_sock: bool,
    peer: IpAddr,
    prefix_len: Option<u8>,
    key: &[u8],
) -> io::Result<()> {
    if key.len() > 80 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP MD5 key longer than 80 octets",
        ));
    }
    // SAFETY: all-zero is a valid value for this plain C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    let (peer, prefix_len) = match (peer, v6_sock) {
        (IpAddr::V4(a), true) => (IpAddr::V6(a.to_ipv6_mapped()), prefix_len.map(|l| l + 96)),
        other => (other.0, prefix_len),
    };
    match peer {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut sig.addr as *mut libc::sockaddr_storage as *mut libc::sockaddr_in)
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(a).to_be();
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut sig.addr as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6)
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    let opt = match prefix_len {
        Some(len) => {
            sig.flags = TCP_MD5SIG_FLAG_PREFIX;
            sig.prefixlen = len;
            libc::TCP_MD5SIG_EXT
        }
        None => libc::TCP_MD5SIG,
    };
    // SAFETY: valid fd, pointer and length of a live, initialised struct.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            opt,
            &sig as *const TcpMd5Sig as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[allow(unsafe_code)]
fn setopt_int(sock: &impl AsRawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: valid fd and a pointer to a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &v as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// GTSM: TTL 255 out, and at least `256 - hops` in.
pub fn set_gtsm(sock: &impl AsRawFd, family_v6: bool, hops: u8) -> io::Result<()> {
    let min = 256 - i32::from(hops.max(1));
    if family_v6 {
        setopt_int(sock, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)?;
        setopt_int(sock, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, min)
    } else {
        setopt_int(sock, libc::IPPROTO_IP, libc::IP_TTL, 255)?;
        setopt_int(sock, libc::IPPROTO_IP, libc::IP_MINTTL, min)
    }
}

/// Connect to a peer with the options its configuration asks for.
pub async fn connect(
    peer: SocketAddr,
    source: Option<IpAddr>,
    md5: Option<&str>,
    ttl_security: Option<u8>,
) -> io::Result<tokio::net::TcpStream> {
    let s = if peer.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(src) = source {
        s.bind(SocketAddr::new(src, 0))?;
    }
    if let Some(k) = md5 {
        set_md5(&s, peer.is_ipv6(), peer.ip(), k.as_bytes())?;
    }
    if let Some(h) = ttl_security {
        set_gtsm(&s, peer.is_ipv6(), h)?;
    }
    let st = s.connect(peer).await?;
    st.set_nodelay(true)?;
    Ok(st)
}
