//! Per-Service advertisement, as Calico's `serviceClusterIPs`,
//! `serviceExternalIPs` and `serviceLoadBalancerIPs`.
//!
//! Within the configured ranges every Service address (its cluster IPs,
//! `spec.externalIPs`, `status.loadBalancer.ingress[].ip`) is announced as a
//! host route (/32, /128), each kind of address only within the ranges
//! configured for that kind:
//! - `externalTrafficPolicy: Cluster` (the default): from every node;
//! - `Local`: only from the nodes that run a ready endpoint of the Service,
//!   so traffic lands where kube-proxy delivers it without a second hop and
//!   keeps the client's address. The endpoints are read from EndpointSlices
//!   (label `kubernetes.io/service-name`): an endpoint's `nodeName` and
//!   `conditions.ready`, which counts as ready when absent, as the API
//!   defines it (a terminating endpoint is not ready).
//!
//! Every node also announces the configured ranges themselves (as Calico does
//! for cluster IPs), so a Cluster Service is reachable through any node; a
//! Local Service's host routes are more specific and win.
//!
//! Pure functions of the watched objects: the routing task recomputes them
//! on every Service or EndpointSlice change, so the last local endpoint
//! going away withdraws the route one watch event and one UPDATE later.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use crate::k8s::crd::{BGPConfigurationSpec, ServiceCidr};

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which of a Service's addresses an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddrKind {
    /// `spec.clusterIP(s)`.
    Cluster,
    /// `spec.externalIPs`.
    External,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

/// The configured ranges, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRanges {
    /// `serviceClusterIPs`.
    pub cluster: Vec<IpNetwork>,
    /// `serviceExternalIPs`.
    pub external: Vec<IpNetwork>,
    /// `serviceLoadBalancerIPs`.
    pub load_balancer: Vec<IpNetwork>,
}

impl ServiceRanges {
    /// The ranges of `cfg`; a range that does not parse is left out and
    /// reported in `problems`.
    pub fn from_config(cfg: &BGPConfigurationSpec, problems: &mut Vec<String>) -> Self {
        let mut parse = |field: &str, v: &[ServiceCidr]| -> Vec<IpNetwork> {
            v.iter()
                .filter_map(|s| match s.cidr.parse() {
                    Ok(n) => Some(n),
                    Err(e) => {
                        problems.push(format!("{field}: {e}"));
                        None
                    }
                })
                .collect()
        };
        ServiceRanges {
            cluster: parse("serviceClusterIPs", &cfg.service_cluster_ips),
            external: parse("serviceExternalIPs", &cfg.service_external_ips),
            load_balancer: parse("serviceLoadBalancerIPs", &cfg.service_load_balancer_ips),
        }
    }

    /// Every range, of every kind.
    pub fn all(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.cluster
            .iter()
            .chain(&self.external)
            .chain(&self.load_balancer)
            .copied()
    }

    /// Whether `ip` is inside a range configured for its kind.
    pub fn covers(&self, kind: AddrKind, ip: IpAddr) -> bool {
        let ranges = match kind {
            AddrKind::Cluster => &self.cluster,
            AddrKind::External => &self.external,
            AddrKind::LoadBalancer => &self.load_balancer,
        };
        ranges.iter().any(|n| n.contains(ip))
    }
}

/// A Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What advertisement needs to know of one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFacts {
    /// Which Service.
    pub key: ServiceKey,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// Its addresses, sorted, each once per kind.
    pub addrs: Vec<(AddrKind, IpAddr)>,
}

/// The facts of `svc`; `None` for an object without a namespace or name.
/// Addresses that are not IPs (`None` of a headless Service, a hostname
/// ingress) are skipped.
pub fn service_facts(svc: &Service) -> Option<ServiceFacts> {
    let key = ServiceKey {
        namespace: svc.metadata.namespace.clone()?,
        name: svc.metadata.name.clone()?,
    };
    let spec = svc.spec.as_ref();
    let cluster = spec
        .into_iter()
        .flat_map(|s| s.cluster_ips.iter().flatten().chain(&s.cluster_ip));
    let external = spec
        .into_iter()
        .flat_map(|s| s.external_ips.iter().flatten());
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_ref());
    let mut addrs: Vec<(AddrKind, IpAddr)> = cluster
        .map(|a| (AddrKind::Cluster, a))
        .chain(external.map(|a| (AddrKind::External, a)))
        .chain(ingress.map(|a| (AddrKind::LoadBalancer, a)))
        .filter_map(|(k, a)| Some((k, a.parse().ok()?)))
        .collect();
    addrs.sort();
    addrs.dedup();
    Some(ServiceFacts {
        key,
        local: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
        addrs,
    })
}

fn ready(e: &Endpoint) -> bool {
    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// The Services with a ready endpoint on `node`.
pub fn ready_on<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> BTreeSet<ServiceKey> {
    slices
        .into_iter()
        .filter(|s| {
            s.endpoints
                .iter()
                .flatten()
                .any(|e| e.node_name.as_deref() == Some(node) && ready(e))
        })
        .filter_map(|s| {
            Some(ServiceKey {
                namespace: s.metadata.namespace.clone()?,
                name: s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone(),
            })
        })
        .collect()
}

/// The host routes this node announces for Services: every address inside
/// a range of its kind, of every Cluster Service and of the Local Services
/// in `ready_here`.
pub fn service_routes(
    ranges: &ServiceRanges,
    services: &[ServiceFacts],
    ready_here: &BTreeSet<ServiceKey>,
) -> BTreeSet<IpNetwork> {
    services
        .iter()
        .filter(|s| !s.local || ready_here.contains(&s.key))
        .flat_map(|s| &s.addrs)
        .filter(|(kind, ip)| ranges.covers(*kind, *ip))
        .map(|(_, ip)| IpNetwork::from(*ip))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::crd::Cidr;

    fn ranges() -> ServiceRanges {
        let cidr = |c: &str| ServiceCidr {
            cidr: Cidr(c.into()),
        };
        let mut problems = Vec::new();
        let r = ServiceRanges::from_config(
            &BGPConfigurationSpec {
                service_cluster_ips: vec![cidr("198.19.250.0/24"), cidr("2001:db8:250::/112")],
                service_external_ips: vec![cidr("198.19.251.0/24"), cidr("not-a-cidr")],
                service_load_balancer_ips: vec![cidr("198.19.252.0/24")],
                ..Default::default()
            },
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("serviceExternalIPs: ") && problems[0].contains("not-a-cidr"),
            "{problems:?}"
        );
        r
    }

    fn svc(ns: &str, name: &str, v: serde_json::Value) -> Service {
        let mut v = v;
        v["metadata"] = serde_json::json!({"namespace": ns, "name": name});
        serde_json::from_value(v).expect("service")
    }

    fn slice(ns: &str, svc: &str, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": format!("{svc}-abc"),
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "endpoints": eps,
        }))
        .expect("slice")
    }

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn strings(s: &BTreeSet<IpNetwork>) -> Vec<String> {
        s.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn facts_collect_every_address_kind_of_both_families() {
        let f = service_facts(&svc(
            "web",
            "lb",
            serde_json::json!({
                "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                         "clusterIP": "198.19.250.10",
                         "clusterIPs": ["198.19.250.10", "2001:db8:250::a"],
                         "externalIPs": ["198.19.251.10"]},
                "status": {"loadBalancer": {"ingress": [{"ip": "198.19.252.10"},
                                                        {"hostname": "lb.example"}]}}}),
        ))
        .expect("facts");
        assert_eq!(f.key, key("web", "lb"));
        assert!(f.local);
        let addrs: Vec<(AddrKind, String)> =
            f.addrs.iter().map(|(k, a)| (*k, a.to_string())).collect();
        assert_eq!(
            addrs,
            [
                (AddrKind::Cluster, "198.19.250.10".to_string()),
                (AddrKind::Cluster, "2001:db8:250::a".to_string()),
                (AddrKind::External, "198.19.251.10".to_string()),
                (AddrKind::LoadBalancer, "198.19.252.10".to_string()),
            ]
        );
        // Headless: no address; the default policy is Cluster.
        let h = service_facts(&svc(
            "web",
            "h",
            serde_json::json!({"spec": {"clusterIP": "None"}}),
        ))
        .expect("facts");
        assert!(h.addrs.is_empty() && !h.local);
        let mut nameless = svc("web", "x", serde_json::json!({}));
        nameless.metadata.namespace = None;
        assert_eq!(service_facts(&nameless), None);
    }

    #[test]
    fn ready_endpoints_per_node_absent_ready_counts_as_ready() {
        let slices = [
            slice(
                "web",
                "a",
                serde_json::json!([
                    {"addresses": ["198.19.0.5"], "nodeName": "n1", "conditions": {"ready": true}},
                    {"addresses": ["198.19.0.6"], "nodeName": "n2", "conditions": {"ready": false, "terminating": true}},
                ]),
            ),
            slice(
                "web",
                "b",
                serde_json::json!([{"addresses": ["198.19.0.7"], "nodeName": "n2"}]),
            ),
            // No service-name label: belongs to no Service.
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "web", "name": "stray"}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["198.19.0.8"], "nodeName": "n2"}]}))
            .expect("slice"),
            slice("web", "empty", serde_json::json!(null)),
        ];
        assert_eq!(ready_on(&slices, "n1"), [key("web", "a")].into());
        assert_eq!(ready_on(&slices, "n2"), [key("web", "b")].into());
        assert!(ready_on(&slices, "n3").is_empty());
    }

    #[test]
    fn local_services_only_where_ready_cluster_everywhere_ranges_per_kind() {
        let r = ranges();
        let services: Vec<ServiceFacts> = [
            svc(
                "web",
                "local",
                serde_json::json!({"spec": {"externalTrafficPolicy": "Local",
                    "clusterIPs": ["198.19.250.10", "2001:db8:250::a"],
                    "externalIPs": ["198.19.251.10"]},
                    "status": {"loadBalancer": {"ingress": [{"ip": "198.19.252.10"}]}}}),
            ),
            svc(
                "web",
                "cluster",
                serde_json::json!({"spec": {"clusterIP": "198.19.250.20",
                    // Outside every range; and inside the cluster range but
                    // an external IP, which only the external ranges cover.
                    "externalIPs": ["198.19.253.20", "198.19.250.21"]},
                    "status": {"loadBalancer": {"ingress": [{"ip": "198.19.251.22"}]}}}),
            ),
        ]
        .iter()
        .filter_map(service_facts)
        .collect();
        let none = BTreeSet::new();
        assert_eq!(
            strings(&service_routes(&r, &services, &none)),
            ["198.19.250.20/32"],
            "no local endpoint: the Cluster Service only"
        );
        let here = [key("web", "local")].into();
        assert_eq!(
            strings(&service_routes(&r, &services, &here)),
            [
                "198.19.250.10/32",
                "198.19.250.20/32",
                "198.19.251.10/32",
                "198.19.252.10/32",
                "2001:db8:250::a/128",
            ]
        );
        // A ready endpoint of another Service with the same name elsewhere
        // does not count.
        let other_ns = [key("shop", "local")].into();
        assert_eq!(service_routes(&r, &services, &other_ns).len(), 1);
        // Nothing configured: nothing announced.
        assert!(service_routes(&ServiceRanges::default(), &services, &here).is_empty());
        assert_eq!(
            r.all().map(|n| n.to_string()).collect::<Vec<_>>(),
            [
                "198.19.250.0/24",
                "2001:db8:250::/112",
                "198.19.251.0/24",
                "198.19.252.0/24"
            ]
        );
    }
}
