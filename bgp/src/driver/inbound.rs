//! Inbound connections on the RIB task: handed to the configured peer of
//! that address, or to a new dynamic neighbour of a range; and the TCP MD5
//! keys the listeners check inbound SYNs against.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{PeerCmd, RibTask, sock};
use crate::config::Neighbor;

impl RibTask {
    /// Install (or with an empty key, remove) a peer's TCP MD5 key on every
    /// listener: inbound SYNs are checked against the listener's keys. A
    /// range gets one prefix key (`TCP_MD5SIG_EXT`).
    pub(super) fn listener_md5(&self, neighbor: &Neighbor, key: &[u8], name: &str) {
        for l in &self.listeners {
            let v6 = l.local_addr().is_ok_and(|a| a.is_ipv6());
            let r = match *neighbor {
                Neighbor::Addr(a) => sock::set_md5(l.as_ref(), v6, a, key),
                Neighbor::Range(p) => {
                    if p.addr().is_ipv6() && !v6 {
                        continue;
                    }
                    sock::set_md5_prefix(l.as_ref(), v6, p.addr(), p.len(), key)
                }
            };
            if let Err(e) = r {
                warn!(error = %e, peer = %name, "cannot set TCP MD5 on the listener");
            }
        }
    }

    pub(super) fn inbound(&mut self, stream: TcpStream, from: SocketAddr) {
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        let ip = from.ip().to_canonical();
        if let Some(p) = self.by_addr.get(&ip).and_then(|i| self.peers.get(i)) {
            if let Some(tx) = &p.tx {
                let _ = tx.try_send(PeerCmd::Inbound(Box::new(stream)));
            }
            return;
        }
        let template = self.peers.values().find_map(|p| match p.cfg.neighbor {
            Neighbor::Range(r) if r.contains(ip) => Some(p.cfg.clone()),
            _ => None,
        });
        match template {
            Some(mut cfg) => {
                info!(%ip, range = %cfg.name, "dynamic neighbour");
                cfg.name = format!("{}/{}", cfg.name, ip);
                cfg.neighbor = Neighbor::Addr(ip);
                cfg.passive = true;
                let idx = self.spawn_peer(cfg, Some(ip));
                if let Some(tx) = self.peers.get(&idx).and_then(|p| p.tx.as_ref()) {
                    let _ = tx.try_send(PeerCmd::Inbound(Box::new(stream)));
                }
            }
            None => debug!(%ip, "connection from an unknown address refused"),
        }
    }
}
