//! The ADD result, read from `prevResult` and written in the caller's version.
//!
//! One internal shape (that of 1.1.0) is converted on output:
//! before 1.0.0 every `ips` entry carries `"version": "4"|"6"`; the 1.1.0
//! attributes (interface `mtu`/`socketPath`/`pciID`, route
//! `mtu`/`advmss`/`priority`/`table`/`scope`) are written only for 1.1.0.
//! Fields this plugin does not know are kept and passed through.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::version::CniVersion;

/// DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// An interface created by the attachment.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Hardware address.
    #[serde(default)]
    pub mac: Option<String>,
    /// MTU (1.1.0).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Netns path, absent for host interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Socket path (1.1.0).
    #[serde(rename = "socketPath", default)]
    pub socket_path: Option<String>,
    /// PCI id (1.1.0).
    #[serde(rename = "pciID", default)]
    pub pci_id: Option<String>,
    /// Unknown fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An address assigned by the attachment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, e.g. "198.19.0.7/32".
    pub address: String,
    /// Gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
    /// The pre-1.0 `version` field; recomputed on output.
    #[serde(default, rename = "version")]
    pub _version: Option<String>,
    /// Unknown fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl IpConfig {
    /// A new entry for `addr/prefix` on interface `iface`.
    pub fn new(addr: IpAddr, prefix: u8, iface: usize) -> Self {
        IpConfig {
            address: format!("{addr}/{prefix}"),
            gateway: None,
            interface: Some(iface),
            _version: None,
            extra: Map::new(),
        }
    }

    /// The parsed address, if it is valid CIDR.
    pub fn network(&self) -> Option<IpNetwork> {
        self.address.parse().ok()
    }
}

/// A route created by the attachment.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Route {
    /// Destination CIDR.
    pub dst: String,
    /// Next hop.
    #[serde(default)]
    pub gw: Option<String>,
    /// Path MTU (1.1.0).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default)]
    pub advmss: Option<u32>,
    /// Priority (1.1.0).
    #[serde(default)]
    pub priority: Option<u32>,
    /// Table (1.1.0).
    #[serde(default)]
    pub table: Option<u32>,
    /// Scope (1.1.0): 0 global, 253 link, 254 host.
    #[serde(default)]
    pub scope: Option<u32>,
    /// Unknown fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A CNI success result.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CniResult {
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default)]
    pub dns: Dns,
    /// The version it was written in; replaced on output.
    #[serde(rename = "cniVersion", default)]
    pub _cni_version: Option<String>,
    /// Unknown fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CniResult {
    /// Reads a `prevResult`.
    pub fn from_value(v: &Value) -> Result<Self, serde_json::Error> {
        CniResult::deserialize(v)
    }

    /// Appends `other` (whose interface indexes count from 0) after this
    /// result's interfaces; DNS from `other` fills in only what is unset.
    pub fn append(&mut self, other: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
    }

    /// The result as the JSON object of spec version `v`.
    pub fn to_json(&self, v: CniVersion) -> Value {
        let ext = v.has_extended_result();
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = i.extra.clone();
                m.insert("name".into(), json!(i.name));
                put(&mut m, "mac", i.mac.as_ref());
                put(&mut m, "sandbox", i.sandbox.as_ref());
                if ext {
                    put(&mut m, "mtu", i.mtu.as_ref());
                    put(&mut m, "socketPath", i.socket_path.as_ref());
                    put(&mut m, "pciID", i.pci_id.as_ref());
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = ip.extra.clone();
                if v.ips_have_version() {
                    let fam = match ip.network() {
                        Some(IpNetwork::V6(_)) => "6",
                        Some(IpNetwork::V4(_)) => "4",
                        // Not valid CIDR: guess from the text.
                        None if ip.address.contains(':') => "6",
                        None => "4",
                    };
                    m.insert("version".into(), json!(fam));
                }
                m.insert("address".into(), json!(ip.address));
                put(&mut m, "gateway", ip.gateway.as_ref());
                put(&mut m, "interface", ip.interface.as_ref());
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = r.extra.clone();
                m.insert("dst".into(), json!(r.dst));
                put(&mut m, "gw", r.gw.as_ref());
                if ext {
                    put(&mut m, "mtu", r.mtu.as_ref());
                    put(&mut m, "advmss", r.advmss.as_ref());
                    put(&mut m, "priority", r.priority.as_ref());
                    put(&mut m, "table", r.table.as_ref());
                    put(&mut m, "scope", r.scope.as_ref());
                }
                Value::Object(m)
            })
            .collect();
        let mut out = self.extra.clone();
        out.insert("cniVersion".into(), json!(v.as_str()));
        out.insert("interfaces".into(), Value::Array(interfaces));
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), json!(self.dns));
        Value::Object(out)
    }
}

fn put<T: Serialize>(m: &mut Map<String, Value>, k: &str, v: Option<&T>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cali0123456789a".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/p".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig::new("198.19.0.7".parse().unwrap(), 32, 1),
                IpConfig::new("2001:db8::7".parse().unwrap(), 128, 1),
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
                scope: Some(0),
                ..Default::default()
            }],
            dns: Dns {
                nameservers: vec!["198.19.255.10".into()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn versioned_output() {
        let r = sample();
        let old = r.to_json(CniVersion::V031);
        assert_eq!(old["cniVersion"], "0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["ips"][1]["interface"], 1);
        assert!(old["interfaces"][1].get("mtu").is_none());
        assert!(old["routes"][0].get("scope").is_none());
        let v1 = r.to_json(CniVersion::V100);
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["interfaces"][1].get("mtu").is_none());
        let v11 = r.to_json(CniVersion::V110);
        assert_eq!(v11["interfaces"][1]["mtu"], 1500);
        assert_eq!(v11["routes"][0]["scope"], 0);
        assert_eq!(v11["dns"]["nameservers"][0], "198.19.255.10");
        assert!(v11["interfaces"][0].get("sandbox").is_none());
    }

    #[test]
    fn round_trip_through_prev_result() {
        for v in crate::version::SUPPORTED {
            let j = sample().to_json(v);
            let back = CniResult::from_value(&j).unwrap();
            assert_eq!(back.to_json(v), j, "{v}");
        }
    }

    #[test]
    fn append_offsets_and_passthrough() {
        let prev = serde_json::json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "net1", "sandbox": "/x", "vendorThing": 7}],
            "ips": [{"version": "4", "address": "198.19.9.9/24", "interface": 0}],
            "dns": {},
            "someExtension": {"a": 1}
        });
        let mut r = CniResult::from_value(&prev).unwrap();
        r.append(sample());
        let out = r.to_json(CniVersion::V100);
        assert_eq!(out["interfaces"][0]["vendorThing"], 7);
        assert_eq!(out["someExtension"]["a"], 1);
        assert_eq!(out["ips"][1]["interface"], 2);
        assert!(out["ips"][0].get("version").is_none());
        assert_eq!(out["dns"]["nameservers"][0], "198.19.255.10");
    }
}
