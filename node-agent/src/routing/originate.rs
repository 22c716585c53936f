//! What this node originates: the blocks affine to it and the addresses
//! it borrowed (unless their pool has `disableBGPExport`), the service
//! ranges and the Service addresses it serves (see [`super::services`]),
//! each with the communities of its `prefixAdvertisements`; and the
//! default export rules (only pool and service networks leave the node).

use std::collections::{BTreeMap, BTreeSet};

use bgp::rib::filter::{FilterAction, MatchOp, Rule};
use bgp::wire::{CommunitySet, Prefix};
use ipnetwork::IpNetwork;

use super::services::{self, ServiceRanges};
use super::{RoutingInput, resolve_community};
use crate::k8s::crd::BGPConfigurationSpec;
use crate::k8s::ipam::view::IpamView;

/// Prefixes to originate and the default export rules.
#[derive(Debug, Default)]
pub struct Origination {
    /// Prefixes to originate, with communities.
    pub originate: BTreeMap<Prefix, CommunitySet>,
    /// Export rules after every peer's own filters.
    pub default_export: Vec<Rule>,
}

fn prefix_of(net: IpNetwork) -> Option<Prefix> {
    Prefix::new(net.network(), net.prefix()).ok()
}

/// What to originate, with the effective configuration `cfg` and its
/// named communities `named`; problems are appended to `problems`.
pub fn origination(
    input: &RoutingInput,
    view: &IpamView,
    cfg: &BGPConfigurationSpec,
    named: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Origination {
    // Communities per advertised network (Calico's prefixAdvertisements).
    let mut adverts: Vec<(IpNetwork, CommunitySet)> = Vec::new();
    for adv in &cfg.prefix_advertisements {
        let cidr = match adv.cidr.parse() {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("prefixAdvertisements: {e}"));
                continue;
            }
        };
        let mut set = CommunitySet::default();
        for c in &adv.communities {
            match resolve_community(named, c) {
                Ok(x) => set.insert(x),
                Err(e) => problems.push(format!("prefixAdvertisements {}: {e}", adv.cidr.0)),
            }
        }
        adverts.push((cidr, set));
    }
    let communities_for = |net: &IpNetwork| -> CommunitySet {
        let mut out = CommunitySet::default();
        for (cidr, set) in &adverts {
            if cidr.contains(net.network()) && cidr.prefix() <= net.prefix() {
                set.iter().for_each(|c| out.insert(c));
            }
        }
        out
    };
    let mut originate = BTreeMap::new();
    let exported = |net: &IpNetwork| !input.no_export.iter().any(|p| p.contains(net.network()));
    let mut nets: BTreeSet<IpNetwork> = view
        .affine_blocks
        .iter()
        .copied()
        .filter(exported)
        .collect();
    for ip in view.borrowed() {
        let net = IpNetwork::from(ip);
        if exported(&net) {
            nets.insert(net);
        }
    }
    // Service ranges from every node, and the host routes of the Services
    // this node serves.
    let ranges = ServiceRanges::from_config(cfg, problems);
    nets.extend(ranges.all());
    nets.extend(services::service_routes(
        &ranges,
        &input.services,
        &input.ready_here,
    ));
    for net in nets {
        if let Some(p) = prefix_of(net) {
            originate.insert(p, communities_for(&net));
        }
    }
    let mut default_export: Vec<Rule> = Vec::new();
    for net in input.export_pools.iter().copied().chain(ranges.all()) {
        if let Some(p) = prefix_of(net) {
            default_export.push(Rule {
                family: None,
                cidr: Some((p, MatchOp::In)),
                len: None,
                remote_only: false,
                action: FilterAction::Accept,
            });
        }
    }
    default_export.push(Rule::all(None, FilterAction::Reject));
    Origination {
        originate,
        default_export,
    }
}
