//! `IPAMConfiguration`: the cluster's IPAM settings (one object, `default`),
//! as Calico names them. Without it the defaults apply.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The object the agent reads; others are refused by the API server.
pub const IPAM_CONFIGURATION_NAME: &str = "default";

fn yes() -> bool {
    true
}

fn default_min_reclaim_age() -> u32 {
    300
}

/// Cluster-wide IPAM settings.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "crd.margay.dev",
    version = "v1",
    kind = "IPAMConfiguration",
    plural = "ipamconfigurations",
    doc = "Cluster IPAM settings: the object named `default` applies to every node.",
    shortname = "ipamconfig",
    printcolumn(name = "StrictAffinity", type_ = "boolean", json_path = ".spec.strictAffinity"),
    printcolumn(name = "MaxBlocksPerHost", type_ = "integer", json_path = ".spec.maxBlocksPerHost"),
    validation = Rule::new("self.metadata.name == 'default'")
        .message("the IPAMConfiguration must be named default: it is the one every node reads")
        .field_path(".metadata.name")
)]
#[allow(clippy::duplicated_attributes)]
#[serde(rename_all = "camelCase")]
pub struct IPAMConfigurationSpec {
    /// Never borrow addresses from blocks affine to other nodes: a node whose
    /// blocks are full and that may claim no more fails the allocation
    /// instead (needed where the fabric only routes whole blocks).
    #[serde(default)]
    pub strict_affinity: bool,
    /// Most blocks a node may claim per pool (0: unlimited).
    #[serde(default)]
    #[schemars(range(max = 1048576))]
    pub max_blocks_per_host: u32,
    /// Claim a new block when the node's blocks are full (false: only
    /// borrow, or fail under strictAffinity).
    #[serde(default = "yes")]
    pub auto_allocate_blocks: bool,
    /// A released address is not handed out again for this many seconds
    /// (0: reused at once), so that a late packet for a deleted pod does not
    /// reach its successor.
    #[serde(default)]
    #[schemars(range(max = 86400))]
    pub reuse_cooldown_seconds: u32,
    /// An empty block affine to another node is reclaimed only once its
    /// affinity is this old (seconds).
    #[serde(default = "default_min_reclaim_age")]
    #[schemars(range(max = 604800))]
    pub min_reclaim_age_seconds: u32,
}

impl Default for IPAMConfigurationSpec {
    fn default() -> Self {
        IPAMConfigurationSpec {
            strict_affinity: false,
            max_blocks_per_host: 0,
            auto_allocate_blocks: true,
            reuse_cooldown_seconds: 0,
            min_reclaim_age_seconds: default_min_reclaim_age(),
        }
    }
}

impl IPAMConfigurationSpec {
    /// The allocator's settings.
    pub fn to_model(&self) -> ipam::IpamConfig {
        ipam::IpamConfig {
            strict_affinity: self.strict_affinity,
            max_blocks_per_host: self.max_blocks_per_host,
            auto_allocate_blocks: self.auto_allocate_blocks,
            reuse_cooldown_ms: u64::from(self.reuse_cooldown_seconds) * 1000,
            min_reclaim_age_ms: u64::from(self.min_reclaim_age_seconds) * 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_or_empty_configuration_is_the_allocators_default() {
        assert_eq!(
            IPAMConfigurationSpec::default().to_model(),
            ipam::IpamConfig::default()
        );
        let empty: IPAMConfigurationSpec =
            serde_json::from_value(serde_json::json!({})).expect("empty spec");
        assert_eq!(empty.to_model(), ipam::IpamConfig::default());
        let set: IPAMConfigurationSpec = serde_json::from_value(serde_json::json!({
            "strictAffinity": true, "maxBlocksPerHost": 4, "autoAllocateBlocks": false,
            "reuseCooldownSeconds": 30, "minReclaimAgeSeconds": 60
        }))
        .expect("spec");
        let m = set.to_model();
        assert!(m.strict_affinity && !m.auto_allocate_blocks);
        assert_eq!(
            (
                m.max_blocks_per_host,
                m.reuse_cooldown_ms,
                m.min_reclaim_age_ms
            ),
            (4, 30_000, 60_000)
        );
    }
}
