//! "Pods": namespaces wired to a node the way Calico (and Margay's CNI) wire
//! them: a veth `cali<hash>` on the node, `eth0` in the pod with /32 and /128
//! addresses, 169.254.1.1 as a link-scope IPv4 gateway answered by proxy-ARP,
//! and the IPv6 default via the host veth's link-local address.

use std::net::{Ipv4Addr, Ipv6Addr};

use sha1::{Digest as _, Sha1};

use super::error::Result;
use super::netns::Netns;

/// Host-side MAC of every pod veth (Calico's choice; the pod's neighbour
/// entry for its gateway then never changes).
pub const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The link-local address the host veth gets from [`HOST_MAC`] (EUI-64).
pub const HOST_LL6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// The pod's IPv4 gateway.
pub const GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Host-side interface name for a pod: `cali` + the first 11 hex digits of
/// sha1("<namespace>.<pod>") — 15 characters, the kernel's limit.
pub fn host_ifname(namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex = hex::encode(digest);
    format!("cali{}", &hex[..11])
}

/// What to create.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Kubernetes namespace of the pod (used in the veth name).
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
}

/// A wired pod. Dropping it deletes its namespace (and so the veth pair and
/// the node's route through it).
#[derive(Debug)]
pub struct Pod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The lab node it runs on (e.g. "n1").
    pub node: String,
    /// Its network namespace.
    pub ns: Netns,
    /// IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Host-side veth name on the node.
    pub host_if: String,
}

/// Creates namespace `ns_name` and wires it to `node` as described in the
/// module docs; the node gets /32 (/128) routes to the pod via its veth.
pub fn wire(node: &Netns, node_name: &str, ns_name: &str, spec: &PodSpec) -> Result<Pod> {
    let ns = Netns::create(ns_name)?;
    if spec.ipv6.is_some() {
        // No DAD in the pod: a tentative link-local cannot send the neighbour
        // solicitation for the gateway, which would stall IPv6 for ~1 s.
        ns.sysctl(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ])?;
    }
    let host_if = host_ifname(&spec.namespace, &spec.name);
    // Create the peer directly in the pod's namespace.
    node.ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", ns_name,
    ])?;
    let proxy_arp = format!("net.ipv4.conf.{host_if}.proxy_arp");
    let proxy_delay = format!("net.ipv4.neigh.{host_if}.proxy_delay");
    let dad = format!("net.ipv6.conf.{host_if}.accept_dad");
    let mut sysctls = vec![(proxy_arp.as_str(), "1"), (proxy_delay.as_str(), "0")];
    if spec.ipv6.is_some() {
        sysctls.push((dad.as_str(), "0"));
    }
    node.sysctl(&sysctls)?;

    let mut host = vec![
        format!("link set {host_if} address {HOST_MAC}"),
        format!("link set {host_if} up"),
    ];
    let mut pod = vec!["link set eth0 up".to_string()];
    if let Some(ip) = spec.ipv4 {
        host.push(format!("route replace {ip}/32 dev {host_if} scope link"));
        pod.push(format!("addr add {ip}/32 dev eth0"));
        pod.push(format!("route add {GATEWAY4} dev eth0 scope link"));
        pod.push(format!("route add default via {GATEWAY4} dev eth0"));
    }
    if let Some(ip) = spec.ipv6 {
        host.push(format!("route replace {ip}/128 dev {host_if}"));
        pod.push(format!("addr add {ip}/128 dev eth0 nodad"));
        pod.push(format!("route add default via {HOST_LL6} dev eth0"));
    }
    node.ip_batch(&host)?;
    ns.ip_batch(&pod)?;
    Ok(Pod {
        namespace: spec.namespace.clone(),
        name: spec.name.clone(),
        node: node_name.to_string(),
        ns,
        ipv4: spec.ipv4,
        ipv6: spec.ipv6,
        host_if,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_cali_plus_11_hex_of_sha1() {
        // Expected values from coreutils: `printf default.nginx | sha1sum`.
        assert_eq!(host_ifname("default", "nginx"), "calic440f455693");
        assert_eq!(
            host_ifname("kube-system", "coredns-5d78c9869d-abcde"),
            "cali4d5f75c480c"
        );
        assert_eq!(host_ifname("a-long-namespace-name", "pod").len(), 15);
    }
}
