//! This node as the cluster knows it: its name and addresses
//! ([`autodetect`], chosen once at start, each with its reason) and the
//! annotations Margay owns on its Node object ([`annotations`]), from which
//! the other nodes learn what they need of it ([`NodeFacts`]).

pub mod annotations;
pub mod autodetect;

use k8s_openapi::api::core::v1::Node;

pub use annotations::{NodeFacts, node_facts, patch_node_annotations, publish_addresses};
use autodetect::{Chosen, Family, Method};

use super::cluster::Cluster;

/// The node's identity as chosen at start.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Node name.
    pub name: String,
    /// Where the name came from.
    pub name_source: &'static str,
    /// IPv4 address and why.
    pub ipv4: Option<Chosen>,
    /// IPv6 address and why.
    pub ipv6: Option<Chosen>,
}

/// Why no identity could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The host name could not be read.
    #[error("reading the host name: {0}")]
    HostName(#[source] std::io::Error),
    /// The interface addresses could not be listed.
    #[error("listing interface addresses: {0}")]
    Addresses(#[source] std::io::Error),
    /// A method found no address.
    #[error(transparent)]
    NoAddress(#[from] autodetect::NoAddress),
    /// Neither family is wanted.
    #[error("no node address: both IPv4 and IPv6 autodetection are `none`")]
    NoFamily,
}

/// The InternalIP addresses of a Node's status.
pub fn internal_ips(node: Option<&Node>) -> Vec<std::net::IpAddr> {
    node.and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Chooses name and addresses (`name_flag`: `--node-name`; `v4`, `v6`: the
/// autodetection methods), logging each choice and its reason.
pub fn identify(
    name_flag: Option<&str>,
    v4: &Method,
    v6: &Method,
    cluster: &Cluster,
) -> Result<NodeIdentity, IdentityError> {
    let (name, name_source) = autodetect::node_name(name_flag).map_err(IdentityError::HostName)?;
    let node = cluster
        .nodes
        .get(&kube::runtime::reflector::ObjectRef::new(&name));
    if node.is_none() {
        tracing::warn!(node = %name, "no Node object with this name in the API (yet)");
    }
    let ips = internal_ips(node.as_deref());
    let addrs = autodetect::local_addresses().map_err(IdentityError::Addresses)?;
    let pick = |method, family| {
        autodetect::choose(
            method,
            family,
            &addrs,
            &ips,
            autodetect::kernel_source_towards,
        )
    };
    let ipv4 = pick(v4, Family::V4)?;
    let ipv6 = pick(v6, Family::V6)?;
    if ipv4.is_none() && ipv6.is_none() {
        return Err(IdentityError::NoFamily);
    }
    for (fam, c) in [("IPv4", &ipv4), ("IPv6", &ipv6)] {
        if let Some(c) = c {
            tracing::info!(node = %name, address = %c.addr, interface = c.ifname.as_deref().unwrap_or("-"), reason = %c.reason, "node {fam} address");
        }
    }
    Ok(NodeIdentity {
        name,
        name_source,
        ipv4,
        ipv6,
    })
}
