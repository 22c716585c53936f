//! The network configuration the runtime streams on stdin.
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "margay",
//!   "mtu": 1450,                                   // optional; absent or 0: detect
//!   "agent_socket": "/var/run/margay/margay.sock",  // optional
//!   "journal_dir": "/var/lib/margay/cni-journal",   // optional: DEL's releases while the agent is away
//!   "log_file": "/var/log/margay/cni.log", "log_level": "info",
//!   "log_max_bytes": 10485760,                      // optional: rotated to cni.log.1 beyond this
//!   "ipam": { "pools": ["default-ipv4", "2001:db8::/48"], "families": ["ipv4", "ipv6"] },
//!   "timeouts": { "connect_ms": 2000, "request_ms": 30000 },
//!   "dns": { "nameservers": ["198.19.255.10"] }
//! }
//! ```

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, fallback_version};
use crate::result::Dns;
use crate::version::{CniVersion, looks_like_version};

/// Where the agent listens unless the configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/margay/margay.sock";
/// Largest accepted request on stdin.
pub const MAX_STDIN: usize = 4 * 1024 * 1024;

/// Address family asked of the agent (the workspace's one family type).
pub use margay_types::Family;

/// The CNI config spells families `"ipv4"` / `"ipv6"`; this adapter reads
/// exactly that spelling into [`Family`] (whose own serde form is `"IPv4"`).
mod lowercase_families {
    use serde::{Deserialize, Deserializer};

    use super::Family;

    #[derive(Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Spelling {
        Ipv4,
        Ipv6,
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Family>, D::Error> {
        let families = Vec::<Spelling>::deserialize(d)?;
        Ok(families
            .into_iter()
            .map(|f| match f {
                Spelling::Ipv4 => Family::V4,
                Spelling::Ipv6 => Family::V6,
            })
            .collect())
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default: one line per operation.
    #[default]
    Info,
    /// Every step.
    Debug,
    /// Everything.
    Trace,
}

/// The `ipam` section: hints for the agent, never another plugin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConf {
    /// Must be absent or "margay": Margay does not delegate to IPAM plugins.
    #[serde(rename = "type")]
    pub ipam_type: Option<String>,
    /// Pool names or CIDRs to restrict the choice to.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Families wanted; default: those of CIDR pool hints, or the agent's choice.
    #[serde(default, deserialize_with = "lowercase_families::deserialize")]
    pub families: Vec<Family>,
}

/// The `timeouts` section, in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Connecting to the agent's socket.
    #[serde(default = "Timeouts::default_connect")]
    pub connect_ms: u64,
    /// Each request to the agent.
    #[serde(default = "Timeouts::default_request")]
    pub request_ms: u64,
}

impl Timeouts {
    fn default_connect() -> u64 {
        2_000
    }
    fn default_request() -> u64 {
        30_000
    }
    /// Connect timeout.
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    /// Per-request timeout.
    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: Self::default_connect(),
            request_ms: Self::default_request(),
        }
    }
}

/// The capability arguments Margay understands (`ips`); others are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// Requested addresses ("198.19.0.9/32" or "198.19.0.9").
    #[serde(default)]
    pub ips: Vec<String>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ValidAttachment {
    /// CNI_CONTAINERID of the attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// CNI_IFNAME of the attachment.
    pub ifname: String,
}

/// The plugin configuration, as derived by the runtime for this call.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type (the binary name).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// MTU of both veth ends; absent or 0: that of the default-route interface.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The agent's unix socket.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// Where DEL records releases the agent could not be told of
    /// ([`crate::journal`]); the agent's `--cni-journal-dir` must match.
    #[serde(default)]
    pub journal_dir: Option<PathBuf>,
    /// Where to log; absent: warnings and errors to stderr.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// Log verbosity.
    #[serde(default)]
    pub log_level: Option<LogLevel>,
    /// Size at which the log file is rotated (default 10 MiB).
    #[serde(default)]
    pub log_max_bytes: Option<u64>,
    /// Allocation hints.
    #[serde(default)]
    pub ipam: IpamConf,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// DNS settings copied into the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// The previous plugin's (ADD) or the final (DEL, CHECK) result.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// Capability arguments.
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    /// GC: the attachments to keep.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// A decoded request: its version and configuration.
#[derive(Debug, Clone)]
pub struct Request {
    /// The version the caller speaks (and wants results in).
    pub version: CniVersion,
    /// The configuration.
    pub conf: NetConf,
}

/// A request that failed to decode, with the version to answer in.
#[derive(Debug)]
pub struct RequestError {
    /// The error.
    pub error: CniError,
    /// The version string for the error result.
    pub version: String,
}

impl NetConf {
    /// The agent socket to use.
    pub fn agent_socket(&self) -> PathBuf {
        self.agent_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET))
    }

    /// The log file's size cap.
    pub fn log_max_bytes(&self) -> u64 {
        self.log_max_bytes.unwrap_or(10 << 20)
    }

    /// The release journal's directory.
    pub fn journal_dir(&self) -> PathBuf {
        self.journal_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::journal::DEFAULT_DIR))
    }

    /// Families to request: explicit, else those of CIDR pool hints and
    /// requested addresses, else empty (the agent's default).
    pub fn families(&self, requested: &[IpAddr]) -> Vec<Family> {
        let mut out: Vec<Family> = Vec::new();
        let mut push = |f: Family| {
            if !out.contains(&f) {
                out.push(f);
            }
        };
        if !self.ipam.families.is_empty() {
            self.ipam.families.iter().copied().for_each(&mut push);
            return out;
        }
        for p in &self.ipam.pools {
            if let Ok(net) = p.parse::<IpNetwork>() {
                push(Family::of(net.ip()));
            }
        }
        for ip in requested {
            push(Family::of(*ip));
        }
        out
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("missing network name".into());
        }
        validate_network_name(&self.name)?;
        if let Some(mtu) = self.mtu
            && mtu != 0
            && !(68..=65535).contains(&mtu)
        {
            return Err(format!("mtu {mtu} out of range 68..65535"));
        }
        for (what, p) in [
            ("agent_socket", &self.agent_socket),
            ("journal_dir", &self.journal_dir),
        ] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err(format!("{what} {} is not an absolute path", p.display()));
            }
        }
        if let Some(t) = self.ipam.ipam_type.as_deref()
            && t != "margay"
        {
            return Err(format!(
                "ipam.type {t:?}: margay allocates through its agent; omit ipam.type or set it to \"margay\""
            ));
        }
        if self
            .ipam
            .pools
            .iter()
            .any(|p| p.is_empty() || p.len() > 253)
        {
            return Err("ipam.pools entries must be non-empty pool names or CIDRs".into());
        }
        for (what, ms) in [
            ("connect_ms", self.timeouts.connect_ms),
            ("request_ms", self.timeouts.request_ms),
        ] {
            if ms == 0 || ms > 600_000 {
                return Err(format!("timeouts.{what} {ms} out of range 1..600000"));
            }
        }
        Ok(())
    }

    /// Requested addresses from `runtimeConfig.ips` and the `IP` CNI_ARG.
    pub fn requested_ips(&self, from_args: &[String]) -> Result<Vec<IpAddr>, CniError> {
        let mut out = Vec::new();
        for raw in self.runtime_config.ips.iter().chain(from_args) {
            let addr = raw.split_once('/').map_or(raw.as_str(), |(a, _)| a);
            let ip: IpAddr = addr.parse().map_err(|_| {
                CniError::InvalidConfig(format!("requested IP {raw:?} is not an IP address"))
            })?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }
}

/// CNI network name: starts alphanumeric, then alphanumerics, `_`, `.`, `-`.
pub fn validate_network_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 253
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid network name {:?}: must start with an alphanumeric character, then alphanumerics, '_', '.' or '-'",
            name.chars().take(64).collect::<String>()
        ))
    }
}

/// Decodes stdin: JSON (code 6), a supported `cniVersion` (code 1), a valid
/// configuration (code 7).
pub fn parse_request(stdin: &[u8]) -> Result<Request, RequestError> {
    let fail = |error: CniError, version: &str| RequestError {
        error,
        version: version.to_string(),
    };
    let latest = fallback_version();
    if stdin.len() > MAX_STDIN {
        return Err(fail(
            CniError::InvalidConfig(format!("configuration larger than {MAX_STDIN} bytes")),
            latest,
        ));
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|source| {
        fail(
            CniError::Decode {
                what: "network configuration",
                source,
            },
            latest,
        )
    })?;
    let Value::Object(map) = &value else {
        return Err(fail(
            CniError::InvalidConfig("network configuration is not a JSON object".into()),
            latest,
        ));
    };
    let version = match map.get("cniVersion") {
        None | Some(Value::Null) => {
            return Err(fail(
                CniError::IncompatibleVersion {
                    requested: "0.1.0".into(),
                    reason: "no cniVersion (implies 0.1.0); supported: 0.3.0 to 1.1.0".into(),
                },
                "0.1.0",
            ));
        }
        Some(Value::String(s)) => match CniVersion::parse(s) {
            Some(v) => v,
            None => {
                let echo = if looks_like_version(s) {
                    s.as_str()
                } else {
                    latest
                };
                return Err(fail(
                    CniError::IncompatibleVersion {
                        requested: s.chars().take(32).collect(),
                        reason: "supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0".into(),
                    },
                    echo,
                ));
            }
        },
        Some(_) => {
            return Err(fail(
                CniError::InvalidConfig("cniVersion is not a string".into()),
                latest,
            ));
        }
    };
    let conf: NetConf = serde_json::from_value(value)
        .map_err(|e| fail(CniError::InvalidConfig(e.to_string()), version.as_str()))?;
    conf.validate()
        .map_err(|e| fail(CniError::InvalidConfig(e), version.as_str()))?;
    Ok(Request { version, conf })
}

/// The `cniVersion` of a VERSION request, echoed back if well-formed.
pub fn version_request_version(stdin: &[u8]) -> String {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        v: Option<String>,
    }
    match serde_json::from_slice::<V>(stdin) {
        Ok(V { v: Some(v) }) if looks_like_version(&v) => v,
        _ => fallback_version().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, RequestError> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn minimal_and_defaults() {
        let r = parse(r#"{"cniVersion":"1.0.0","name":"net1","type":"margay"}"#).unwrap();
        assert_eq!(r.version, CniVersion::V100);
        assert_eq!(r.conf.agent_socket(), PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(r.conf.timeouts.connect_ms, 2000);
        assert!(r.conf.families(&[]).is_empty());
    }

    #[test]
    fn error_codes() {
        assert_eq!(parse("{").unwrap_err().error.code(), 6);
        assert_eq!(parse("[]").unwrap_err().error.code(), 7);
        let e = parse(r#"{"cniVersion":"0.2.0","name":"n"}"#).unwrap_err();
        assert_eq!((e.error.code(), e.version.as_str()), (1, "0.2.0"));
        let e = parse(r#"{"cniVersion":"banana","name":"n"}"#).unwrap_err();
        assert_eq!((e.error.code(), e.version.as_str()), (1, "1.1.0"));
        assert_eq!(parse(r#"{"name":"n"}"#).unwrap_err().error.code(), 1);
        let e = parse(r#"{"cniVersion":"0.4.0"}"#).unwrap_err();
        assert_eq!((e.error.code(), e.version.as_str()), (7, "0.4.0"));
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"-x"}"#)
                .unwrap_err()
                .error
                .code(),
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#)
                .unwrap_err()
                .error
                .code(),
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","mtu":9}"#)
                .unwrap_err()
                .error
                .code(),
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#)
                .unwrap_err()
                .error
                .code(),
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"pool":["x"]}}"#)
                .unwrap_err()
                .error
                .code(),
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","agent_socket":"rel.sock"}"#)
                .unwrap_err()
                .error
                .code(),
            7
        );
    }

    #[test]
    fn families_from_hints() {
        let r = parse(
            r#"{"cniVersion":"1.1.0","name":"n","ipam":{"pools":["198.19.0.0/16","blue","2001:db8::/64"]}}"#,
        )
        .unwrap();
        assert_eq!(r.conf.families(&[]), vec![Family::V4, Family::V6]);
        let r = parse(r#"{"cniVersion":"1.1.0","name":"n","ipam":{"families":["ipv6"]}}"#).unwrap();
        assert_eq!(r.conf.families(&[]), vec![Family::V6]);
        let r = parse(r#"{"cniVersion":"1.1.0","name":"n","ipam":{"families":["ipv4","ipv6"]}}"#)
            .unwrap();
        assert_eq!(r.conf.families(&[]), vec![Family::V4, Family::V6]);
        // The config's spelling is lowercase only, as it always was.
        for bad in ["IPv4", "V4", "inet"] {
            let conf =
                format!(r#"{{"cniVersion":"1.1.0","name":"n","ipam":{{"families":["{bad}"]}}}}"#);
            assert!(parse(&conf).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn gc_and_requested_ips() {
        let r = parse(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
                "runtimeConfig":{"ips":["198.19.0.7/32"],"portMappings":[]}}"#,
        )
        .unwrap();
        assert_eq!(r.conf.valid_attachments.as_ref().map(Vec::len), Some(1));
        let ips = r.conf.requested_ips(&["2001:db8::7".into()]).unwrap();
        assert_eq!(ips.len(), 2);
        assert!(r.conf.requested_ips(&["nope".into()]).is_err());
    }

    #[test]
    fn version_echo() {
        assert_eq!(
            version_request_version(br#"{"cniVersion":"0.4.0"}"#),
            "0.4.0"
        );
        assert_eq!(version_request_version(b"garbage"), "1.1.0");
        assert_eq!(
            version_request_version(br#"{"cniVersion":"<script>"}"#),
            "1.1.0"
        );
    }
}
