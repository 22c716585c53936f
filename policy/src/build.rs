//! Small builders for `NetworkPolicy` objects (tests, benchmarks, examples).
//!
//! ```
//! use policy::build::*;
//! let np = NetPol::new("x", "allow-a")
//!     .select(sel(&[("pod", "a")]))
//!     .ingress(from(vec![pods(sel(&[("pod", "b")]))]).ports(vec![tcp(80)]))
//!     .build();
//! assert_eq!(np.metadata.name.as_deref(), Some("allow-a"));
//! ```

use std::collections::BTreeMap;

pub mod admin;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `matchLabels` selector (`&[]` = `{}`, everything).
pub fn sel(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        }),
        match_expressions: None,
    }
}

/// One `matchExpressions` requirement.
pub fn req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_string(),
        operator: operator.to_string(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

/// Selector with `matchExpressions` (and optional `matchLabels`).
pub fn sel_expr(labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(exprs),
        ..sel(labels)
    }
}

/// Peer with only a `podSelector` (the policy's namespace).
pub fn pods(s: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(s),
        ..Default::default()
    }
}

/// Peer with only a `namespaceSelector`.
pub fn namespaces(s: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(s),
        ..Default::default()
    }
}

/// Peer with both selectors (ANDed).
pub fn pods_in(pod_sel: LabelSelector, ns_sel: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(pod_sel),
        namespace_selector: Some(ns_sel),
        ..Default::default()
    }
}

/// `ipBlock` peer.
pub fn block(cidr: &str, except: &[&str]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_string(),
            except: (!except.is_empty()).then(|| except.iter().map(|s| s.to_string()).collect()),
        }),
        ..Default::default()
    }
}

fn port(proto: &str, port: Option<IntOrString>, end: Option<i32>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(proto.to_string()),
        port,
        end_port: end,
    }
}

pub fn tcp(p: i32) -> NetworkPolicyPort {
    port("TCP", Some(IntOrString::Int(p)), None)
}
pub fn udp(p: i32) -> NetworkPolicyPort {
    port("UDP", Some(IntOrString::Int(p)), None)
}
pub fn sctp(p: i32) -> NetworkPolicyPort {
    port("SCTP", Some(IntOrString::Int(p)), None)
}
/// `port`..=`end_port` of a protocol (`"TCP"`, …).
pub fn range(proto: &str, lo: i32, hi: i32) -> NetworkPolicyPort {
    port(proto, Some(IntOrString::Int(lo)), Some(hi))
}
/// A named port of a protocol.
pub fn named(proto: &str, name: &str) -> NetworkPolicyPort {
    port(proto, Some(IntOrString::String(name.to_string())), None)
}
/// All ports of a protocol (no `port`).
pub fn all_ports(proto: &str) -> NetworkPolicyPort {
    port(proto, None, None)
}

/// A rule under construction (`from`/`to` + `ports`).
#[derive(Debug, Clone, Default)]
pub struct RuleB {
    peers: Option<Vec<NetworkPolicyPeer>>,
    ports: Option<Vec<NetworkPolicyPort>>,
}

/// A rule with these peers.
pub fn from(peers: Vec<NetworkPolicyPeer>) -> RuleB {
    RuleB {
        peers: Some(peers),
        ports: None,
    }
}

/// Same as [`from`], reads better for egress.
pub fn to(peers: Vec<NetworkPolicyPeer>) -> RuleB {
    from(peers)
}

/// A rule with no peers (all peers).
pub fn any() -> RuleB {
    RuleB::default()
}

impl RuleB {
    pub fn ports(mut self, ports: Vec<NetworkPolicyPort>) -> Self {
        self.ports = Some(ports);
        self
    }
}

/// A NetworkPolicy under construction.
#[derive(Debug, Clone)]
pub struct NetPol {
    np: NetworkPolicy,
}

impl NetPol {
    /// `podSelector: {}`; no policyTypes (the API default applies).
    pub fn new(namespace: &str, name: &str) -> Self {
        NetPol {
            np: NetworkPolicy {
                metadata: ObjectMeta {
                    namespace: Some(namespace.to_string()),
                    name: Some(name.to_string()),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(LabelSelector::default()),
                    ..Default::default()
                }),
            },
        }
    }

    fn spec(&mut self) -> &mut NetworkPolicySpec {
        self.np.spec.get_or_insert_with(Default::default)
    }

    pub fn select(mut self, s: LabelSelector) -> Self {
        self.spec().pod_selector = Some(s);
        self
    }

    /// Explicit `policyTypes`.
    pub fn types(mut self, types: &[&str]) -> Self {
        self.spec().policy_types = Some(types.iter().map(|t| t.to_string()).collect());
        self
    }

    pub fn ingress(mut self, r: RuleB) -> Self {
        self.spec()
            .ingress
            .get_or_insert_with(Vec::new)
            .push(NetworkPolicyIngressRule {
                from: r.peers,
                ports: r.ports,
            });
        self
    }

    pub fn egress(mut self, r: RuleB) -> Self {
        self.spec()
            .egress
            .get_or_insert_with(Vec::new)
            .push(NetworkPolicyEgressRule {
                to: r.peers,
                ports: r.ports,
            });
        self
    }

    /// `ingress: []` present but empty.
    pub fn no_ingress_rules(mut self) -> Self {
        self.spec().ingress = Some(Vec::new());
        self
    }

    pub fn build(self) -> NetworkPolicy {
        self.np
    }
}
