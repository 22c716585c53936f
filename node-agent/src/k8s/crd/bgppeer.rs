//! `BGPPeer`: extra BGP sessions (ToR, route reflectors, external routers).

use super::*;

/// How the next hop of routes sent to a peer is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NextHopMode {
    /// Self for eBGP and for locally originated routes, unchanged for
    /// reflected iBGP routes.
    #[default]
    Auto,
    /// Always this node.
    #[serde(rename = "Self")]
    SelfNode,
    /// Never change it.
    Keep,
}

/// Which local address the session uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SourceAddress {
    /// The node's address (as chosen by the agent and shown in its status).
    #[default]
    #[serde(rename = "UseNodeIP")]
    UseNodeIp,
    /// Let the kernel choose.
    None,
}

/// BFD (RFC 5880/5881) for a BGP peer: a failure of the path takes the BGP
/// session and its routes down within `multiplier × max(minRx, the peer's
/// transmit interval)` instead of the hold time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerBFD {
    /// Required Min RX Interval: how often we can take the peer's packets,
    /// milliseconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rx: Option<u32>,
    /// Desired Min TX Interval: how often we would like to send, milliseconds
    /// (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tx: Option<u32>,
    /// Detect Mult: packets the peer may miss before the path counts as down
    /// (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<u8>,
    /// Multihop BFD (RFC 5883, UDP 4784, no TTL check) for a peer that is not
    /// directly connected (default false: single hop, TTL 255 required).
    #[serde(default)]
    pub multihop: bool,
}

/// Default BFD interval, milliseconds (FRR's).
pub const DEFAULT_BFD_INTERVAL_MS: u32 = 300;
/// Default BFD multiplier.
pub const DEFAULT_BFD_MULTIPLIER: u8 = 3;

impl BGPPeerBFD {
    /// (minRx, minTx, multiplier) with defaults.
    pub fn effective(&self) -> (u32, u32, u8) {
        (
            self.min_rx.unwrap_or(DEFAULT_BFD_INTERVAL_MS),
            self.min_tx.unwrap_or(DEFAULT_BFD_INTERVAL_MS),
            self.multiplier.unwrap_or(DEFAULT_BFD_MULTIPLIER),
        )
    }
}

/// A BGP session to set up from some or all nodes: to a fixed address (ToR,
/// route reflector, external router) or to other nodes selected by label.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "crd.margay.dev",
    version = "v1",
    kind = "BGPPeer",
    plural = "bgppeers",
    doc = "A BGP session from some or all nodes to a router or to other nodes.",
    shortname = "bgpp",
    printcolumn = r#"{"name":"PeerIP","type":"string","jsonPath":".spec.peerIP"}"#,
    printcolumn = r#"{"name":"AS","type":"integer","jsonPath":".spec.asNumber"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// Only this node peers (absent: every node matching `nodeSelector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Nodes that peer (absent: all nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// The peer's address: "198.18.0.1", "2001:db8::1", "198.18.0.1:1179" or
    /// "[2001:db8::1]:1179".
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// Peer with the other nodes matching this selector instead of `peerIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<LabelSelector>,
    /// The peer's AS (required with `peerIP`; for `peerSelector`, the nodes'
    /// AS is used when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// TCP MD5 password (RFC 2385) from a Secret in the agent's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretKeySelector>,
    /// Keepalive interval, seconds (default: hold time / 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<u16>,
    /// Hold time, seconds (default 90; 0 disables keepalives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u16>,
    /// Graceful restart time advertised to the peer, seconds (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart_time: Option<u16>,
    /// Close the session (Cease, "maximum number of prefixes reached") when
    /// the peer sends more prefixes than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefix: Option<u32>,
    /// This node reflects routes to the peer (RFC 4456 client).
    #[serde(default)]
    pub route_reflector_client: bool,
    /// Next-hop handling for routes sent to the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mode: Option<NextHopMode>,
    /// Local address of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    /// GTSM (RFC 5082): accept only packets from at most this many hops away
    /// (1 = directly connected); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// BFD toward the peer (absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BGPPeerBFD>,
    /// Communities added to the routes this node originates when they are
    /// sent to this peer: names from `BGPConfiguration.communities` or
    /// values (see `Community`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    /// `BGPFilter`s applied to this peer's routes, in order (a missing or
    /// invalid one leaves the peer unconfigured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
}

impl BGPPeerSpec {
    /// Checks that the spec names exactly one kind of peer and sane values.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        match (&self.peer_ip, &self.peer_selector) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(InvalidSpec {
                    field: "peerIP/peerSelector",
                    value: String::new(),
                    reason: "exactly one of peerIP and peerSelector must be set".into(),
                });
            }
            (Some(ip), None) => {
                parse_peer_address(ip)?;
                if self.as_number.is_none() {
                    return Err(InvalidSpec {
                        field: "asNumber",
                        value: String::new(),
                        reason: "required with peerIP".into(),
                    });
                }
            }
            (None, Some(_)) => {}
        }
        if let (Some(hold), Some(ka)) = (self.hold_time, self.keepalive_time)
            && hold != 0
            && (hold < 3 || ka >= hold)
        {
            return Err(InvalidSpec {
                field: "holdTime",
                value: hold.to_string(),
                reason: "must be 0 or at least 3 and greater than keepaliveTime".into(),
            });
        }
        if self.ttl_security == Some(0) {
            return Err(InvalidSpec {
                field: "ttlSecurity",
                value: "0".into(),
                reason: "hop count must be at least 1".into(),
            });
        }
        if let Some(b) = &self.bfd {
            let (rx, tx, mult) = b.effective();
            for (field, v) in [("bfd.minRx", rx), ("bfd.minTx", tx)] {
                if v == 0 {
                    return Err(InvalidSpec {
                        field,
                        value: v.to_string(),
                        reason: "must be at least 1 (milliseconds)".into(),
                    });
                }
            }
            if mult == 0 {
                return Err(InvalidSpec {
                    field: "bfd.multiplier",
                    value: "0".into(),
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

/// Parses `peerIP`: an address with an optional port (default 179).
pub fn parse_peer_address(s: &str) -> Result<std::net::SocketAddr, InvalidSpec> {
    let bad = |reason: &str| InvalidSpec {
        field: "peerIP",
        value: s.to_string(),
        reason: reason.to_string(),
    };
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, DEFAULT_BGP_PORT));
    }
    s.parse::<std::net::SocketAddr>()
        .map_err(|_| bad("expected an IP address, IPv4:port or [IPv6]:port"))
}
