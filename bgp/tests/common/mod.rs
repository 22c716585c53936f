//! What the RIB tests share: our AS, a RIB, a peer and a prefix.
// Each test binary uses its own subset.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use bgp::rib::decision::{DecisionOptions, Source};
use bgp::rib::{PeerInfo, Rib, RibConfig};
use bgp::wire::{EncodeCx, Families, Prefix};

/// Our AS.
pub const LOCAL_AS: u32 = 65010;

/// A RIB of router 198.18.0.10 in [`LOCAL_AS`], no reflector.
pub fn rib_with(decision: DecisionOptions) -> Rib {
    Rib::new(RibConfig {
        local_as: LOCAL_AS,
        router_id: Ipv4Addr::new(198, 18, 0, 10),
        cluster_id: None,
        decision,
    })
}

/// [`rib_with`] the default decision options.
pub fn rib() -> Rib {
    rib_with(DecisionOptions::default())
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
