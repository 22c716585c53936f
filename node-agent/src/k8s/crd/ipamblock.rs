//! `IPAMBlock`: one block of a pool (written by agents only).

use super::*;

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
