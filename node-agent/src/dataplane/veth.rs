//! Pods' host-side veths: their names ([`VethName`], the one place the
//! agent derives or checks one), who owns one ([`VethState`], from the
//! owner mark the CNI plugin puts in the link's alias), and putting a
//! missing one back ([`rewire`]) with the plugin's own wiring code.
//!
//! The host veth is named after the pod (`cali` + hash of
//! `<namespace>.<pod>`), so every sandbox the runtime creates for a pod
//! uses the same name; the CNI plugin marks the veth with its owner
//! (IFLA_IFALIAS = the attachment's IPAM handle, see
//! `cni_plugin::wiring::owner_alias`).

use std::fmt;
use std::net::IpAddr;

use cni_plugin::netlink::Nl;
use cni_plugin::wiring::{self, Plan};

/// Prefix of every host veth Margay creates (the plugin's
/// `cni_plugin::wiring::HOST_PREFIX`).
pub const PREFIX: &str = wiring::HOST_PREFIX;

/// The longest interface name the kernel takes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// A host veth name: `cali` + the first 11 hex digits of sha1(key), where
/// the key is `<namespace>.<pod>` for a pod (plus `.<ifname>` for an
/// interface other than `eth0`) and the IPAM handle for a standalone
/// workload. The hashing is the CNI plugin's own
/// (`cni_plugin::wiring::host_veth_name`), so the agent and the plugin
/// cannot disagree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VethName(String);

/// A name that is not a Margay host veth's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host_ifname {0:?} is not a Margay pod interface (cali + up to 11 alphanumerics)")]
pub struct NotAVeth(pub String);

impl VethName {
    /// The host veth the CNI plugin creates for an attachment: of the pod
    /// (and `ifname` unless `eth0`), or of `handle` without a pod identity
    /// (either of `namespace` and `pod` empty).
    pub fn for_attachment(namespace: &str, pod: &str, handle: &str, ifname: &str) -> VethName {
        let pod_key =
            (!namespace.is_empty() && !pod.is_empty()).then(|| format!("{namespace}.{pod}"));
        VethName(wiring::host_veth_name(&wiring::host_veth_key(
            pod_key.as_deref(),
            handle,
            ifname,
        )))
    }

    /// A pod's `eth0` host veth.
    pub fn for_pod(namespace: &str, pod: &str) -> VethName {
        VethName::for_attachment(namespace, pod, "", "eth0")
    }

    /// Checks a name another party gives (the CNI plugin's EndpointUp).
    pub fn parse(name: &str) -> Result<VethName, NotAVeth> {
        if name.starts_with(PREFIX)
            && name.len() <= IFNAME_MAX
            && name.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            Ok(VethName(name.to_string()))
        } else {
            Err(NotAVeth(name.to_string()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VethName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<VethName> for String {
    fn from(v: VethName) -> String {
        v.0
    }
}

/// What the kernel says about a host veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VethState {
    /// It exists and carries the expected owner's mark.
    Owned,
    /// It exists and carries another attachment's mark.
    Foreign(String),
    /// It exists without a mark (made by an older plugin, or right now
    /// being created): nobody's to judge.
    Unmarked,
    /// No such link.
    Missing,
}

/// Reads the state of host veth `host_if`, expected to be owned by the
/// attachment with IPAM handle `handle`.
pub async fn veth_state(
    nl: &Nl,
    host_if: &str,
    handle: &str,
) -> Result<VethState, rtnetlink::Error> {
    Ok(match nl.link(host_if).await? {
        None => VethState::Missing,
        Some(l) => match l.alias {
            Some(a) if a == wiring::owner_alias(handle) => VethState::Owned,
            Some(a) if !a.is_empty() => VethState::Foreign(a),
            _ => VethState::Unmarked,
        },
    })
}

/// An attachment to re-wire: what the CNI plugin wired at ADD.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    /// The host veth.
    pub host_if: &'a str,
    /// The container-side interface.
    pub ifname: &'a str,
    /// The sandbox's network namespace (path).
    pub netns: &'a str,
    /// The pod's addresses.
    pub ips: &'a [IpAddr],
    /// The attachment's IPAM handle (the owner mark).
    pub handle: &'a str,
}

/// Why a veth could not be put back.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The sandbox's namespace is gone: nothing to repair (its DEL will come).
    #[error("sandbox namespace {0} is gone")]
    SandboxGone(String),
    /// The container side has an interface of that name already.
    #[error("{ifname} already exists in {netns}: not touching it")]
    InterfaceExists {
        /// Interface.
        ifname: String,
        /// Namespace.
        netns: String,
    },
    /// The plugin's wiring failed.
    #[error("{0}")]
    Wiring(String),
}

/// Re-creates an attachment's veth pair, addresses and routes as the CNI
/// plugin did at ADD (same code), with the pods' MTU `mtu` as the agent
/// tells the plugin (0: the MTU of the node's default route, as the plugin
/// detects it). `node` is a netlink socket in the node's (the calling
/// thread's) namespace.
pub async fn rewire(node: &Nl, at: &Attachment<'_>, mtu: u32) -> Result<(), RepairError> {
    let wiring_err = |e: cni_plugin::error::CniError| RepairError::Wiring(e.details());
    let ns = wiring::open_netns(at.netns).map_err(|_| RepairError::SandboxGone(at.netns.into()))?;
    let pod = Nl::in_netns(&ns)
        .await
        .map_err(|_| RepairError::SandboxGone(at.netns.into()))?;
    if pod
        .link(at.ifname)
        .await
        .map_err(|e| RepairError::Wiring(e.to_string()))?
        .is_some()
    {
        return Err(RepairError::InterfaceExists {
            ifname: at.ifname.into(),
            netns: at.netns.into(),
        });
    }
    let mtu = match mtu {
        0 => wiring::detect_mtu(node).await.map_err(wiring_err)?,
        m => m,
    };
    let owner = wiring::owner_alias(at.handle);
    let plan = Plan {
        host_if: at.host_if,
        ifname: at.ifname,
        netns_path: at.netns,
        mtu,
        owner: &owner,
    };
    let v4 = at.ips.iter().any(|ip| ip.is_ipv4());
    let v6 = at.ips.iter().any(|ip| ip.is_ipv6());
    wiring::create_veth(node, &pod, &ns, &plan)
        .await
        .map_err(wiring_err)?;
    wiring::configure_host(node, &plan, v4, v6)
        .await
        .map_err(wiring_err)?;
    wiring::configure_pod(&pod, &plan, at.ips)
        .await
        .map_err(wiring_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_cni_plugins() {
        // `printf default.nginx | sha1sum` = c440f455693b...
        assert_eq!(
            VethName::for_pod("default", "nginx").as_str(),
            "calic440f455693"
        );
        assert_eq!(
            VethName::for_attachment("default", "nginx", "net.c1", "eth0"),
            VethName::for_pod("default", "nginx")
        );
        assert_eq!(
            VethName::for_attachment("default", "nginx", "net.c1", "net1").as_str(),
            wiring::host_veth_name("default.nginx.net1")
        );
        // No pod identity: the handle.
        assert_eq!(
            VethName::for_attachment("", "", "net.ctr1", "eth0").as_str(),
            wiring::host_veth_name("net.ctr1")
        );
        assert_eq!(
            VethName::for_attachment("default", "", "net.ctr1", "eth0").as_str(),
            wiring::host_veth_name("net.ctr1")
        );
    }

    #[test]
    fn only_margay_veth_names_parse() {
        assert!(VethName::parse("cali0123456789a").is_ok());
        for bad in ["eth0", "cali0123456789abc", "cali\" accept", ""] {
            let e = VethName::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("not a Margay pod interface"), "{e}");
        }
    }
}
