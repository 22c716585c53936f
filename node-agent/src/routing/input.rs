//! The facts [`super::desired`] works from, read from the cluster view:
//! the Nodes, BGP objects, pools and Services (peers and prefixes come
//! from these CRDs and objects), with this node as it chose itself.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::secrets::Passwords;
use super::{RoutingInput, services};
use crate::k8s::cluster::Cluster;
use crate::k8s::crd::{BGPConfigurationSpec, LogLevel};
use crate::k8s::node::{NodeFacts, NodeIdentity, node_facts};

/// The tracing level for a `logSeverityScreen` value.
pub fn log_level_name(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warn",
        LogLevel::Error => "error",
    }
}

/// The BGPConfiguration objects by name.
pub fn configs(cluster: &Cluster) -> BTreeMap<String, BGPConfigurationSpec> {
    cluster
        .bgp_configs
        .state()
        .iter()
        .filter_map(|o| Some((o.metadata.name.clone()?, o.spec.clone())))
        .collect()
}

/// Everything [`super::desired`] needs, as the cluster has it now.
pub fn input(
    c: &Cluster,
    me_id: &NodeIdentity,
    passwords: Passwords,
    restarting: bool,
) -> RoutingInput {
    let nodes: Vec<NodeFacts> = c.nodes.state().iter().map(|n| node_facts(n)).collect();
    let mine = nodes.iter().find(|n| n.name == me_id.name);
    let me = NodeFacts {
        name: me_id.name.clone(),
        labels: mine.map(|n| n.labels.clone()).unwrap_or_default(),
        rr_cluster_id: mine.and_then(|n| n.rr_cluster_id.clone()),
        ipv4: me_id.ipv4.as_ref().and_then(|c| match c.addr.ip() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }),
        ipv6: me_id.ipv6.as_ref().and_then(|c| match c.addr.ip() {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }),
    };
    RoutingInput {
        me,
        nodes,
        configs: configs(c),
        peers: c
            .bgp_peers
            .state()
            .iter()
            .filter_map(|o| Some((o.metadata.name.clone()?, o.spec.clone())))
            .collect(),
        passwords,
        no_export: c
            .pools
            .state()
            .iter()
            .filter(|p| p.spec.disable_bgp_export)
            .filter_map(|p| p.spec.cidr.parse().ok())
            .collect(),
        export_pools: c
            .pools
            .state()
            .iter()
            .filter(|p| !p.spec.disable_bgp_export)
            .filter_map(|p| p.spec.cidr.parse().ok())
            .collect(),
        filters: c
            .bgp_filters
            .state()
            .iter()
            .filter_map(|o| Some((o.metadata.name.clone()?, o.spec.clone())))
            .collect(),
        services: c
            .services
            .state()
            .iter()
            .filter_map(|s| services::service_facts(s))
            .collect(),
        ready_here: services::ready_on(c.endpoint_slices.state().iter().map(|s| &**s), &me_id.name),
        restarting,
    }
}
