//! Margay's custom resources (`crd.margay.dev/v1`), defined as Rust types; the
//! YAML in `deploy/crds.yaml` is generated from them (a test fails when it is
//! stale: `MARGAY_UPDATE_CRDS=1 cargo test -p node-agent crds` rewrites it).
//! `IPAMBlock`'s spec is the `ipam` crate's own model, wrapped.
//!
//! All five are cluster-scoped, like Calico's:
//! - `IPPool`: where pod addresses come from;
//! - `IPAMBlock`: one block of a pool, its affinity and allocations (written
//!   by agents only);
//! - `BGPConfiguration`: cluster-wide BGP settings (`default`), optionally
//!   overridden per node (`node.<nodename>`) (in `crd/bgpconfig.rs`);
//! - `BGPPeer`: extra BGP sessions (ToR, route reflectors, external routers);
//! - `BGPFilter`: import/export rules that `BGPPeer`s name (in `crd/bgpfilter.rs`);
//! - `HostEndpoint`, `HostNetworkPolicy`: host protection (in
//!   `crd/hostprotection.rs`).

use std::borrow::Cow;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::SecretKeySelector;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt as _};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

mod bgpconfig;
mod bgpfilter;
pub use bgpconfig::{
    BGPConfiguration, BGPConfigurationSpec, Community, LogLevel, PrefixAdvertisement, ServiceCidr,
};
pub use bgpfilter::{
    BGPFilter, BGPFilterAction, BGPFilterRule, BGPFilterSpec, MatchOperator, PrefixLength,
    RouteSource,
};
mod adminpolicy;
mod hostprotection;
mod ipamconfig;
pub use adminpolicy::{
    ADMIN_POLICY_GROUP, ADMIN_POLICY_VERSION, RawAdminNetworkPolicy, RawBaselineAdminNetworkPolicy,
};
pub use hostprotection::{
    HostEndpoint, HostEndpointCrdSpec, HostNetworkPolicy, HostNetworkPolicyCrdSpec,
};
pub use ipamconfig::{IPAM_CONFIGURATION_NAME, IPAMConfiguration, IPAMConfigurationSpec};

/// The API group of Margay's resources.
pub const GROUP: &str = "crd.margay.dev";

/// Default AS number of nodes (as Calico's).
pub const DEFAULT_AS: u32 = 64512;
/// Default BGP port.
pub const DEFAULT_BGP_PORT: u16 = 179;
/// Default IPv4 block size.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default IPv6 block size.
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

/// A CIDR as it appears in a spec ("198.19.0.0/16", "2001:db8::/48"), parsed
/// into an [`IpNetwork`] where it is used.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cidr(pub String);

impl Cidr {
    /// Parses it; the error names the offending text.
    pub fn parse(&self) -> Result<IpNetwork, InvalidSpec> {
        self.0.parse().map_err(|e| InvalidSpec {
            field: "cidr",
            value: self.0.clone(),
            reason: format!("{e}"),
        })
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "cidr",
            // The longest IPv6 CIDR; bounds the cost of CEL rules on it.
            "maxLength": 43,
            "description": "An IPv4 or IPv6 network in CIDR notation."
        })
    }
}

/// A spec field that does not make sense; the agent logs it and ignores the
/// object rather than guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct InvalidSpec {
    /// The field.
    pub field: &'static str,
    /// What it held.
    pub value: String,
    /// Why it is wrong.
    pub reason: String,
}

/// What a pool's addresses may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AllowedUse {
    /// Pod addresses.
    Workload,
    /// Tunnel endpoint addresses (reserved for overlay modes).
    Tunnel,
}

/// Cluster-wide pool of pod addresses, carved into blocks that nodes claim.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "crd.margay.dev",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    doc = "A pool of pod addresses; nodes claim blocks of it.",
    shortname = "ippool",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "BlockSize", type_ = "integer", json_path = ".spec.blockSize"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
    printcolumn(name = "NAT", type_ = "boolean", json_path = ".spec.natOutgoing"),
    printcolumn(name = "VXLAN", type_ = "string", json_path = ".spec.vxlanMode"),
    // What the API server rejects (CEL with the CIDR library, Kubernetes
    // 1.31+), so that `kubectl apply` of a bad pool fails with a message
    // instead of an agent logging it. Each rule is guarded by isCIDR: the
    // `format: cidr` check reports a malformed CIDR on its own.
    validation = Rule::new(
        "!isCIDR(self.spec.cidr) || cidr(self.spec.cidr) == cidr(self.spec.cidr).masked()"
    )
    .message("spec.cidr must be a network address without host bits, e.g. 198.19.0.0/16")
    .field_path(".spec.cidr"),
    validation = Rule::new(
        "!has(self.spec.blockSize) || !isCIDR(self.spec.cidr) || self.spec.blockSize <= (cidr(self.spec.cidr).ip().family() == 4 ? 32 : 128)"
    )
    .message("spec.blockSize must be at most 32 for an IPv4 pool and at most 128 for an IPv6 pool")
    .field_path(".spec.blockSize"),
    validation = Rule::new(
        "!isCIDR(self.spec.cidr) || (has(self.spec.blockSize) ? self.spec.blockSize : (cidr(self.spec.cidr).ip().family() == 4 ? 26 : 122)) >= cidr(self.spec.cidr).prefixLength()"
    )
    .message("spec.blockSize must be at least the pool's prefix length (a block cannot be larger than its pool; the default is 26 for IPv4, 122 for IPv6)")
    .field_path(".spec.blockSize")
)]
// Two printer columns of one type read as a duplicated attribute to clippy.
#[allow(clippy::duplicated_attributes)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The pool's network.
    pub cidr: Cidr,
    /// Prefix length of the blocks nodes claim (default 26 for IPv4, 122 for
    /// IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub block_size: Option<u8>,
    /// Only nodes whose labels match may claim blocks from this pool
    /// (absent: all nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// No new allocations from this pool; existing ones stay.
    #[serde(default)]
    pub disabled: bool,
    /// What the addresses may be used for (default: Workload).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uses: Vec<AllowedUse>,
    /// Do not announce this pool's blocks over BGP.
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,
    /// Masquerade traffic from this pool's pods to destinations outside
    /// every pool (the internet, the API server's public address) to the
    /// node's address. Default: true for an IPv4 pool, false for IPv6.
    /// Traffic to any pool, enabled or disabled, is never NATed: a disabled
    /// pool names a no-NAT destination (e.g. the service range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing: Option<bool>,
    /// How traffic between this pool's pods on different nodes travels:
    /// `Never` (default: routed, the routes come from BGP), `Always`
    /// (encapsulated in VXLAN between every pair of nodes) or `CrossSubnet`
    /// (VXLAN only to nodes outside this node's underlay subnet, routed
    /// directly within it). Both `Always` and `CrossSubnet` need no BGP
    /// route to reach a pod: the agent programs them from the IPAM blocks.
    #[serde(default, rename = "vxlanMode", skip_serializing_if = "Option::is_none")]
    pub vxlan_mode: Option<VxlanMode>,
}

/// An IPPool's `vxlanMode` (Calico's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VxlanMode {
    /// No encapsulation: pod routes come from BGP.
    #[default]
    Never,
    /// VXLAN to every other node.
    Always,
    /// VXLAN to nodes in another underlay subnet; plain routes (via the
    /// node's underlay address) within this node's subnet.
    CrossSubnet,
}

impl IPPoolSpec {
    /// Whether the pool masquerades outgoing traffic (with its family's
    /// default: on for IPv4, off for IPv6).
    pub fn effective_nat_outgoing(&self) -> bool {
        self.nat_outgoing
            .unwrap_or_else(|| matches!(self.cidr.parse(), Ok(IpNetwork::V4(_))))
    }

    /// The pool's VXLAN mode (absent: `Never`).
    pub fn effective_vxlan_mode(&self) -> VxlanMode {
        self.vxlan_mode.unwrap_or_default()
    }

    /// The block size, with the family's default.
    pub fn effective_block_size(&self) -> Result<u8, InvalidSpec> {
        let net = self.cidr.parse()?;
        let (default, max) = match net {
            IpNetwork::V4(_) => (DEFAULT_BLOCK_SIZE_V4, 32),
            IpNetwork::V6(_) => (DEFAULT_BLOCK_SIZE_V6, 128),
        };
        let size = self.block_size.unwrap_or(default);
        if size < net.prefix() || size > max {
            return Err(InvalidSpec {
                field: "blockSize",
                value: size.to_string(),
                reason: format!(
                    "must be between the pool's prefix length {} and {max}",
                    net.prefix()
                ),
            });
        }
        Ok(size)
    }
}

/// `IPAMBlock` spec: exactly the IPAM crate's block model (so the allocator's
/// writes and the stored object can never drift apart), with a hand-written
/// structural schema. A test checks that every field the model serializes is
/// in the schema: a real API server prunes unknown fields.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "crd.margay.dev",
    version = "v1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    doc = "One block of an IPPool: its node affinity and per-address allocations (written by agents).",
    shortname = "ipamblock",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Affinity","type":"string","jsonPath":".spec.affinity"}"#
)]
#[serde(transparent)]
pub struct IPAMBlockSpec(pub ipam::IpamBlockSpec);

impl JsonSchema for IPAMBlockSpec {
    fn schema_name() -> Cow<'static, str> {
        "IPAMBlockSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "Block allocation state. Written by margay-node with compare-and-swap; do not edit by hand.",
            "required": ["cidr"],
            "properties": {
                "cidr": {"type": "string", "format": "cidr", "description": "The block's network."},
                "affinity": {"type": "string", "description": "host:<node> when the block belongs to a node."},
                "allocations": {
                    "type": "array",
                    "description": "Allocated addresses, by ordinal within the block.",
                    "items": {
                        "type": "object",
                        "required": ["ordinal", "handle", "sequence"],
                        "properties": {
                            "ordinal": {"type": "integer", "format": "int64", "minimum": 0},
                            "handle": {"type": "string", "description": "<network>.<containerID>[.<ifname>]"},
                            "pod": {"type": "string"},
                            "namespace": {"type": "string"},
                            "node": {"type": "string"},
                            "sequence": {"type": "integer", "format": "int64", "minimum": 0}
                        }
                    }
                },
                "free": {
                    "type": "array",
                    "description": "Free ordinals; the first has been free the longest and is reused first.",
                    "items": {
                        "type": "object",
                        "required": ["ordinal"],
                        "properties": {
                            "ordinal": {"type": "integer", "format": "int64", "minimum": 0},
                            "releasedAt": {"type": "integer", "format": "int64", "minimum": 0}
                        }
                    }
                },
                "sequence": {"type": "integer", "format": "int64", "minimum": 0, "description": "Incremented on every write."},
                "createdAt": {"type": "integer", "format": "int64", "minimum": 0, "description": "When the current affinity was set, unix ms."}
            }
        })
    }
}

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

/// Every Margay CRD, in the order `deploy/crds.yaml` lists them.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        IPPool::crd(),
        IPAMBlock::crd(),
        BGPConfiguration::crd(),
        BGPPeer::crd(),
        BGPFilter::crd(),
        IPAMConfiguration::crd(),
        HostEndpoint::crd(),
        HostNetworkPolicy::crd(),
    ]
}

/// `deploy/crds.yaml`: every CRD as a YAML document.
pub fn to_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::from(
        "# Generated from node-agent/src/crd.rs; do not edit.\n\
         # Regenerate: MARGAY_UPDATE_CRDS=1 cargo test -p node-agent crds\n",
    );
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_in_deploy_are_generated_from_these_types() {
        let want = to_yaml().expect("CRDs serialize");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml");
        if std::env::var_os("MARGAY_UPDATE_CRDS").is_some() {
            std::fs::write(&path, &want).expect("write deploy/crds.yaml");
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "deploy/crds.yaml is stale: run `MARGAY_UPDATE_CRDS=1 cargo test -p node-agent crds`"
        );
    }

    #[test]
    fn crds_are_cluster_scoped_in_our_group() {
        let kinds: Vec<String> = all().iter().map(|c| c.spec.names.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                "IPPool",
                "IPAMBlock",
                "BGPConfiguration",
                "BGPPeer",
                "BGPFilter",
                "IPAMConfiguration",
                "HostEndpoint",
                "HostNetworkPolicy"
            ]
        );
        for crd in all() {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Cluster");
            let v = &crd.spec.versions[0];
            assert!(v.served && v.storage);
            assert!(v.schema.is_some(), "{} has a schema", crd.spec.names.kind);
        }
    }

    /// Every key of `value` (recursively, through arrays) is declared in
    /// `schema`; returns the undeclared paths.
    fn undeclared(
        value: &serde_json::Value,
        schema: &serde_json::Value,
        path: &str,
    ) -> Vec<String> {
        match value {
            serde_json::Value::Object(m) => m
                .iter()
                .flat_map(|(k, v)| {
                    let p = format!("{path}.{k}");
                    match schema.pointer(&format!("/properties/{k}")) {
                        Some(s) => undeclared(v, s, &p),
                        None => vec![p],
                    }
                })
                .collect(),
            serde_json::Value::Array(items) => items
                .iter()
                .flat_map(|v| {
                    undeclared(
                        v,
                        schema.get("items").unwrap_or(&serde_json::Value::Null),
                        path,
                    )
                })
                .collect(),
            _ => vec![],
        }
    }

    #[test]
    fn ipamblock_schema_declares_every_field_the_ipam_model_writes() {
        let spec: ipam::IpamBlockSpec = serde_json::from_value(serde_json::json!({
            "cidr": "198.19.0.0/30",
            "affinity": "host:n1",
            "allocations": [{"ordinal": 0, "handle": "k8s-pod-network.abc", "pod": "p",
                             "namespace": "ns", "node": "n1", "sequence": 3}],
            "free": [{"ordinal": 1, "releasedAt": 1700000000000u64}, {"ordinal": 2}, {"ordinal": 3}],
            "sequence": 3,
            "createdAt": 1700000000000u64
        }))
        .expect("a full block parses");
        let written = serde_json::to_value(IPAMBlockSpec(spec)).expect("serialize");
        // Whatever the model writes today, with every optional field filled.
        for key in [
            "cidr",
            "affinity",
            "allocations",
            "free",
            "sequence",
            "createdAt",
        ] {
            assert!(
                written.get(key).is_some(),
                "model no longer writes {key}: {written}"
            );
        }
        let crd = serde_json::to_value(IPAMBlock::crd()).expect("crd json");
        let schema = crd
            .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
            .expect("spec schema");
        let missing = undeclared(&written, schema, "spec");
        assert!(
            missing.is_empty(),
            "pruned by a real API server: {missing:?}"
        );
    }

    #[test]
    fn ippool_block_size_defaults_per_family_and_is_checked() {
        let pool = |cidr: &str, bs: Option<u8>| IPPoolSpec {
            cidr: Cidr(cidr.into()),
            block_size: bs,
            node_selector: None,
            disabled: false,
            allowed_uses: vec![],
            disable_bgp_export: false,
            nat_outgoing: None,
            vxlan_mode: None,
        };
        assert_eq!(pool("198.19.0.0/16", None).effective_block_size(), Ok(26));
        assert_eq!(pool("2001:db8::/48", None).effective_block_size(), Ok(122));
        assert_eq!(
            pool("198.19.0.0/16", Some(24)).effective_block_size(),
            Ok(24)
        );
        assert!(
            pool("198.19.0.0/16", Some(8))
                .effective_block_size()
                .is_err()
        );
        assert!(
            pool("198.19.0.0/16", Some(33))
                .effective_block_size()
                .is_err()
        );
        assert!(pool("not-a-cidr", None).effective_block_size().is_err());
    }

    #[test]
    fn bgp_peer_validation_names_the_problem() {
        let ok = BGPPeerSpec {
            peer_ip: Some("198.18.0.1".into()),
            as_number: Some(65000),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let both = BGPPeerSpec {
            peer_selector: Some(LabelSelector::default()),
            ..ok.clone()
        };
        assert_eq!(
            both.validate().map_err(|e| e.field),
            Err("peerIP/peerSelector")
        );
        let no_as = BGPPeerSpec {
            as_number: None,
            ..ok.clone()
        };
        assert_eq!(no_as.validate().map_err(|e| e.field), Err("asNumber"));
        let bad_ip = BGPPeerSpec {
            peer_ip: Some("198.18.0.300".into()),
            ..ok.clone()
        };
        assert_eq!(bad_ip.validate().map_err(|e| e.field), Err("peerIP"));
        let bad_timers = BGPPeerSpec {
            hold_time: Some(9),
            keepalive_time: Some(9),
            ..ok.clone()
        };
        assert_eq!(bad_timers.validate().map_err(|e| e.field), Err("holdTime"));
        let bfd = |b: BGPPeerBFD| BGPPeerSpec {
            bfd: Some(b),
            ..ok.clone()
        };
        assert_eq!(bfd(BGPPeerBFD::default()).validate(), Ok(()));
        assert_eq!(
            bfd(BGPPeerBFD {
                min_rx: Some(0),
                ..Default::default()
            })
            .validate()
            .map_err(|e| e.field),
            Err("bfd.minRx")
        );
        assert_eq!(
            bfd(BGPPeerBFD {
                multiplier: Some(0),
                ..Default::default()
            })
            .validate()
            .map_err(|e| e.field),
            Err("bfd.multiplier")
        );
    }

    #[test]
    fn peer_addresses_take_an_optional_port() {
        assert_eq!(
            parse_peer_address("198.18.0.1").map(|a| a.to_string()),
            Ok("198.18.0.1:179".into())
        );
        assert_eq!(
            parse_peer_address("[2001:db8::1]:1179").map(|a| a.to_string()),
            Ok("[2001:db8::1]:1179".into())
        );
        assert!(parse_peer_address("2001:db8::1:1179:x").is_err());
    }

    #[test]
    fn per_node_configuration_overrides_only_what_it_sets() {
        let global = BGPConfigurationSpec {
            as_number: Some(64512),
            node_to_node_mesh_enabled: Some(false),
            listen_port: Some(179),
            ..Default::default()
        };
        let node = BGPConfigurationSpec {
            as_number: Some(65001),
            ..Default::default()
        };
        let eff = global.overlay(&node);
        assert_eq!(eff.as_number(), 65001);
        assert!(!eff.mesh_enabled());
        assert_eq!(eff.listen_port(), 179);
        assert!(BGPConfigurationSpec::default().mesh_enabled());
        assert_eq!(BGPConfigurationSpec::default().as_number(), DEFAULT_AS);
    }
}
