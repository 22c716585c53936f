//! What the RIB tests share: our AS, a RIB, a peer and a prefix.
// Each test binary uses its own subset.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::{Deref, DerefMut};

use bgp::rib::decision::{DecisionOptions, PeerIdx, Source};
use bgp::rib::{FibChange, LogReader, PeerInfo, Rib, RibConfig};
use bgp::wire::{EncodeCx, Families, Family, Prefix};
use bytes::Bytes;

/// Our AS.
pub const LOCAL_AS: u32 = 65010;

/// A RIB of router 198.18.0.10 in [`LOCAL_AS`], no reflector.
pub fn rib_with(decision: DecisionOptions) -> TestRib {
    TestRib {
        rib: Rib::new(RibConfig {
            local_as: LOCAL_AS,
            router_id: Ipv4Addr::new(198, 18, 0, 10),
            cluster_id: None,
            decision,
        }),
        readers: BTreeMap::new(),
        held: BTreeSet::new(),
    }
}

/// [`rib_with`] the default decision options.
pub fn rib() -> TestRib {
    rib_with(DecisionOptions::default())
}

/// A RIB and its peers' writers: [`TestRib::flush`] flushes, then reads
/// every attached peer's log as a writer with a fast socket would (but
/// the peers [`TestRib::hold`] stops).
pub struct TestRib {
    pub rib: Rib,
    pub readers: BTreeMap<PeerIdx, LogReader>,
    pub held: BTreeSet<PeerIdx>,
}

/// What one flush handed out.
#[derive(Debug, Default)]
pub struct Out {
    pub fib: Vec<FibChange>,
    /// What each peer's writer read, in order.
    pub send: Vec<(PeerIdx, Bytes)>,
    pub max_prefix: Vec<(PeerIdx, Family, u32)>,
}

impl TestRib {
    /// Flush, attach the readers handed out, read every peer not held.
    pub fn flush(&mut self) -> Out {
        let f = self.rib.flush();
        for (p, r) in f.attach {
            self.readers.insert(p, r);
        }
        let mut out = Out {
            fib: f.fib,
            send: Vec::new(),
            max_prefix: f.max_prefix,
        };
        let held = self.held.clone();
        for p in self.readers.keys().copied().collect::<Vec<_>>() {
            if !held.contains(&p) {
                out.send.extend(self.read(p).into_iter().map(|b| (p, b)));
            }
        }
        out
    }

    /// Read everything `peer`'s log has for it now (a reader whose
    /// session left is dropped).
    pub fn read(&mut self, peer: PeerIdx) -> Vec<Bytes> {
        let mut v = Vec::new();
        if let Some(r) = self.readers.get(&peer) {
            loop {
                match r.read(usize::MAX, &mut v) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        self.readers.remove(&peer);
                        break;
                    }
                }
            }
        }
        v
    }

    /// Stop reading `peer` at flushes (a slow socket) until [`TestRib::resume`].
    pub fn hold(&mut self, peer: PeerIdx) {
        self.held.insert(peer);
    }

    /// Read `peer` at flushes again.
    pub fn resume(&mut self, peer: PeerIdx) {
        self.held.remove(&peer);
    }
}

impl Deref for TestRib {
    type Target = Rib;
    fn deref(&self) -> &Rib {
        &self.rib
    }
}

impl DerefMut for TestRib {
    fn deref_mut(&mut self) -> &mut Rib {
        &mut self.rib
    }
}

/// Peer 198.18.0.`last` in `asn` (external unless [`LOCAL_AS`]), both
/// families, 4-octet AS, no filters, no reflector client.
pub fn info(asn: u32, last: u8) -> PeerInfo {
    PeerInfo {
        source: Source {
            asn,
            router_id: Ipv4Addr::new(198, 18, 1, last),
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            ebgp: asn != LOCAL_AS,
        },
        local_v4: Some(Ipv4Addr::new(198, 18, 0, 10)),
        local_v6: None,
        rr_client: false,
        next_hop_self: false,
        communities: Default::default(),
        families: Families::BOTH,
        encode: EncodeCx {
            four_byte_as: true,
            ..EncodeCx::default()
        },
        max_prefix: None,
        filters: Default::default(),
    }
}

/// A prefix from its text.
pub fn p(s: &str) -> Prefix {
    s.parse().expect("prefix")
}
