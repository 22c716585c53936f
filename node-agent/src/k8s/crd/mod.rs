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
//!   overridden per node (`node.<nodename>`) (in `bgpconfig.rs`);
//! - `BGPPeer`: extra BGP sessions (ToR, route reflectors, external routers);
//! - `BGPFilter`: import/export rules that `BGPPeer`s name (in `bgpfilter.rs`);
//! - `HostEndpoint`, `HostNetworkPolicy`: host protection (in
//!   `hostprotection.rs`).

use std::borrow::Cow;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::SecretKeySelector;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt as _};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

mod bgpconfig;
mod podendpoint;
pub use podendpoint::{
    NODE_FIELD, NamedPort, PodEndpoint, PodEndpointSpec, container_ports, invalid_ports, pod_view,
};
mod bgpfilter;
pub use bgpconfig::{
    BGPConfiguration, BGPConfigurationSpec, Community, DEFAULT_MESH_MAX_NODES, LogLevel,
    PrefixAdvertisement, ServiceCidr,
};
pub use bgpfilter::{
    BGPFilter, BGPFilterAction, BGPFilterRule, BGPFilterSpec, MatchOperator, PrefixLength,
    RouteSource,
};
mod adminpolicy;
mod bgppeer;
mod hostprotection;
mod ipamblock;
mod ipamconfig;
mod ippool;
#[cfg(test)]
mod tests;
pub use adminpolicy::{
    ADMIN_POLICY_GROUP, ADMIN_POLICY_VERSION, RawAdminNetworkPolicy, RawBaselineAdminNetworkPolicy,
};
pub use bgppeer::*;
pub use hostprotection::{
    HostEndpoint, HostEndpointCrdSpec, HostNetworkPolicy, HostNetworkPolicyCrdSpec,
};
pub use ipamblock::*;
pub use ipamconfig::{IPAM_CONFIGURATION_NAME, IPAMConfiguration, IPAMConfigurationSpec};
pub use ippool::*;

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
        PodEndpoint::crd(),
    ]
}

/// `deploy/crds.yaml`: every CRD as a YAML document.
pub fn to_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::from(
        "# Generated from node-agent/src/k8s/crd/; do not edit.\n\
         # Regenerate: MARGAY_UPDATE_CRDS=1 cargo test -p node-agent crds\n",
    );
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}
