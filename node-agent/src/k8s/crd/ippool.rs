//! `IPPool`: where pod addresses come from, and what they may be used for.

use super::*;

/// What a pool's addresses may be used for (the allocator's own type).
pub use ipam::model::AllowedUse;

/// `allowedUses` when the field is absent or empty (Calico's API default).
pub const DEFAULT_ALLOWED_USES: &[AllowedUse] = &[AllowedUse::Workload, AllowedUse::Tunnel];

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
    /// What the addresses may be used for (absent or empty: Workload and
    /// Tunnel, Calico's documented default).
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

    /// What the addresses may be used for, with the default (absent or
    /// empty: [`DEFAULT_ALLOWED_USES`]). The one reading of the field: the
    /// allocator and the overlay both take it from here.
    pub fn effective_allowed_uses(&self) -> &[AllowedUse] {
        if self.allowed_uses.is_empty() {
            DEFAULT_ALLOWED_USES
        } else {
            &self.allowed_uses
        }
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
