//! Builders for AdminNetworkPolicy / BaselineAdminNetworkPolicy objects
//! (tests, examples).
//!
//! ```
//! use policy::build::sel;
//! use policy::build::admin::*;
//! let anp = anp("deny-y", 10)
//!     .subject_pods(sel(&[]), sel(&[("pod", "a")]))
//!     .ingress(pass(vec![a_namespaces(sel(&[("ns", "x")]))]))
//!     .ingress(deny(vec![a_namespaces(sel(&[]))]).ports(vec![a_port("TCP", 80)]))
//!     .build();
//! assert_eq!(anp.spec.ingress.len(), 2);
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::admin::{
    AdminNetworkPolicy, AdminNetworkPolicySpec, AdminPeer, AdminPort, BASELINE_NAME,
    BaselineAdminNetworkPolicy, BaselineAdminNetworkPolicySpec, EgressRule, IngressRule,
    NamespacedPod, PortNumber, PortRange, RuleAction, Subject,
};

/// Peer: every pod of the matching namespaces.
pub fn a_namespaces(s: LabelSelector) -> AdminPeer {
    AdminPeer {
        namespaces: Some(s),
        ..AdminPeer::default()
    }
}

/// Peer: matching pods in matching namespaces.
pub fn a_pods(ns: LabelSelector, pods: LabelSelector) -> AdminPeer {
    AdminPeer {
        pods: Some(NamespacedPod {
            namespace_selector: ns,
            pod_selector: pods,
        }),
        ..AdminPeer::default()
    }
}

/// Peer (egress): the addresses of the matching nodes.
pub fn a_nodes(s: LabelSelector) -> AdminPeer {
    AdminPeer {
        nodes: Some(s),
        ..AdminPeer::default()
    }
}

/// Peer (egress): CIDRs.
pub fn a_networks(cidrs: &[&str]) -> AdminPeer {
    AdminPeer {
        networks: Some(cidrs.iter().map(|c| c.to_string()).collect()),
        ..AdminPeer::default()
    }
}

/// `portNumber` of a protocol (`"TCP"`, …).
pub fn a_port(proto: &str, port: i32) -> AdminPort {
    AdminPort {
        port_number: Some(PortNumber {
            protocol: Some(proto.to_string()),
            port,
        }),
        ..AdminPort::default()
    }
}

/// `portRange` of a protocol.
pub fn a_range(proto: &str, start: i32, end: i32) -> AdminPort {
    AdminPort {
        port_range: Some(PortRange {
            protocol: Some(proto.to_string()),
            start,
            end,
        }),
        ..AdminPort::default()
    }
}

/// `namedPort`.
pub fn a_named(name: &str) -> AdminPort {
    AdminPort {
        named_port: Some(name.to_string()),
        ..AdminPort::default()
    }
}

/// A rule under construction.
#[derive(Debug, Clone)]
pub struct ARule {
    name: Option<String>,
    action: RuleAction,
    peers: Vec<AdminPeer>,
    ports: Option<Vec<AdminPort>>,
}

fn rule(action: RuleAction, peers: Vec<AdminPeer>) -> ARule {
    ARule {
        name: None,
        action,
        peers,
        ports: None,
    }
}

pub fn allow(peers: Vec<AdminPeer>) -> ARule {
    rule(RuleAction::Allow, peers)
}

pub fn deny(peers: Vec<AdminPeer>) -> ARule {
    rule(RuleAction::Deny, peers)
}

pub fn pass(peers: Vec<AdminPeer>) -> ARule {
    rule(RuleAction::Pass, peers)
}

impl ARule {
    pub fn ports(mut self, ports: Vec<AdminPort>) -> Self {
        self.ports = Some(ports);
        self
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    pub fn ingress(self) -> IngressRule {
        IngressRule {
            name: self.name,
            action: self.action,
            from: self.peers,
            ports: self.ports,
        }
    }

    pub fn egress(self) -> EgressRule {
        EgressRule {
            name: self.name,
            action: self.action,
            to: self.peers,
            ports: self.ports,
        }
    }
}

fn ns_subject(s: LabelSelector) -> Subject {
    Subject {
        namespaces: Some(s),
        pods: None,
    }
}

fn pods_subject(ns: LabelSelector, pods: LabelSelector) -> Subject {
    Subject {
        namespaces: None,
        pods: Some(NamespacedPod {
            namespace_selector: ns,
            pod_selector: pods,
        }),
    }
}

/// An ANP under construction (subject: every namespace until set).
#[derive(Debug, Clone)]
pub struct Anp {
    anp: AdminNetworkPolicy,
}

/// An ANP named `name` with this priority.
pub fn anp(name: &str, priority: i32) -> Anp {
    Anp {
        anp: AdminNetworkPolicy::new(
            name,
            AdminNetworkPolicySpec {
                priority,
                subject: ns_subject(LabelSelector::default()),
                ingress: Vec::new(),
                egress: Vec::new(),
            },
        ),
    }
}

impl Anp {
    pub fn subject_namespaces(mut self, s: LabelSelector) -> Self {
        self.anp.spec.subject = ns_subject(s);
        self
    }

    pub fn subject_pods(mut self, ns: LabelSelector, pods: LabelSelector) -> Self {
        self.anp.spec.subject = pods_subject(ns, pods);
        self
    }

    pub fn ingress(mut self, r: ARule) -> Self {
        self.anp.spec.ingress.push(r.ingress());
        self
    }

    pub fn egress(mut self, r: ARule) -> Self {
        self.anp.spec.egress.push(r.egress());
        self
    }

    pub fn build(self) -> AdminNetworkPolicy {
        self.anp
    }
}

/// A BANP under construction (named `default`, subject: every namespace).
#[derive(Debug, Clone)]
pub struct Banp {
    banp: BaselineAdminNetworkPolicy,
}

pub fn banp() -> Banp {
    Banp {
        banp: BaselineAdminNetworkPolicy::new(
            BASELINE_NAME,
            BaselineAdminNetworkPolicySpec {
                subject: ns_subject(LabelSelector::default()),
                ingress: Vec::new(),
                egress: Vec::new(),
            },
        ),
    }
}

impl Banp {
    pub fn subject_namespaces(mut self, s: LabelSelector) -> Self {
        self.banp.spec.subject = ns_subject(s);
        self
    }

    pub fn subject_pods(mut self, ns: LabelSelector, pods: LabelSelector) -> Self {
        self.banp.spec.subject = pods_subject(ns, pods);
        self
    }

    pub fn ingress(mut self, r: ARule) -> Self {
        self.banp.spec.ingress.push(r.ingress());
        self
    }

    pub fn egress(mut self, r: ARule) -> Self {
        self.banp.spec.egress.push(r.egress());
        self
    }

    pub fn build(self) -> BaselineAdminNetworkPolicy {
        self.banp
    }
}
