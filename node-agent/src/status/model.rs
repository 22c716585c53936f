//! The typed sections of `/status`: what the agent's tasks publish, and
//! what margayctl and the tests read back.

use serde::{Deserialize, Serialize};

/// One BGP session (a row of `margayctl node status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerRow {
    /// Peer name (mesh-<node>, peer-<BGPPeer>[-<node>]).
    pub name: String,
    /// Address.
    pub address: String,
    /// node-mesh, global, node-specific, selector.
    pub kind: String,
    /// FSM state.
    pub state: String,
    /// Seconds in this state.
    pub since_secs: Option<u64>,
    /// Prefixes accepted from the peer (IPv4 + IPv6).
    pub accepted: u32,
    /// Prefixes sent.
    pub sent: u32,
    /// Last error.
    pub last_error: Option<String>,
    /// BFD session state (absent: BFD not configured for this peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
}
